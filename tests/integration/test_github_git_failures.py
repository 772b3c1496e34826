"""git refused on the way, on a GitHub whose URL holds digits that look like a status.

The loopback GitHub of the tests listens on a port the system picks: about one port in 180
holds "451" (34512, 45123...), and a 429 or a 503 on such a URL was once taken for a
repository taken down (451) for good: the bundle failed instead of being tried again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncbackup import run_github_backup
from tests.conftest import Buckets, S3Server
from tests.github_server import add_commit
from tests.integration.github_org import config, refs, restore, running_org

PORTS_HOLDING_451 = [port for port in range(1024, 65536) if "451" in str(port)]


async def test_a_clone_refused_as_rate_limited_on_a_port_holding_451_is_tried_again(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    async with running_org(tmp_path / "git", ports=PORTS_HOLDING_451) as github:
        assert "451" in str(github.port)
        github.repos["beta"].git_refusals = [429]
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "base")
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.status == "completed", report.errors
        assert github.repos["beta"].git_refusals == []  # the refusal was met
        assert 429 in [seen.status for seen in github.git_seen if "/beta.git/" in seen.path]
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        source = refs(github.git_dir("beta"))
        assert refs(restored) == {r: sha for r, sha in source.items() if "refs/pull/" not in r}


async def test_a_fetch_refused_on_a_port_holding_451_keeps_the_mirror(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A 503 into the kept mirror is tried again into it: not taken for a final 451, nor for
    a damaged mirror deleted and cloned again."""
    async with running_org(tmp_path / "git", ports=PORTS_HOLDING_451) as github:
        base = tmp_path / "work"
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("beta",))
        clock = github.clock
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        (mirror,) = base.rglob(".mirrors/*/beta.git")
        marker = mirror / "kept-by-the-test"
        marker.write_text("the mirror of the first run")
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2024-02-01T00:00:00Z"
        github.repos["beta"].git_refusals = [503]
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert github.repos["beta"].git_refusals == []  # the refusal was met
        assert marker.exists()  # the same mirror, fetched into
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        assert refs(restored)["refs/heads/main"] == new_sha
