"""Weeks of scheduled runs (a review): a backup run every night or every hour, some of the
runs killed, and what each run leaves for the next one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asyncbackup import plan_backup, read_checkpoint, run_backup, run_github_backup
from asyncbackup.checkpoint_tool import mark_keys
from asyncbackup.staging import Staging
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeRepo
from tests.helpers import numbered_objects, put_objects
from tests.integration.github_org import config, running_org
from tests.integration.test_embedding import _options


async def test_a_crashed_run_of_the_same_pid_leaves_no_temporary_file_for_good(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(3))
    # A nightly job in a container is pid 1 at every run: a run killed mid-download (the OOM
    # killer, a deadline) left its partial download under the pid this run has now.
    tmp = tmp_path / ".tmp"
    tmp.mkdir(mode=0o700)
    crashed = tmp / f"{os.getpid()}-0badc0de-7"
    crashed.write_bytes(b"x" * 4096)
    # another job of this process, sharing the staging path, has a download in flight
    other = Staging(tmp_path, buckets.source)
    in_flight = other.temp_path()
    in_flight.write_bytes(b"y")
    report = await run_backup(**_options(s3_server, buckets, tmp_path, cleanup=True))
    assert report.status == "completed" and report.copied_files == 3
    # "Crash, SIGKILL, power loss ... Run again. ... staging temporaries removed."
    assert not crashed.exists()
    assert in_flight.exists()


async def test_a_deleted_repository_leaves_the_checkpoint_of_a_backup_that_keeps_failing(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        # one repository taken down for good: no run of the job completes any more
        github.add_repo(FakeRepo("dmca", status=451, has_wiki=False))
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base)
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed_with_errors"
        del github.repos["old"]  # deleted (or renamed) on GitHub before the next night
        for _ in range(2):
            night = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
            assert night.status == "completed_with_errors" and night.resumed
            state = read_checkpoint(night.checkpoint_path)
            # "Files that are no longer in the source ... leave `files` ... at the end of the
            # next complete listing: the counts are of what the source has."
            assert not [key for key in state.files if key.startswith("github/acme/old")]
            assert len(state.files) == night.total_files
            assert state.processed_files == len(state.files) - len(night.errors)


async def test_a_nightly_skip_existing_run_copies_what_changed_while_one_object_keeps_failing(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {"data/report.csv": b"monday", "data/notes": b"n"})
    # an object moved to an archive tier: every run fails it, no run completes the job
    s3.put_object(Bucket=buckets.source, Key="data/cold", Body=b"c", StorageClass="GLACIER")
    options = _options(s3_server, buckets, tmp_path, skip_existing=True)
    first = await run_backup(**options)
    assert first.status == "completed_with_errors" and set(first.errors) == {"data/cold"}
    # the next night: a file overwritten (same size, other bytes), another grown
    put_objects(s3, buckets.source, {"data/report.csv": b"friday", "data/notes": b"longer"})
    plan = await plan_backup(**options)
    assert (plan.done_files, plan.copy_files) == (0, 3)
    second = await run_backup(**options)
    assert second.status == "completed_with_errors" and second.resumed
    # "a file done and then overwritten in the source before the resume keeps its earlier
    # copy; the next backup, or `--skip-existing`, which compares sizes and ETags, copies
    # the new version"
    assert s3.get_object(Bucket=buckets.dest, Key="data/report.csv")["Body"].read() == b"friday"
    assert s3.get_object(Bucket=buckets.dest, Key="data/notes")["Body"].read() == b"longer"
    assert second.copied_files == 2
    # the operator skips the archived object: it stays skipped, and the job completes
    mark_keys(second.checkpoint_path, ["data/cold"], done=True)
    third = await run_backup(**options)
    assert third.status == "completed" and third.copied_files == 0
