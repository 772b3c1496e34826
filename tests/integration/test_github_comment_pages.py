"""A repository's comment and review-comment lists deeper than GitHub pages them.

GitHub answers 422 "pagination is limited for this resource" past some tens of thousands of
a repository's comments (singer-io/tap-github#61: page 1334 of 30). The list is read on from
the last item written, with ``since`` (its creation time: every later item was updated at
or after it; https://docs.github.com/en/rest/issues/comments#list-issue-comments-for-a-repository),
the items listed again (created before it, edited since) skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from asyncbackup.github.backup import run_github_backup
from tests.github_server import FakeRepo, make_repository

from ..conftest import Buckets, S3Server
from .github_org import config, running_org


def _record(index: int, **extra: Any) -> dict[str, Any]:
    """Item ``index``, created in minute ``index // 3`` (three to a timestamp)."""
    created = f"2024-01-01T{index // 3 // 60:02d}:{index // 3 % 60:02d}:00Z"
    return {"id": 1000 + index, "created_at": created, "updated_at": created, **extra}


async def test_lists_deeper_than_githubs_pagination_cap_are_read_whole(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    async with running_org(tmp_path / "git") as github:
        big = github.add_repo(FakeRepo("big", has_wiki=False))
        make_repository(github.git_dir("big"), commits=1, tags=0, pull_ref=False)
        big.issue_comments = [_record(i, body=f"comment {i}") for i in range(550)]
        for edited in (10, 150, 199, 420):  # edited after the cap's point: listed again
            big.issue_comments[edited]["updated_at"] = "2025-06-01T00:00:00Z"
        big.pull_comments = [_record(i, body="nit") for i in range(230)]
        github.page_cap = 2  # 200 items a reading
        clock = github.clock
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", include=("big",)
        )
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.status == "completed", report.errors

        def ids(name: str) -> list[int]:
            key = f"github/acme/big/{name}.json"
            return [
                item["id"]
                for item in orjson.loads(s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read())
            ]

        assert ids("issue-comments") == [1000 + i for i in range(550)]
        assert ids("pull-comments") == [1000 + i for i in range(230)]
        readings = [
            seen.query for seen in github.seen if seen.path == "/api/repos/acme/big/issues/comments"
        ]
        assert sum("since=" in query for query in readings) >= 2  # 550 items, 200 a reading

        # the next run asks each page read whether it changed: all 304, nothing copied again
        before = len(github.seen)
        again = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert again.status == "completed", again.errors
        assert again.copied_files == 0 and report.copied_files >= 3
        asked = [seen for seen in github.seen[before:] if "since=" in seen.query]
        assert asked and all(seen.if_none_match for seen in asked)


async def test_a_page_kept_for_the_next_run_that_answers_the_cap_is_read_again(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """The next run asks each page the last one read whether it changed. A page that
    answers an error instead (GitHub's cap lowered since: page 3 of 3 now a 422) failed
    the list at every run, though the list itself could still be read: it is now read again
    whole (here, on with since), and any real error is that reading's."""
    async with running_org(tmp_path / "git") as github:
        big = github.add_repo(FakeRepo("big", has_wiki=False))
        make_repository(github.git_dir("big"), commits=1, tags=0, pull_ref=False)
        big.issue_comments = [_record(i, body=f"comment {i}") for i in range(250)]
        clock = github.clock
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", include=("big",)
        )
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        github.page_cap = 2
        again = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert again.status == "completed", again.errors
        key = "github/acme/big/issue-comments.json"
        copied = orjson.loads(s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read())
        assert [item["id"] for item in copied] == [1000 + i for i in range(250)]
