"""A multipart upload whose abort failed stays recorded until it is aborted, even when the
object's next attempt uploads the same key and completes (against moto, through the proxy)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import MiB, assert_same_objects, backup_data
from tests.proxy import Rule, S3Proxy

PART = 5 * MiB


async def test_an_upload_whose_abort_failed_is_not_forgotten_by_the_retry_of_its_object(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    s3.put_object(Bucket=buckets.source, Key="data/big.bin", Body=os.urandom(2 * PART + 10))
    # The first upload fails (part 2 refused by both of its attempts), and its abort fails
    # once; the object is retried, and its second upload of the same key completes.
    proxy.add_rule(Rule("internal", method="PUT", query="partNumber=2", times=2))
    proxy.add_rule(Rule("internal", method="DELETE", query="uploadId", times=1))
    report = await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        max_attempts=2,
        multipart_threshold=PART,
        part_size=PART,
    )
    assert report.exit_code == 0, report.errors
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    assert len(proxy.seen(method="POST", path="/data/big.bin$")) >= 3  # 2 creates, 1 complete
    # the first upload was aborted after all: nothing leaks at the destination
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


async def test_an_upload_whose_create_was_cancelled_on_its_way_is_aborted_by_its_id(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    s3.put_object(Bucket=buckets.source, Key="data/big.bin", Body=os.urandom(2 * PART + 10))
    # The first download is corrupted; by the time it has failed, the server has created the
    # first upload but not yet answered: that create is cancelled on its way. Its answer is
    # awaited (up to ABORT_TIMEOUT) and the upload it made aborted by its id, before the
    # object is tried again.
    proxy.add_rule(Rule("corrupt", method="GET", path="/data/big.bin$", times=1))
    proxy.add_rule(Rule(None, method="POST", query="uploads", times=1, delay_after_forward=2.0))
    report = await backup_data(
        buckets, tmp_path, proxy.endpoint, multipart_threshold=PART, part_size=PART
    )
    assert report.exit_code == 0, report.errors
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    creates = [r for r in proxy.seen(method="POST", path="/data/big.bin$") if r.query == "uploads"]
    assert len(creates) == 2 and creates[0].status == 200  # answered late, not cut short
    aborts = proxy.seen(method="DELETE", path="/data/big.bin$")
    assert len(aborts) == 1 and aborts[0].started < creates[1].started  # before the retry
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


async def test_aborts_that_fail_for_every_object_are_logged_a_few_times(
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    proxy: S3Proxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every object failing in parts with its abort refused too (a policy that denies
    s3:AbortMultipartUpload; a run stopping on credentials, with --concurrency uploads in
    flight) logged one warning per upload as it failed, and one more per upload at the end
    of the run, with the commands to abort it by hand: the first few now, then one line
    saying there are more (the rest at debug level); each upload stays recorded."""
    caplog.set_level(logging.DEBUG, logger="asyncbackup")
    count = 14
    for i in range(count):
        s3.put_object(Bucket=buckets.source, Key=f"data/{i:02d}.bin", Body=os.urandom(PART + 10))
    proxy.add_rule(Rule("invalid_argument", method="PUT", query="partNumber=2"))
    proxy.add_rule(Rule("access_denied", method="DELETE", query="uploadId"))
    report = await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        max_attempts=1,
        multipart_threshold=PART,
        part_size=PART,
        concurrency=2,
    )
    assert len(report.errors) == count, report.errors
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    as_they_fail = [w for w in warned if w.startswith("could not abort multipart upload")]
    at_the_end = [w for w in warned if "left behind" in w and "abort it by hand" in w]
    more = [w for w in warned if w.startswith("more multipart uploads")]
    assert len(as_they_fail) == 3 and len(at_the_end) == 10, warned
    assert len(more) == 2 and "list-multipart-uploads --bucket" in more[-1], more
    debug = [r for r in caplog.records if r.levelname == "DEBUG" and "abort" in r.getMessage()]
    assert len(debug) >= 2 * count - 13  # the rest, still said at --debug
