"""Local paths that cannot be used: one line that says what to do, the documented exit code,
the checkpoint valid with nothing marked done; and from ``run_backup`` a typed error."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup import CheckpointError, ConfigError, run_backup
from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.reliability import (
    assert_done_means_copied,
    assert_identical,
    one_error_line,
    put_parallel,
    read_valid,
    remount,
    run_cli,
    tmpfs,
)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (a tmpfs mounted ``ro``; the tests run as root, whom
    permissions do not stop)."""
    with tmpfs(tmp_path / "ro", "size=1m", "ro") as where:
        yield where


def test_read_only_staging_directory_is_a_usage_error(
    read_only_dir: Path, s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" * 10 for i in range(3)})
    checkpoints = tmp_path / "checkpoints"
    stage = read_only_dir / "stage"
    args = ["p", *cli_args(s3_server.endpoint, stage, buckets.source, buckets.dest)]
    done = run_cli([*args, "--checkpoint-dir", str(checkpoints), "--quiet"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "staging directory" in line and "--base-local-path" in line, line
    assert "unexpected" not in line
    state = read_valid(checkpoints / f"{buckets.source}_p.checkpoint")
    assert not any(state.files.values())
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")


def test_staging_path_that_is_a_file_is_a_usage_error(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, {"p/1": b"x"})
    stage = tmp_path / "a-file"
    stage.write_text("not a directory")
    args = ["p", *cli_args(s3_server.endpoint, stage, buckets.source, buckets.dest)]
    done = run_cli([*args, "--checkpoint-dir", str(tmp_path / "checkpoints"), "--quiet"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "staging directory" in line and "--base-local-path" in line, line


async def test_run_backup_raises_a_typed_error_for_a_read_only_staging_directory(
    read_only_dir: Path, s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, {"p/1": b"x"})
    with pytest.raises(ConfigError, match="--base-local-path"):
        await run_backup(
            source_bucket=buckets.source,
            source_path="p",
            dest_bucket=buckets.dest,
            base_local_path=read_only_dir / "stage",
            checkpoint_dir=tmp_path / "checkpoints",
            endpoint_url=s3_server.endpoint,
        )


def test_dry_run_report_in_a_missing_directory_is_refused_before_the_listing(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """As for a run: refused at once (exit 2), not after the whole listing as an unexpected
    FileNotFoundError (exit 3)."""
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" for i in range(3)})
    report = tmp_path / "missing" / "plan.json"
    args = ["p", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
    done = run_cli([*args, "--dry-run", "--report", str(report)])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "--report" in line and "unexpected" not in line, line
    assert done.stdout == ""  # refused before listing anything


def test_full_checkpoint_directory_at_completion_says_to_run_again(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The disk of the checkpoint directory fills up as the run completes: the archive (or
    the completions log) cannot be written. A tmpfs with 4 inodes holds the folder, the lock,
    the checkpoint and the temporary file of its last write, and nothing more."""
    objects = {f"c/{i}": bytes([i]) * 100 for i in range(5)}
    put_parallel(s3, buckets.source, objects)
    checkpoints = tmp_path / "checkpoints"
    report = tmp_path / "report.json"
    args = ["c", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
    args += ["--checkpoint-dir", str(checkpoints), "--checkpoint-interval", "1000000"]
    args += ["--quiet", "--report", str(report)]
    with tmpfs(checkpoints, "size=1m", "nr_inodes=4"):
        done = run_cli(args)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert str(checkpoints) in line and "run" in line and "again" in line, line
        assert "unexpected" not in line
        assert "inodes" in line and "df -i" in line, line  # not "free space": df shows room
        # The complete checkpoint is where the next run finds it, valid, every file done.
        state = read_valid(checkpoints / f"{buckets.source}_c.checkpoint")
        assert state.files == dict.fromkeys(objects, True)
        # Space again: the same command archives it, copying nothing again.
        remount(checkpoints, "nr_inodes=100")
        again = run_cli(args)
        assert again.returncode == 0, again.stderr
        assert orjson.loads(report.read_bytes())["files_copied"] == 0
        assert len(list((checkpoints / "archive").iterdir())) == 1


def test_staged_files_that_cannot_be_removed_do_not_undo_their_copies(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """--cleanup on a staging folder where files can be created but not removed (append-only:
    ``chattr +a``): the copies are at the destination, so they are done; one warning says the
    staged files stay. Before, the first refused removal stopped the run ('unexpected
    PermissionError', exit 3) with nothing marked done."""
    objects = {f"a/{i:02d}": bytes([i]) * 50 for i in range(8)}
    put_parallel(s3, buckets.source, objects)
    base = tmp_path / "w"
    folder = base / buckets.source / "a"
    folder.mkdir(parents=True)
    subprocess.run(["chattr", "+a", str(folder)], check=True)
    args = ["a", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    try:
        done = run_cli([*args, "--cleanup", "--quiet", "--concurrency", "2"])
    finally:
        subprocess.run(["chattr", "-a", str(folder)], check=True)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "cannot remove staged file" in warnings[0], done.stderr
    assert "--cleanup" in warnings[0]
    assert_identical(s3, buckets.source, buckets.dest)
    assert sorted(p.name for p in folder.iterdir()) == sorted(k[2:] for k in objects)


@pytest.mark.parametrize("dry_run", [False, True])
def test_report_on_a_read_only_file_system_is_refused_before_the_run(
    read_only_dir: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    dry_run: bool,
) -> None:
    """Not after the whole copy, with a logged error and exit 0: a report that cannot be
    written is bad input, found at once like one in a missing directory."""
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" for i in range(3)})
    args = ["p", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
    args += ["--report", str(read_only_dir / "report.json"), "--quiet"]
    done = run_cli([*args, "--dry-run"] if dry_run else args)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "--report" in line, line
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")
    assert done.stdout == ""


def test_full_checkpoint_directory_midway_keeps_a_valid_checkpoint_and_resumes(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Only the checkpoint's disk fills up (staging is elsewhere, with room): the run stops
    with one line, exit 2; the checkpoint (its JSON file and journal) is valid and marks done
    only what is at the destination; with space again the same command completes."""
    objects = {f"m/{i:04d}": b"x" * 10 for i in range(400)}
    put_parallel(s3, buckets.source, objects)
    checkpoints = tmp_path / "checkpoints"
    with tmpfs(checkpoints, "size=64k"):
        (checkpoints / "filler").write_bytes(b"\0" * 44 * 1024)  # 20 KiB left
        args = ["m", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
        args += ["--checkpoint-dir", str(checkpoints), "--quiet", "--concurrency", "4"]
        done = run_cli(args)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert "cannot write checkpoint" in line and "No space left" in line, line
        state = read_valid(checkpoints / f"{buckets.source}_m.checkpoint")
        assert 0 < state.processed_files < 400
        assert_done_means_copied(s3, state, buckets.source, buckets.dest)
        (checkpoints / "filler").unlink()
        remount(checkpoints, "size=2m")
        again = run_cli(args)
        assert again.returncode == 0, again.stderr
        assert assert_identical(s3, buckets.source, buckets.dest) == 400


def test_an_existing_staging_tree_on_a_read_only_file_system_is_one_line(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The staging tree of an earlier run, now read-only: nothing to create, so nothing failed
    at the start, and every object was downloaded, then recorded as a LocalIOError (exit 1, a
    summary of errors that are no object's fault). Found at the start now: one line, exit 2."""
    put_parallel(s3, buckets.source, {f"p/{i:02d}": b"x" * 10 for i in range(12)})
    stage = tmp_path / "ro"
    with tmpfs(stage, "size=1m"):
        (stage / buckets.source / "p").mkdir(parents=True)  # as a run leaves it
        (stage / ".tmp").mkdir()
        remount(stage, "ro")
        checkpoints = tmp_path / "checkpoints"
        args = ["p", *cli_args(s3_server.endpoint, stage, buckets.source, buckets.dest)]
        done = run_cli([*args, "--checkpoint-dir", str(checkpoints), "--quiet"])
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert "staging directory" in line and "--base-local-path" in line, line
        state = read_valid(checkpoints / f"{buckets.source}_p.checkpoint")
        assert not state.errors and not any(state.files.values())


async def test_run_backup_on_a_full_checkpoint_disk_can_be_retried_in_the_same_process(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The checkpoint's disk is full when the run takes its lock: the lock file is created,
    the pid cannot be written into it. The error says to free space; and the program that
    embeds run_backup, having freed it, can run again - the failed attempt kept the lock
    (its descriptor was never closed), so every later run in the process was refused as
    'in use by another run'."""
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" for i in range(3)})
    checkpoints = tmp_path / "checkpoints"
    options: dict[str, Any] = {
        "source_bucket": buckets.source,
        "source_path": "p",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path / "w",
        "checkpoint_dir": checkpoints,
        "endpoint_url": s3_server.endpoint,
    }
    with tmpfs(checkpoints, "size=64k"):
        filler = checkpoints / "filler"
        with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:  # until the disk is full
                handle.write(b"\0" * 4096)
        with pytest.raises(CheckpointError, match="free space"):
            await run_backup(**options)
        filler.unlink()
        report = await run_backup(**options)
        assert report.status == "completed"
        assert assert_identical(s3, buckets.source, buckets.dest) == 3


async def test_a_checkpoint_directory_refused_after_the_lock_is_taken_lets_the_lock_go(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Opening the checkpoint takes the lock, then removes the temporary files of a killed
    run's writes: a directory where files can be created but not removed (``chattr +a``)
    fails that second step. Once the directory is fixed, the same process can run again
    (the failed attempt kept the lock: 'in use by another run' until the process ended)."""
    put_parallel(s3, buckets.source, {"p/1": b"x"})
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    name = f"{buckets.source}_p.checkpoint"
    (checkpoints / f".{name}.999999.tmp").write_bytes(b"{")  # a killed run's write
    options: dict[str, Any] = {
        "source_bucket": buckets.source,
        "source_path": "p",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path / "w",
        "checkpoint_dir": checkpoints,
        "endpoint_url": s3_server.endpoint,
    }
    subprocess.run(["chattr", "+a", str(checkpoints)], check=True)
    try:
        with pytest.raises(CheckpointError, match="cannot use checkpoint directory"):
            await run_backup(**options)
    finally:
        subprocess.run(["chattr", "-a", str(checkpoints)], check=True)
    report = await run_backup(**options)
    assert report.status == "completed"


def test_a_staging_path_with_two_leading_slashes_backs_up(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """``--base-local-path //tmp/...`` (``"$PREFIX/stage"`` with ``PREFIX=/``): POSIX keeps
    the two slashes in a path, and ``os.path.commonpath`` drops them, so every staged path
    was found "outside staging": each object failed with an unexpected ValueError."""
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"x")
    s3.put_object(Bucket=buckets.source, Key="p/b/c", Body=b"y")
    base = "/" + str(tmp_path / "stage")
    done = run_cli(["p", *cli_args(s3_server.endpoint, Path(base), buckets.source, buckets.dest)])
    assert done.returncode == 0, done.stderr
    assert_identical(s3, buckets.source, buckets.dest)
    (archived,) = (tmp_path / "stage" / "checkpoints" / "archive").iterdir()
    assert read_valid(archived).config["base_local_path"] == str(tmp_path / "stage")
