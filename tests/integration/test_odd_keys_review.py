"""Odd keys and odd objects, end to end (review s13a): what the other suites leave out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import MiB, assert_same_objects, backup_data, put_multipart
from tests.proxy import Rule, S3Proxy

#: a multipart source whose first part is the largest: no uniform layout fits its size and
#: part count (2 x 6 MiB < 11 MiB + 3 is false), so the first part tells nothing
FIRST_PART_LARGEST = (6 * MiB, 5 * MiB, 3)


@pytest.mark.parametrize(
    "options",
    [{}, {"multipart_threshold": 5 * MiB, "part_size": 5 * MiB}, {"fast_path": False}],
    ids=["one-put", "in-parts", "no-fast-path"],
)
async def test_a_corrupted_download_of_a_source_whose_first_part_is_largest_is_not_copied(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, options: dict[str, Any]
) -> None:
    """Its download must still make the source's multipart ETag, in the true part sizes:
    a body corrupted on its way is retried, never put at the destination as the copy."""
    put_multipart(s3, buckets.source, "data/first-largest.bin", FIRST_PART_LARGEST)
    proxy.add_rule(Rule("corrupt", method="GET", path="/data/first-largest.bin$", times=1))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=2, **options)
    assert report.exit_code == 0, report.errors
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


async def test_a_direct_copy_of_a_source_whose_first_part_is_largest_keeps_its_etag(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Made in the source's true part sizes, server-side: the copy has the source's ETag, so
    ``--skip-existing`` finds it unchanged next time instead of copying it again."""
    put_multipart(s3, buckets.source, "data/first-largest.bin", FIRST_PART_LARGEST)
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True)
    assert report.exit_code == 0, report.errors
    source = s3.head_object(Bucket=buckets.source, Key="data/first-largest.bin")
    copy = s3.head_object(Bucket=buckets.dest, Key="data/first-largest.bin")
    assert copy["ETag"] == source["ETag"]
    assert_same_objects(s3, buckets.source, buckets.dest, "data")
    again = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True, skip_existing=True)
    assert again.exit_code == 0 and again.copied_files == 0, again
