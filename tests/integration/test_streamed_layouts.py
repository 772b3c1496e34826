"""A multipart source whose parts are not all the size of its first one (S3 allows any sizes
of 5 MiB or more but the last): copied, and its download still checked against the source's
ETag in its true layout. Against moto over HTTP, through the recording proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Buckets
from tests.helpers import MiB, assert_same_objects, backup_data, put_multipart
from tests.proxy import Recorded, Rule, S3Proxy

#: looks like 5, 5 and 2 MiB from its first part and its size: the layout check passes
UNEVEN = (5 * MiB, 6 * MiB, 1 * MiB)


def object_gets(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "GET" and not r.query]


def completes(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "POST" and "uploadId=" in r.query]


async def backup(buckets: Buckets, tmp_path: Path, proxy: S3Proxy) -> Any:
    return await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=2)


async def test_a_source_with_parts_of_different_sizes_is_copied(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    put_multipart(s3, buckets.source, "data/uneven.bin", UNEVEN)
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors  # was: an ETag mismatch on every attempt
    assert len(object_gets(proxy)) == 1
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


async def test_a_corrupted_download_of_such_a_source_is_never_completed(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """The true layout is no excuse: the download must make the source's ETag in it."""
    put_multipart(s3, buckets.source, "data/uneven.bin", UNEVEN)
    proxy.add_rule(Rule("corrupt", method="GET", path="/data/uneven.bin$", times=1))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    assert len(object_gets(proxy)) == 2  # the corrupted one and the retry
    assert len(completes(proxy)) == 1  # only the retry's upload was completed
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    assert_same_objects(s3, buckets.source, buckets.dest, "data")


async def test_a_direct_copy_of_such_a_source_is_made_in_its_true_layout(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Server-side, the first copy (in the layout the first part suggests) gets another ETag;
    the true part sizes are asked for and the copy is made again in them: same ETag."""
    put_multipart(s3, buckets.source, "data/uneven.bin", UNEVEN)
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True)
    assert report.exit_code == 0, report.errors  # was: "copy ETag differs" on every attempt
    source = s3.head_object(Bucket=buckets.source, Key="data/uneven.bin")
    copy = s3.head_object(Bucket=buckets.dest, Key="data/uneven.bin")
    assert copy["ETag"] == source["ETag"] and copy["ContentLength"] == sum(UNEVEN)
    heads = [r for r in proxy.requests if r.method == "HEAD" and "partNumber=" in r.query]
    assert len(heads) == 1 + len(UNEVEN)  # the first part's, then one per part
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
