"""Review of what the end of a GitHub run tells a monitor: the counts of its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from asyncbackup import run_github_backup
from asyncbackup.run_output import report_document, summary_lines
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeClock, FakeGitHub, add_commit
from tests.integration.github_org import TOKEN, config, running_org


async def test_a_releases_record_that_fails_is_not_counted_unchanged(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    # releases.json answers 304 (unchanged), but its release assets cannot be listed: it
    # fails (ReleaseAssetsNotListed). It was counted among the artifacts found unchanged all
    # the same, and the report took one off the artifacts copied to make up for it: a run
    # that copied beta's new bundle and record said it copied one file.
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, max_attempts=2)
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2024-02-01T00:00:00Z"
        keys = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"]}
        # the listing's look at its last pages (2 attempts), then its new reading (2 more)
        refusals = [502] * 4

        async def flaky_releases(request: web.Request) -> web.StreamResponse | None:
            if request.path == "/api/repos/acme/alpha/releases" and refusals:
                return web.Response(status=refusals.pop(0), text="bad gateway")
            return None

        github.hooks.append(flaky_releases)
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert not refusals
        assert set(second.failed_this_run) == {"github/acme/alpha/releases.json"}
        after = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"]}
        written = sorted(key for key, etag in after.items() if keys.get(key) != etag)
        assert written == ["github/acme/beta.bundle", "github/acme/beta/repository.json"]
        assert second.copied_files == len(written), second
        listed = second.total_files
        assert second.copied_files + second.skipped_files + len(second.failed_this_run) == listed


async def test_the_report_tells_repositories_left_out_from_none_to_back_up(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    # A pass whose filters left every repository out and one over an owner with none both
    # completed with every count 0: the report did not say which it was.
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "a")
        typo = await run_github_backup(
            clock=github.clock, sleep=github.clock.sleep, include=("alpah",), **options
        )
        some = await run_github_backup(
            clock=github.clock, sleep=github.clock.sleep, include=("alpha", "beta"), **options
        )
    server = FakeGitHub(tmp_path / "none", token=TOKEN, clock=FakeClock())
    await server.start()
    try:
        options = config(server, s3_server.endpoint, buckets.dest, tmp_path / "b")
        none = await run_github_backup(clock=server.clock, sleep=server.clock.sleep, **options)
    finally:
        await server.close()
    for report in (typo, none):
        assert report.status == "completed" and report.total_files == 0, report
    left_out, empty = report_document(typo), report_document(none)
    assert (left_out["repositories"], left_out["repositories_left_out"]) == (0, 5), left_out
    assert (empty["repositories"], empty["repositories_left_out"]) == (0, 0), empty
    assert "0 repositories, 5 left out by the filters" in summary_lines(typo)[0]
    kept = report_document(some)
    assert (kept["repositories"], kept["repositories_left_out"]) == (2, 3), kept
    assert "2 repositories, 3 left out by the filters" in summary_lines(some)[0]
