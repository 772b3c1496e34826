"""A listing refused midway stops the run: exit 3 (a fatal error midway, the checkpoint
valid), one line that names the bucket and says what to do. It used to escape as the bare
object error ('error: AccessDenied: Access Denied') with exit 1, which means 'finished, some
objects failed, see the checkpoint's errors' - where there were none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.integration.github_org import TOKEN, running_org
from tests.integration.test_github_cli import run_cli as run_github_cli
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    assert_done_means_copied,
    checkpoint_file,
    one_error_line,
    put_parallel,
    read_valid,
    run_cli,
)


@pytest.mark.parametrize("fault", ["access_denied", "internal"])
def test_a_listing_refused_midway_stops_the_run_with_exit_3(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, fault: str
) -> None:
    put_parallel(s3, buckets.source, {f"s/{i:04d}": b"x" for i in range(300)})
    # The first page (100 keys) comes; the next ones are refused.
    proxy.add_rule(Rule(fault, method="GET", query="continuation-token"))
    args = ["s", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += ["--max-attempts", "2", "--list-streams", "1"]
    done = run_cli(args)
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert f"cannot list the source bucket '{buckets.source}'" in line, line
    assert "run again" in line, line
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "s"))
    assert not state.errors  # no object is blamed for it
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    dry = run_cli([*args, "--dry-run"])
    assert dry.returncode == 3, dry.stderr
    assert "cannot list the source bucket" in one_error_line(dry.stderr)


def test_a_destination_listing_refused_stops_the_run_with_exit_3(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """--skip-existing lists the destination too."""
    put_parallel(s3, buckets.source, {f"s/{i:04d}": b"x" for i in range(5)})
    # the listing's pages (100, then 1,000 keys), not the start-up check (one key)
    proxy.add_rule(
        Rule("access_denied", method="GET", path=f"^/{buckets.dest}$", query="max-keys=10")
    )
    args = ["s", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    done = run_cli([*args, "--skip-existing", "--max-attempts", "1"])
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert f"cannot list the destination bucket '{buckets.dest}'" in line, line


async def test_a_github_repository_list_refused_stops_the_run_with_exit_3(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    """The same for ``asyncbackup github``: the list of repositories failing for good."""
    async with running_org(tmp_path / "git") as github:

        async def refuse(request: web.Request) -> web.StreamResponse | None:
            if request.path == "/api/orgs/acme/repos":
                return web.json_response({"message": "Server Error"}, status=500)
            return None

        github.hooks.append(refuse)
        env = {**os.environ, "GITHUB_TOKEN": TOKEN}
        code, err = await run_github_cli(
            "acme",
            "--dest-bucket",
            buckets.dest,
            "--base-local-path",
            str(tmp_path / "w"),
            "--endpoint-url",
            s3_server.endpoint,
            "--api-url",
            github.api_url,
            "--max-attempts",
            "1",
            "--quiet",
            env=env,
        )
    assert code == 3, err
    line = one_error_line(err)
    assert "cannot list the repositories of acme" in line and "run again" in line, line
    assert TOKEN not in err
    state = read_valid(tmp_path / "w" / "checkpoints" / "github_acme.checkpoint")
    assert not state.errors
