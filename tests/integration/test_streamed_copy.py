"""Objects uploaded in parts are streamed through staging: each part goes up as soon as it is
staged, and the upload is completed only once the whole download has checked out.

Against moto over HTTP, through the recording proxy (which can drip a GET's body slowly, or
corrupt it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from asyncbackup import run_backup
from asyncbackup.errors import IntegrityError
from asyncbackup.fasts3.client import USER_AGENT
from asyncbackup.partfeed import ByteBudget, PartFeed
from asyncbackup.pipeline import WorkItem
from asyncbackup.retry import RetryPolicy
from asyncbackup.s3client import open_client
from asyncbackup.sources.s3 import FetchedObject, S3Source
from asyncbackup.staging import Staging
from tests.conftest import Buckets, S3Server
from tests.helpers import MiB, assert_same_objects
from tests.proxy import Recorded, Rule, S3Proxy, run_proxy

PART = 5 * MiB


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[S3Proxy]:
    with run_proxy(s3_server.endpoint) as running:
        yield running


def upload_in_parts(s3: Any, bucket: str, key: str, body: bytes) -> None:
    """As ``aws s3 cp`` would: a multipart upload with 5 MiB parts."""
    s3.upload_fileobj(
        _Reader(body),
        bucket,
        key,
        Config=TransferConfig(multipart_threshold=PART, multipart_chunksize=PART),
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        out, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return out


def object_gets(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "GET" and not r.query]


def part_uploads(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.query]


def completes(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "POST" and "uploadId=" in r.query]


async def backup(buckets: Buckets, tmp_path: Path, proxy: S3Proxy, **options: Any) -> Any:
    return await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path / "stage",
        endpoint_url=proxy.endpoint,
        concurrency=4,
        multipart_threshold=PART,
        part_size=PART,
        **options,
    )


async def test_parts_are_uploaded_while_the_object_is_still_downloading(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    body = os.urandom(3 * PART + 1000)
    upload_in_parts(s3, buckets.source, "data/big.bin", body)
    # the GET's body arrives in 256 KiB pieces 0.05 s apart: about 3 s for the whole object
    proxy.add_rule(Rule(None, method="GET", path="/data/big.bin$", drip=0.05))
    report = await backup(buckets, tmp_path, proxy, cleanup=False)
    assert report.exit_code == 0, report.errors
    (get,) = object_gets(proxy)
    uploads = part_uploads(proxy)
    assert len(uploads) == 4
    assert all(u.headers["user-agent"] == USER_AGENT for u in uploads)  # on the fast path
    assert all("content-md5" in u.headers for u in uploads)
    # the first parts went up before the last byte of the download had arrived
    assert min(u.started for u in uploads) < get.finished - 1.0
    (complete,) = completes(proxy)
    # completed only after the last piece of the download (sent 0.05 s after the one before)
    assert complete.started > get.finished - 0.03
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    source = s3.head_object(Bucket=buckets.source, Key="data/big.bin")["ETag"]
    assert s3.head_object(Bucket=buckets.dest, Key="data/big.bin")["ETag"] == source
    staged = Staging(tmp_path / "stage", buckets.source).path_for("data/big.bin")
    assert staged.read_bytes() == body  # and the staged file is the whole object


@pytest.mark.parametrize(("multipart_source", "fast_path"), [(True, True), (False, False)])
async def test_a_corrupted_download_is_never_completed_at_the_destination(
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    proxy: S3Proxy,
    multipart_source: bool,
    fast_path: bool,
) -> None:
    """Bytes flipped in the GET's answer: the parts' MD5s (or the whole MD5) differ from the
    source's ETag, so that upload is aborted, never completed; the retry copies it right
    (parts sent by the fast path, or by botocore)."""
    body = os.urandom(2 * PART + 77)
    if multipart_source:
        upload_in_parts(s3, buckets.source, "data/obj", body)
    else:
        s3.put_object(Bucket=buckets.source, Key="data/obj", Body=body)
    proxy.add_rule(Rule("corrupt", method="GET", path="/data/obj$", times=1))
    report = await backup(buckets, tmp_path, proxy, fast_path=fast_path)
    agents = {u.headers["user-agent"] == USER_AGENT for u in part_uploads(proxy)}
    assert agents == {fast_path}
    assert report.exit_code == 0, report.errors
    assert len(object_gets(proxy)) == 2  # the corrupted one and the retry
    assert len(completes(proxy)) == 1  # only the retry's upload was completed
    aborts = [r for r in proxy.requests if r.method == "DELETE" and "uploadId=" in r.query]
    assert len(aborts) == 1
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    assert_same_objects(s3, buckets.source, buckets.dest, "data")


@contextlib.asynccontextmanager
async def source(endpoint: str, bucket: str) -> AsyncIterator[S3Source]:
    async with contextlib.AsyncExitStack() as stack:
        client = await open_client(
            stack,
            role="source",
            profile=None,
            endpoint_url=endpoint,
            region="us-east-1",
            max_pool_connections=4,
            connect_timeout=2,
            read_timeout=5,
        )
        yield S3Source(client, bucket, RetryPolicy(1))


async def test_a_failed_upload_gives_back_every_memory_slot(
    buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The download reserves the bytes of each part it holds; when the upload fails, those of
    parts never uploaded are given back (or later objects would wait for ever), and no
    temporary file stays behind."""
    endpoint = s3.meta.endpoint_url
    body = os.urandom(4 * PART)
    upload_in_parts(s3, buckets.source, "data/obj", body)
    head = s3.head_object(Bucket=buckets.source, Key="data/obj")
    item = WorkItem(key="data/obj", size=head["ContentLength"], etag=head["ETag"])
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    budget = ByteBudget(3 * PART)
    taken: list[int] = []

    async def failing_upload(described: FetchedObject, feed: PartFeed) -> None:
        data, _ = await feed.take(0)
        taken.append(len(data))
        await asyncio.sleep(0.2)  # meanwhile the download fills the rest of the budget
        raise IntegrityError("the destination refused part 1")

    async with source(endpoint, buckets.source) as src:
        with pytest.raises(IntegrityError, match="refused part 1"):
            await src.fetch_streamed(
                item,
                staging,
                part_size=PART,
                source_part_size=PART,
                budget=budget,
                upload=failing_upload,
            )
    assert taken == [PART]
    assert budget.free == 3 * PART  # every byte given back
    assert list(staging.tmp_dir.iterdir()) == []
    assert not staging.path_for("data/obj").exists()
