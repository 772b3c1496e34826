"""The upload ``--skip-existing`` starts and aborts at start-up to ask the destination's
encryption (``api.opaque_dest_etags``), on the fast path and on botocore's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel, run_cli


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("fault", ["reset_before", "reset_after"])
def test_the_encryption_probe_aborts_its_upload_through_a_lost_connection(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, fault: str, fast_path: bool
) -> None:
    """The abort of the upload lost to the network (before the server had it, or its answer
    after): the abort is sent again, and nothing is left. The whole probe was started again
    instead, a second upload started and aborted, and the first one left in the destination
    for good, unsaid (``reset_before``); an abort that had been done and was sent again
    (its answer lost: ``reset_after``) warned that the credentials lack
    s3:AbortMultipartUpload."""
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" * i for i in range(1, 6)})
    # twice: the fast path sends a request again once itself, on a kept connection
    dest = f"^/{buckets.dest}/"
    proxy.add_rule(Rule(fault, method="DELETE", path=dest, query="uploadId", times=2))
    extra = [] if fast_path else ["--no-fast-path"]
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra)]
    done = run_cli([*args, "--skip-existing"])
    assert done.returncode == 0, done.stderr
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == [], done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert s3.get_object(Bucket=buckets.dest, Key="p/3")["Body"].read() == b"xxx"
    started = [
        r for r in proxy.seen() if r.method == "POST" and r.path.startswith(f"/{buckets.dest}/")
    ]
    assert len(started) == 1, started  # one upload started: its abort was what failed


@pytest.mark.parametrize("fast_path", [True, False])
def test_an_upload_started_without_its_id_is_said_as_on_botocores_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, fast_path: bool
) -> None:
    """A 200 to CreateMultipartUpload without its UploadId (a server that failed after its
    status line): botocore gives the answer as it is, and the caller's check of its id says
    what is wrong (retried, an upload made or not: nobody can tell). The fast path raised
    instead a ClientError "500" of no body, an answer from the server that no upload was
    made: the warning of the probe said "500 (Internal Server Error)"."""
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" * i for i in range(1, 6)})
    proxy.add_rule(Rule("empty_200", method="POST", path=f"^/{buckets.dest}/", query="uploads"))
    extra = [] if fast_path else ["--no-fast-path"]
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra)]
    done = run_cli([*args, "--skip-existing", "--max-attempts", "2"])
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warned) == 1, done.stderr
    assert "InternalError" in warned[0] and "without an UploadId" in warned[0], warned[0]
