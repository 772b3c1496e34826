"""GitHub to S3 end to end: a loopback GitHub (REST API + git http-backend) to moto over HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.errors import CheckpointMismatchError, FatalRunError
from tests.conftest import Buckets, S3Server
from tests.github_server import (
    FakeClock,
    FakeGitHub,
    FakeRepo,
    add_commit,
    git,
    make_repository,
)
from tests.helpers import list_keys
from tests.integration.github_org import (
    ASSET,
    PORTS_HOLDING_451,
    TOKEN,
    config,
    refs,
    restore,
    running_org,
)
from tests.proxy import Rule, S3Proxy, run_proxy

EXPECTED = {
    "github/acme/alpha.bundle",
    "github/acme/alpha.wiki.bundle",
    "github/acme/alpha/repository.json",
    "github/acme/alpha/issues.json",
    "github/acme/alpha/issue-comments.json",
    "github/acme/alpha/pulls.json",
    "github/acme/alpha/pull-comments.json",
    "github/acme/alpha/releases.json",
    "github/acme/alpha/releases/v1.0/tool-1.0.tar.gz",
    "github/acme/beta.bundle",
    "github/acme/beta/repository.json",
    "github/acme/beta/issue-comments.json",  # issues off: pull request conversations stay
    "github/acme/beta/pulls.json",
    "github/acme/beta/pull-comments.json",
    "github/acme/beta/releases.json",
    "github/acme/empty/repository.json",
    "github/acme/empty/issues.json",
    "github/acme/empty/issue-comments.json",
    "github/acme/empty/pulls.json",
    "github/acme/empty/pull-comments.json",
    "github/acme/empty/releases.json",
    "github/acme/old.bundle",
    "github/acme/old/repository.json",
    "github/acme/old/pulls.json",
    "github/acme/old/pull-comments.json",
    "github/acme/old/releases.json",
}


def read_json(s3: Any, bucket: str, key: str) -> Any:
    return orjson.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


async def test_backup_restore_and_incremental_runs(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncbackup")
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, base)
        clock = github.clock
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)

        assert report.status == "completed", report.errors
        assert set(list_keys(s3, buckets.dest)) == EXPECTED
        # what is inside: paginated lists whole, the asset's bytes, the repository record
        issues = read_json(s3, buckets.dest, "github/acme/alpha/issues.json")
        assert [i["number"] for i in issues] == list(range(1, 231))
        comments = read_json(s3, buckets.dest, "github/acme/alpha/issue-comments.json")
        assert len(comments) == 120
        releases = read_json(s3, buckets.dest, "github/acme/alpha/releases.json")
        assert releases[0]["tag_name"] == "v1.0"
        asset = s3.get_object(
            Bucket=buckets.dest, Key="github/acme/alpha/releases/v1.0/tool-1.0.tar.gz"
        )
        assert asset["Body"].read() == ASSET
        record = read_json(s3, buckets.dest, "github/acme/alpha/repository.json")
        assert record["subscribers_count"] == 3
        assert github.storage_auth == [None]

        # restore: the bundle clones into the same refs and commits, minus refs/pull/*
        source_refs = refs(github.git_dir("alpha"))
        assert "refs/pull/1/head" in source_refs
        restored = restore(s3, buckets.dest, "github/acme/alpha.bundle", tmp_path)
        expected_refs = {r: sha for r, sha in source_refs.items() if not r.startswith("refs/pull/")}
        assert refs(restored) == expected_refs
        wiki = restore(s3, buckets.dest, "github/acme/alpha.wiki.bundle", tmp_path)
        assert refs(wiki) == refs(github.git_dir("alpha", wiki=True))

        # the checkpoint: one files entry per artifact, skips recorded, then archived
        assert report.archived_checkpoint is not None
        state = read_checkpoint(report.archived_checkpoint)
        assert state.source_bucket == "github" and state.source_path == "acme"
        assert report.checkpoint_path.name == "github_acme.checkpoint"
        assert all(state.files.values()) and set(state.files) >= EXPECTED
        skipped = state.extra["github_skipped"]
        assert "no commits" in skipped["github/acme/empty.bundle"]
        assert "no wiki" in skipped["github/acme/empty.wiki.bundle"]
        assert "410" in skipped["github/acme/old/issues.json"]
        assert "disabled" in skipped["github/acme/beta/issues.json"]
        assert "github/acme/forky.bundle" not in state.files  # --skip-forks

        # the token: from the credential helper after a 401 challenge, never in a URL, log or file
        alpha_git = [s for s in github.git_seen if "/alpha.git/" in s.path]
        assert alpha_git[0].status == 401 and alpha_git[-1].status == 200
        assert all(TOKEN not in s.path + s.query for s in github.git_seen)
        assert TOKEN not in caplog.text
        for path in [*base.rglob("*"), report.archived_checkpoint]:
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path

        # run 2, nothing changed: no clone, no fetch, every metadata request a free 304
        clones = len(github.git_requests("alpha")) + len(github.git_requests("beta"))
        quota = github.remaining
        seen = len(github.seen)
        again = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert again.status == "completed", again.errors
        assert again.copied_bytes == 0
        assert len(github.git_requests("alpha")) + len(github.git_requests("beta")) == clones
        statuses = [s.status for s in github.seen[seen:]]
        assert statuses.count(304) >= 20
        paid = sorted(s.path for s in github.seen[seen:] if s.status != 304)
        assert paid == [
            "/api/orgs/acme/repos",
            "/api/repos/acme/old/issues",  # 410 answers are not cached: issues disabled
            "/api/repos/acme/old/issues/comments",
            "/api/user",
            "/api/users/acme",
        ]
        assert quota - github.remaining == len(paid)

        alpha_clones = len(github.git_requests("alpha"))
        clones_beta = len(github.git_requests("beta"))
        # run 3: a push to beta and an edited issue in alpha; only those are copied again
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2024-02-01T00:00:00Z"
        github.repos["alpha"].issues[5]["title"] = "edited"
        third = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert third.status == "completed", third.errors
        assert len(github.git_requests("alpha")) == alpha_clones  # alpha did not move
        (tmp_path / "third").mkdir()
        beta = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path / "third")
        assert refs(beta)["refs/heads/main"] == new_sha
        issues = read_json(s3, buckets.dest, "github/acme/alpha/issues.json")
        assert issues[5]["title"] == "edited"
        assert len(github.git_requests("beta")) > clones_beta  # fetched into the kept mirror


async def test_unavailable_repositories_are_recorded_and_the_run_goes_on_through_limits(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        github.add_repo(FakeRepo("dmca", status=451, has_wiki=False))
        github.add_repo(FakeRepo("ghost", has_wiki=False))  # listed, but git has no repository
        # a tight primary budget and a secondary limit on the repository list
        github.limit = github.remaining = 12
        github.secondary["/api/orgs/acme/repos"] = [None]
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("*",))
        started = time.monotonic()
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert time.monotonic() - started < 30  # hours of rate-limit waits took no real time

        assert report.status == "completed_with_errors"
        assert report.exit_code == 1
        assert set(report.errors) == {
            "github/acme/dmca.bundle",
            "github/acme/dmca/repository.json",
            "github/acme/dmca/issues.json",
            "github/acme/dmca/issue-comments.json",
            "github/acme/dmca/pulls.json",
            "github/acme/dmca/pull-comments.json",
            "github/acme/dmca/releases.json",
            "github/acme/ghost.bundle",
        }
        assert report.errors["github/acme/dmca/issues.json"].startswith(
            "UnavailableForLegalReasons:"
        )
        assert report.errors["github/acme/ghost.bundle"].startswith("GitNotFound:")
        assert set(list_keys(s3, buckets.dest)) >= EXPECTED  # the others all went through
        waits = sum(clock.sleeps)
        assert any(reason.startswith("primary") for reason, _ in github_waits(clock))
        assert waits >= 3600 + 60  # at least one reset waited for, plus the secondary minute
        assert 60 in [round(s) for s in clock.sleeps]
        # once a spent budget is seen, requests wait: only those already in flight are refused
        refused = [s for s in github.seen if s.status == 403 and s.path != "/api/orgs/acme/repos"]
        resets = len([s for s in clock.sleeps if s > 600])
        assert len(refused) <= 4 * resets  # --api-concurrency 4

        # a resume to another S3 server (the proxy stands for one) is refused: what the
        # checkpoint marks done is not there
        with run_proxy(s3_server.endpoint) as elsewhere:
            moved = {**options, "dest_endpoint_url": elsewhere.endpoint}
            with pytest.raises(CheckpointMismatchError, match="destination endpoint"):
                await run_github_backup(clock=clock, sleep=clock.sleep, **moved)
            assert not [r for r in elsewhere.requests if r.method in ("PUT", "POST")]

        # the repositories come back: the next run retries what failed, in a new pass that
        # copies nothing unchanged again
        github.repos["dmca"].status = None
        make_repository(github.git_dir("dmca"), commits=1, tags=0, pull_ref=False)
        make_repository(github.git_dir("ghost"), commits=1, tags=0, pull_ref=False)
        alpha_posts = len(github.git_requests("alpha"))
        seen = len(github.seen)
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert second.resumed and not second.errors
        assert len(github.git_requests("alpha")) == alpha_posts
        alpha = [s for s in github.seen[seen:] if s.path.startswith("/api/repos/acme/alpha/")]
        assert alpha and {s.status for s in alpha} == {304}  # its metadata: unchanged
        restored = restore(s3, buckets.dest, "github/acme/ghost.bundle", tmp_path)
        assert refs(restored) == refs(github.git_dir("ghost"))


def github_waits(clock: FakeClock) -> list[tuple[str, float]]:
    """Reasons the fake clock was slept for, as far as a test can tell: long ones are resets."""
    return [("primary" if s > 600 else "secondary", s) for s in clock.sleeps]


async def test_release_assets_that_cannot_be_listed_are_an_error_not_a_silent_gap(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    base = tmp_path / "work"
    asset_key = "github/acme/alpha/releases/v1.0/tool-1.0.tar.gz"
    async with running_org(tmp_path / "git") as github:
        refusals = [502, 502]  # the listing's two attempts fail; later requests go through

        async def flaky_releases(request: web.Request) -> web.StreamResponse | None:
            if request.path == "/api/repos/acme/alpha/releases" and refusals:
                return web.Response(status=refusals.pop(0), text="bad gateway")
            return None

        github.hooks.append(flaky_releases)
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, max_attempts=2)
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert not refusals
        assert asset_key not in list_keys(s3, buckets.dest)  # never listed, so never copied
        # ... which the run says, instead of reporting a complete backup
        assert report.status == "completed_with_errors"
        assert set(report.errors) == {"github/acme/alpha/releases.json"}
        assert "assets" in report.errors["github/acme/alpha/releases.json"]
        assert "github/acme/alpha/releases.json" in list_keys(s3, buckets.dest)

        again = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert again.status == "completed", again.errors
        body = s3.get_object(Bucket=buckets.dest, Key=asset_key)["Body"].read()
        assert body == ASSET


async def test_a_resumed_run_that_cannot_list_release_assets_still_copies_those_it_knew(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    base = tmp_path / "work"
    asset_key = "github/acme/alpha/releases/v1.0/tool-1.0.tar.gz"
    async with running_org(tmp_path / "git") as github:
        github.storage_gate = asyncio.Event()  # the asset's download hangs
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, max_attempts=2)
        checkpoint = base / "checkpoints" / "github_acme.checkpoint"

        def releases_done() -> bool:
            if not checkpoint.exists():
                return False
            return read_checkpoint(checkpoint).files.get("github/acme/alpha/releases.json") is True

        first = asyncio.create_task(run_github_backup(clock=clock, sleep=clock.sleep, **options))
        deadline = time.monotonic() + 30
        while not (releases_done() and github.storage_auth) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        first.cancel()  # interrupted: releases.json is done, its asset is not
        with pytest.raises(asyncio.CancelledError):
            await first
        assert read_checkpoint(checkpoint).files[asset_key] is False

        github.storage_gate.set()
        refusals = [502, 502]  # this time the releases cannot be listed

        async def flaky_releases(request: web.Request) -> web.StreamResponse | None:
            if request.path == "/api/repos/acme/alpha/releases" and refusals:
                return web.Response(status=refusals.pop(0), text="bad gateway")
            return None

        github.hooks.append(flaky_releases)
        resumed = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert not refusals and resumed.resumed
        # the assets the interrupted run listed are copied, not dropped with a "completed"
        assert resumed.status == "completed", resumed.errors
        body = s3.get_object(Bucket=buckets.dest, Key=asset_key)["Body"].read()
        assert body == ASSET


async def test_an_answer_that_is_not_json_fails_its_artifact_not_the_run(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    async with running_org(tmp_path / "git") as github:

        async def login_page(request: web.Request) -> web.StreamResponse | None:
            if request.path == "/api/repos/acme/alpha/pulls":  # a proxy's page, status 200
                return web.Response(text="<html>sign in</html>", content_type="text/html")
            return None

        github.hooks.append(login_page)
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.status == "completed_with_errors"
        pulls = "github/acme/alpha/pulls.json"
        assert set(report.errors) == {pulls}
        assert report.errors[pulls].startswith("InvalidJSON: ")
        assert "/api/repos/acme/alpha/pulls" in report.errors[pulls]
        assert set(list_keys(s3, buckets.dest)) == EXPECTED - {pulls}


async def test_destination_credentials_refused_mid_run_stop_the_run(
    tmp_path: Path, proxy: S3Proxy, buckets: Buckets
) -> None:
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        proxy.add_rule(Rule("invalid_access_key", method="PUT"))  # the keys were revoked
        clock = github.clock
        options = config(github, proxy.endpoint, buckets.dest, base, concurrency=1)
        with pytest.raises(FatalRunError) as caught:
            await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert "InvalidAccessKeyId" in str(caught.value) and "run again" in str(caught.value)
        # stopped at the first refusal (exit 3), not every repository cloned and every
        # artifact failed with the same error (exit 1)
        state = read_checkpoint(base / "checkpoints" / "github_acme.checkpoint")
        assert state.errors == {} and not any(state.files.values())
        assert len(github.git_requests("beta")) + len(github.git_requests("old")) == 0


async def test_a_run_of_another_owner_on_the_same_staging_path_spares_files_in_flight(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    base = tmp_path / "work"  # one --base-local-path for every backup job of the machine
    asset_key = "github/acme/alpha/releases/v1.0/tool-1.0.tar.gz"
    async with running_org(tmp_path / "git") as github:
        github.storage_pause = asyncio.Event()  # the asset's download stops half-way
        clock = github.clock
        first = asyncio.create_task(
            run_github_backup(
                clock=clock,
                sleep=clock.sleep,
                **config(github, s3_server.endpoint, buckets.dest, base),
            )
        )
        checkpoint = base / "checkpoints" / "github_acme.checkpoint"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            checkpoint.exists()
            and read_checkpoint(checkpoint).processed_files == len(EXPECTED) + 3
            and len(list((base / ".tmp").iterdir())) == 1  # the asset's file, half written
        ):
            await asyncio.sleep(0.05)
        assert not first.done()

        other = FakeGitHub(tmp_path / "git2", token=TOKEN, clock=FakeClock(), owner="other")
        await other.start()
        try:
            other.add_repo(FakeRepo("solo", owner="other", has_wiki=False))
            make_repository(other.git_dir("solo"), commits=1, tags=0, pull_ref=False)
            options = {**config(other, s3_server.endpoint, buckets.dest, base), "owner": "other"}
            second = await run_github_backup(clock=other.clock, sleep=other.clock.sleep, **options)
            assert second.status == "completed", second.errors
        finally:
            await other.close()

        github.storage_pause.set()
        report = await first
        assert report.status == "completed", report.errors
        assert s3.get_object(Bucket=buckets.dest, Key=asset_key)["Body"].read() == ASSET


#: the fake GitHub on any free port, or on one whose number holds "451" (34512, 45123...): a
#: 429 or a 503 on such a URL was once taken for a repository taken down (451) for good
PORTS = pytest.mark.parametrize(
    "ports", [(0,), PORTS_HOLDING_451], ids=["any-port", "port-holding-451"]
)


@PORTS
async def test_a_git_request_refused_as_rate_limited_is_tried_again(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, ports: Sequence[int]
) -> None:
    """git answered 429 (too many requests) is a pause and another try, not a failed bundle."""
    async with running_org(tmp_path / "git", ports=ports) as github:
        assert ports == (0,) or "451" in str(github.port)
        github.repos["beta"].git_refusals = [429]
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "base")
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.status == "completed", report.errors
        assert github.repos["beta"].git_refusals == []  # the refusal was met
        assert 429 in [seen.status for seen in github.git_seen if "/beta.git/" in seen.path]
        assert set(list_keys(s3, buckets.dest)) >= EXPECTED
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        source = refs(github.git_dir("beta"))
        assert refs(restored) == {r: sha for r, sha in source.items() if "refs/pull/" not in r}


async def test_a_stalled_git_transfer_is_abandoned_and_tried_again(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A clone whose server stops sending does not hang the run: git gives up after the
    read timeout without data, and the clone is tried again."""
    async with running_org(tmp_path / "git") as github:
        github.repos["beta"].git_stalls = [60.0]
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "base")
        started = time.monotonic()
        report = await run_github_backup(
            clock=github.clock, sleep=github.clock.sleep, read_timeout=2, **options
        )
        assert time.monotonic() - started < 30  # not the 60 s the server would have hung
        assert report.status == "completed", report.errors
        assert github.repos["beta"].git_stalls == []  # the stall was met
        assert -1 in [seen.status for seen in github.git_seen if "/beta.git/" in seen.path]
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        source = refs(github.git_dir("beta"))
        assert refs(restored) == {r: sha for r, sha in source.items() if "refs/pull/" not in r}


