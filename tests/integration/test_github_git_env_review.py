"""The git of a GitHub backup runs on a machine whose git someone else configured (review
s17f): the user's global git configuration, the caller's ``GIT_*`` variables, the current
directory's repository and a kept mirror's own hooks must not change where git fetches from,
what it sends, what it runs or which files it writes; and the token must show up in no
process's arguments, no kept file and no log or trace."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import subprocess
import threading
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from asyncbackup import BackupReport, run_github_backup
from asyncbackup.github.client import GitHubClient
from asyncbackup.github.ratelimit import RateGate
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeClock, FakeGitHub, Seen, add_commit, git
from tests.integration.github_org import (
    TOKEN,
    build_org,
    config,
    refs,
    restore,
    running_org,
)


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of the user's own, whose ``.gitconfig`` the test writes (where git looks for
    the global configuration when no ``GIT_CONFIG_GLOBAL`` says otherwise)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def global_config(home: Path, *settings: tuple[str, str]) -> None:
    for key, value in settings:
        subprocess.run(
            ["git", "config", "--file", str(home / ".gitconfig"), "--add", key, value],
            check=True,
        )


def without_pull_refs(bare: Path) -> dict[str, str]:
    return {ref: sha for ref, sha in refs(bare).items() if "/pull/" not in ref}


async def backup(
    github: FakeGitHub, s3_server: S3Server, bucket: str, base: Path, **extra: Any
) -> BackupReport:
    clock = github.clock
    options = config(github, s3_server.endpoint, bucket, base, **extra)
    return await run_github_backup(clock=clock, sleep=clock.sleep, **options)


async def test_a_global_insteadof_to_ssh_does_not_take_the_backup_off_the_token(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, user_home: Path
) -> None:
    """Go's documentation for private modules has developers write ``url."ssh://git@
    github.com/".insteadOf https://github.com/``: every clone of the backup then went over
    SSH with the user's key (none under cron: all failed), not the token it was given."""
    async with running_org(tmp_path / "git") as github:
        global_config(user_home, ("url.ssh://git@127.0.0.1:1/.insteadOf", f"{github.url}/"))
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
        assert report.status == "completed", report.errors
        assert github.git_requests("beta")[-1].status == 200
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert refs(restored) == without_pull_refs(github.git_dir("beta"))


async def test_a_global_hooks_path_runs_no_hook_with_the_token_in_its_environment(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, user_home: Path
) -> None:
    """git runs the ``reference-transaction`` hook on every fetch's ref updates, from
    ``core.hooksPath`` when the user set one (a team's hook manager): with the token in its
    environment (``ASYNCBACKUP_GIT_TOKEN``)."""
    hooks = user_home / "hooks"
    hooks.mkdir()
    ran = tmp_path / "hook-ran"
    hook = hooks / "reference-transaction"
    hook.write_text(f"#!/bin/sh\nenv >> {ran}\ncat > /dev/null\n")
    hook.chmod(0o755)
    global_config(user_home, ("core.hooksPath", str(hooks)))
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
    assert report.status == "completed", report.errors
    assert not ran.exists(), "a hook ran, its environment: " + ran.read_text()[:300]


async def test_a_global_extra_header_sends_no_other_authorization(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, user_home: Path
) -> None:
    """``http.extraHeader`` in the user's configuration (another token for the same host, as
    CI set-ups write) went with every git request of the backup, in place of its own."""
    global_config(user_home, ("http.extraHeader", "Authorization: Basic b3RoZXI6b3RoZXI="))
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
        seen = [s.authorization for s in github.git_seen]
    assert report.status == "completed", report.errors
    assert "Basic b3RoZXI6b3RoZXI=" not in seen


