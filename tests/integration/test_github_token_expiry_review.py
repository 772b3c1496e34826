"""A GitHub token that stops working mid-run: revoked, or expired (an app's installation token
lasts an hour, a fine-grained token until its date). The run stops at GitHub's first 401 with
one line saying so, marks nothing done that is not at the destination, and a run with a
valid token completes the backup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from asyncbackup import run_github_backup
from asyncbackup.errors import FatalRunError
from tests.conftest import Buckets, S3Server
from tests.helpers import list_keys
from tests.integration.github_org import TOKEN, config, running_org
from tests.integration.test_github_backup import EXPECTED
from tests.reliability import checkpoint_file, read_valid


@pytest.mark.parametrize("after", [8, 30])
async def test_a_token_revoked_mid_run_stops_it_and_a_new_one_resumes(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, after: int
) -> None:
    async with running_org(tmp_path / "git") as github:
        seen = 0

        async def revoke(request: web.Request) -> None:
            nonlocal seen
            seen += 1
            if seen == after:
                github.token = "revoked"

        github.hooks.append(revoke)
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "w")
        with pytest.raises(FatalRunError, match="stopped accepting the token"):
            await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        state = read_valid(checkpoint_file(tmp_path / "w", "github", "acme"))
        done = {key for key, finished in state.files.items() if finished}
        copied = set(list_keys(s3, buckets.dest))
        # (done and not copied: artifacts with nothing to copy, such as a wiki never written)
        assert done & EXPECTED <= copied
        assert EXPECTED - done  # stopped before the end
        github.hooks.clear()
        github.token = TOKEN
        report = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
    assert report.status == "completed", report.errors
    assert set(list_keys(s3, buckets.dest)) >= EXPECTED
