"""``S3Source.fetch`` against a real S3 server: what it stages, for small objects received in
memory and large ones streamed to a file, and what it refuses."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.errors import ObjectError
from asyncbackup.pipeline import WorkItem
from asyncbackup.sources.s3 import IN_MEMORY_LIMIT
from asyncbackup.staging import Staging
from tests.conftest import Buckets, S3Server
from tests.helpers import s3_source


def listed(s3: Any, bucket: str, key: str) -> WorkItem:
    head = s3.head_object(Bucket=bucket, Key=key)
    return WorkItem(key=key, size=head["ContentLength"], etag=head["ETag"])


@pytest.mark.parametrize("size", [0, 4096, IN_MEMORY_LIMIT, IN_MEMORY_LIMIT + 1, 3 * 2**20 + 7])
async def test_fetch_stages_the_exact_bytes(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path, size: int
) -> None:
    body = os.urandom(size)
    s3.put_object(Bucket=buckets.source, Key="dir/obj", Body=body, ContentType="x/y")
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    async with s3_source(s3_server.endpoint, buckets.source) as src:
        fetched = await src.fetch(listed(s3, buckets.source, "dir/obj"), staging)
    assert fetched.path == staging.path_for("dir/obj")
    assert fetched.path.read_bytes() == body
    assert fetched.size == size and fetched.md5 == hashlib.md5(body).digest()
    assert fetched.metadata["ContentType"] == "x/y"
    # small objects also stay in memory for the upload; large ones are read back from disk
    assert fetched.data == (body if size <= IN_MEMORY_LIMIT else None)
    staging.close()  # the run is over: its lock file goes too
    assert list(staging.tmp_dir.iterdir()) == []  # no temporary file left behind


async def test_a_small_listing_of_an_object_that_grew_is_refused_not_buffered(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Listed at 4 KiB, replaced by an object above the in-memory limit before the GET: it is
    not gathered in memory, and nothing is staged."""
    s3.put_object(Bucket=buckets.source, Key="k", Body=b"x" * 4096)
    item = listed(s3, buckets.source, "k")
    s3.put_object(Bucket=buckets.source, Key="k", Body=os.urandom(IN_MEMORY_LIMIT + 4096))
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    async with s3_source(s3_server.endpoint, buckets.source) as src:
        with pytest.raises(ObjectError) as caught:
            await src.fetch(item, staging)
    assert caught.value.code == "ObjectChanged"
    assert "run again" in str(caught.value)
    assert not staging.path_for("k").exists()
    staging.close()  # the run is over: its lock file goes too
    assert list(staging.tmp_dir.iterdir()) == []


async def test_a_staging_failure_is_an_error_and_leaves_no_temporary_file(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Staging a small object where the folder cannot be created (a file is in the way of
    the staging root) is an error naming the path, and leaves no temporary file."""
    s3.put_object(Bucket=buckets.source, Key="a/b", Body=b"data")
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    staging.root.rmdir()
    staging.root.write_bytes(b"in the way")
    async with s3_source(s3_server.endpoint, buckets.source) as src:
        with pytest.raises(ObjectError) as caught:
            await src.fetch(listed(s3, buckets.source, "a/b"), staging)
    assert caught.value.code == "LocalIOError"
    staging.close()  # the run is over: its lock file goes too
    assert list(staging.tmp_dir.iterdir()) == []
