"""``--direct`` (server-side CopyObject / UploadPartCopy) when the source or the server misbehaves:
an object is marked done only once the destination has it whole, a failure of one object is
that object's error (never the run's), and a multipart copy keeps what a staged copy keeps.

Against moto over HTTP, through the recording, fault-injecting proxy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Buckets
from tests.helpers import MiB, backup_data, list_keys, put_multipart
from tests.proxy import Recorded, Rule, S3Proxy

KEY = "data/multi.bin"
PARTS = (5 * MiB, 1000)


def part_copies(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.query]


def no_uploads_left(s3: Any, bucket: str) -> bool:
    uploads: list[Any] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return not uploads


async def test_a_source_deleted_during_its_multipart_copy_is_that_objects_error(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """A part copy that fails for good (the source deleted meanwhile: 404) used to leave the
    copy as an exception group, which no handler took for an object's error: the whole run
    stopped with it instead of recording it and copying the rest."""
    put_multipart(s3, buckets.source, KEY, PARTS)
    s3.put_object(Bucket=buckets.source, Key="data/other.txt", Body=b"other")
    proxy.add_rule(
        Rule(
            None,
            method="PUT",
            query="partNumber=",
            times=1,
            action=lambda: s3.delete_object(Bucket=buckets.source, Key=KEY),
        )
    )
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True, concurrency=1)
    assert report.exit_code == 1 and report.copied_files == 1, report.errors
    assert list(report.errors) == [KEY]
    assert list_keys(s3, buckets.dest) == ["data/other.txt"]
    assert no_uploads_left(s3, buckets.dest)