async def test_the_current_directorys_repository_does_not_reroute_a_wiki(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run from inside a checkout (a CI job's workspace): ``git ls-remote URL`` reads the
    enclosing repository's configuration, so its ``url.*.insteadOf`` (or a CI runner's
    ``http.extraHeader``) decided where the wiki was looked for."""
    async with running_org(tmp_path / "git") as github:
        workspace = tmp_path / "workspace"
        git("init", "-q", str(workspace))
        git("config", "url.ssh://git@127.0.0.1:1/.insteadOf", f"{github.url}/", cwd=workspace)
        monkeypatch.chdir(workspace)
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("alpha",))
    assert report.status == "completed", report.errors
    restored = restore(s3, buckets.dest, "github/acme/alpha.wiki.bundle", tmp_path)
    assert refs(restored) == refs(github.git_dir("alpha", wiki=True))


async def test_git_config_variable_does_not_make_the_backup_write_the_users_file(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GIT_CONFIG`` is the file ``git config`` reads and writes in place of the
    repository's: the backup's ``git config --add remote.origin.fetch ^refs/pull/*`` went
    into the user's file, and the mirror fetched every pull request's commits."""
    users = tmp_path / "users.gitconfig"
    users.write_text("[user]\n\tname = someone\n")
    before = users.read_text()
    monkeypatch.setenv("GIT_CONFIG", str(users))
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
    assert report.status == "completed", report.errors
    assert users.read_text() == before
    mirror = next(p for p in (tmp_path / "w").rglob("beta.git") if p.is_dir())
    assert not [ref for ref in refs(mirror) if "/pull/" in ref]


async def test_git_dir_work_tree_and_index_of_a_hook_touch_no_other_repository(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup started from a git hook or a CI step inherits ``GIT_DIR``, ``GIT_WORK_TREE``
    and ``GIT_INDEX_FILE``: its git commands must still act on its own mirrors."""
    other = tmp_path / "other"
    git("init", "-q", "-b", "main", str(other))
    (other / "f").write_text("x")
    git("add", "f", cwd=other)
    git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "m", cwd=other)
    before = refs(other / ".git")
    config_before = (other / ".git" / "config").read_text()
    hooks = {
        "GIT_DIR": str(other / ".git"),
        "GIT_WORK_TREE": str(other),
        "GIT_INDEX_FILE": str(other / ".git" / "index"),
        "GIT_OBJECT_DIRECTORY": str(other / ".git" / "objects"),
    }
    async with running_org(tmp_path / "git") as github:
        with monkeypatch.context() as inherited:  # the fake GitHub's own git runs without
            for name, value in hooks.items():
                inherited.setenv(name, value)
            report = await backup(
                github, s3_server, buckets.dest, tmp_path / "w", include=("beta",)
            )
    assert report.status == "completed", report.errors
    assert refs(other / ".git") == before
    assert (other / ".git" / "config").read_text() == config_before
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert refs(restored) == without_pull_refs(github.git_dir("beta"))


async def test_git_traces_asked_for_by_the_caller_print_no_token(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace = tmp_path / "trace2.json"
    for name in ("GIT_TRACE", "GIT_TRACE_CURL", "GIT_CURL_VERBOSE", "GIT_TRACE_PACKET"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))
    monkeypatch.setenv("GIT_TRACE_CURL_NO_DATA", "1")
    caplog.set_level(logging.DEBUG)
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("alpha",))
    assert report.status == "completed", report.errors
    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    assert not trace.exists() or TOKEN not in trace.read_text()
    assert TOKEN not in caplog.text


def _command_lines(stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        for process in Path("/proc").iterdir():
            if process.name.isdigit():
                with contextlib.suppress(OSError):  # gone meanwhile
                    seen.append((process / "cmdline").read_bytes().decode("utf-8", "replace"))


async def test_the_token_is_in_no_command_line_and_no_kept_file(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_command_lines, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        async with running_org(tmp_path / "git") as github:
            report = await backup(github, s3_server, buckets.dest, tmp_path / "w")
    finally:
        stop.set()
        watcher.join()
    assert report.status == "completed", report.errors
    gits = [line for line in seen if "credential.helper" in line]
    assert gits, "no git command line seen"
    assert not [line for line in seen if TOKEN in line]
    kept = [p for p in (tmp_path / "w").rglob("*") if p.is_file()]
    assert any(p.name == "config" for p in kept)
    assert not [p for p in kept if TOKEN.encode() in p.read_bytes()]


async def test_a_failing_git_names_no_token(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    async with running_org(tmp_path / "git") as github:
        github.repos["beta"].git_refusals = [500] * 10
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
    assert "github/acme/beta.bundle" in report.errors
    assert TOKEN not in str(report.errors)


async def test_a_hook_left_in_a_kept_mirror_does_not_run_on_the_next_fetch(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A kept mirror (no ``--cleanup``) is fetched into by the next run: a hook put in its
    ``hooks/`` meanwhile ran, with the token in its environment."""
    ran = tmp_path / "hook-ran"
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
        assert report.status == "completed", report.errors
        mirror = next(p for p in (tmp_path / "w").rglob("beta.git") if p.is_dir())
        hook = mirror / "hooks" / "reference-transaction"
        hook.write_text(f"#!/bin/sh\nenv >> {ran}\ncat > /dev/null\n")
        hook.chmod(0o755)
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2026-11-28T12:00:00Z"
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
    assert report.status == "completed", report.errors
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert new_sha in refs(restored).values()
    assert not ran.exists(), "a hook ran, its environment: " + ran.read_text()[:300]


async def test_a_mirror_git_does_not_take_for_one_never_leads_git_to_the_enclosing_checkout(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A kept mirror whose ``HEAD`` a power cut left empty (git's well-known "not a git
    repository" after a crash) is no repository to git, which looks in the folders above it:
    with the staging folder inside a checkout (``--base-local-path ./scratch`` run from an
    ops repository), the backup's ``remote set-url``, ``fetch --prune`` and ``symbolic-ref
    HEAD`` went to that checkout, and its bundle was uploaded as the repository's."""
    checkout = tmp_path / "ops"
    git("init", "-q", "-b", "main", str(checkout))
    (checkout / "f").write_text("ops\n")
    git("add", "f", cwd=checkout)
    git("commit", "-q", "-m", "ops", cwd=checkout)
    git("remote", "add", "origin", "https://example.invalid/ops.git", cwd=checkout)
    before = (checkout / ".git" / "config").read_text(), refs(checkout / ".git")
    head = (checkout / ".git" / "HEAD").read_text()
    base = checkout / "scratch"
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, base, include=("beta",))
        assert report.status == "completed", report.errors
        mirror = next(p for p in base.rglob("beta.git") if p.is_dir())
        (mirror / "HEAD").write_text("")
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2026-11-28T12:00:00Z"
        report = await backup(github, s3_server, buckets.dest, base, include=("beta",))
    assert ((checkout / ".git" / "config").read_text(), refs(checkout / ".git")) == before
    assert (checkout / ".git" / "HEAD").read_text() == head
    assert report.status == "completed", report.errors
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert new_sha in refs(restored).values()


async def test_a_kept_mirrors_configuration_runs_no_command_with_the_token(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A kept mirror's own configuration is read by the next fetch: an ``ext::`` transport
    allowed there (``protocol.ext.allow``) and put in the origin's place with
    ``url.*.insteadOf`` ran a command, with the token in its environment."""
    ran = tmp_path / "ext-ran"
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
        assert report.status == "completed", report.errors
        mirror = next(p for p in (tmp_path / "w").rglob("beta.git") if p.is_dir())
        git("config", "protocol.ext.allow", "always", cwd=mirror)
        git("config", f"url.ext::sh -c env% >{ran}% #.insteadOf", f"{github.url}/", cwd=mirror)
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2026-11-28T12:00:00Z"
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
    assert not ran.exists(), "a command ran, its environment: " + ran.read_text()[:300]
    assert report.status == "completed", report.errors
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert new_sha in refs(restored).values()


class GitHubAnswering404ToOtherCredentials(FakeGitHub):
    """GitHub answers a private repository's git requests with 404 "Repository not found"
    to credentials that may not read it (it does not tell such a repository exists)."""

    async def _git(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        if authorization is not None and authorization != self._expected:
            self.git_seen.append(Seen(request.method, request.path, "", authorization, None, 404))
            return web.Response(status=404, text="Repository not found.")
        return await super()._git(request)

    @property
    def _expected(self) -> str:
        return "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()


async def test_a_netrc_of_the_user_does_not_take_the_tokens_place(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, user_home: Path
) -> None:
    """curl, under git, sends the credentials of ``~/.netrc`` (Go's documented recipe for
    private modules: ``machine github.com login USER password TOKEN``) before git asks the
    backup's credential helper; GitHub answers a private repository's request with other
    credentials 404, and the clone failed "not found" without the token ever tried."""
    github = GitHubAnswering404ToOtherCredentials(tmp_path / "git", token=TOKEN, clock=FakeClock())
    await github.start(0)
    try:
        build_org(github)
        netrc = user_home / ".netrc"
        netrc.write_text("machine 127.0.0.1 login someone password ghp_someoneelses\n")
        netrc.chmod(0o600)
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
    finally:
        await github.close()
    assert report.status == "completed", report.errors
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert refs(restored) == without_pull_refs(github.git_dir("beta"))


class ForwardProxy:
    """A loopback forward proxy for ``http://`` URLs that records the URL of every request
    (each sent on with ``Connection: close``, so the next one comes on a new connection)."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            method, target, version = line.split(" ")
            self.urls.append(target)
            parts = urllib.parse.urlsplit(target)
            kept = [
                f
                for f in fields
                if f and not f.lower().startswith(("connection:", "proxy-connection:"))
            ]
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            upstream_reader, upstream_writer = await asyncio.open_connection(
                parts.hostname, parts.port
            )
            request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
            upstream_writer.write(request.encode("latin-1") + b"\r\n\r\n")

            async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError):
                    while data := await source.read(65536):
                        sink.write(data)
                        await sink.drain()

            upload = asyncio.ensure_future(pipe(reader, upstream_writer))
            await pipe(upstream_reader, writer)
            upload.cancel()
            upstream_writer.close()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def test_every_request_takes_the_proxy_of_the_environment(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    monkeypatch: pytest.MonkeyPatch,
    user_home: Path,
) -> None:
    """Behind a proxy every request must go through (a corporate network), the one the
    environment names (``HTTPS_PROXY``, ``http_proxy`` for an ``http://`` server), as git
    and botocore take it: the API requests and asset downloads went straight to the server
    (and failed there). The user's ``http.proxy`` (here a dead one) is not git's any more."""
    global_config(user_home, ("http.proxy", "http://127.0.0.1:1"))
    async with ForwardProxy() as proxy, running_org(tmp_path / "git") as github:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("no_proxy", "localhost")  # S3 directly
        endpoint = s3_server.endpoint.replace("127.0.0.1", "localhost")
        clock = github.clock
        options = config(github, endpoint, buckets.dest, tmp_path / "w", include=("alpha",))
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert report.status == "completed", report.errors
    through = {urllib.parse.urlsplit(url).path.split("/")[1] for url in proxy.urls}
    assert through >= {"api", "git", "storage"}, proxy.urls


async def test_a_credential_helper_of_a_kept_mirror_neither_stores_nor_gives_a_token(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """git asks every helper of its configuration, the repository's included, and has each
    store what worked: a ``credential.helper store`` in a kept mirror would write the token
    to a file, and one answering first would give other credentials. Both are switched off
    (``-c credential.helper=`` empties the list before the backup's own)."""
    stored = tmp_path / "stored-credentials"
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
        assert report.status == "completed", report.errors
        mirror = next(p for p in (tmp_path / "w").rglob("beta.git") if p.is_dir())
        stored.write_text(f"http://someone:ghp_someoneelses@127.0.0.1:{github.port}\n")
        git("config", "credential.helper", f"store --file {stored}", cwd=mirror)
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2026-11-28T12:00:00Z"
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
        assert not [
            s for s in github.git_seen if s.authorization and "c29tZW9uZ" in s.authorization
        ]
    assert report.status == "completed", report.errors
    assert TOKEN not in stored.read_text()
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert new_sha in refs(restored).values()


@pytest.mark.parametrize(
    ("variables", "url", "proxy"),
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.github.com/user", "http://proxy:3128"),
        ({"https_proxy": "proxy:3128"}, "https://api.github.com/user", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "github.com"}, "https://api.github.com/", None),
        ({"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, "https://api.github.com/", None),
        ({"http_proxy": "http://p:1"}, "https://api.github.com/user", None),
        ({}, "https://api.github.com/user", None),
    ],
)
async def test_the_proxy_of_a_request(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], url: str, proxy: str | None
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    async with aiohttp.ClientSession() as session:
        client = GitHubClient(
            session, "https://api.github.com", TOKEN, gate=RateGate(), slots=asyncio.Semaphore(1)
        )
        assert client.proxy_for(url) == proxy


async def test_the_callers_low_speed_variables_do_not_undo_the_stall_limit(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GIT_HTTP_LOW_SPEED_LIMIT``/``_TIME`` in the environment (CI images set them for slow
    links) win over ``-c http.lowSpeedLimit``: a stalled clone then waited their 600 s (or
    for ever with a limit of 0), not the run's read timeout."""
    monkeypatch.setenv("GIT_HTTP_LOW_SPEED_LIMIT", "1")
    monkeypatch.setenv("GIT_HTTP_LOW_SPEED_TIME", "600")
    async with running_org(tmp_path / "git") as github:
        github.repos["beta"].git_stalls = [30.0]
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "w")
        started = time.monotonic()
        report = await run_github_backup(
            clock=github.clock,
            sleep=github.clock.sleep,
            read_timeout=2,
            include=("beta",),
            **options,
        )
        elapsed = time.monotonic() - started
    assert report.status == "completed", report.errors
    assert elapsed < 20, f"{elapsed:.0f} s: the stall was waited out"


@pytest.mark.parametrize("variable", ["GIT_DEFAULT_HASH", "GIT_TEMPLATE_DIR"])
async def test_the_callers_repository_defaults_do_not_shape_a_new_mirror(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    """A mirror is made with ``git init --bare``, which takes the caller's
    ``GIT_DEFAULT_HASH`` (sha256: GitHub's sha1 repositories then do not fetch) and copies
    ``GIT_TEMPLATE_DIR`` into it (a ``config`` there: an ``http.proxy``, an ``insteadOf``)."""
    template = tmp_path / "template"
    template.mkdir()
    (template / "config").write_text("[http]\n\tproxy = http://127.0.0.1:1\n")
    values = {"GIT_DEFAULT_HASH": "sha256", "GIT_TEMPLATE_DIR": str(template)}
    async with running_org(tmp_path / "git") as github:
        with monkeypatch.context() as inherited:
            inherited.setenv(variable, values[variable])
            report = await backup(
                github, s3_server, buckets.dest, tmp_path / "w", include=("beta",)
            )
    assert report.status == "completed", report.errors
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert refs(restored) == without_pull_refs(github.git_dir("beta"))


def _loose_objects(mirror: Path, prefix: str, count: int) -> None:
    """``count`` loose blobs whose names start with ``prefix``: what ``gc --auto`` counts
    (the objects of one fan-out folder, times 256, against ``gc.auto``, 6,700)."""
    made = i = 0
    while made < count:
        i += 1
        body = f"unreachable {i}\n".encode()
        data = b"blob %d\0" % len(body) + body
        name = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        if name.startswith(prefix):
            (mirror / "objects" / name[:2]).mkdir(exist_ok=True)
            (mirror / "objects" / name[:2] / name[2:]).write_bytes(zlib.compress(data))
            made += 1


def _git_gcs(stop: threading.Event, seen: dict[int, bool]) -> None:
    """pid -> whether it ran detached (its own session), for every ``git gc --auto`` seen."""
    while not stop.is_set():
        for process in Path("/proc").iterdir():
            if not process.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if b"gc\0--auto" in (process / "cmdline").read_bytes():
                    session = (process / "stat").read_text().rsplit(")", 1)[1].split()[3]
                    seen[int(process.name)] = int(session) == int(process.name)


async def test_a_fetch_into_a_kept_mirror_leaves_no_git_running_behind_it(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A fetch into a mirror with many loose objects (kept mirrors gather them, a fetch at a
    time) starts ``git gc --auto``, which by default detaches into a session of its own: it
    went on repacking the mirror while the bundle was made from it and after the run (a
    killed one too: neither the kill of git's process group nor ``--pdeathsig`` reaches
    it), where the README says no git outlives the run."""
    async with running_org(tmp_path / "git") as github:
        report = await backup(github, s3_server, buckets.dest, tmp_path / "w", include=("beta",))
        assert report.status == "completed", report.errors
        mirror = next(p for p in (tmp_path / "w").rglob("beta.git") if p.is_dir())
        _loose_objects(mirror, "17", 40)
        new_sha = add_commit(github.git_dir("beta"), "after the first backup")
        github.repos["beta"].pushed_at = "2026-11-28T12:00:00Z"
        seen: dict[int, bool] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_git_gcs, args=(stop, seen), daemon=True)
        watcher.start()
        try:
            report = await backup(
                github, s3_server, buckets.dest, tmp_path / "w", include=("beta",)
            )
        finally:
            stop.set()
            watcher.join()
    assert report.status == "completed", report.errors
    assert seen, "no gc --auto ran: the test did not make one"
    assert not any(seen.values()), "a gc ran detached from the run"
    restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
    assert new_sha in refs(restored).values()