async def test_ignore_checkpoints_still_aborts_the_uploads_a_crashed_run_left(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """As for the S3 command: starting over does not forget an upload to abort."""
    base = tmp_path / "base"
    async with running_org(tmp_path / "git") as github:
        github.add_repo(FakeRepo("dmca", status=451, has_wiki=False))  # keeps the checkpoint
        options = config(github, s3_server.endpoint, buckets.dest, base)
        first = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert first.status == "completed_with_errors"
        (checkpoint,) = (base / "checkpoints").glob("*.checkpoint")
        # What a run SIGKILLed mid-upload leaves: an upload, recorded by destination key.
        upload = s3.create_multipart_upload(Bucket=buckets.dest, Key="github/acme/x.bundle")
        data = orjson.loads(checkpoint.read_bytes())
        data["multipart_uploads"] = {"github/acme/x.bundle": upload["UploadId"]}
        checkpoint.write_bytes(orjson.dumps(data))
        await run_github_backup(
            clock=github.clock, sleep=github.clock.sleep, ignore_checkpoints=True, **options
        )
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


async def test_a_repository_listed_twice_while_the_org_grows_is_backed_up_once(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """GitHub lists an organisation's repositories newest first, by offset: one created while
    the listing is under way pushes the last of a page onto the next page, read later."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        rest = dict(github.repos)
        github.repos.clear()
        for i in range(99):
            github.add_repo(FakeRepo(f"filler-{i:02d}"))
        github.add_repo(rest.pop("alpha"))  # the 100th: the last of page 1
        github.repos.update(rest)

        async def new_repository_before_page_2(request: web.Request) -> web.Response | None:
            page = request.query.get("page")
            if (
                request.path == "/api/orgs/acme/repos"
                and page == "2"
                and "newcomer" not in github.repos
            ):
                repos = dict(github.repos)
                github.repos.clear()
                github.add_repo(FakeRepo("newcomer"))
                github.repos.update(repos)
            return None

        github.hooks.append(new_repository_before_page_2)
        options = config(
            github, s3_server.endpoint, buckets.dest, base, exclude=("filler-*", "newcomer")
        )
        report = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)

        assert report.status == "completed", report.errors
        assert set(list_keys(s3, buckets.dest)) == EXPECTED
        assert report.archived_checkpoint is not None
        state = read_checkpoint(report.archived_checkpoint)
        # alpha's artifacts are counted once: the job's total is what it holds
        assert report.total_files == len(state.files)
        assert report.failed_this_run == {}  # no two clones of alpha into one mirror
        assert len(github.api_requests("/repos/acme/alpha/pulls/comments")) == 1


async def test_a_repository_moved_onto_a_page_already_read_is_backed_up(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A repository deleted while the list is read moves the first one of the next page onto
    the page already read: the list is read again, and the moved one is backed up."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        rest = dict(github.repos)
        github.repos.clear()
        for i in range(100):
            github.add_repo(FakeRepo(f"filler-{i:02d}"))  # page 1; then alpha, beta...
        github.repos.update(rest)
        first_of_page_2 = next(iter(rest))

        async def delete_one_before_page_2(request: web.Request) -> web.Response | None:
            if request.path == "/api/orgs/acme/repos" and request.query.get("page") == "2":
                github.repos.pop("filler-00", None)
            return None

        github.hooks.append(delete_one_before_page_2)
        options = config(github, s3_server.endpoint, buckets.dest, base, exclude=("filler-*",))
        report = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)

        assert report.status == "completed", report.errors
        assert set(list_keys(s3, buckets.dest)) == EXPECTED
        assert f"github/acme/{first_of_page_2}.bundle" in EXPECTED
        reads = [s for s in github.api_requests("/orgs/acme/repos") if "page=2" not in s.query]
        # the first reading; page 1 changed and holds the moved one; unchanged, a free 304
        assert [s.status for s in reads] == [200, 200, 304]


async def test_release_assets_on_a_page_added_after_a_full_last_page_are_copied(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """100 releases: one more goes onto a second page, which no ETag of the last listing
    covers, while the first page answers 304."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        alpha = github.repos["alpha"]
        for i in range(99):
            github.add_release(alpha, f"old-{i}", {})
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("alpha",))
        first = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert first.status == "completed", first.errors

        github.add_release(alpha, "v2.0", {"new.bin": b"new asset"})
        second = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert second.status == "completed", second.errors
        releases = read_json(s3, buckets.dest, "github/acme/alpha/releases.json")
        assert len(releases) == 101
        key = "github/acme/alpha/releases/v2.0/new.bin"
        assert key in list_keys(s3, buckets.dest)
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == b"new asset"


async def test_a_renamed_default_branch_is_the_head_of_the_next_bundle(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """The default branch renamed on GitHub (master -> main, say): the kept mirror is fetched,
    and the bundle it gives restores with the new branch as its HEAD, not a dangling one."""
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options["include"] = ("beta",)
        clock = github.clock
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        git("branch", "-m", "main", "trunk", cwd=github.git_dir("beta"))  # HEAD follows
        github.repos["beta"].pushed_at = "2024-02-01T00:00:00Z"
        fetches = len(github.git_requests("beta"))
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert len(github.git_requests("beta")) > fetches  # fetched into the kept mirror
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        assert "refs/heads/main" not in refs(restored)
        assert git("symbolic-ref", "HEAD", cwd=restored).strip() == "refs/heads/trunk"


@PORTS
async def test_a_fetch_that_fails_on_the_network_keeps_the_mirror(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, ports: Sequence[int]
) -> None:
    """A fetch into the kept mirror refused on the way (a 503) is tried again into the same
    mirror, not answered by deleting it and cloning the whole repository again (nor taken
    for a final 451)."""
    async with running_org(tmp_path / "git", ports=ports) as github:
        assert ports == (0,) or "451" in str(github.port)
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


async def test_a_resumed_run_counts_the_bytes_copied_before_as_they_were(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A GitHub listing knows no artifact's size (metadata: 0, a bundle: the repository's
    size in KiB): processed_bytes is the bytes copied, by this run and the ones before it.
    Stopped once and resumed, the job ends with the bytes at the destination, as a run that
    was never stopped does."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        stop = asyncio.Event()

        async def stop_at_the_first_pulls(request: web.Request) -> web.Response | None:
            if request.path.endswith("/pulls"):
                stop.set()  # the artifacts in flight finish; none is started after them
            return None

        github.hooks.append(stop_at_the_first_pulls)
        options = config(github, s3_server.endpoint, buckets.dest, base, concurrency=1)
        first = await run_github_backup(
            clock=github.clock, sleep=github.clock.sleep, stop=stop, **options
        )
        assert first.status == "stopped", first.errors
        copied_first = sum(o["Size"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"])
        assert 0 < first.processed_bytes == copied_first

        github.hooks.clear()
        second = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert set(list_keys(s3, buckets.dest)) == EXPECTED
        at_dest = sum(o["Size"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"])
        assert second.archived_checkpoint is not None
        assert read_checkpoint(second.archived_checkpoint).processed_bytes == at_dest


async def test_a_repository_created_past_a_full_last_page_is_found_by_the_second_reading(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A user's repositories are listed by name: one created while the copies go, named after
    all the others, lands on a page after the last one read. That page was full, so the
    reading again must not take its 304 (its body unchanged) for the end of the list: the next
    page is new, and no ETag covers it - as for release assets."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        github.owner_type = "User"
        repos = dict(github.repos)
        for i in range(100 - len(repos)):
            repos[f"filler-{i:02d}"] = FakeRepo(f"filler-{i:02d}")
        github.repos.clear()
        github.repos.update(sorted(repos.items()))  # by name, as GitHub lists them: 100

        async def create_one_named_last(request: web.Request) -> web.Response | None:
            # after the first reading of the list, before the next
            listed = github.api_requests("/users/acme/repos")
            if len(listed) == 2 and "zzz" not in github.repos:
                make_repository(github.git_dir("zzz"), commits=1, tags=0, pull_ref=False)
                github.add_repo(FakeRepo("zzz", has_wiki=False))
            return None

        github.hooks.append(create_one_named_last)
        options = config(github, s3_server.endpoint, buckets.dest, base, exclude=("filler-*",))
        report = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)

        assert report.status == "completed", report.errors
        assert "zzz" in github.repos
        keys = set(list_keys(s3, buckets.dest))
        assert {"github/acme/zzz.bundle", "github/acme/zzz/repository.json"} <= keys
        assert keys >= EXPECTED


async def test_a_repository_failing_for_good_does_not_keep_new_pushes_out(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A repository taken down (451 for ever) ends every run with errors. The run after one
    that got to the end is a new pass: a push to another repository is backed up (before,
    the resume retried the failures alone and the bundle stayed stale for good), unchanged
    ones are not fetched, and a failure marked done by hand stays skipped."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        github.add_repo(FakeRepo("dmca", status=451, has_wiki=False))
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base)
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed_with_errors"
        assert len(first.errors) == 7 and all("/dmca" in key for key in first.errors)
        path = first.checkpoint_path
        ended = orjson.loads(path.read_bytes())["github_ended_with_errors"]
        assert ended["failed"] == sorted(first.errors)

        # the operator gives up on one of the failures: marked done by hand
        data = orjson.loads(path.read_bytes())
        data["files"]["github/acme/dmca/issues.json"] = True
        path.write_bytes(orjson.dumps(data))
        new_sha = add_commit(github.git_dir("beta"), "after the takedown")
        github.repos["beta"].pushed_at = "2024-03-01T00:00:00Z"
        alpha_requests = len(github.git_requests("alpha"))
        seen = len(github.seen)

        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed_with_errors" and second.resumed
        assert set(second.errors) == set(first.errors) - {"github/acme/dmca/issues.json"}
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        assert refs(restored)["refs/heads/main"] == new_sha
        assert len(github.git_requests("alpha")) == alpha_requests
        asked = [s.path for s in github.seen[seen:]]
        assert "/api/repos/acme/dmca/issues" not in asked
        assert "/api/repos/acme/dmca/pulls" in asked  # the failures are tried again
        state = read_checkpoint(path)
        assert state.files["github/acme/beta.bundle"] is True
        assert state.files["github/acme/dmca/issues.json"] is True
        assert state.processed_files == len(state.files) - len(second.errors)
        assert state.extra["github_ended_with_errors"]["failed"] == sorted(second.errors)
