"""Throttling, slow networks and the bandwidth limit, with the faults injected for real by the
loopback proxy in front of the S3 server (``tests/proxy.py``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import asyncbackup.workerpool
from asyncbackup import run_backup
from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    assert_identical,
    checkpoint_file,
    put_parallel,
    read_valid,
    run_cli,
)

KiB = 1024
MiB = 1024 * KiB


@pytest.mark.parametrize("first_put_fails", [False, True], ids=["streamed", "from-staging"])
async def test_a_bandwidth_limited_upload_never_pauses_long_enough_for_s3_to_drop_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, first_put_fails: bool
) -> None:
    """S3 answers 400 RequestTimeout when a request's body pauses for about 20 s. An object
    of 1 MiB or more streamed in one PUT went out in 1 MiB pieces, each one waiting for its
    whole share of --max-bandwidth first: at 50KB/s (or 1MB/s shared by 32 workers) every
    such PUT paused 20 s between pieces, was refused, and so was each retry. Here the pause
    allowed is 2 s and the limit 256 KiB/s: a 1 MiB piece waited 4 s."""
    body = os.urandom(1536 * KiB)
    s3.put_object(Bucket=buckets.source, Key="bw/one", Body=body)
    if first_put_fails:  # the streamed PUT fails: the staged file is PUT instead
        proxy.add_rule(Rule("internal", method="PUT", path=r"/bw/one$", times=1))
    idle = proxy.add_rule(Rule(None, method="PUT", path=r"/bw/one$", body_idle=2.0))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="bw",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        max_bandwidth=256 * KiB,
        max_attempts=1,
    )
    assert report.exit_code == 0, report.errors
    assert idle.hits >= 1
    puts = proxy.seen(method="PUT", path=r"/bw/one$")
    assert [r.status for r in puts] == ([500, 200] if first_put_fails else [200])
    assert s3.get_object(Bucket=buckets.dest, Key="bw/one")["Body"].read() == body


@pytest.mark.parametrize("fault", ["slowdown", "reset_before"])
def test_a_destination_failing_every_request_stops_the_run_with_one_line_and_exit_3(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, fault: str
) -> None:
    """A destination that answers every PUT 503 SlowDown (or drops every connection) for
    longer than the retries last: each object used to fail after its 3 x --max-attempts
    tries (with the defaults 24 PUTs and about 75 s of backoff), one after another - a
    million objects at --concurrency 16 would take some 55 days to end with a million
    errors. The run now stops once twice --concurrency objects (16 at least) in a row failed
    that way, with one line and exit 3, as a listing refused for good does; a run once the
    destination answers again resumes."""
    objects = {f"o/{i:03d}": os.urandom(100) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    proxy.add_rule(Rule(fault, method="PUT"))
    args = ["o", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += ["--max-attempts", "2", "--concurrency", "4"]
    done = run_cli(args)
    assert done.returncode == 3, done.stderr
    *retries, line = done.stderr.strip().splitlines()  # the object retries' warnings, then
    assert all(  # the error
        " WARNING retrying o/" in retry or "further retries are logged" in retry
        for retry in retries
    ), retries
    assert "Traceback" not in done.stderr
    assert "objects in a row" in line and "run again" in line, line
    tried = {record.path for record in proxy.seen(method="PUT")}
    assert 16 <= len(tried) <= 16 + 4, len(tried)  # stopped, not one error per object
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "o"))
    assert not any(state.files.values())
    assert len(state.errors) >= 15  # those that failed before the last, for the next run
    proxy.clear_faults()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert_identical(s3, buckets.source, buckets.dest, "o")


async def test_a_download_cut_short_while_throttled_does_not_wait_for_good(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object uploaded in parts is downloaded into part buffers reserved in a memory
    budget shared by all objects (128 MiB: two 64 MiB parts). A download cut short kept its
    half-filled part for its ranged retry, and waited for a slot of the source's limiter,
    which a SlowDown had cut to one; the download holding that slot waited for the budget
    the first one held: the run hung for good. Here the budget is one 5 MiB part: x's body
    is cut short while y's first GET is throttled. The cut part is now dropped, and the
    retry starts at its beginning."""
    monkeypatch.setattr(asyncbackup.workerpool, "PART_BUFFER_BYTES", 5 * MiB)
    bodies = {f"d/{name}": os.urandom(6 * MiB) for name in "xy"}
    for key, body in bodies.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    proxy.add_rule(Rule("slowdown", method="GET", path=r"/d/y$", times=1))
    proxy.add_rule(Rule("truncate", method="GET", path=r"/d/x$", times=1, delay=0.5))
    run = run_backup(
        source_bucket=buckets.source,
        source_path="d",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        concurrency=2,
        multipart_threshold=5 * MiB,
        part_size=5 * MiB,
    )
    report = await asyncio.wait_for(run, 30)  # a few seconds; it used to hang
    assert report.exit_code == 0, report.errors
    first, resumed = proxy.seen(method="GET", path=r"/d/x$")
    assert first.fault == "truncate" and resumed.range == "bytes=0-"  # the part's start
    for key, body in bodies.items():
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body
