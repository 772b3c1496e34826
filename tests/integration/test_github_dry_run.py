"""``backup-github --dry-run`` (``plan_github_backup``): the repositories a backup would take,
those its filters leave out and why, its artifacts and how many a checkpoint marks done,
against the loopback GitHub; nothing cloned, uploaded, staged, locked or written."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from asyncbackup import NullObserver, run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.github.plan import plan_github_backup
from tests.conftest import Buckets, S3Server
from tests.integration.github_org import TOKEN, config, running_org
from tests.reliability import listing


async def dry_run(
    github: Any, endpoint: str, bucket: str, base: Path, *extra: str
) -> tuple[int, str, str]:
    """``asyncbackup github acme --dry-run`` against the loopback GitHub and S3: its exit
    code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncbackup",
        "github",
        "acme",
        *("--dest-bucket", bucket, "--base-local-path", str(base), "--endpoint-url", endpoint),
        *("--api-url", github.api_url, "--dry-run", *extra),
        env={**os.environ, "GITHUB_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_dry_run_lists_the_repositories_and_touches_nothing(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    base = tmp_path / "work"
    report = tmp_path / "plan.json"
    async with running_org(tmp_path / "git") as github:
        code, out, err = await dry_run(
            github,
            s3_server.endpoint,
            buckets.dest,
            base,
            "--skip-forks",
            "--exclude",
            "B*",
            "--report",
            str(report),
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("dry run: would back up 3 repositories of acme ("), out
        assert lines[0].endswith("0 already done per checkpoint); 2 left out"), out
        assert sorted(lines[1:4]) == ["  acme/alpha", "  acme/empty", "  acme/old"], out
        assert lines[4:] == [
            "  left out: acme/beta (matched by --exclude)",
            "  left out: acme/forky (a fork (--skip-forks))",
        ], out
        plan = orjson.loads(report.read_bytes())
        assert plan["repositories"] == 3 and plan["checkpoint_exists"] is False
        assert plan["left_out"] == {
            "acme/beta": "matched by --exclude",
            "acme/forky": "a fork (--skip-forks)",
        }
        # alpha: bundle, wiki, 7 metadata files at most, its release asset; the others fewer
        assert 10 <= plan["artifacts"] <= 30, plan
        assert not any(github.git_requests(name) for name in ("alpha", "empty", "old"))
    assert not listing(s3, buckets.dest)  # nothing uploaded
    assert not base.exists()  # nothing staged, no checkpoint, no lock


async def test_dry_run_counts_what_a_checkpoint_to_resume_marks_done(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    """The artifacts a checkpoint still to resume marks done (here: a completed run's,
    put back, one bundle set pending again by hand) are counted; the checkpoint is left as
    it was."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, base)
        done = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert done.status == "completed", done
        (archived,) = (base / "checkpoints" / "archive").iterdir()
        live = base / "checkpoints" / "github_acme.checkpoint"
        shutil.copyfile(archived, live)
        data = orjson.loads(live.read_bytes())
        data["files"]["github/acme/alpha.bundle"] = False
        live.write_bytes(orjson.dumps(data))
        before = live.read_bytes()
        files_before = sorted(p.name for p in live.parent.iterdir())
        plan = await plan_github_backup(**options)
        marked = sum(1 for value in read_checkpoint(live).files.values() if value is True)
        assert plan.checkpoint_exists and plan.done_artifacts == marked
        assert plan.artifacts == marked + 1, plan
        assert live.read_bytes() == before
        assert sorted(p.name for p in live.parent.iterdir()) == files_before


async def test_dry_run_refuses_what_the_run_refuses(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    """A missing destination bucket: one line, exit 2, as the run."""
    async with running_org(tmp_path / "git") as github:
        code, out, err = await dry_run(
            github, s3_server.endpoint, buckets.dest + "-missing", tmp_path / "work"
        )
    assert code == 2, err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert f"destination bucket '{buckets.dest}-missing' does not exist" in line, err
    assert not out


async def test_a_dry_run_that_selects_nothing_warns_as_the_run_does(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    async with running_org(tmp_path / "git") as github:
        code, out, err = await dry_run(
            github,
            s3_server.endpoint,
            buckets.dest,
            tmp_path / "work",
            "--include",
            "alpah",
            "--quiet",
        )
    assert code == 0, err
    assert out.startswith("dry run: would back up 0 repositories of acme"), out
    assert "nothing to back up: none of the 5 repositories of acme passed the filters" in err


async def test_dry_run_after_a_run_with_errors_counts_none_done_as_the_new_pass(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    """A run that ended with errors leaves its checkpoint for a new pass: the next run looks
    at every artifact again (``new_pass``), none is skipped as done. The dry run said the
    checkpoint marked all but the failed one done, which the run then did not skip."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        failing = True

        async def broken_pulls(request: web.Request) -> web.StreamResponse | None:
            if failing and request.path == "/api/repos/acme/alpha/pulls":
                return web.Response(status=502, text="bad gateway")
            return None

        github.hooks.append(broken_pulls)
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, max_attempts=1)
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed_with_errors", first
        assert set(first.errors) == {"github/acme/alpha/pulls.json"}
        failing = False
        plan = await plan_github_backup(**options)
        assert plan.checkpoint_exists
        done_per_checkpoint: list[int] = []

        class Watch(NullObserver):
            def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
                done_per_checkpoint.append(skipped)

        again = await run_github_backup(clock=clock, sleep=clock.sleep, observer=Watch(), **options)
        assert again.status == "completed", again.errors
        # the run skipped as done what the checkpoint still marked done after its new pass
        assert plan.done_artifacts == sum(done_per_checkpoint), (plan, done_per_checkpoint)
        assert plan.done_artifacts == 0, plan
