"""Transient faults are retried: 5xx, SlowDown, 429, resets, short bodies, latency, Retry-After.

Every fault is injected for real by the loopback proxy between the engine and the S3 server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from asyncbackup import run_backup
from asyncbackup.pipeline import WorkItem
from asyncbackup.retry import AdaptiveLimiter, Backoff, RetryPolicy
from asyncbackup.s3client import open_client
from asyncbackup.sources.s3 import S3Source
from asyncbackup.staging import Staging
from tests.conftest import Buckets
from tests.helpers import numbered_objects
from tests.proxy import Rule, S3Proxy
from tests.reliability import assert_identical, listing, put_parallel, read_valid


def range_start(header: str | None) -> int:
    assert header is not None and header.startswith("bytes=") and header.endswith("-"), header
    return int(header[len("bytes=") : -1])


async def test_ten_percent_faults_2000_objects_all_identical(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(2000, size=64))
    proxy.set_random_faults(0.10, seed=20240406)
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        concurrency=32,
        cleanup=True,
    )
    injected = proxy.faults_injected()
    proxy.clear_faults()
    assert report.exit_code == 0, report.errors
    assert report.status == "completed"
    assert report.copied_files == 2000 and not report.errors
    # Every kind of transient fault really happened, a few hundred in all.
    assert set(injected) == {
        "slowdown",
        "internal",
        "throttle",
        "reset_before",
        "reset_after",
        "truncate",
        "latency",
    }, injected
    assert sum(injected.values()) > 300, injected
    assert assert_identical(s3, buckets.source, buckets.dest) == 2000
    assert report.archived_checkpoint is not None
    state = read_valid(report.archived_checkpoint)
    assert state.processed_files == 2000 and all(state.files.values())


async def test_body_cut_short_is_resumed_with_a_ranged_get(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    small, large = os.urandom(300_000), os.urandom(3 * 1024 * 1024 + 17)
    put_parallel(s3, buckets.source, {"r/small.bin": small, "r/large.bin": large})
    proxy.add_rule(Rule("truncate", method="GET", path=r"/r/small\.bin$", times=1))
    proxy.add_rule(Rule("truncate", method="GET", path=r"/r/large\.bin$", times=2))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="r",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
    )
    assert report.exit_code == 0, report.errors
    gets = proxy.seen(method="GET", path=r"/r/small\.bin$")
    assert len(gets) == 2 and gets[0].range is None
    # The resume asks for the rest, from the first byte not yet written (the client may drop
    # the last partial chunk it had buffered when the cut came), of the same version.
    assert 0 < range_start(gets[1].range) <= len(small) // 2
    assert gets[1].if_match == listing(s3, buckets.source)["r/small.bin"][1]
    gets = proxy.seen(method="GET", path=r"/r/large\.bin$")
    assert len(gets) == 3 and gets[0].range is None
    first, second = range_start(gets[1].range), range_start(gets[2].range)
    # Each resume starts where the bytes written so far end: never from zero, never past
    # the point where that answer was cut (half of what it carried).
    assert 0 < first <= len(large) // 2
    assert first < second <= first + (len(large) - first) // 2
    for key, body in (("r/small.bin", small), ("r/large.bin", large)):
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body


async def test_retry_after_is_honoured(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="w/one", Body=b"x" * 100)
    proxy.add_rule(Rule("slowdown", method="GET", path=r"/w/one$", times=1, retry_after=1.5))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="w",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
    )
    assert report.exit_code == 0
    first, second = proxy.seen(method="GET", path=r"/w/one$")
    assert first.status == 503 and second.status == 200
    # Our own backoff for a first retry is at most 0.4 s: only the header explains the wait.
    assert second.started - first.finished >= 1.4


async def test_slowdown_backs_off_concurrency_and_recovers(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    objects = {f"t/{i:03d}": os.urandom(100) for i in range(32)}
    put_parallel(s3, buckets.source, objects)
    items = [WorkItem(key, 100, etag) for key, (_, etag) in listing(s3, buckets.source).items()]
    limiter = AdaptiveLimiter(16, cooldown=0.05)
    policy = RetryPolicy(40, backoff=Backoff(base=0.01, cap=0.1), limiter=limiter)
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    limits: list[int] = []

    async def fetch_all(rounds: int) -> None:
        queue = [item for _ in range(rounds) for item in items]

        async def worker() -> None:
            while queue:
                fetched = await source.fetch(queue.pop(), staging)
                staging.remove(fetched.path)
                limits.append(limiter.limit)

        async with asyncio.TaskGroup() as tg:
            for _ in range(32):
                tg.create_task(worker())

    async with contextlib.AsyncExitStack() as stack:
        client = await open_client(
            stack,
            role="source",
            profile=None,
            endpoint_url=proxy.endpoint,
            region="us-east-1",
            max_pool_connections=40,
            connect_timeout=5,
            read_timeout=10,
        )
        source = S3Source(client, buckets.source, policy)
        await fetch_all(1)  # warm: no faults, the limit stays at its maximum
        assert limiter.limit == 16 and limiter.decreases == 0
        storm = proxy.add_rule(Rule("slowdown", method="GET", times=150))
        await fetch_all(2)
        assert storm.hits == 150
        assert limiter.decreases >= 3
        lowest = min(limits)
        assert lowest <= 4, limits
        proxy.clear_faults()
        await fetch_all(8)  # the errors stopped: additive increase brings it back
    assert limiter.limit == 16, limits[-20:]
    assert limits.index(lowest) < len(limits) - 1


async def test_start_up_bucket_checks_are_retried_too(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="s/one", Body=b"1")
    # The checks come before anything else of each bucket: ListObjectsV2 of one key.
    source, dest = f"^/{buckets.source}/?$", f"^/{buckets.dest}/?$"
    proxy.add_rule(Rule("internal", method="GET", path=source, query="max-keys=1", times=2))
    proxy.add_rule(Rule("reset_before", method="GET", path=dest, times=1))
    proxy.add_rule(Rule("slowdown", method="GET", path=dest, times=1))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="s",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
    )
    assert report.exit_code == 0
    assert proxy.faults_injected() == {"internal": 2, "reset_before": 1, "slowdown": 1}
    assert s3.get_object(Bucket=buckets.dest, Key="s/one")["Body"].read() == b"1"


async def test_a_bare_408_from_a_load_balancer_is_retried(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A 408 Request Timeout without an S3 error body (a load balancer closing an idle
    connection as a request arrives; RFC 9110: the request may be repeated) was classified by
    its status alone, "408", and not retried: the object failed for the run."""
    s3.put_object(Bucket=buckets.source, Key="w/one", Body=b"x" * 100)
    s3.put_object(Bucket=buckets.source, Key="w/two", Body=b"y" * 100)
    proxy.add_rule(Rule("bare_408", method="GET", path=r"/w/one$", times=1))
    proxy.add_rule(Rule("bare_408", method="PUT", path=r"/w/two$", times=1))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="w",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
    )
    assert report.exit_code == 0, report.errors
    assert [r.status for r in proxy.seen(method="GET", path=r"/w/one$")] == [408, 200]
    assert [r.status for r in proxy.seen(method="PUT", path=r"/w/two$")] == [408, 200]
    assert_identical(s3, buckets.source, buckets.dest, "w/")
