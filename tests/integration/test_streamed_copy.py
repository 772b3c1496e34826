"""Objects uploaded in parts are streamed through staging: each part goes up as soon as it is
staged, and the upload is completed only once the whole download has checked out.

Against moto over HTTP, through the recording proxy (which can drip a GET's body slowly, or
corrupt it)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.errors import IntegrityError
from asyncbackup.fasts3.client import USER_AGENT
from asyncbackup.fetched import FetchedObject
from asyncbackup.partfeed import ByteBudget, PartFeed, part_length
from asyncbackup.pipeline import WorkItem
from asyncbackup.staging import Staging
from tests.conftest import Buckets
from tests.helpers import MiB, assert_same_objects, backup_data, put_multipart, s3_source
from tests.proxy import Recorded, Rule, S3Proxy

PART = 5 * MiB


def object_gets(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "GET" and not r.query]


def part_uploads(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.query]


def completes(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "POST" and "uploadId=" in r.query]


def creates(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "POST" and r.query == "uploads"]


async def backup(buckets: Buckets, tmp_path: Path, proxy: S3Proxy, **options: Any) -> Any:
    return await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        **{"concurrency": 4, "multipart_threshold": PART, "part_size": PART, **options},
    )


async def test_parts_are_uploaded_while_the_object_is_still_downloading(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    put_multipart(s3, buckets.source, "data/big.bin", [PART, PART, PART, 1000])
    body = s3.get_object(Bucket=buckets.source, Key="data/big.bin")["Body"].read()
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
    (parts sent by the fast path, or by botocore).

    The corrupted body is dripped (about 1 s) so that the upload is normally created before
    the download fails. Not always: on a loaded machine the failure may come first and
    cancel the upload before its CreateMultipartUpload is sent (then there is nothing to
    abort), so what is checked is that every upload created but not completed is aborted."""
    if multipart_source:
        put_multipart(s3, buckets.source, "data/obj", [PART, PART, 77])
    else:
        s3.put_object(Bucket=buckets.source, Key="data/obj", Body=os.urandom(2 * PART + 77))
    proxy.add_rule(Rule("corrupt", method="GET", path="/data/obj$", times=1, drip=0.025))
    report = await backup(buckets, tmp_path, proxy, fast_path=fast_path)
    agents = {u.headers["user-agent"] == USER_AGENT for u in part_uploads(proxy)}
    assert agents == {fast_path}
    assert report.exit_code == 0, report.errors
    assert len(object_gets(proxy)) == 2  # the corrupted one and the retry
    assert len(completes(proxy)) == 1  # only the retry's upload was completed
    aborts = [r for r in proxy.requests if r.method == "DELETE" and "uploadId=" in r.query]
    # Every upload created but not completed is aborted, never the completed one (an abort
    # may be sent twice: moto answers 500 to one racing a part upload the cancellation cut
    # short, and the retry's sweep of the key aborts it again).
    assert 1 <= len(creates(proxy)) <= 2
    aborted = {r.query for r in aborts}
    assert len(aborted) == len(creates(proxy)) - 1
    assert completes(proxy)[0].query not in aborted
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    assert_same_objects(s3, buckets.source, buckets.dest, "data")


async def test_an_upload_created_as_the_download_failed_is_aborted(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """The download fails (corrupted) while CreateMultipartUpload is on its way: the server
    made the upload, but its answer never reached the cancelled create. That upload is found
    (ListMultipartUploads of the key) and aborted, not left behind for ever: the retry's
    success clears the record a later run would have aborted it from."""
    put_multipart(s3, buckets.source, "data/obj", [PART, PART, 77])
    # dripped (about 1 s): the upload's create is sent before the download fails
    proxy.add_rule(Rule("corrupt", method="GET", path="/data/obj$", times=1, drip=0.025))
    # the first create reaches moto, its answer comes long after the download has failed
    proxy.add_rule(Rule(None, method="POST", query="uploads", times=1, delay_after_forward=5))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    assert len(creates(proxy)) == 2  # the one whose answer was lost and the retry's
    assert len(completes(proxy)) == 1
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    aborts = [r for r in proxy.requests if r.method == "DELETE" and "uploadId=" in r.query]
    assert len(aborts) == 1
    assert_same_objects(s3, buckets.source, buckets.dest, "data")


async def test_a_failed_upload_gives_back_every_memory_slot(
    buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The download reserves the bytes of each part it holds; when the upload fails, those of
    parts never uploaded are given back (or later objects would wait for ever), and no
    temporary file stays behind."""
    endpoint = s3.meta.endpoint_url
    put_multipart(s3, buckets.source, "data/obj", [PART] * 4)
    head = s3.head_object(Bucket=buckets.source, Key="data/obj")
    item = WorkItem(key="data/obj", size=head["ContentLength"], etag=head["ETag"])
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    budget = ByteBudget(3 * PART)
    taken: list[int] = []

    async def failing_upload(described: FetchedObject, feed: PartFeed) -> None:
        data, _ = await feed.take(0)
        taken.append(part_length(data))
        await asyncio.sleep(0.2)  # meanwhile the download fills the rest of the budget
        raise IntegrityError("the destination refused part 1")

    async with s3_source(endpoint, buckets.source) as src:
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
    staging.close()  # the run is over: its lock file goes too
    assert list(staging.tmp_dir.iterdir()) == []
    assert not staging.path_for("data/obj").exists()


async def test_an_empty_multipart_source_is_copied(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """A multipart upload of one empty part (ETag "...-1", size 0): its layout is no layout
    (it divided by zero and killed the worker), and the copy is one empty object."""
    put_multipart(s3, buckets.source, "data/empty", [0])
    s3.put_object(Bucket=buckets.source, Key="data/other", Body=b"x")
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    assert s3.head_object(Bucket=buckets.dest, Key="data/empty")["ContentLength"] == 0
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
