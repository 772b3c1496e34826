"""A machine whose clock is 20 minutes off: S3 refuses every request it signs with 403
RequestTimeTooSkewed (the proxy answers as S3 does, with the server's time in the body and in
``Date``). Neither botocore nor the fast path corrects the clock, so a run must say once what
to do, not retry and record every object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.errors import FatalRunError
from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.integration.github_org import config, running_org
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    checkpoint_file,
    one_error_line,
    put_parallel,
    read_valid,
    run_cli,
)


@pytest.mark.parametrize("path_flags", [(), ("--no-fast-path",)])
def test_a_skewed_clock_at_start_is_one_line_saying_to_set_the_clock(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, path_flags: tuple[str, ...]
) -> None:
    """It said "check the bucket name, the endpoint URL and --region"."""
    put_parallel(s3, buckets.source, {"c/1": b"one"})
    proxy.add_rule(Rule("clock_skew"))
    args = ["c", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *path_flags)]
    args.append("--quiet")
    done = run_cli(args)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "RequestTimeTooSkewed" in line
    assert "clock is 20 min behind the server's" in line, line
    assert "set the clock right" in line and "--region" not in line


def test_a_clock_that_goes_wrong_mid_run_stops_the_run_with_one_line(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The start-up checks pass, then every object's GET is refused as too skewed. Each
    object used to be retried whole and recorded, one identical error per object (60 here,
    a bucket's worth for real, each after minutes of retries), exit 1."""
    put_parallel(s3, buckets.source, {f"m/{i:03d}": os.urandom(40) for i in range(60)})
    skewed = proxy.add_rule(Rule("clock_skew", method="GET", path=rf"/{buckets.source}/m/"))
    args = [
        "m",
        *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest),
        "--max-attempts",
        "2",
        "--concurrency",
        "4",
        "--quiet",
    ]
    done = run_cli(args)
    assert skewed.hits >= 1
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert "clock is 20 min behind the server's" in line, line
    assert "run again" in line
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "m"))
    assert state.processed_files == 0
    assert not state.errors  # not blamed on the objects: the next run tries them all


async def test_the_github_command_stops_once_when_s3_says_the_clock_is_off(
    tmp_path: Path, proxy: S3Proxy, buckets: Buckets
) -> None:
    """The destination refuses every upload as too skewed: each artifact was retried and
    recorded with the same error (exit 1, every repository cloned for nothing); the run
    stops at the first (exit 3) saying to set the clock, nothing blamed on an artifact."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        proxy.add_rule(Rule("clock_skew", method="PUT"))
        clock = github.clock
        options = config(github, proxy.endpoint, buckets.dest, base, concurrency=1, max_attempts=2)
        with pytest.raises(FatalRunError) as caught:
            await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert "clock is 20 min behind the server's" in str(caught.value)
        state = read_checkpoint(base / "checkpoints" / "github_acme.checkpoint")
        assert state.errors == {} and not any(state.files.values())
