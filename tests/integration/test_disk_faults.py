"""The local disk failing under staging and the checkpoint, at moments the other full-disk
tests (``test_reliability_resources``, ``test_bad_local_paths``) leave out: a git clone of a
GitHub backup, ... Each fault is a real small file system (a tmpfs: the tests run as root, as
in CI) or a real resource limit."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from asyncbackup.checkpoint import read_checkpoint
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeGitHub, FakeRepo, git
from tests.integration.github_org import TOKEN, running_org
from tests.reliability import one_error_line, remount, tmpfs

MiB = 1024 * 1024


async def github_cli(github: FakeGitHub, *args: str) -> tuple[int, str]:
    """``asyncbackup github acme ARGS`` as a process of its own: its exit code and stderr."""
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
