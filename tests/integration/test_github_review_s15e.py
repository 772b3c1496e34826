"""GitHub to S3 against the real API's documented behaviour (review s15e): each test failed
before the fix it comes with, and its docstring cites the page the fake server follows."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from asyncbackup import run_github_backup
from asyncbackup.errors import FatalRunError
from asyncbackup.github.client import GitHubClient
from asyncbackup.github.ratelimit import RateGate
from tests.conftest import Buckets, S3Server
from tests.github_server import GIT, FakeClock, FakeGitHub, FakeRepo, add_commit, git
from tests.helpers import list_keys
from tests.integration.github_org import TOKEN, config, refs, restore, running_org


@pytest.mark.parametrize(
    ("scopes", "warned"),
    [("public_repo, read:org", True), ("", True), ("repo, read:org", False)],
    ids=["public_repo", "no-scope", "repo"],
)
async def test_a_classic_token_without_the_repo_scope_is_not_a_silent_public_only_backup(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    caplog: pytest.LogCaptureFixture,
    scopes: str,
    warned: bool,
) -> None:
    """A classic token without the ``repo`` scope sees public repositories only: "(no scope)
    Grants read-only access to public information", "repo: Grants full access to public and
    private repositories", and every answer's ``X-OAuth-Scopes`` "lists the scopes your token
    has authorized" (https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/
    scopes-for-oauth-apps). The organisation's list then leaves every private repository out
    and the run said "completed", not a word about them: it must say the token cannot see
    them."""
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    async with running_org(tmp_path / "git") as github:
        github.repos["beta"].private = True
        github.oauth_scopes = scopes
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert report.status == "completed", report.errors
    keys = list_keys(s3, buckets.dest)
    assert ("github/acme/beta.bundle" in keys) is not warned  # GitHub's own behaviour
    about_scope = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "'repo' scope" in r.getMessage()
    ]
    assert bool(about_scope) is warned, about_scope
    if warned:
        assert "private repositories" in about_scope[0]


async def test_an_organisation_enforcing_saml_sso_says_where_to_authorize_the_token(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """An organisation that enforces SAML SSO answers a token not authorized for it with a 403
    whose ``X-GitHub-SSO: required; url=...`` header is where to authorize it ("Visit the URL
    specified in X-GitHub-SSO to authorize the token for the organization",
    https://docs.github.com/en/rest/overview/other-authentication-methods#authenticating-for-saml-sso).
    The run stopped with GitHub's message alone: "grant your token access" and not where."""
    where = "https://github.com/orgs/acme/sso?authorization_request=AZSCKtL4U8yX1H3s"
    async with running_org(tmp_path / "git") as github:
        github.sso_authorization = where
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        with pytest.raises(FatalRunError, match="SAML enforcement") as caught:
            await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert where in str(caught.value)
    assert list_keys(s3, buckets.dest) == []


async def test_an_asset_of_a_repository_renamed_since_it_was_listed_is_downloaded(
    tmp_path: Path,
) -> None:
    """A renamed or transferred repository's old API paths answer "301 Moved Permanently" with
    the new location in ``Location`` ("This and all future requests to this resource should be
    directed to the new URI", https://docs.github.com/en/rest/using-the-rest-api/
    troubleshooting-the-rest-api and .../getting-started-with-the-rest-api#http-redirects).
    An asset download took any redirect for the storage host's and followed it without the
    token: back to the API, where a private repository answers an anonymous request 404 (our
    server: 401), so the asset failed. A redirect within the API is the API's, token and all;
    the storage host still never sees the token."""
    server = FakeGitHub(tmp_path / "git", token=TOKEN, clock=FakeClock())
    await server.start()
    try:
        repo = server.add_repo(FakeRepo("tool", private=True))
        server.add_release(repo, "v1.0", {"tool.tar.gz": b"\x00binary" * 1000})
        listed = repo.releases[0]["assets"][0]["url"]
        server.renamed["old-tool"] = "tool"  # listed as old-tool, renamed since
        old_url = listed.replace("/acme/tool/", "/acme/old-tool/")
        async with aiohttp.ClientSession() as session:
            client = GitHubClient(
                session,
                server.api_url,
                TOKEN,
                gate=RateGate(clock=server.clock, sleep=server.clock.sleep),
                slots=asyncio.Semaphore(4),
                max_attempts=3,
                sleep=server.clock.sleep,
            )
            size, md5 = await client.download(old_url, tmp_path / "asset")
    finally:
        await server.close()
    assert (tmp_path / "asset").read_bytes() == b"\x00binary" * 1000
    assert size == 7000 and md5 == hashlib.md5(b"\x00binary" * 1000).digest()
    assert [(s.path, s.status) for s in server.seen][-2:] == [
        ("/api/repos/acme/old-tool/releases/assets/" + listed.rsplit("/", 1)[1], 301),
        ("/api/repos/acme/tool/releases/assets/" + listed.rsplit("/", 1)[1], 302),
    ]
    assert server.seen[-1].authorization == f"Bearer {TOKEN}"
    assert server.storage_auth == [None]  # the storage host never saw the token


async def test_a_token_refused_its_own_user_on_a_user_account_is_not_a_silent_public_backup(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app's installation token cannot read ``GET /user`` ("Resource not accessible by
    integration", 403), so whether a user OWNER is the token's own user cannot be told, and
    ``GET /users/{username}/repos`` "Lists public repositories for the specified user"
    (https://docs.github.com/en/rest/repos/repos#list-repositories-for-a-user). The run
    backed up the public ones and said "completed", not a word of the private ones."""
    caplog.set_level(logging.WARNING, logger="asyncbackup")

    async def no_user(request: web.Request) -> web.StreamResponse | None:
        if request.path == "/api/user":
            message = {"message": "Resource not accessible by integration"}
            return web.json_response(message, status=403)
        return None

    async with running_org(tmp_path / "git") as github:
        github.owner_type = "User"
        github.repos["beta"].private = True
        github.hooks.append(no_user)
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert report.status == "completed", report.errors
    assert "github/acme/beta.bundle" not in list_keys(s3, buckets.dest)  # GitHub's behaviour
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("private repositories of acme are not backed up" in m for m in warned), warned


async def test_a_repository_that_keeps_files_in_git_lfs_is_warned_about(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mirror clone fetches no Git LFS object: GitHub's guide to duplicating a repository
    adds ``git lfs fetch --all`` for them (https://docs.github.com/en/repositories/
    creating-and-managing-repositories/duplicating-a-repository#mirroring-a-repository-that-
    contains-git-large-file-storage-objects). The bundle of a repository whose files are in
    LFS holds their pointers only, and the run said nothing: the backup looked whole."""
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    async with running_org(tmp_path / "git") as github:
        github.add_repo(FakeRepo("assets", has_wiki=False))
        work = tmp_path / "assets.work"
        git("init", "-q", "-b", "main", str(work))
        (work / "media").mkdir()
        (work / "media" / ".gitattributes").write_text(
            "*.psd filter=lfs diff=lfs merge=lfs -text\n"
        )
        (work / "media" / "cover.psd").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 12345\n"
        )
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "artwork", cwd=work)
        git("clone", "-q", "--bare", str(work), str(github.git_dir("assets")))
        clock = github.clock
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", include=("assets", "beta")
        )
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert report.status == "completed", report.errors
    assert "github/acme/assets.bundle" in list_keys(s3, buckets.dest)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    lfs = [m for m in warned if "Git LFS" in m]
    assert len(lfs) == 1 and "acme/assets" in lfs[0], warned  # beta keeps none


