"""Large objects as other tools leave them in buckets: multipart layouts, their part-number
HEADs and what an encrypted neighbour does to them. Against moto over HTTP, through the
recording proxy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import MiB, backup_data, put_multipart
from tests.proxy import Rule, S3Proxy

#: a last part larger than the others: no uniform layout fits the first part's 5 MiB
LAST_LARGER = (5 * MiB, 5 * MiB, 7 * MiB)


async def test_an_sse_c_object_does_not_turn_off_the_checks_of_the_objects_after_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 answers a HEAD of an SSE-C object made without its key 400, no body: the same
    answer a server that does not do ``HEAD ?partNumber=`` gives. That object fails (its GET
    is refused too); the objects after it must still be checked against their ETags."""
    put_multipart(s3, buckets.source, "data/0-secret", (5 * MiB, 1 * MiB))
    put_multipart(s3, buckets.source, "data/1-uneven", LAST_LARGER)
    proxy.add_rule(Rule("sse_c_key_missing", path=r"/data/0-secret$"))
    # the uneven object's download is corrupted once: only its ETag, in its true layout,
    # can tell (its parts are checked by the destination as they were downloaded)
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/data/1-uneven$", times=1))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            concurrency=1,
            part_size=5 * MiB,
            multipart_threshold=5 * MiB,
        )
    assert list(report.errors) == ["data/0-secret"], report.errors
    source = s3.get_object(Bucket=buckets.source, Key="data/1-uneven")["Body"].read()
    copy = s3.get_object(Bucket=buckets.dest, Key="data/1-uneven")["Body"].read()
    assert copy == source  # was: the corrupted download, completed and marked done
    # nor is the bucket said to refuse part-number HEADs for one object's encryption
    assert "refuses HEAD ?partNumber" not in caplog.text


@pytest.mark.parametrize("threshold", [5 * MiB, 64 * MiB], ids=["in-parts", "one-put"])
async def test_a_server_that_ignores_part_numbers_still_gets_its_multipart_objects_copied(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    threshold: int,
) -> None:
    """Some servers answer ``HEAD ?partNumber=N`` as a plain HEAD: the whole object's length
    for every part. No layout can be read from that; the objects are copied in our parts,
    as for a server that refuses the parameter, rather than failing "the download does not
    make ETag ..." on every attempt of every run."""
    put_multipart(s3, buckets.source, "data/uniform", (5 * MiB, 5 * MiB, 2 * MiB))
    put_multipart(s3, buckets.source, "data/uneven", LAST_LARGER)
    proxy.add_rule(Rule("ignore_part_number", method="HEAD", query="partNumber="))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            concurrency=1,
            part_size=5 * MiB,
            multipart_threshold=threshold,
            max_attempts=2,
        )
    assert report.exit_code == 0, report.errors
    for key in ("data/uniform", "data/uneven"):
        source = s3.get_object(Bucket=buckets.source, Key=key)["Body"].read()
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == source
    assert caplog.text.count("partNumber") == 1  # said once, for the bucket
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
