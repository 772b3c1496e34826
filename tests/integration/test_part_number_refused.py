"""A server that refuses ``HEAD ?partNumber=1`` (some S3-compatible servers answer it with 501
NotImplemented or 400 InvalidArgument): the copy of a multipart object goes on in parts of our
size instead of failing, still checked; other failures of that HEAD keep their meaning.

Against moto over HTTP, through the recording proxy, which gives the HEAD the server's answer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import MiB, backup_data, put_multipart
from tests.proxy import Recorded, Rule, S3Proxy

PART = 5 * MiB
SOURCE_PARTS = (6 * MiB, 6 * MiB, 77)  # a layout our 5 MiB parts do not reproduce
KEY = "data/big.bin"


def first_part_heads(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "HEAD" and "partNumber=1" in r.query]


def part_uploads(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.query]


def source_object(s3: Any, buckets: Buckets) -> tuple[bytes, str]:
    etag = put_multipart(s3, buckets.source, KEY, SOURCE_PARTS)
    return s3.get_object(Bucket=buckets.source, Key=KEY)["Body"].read(), etag


async def backup(buckets: Buckets, tmp_path: Path, proxy: S3Proxy, **options: Any) -> Any:
    return await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        **{"concurrency": 2, "multipart_threshold": PART, "part_size": PART, **options},
    )


@pytest.mark.parametrize("refusal", ["not_implemented", "invalid_argument"])
@pytest.mark.parametrize("direct", [False, True], ids=["staged", "direct"])
async def test_a_refused_part_number_head_copies_in_our_own_parts(
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    proxy: S3Proxy,
    refusal: str,
    direct: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body, source_etag = source_object(s3, buckets)
    proxy.add_rule(Rule(refusal, method="HEAD", query="partNumber="))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup(buckets, tmp_path, proxy, direct=direct)
    assert report.exit_code == 0, report.errors
    assert report.processed_files == 1
    # A refusal is an answer, not a failure: not retried (8 attempts). botocore sends a
    # HeadObject answered 400 once more itself, after a HEAD of the bucket for its region.
    heads = first_part_heads(proxy)
    assert 1 <= len(heads) <= 2 and all(h.fault == refusal for h in heads)
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == body
    # copied in 5 MiB parts, not the source's 6 MiB: so the ETag is not the source's
    copy_etag = s3.head_object(Bucket=buckets.dest, Key=KEY)["ETag"]
    assert copy_etag != source_etag and copy_etag.strip('"').endswith("-3")
    if not direct:
        sizes = sorted(int(r.headers["content-length"]) for r in part_uploads(proxy))
        assert sizes == [len(body) - 2 * PART, PART, PART]
        # each part was sent with the MD5 the destination checks
        assert all("content-md5" in r.headers for r in part_uploads(proxy))
    assert sum("refuses HEAD ?partNumber=1" in r.getMessage() for r in caplog.records) == 1


async def test_throttling_of_the_part_number_head_is_retried_and_keeps_the_layout(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    body, source_etag = source_object(s3, buckets)
    proxy.add_rule(Rule("slowdown", method="HEAD", query="partNumber=", times=1))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 0, report.errors
    assert [r.fault for r in first_part_heads(proxy)] == ["slowdown", None]
    # the source's layout was learnt: the copy has its ETag
    assert s3.head_object(Bucket=buckets.dest, Key=KEY)["ETag"] == source_etag
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == body


@pytest.mark.parametrize("fault", ["access_denied", "no_such_key"])
async def test_other_errors_of_the_part_number_head_still_fail_the_object(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fault: str
) -> None:
    source_object(s3, buckets)
    s3.put_object(Bucket=buckets.source, Key="data/small.bin", Body=os.urandom(100))
    proxy.add_rule(Rule(fault, method="HEAD", query="partNumber="))
    report = await backup(buckets, tmp_path, proxy)
    assert report.exit_code == 1
    assert list(report.errors) == [KEY]
    assert report.processed_files == 1  # the small object, not the one whose HEAD failed
    listed = s3.list_objects_v2(Bucket=buckets.dest).get("Contents", [])
    assert [o["Key"] for o in listed] == ["data/small.bin"]
    # nothing was downloaded or uploaded for it
    assert not part_uploads(proxy)
