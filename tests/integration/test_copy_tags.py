"""``--copy-tags``: each object's tags (S3 object tagging) go with its copy, in every way an
object is copied: a small one received in memory, a streamed PUT, a multipart upload in the
source's layout, a server-side CopyObject and a multipart server-side copy; and in worker
processes. Without the flag a staged copy has no tags, and no tagging request is made."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import run_cli_async
from tests.helpers import MiB, assert_same_objects, cli_args, put_multipart
from tests.proxy import Rule, S3Proxy

TAGS = {"team": "data eng", "path": "a/b:c@d", "empty": "", "class": "x+y=z"}


def _seed(s3: Any, bucket: str) -> dict[str, dict[str, str]]:
    """Objects of each copy path, tagged or not; key -> its tags."""
    bodies = {
        "data/small-tagged.txt": os.urandom(3000),
        "data/small-plain.txt": os.urandom(3000),
        "data/streamed-tagged.bin": os.urandom(2 * MiB + 5),
    }
    tags: dict[str, dict[str, str]] = {}
    for index, (key, body) in enumerate(bodies.items()):
        tagged = "tagged" in key
        extra = {"Tagging": urlencode({**TAGS, "n": str(index)})} if tagged else {}
        s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        tags[key] = {**TAGS, "n": str(index)} if tagged else {}
    # a multipart source of 5 MiB parts, tagged at its creation
    key = "data/multipart-tagged.bin"
    put_multipart(s3, bucket, key, [5 * MiB, 5 * MiB, 1234], Tagging=urlencode({"mp": "yes"}))
    tags[key] = {"mp": "yes"}
    return tags


def _tags(s3: Any, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


@pytest.mark.parametrize(
    "mode",
    [[], ["--no-fast-path"], ["--direct"], ["--direct", "--no-fast-path"], ["--processes", "2"]],
    ids=["staged", "staged-botocore", "direct", "direct-botocore", "processes"],
)
async def test_copy_tags_copies_every_objects_tags(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, mode: list[str]
) -> None:
    expected = _seed(s3, buckets.source)
    args = cli_args(s3_server.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    result = await run_cli_async(["s3", "data", *args, "--copy-tags", *mode])
    assert result.returncode == 0, result.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest, "data/") == len(expected)
    for key, tags in expected.items():
        assert _tags(s3, buckets.dest, key) == tags, key
    (archived,) = (tmp_path / "scratch" / "checkpoints" / "archive").iterdir()
    assert orjson.loads(archived.read_bytes())["config"]["copy_tags"] is True  # for jq


async def test_without_the_flag_a_staged_copy_has_no_tags_and_no_tagging_request_is_made(
    s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    expected = _seed(s3, buckets.source)
    args = cli_args(proxy.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    result = await run_cli_async(["s3", "data", *args])
    assert result.returncode == 0, result.stderr
    for key in expected:
        assert _tags(s3, buckets.dest, key) == {}, key
    assert not [r for r in proxy.requests if "tagging" in r.query]
    assert not [r for r in proxy.requests if "x-amz-tagging" in r.headers]


async def test_tags_the_source_may_not_be_read_are_one_error_each_that_says_what_to_grant(
    s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    expected = _seed(s3, buckets.source)
    proxy.add_rule(Rule("access_denied", method="GET", query="tagging"))
    base = tmp_path / "scratch"
    args = cli_args(proxy.endpoint, base, buckets.source, buckets.dest)
    result = await run_cli_async(["s3", "data", *args, "--copy-tags"])
    assert result.returncode == 1, result.stderr
    assert "s3:GetObjectTagging" in result.stderr
    tagged = {key for key, tags in expected.items() if tags}
    # the untagged object needed no tagging request, and was copied
    assert s3.head_object(Bucket=buckets.dest, Key="data/small-plain.txt")["ContentLength"] == 3000
    listed = s3.list_objects_v2(Bucket=buckets.dest, Prefix="data/").get("Contents", [])
    assert not tagged & {item["Key"] for item in listed}  # no copy without its tags
