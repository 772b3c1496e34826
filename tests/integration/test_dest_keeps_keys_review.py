"""A destination that answers a PUT with 200 and the right ETag but keeps something else
(review s14b, found on SeaweedFS): the copy must not be marked done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asyncbackup import read_checkpoint
from tests.conftest import Buckets
from tests.helpers import backup_data
from tests.proxy import Rule, S3Proxy


@pytest.mark.parametrize(
    "options", [{}, {"fast_path": False}, {"processes": 2}], ids=["fast", "botocore", "processes"]
)
async def test_a_folder_key_whose_data_the_destination_dropped_is_not_marked_done(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, options: dict[str, Any]
) -> None:
    """SeaweedFS makes a key ending in "/" a folder: a PUT of one with data answers 200 with
    the data's MD5, and an empty object is all that is kept. The run marked it done, an empty
    copy of a non-empty object; it is now an error (the copy is listed, its size compared)."""
    s3.put_object(Bucket=buckets.source, Key="data/notes/", Body=b"a folder key with data")
    s3.put_object(Bucket=buckets.source, Key="data/marker/", Body=b"")
    s3.put_object(Bucket=buckets.source, Key="data/plain", Body=b"plain")
    proxy.add_rule(Rule("folder_key_drops_data", method="PUT", path=f"^/{buckets.dest}/.*/$"))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=2, **options)
    copy = s3.get_object(Bucket=buckets.dest, Key="data/notes/")["Body"].read()
    assert copy == b""  # what the destination kept
    assert report.exit_code == 1
    assert list(report.errors) == ["data/notes/"], report.errors
    assert "IntegrityError" in report.errors["data/notes/"]
    files = read_checkpoint(report.checkpoint_path).files
    assert files["data/notes/"] is not True
    assert files["data/marker/"] is True and files["data/plain"] is True


@pytest.mark.parametrize("options", [{}, {"fast_path": False}], ids=["fast", "botocore"])
async def test_a_key_with_double_slashes_the_destination_folded_is_not_marked_done(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, options: dict[str, Any]
) -> None:
    """SeaweedFS keeps a PUT of a//b as a/b and answers 200 with the data's MD5; the run
    marked a//b done, absent at the destination (and a/b, another key, overwritten)."""
    s3.put_object(Bucket=buckets.source, Key="data/x//y", Body=b"under a double slash")
    s3.put_object(Bucket=buckets.source, Key="data/z", Body=b"plain")
    proxy.add_rule(Rule("fold_double_slash", method="PUT", path=f"^/{buckets.dest}/"))
    proxy.add_rule(Rule("fold_double_slash", method="GET", query="list-type=2"))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, **options)
    kept = s3.list_objects_v2(Bucket=buckets.dest, Prefix="data/")["Contents"]
    assert [o["Key"] for o in kept] == ["data/x/y", "data/z"]  # what the destination did
    assert report.exit_code == 1
    assert list(report.errors) == ["data/x//y"], report.errors
    files = read_checkpoint(report.checkpoint_path).files
    assert files["data/x//y"] is not True and files["data/z"] is True
