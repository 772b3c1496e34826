"""The local disk failing under staging and the checkpoint, at moments the other full-disk
tests (``test_reliability_resources``, ``test_bad_local_paths``) leave out: a git clone of a
GitHub backup, ... Each fault is a real small file system (a tmpfs: the tests run as root, as
in CI) or a real resource limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.journal import journal_path
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeGitHub, FakeRepo, git
from tests.helpers import assert_same_objects, cli_args
from tests.integration.github_org import TOKEN, running_org
from tests.proxy import S3Proxy
from tests.reliability import (
    CLI,
    assert_done_means_copied,
    assert_identical,
    checkpoint_file,
    one_error_line,
    put_parallel,
    read_valid,
    remount,
    run_cli,
    start_cli,
    tmpfs,
    wait_for,
)

MiB = 1024 * 1024


async def github_cli(
    github: FakeGitHub, *args: str, file_size_limit: int | None = None
) -> tuple[int, str]:
    """``asyncbackup github acme ARGS`` as a process of its own: its exit code and stderr;
    under ``ulimit -f`` when ``file_size_limit`` is given."""

    def limit_file_size() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncbackup",
        "github",
        "acme",
        "--api-url",
        github.api_url,
        "--skip-forks",
        "--quiet",
        *args,
        env={**os.environ, "GITHUB_TOKEN": TOKEN},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_file_size,
    )
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, err.decode()


def add_large_repository(github: FakeGitHub, work: Path, name: str, size: int) -> None:
    """A repository holding one incompressible file of ``size`` bytes."""
    github.add_repo(FakeRepo(name, has_wiki=False))
    git("init", "-q", "-b", "main", str(work))
    (work / "blob.bin").write_bytes(os.urandom(size))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "large", cwd=work)
    git("clone", "-q", "--bare", str(work), str(github.git_dir(name)))


async def test_a_git_clone_that_fills_the_staging_disk_stops_the_run_in_one_line(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """git's own "No space left on device" is the full staging disk the S3 backup stops at
    (exit 3, one line saying what to do). It was one more GitFailed error per repository:
    the run went on cloning every other one into the full disk, each downloaded whole before
    failing (three tries each), and ended with exit 1 and a list of errors."""
    base = tmp_path / "small"
    checkpoints = tmp_path / "checkpoints"  # elsewhere: the state must survive the full disk
    async with running_org(tmp_path / "git") as github:
        add_large_repository(github, tmp_path / "big.work", "big", 3 * MiB)
        args = ["--dest-bucket", buckets.dest, "--endpoint-url", s3_server.endpoint]
        args += ["--base-local-path", str(base), "--checkpoint-dir", str(checkpoints)]
        with tmpfs(base, "size=2m"):
            code, err = await github_cli(github, *args)
            assert code == 3, err
            line = one_error_line(err)
            assert "no space left in staging directory" in line, line
            assert "--base-local-path" in line and "run again" in line, line
            state = read_checkpoint(checkpoints / "github_acme.checkpoint")
            assert state.files.get("github/acme/big.bundle") is not True
            assert "github/acme/big.bundle" not in state.errors  # not an object's fault
            remount(base, "size=64m")  # space again: the same command completes
            code, err = await github_cli(github, *args)
            assert code == 0, err
    head = s3.head_object(Bucket=buckets.dest, Key="github/acme/big.bundle")
    assert head["ContentLength"] > 3 * MiB


async def test_a_git_clone_past_the_file_size_limit_says_so(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """Under ``ulimit -f``, a git writing past the limit got SIGXFSZ, which kills a process
    by default (Python ignores it, and gave it back to git): the clone failed with "fetch-pack:
    invalid index-pack output", one more GitFailed error for each repository past the limit,
    exit 1, nothing naming the limit. git now inherits the ignored signal, gets EFBIG, says
    "File too large", and the run stops in one line naming the limit (exit 3)."""
    base = tmp_path / "w"
    async with running_org(tmp_path / "git") as github:
        add_large_repository(github, tmp_path / "big.work", "big", 3 * MiB)
        args = ["--dest-bucket", buckets.dest, "--endpoint-url", s3_server.endpoint]
        args += ["--base-local-path", str(base)]
        code, err = await github_cli(github, *args, file_size_limit=MiB)
        assert code == 3, err
        line = one_error_line(err)
        assert "too large for staging directory" in line and "ulimit -f" in line, line
        state = read_checkpoint(base / "checkpoints" / "github_acme.checkpoint")
        assert "github/acme/big.bundle" not in state.errors
        code, err = await github_cli(github, *args)  # without the limit
        assert code == 0, err
    head = s3.head_object(Bucket=buckets.dest, Key="github/acme/big.bundle")
    assert head["ContentLength"] > 3 * MiB


def done_so_far(checkpoint: Path) -> int:
    try:
        return read_checkpoint(checkpoint).processed_files
    except Exception:  # not written yet
        return 0


@pytest.mark.parametrize("fault", ["read-only", "removed", "not-writable"])
def test_staging_made_unusable_mid_run_stops_the_run_in_one_line(
    fault: str, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The staging file system turns read-only mid-run (as ext4 does after disk errors,
    ``errors=remount-ro``), the staging folder is removed, or made unwritable (its mode, or
    here the immutable flag): no object can be staged any more. The run stops with one line
    and exit 3, as a full disk does; before, every object left was downloaded three times
    and failed (exit 1, a thousand LocalIOErrors that were no object's fault). The
    checkpoint marks done only what is at the destination, and the same command, once
    staging is usable again, completes."""
    objects = {f"r/{i:04d}": bytes([i % 256]) * 100 for i in range(300)}
    put_parallel(s3, buckets.source, objects)
    base = tmp_path / "stage"
    checkpoints = tmp_path / "checkpoints"
    checkpoint = checkpoints / f"{buckets.source}_r.checkpoint"
    args = ["r", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest)]
    args += ["--checkpoint-dir", str(checkpoints), "--quiet", "--concurrency", "2"]
    with tmpfs(base, "size=4m"):
        proxy.latency = 0.02  # a run of a few seconds
        process = start_cli(args)
        wait_for(lambda: done_so_far(checkpoint) >= 20 or process.poll() is not None)
        if fault == "read-only":
            remount(base, "ro")
        elif fault == "removed":
            for entry in base.iterdir():
                shutil.rmtree(entry)
        else:  # root ignores permissions, not the immutable flag: EPERM on every new file
            subprocess.run(["chattr", "+i", str(base / ".tmp")], check=True)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 3, err
        line = one_error_line(err)
        assert f"staging directory {base}" in line and "run again" in line, line
        said = {"read-only": "read-only", "removed": "removed", "not-writable": "cannot create"}
        assert said[fault] in line, line
        state = read_valid(checkpoint)
        assert 20 <= state.processed_files < 300
        assert len(state.errors) <= 2  # at most the objects in flight
        assert_done_means_copied(s3, state, buckets.source, buckets.dest)
        if fault == "read-only":
            remount(base, "rw")
        elif fault == "not-writable":
            subprocess.run(["chattr", "-i", str(base / ".tmp")], check=True)
        proxy.latency = 0.0
        again = run_cli(args)
        assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest, "r/") == 300


