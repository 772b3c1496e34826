"""The github command's selection (review s19b): filters that leave out every repository."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import ConfigError, run_github_backup
from tests.conftest import Buckets, S3Server
from tests.integration.github_org import config, running_org


@pytest.mark.parametrize(
    ("filters", "hint"),
    [
        ({"exclude": ("*",)}, "--exclude '*'"),
        ({"include": ("alpah",)}, "--include 'alpah'"),
        ({"include": ("forky",)}, "--skip-forks"),
    ],
)
async def test_filters_that_leave_out_every_repository_are_a_warning_not_a_silent_success(
    tmp_path: Path,
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    caplog: pytest.LogCaptureFixture,
    filters: dict[str, Any],
    hint: str,
) -> None:
    """Filters that keep nothing (a mistyped name; a fork, with --skip-forks) completed with
    exit 0 and "copied 0 files", the checkpoint archived, with nothing said above INFO: with
    --quiet, a backup of nothing passed for a backup. The S3 command warns in the same case
    ("nothing to back up"), as the README's exit codes say."""
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    async with running_org(tmp_path / "git") as github:
        settings = config(github, s3_server.endpoint, buckets.dest, tmp_path / "w", **filters)
        report = await run_github_backup(**settings)
    assert report.exit_code == 0 and report.copied_files == 0
    assert s3.list_objects_v2(Bucket=buckets.dest).get("KeyCount") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "nothing to back up" in warnings[0] and "5 repositories of acme" in warnings[0]
    assert hint in warnings[0], warnings[0]


async def test_filters_that_keep_a_repository_say_nothing_more(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    async with running_org(tmp_path / "git") as github:
        settings = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "w", include=("Bet*",)
        )
        report = await run_github_backup(**settings)
    assert report.exit_code == 0 and report.copied_files > 0, report
    assert "nothing to back up" not in caplog.text


@pytest.mark.parametrize("flag", ["include", "exclude"])
async def test_a_pattern_with_the_owner_in_it_is_refused_before_anything_starts(
    tmp_path: Path, s3_server: S3Server, s3: Any, buckets: Buckets, flag: str
) -> None:
    """GitHub shows repositories as ``acme/old``; patterns match the name alone, in which no
    ``/`` can be. ``--exclude acme/old`` (a repository meant to stay out of the backup, its
    name pasted from GitHub) left nothing out, and the run backed ``old`` up without a word."""
    async with running_org(tmp_path / "git") as github:
        settings = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "w", **{flag: ("acme/old",)}
        )
        with pytest.raises(ConfigError, match=f"--{flag} 'acme/old'.*'old'"):
            await run_github_backup(**settings)
        assert github.seen == [] and github.git_seen == []
    assert s3.list_objects_v2(Bucket=buckets.dest).get("KeyCount") == 0


async def test_an_owner_with_no_repository_is_a_warning_too(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    async with running_org(tmp_path / "git") as github:
        github.repos.clear()
        settings = config(github, s3_server.endpoint, buckets.dest, tmp_path / "w")
        report = await run_github_backup(**settings)
    assert report.exit_code == 0 and report.total_files == 0, report
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["nothing to back up: the token sees no repository of acme"], warnings
