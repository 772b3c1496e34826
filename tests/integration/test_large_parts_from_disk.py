"""A part larger than the whole memory budget of parts goes through the staged file, never
whole in memory: written there as it is downloaded (hashed as it comes), then uploaded read
from the file a chunk at a time. A source uploaded in 1 GiB parts (copied in its own layout,
to keep its ETag), or a `--part-size 1GiB`, held 1 GiB per process.

The budget is made 4 MiB here and the parts 16 MiB: the Python allocations traced during the
copy (tracemalloc; moto runs in its own process) must stay below one part."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import asyncbackup.workerpool
from asyncbackup.checksums import multipart_etag
from asyncbackup.fasts3 import open_fast_s3
from asyncbackup.fetched import FetchedObject
from asyncbackup.github.backup import run_github_backup
from asyncbackup.partfeed import ByteBudget
from asyncbackup.retry import RetryPolicy
from asyncbackup.sinks.s3 import S3Sink
from tests.github_server import FakeRepo, git

from ..conftest import Buckets, S3Server
from ..helpers import backup_data, open_test_client, put_multipart
from ..proxy import Rule, S3Proxy
from .github_org import config, running_org

MiB = 1024 * 1024
PART = 16 * MiB
BUDGET = 4 * MiB
T = TypeVar("T")


async def traced_peak(during: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """What ``during`` returns, and the peak of Python allocations made meanwhile."""
    tracemalloc.start()
    try:
        result = await during()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "botocore"])
@pytest.mark.parametrize("checksum", ["md5", "crc32"])
async def test_a_source_part_larger_than_the_budget_is_never_held_whole(
    buckets: Buckets,
    s3: Any,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fast_path: bool,
    checksum: str,
) -> None:
    monkeypatch.setattr(asyncbackup.workerpool, "PART_BUFFER_BYTES", BUDGET)
    # what a first run in a process loads once (botocore's endpoints and models: 22 MiB
    # traced at its peak), loaded before the copy measured
    s3.put_object(Bucket=buckets.source, Key="warm/up", Body=b"x")
    warm = await backup_data(buckets, tmp_path, s3_server.endpoint, source_path="warm")
    assert warm.exit_code == 0, warm.errors
    etag = put_multipart(s3, buckets.source, "data/big", [PART, PART, 3 * MiB])
    body = s3.get_object(Bucket=buckets.source, Key="data/big")["Body"].read()

    async def copy() -> Any:
        return await backup_data(
            buckets, tmp_path, s3_server.endpoint, fast_path=fast_path, checksum=checksum
        )

    report, peak = await traced_peak(copy)
    assert report.exit_code == 0, report.errors
    copied = s3.get_object(Bucket=buckets.dest, Key="data/big")
    assert copied["Body"].read() == body
    assert copied["ETag"] == etag  # in the source's own 16 MiB parts
    assert peak < PART, f"{peak / MiB:.1f} MiB traced at once"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "botocore"])
@pytest.mark.parametrize("threshold", [PART, 64 * MiB], ids=["in-parts", "one-put"])
async def test_a_staged_file_larger_than_the_budget_is_put_from_the_file(
    buckets: Buckets,
    s3: Any,
    s3_server: S3Server,
    tmp_path: Path,
    fast_path: bool,
    threshold: int,
) -> None:
    """A staged file put in parts (a GitHub mirror's bundle), or in one PUT below a raised
    --multipart-threshold (without the fast path, or with another --checksum, no PUT is
    streamed as the download goes): each part, or the whole file, was read into memory."""
    body = os.urandom(2 * PART + 3 * MiB)
    staged = tmp_path / "archive"
    staged.write_bytes(body)
    md5 = hashlib.md5(body, usedforsecurity=False).digest()
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, s3_server.endpoint)
        sink = S3Sink(
            client,
            buckets.dest,
            RetryPolicy(2),
            checksum="md5" if threshold == PART else "crc32",
            multipart_threshold=threshold,
            part_size_for=lambda size: PART,
            part_concurrency=2,
            part_budget=ByteBudget(BUDGET),
        )
        if fast_path:
            sink.fast = await open_fast_s3(
                stack, client, buckets.dest, connections=4, connect_timeout=2, read_timeout=10
            )

        async def put() -> None:
            await sink.put(FetchedObject("archive", staged, len(body), md5, ""), "archive")

        _, peak = await traced_peak(put)
        assert sink.part_budget.free == BUDGET
        if sink.fast is not None:  # streamed by it, not handed to botocore
            assert sink.fast.enabled and sink.fast.fast_requests >= 1
    copied = s3.get_object(Bucket=buckets.dest, Key="archive")
    assert copied["Body"].read() == body
    if threshold == PART:
        parts = [body[i : i + PART] for i in range(0, len(body), PART)]
        md5s = [hashlib.md5(p, usedforsecurity=False).digest() for p in parts]
        assert copied["ETag"].strip('"') == multipart_etag(md5s)
    else:
        assert copied["ETag"].strip('"') == md5.hex()
    assert peak < PART, f"{peak / MiB:.1f} MiB traced at once"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "botocore"])
async def test_large_parts_survive_a_cut_download_and_a_corrupted_upload(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fast_path: bool,
) -> None:
    """A download cut short within a part kept on disk goes on where it ended (nothing of it
    is in memory to drop), and a part's upload corrupted on the way is caught (its
    Content-MD5 and the ETag answered are those of the bytes downloaded; moto checks only
    the ETag) and sent again, read from the file again."""
    monkeypatch.setattr(asyncbackup.workerpool, "PART_BUFFER_BYTES", BUDGET)
    etag = put_multipart(s3, buckets.source, "data/big", [PART, PART, 3 * MiB])
    body = s3.get_object(Bucket=buckets.source, Key="data/big")["Body"].read()
    proxy.add_rule(Rule("truncate", method="GET", path=r"/data/big$", times=1))
    proxy.add_rule(Rule("corrupt_request", method="PUT", query="partNumber=2", times=1))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, fast_path=fast_path)
    assert report.exit_code == 0, report.errors
    copied = s3.get_object(Bucket=buckets.dest, Key="data/big")
    assert copied["Body"].read() == body and copied["ETag"] == etag
    gets = proxy.seen(method="GET", path=r"/data/big$")
    assert gets[0].fault == "truncate"
    resumed_at = int(str(gets[1].range).removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(body) and resumed_at % PART  # within a part, not its start
    puts = [put for put in proxy.seen(method="PUT") if "partNumber=2" in put.query]
    assert puts[0].fault == "corrupt_request" and puts[-1].fault is None


async def test_a_part_in_memory_is_held_once_on_the_botocore_path_too(
    buckets: Buckets,
    s3: Any,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parts within the budget are held in memory, once: without the fast path each was
    copied to bytes for aiobotocore (which takes a bytearray as it is), so two copies of
    every part in flight, up to twice the budget (the memory review's note)."""
    monkeypatch.setattr(asyncbackup.workerpool, "PART_BUFFER_BYTES", PART)
    s3.put_object(Bucket=buckets.source, Key="warm/up", Body=b"x")
    warm = await backup_data(
        buckets, tmp_path, s3_server.endpoint, source_path="warm", fast_path=False
    )
    assert warm.exit_code == 0, warm.errors
    etag = put_multipart(s3, buckets.source, "data/big", [PART, PART, 3 * MiB])

    async def copy() -> Any:
        return await backup_data(buckets, tmp_path, s3_server.endpoint, fast_path=False)

    report, peak = await traced_peak(copy)
    assert report.exit_code == 0, report.errors
    assert s3.head_object(Bucket=buckets.dest, Key="data/big")["ETag"] == etag
    assert peak < 1.5 * PART, f"{peak / MiB:.1f} MiB traced at once"