@pytest.mark.parametrize("removed", ["folder", "journal", "file"])
def test_a_checkpoint_removed_mid_run_is_written_again_whole(
    removed: str, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The checkpoint folder (a clean-up script, an operator's ``rm -rf``), or the journal
    or the JSON file alone, is removed while a run holds it. The run has the whole state in
    memory: it writes the checkpoint whole again, where it was, and completes. Before, the
    flushes went on into the removed journal (lost to any crash meanwhile), and the end of
    the run failed (exit 2, "the previous version is intact", there being none): the next
    run copied it all again. A JSON file removed alone went unnoticed until the end."""
    objects = {f"k/{i:04d}": bytes([i % 256]) * 100 for i in range(200)}
    put_parallel(s3, buckets.source, objects)
    checkpoints = tmp_path / "checkpoints"
    checkpoint = checkpoints / f"{buckets.source}_k.checkpoint"
    report = tmp_path / "report.json"
    args = ["k", *cli_args(proxy.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    args += ["--checkpoint-dir", str(checkpoints), "--quiet", "--concurrency", "2"]
    args += ["--report", str(report)]
    proxy.latency = 0.02  # a run of a few seconds
    process = start_cli(args)
    wait_for(lambda: done_so_far(checkpoint) >= 20 or process.poll() is not None)
    if removed == "folder":
        shutil.rmtree(checkpoints)
    elif removed == "journal":
        wait_for(lambda: journal_path(checkpoint).exists() or process.poll() is not None)
        journal_path(checkpoint).unlink()
    else:  # the JSON file the journal continues
        wait_for(lambda: journal_path(checkpoint).exists() or process.poll() is not None)
        checkpoint.unlink()
    # Until the run ends, the checkpoint on disk keeps up with it again: a crash now loses
    # no more than a crash before the removal would have.
    # (not the final compaction's count, which also comes before the run ends)
    wait_for(lambda: 40 <= done_so_far(checkpoint) < 200 or process.poll() is not None)
    assert process.poll() is None, "the checkpoint was not written again before the end"
    state = read_valid(checkpoint)
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "removed" in err and str(checkpoint) in err, err  # said once, a warning
    (archived,) = (checkpoints / "archive").iterdir()
    assert read_valid(archived).files == dict.fromkeys(objects, True)
    assert assert_identical(s3, buckets.source, buckets.dest, "k/") == 200


def cli_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    """The CLI under ``ulimit -f``: a write past ``limit`` bytes fails with EFBIG (Python
    ignores SIGXFSZ, which would otherwise kill it)."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_file_size,
        env=dict(os.environ),
    )


@pytest.mark.parametrize("where", ["staging", "checkpoint"])
def test_a_file_size_limit_is_not_taken_for_a_full_disk(
    where: str, s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A file larger than ``ulimit -f`` (or than its file system takes: FAT32's 4 GiB) fails
    with EFBIG, "File too large". Freeing space does not help, nor do permissions: the line
    says to raise the limit or to use another file system. Before, a staged file said "no
    space left ... free space", a checkpoint "make it writable by this user"."""
    if where == "staging":  # one object larger than the limit
        objects = {"z/big": os.urandom(300_000)}
    else:  # small objects, a checkpoint larger than the limit
        objects = {f"z/{'k' * 60}-{i:04d}": b"0123456789" for i in range(600)}
    put_parallel(s3, buckets.source, objects)
    args = ["z", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
    args += ["--quiet"]
    done = cli_with_file_size_limit(args, 16_384 if where == "checkpoint" else 100_000)
    assert done.returncode in (2, 3), done.stderr
    line = one_error_line(done.stderr)
    assert "File too large" in line or "too large" in line, line
    assert "ulimit -f" in line, line
    assert "free space" not in line and "writable by this user" not in line, line
    state = read_valid(checkpoint_file(tmp_path / "w", buckets.source, "z"))
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    again = run_cli(args)  # without the limit: the same command completes
    assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest, "z/") == len(objects)


def test_a_completion_line_cut_short_by_the_disk_leaves_completions_log_readable(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The disk takes part of the completion's JSON line only (a short write: the room left in
    the file's last block, or the file size limit, as here), then fails. The run says to run
    again (exit 2); the next run appends the line again. The part written before must not
    stay: the next line was glued to it, and ``jq`` (or any JSON-lines reader) stopped at the
    log's first torn entry, every later completion with it."""
    put_parallel(s3, buckets.source, {f"c/{i}": b"x" for i in range(3)})
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    log = checkpoints / "completions.log"
    earlier = b'{"backup_id":"earlier","completed":"2026-01-01T00:00:00+00:00"}\n'
    log.write_bytes(earlier * 300)  # 19 KB of earlier completions
    args = ["c", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
    args += ["--checkpoint-dir", str(checkpoints), "--quiet"]
    done = cli_with_file_size_limit(args, log.stat().st_size + 40)  # 40 bytes of the line
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "every file is copied" in line and "run the same command again" in line, line
    assert log.read_bytes() == earlier * 300  # nothing of the failed line left
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    entries = [orjson.loads(entry) for entry in log.read_bytes().splitlines()]
    assert len(entries) == 301 and entries[-1]["files"] == 3


def test_a_bucket_staging_folder_on_a_disk_of_its_own_works(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A disk mounted at ``BASE/<bucket>`` (the bucket's staging on a larger volume): every
    staged file starts in ``BASE/.tmp``, on the other file system, and a rename across file
    systems fails (EXDEV). Every object failed, downloaded three times first (exit 1, one
    LocalIOError "Invalid cross-device link" each). The file is now copied across, private
    as any staged file, and the run completes."""
    objects = {f"x/{i:02d}": os.urandom(2000 + i) for i in range(20)}
    objects["x/big"] = os.urandom(6 * MiB)  # streamed in parts, committed at its end
    put_parallel(s3, buckets.source, objects)
    base = tmp_path / "w"
    args = ["x", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    args += ["--quiet", "--multipart-threshold", "5MiB", "--part-size", "5MiB"]
    with tmpfs(base / buckets.source, "size=16m", "mode=0700") as folder:
        done = run_cli(args)
        assert done.returncode == 0, done.stderr
        staged = {p for p in (folder / "x").iterdir()}
        assert {p.name for p in staged} == {key[2:] for key in objects}
        assert {p.stat().st_mode & 0o777 for p in staged} == {0o600}
        assert (folder / "x" / "big").read_bytes() == objects["x/big"]
        assert not list((base / ".tmp").iterdir())  # nothing left on the other side
    assert assert_same_objects(s3, buckets.source, buckets.dest, "x/") == len(objects)


def test_a_staging_disk_out_of_inodes_says_inodes(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Every file and folder takes an inode; a file system out of them refuses new files
    with ENOSPC while ``df -h`` shows it nearly empty. The line said "no space left ... free
    space or a larger disk": it now says no inodes are left, and where to look (``df -i``)."""
    put_parallel(s3, buckets.source, {f"i/{n:03d}": b"x" for n in range(60)})
    base = tmp_path / "w"
    args = ["i", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    args += ["--quiet", "--checkpoint-dir", str(tmp_path / "checkpoints")]
    with tmpfs(base, "size=64m", "nr_inodes=30"):
        done = run_cli(args)
        assert done.returncode == 3, done.stderr
        line = one_error_line(done.stderr)
        assert "no free inodes left in staging directory" in line and "df -i" in line, line
        shutil.rmtree(base / buckets.source)
        # room again: files removed as they are copied, 8 staged at most (one per object
        # in flight: at the default 128, all 60 at once, as many as the first run)
        again = run_cli([*args, "--cleanup", "--concurrency", "8"])
        assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest, "i/") == 60


def test_a_dry_run_report_on_a_full_disk_says_to_free_space(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A dry run's ``--report`` on a full disk said "give a file this user can write", as if
    the file were not writable; the real run's report already said what the disk needs."""
    put_parallel(s3, buckets.source, {f"k/{i:03d}": b"x" * 10 for i in range(300)})
    full = tmp_path / "full"
    args = ["k", *cli_args(s3_server.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    with tmpfs(full, "size=64k"):
        with contextlib.suppress(OSError), (full / "filler").open("wb") as filler:
            while True:  # the disk full to its last block
                filler.write(b"\0" * 4096)
                filler.flush()
        done = run_cli([*args, "--dry-run", "--report", str(full / "report.json")])
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert "free space" in line and "this user can write" not in line, line
