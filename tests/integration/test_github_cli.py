"""The ``github`` command as a real process: one-line errors, and a SIGKILL then a resume."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.journal import journal_path
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeGitHub, FakeRepo, git
from tests.integration.github_org import ASSET, TOKEN, config, running_org
from tests.proxy import Rule, S3Proxy

MiB = 1024 * 1024


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncbackup",
        "github",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, err.decode()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


async def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"}
    common = ["--dest-bucket", buckets.dest, "--base-local-path", str(tmp_path / "w")]
    code, err = await run_cli("acme", *common, env=env)
    assert code == 2 and len(error_lines(err)) == 1
    assert "set the environment variable GITHUB_TOKEN" in err

    async with running_org(tmp_path / "git") as github:
        common += ["--endpoint-url", s3_server.endpoint, "--api-url", github.api_url]
        code, err = await run_cli("acme", *common, env={**env, "GITHUB_TOKEN": "ghp_wrong"})
        assert code == 2 and "GitHub refused GITHUB_TOKEN (401" in err
        assert "ghp_wrong" not in err and len(error_lines(err)) == 1

        code, err = await run_cli(
            "nobody", *common, "--token-env", "MY_TOKEN", env={**env, "MY_TOKEN": TOKEN}
        )
        assert code == 2 and "no organisation or user named 'nobody'" in err
        assert len(error_lines(err)) == 1

        code, err = await run_cli("acme/x", *common, env={**env, "GITHUB_TOKEN": TOKEN})
        assert code == 2 and "is not a GitHub organisation or user name" in err


async def start_run(
    github: Any, endpoint: str, bucket: str, base: Path, *extra: str
) -> asyncio.subprocess.Process:
    """``asyncbackup github acme`` against the fake GitHub, as a process of its own (stdout
    discarded, stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncbackup",
        "github",
        "acme",
        "--dest-bucket",
        bucket,
        "--base-local-path",
        str(base),
        "--endpoint-url",
        endpoint,
        "--api-url",
        github.api_url,
        "--skip-forks",
        "--quiet",
        *extra,
        env={**os.environ, "GITHUB_TOKEN": TOKEN},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


def done_count(checkpoint: Path) -> int:
    """Files done at the last flush: the JSON file (valid at every read) and its journal."""
    try:
        orjson.loads(checkpoint.read_bytes())
    except FileNotFoundError:
        return 0
    return read_checkpoint(checkpoint).processed_files


async def test_sigkill_then_resume_copies_only_what_was_left(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    base = tmp_path / "work"
    checkpoint = base / "checkpoints" / "github_acme.checkpoint"
    async with running_org(tmp_path / "git") as github:
        github.storage_gate = asyncio.Event()  # the release asset hangs until released
        process = await start_run(github, s3_server.endpoint, buckets.dest, base)
        deadline = time.monotonic() + 90
        # 30 artifacts: everything but the asset gets done, then the run hangs on it
        while done_count(checkpoint) < 29 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert done_count(checkpoint) == 29
        process.send_signal(signal.SIGKILL)
        _, err = await process.communicate()
        assert process.returncode == -signal.SIGKILL
        assert TOKEN not in err.decode()

        state = read_checkpoint(checkpoint)
        asset_key = "github/acme/alpha/releases/v1.0/tool-1.0.tar.gz"
        assert state.files[asset_key] is False
        journal = journal_path(checkpoint)  # the later flushes, after the kill
        written = checkpoint.read_bytes() + (journal.read_bytes() if journal.exists() else b"")
        assert TOKEN.encode() not in written
        git_posts = len([s for s in github.git_seen if s.method == "POST"])
        listed = _paid(github, "/orgs/acme/repos")

        github.storage_gate.set()
        clock = github.clock
        report = await run_github_backup(
            clock=clock, sleep=clock.sleep, **config(github, s3_server.endpoint, buckets.dest, base)
        )
        assert report.status == "completed", report.errors
        assert report.resumed and report.skipped_files == 29
        assert report.copied_files == 1 and report.copied_bytes == len(ASSET)
        assert len([s for s in github.git_seen if s.method == "POST"]) == git_posts  # no clone
        # one reading of the list, and one more that costs nothing: 304 Not Modified
        assert _paid(github, "/orgs/acme/repos") == listed + 1
        body = s3.get_object(Bucket=buckets.dest, Key=asset_key)["Body"].read()
        assert body == ASSET


def _paid(github: FakeGitHub, path: str) -> int:
    """Requests to ``path`` that count against the rate limit (all but 304 answers)."""
    return len([s for s in github.api_requests(path) if s.status != 304])


async def test_sigkill_during_a_bundle_multipart_upload_leaks_no_upload(
    tmp_path: Path, proxy: S3Proxy, buckets: Buckets, s3: Any
) -> None:
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        # "big": one incompressible 6 MiB file, so its bundle goes up in two 5 MiB parts
        github.add_repo(FakeRepo("big", has_wiki=False))
        work = tmp_path / "big.work"
        git("init", "-q", "-b", "main", str(work))
        (work / "blob.bin").write_bytes(os.urandom(6 * MiB))
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "big", cwd=work)
        git("clone", "-q", "--bare", str(work), str(github.git_dir("big")))
        proxy.add_rule(Rule("latency", method="PUT", query="uploadId", delay=30))  # parts crawl
        sizes = ["--multipart-threshold", "5MiB", "--part-size", "5MiB"]
        extra = ["--include", "big", *sizes]
        process = await start_run(github, proxy.endpoint, buckets.dest, base, *extra)
        deadline = time.monotonic() + 90
        while not uploads_in_progress(s3, buckets.dest) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(uploads_in_progress(s3, buckets.dest)) == 1
        process.send_signal(signal.SIGKILL)
        await process.communicate()

        proxy.clear_faults()
        clock = github.clock
        options = config(github, proxy.endpoint, buckets.dest, base, include=("big",))
        options.update(multipart_threshold=5 * MiB, part_size=5 * MiB)
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.status == "completed", report.errors
        assert s3.head_object(Bucket=buckets.dest, Key="github/acme/big.bundle")["ContentLength"]
        # the upload the killed run left is aborted, not kept (and paid for) for ever
        assert uploads_in_progress(s3, buckets.dest) == []


def uploads_in_progress(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def _children(pid: int, name: str) -> list[int]:
    """The live processes called ``name`` whose parent is ``pid`` (Linux ``/proc``)."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [child for child in pids if _stat(child) == (name, "live", pid)]


def _stat(pid: int) -> tuple[str, str, int] | None:
    """``(command, "live" or "dead", parent)`` of process ``pid``; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    command = text[text.index("(") + 1 : text.rindex(")")]
    state, parent = text[text.rindex(")") + 2 :].split()[:2]
    return command, "dead" if state in "ZX" else "live", int(parent)


async def test_git_does_not_outlive_a_sigkilled_run(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    """A run killed while git hangs on a stalled clone takes git with it: no git goes on
    writing into the mirror directory the next run fetches into."""
    async with running_org(tmp_path / "git") as github:
        github.repos["beta"].git_stalls = [120.0]
        base, extra = tmp_path / "work", ("--include", "beta")
        process = await start_run(github, s3_server.endpoint, buckets.dest, base, *extra)
        gits: list[int] = []
        try:
            deadline = time.monotonic() + 60
            while github.repos["beta"].git_stalls and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the server has begun to stall a git request
            gits = _children(process.pid, "git")
            assert gits, "no git running under the run"
            process.send_signal(signal.SIGKILL)
            await process.communicate()
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in gits) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not any(_alive(pid) for pid in gits)
        finally:
            if process.returncode is None:
                process.kill()
                await process.communicate()
            for pid in gits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == "live"
