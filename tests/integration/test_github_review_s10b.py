"""GitHub to S3, found in review: each test failed before the fix it comes with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.errors import StoreUnavailableError
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeRepo, add_commit, git, make_repository
from tests.helpers import list_keys
from tests.integration.github_org import TOKEN, config, refs, restore, running_org


async def test_a_repository_name_with_slashes_cannot_reach_outside_staging(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A name from the API is not a path: a repository called ``../../../../victim`` (a
    broken or hostile server) must not have its mirror cleared, cloned or fetched outside
    the staging directory - the mirror's folder is removed before each clone."""
    base = tmp_path / "work"
    victim = tmp_path / "victim.git"  # where .mirrors/acme/../../../../victim.git lands
    victim.mkdir()
    (victim / "precious.txt").write_text("not the backup's to delete")
    async with running_org(tmp_path / "git") as github:
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("beta",))
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors  # beta's mirror is kept
        github.add_repo(FakeRepo("../../../../victim", has_wiki=False))
        options["include"] = ("*victim",)
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.errors  # nothing to clone there: an error, recorded
    assert (victim / "precious.txt").read_text() == "not the backup's to delete"
    assert not (tmp_path / "victim.git.partial").exists()


async def test_a_rate_limited_user_check_does_not_leave_private_repositories_out(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """GET /user tells whether OWNER is the token's own user, whose private repositories
    only /user/repos lists. A 403 there is taken for an app token (which cannot read /user),
    but a 403 that is a rate limit that never lifted is not an answer: the run must not go
    on with the public list and report a complete backup without the private ones."""
    async with running_org(tmp_path / "git") as github:
        github.owner_type, github.login = "User", "acme"  # the token's own user
        github.repos["beta"].private = True
        github.secondary["/api/user"] = [1] * 13  # more refusals than a request waits out
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        with pytest.raises(StoreUnavailableError, match="still rate limited"):
            await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert not github.api_requests("/users/acme/repos")  # never the public list
        assert list_keys(s3, buckets.dest) == []


async def test_the_token_never_goes_to_a_next_page_on_another_origin(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A ``Link: rel="next"`` (or an asset URL) off the API's origin - GitHub Enterprise
    behind a TLS proxy that writes http:// links, a hostile or broken server - is not an API
    request: the token must not be sent there (a redirect off the origin is refused too)."""
    elsewhere: list[str | None] = []

    async def capture(request: web.Request) -> web.Response:
        elsewhere.append(request.headers.get("Authorization"))
        return web.json_response([])

    app = web.Application()
    app.router.add_get("/{tail:.*}", capture)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with running_org(tmp_path / "git") as github:

            async def next_page_elsewhere(request: web.Request) -> web.StreamResponse | None:
                if request.path == "/api/repos/acme/alpha/pulls" and "page" not in request.query:
                    page_2 = f"http://127.0.0.1:{port}/api/repos/acme/alpha/pulls?page=2"
                    link = f'<{page_2}>; rel="next"'
                    return web.json_response([{"number": 1}], headers={"Link": link})
                return None

            github.hooks.append(next_page_elsewhere)
            clock = github.clock
            options = config(
                github, s3_server.endpoint, buckets.dest, tmp_path / "work", include=("alpha",)
            )
            report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    finally:
        await runner.cleanup()
    assert TOKEN not in " ".join(str(a) for a in elsewhere)
    # and the copy is not a silent half: pulls.json fails, saying why
    assert set(report.errors) == {"github/acme/alpha/pulls.json"}
    assert f"127.0.0.1:{port}" in report.errors["github/acme/alpha/pulls.json"]


@pytest.mark.parametrize("listed", [True, False], ids=["in-the-list", "record-only"])
async def test_a_repository_with_pull_requests_disabled_does_not_stall_the_backup(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, listed: bool
) -> None:
    """GitHub lets a repository turn pull requests off (``has_pull_requests: false``): its
    /pulls and /pulls/comments answer a bare 404 for every token. That is nothing to copy
    (like issues disabled), not an error: an error there would keep the job from ever
    completing, and each next run would resume it, retrying those two and backing up no
    change anywhere else."""
    async with running_org(tmp_path / "git") as github:
        github.repos["alpha"].has_pull_requests = False
        github.lists_have_pull_requests = listed  # else only GET /repos/{o}/{r} says so
        clock = github.clock
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", include=("alpha", "beta")
        )
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        assert first.archived_checkpoint is not None
        skipped = read_checkpoint(first.archived_checkpoint).extra["github_skipped"]
        for name in ("pulls.json", "pull-comments.json"):
            assert "pull requests are disabled" in skipped[f"github/acme/alpha/{name}"]

        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2024-02-01T00:00:00Z"
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert not second.resumed
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        assert refs(restored)["refs/heads/main"] == new_sha


@pytest.mark.parametrize("listed", [True, False], ids=["in-the-list", "record-only"])
async def test_pull_request_conversations_are_kept_when_issues_are_disabled(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, listed: bool
) -> None:
    """Every pull request is an issue: the comments of a pull request's conversation are
    issue comments, listed by /issues/comments - still there with issues turned off (a fork's
    default, a team on another tracker). Only with pull requests off too is there nothing."""
    async with running_org(tmp_path / "git") as github:
        talk = github.add_repo(FakeRepo("talk", has_issues=False, has_wiki=False))
        make_repository(github.git_dir("talk"), commits=1, tags=0, pull_ref=False)
        talk.pulls = [{"number": 7, "head": {"sha": "0" * 40}}]
        talk.issue_comments = [{"id": 70, "body": "LGTM, merging", "issue_url": ".../7"}]
        quiet = github.add_repo(
            FakeRepo("quiet", has_issues=False, has_pull_requests=False, has_wiki=False)
        )
        make_repository(github.git_dir("quiet"), commits=1, tags=0, pull_ref=False)
        quiet.issue_comments = []
        github.lists_have_pull_requests = listed
        clock = github.clock
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", include=("talk", "quiet")
        )
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.status == "completed", report.errors
        comments = s3.get_object(Bucket=buckets.dest, Key="github/acme/talk/issue-comments.json")
        assert [c["body"] for c in orjson.loads(comments["Body"].read())] == ["LGTM, merging"]
        assert report.archived_checkpoint is not None
        skipped = read_checkpoint(report.archived_checkpoint).extra["github_skipped"]
        assert "issues are disabled" in skipped["github/acme/talk/issues.json"]
        assert "github/acme/talk/issue-comments.json" not in skipped
        assert "disabled" in skipped["github/acme/quiet/issue-comments.json"]


async def test_an_error_page_that_echoes_the_request_does_not_carry_the_token_on(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """An error's text goes into the checkpoint, the log and the report. A proxy's or a
    debugging gateway's error page may echo the request it refused, Authorization header
    and all: the token is blanked out of it, as it is out of git's messages."""
    async with running_org(tmp_path / "git") as github:

        async def echo(request: web.Request) -> web.StreamResponse | None:
            if request.path == "/api/repos/acme/alpha/pulls":
                headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
                return web.Response(status=400, text=f"bad request:\n{headers}")
            return None

        github.hooks.append(echo)
        clock = github.clock
        base = tmp_path / "work"
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("alpha",))
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    pulls = "github/acme/alpha/pulls.json"
    assert set(report.errors) == {pulls}
    assert "bad request" in report.errors[pulls]  # the message is kept, but not the token
    assert TOKEN not in report.errors[pulls]
    checkpoint = base / "checkpoints" / "github_acme.checkpoint"
    assert TOKEN.encode() not in checkpoint.read_bytes()


async def test_a_damaged_kept_mirror_never_replaces_a_good_bundle_with_a_bad_one(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A kept mirror whose pack got damaged on disk (a bad sector, a crash of the scratch
    disk) still fetches: the fetch reads the commits, not the blobs. ``git bundle create``
    copies the damaged bytes as they are and ``git bundle verify`` checks only the
    header, so the bundle that overwrote the good one in the bucket did not clone. Every
    bundle must be checked by reading it whole before it goes up; a damaged mirror is
    cloned again."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        work = tmp_path / "beta.work"
        git("clone", "-q", str(github.git_dir("beta")), str(work))
        for i in range(3):
            (work / f"blob{i}.bin").write_bytes(os.urandom(200_000))
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "blobs", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("beta",))
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors

        (mirror,) = base.rglob(".mirrors/*/beta.git")
        (pack,) = mirror.rglob("objects/pack/*.pack")
        data = bytearray(pack.read_bytes())
        middle = len(data) // 2  # inside a blob
        data[middle : middle + 40] = bytes(40)
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2024-02-01T00:00:00Z"
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors  # cloned again, then bundled
        restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
        assert refs(restored)["refs/heads/main"] == new_sha
        # restore() ran git fsck --full: every blob is there and sound
        assert git("cat-file", "-s", f"{new_sha}:blob1.bin", cwd=restored).strip() == "200000"


async def test_a_release_asset_listed_twice_while_releases_are_added_is_copied_once(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """Releases are listed newest first, by offset: one published while the list is read
    pushes the last of page 1 onto page 2. Its assets were two work items with one key,
    copied twice at once into one staged path, and counted twice in the job's total."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        alpha = github.repos["alpha"]
        for i in range(98):  # after v1.0
            github.add_release(alpha, f"old-{i}", {})
        github.add_release(alpha, "v0.9", {"edge.bin": b"last of page 1"})  # the 100th
        github.add_release(alpha, "v0.1", {})  # page 2
        published: list[str] = []

        async def publish_before_page_2(request: web.Request) -> web.Response | None:
            if (
                request.path == "/api/repos/acme/alpha/releases"
                and request.query.get("page") == "2"
                and not published
            ):
                github.add_release(alpha, "v2.0", {})
                alpha.releases.insert(0, alpha.releases.pop())  # newest first
                published.append("v2.0")
            return None

        github.hooks.append(publish_before_page_2)
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("alpha",))
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert published
        assert report.status == "completed", report.errors
        edge = "github/acme/alpha/releases/v0.9/edge.bin"
        assert s3.get_object(Bucket=buckets.dest, Key=edge)["Body"].read() == b"last of page 1"
        assert report.archived_checkpoint is not None
        state = read_checkpoint(report.archived_checkpoint)
        assert report.total_files == len(state.files) == report.processed_files


def test_the_api_origin_ignores_default_ports_and_case_but_not_scheme() -> None:
    """The origin check refuses a downgrade to http, not an API URL written another way."""
    from asyncbackup.github.client import _origin

    assert _origin("https://GHE.example.com:443/api/v3") == _origin("https://ghe.example.com/x")
    assert _origin("http://ghe.example.com/api/v3") != _origin("https://ghe.example.com/api/v3")
    assert _origin("https://ghe.example.com:8443/") != _origin("https://ghe.example.com/")
    assert _origin("https://ghe.example.com:bad/") != _origin("https://ghe.example.com/")
