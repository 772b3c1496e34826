"""A bucket in another region than the client's (review s15a): S3 answers a request signed
for the wrong region with a redirect naming the bucket's (``x-amz-bucket-region``), which
botocore follows; the recording proxy answers the same way for the buckets in its
``regions``."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.fasts3.client import USER_AGENT
from tests.conftest import Buckets
from tests.helpers import assert_same_objects, backup_data
from tests.proxy import Recorded, S3Proxy

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/")


def signed_for(record: Recorded) -> str | None:
    match = _SCOPE.search(record.headers.get("authorization", ""))
    return match.group(1) if match else None


@pytest.mark.parametrize("answer", ["redirect", "malformed"])
@pytest.mark.parametrize("side", ["source", "dest"])
async def test_a_bucket_in_another_region_keeps_the_fast_path_signed_for_its_region(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    answer: str,
    side: str,
) -> None:
    # One --region for both clients: with the buckets in two regions, one of them is
    # always in another region than its client's.
    proxy.regions[getattr(buckets, side)] = "eu-west-1"
    proxy.wrong_region = answer
    for i in range(6):
        s3.put_object(Bucket=buckets.source, Key=f"data/o{i}", Body=os.urandom(300 + i))
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            region="us-east-1",
            concurrency=2,
        )
    assert report.exit_code == 0 and report.copied_files == 6, report.errors
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 6
    # The start-up check meets the redirect (on the fast path, then botocore's first try);
    # from then on every request is signed for the bucket's region, on the fast path.
    refused = [r for r in proxy.requests if r.fault == "wrong_region"]
    assert len(refused) == 2, [(r.method, r.path, r.headers.get("user-agent")) for r in refused]
    method = "GET" if side == "source" else "PUT"
    copies = [r for r in proxy.requests if r.method == method and "/data/o" in r.path]
    assert len(copies) == 6
    assert all(r.headers.get("user-agent") == USER_AGENT for r in copies)
    assert {signed_for(r) for r in copies} == {"eu-west-1"}
    assert "fast path off" not in caplog.text
    said = [r.getMessage() for r in caplog.records if "eu-west-1" in r.getMessage()]
    assert len(said) == 1 and "us-east-1" in said[0], said


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_bucket_across_an_opt_in_region_is_copied_on_both_paths(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, fast_path: bool
) -> None:
    # S3 answers 400 IllegalLocationConstraintException (no region header) between an
    # opt-in region and another; botocore follows it (HEAD of the bucket for its region).
    proxy.regions[buckets.source] = "af-south-1"
    proxy.wrong_region = "opt_in"
    for i in range(4):
        s3.put_object(Bucket=buckets.source, Key=f"data/o{i}", Body=os.urandom(200 + i))
    report = await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        region="us-east-1",
        fast_path=fast_path,
    )
    assert report.exit_code == 0 and report.copied_files == 4, report.errors
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 4
    gets = [r for r in proxy.requests if r.method == "GET" and "/data/o" in r.path]
    assert {signed_for(r) for r in gets if r.fault is None} == {"af-south-1"}


async def test_a_bucket_handed_to_botocore_stays_there_with_one_warning(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The start-up check's fast path meets the answer that hands the bucket to botocore; the
    # listing's and the copies' fast paths, opened after it, do not send it again.
    proxy.regions[buckets.source] = "af-south-1"
    proxy.wrong_region = "opt_in"
    for i in range(6):
        s3.put_object(Bucket=buckets.source, Key=f"data/o{i}", Body=os.urandom(200 + i))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            region="us-east-1",
            concurrency=3,
        )
    assert report.exit_code == 0 and report.copied_files == 6, report.errors
    warnings = [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()]
    assert len(warnings) == 1, warnings
    refused = [r for r in proxy.requests if r.fault == "wrong_region" and r.method == "GET"]
    assert [r.headers.get("user-agent") == USER_AGENT for r in refused] == [True, False]
    fast = [r for r in proxy.requests if r.headers.get("user-agent") == USER_AGENT]
    assert len([r for r in fast if r.path.startswith(f"/{buckets.source}")]) == 1
    assert len([r for r in fast if r.method == "PUT"]) == 6  # the destination kept its own


async def test_a_write_only_destination_in_another_region_keeps_its_fast_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # --dest-write-only: the start-up check is botocore's upload, so the copies meet the
    # redirect themselves, first a streamed PUT (not sent again: the object goes another way).
    proxy.regions[buckets.dest] = "eu-west-1"
    objects = {"data/big": os.urandom(2 * 1024 * 1024), "data/small": os.urandom(500)}
    for key, body in objects.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            region="us-east-1",
            dest_write_only=True,
            concurrency=1,
        )
    assert report.exit_code == 0 and report.copied_files == 2, report.errors
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 2
    # the stream, and the staged file streamed after it, are refused and not sent again;
    # the object's next PUT is repeated by botocore, which follows the redirect: from then
    # on the fast path signs for eu-west-1
    puts = [r for r in proxy.requests if r.method == "PUT" and r.fault is None]
    assert [r.path.rsplit("/", 1)[1] for r in puts] == ["big", "small"]
    assert puts[1].headers.get("user-agent") == USER_AGENT
    assert {signed_for(r) for r in puts} == {"eu-west-1"}
    assert "fast path off" not in caplog.text
