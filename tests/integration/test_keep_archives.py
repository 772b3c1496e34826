"""``--keep-archives N``: a job run nightly archives its whole checkpoint at every completion
(a million keys: about 28 MB a night, 10 GB a year) and nothing ever removed them. With the
flag, only the job's N newest archives stay; other jobs' archives are not touched."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.checkpoint_tool import archived_versions
from asyncbackup.errors import ConfigError
from tests.conftest import Buckets, S3Server
from tests.helpers import backup_data, cli_args, put_objects, run_cli
from tests.integration.github_org import config, running_org


async def test_only_the_newest_archives_of_the_job_stay(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {"data/a": b"a", "other/b": b"b"})
    other = await backup_data(buckets, tmp_path, s3_server.endpoint, source_path="other")
    assert other.status == "completed"
    for night in range(4):
        put_objects(s3, buckets.source, {f"data/night-{night}": b"n"})
        report = await backup_data(buckets, tmp_path, s3_server.endpoint, keep_archives=2)
        assert report.status == "completed" and report.archived_checkpoint is not None
    live = report.checkpoint_path
    kept = archived_versions(live)
    assert kept[-1] == report.archived_checkpoint
    # the two newest: the last two nights' listings, 4 and 5 files
    assert [read_checkpoint(p).total_files for p in kept] == [4, 5]
    others = archived_versions(other.checkpoint_path)
    assert len(others) == 1 and others[0].exists()  # another job's: not this job's count


async def test_without_the_flag_every_archive_stays(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {"data/a": b"a"})
    for _ in range(3):
        report = await backup_data(buckets, tmp_path, s3_server.endpoint)
    assert len(archived_versions(report.checkpoint_path)) == 3


def test_the_flag_on_the_command_line(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {"data/a": b"a"})
    args = ["data", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    for _ in range(3):
        done = run_cli([*args, "--keep-archives", "1", "--quiet"])
        assert done.returncode == 0, done.stderr
    archives = list((tmp_path / "checkpoints" / "archive").iterdir())
    assert len(archives) == 1
    refused = run_cli([*args, "--keep-archives", "0"])
    assert refused.returncode == 2 and "--keep-archives" in refused.stderr


def test_the_library_refuses_a_count_below_one(buckets: Buckets, tmp_path: Path) -> None:
    from asyncbackup import BackupConfig

    with pytest.raises(ConfigError, match="--keep-archives"):
        BackupConfig(
            source_bucket=buckets.source,
            source_path="data",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            keep_archives=0,
        )


async def test_a_github_backup_keeps_its_newest_archive_and_reads_it(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    """A GitHub backup reads its newest archive to skip what has not changed: with one
    archive kept, the next run still copies nothing that did not change."""
    async with running_org(tmp_path / "git") as github:
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", keep_archives=1
        )
        clock = github.clock
        for _ in range(3):
            report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
            assert report.status == "completed", report.errors
        assert archived_versions(report.checkpoint_path) == [report.archived_checkpoint]
        assert report.copied_bytes == 0  # unchanged: skipped by the archive it read


async def test_a_copy_a_user_made_in_the_archive_folder_is_not_removed(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Users keep copies of an archive beside it, ``NAME.checkpoint.<time>.bak`` (71763e3
    orders them): not an archive a completion made, so not one ``--keep-archives`` removes."""
    put_objects(s3, buckets.source, {"data/a": b"a"})
    first = await backup_data(buckets, tmp_path, s3_server.endpoint)
    assert first.archived_checkpoint is not None
    kept = first.archived_checkpoint.with_name(first.archived_checkpoint.name + ".bak")
    shutil.copyfile(first.archived_checkpoint, kept)
    for _ in range(2):
        report = await backup_data(buckets, tmp_path, s3_server.endpoint, keep_archives=1)
        assert report.status == "completed"
    assert kept.exists()
    assert report.archived_checkpoint is not None and report.archived_checkpoint.exists()
    assert not first.archived_checkpoint.exists()  # the completion's own archives: pruned


async def test_the_archive_a_completion_just_made_is_never_the_one_removed(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """An archive named after the present (made while the machine's clock was ahead, or
    restored from elsewhere) sorts after every archive made since: kept as 'the newest', it
    had each completion remove the archive it had just made, the one its report names."""
    put_objects(s3, buckets.source, {"data/a": b"a"})
    first = await backup_data(buckets, tmp_path, s3_server.endpoint)
    assert first.archived_checkpoint is not None
    ahead = first.archived_checkpoint.with_name(first.checkpoint_path.name + ".20991231T235959Z")
    first.archived_checkpoint.rename(ahead)
    put_objects(s3, buckets.source, {"data/b": b"b"})
    report = await backup_data(buckets, tmp_path, s3_server.endpoint, keep_archives=1)
    assert report.status == "completed" and report.archived_checkpoint is not None
    assert archived_versions(report.checkpoint_path) == [report.archived_checkpoint]
    assert read_checkpoint(report.archived_checkpoint).total_files == 2
