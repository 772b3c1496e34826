"""A single-part object (above 1 MiB, below the multipart threshold) is streamed to the
destination in one PUT as it downloads, with the source's ETag (its MD5) as Content-MD5.

Against moto over HTTP, through the recording proxy. moto does not check Content-MD5 (S3,
MinIO and SeaweedFS do), so a corrupted stream lands there: the ETag it answers is what
catches it, and the object is copied again."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.errors import IntegrityError
from asyncbackup.fasts3 import open_fast_s3
from asyncbackup.fasts3.client import USER_AGENT
from asyncbackup.fetched import FetchedObject
from asyncbackup.partfeed import ByteBudget
from asyncbackup.pipeline import WorkItem
from asyncbackup.retry import AdaptiveLimiter, RetryPolicy
from asyncbackup.sinks.s3 import S3Sink, _file_chunks
from asyncbackup.staged import StagedCopier
from asyncbackup.staging import Staging
from tests.conftest import Buckets, S3Server
from tests.helpers import (
    MiB,
    assert_same_objects,
    backup_data,
    load_json,
    open_test_client,
    s3_source,
)
from tests.proxy import Recorded, Rule, S3Proxy

SIZE = 3 * MiB + 123
KEY = "data/obj.bin"


def requests_for(proxy: S3Proxy, method: str) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == method and r.path.endswith("/" + KEY)]


async def backup(buckets: Buckets, tmp_path: Path, proxy: S3Proxy, **options: Any) -> Any:
    return await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        **{"concurrency": 4, "multipart_threshold": 64 * MiB, **options},
    )


def put_source(s3: Any, bucket: str, **extra: Any) -> bytes:
    body = os.urandom(SIZE)
    s3.put_object(Bucket=bucket, Key=KEY, Body=body, **extra)
    return body


async def test_one_put_goes_out_while_the_object_downloads_and_keeps_its_etag(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    body = put_source(s3, buckets.source, ContentType="application/x-obj", Metadata={"a": "b"})
    # the GET's body arrives in 256 KiB pieces 0.1 s apart: about 1.3 s for the object
    proxy.add_rule(Rule(None, method="GET", path=KEY + "$", drip=0.1))
    report = await backup(buckets, tmp_path, proxy, cleanup=False)
    assert report.exit_code == 0, report.errors
    (get,) = requests_for(proxy, "GET")
    (put,) = requests_for(proxy, "PUT")
    assert put.query == ""  # one PutObject: no multipart upload
    assert not [r for r in proxy.requests if r.method == "POST"]
    assert put.headers["user-agent"] == USER_AGENT
    md5 = hashlib.md5(body).digest()
    assert put.headers["content-md5"] == base64.b64encode(md5).decode()
    assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert put.headers["content-length"] == str(SIZE)
    # it started well before the last byte of the download had arrived
    assert put.started < get.finished - 0.5
    source = s3.head_object(Bucket=buckets.source, Key=KEY)
    copy = s3.head_object(Bucket=buckets.dest, Key=KEY)
    assert copy["ETag"] == source["ETag"] == f'"{md5.hex()}"'
    assert (copy["ContentType"], copy["Metadata"]) == ("application/x-obj", {"a": "b"})
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    staged = Staging(tmp_path / "stage", buckets.source).path_for(KEY)
    assert staged.read_bytes() == body  # the staged file is the whole object too


async def test_a_corrupted_stream_is_caught_by_its_etag_and_copied_again(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    put_source(s3, buckets.source)
    proxy.add_rule(Rule("corrupt", method="GET", path=KEY + "$", times=1))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    assert len(requests_for(proxy, "GET")) == 2  # the corrupted download, then the retry
    assert len(requests_for(proxy, "PUT")) == 2
    assert_same_objects(s3, buckets.source, buckets.dest, "data")


async def test_a_stream_corrupted_every_time_is_never_counted_done(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    put_source(s3, buckets.source)
    proxy.add_rule(Rule("corrupt", method="GET", path=KEY + "$"))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 1
    assert KEY in report.errors and "ETag" in report.errors[KEY]
    checkpoint = load_json(next((tmp_path / "stage" / "checkpoints").glob("*.checkpoint")))
    assert checkpoint["files"][KEY] is False and KEY in checkpoint["errors"]


@pytest.mark.parametrize("fault", ["slowdown", "reset_before", "signature_mismatch"])
async def test_a_failed_streamed_put_is_sent_again_from_the_staged_file(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fault: str
) -> None:
    """A stream cannot be sent twice: the download goes on to the staged file alone, then
    the file is put with the usual retries (by botocore when the server asked for it)."""
    put_source(s3, buckets.source)
    proxy.add_rule(Rule(fault, method="PUT", path=KEY + "$", times=1))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    assert len(requests_for(proxy, "GET")) == 1  # not downloaded again
    first, second = requests_for(proxy, "PUT")
    assert first.fault == fault and second.fault is None
    agent = second.headers["user-agent"]
    assert (agent == USER_AGENT) == (fault != "signature_mismatch")
    source = s3.head_object(Bucket=buckets.source, Key=KEY)
    assert s3.head_object(Bucket=buckets.dest, Key=KEY)["ETag"] == source["ETag"]
    assert_same_objects(s3, buckets.source, buckets.dest, "data")


async def test_an_opaque_etag_is_not_sent_as_content_md5(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """SSE-KMS: the ETag is not the MD5 (moto's looks like one). Only the GET's headers say
    so; the object is then downloaded whole and put with the MD5 of what was received, the
    staged file read as the PUT goes out (never whole in memory)."""
    body = put_source(s3, buckets.source, ServerSideEncryption="aws:kms")
    assert s3.head_object(Bucket=buckets.source, Key=KEY)["ServerSideEncryption"] == "aws:kms"
    proxy.add_rule(Rule(None, method="GET", path=KEY + "$", drip=0.05))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    (get,) = requests_for(proxy, "GET")
    (put,) = requests_for(proxy, "PUT")
    assert put.started > get.finished  # not streamed
    md5 = hashlib.md5(body).digest()
    assert put.headers["content-md5"] == base64.b64encode(md5).decode()
    assert put.headers["user-agent"] == USER_AGENT
    assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert put.headers["content-length"] == str(SIZE) and "transfer-encoding" not in put.headers
    assert_same_objects(s3, buckets.source, buckets.dest, "data")


async def test_a_given_up_stream_gives_back_its_memory_and_stages_the_whole_object(
    buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The PUT reads one chunk and fails: every byte reserved for it is given back, and the
    download goes on to the staged file, which is the whole object."""
    body = put_source(s3, buckets.source)
    head = s3.head_object(Bucket=buckets.source, Key=KEY)
    item = WorkItem(key=KEY, size=head["ContentLength"], etag=head["ETag"])
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    budget = ByteBudget(2 * MiB)
    taken: list[int] = []

    async def failing_put(described: FetchedObject, chunks: AsyncIterator[bytes]) -> bool:
        async for chunk in chunks:
            taken.append(len(chunk))
            break
        await asyncio.sleep(0.2)  # meanwhile the download fills the budget
        return False

    async with s3_source(s3.meta.endpoint_url, buckets.source) as src:
        fetched, uploaded = await src.fetch_and_put(
            item, staging, budget=budget, upload=failing_put
        )
    assert not uploaded and len(taken) == 1
    assert budget.free == 2 * MiB  # every byte given back
    assert fetched.md5 == hashlib.md5(body).digest()  # the source's, from its ETag
    assert fetched.path.read_bytes() == body
    staging.close()  # the run is over: its lock file goes too
    assert list(staging.tmp_dir.iterdir()) == []


async def backup_of_a_grown_object(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fault: str | None
) -> tuple[Any, bytes]:
    """The backup (threshold 5 MiB) of an object listed at 3 MiB and replaced by a 6 MiB one
    as its first GET goes out, that GET answered with ``fault``; the report and the new body."""
    put_source(s3, buckets.source)
    grown = os.urandom(6 * MiB)
    proxy.add_rule(
        Rule(
            fault,
            method="GET",
            path=KEY + "$",
            times=1,
            action=lambda: s3.put_object(Bucket=buckets.source, Key=KEY, Body=grown),
        )
    )
    report = await backup(buckets, tmp_path, proxy, multipart_threshold=5 * MiB, part_size=5 * MiB)
    return report, grown


async def test_an_object_grown_past_the_threshold_since_its_listing_goes_in_parts(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Listed at 3 MiB, 6 MiB by the time of its GET: not one PUT above the threshold
    (5 MiB here), but a multipart upload of the staged file."""
    report, grown = await backup_of_a_grown_object(buckets, s3, tmp_path, proxy, fault=None)
    assert report.exit_code == 0, report.errors
    assert [r.query for r in requests_for(proxy, "PUT") if "partNumber=" not in r.query] == []
    assert len([r for r in requests_for(proxy, "PUT") if "partNumber=" in r.query]) == 2
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == grown


async def test_a_grown_object_downloaded_corrupted_is_caught_before_it_goes_in_parts(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Listed at 3 MiB (streamed), 6 MiB by its GET (parts: no streamed PUT checks it), and
    that GET corrupted: the staged file is checked against the ETag, so the corrupted copy
    never goes up, and the retry copies the object right. (Found in review.)"""
    report, grown = await backup_of_a_grown_object(buckets, s3, tmp_path, proxy, "corrupt")
    assert report.exit_code == 0, report.errors
    assert len(requests_for(proxy, "GET")) == 2  # the corrupted download, then the retry
    assert len([r for r in proxy.requests if r.method == "POST" and "uploads" in r.query]) == 1
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == grown


async def test_streams_go_on_when_throttling_left_one_put_slot(
    buckets: Buckets, s3: Any, tmp_path: Path, s3_server: S3Server
) -> None:
    """Scaled down from --concurrency 16 after SlowDown bursts: the sink's limiter at one
    slot, a 2 MiB budget, two 3 MiB objects streamed at once. A streamed PUT that held the
    only slot waited for its download, which waited for budget held by the other stream's
    chunks, whose PUT waited for the slot: nothing moved. Streamed PUTs take no slot now.
    (Found in review.)"""
    rounds = [{f"data/{n}{name}.bin": os.urandom(3 * MiB) for name in "ab"} for n in range(4)]
    bodies = {key: body for pair in rounds for key, body in pair.items()}
    for key, body in bodies.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    items = {}
    for key in bodies:
        head = s3.head_object(Bucket=buckets.source, Key=key)
        items[key] = WorkItem(key=key, size=head["ContentLength"], etag=head["ETag"])

    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    limiter = AdaptiveLimiter(4, clock=iter(range(0, 100, 10)).__next__)
    limiter.throttled()
    limiter.throttled()  # two SlowDown bursts: 4 -> 2 -> 1
    assert limiter.limit == 1
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, s3_server.endpoint)
        sink = S3Sink(
            client,
            buckets.dest,
            RetryPolicy(2, limiter=limiter),
            checksum="md5",
            multipart_threshold=64 * MiB,
            part_size_for=lambda size: 8 * MiB,
            part_concurrency=2,
            part_budget=ByteBudget(2 * MiB),
        )
        sink.fast = await open_fast_s3(
            stack, client, buckets.dest, connections=4, connect_timeout=2, read_timeout=10
        )
        source = await stack.enter_async_context(s3_source(s3_server.endpoint, buckets.source))
        copier = StagedCopier(source, sink, staging, lambda key: key, cleanup=True)

        async def both(pair: dict[str, bytes]) -> None:
            async with asyncio.TaskGroup() as tg:
                for key in pair:
                    tg.create_task(copier.copy_once(items[key]))

        for pair in rounds:  # the stall depends on how the two interleave: several tries
            limiter.limit = 1  # as throttled again (successes raise it)
            await asyncio.wait_for(both(pair), 20)
            assert sink.part_budget.free == 2 * MiB
    for key, body in bodies.items():
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body


async def test_no_stream_to_a_destination_whose_etags_are_not_md5s(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """--sse aws:kms: the copy's ETag cannot show a corrupted stream that a server did not
    check against Content-MD5, so the download is verified here first, then put."""
    body = put_source(s3, buckets.source)
    proxy.add_rule(Rule(None, method="GET", path=KEY + "$", drip=0.05))
    report = await backup(buckets, tmp_path, proxy, sse="aws:kms")
    assert report.exit_code == 0, report.errors
    (get,) = requests_for(proxy, "GET")
    (put,) = requests_for(proxy, "PUT")
    assert put.started > get.finished  # not streamed
    assert put.headers["x-amz-server-side-encryption"] == "aws:kms"
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == body


async def test_a_put_read_from_the_staged_file_is_retried_from_its_start(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """An SSE-KMS source (not streamed from its GET) whose PUT from the staged file is reset
    halfway: the file is read again from its start for the retry."""
    body = put_source(s3, buckets.source, ServerSideEncryption="aws:kms")
    proxy.add_rule(Rule("reset_before", method="PUT", path=KEY + "$", times=1))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    first, second = requests_for(proxy, "PUT")
    assert first.fault == "reset_before" and second.fault is None
    assert {first.headers["user-agent"], second.headers["user-agent"]} == {USER_AGENT}
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == body


async def test_a_staged_file_shorter_than_its_object_is_an_error_not_a_short_body(
    tmp_path: Path,
) -> None:
    path = tmp_path / "staged"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(IntegrityError, match="ended at 1000 of 3000 bytes"):
        async for _ in _file_chunks(path, 3000):
            pass


def _open_on(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path`` (Linux ``/proc``)."""
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if fd.resolve() == path.resolve())


async def test_a_staged_file_body_dropped_mid_way_leaves_no_file_open(tmp_path: Path) -> None:
    """The HTTP client stops reading a body when the connection is reset, without closing it:
    the staged file must not stay open until the garbage collector finds the generator (an
    unclosed-file warning, a leaked descriptor per reset)."""
    path = tmp_path / "staged"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    chunks = _file_chunks(path, 3 * 1024 * 1024)
    first = await anext(chunks)
    assert len(first) == 1024 * 1024
    assert _open_on(path) == 0  # abandoned here, as by a reset request
    await chunks.aclose()