async def test_the_mirror_fetches_no_pull_request_refs_it_leaves_out_of_the_bundle(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """GitHub serves a ``refs/pull/ID/head`` (and ``/merge``) ref for every pull request
    ever opened (https://docs.github.com/en/pull-requests/collaborating-with-pull-requests/
    reviewing-changes-in-pull-requests/checking-out-pull-requests-locally), and a mirror clone
    fetches every ref: the commits of each unmerged or squash-merged pull request, from
    forks too, all downloaded (on a huge repository, often more than its branches) to be
    left out of the bundle. The mirror, made or kept, must not fetch them."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        served = refs(github.git_dir("beta"))
        pr_only = served["refs/pull/1/head"]  # a commit no branch or tag reaches
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("beta",))
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        (mirror,) = base.rglob(".mirrors/*/beta.git")
        assert not [r for r in refs(mirror) if r.startswith("refs/pull/")]
        assert not _has_object(mirror, pr_only)
        assert refs(mirror)["refs/heads/main"] == served["refs/heads/main"]

        # a mirror kept by an earlier version (a plain clone --mirror) and a new pull request
        shutil.rmtree(mirror)
        git("clone", "-q", "--mirror", str(github.git_dir("beta")), str(mirror))
        work = tmp_path / "pr2.work"
        git("clone", "-q", str(github.git_dir("beta")), str(work))
        (work / "pr2.txt").write_text("second pull request\n")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "pr 2", cwd=work)
        pr2 = git("rev-parse", "HEAD", cwd=work).strip()
        git("push", "-q", "origin", "HEAD:refs/pull/2/head", cwd=work)
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2024-02-01T00:00:00Z"
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
    assert refs(mirror)["refs/heads/main"] == new_sha  # fetched into the kept mirror
    assert "refs/pull/2/head" not in refs(mirror)
    assert not _has_object(mirror, pr2)
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert refs(restored)["refs/heads/main"] == new_sha
    assert not [r for r in refs(restored) if r.startswith("refs/pull/")]


def _has_object(repository: Path, sha: str) -> bool:
    done = subprocess.run(
        [GIT, "cat-file", "-e", sha], cwd=repository, capture_output=True, check=False
    )
    return done.returncode == 0


async def test_a_fine_grained_token_is_not_taken_for_a_classic_one_without_scopes(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Scopes are a classic (``ghp_``) or OAuth app (``gho_``) token's; a fine-grained token
    (``github_pat_``) or an app's has permissions instead, and an empty ``X-OAuth-Scopes``
    says nothing of them (https://docs.github.com/en/authentication/keeping-your-account-
    and-data-secure/about-authentication-to-github#githubs-token-formats): no warning that
    private repositories are missed, which would be false."""
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    fine_grained = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEF"
    async with running_org(tmp_path / "git") as github:
        github.token = fine_grained
        github.repos["beta"].private = True
        github.oauth_scopes = ""
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options["token"] = fine_grained
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert report.status == "completed", report.errors
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not [m for m in warned if "'repo' scope" in m], warned


async def test_a_permission_the_token_lacks_is_named_in_the_error(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A fine-grained token without a permission gets "403 Resource not accessible by personal
    access token", and GitHub names what it needs in ``X-Accepted-GitHub-Permissions``
    (https://docs.github.com/en/rest/using-the-rest-api/troubleshooting-the-rest-api#
    insufficient-permission-errors; changelog 2023-08-10). The error said only "not
    accessible", for every repository, run after run: it must name the permission."""
    async with running_org(tmp_path / "git") as github:
        github.withheld["issues"] = "issues=read"
        clock = github.clock
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", include=("alpha",)
        )
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert set(report.errors) == {"github/acme/alpha/issues.json"}
    error = report.errors["github/acme/alpha/issues.json"]
    assert "Resource not accessible" in error and "issues=read" in error, error
