"""A Requester Pays source (``--request-payer requester``): S3 refuses every request of
another account for such a bucket, listings included, unless it carries
``x-amz-request-payer: requester`` (the requester agrees to pay for the request and the bytes
it reads); a CopyObject or UploadPartCopy from such a bucket too. The proxy answers as S3 does
(moto ignores the setting): AccessDenied to every request of the source bucket without the
header, and in ``--direct`` mode to every copy into the destination without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.checkpoint import read_checkpoint
from tests.conftest import Buckets
from tests.helpers import MiB, cli_args, put_multipart
from tests.proxy import Rule, S3Proxy
from tests.reliability import listing, one_error_line, put_parallel, run_cli

MODES = {
    "fast": (),
    "no-fast": ("--no-fast-path",),
    "direct": ("--direct",),
    "processes": ("--processes", "2"),
    "tags": ("--copy-tags",),
}
HEADER = "x-amz-request-payer"
_SIGNED = re.compile(r"SignedHeaders=([^,]+)")


def requester_pays(proxy: S3Proxy, buckets: Buckets, *, direct: bool = False) -> None:
    """The source bucket refuses what does not agree to pay, as S3 does."""
    proxy.add_rule(Rule("access_denied", path=f"^/{buckets.source}", unless_header=HEADER))
    if direct:  # a copy names the source in x-amz-copy-source: refused without it too
        proxy.add_rule(
            Rule("access_denied", method="PUT", path=f"^/{buckets.dest}/", unless_header=HEADER)
        )


def fill(s3: Any, buckets: Buckets) -> dict[str, tuple[int, str]]:
    put_parallel(s3, buckets.source, {f"p/o{i}": os.urandom(100 + i) for i in range(6)})
    put_multipart(s3, buckets.source, "p/big", [5 * MiB, MiB])
    s3.put_object_tagging(
        Bucket=buckets.source, Key="p/o1", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}
    )
    return listing(s3, buckets.source)


@pytest.mark.parametrize("mode", MODES)
def test_a_requester_pays_source_is_copied_with_request_payer(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """Every request for the source (its check, the listing, HEADs, GETs, ranged GETs of a
    multipart object, or the copies of ``--direct``) carries the header, signed: the backup
    completes and its copies are the source's, part layout and ETags included."""
    source = fill(s3, buckets)
    requester_pays(proxy, buckets, direct=mode == "direct")
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)
    done = run_cli(["p", *args, "--request-payer", "requester", *MODES[mode]])
    assert done.returncode == 0, done.stderr
    assert "7 of 7 files done" in done.stderr, done.stderr
    assert listing(s3, buckets.dest) == source
    if mode == "tags":
        read = proxy.seen(method="GET", path=f"^/{buckets.source}/p/o1$")
        assert any("tagging" in r.query for r in read), read
        tags = s3.get_object_tagging(Bucket=buckets.dest, Key="p/o1")["TagSet"]
        assert tags == [{"Key": "k", "Value": "v"}]
    asked = proxy.seen(path=f"^/{buckets.source}")
    if mode == "direct":
        asked += [r for r in proxy.seen(method="PUT") if "x-amz-copy-source" in r.headers]
    assert asked
    for request in asked:
        assert request.headers.get(HEADER) == "requester", (request.method, request.path)
        signed = _SIGNED.search(request.headers["authorization"])
        assert signed and HEADER in signed.group(1).split(";"), request.headers
    if mode != "direct":  # the destination is no Requester Pays bucket: nothing to agree to
        assert not any(HEADER in r.headers for r in proxy.seen(path=f"^/{buckets.dest}"))


def test_without_the_flag_the_refusal_says_which_flag_agrees_to_pay(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    fill(s3, buckets)
    requester_pays(proxy, buckets)
    done = run_cli(["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "Requester Pays" in line and "--request-payer requester" in line, line
    assert not listing(s3, buckets.dest)


def test_dry_run_and_checkpoint_verify_agree_to_pay_too(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """``--dry-run`` lists with the flag; the checkpoint records it, so ``checkpoint verify``
    (which lists the source) sends the header without being told again."""
    fill(s3, buckets)
    requester_pays(proxy, buckets)
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    planned = run_cli([*args, "--request-payer", "requester", "--dry-run"])
    assert planned.returncode == 0, planned.stderr
    assert "7 files" in planned.stdout + planned.stderr, planned.stdout + planned.stderr
    done = run_cli([*args, "--request-payer", "requester"])
    assert done.returncode == 0, done.stderr
    (archived,) = (tmp_path / "checkpoints" / "archive").iterdir()
    assert read_checkpoint(archived).config["request_payer"] == "requester"
    checked = subprocess.run(
        [sys.executable, "-m", "asyncbackup", "checkpoint", "verify", str(archived)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK: 7 files marked done; 0 missing" in checked.stdout, checked.stdout


def test_request_payer_takes_requester_only(tmp_path: Path) -> None:
    args = cli_args("http://127.0.0.1:9", tmp_path, "a", "b")
    done = run_cli(["p", *args, "--request-payer", "owner"])
    assert done.returncode == 2
    assert "--request-payer" in done.stderr and "requester" in done.stderr, done.stderr
