"""Source buckets as real AWS accounts configure them: SSE-C and SSE-KMS objects the reader
cannot decrypt, Requester Pays, Intelligent-Tiering's archive tiers, additional checksums,
versioning with delete markers, folder markers with content, Object Lock legal holds."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.checkpoint import read_checkpoint
from tests.conftest import Buckets
from tests.helpers import MiB, cli_args, put_multipart
from tests.proxy import Rule, S3Proxy
from tests.reliability import checkpoint_file, listing, one_error_line, put_parallel, run_cli

MODES = {"fast": (), "no-fast": ("--no-fast-path",), "direct": ("--direct",)}


def run(proxy: S3Proxy, tmp_path: Path, buckets: Buckets, *extra: str) -> Any:
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest), *extra]
    started = time.monotonic()
    done = run_cli([*args, "--concurrency", "2"])
    return done, time.monotonic() - started


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("multipart", [False, True])
def test_an_sse_c_source_object_is_one_error_that_names_sse_c(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str, multipart: bool
) -> None:
    """S3 serves an object encrypted with SSE-C (a key of its owner's, which S3 does not keep)
    only to a request that carries the key: a GET (or CopyObject, UploadPartCopy) without it
    is 400 InvalidRequest ("The object was stored using a form of Server Side Encryption. The
    correct parameters must be provided to retrieve the object."), a HEAD 400 with no body
    (moto serves such objects to anyone: the proxy answers as S3 does). Such an object was an
    error that never said SSE-C, nor that asyncbackup has no way to give a key; a multipart
    one copied with --direct (no GET: its layout's HEADs alone) was a bare "400: Bad Request".
    Now each is one error naming SSE-C and what to do, not retried, never done; the rest is
    copied and the run ends with exit 1."""
    put_parallel(s3, buckets.source, {f"p/o{i}": b"x" * 100 for i in range(4)})
    if multipart:
        put_multipart(s3, buckets.source, "p/secret", [5 * MiB, MiB])
    else:
        s3.put_object(Bucket=buckets.source, Key="p/secret", Body=os.urandom(300))
    for method in ("GET", "HEAD", "PUT"):  # PUT: --direct's CopyObject and UploadPartCopy
        proxy.add_rule(Rule("sse_c_key_missing", method=method, path=r"/p/secret$"))
    done, took = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 1, done.stderr
    assert took < 30  # one refusal, not minutes of retries
    assert "4 of 5 files done" in done.stderr and "1 errors" in done.stderr, done.stderr
    state = read_checkpoint(checkpoint_file(tmp_path, buckets.source, "p"))
    assert state.files["p/secret"] is False and list(state.errors) == ["p/secret"]
    assert "SSE-C" in state.errors["p/secret"], state.errors
    assert "checkpoint mark --done" in state.errors["p/secret"], state.errors
    assert sorted(listing(s3, buckets.dest)) == [f"p/o{i}" for i in range(4)]
    assert not s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads")
    asked = [r for r in proxy.requests if r.path.endswith("/p/secret")]
    assert len(asked) <= 6, [(r.method, r.query) for r in asked]


@pytest.mark.parametrize("mode", MODES)
def test_a_requester_pays_source_is_refused_at_start_in_a_line_that_names_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """S3 ("Downloading objects from Requester Pays buckets"): a request of another account
    without ``x-amz-request-payer: requester`` is refused, 403 AccessDenied, listings
    included. asyncbackup sends no such header (Requester Pays is not supported): the run
    stops at its start-up check, exit 2, nothing read. Its line said to check the
    credentials and the bucket policy only, which are not the cause; it now names Requester
    Pays too."""
    put_parallel(s3, buckets.source, {f"p/o{i}": b"x" * 100 for i in range(4)})
    proxy.add_rule(
        Rule("access_denied", path=f"^/{buckets.source}", unless_header="x-amz-request-payer")
    )
    done, _ = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert f"source bucket {buckets.source!r} was refused (AccessDenied)" in line, line
    assert "Requester Pays" in line and "--source-profile" in line, line
    assert not proxy.seen(method="GET", path=f"^/{buckets.source}/p/")
    assert not listing(s3, buckets.dest)
