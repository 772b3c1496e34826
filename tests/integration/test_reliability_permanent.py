"""Permanent errors are recorded, not retried for ever; corrupted data is never marked done;
every ``--checksum`` mode works against a real S3 endpoint.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_backup
from asyncbackup.config import CHECKSUM_CHOICES
from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    assert_done_means_copied,
    checkpoint_file,
    listing,
    one_error_line,
    put_parallel,
    read_valid,
    run_cli,
)

MiB = 1024 * 1024


def test_permanent_errors_are_recorded_and_the_run_completes_with_exit_1(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    good = {f"p/ok-{i}": os.urandom(200) for i in range(20)}
    put_parallel(s3, buckets.source, {**good, "p/denied": b"d", "p/deleted": b"x"})
    s3.put_object(Bucket=buckets.source, Key="p/archived", Body=b"cold", StorageClass="GLACIER")
    proxy.add_rule(Rule("access_denied", method="GET", path=r"/p/denied$"))
    # Listed, then deleted just before its download: the server answers NoSuchKey, a HEAD
    # confirms it, and the object is left out of the job (not an error).
    proxy.add_rule(
        Rule(
            None,
            method="GET",
            path=r"/p/deleted$",
            times=1,
            action=lambda: s3.delete_object(Bucket=buckets.source, Key="p/deleted"),
        )
    )
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")
    done = run_cli(["p", *args])
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "p"))
    assert set(state.errors) == {"p/denied", "p/archived"}
    assert "p/deleted" not in state.files and state.total_files == len(good) + 2
    assert state.errors["p/denied"].startswith("AccessDenied: ")
    assert state.errors["p/archived"].startswith("InvalidObjectState: ")
    assert not any(state.files[key] for key in state.errors)
    assert all(state.files[key] for key in good)
    assert state.processed_files == len(good)
    # Not retried for ever: a permanent answer is final at the first try.
    assert len(proxy.seen(method="GET", path=r"/p/denied$")) == 1
    assert len(proxy.seen(method="GET", path=r"/p/archived$")) == 1
    assert set(listing(s3, buckets.dest)) == set(good)
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    # The summary on stderr says where the errors are.
    assert "errors are recorded in" in done.stderr
    assert "1 deleted from the source since listed (left out)" in done.stderr


async def test_corrupted_download_is_retried_then_recorded_never_done(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    once, always = os.urandom(5000), os.urandom(5000)
    put_parallel(s3, buckets.source, {"c/once": once, "c/always": always})
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/c/once$", times=1))
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/c/always$"))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="c",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
    )
    assert report.exit_code == 1
    assert s3.get_object(Bucket=buckets.dest, Key="c/once")["Body"].read() == once
    assert len(proxy.seen(method="GET", path=r"/c/once$")) == 2
    assert list(report.errors) == ["c/always"]
    assert report.errors["c/always"].startswith("IntegrityError: MD5")
    # Retried a bounded number of times, never uploaded, never marked done.
    assert 2 <= len(proxy.seen(method="GET", path=r"/c/always$")) <= 5
    assert not proxy.seen(method="PUT", path=r"/c/always$")
    state = read_valid(report.checkpoint_path)
    assert state.files == {"c/once": True, "c/always": False}


@pytest.mark.parametrize("mode", ["md5", "crc32"])
async def test_corrupted_upload_is_caught_by_the_etag_check_and_retried(
    mode: str, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    body = os.urandom(4000)
    s3.put_object(Bucket=buckets.source, Key="u/one", Body=body)
    # The test server does not verify Content-MD5 or x-amz-checksum-*: the ETag it answers
    # (the MD5 of what it stored) is then the check that catches the damage.
    proxy.add_rule(Rule("corrupt_request", method="PUT", path=r"/u/one$", times=1))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="u",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        checksum=mode,
    )
    assert report.exit_code == 0, report.errors
    puts = proxy.seen(method="PUT", path=r"/u/one$")
    assert len(puts) == 2 and puts[0].fault == "corrupt_request"
    assert s3.get_object(Bucket=buckets.dest, Key="u/one")["Body"].read() == body


@pytest.mark.parametrize("mode", [m for m in CHECKSUM_CHOICES if m != "crc32c"])
async def test_checksum_modes_single_and_multipart(
    mode: str, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    small, large = os.urandom(1000), os.urandom(11 * MiB + 3)
    put_parallel(s3, buckets.source, {"k/small": small, "k/large": large})
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="k",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        checksum=mode,
        multipart_threshold=5 * MiB,
        part_size=5 * MiB,
    )
    assert report.exit_code == 0, report.errors
    assert s3.get_object(Bucket=buckets.dest, Key="k/small")["Body"].read() == small
    assert s3.get_object(Bucket=buckets.dest, Key="k/large")["Body"].read() == large
    uploads = [r for r in proxy.seen(method="PUT") if r.path.startswith(f"/{buckets.dest}/k/")]
    assert len(uploads) == 4  # one PUT, three parts
    for request in uploads:
        if mode == "md5":
            assert "content-md5" in request.headers
        elif mode == "none":
            assert not any(h.startswith("x-amz-checksum-") for h in request.headers)
        else:
            assert f"x-amz-checksum-{mode}" in request.headers, request.headers
    create = [r for r in proxy.seen(method="POST") if "uploads" in r.query]
    assert len(create) == 1
    declared = create[0].headers.get("x-amz-checksum-algorithm")
    assert declared == (mode.upper() if mode not in ("md5", "none") else None)


def test_crc32c_works_or_fails_with_one_clear_line(
    buckets: Buckets, s3_server: S3Server, tmp_path: Path
) -> None:
    """CRC32C needs botocore's CRT extra: without it, say so before copying anything."""
    s3_server.client().put_object(Bucket=buckets.source, Key="z/one", Body=b"1")
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")
    done = run_cli(["z", *args, "--checksum", "crc32c"])
    if importlib.util.find_spec("awscrt") is not None:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "crc32c" in line and "botocore[crt]" in line
    assert not listing(s3_server.client(), buckets.dest)