async def test_a_github_bundle_in_parts_larger_than_the_budget_is_never_held_whole(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GitHub's artifacts go in parts from their staged files, within a budget of
    ``--concurrency`` x ``--part-size``: 8 GiB of parts in memory with ``--part-size 1GiB``.
    It is now the S3 command's 128 MiB at most, and larger parts are read from the file."""
    monkeypatch.setattr(asyncbackup.workerpool, "PART_BUFFER_BYTES", BUDGET)
    async with running_org(tmp_path / "git") as github:
        heavy = github.add_repo(FakeRepo("heavy", has_wiki=False))
        work = tmp_path / "heavy.work"
        git("init", "-q", "-b", "main", str(work))
        (work / "blob.bin").write_bytes(os.urandom(2 * PART + 3 * MiB))
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "one heavy commit", cwd=work)
        git("clone", "-q", "--bare", str(work), str(github.git_dir("heavy")))
        del heavy
        clock = github.clock
        options = config(
            github,
            s3_server.endpoint,
            buckets.dest,
            tmp_path / "work",
            include=("heavy",),
            part_size=PART,
            multipart_threshold=PART,
        )
        warm = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert warm.status == "completed", warm.errors
        s3.delete_object(Bucket=buckets.dest, Key="github/acme/heavy.bundle")

        async def backup() -> Any:
            return await run_github_backup(
                clock=clock, sleep=clock.sleep, ignore_checkpoints=True, **options
            )

        report, peak = await traced_peak(backup)
    assert report.status == "completed", report.errors
    head = s3.head_object(Bucket=buckets.dest, Key="github/acme/heavy.bundle")
    assert head["ContentLength"] > 2 * PART and head["ETag"].endswith('-3"')
    assert peak < PART, f"{peak / MiB:.1f} MiB traced at once"
