"""A token with a control character in it (pasted with an escape sequence, say) is bad input:
one line, exit 2, before any request; it was an 'unexpected ValueError' from the HTTP client
(a forbidden character in a header), exit 3."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import Buckets, S3Server
from tests.integration.github_org import running_org
from tests.integration.test_github_cli import run_cli
from tests.reliability import one_error_line


async def test_a_token_with_a_control_character_is_refused_in_one_line(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    secret = "ghp_pasted\x1b[0mTOKEN0123456789"
    async with running_org(tmp_path / "git") as github:
        env = {**os.environ, "GITHUB_TOKEN": secret}
        code, err = await run_cli(
            "acme",
            "--dest-bucket",
            buckets.dest,
            "--base-local-path",
            str(tmp_path / "w"),
            "--endpoint-url",
            s3_server.endpoint,
            "--api-url",
            github.api_url,
            env=env,
        )
        assert not github.seen  # refused before any request
    assert code == 2, err
    line = one_error_line(err)
    assert "GITHUB_TOKEN" in line and "unexpected" not in line, line
    assert "TOKEN0123456789" not in err
