"""A loopback stand-in for GitHub, for tests: the REST API and git over smart HTTP.

- ``/api/...`` plays the REST API: paginated lists (``Link`` headers, ``per_page``), ETags and
  304 answers to ``If-None-Match`` (which spend no quota), ``x-ratelimit-*`` headers with a
  budget that runs out (403 until the reset), injectable secondary limits (403 with or
  without ``retry-after``), release assets behind a redirect to ``/storage/...``.
- ``/git/<owner>/<repo>.git/...`` runs the real ``git http-backend`` (CGI) over bare
  repositories on disk, behind Basic authentication with the token as the password.

Time comes from a ``FakeClock`` the client under test shares, so an hour's rate-limit wait
passes at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

GIT = shutil.which("git") or "/usr/bin/git"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        [GIT, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def make_repository(bare: Path, *, commits: int = 2, tags: int = 1, pull_ref: bool = True) -> None:
    """A bare repository with ``commits`` on main, a second branch, tags and a PR ref."""
    work = bare.with_name(bare.name + ".work")
    git("init", "-q", "-b", "main", str(work))
    for i in range(commits):
        (work / f"file{i}.txt").write_text(f"content {i} of {bare.name}\n" * (i + 1))
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", f"commit {i}", cwd=work)
    for i in range(tags):
        git("tag", "-a", f"v{i}.0", "-m", f"release {i}", cwd=work)
    git("branch", "feature", cwd=work)
    git("clone", "-q", "--bare", str(work), str(bare))
    if pull_ref:  # a commit only GitHub's hidden refs/pull/* reach
        git("checkout", "-q", "-b", "pr", cwd=work)
        (work / "pr.txt").write_text("pull request\n")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "pr commit", cwd=work)
        git("push", "-q", str(bare), "pr:refs/pull/1/head", cwd=work)
    shutil.rmtree(work)


def add_commit(bare: Path, message: str) -> str:
    work = bare.with_name(bare.name + ".work2")
    git("clone", "-q", str(bare), str(work))
    (work / "new.txt").write_text(message)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    sha = git("rev-parse", "HEAD", cwd=work).strip()
    shutil.rmtree(work)
    return sha


@dataclass
class FakeClock:
    """Wall time in epoch seconds that only moves when someone sleeps."""

    now: float = 1_700_000_000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


#: GitHub's answer (422) to a page past the depth it serves of some lists
PAGINATION_LIMITED = (
    "In order to keep the API fast for everyone, pagination is limited for this resource. "
    "Check the rel=last link relation in the Link response header to see how far back you "
    "can traverse."
)


@dataclass
class FakeRepo:
    name: str
    owner: str = "acme"
    id: int | None = None  # GitHub's repository id (default: one from the name); a renamed
    # repository keeps its id, a new one under a deleted one's name gets another
    fork: bool = False
    archived: bool = False
    private: bool = False  # left out of /users/{owner}/repos, as on GitHub
    has_issues: bool = True  # False: /issues answers 410; /issues/comments still lists the
    # comments of pull request conversations (every pull request is an issue)
    has_pull_requests: bool = True  # False: /pulls... answer a bare 404, as on GitHub
    has_wiki: bool = True
    pushed_at: str = "2024-01-01T00:00:00Z"
    clone_url: str | None = None  # where the API says to clone (default: this server's git)
    status: int | None = None  # every API and git request of the repository answers this
    git_refusals: list[int] = field(default_factory=list)  # the next git requests answer these
    git_stalls: list[float] = field(default_factory=list)  # the next git requests hang this long
    issues_status: int | None = None  # e.g. 410: issues disabled
    issues: list[dict[str, Any]] = field(default_factory=list)
    issue_comments: list[dict[str, Any]] = field(default_factory=list)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    pull_comments: list[dict[str, Any]] = field(default_factory=list)
    releases: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    authorization: str | None
    if_none_match: str | None
    status: int = 0


Hook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class FakeGitHub:
    def __init__(self, root: Path, *, token: str, clock: FakeClock, owner: str = "acme") -> None:
        self.root = root
        self.token = token
        self.clock = clock
        self.owner = owner
        self.owner_type = "Organization"
        self.login = "tester"
        self.repos: dict[str, FakeRepo] = {}
        self.assets: dict[int, bytes] = {}
        self.assets_direct = False  # the API answers asset downloads itself (200), no redirect
        self.lists_have_pull_requests = True  # False: repository lists lack has_pull_requests
        # A classic token's scopes, sent as X-OAuth-Scopes on every answer (None: a
        # fine-grained or app token, which has none); without ``repo`` the lists show public
        # repositories only, as on GitHub
        self.oauth_scopes: str | None = None
        # An organisation enforcing SAML SSO for a token not authorized for it: its resources
        # answer 403 with ``X-GitHub-SSO: required; url=<this>`` (None: no SSO)
        self.sso_authorization: str | None = None
        # repositories renamed (old name -> new): the API answers the old name's paths with
        # 301 to the new location (GitHub's Location is /repositories/{id}/..., same origin)
        self.renamed: dict[str, str] = {}
        # a fine-grained token without a permission: a repository list (``issues``, ``pulls``...)
        # -> the permission GitHub names in X-Accepted-GitHub-Permissions, answering 403
        self.withheld: dict[str, str] = {}
        #: the deepest page of a repository's comment lists served: deeper ones answer 422, as
        #: GitHub's do past some tens of thousands of comments (its issues list pages large
        #: repositories by cursors in its Link headers instead)
        self.page_cap: int | None = None
        self.seen: list[Seen] = []
        self.git_seen: list[Seen] = []
        self.storage_auth: list[str | None] = []
        self.limit = 5000
        self.remaining = 5000
        self.reset_at = clock.now + 3600
        self.secondary: dict[str, list[int | None]] = {}  # path -> retry-after values to answer
        self.hooks: list[Hook] = []
        self.storage_gate: asyncio.Event | None = None
        self.storage_pause: asyncio.Event | None = None  # half an asset sent, then this wait
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()  # ends the stalls a test left hanging
        self._next_id = 1000

    # -- set-up -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def git_dir(self, name: str, wiki: bool = False) -> Path:
        return self.root / self.owner / (f"{name}.wiki.git" if wiki else f"{name}.git")

    def add_repo(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.name] = repo
        return repo

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def add_release(self, repo: FakeRepo, tag: str, assets: dict[str, bytes]) -> None:
        release_id = self.new_id()
        records = []
        for name, data in assets.items():
            asset_id = self.new_id()
            self.assets[asset_id] = data
            records.append(
                {
                    "id": asset_id,
                    "name": name,
                    "size": len(data),
                    "updated_at": "2024-01-02T00:00:00Z",
                    "url": f"{self.api_url}/repos/{repo.owner}/{repo.name}/releases/assets/"
                    f"{asset_id}",
                    "browser_download_url": f"{self.url}/storage/{asset_id}",
                }
            )
        repo.releases.append({"id": release_id, "tag_name": tag, "draft": False, "assets": records})

    def record(self, repo: FakeRepo) -> dict[str, Any]:
        return {
            "id": repo.id if repo.id is not None else abs(hash(repo.name)) % 10**8,
            "name": repo.name,
            "full_name": f"{repo.owner}/{repo.name}",
            "owner": {"login": repo.owner, "type": self.owner_type},
            "private": repo.private,
            "fork": repo.fork,
            "archived": repo.archived,
            "has_issues": repo.has_issues,
            "has_pull_requests": repo.has_pull_requests,
            "has_wiki": repo.has_wiki,
            "pushed_at": repo.pushed_at,
            "size": 1,
            "default_branch": "main",
            "clone_url": repo.clone_url or f"{self.url}/git/{repo.owner}/{repo.name}.git",
        }

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeGitHub:
        """Serve on ``port`` (0: one the system picks; see ``port`` after)."""
        app = web.Application(middlewares=[self._api_middleware])
        app.router.add_get("/api/user", self._user)
        app.router.add_get("/api/users/{owner}", self._owner)
        app.router.add_get("/api/orgs/{owner}/repos", self._repos)
        app.router.add_get("/api/users/{owner}/repos", self._repos)
        app.router.add_get("/api/user/repos", self._repos)
        app.router.add_get("/api/repos/{owner}/{repo}", self._repo)
        app.router.add_get("/api/repos/{owner}/{repo}/releases/assets/{id}", self._asset)
        app.router.add_get("/api/repos/{owner}/{repo}/{what:.+}", self._repo_list)
        app.router.add_get("/storage/{id}", self._storage)
        app.router.add_route("*", "/git/{owner}/{tail:.+}", self._git)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError:  # the port is taken: nothing left serving, start may be tried again
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the API ------------------------------------------------------------------------

    def api_requests(self, contains: str = "") -> list[Seen]:
        return [s for s in self.seen if contains in s.path]

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        seen = Seen(
            request.method,
            request.path,
            request.query_string,
            request.headers.get("Authorization"),
            request.headers.get("If-None-Match"),
        )
        self.seen.append(seen)
        response = await self._api(request, handler)
        seen.status = response.status
        return response

    def _limit_headers(self) -> dict[str, str]:
        return {
            "Date": formatdate(self.clock.now, usegmt=True),  # the server's clock, as GitHub's
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(max(self.remaining, 0)),
            "x-ratelimit-reset": str(int(self.reset_at)),
            "x-ratelimit-used": str(self.limit - max(self.remaining, 0)),
        }

    async def _api(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _json({"message": "Bad credentials"}, status=401)
        for hook in self.hooks:
            early = await hook(request)
            if early is not None:
                return early
        if self.sso_authorization is not None and request.path.startswith(
            (f"/api/orgs/{self.owner}/", f"/api/repos/{self.owner}/")
        ):
            return _json(
                {
                    "message": "Resource protected by organization SAML enforcement. You must "
                    "grant your Personal Access token access to this organization.",
                    "documentation_url": "https://docs.github.com",
                },
                403,
                {
                    **self._limit_headers(),
                    "X-GitHub-SSO": f"required; url={self.sso_authorization}",
                },
            )
        parts = request.path.split("/", 5)  # '', 'api', 'repos', owner, name, rest
        if len(parts) >= 5 and parts[2] == "repos" and parts[4] in self.renamed:
            parts[4] = self.renamed[parts[4]]
            moved = request.url.with_path("/".join(parts), encoded=False)
            return _json(
                {"message": "Moved Permanently", "url": str(moved)},
                301,
                {**self._limit_headers(), "Location": str(moved)},
            )
        if self.clock.now >= self.reset_at:
            self.remaining, self.reset_at = self.limit, self.clock.now + 3600
        pending = self.secondary.get(request.path)
        if pending:
            retry_after = pending.pop(0)
            headers = self._limit_headers()
            if retry_after is not None:
                headers["retry-after"] = str(retry_after)
            return _json({"message": "You have exceeded a secondary rate limit."}, 403, headers)
        if self.remaining <= 0:
            return _json(
                {"message": "API rate limit exceeded for user."}, 403, self._limit_headers()
            )
        response = await handler(request)
        if self.oauth_scopes is not None:
            response.headers["X-OAuth-Scopes"] = self.oauth_scopes
        if isinstance(response, web.Response) and response.status == 200 and response.body:
            body = response.body
            assert isinstance(body, bytes)
            etag = f'"{hashlib.sha1(body).hexdigest()}"'
            response.headers["ETag"] = etag
            if request.headers.get("If-None-Match") == etag:
                not_modified = web.Response(status=304, headers={"ETag": etag})
                not_modified.headers.update(self._limit_headers())
                return not_modified
        self.remaining -= 1
        response.headers.update(self._limit_headers())
        return response

    def _paginate(
        self, request: web.Request, items: list[Any], *, capped: bool = False
    ) -> web.Response:
        per_page = min(int(request.query.get("per_page", "30")), 100)
        page = int(request.query.get("page", "1"))
        if capped and self.page_cap is not None and page > self.page_cap:
            return _json({"message": PAGINATION_LIMITED}, 422)
        chunk = items[(page - 1) * per_page : page * per_page]
        last = max(1, -(-len(items) // per_page))
        links = []
        if page < last:
            links.append(f'<{request.url.update_query(page=page + 1)}>; rel="next"')
            links.append(f'<{request.url.update_query(page=last)}>; rel="last"')
        headers = {"Link": ", ".join(links)} if links else {}
        return _json(chunk, headers=headers)

    async def _user(self, request: web.Request) -> web.Response:
        return _json({"login": self.login})

    async def _owner(self, request: web.Request) -> web.Response:
        if request.match_info["owner"].lower() != self.owner.lower():
            return _json({"message": "Not Found"}, 404)
        return _json({"login": self.owner, "type": self.owner_type})

    async def _repos(self, request: web.Request) -> web.Response:
        public_only = request.path.startswith("/api/users/")  # another user's: public ones
        if self.oauth_scopes is not None and "repo" not in _scopes(self.oauth_scopes):
            public_only = True  # a classic token without the repo scope sees public ones only
        repos = [r for r in self.repos.values() if not (public_only and r.private)]
        records = [self.record(r) for r in repos]
        if not self.lists_have_pull_requests:
            for record in records:
                del record["has_pull_requests"]
        return self._paginate(request, records)

    def _find(self, request: web.Request) -> FakeRepo | web.Response:
        repo = self.repos.get(request.match_info["repo"])
        if repo is None:
            return _json({"message": "Not Found"}, 404)
        if repo.status is not None:
            return _json({"message": "Repository access blocked"}, repo.status)
        return repo

    async def _repo(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        if isinstance(repo, web.Response):
            return repo
        return _json({**self.record(repo), "subscribers_count": 3})

    async def _repo_list(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        if isinstance(repo, web.Response):
            return repo
        what = request.match_info["what"]
        if what in self.withheld:
            return _json(
                {"message": "Resource not accessible by personal access token"},
                403,
                {**self._limit_headers(), "X-Accepted-GitHub-Permissions": self.withheld[what]},
            )
        if what.startswith("pulls") and not repo.has_pull_requests:
            return _json({"message": "Not Found"}, 404)
        if what == "issues" and not repo.has_issues:
            return _json({"message": "Issues are disabled for this repo"}, 410)
        # what is left with issues off: pull request conversation comments, unless those
        # are off too
        if what == "issues/comments" and not (repo.has_issues or repo.has_pull_requests):
            return _json({"message": "Not Found"}, 404)
        if what.startswith("issues") and repo.issues_status is not None:
            return _json({"message": "Issues are disabled for this repo"}, repo.issues_status)
        items = {
            "issues": repo.issues,
            "issues/comments": repo.issue_comments,
            "pulls": repo.pulls,
            "pulls/comments": repo.pull_comments,
            "releases": repo.releases,
        }.get(what)
        if items is None:
            return _json({"message": "Not Found"}, 404)
        since = request.query.get("since")
        if since is not None and what != "pulls" and what != "releases":  # theirs: ignored
            items = [item for item in items if item.get("updated_at", "") >= since]
        return self._paginate(request, items, capped=what.endswith("comments"))

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        repo = self._find(request)
        if isinstance(repo, web.Response):
            return repo
        asset_id = int(request.match_info["id"])
        if asset_id not in self.assets:
            return _json({"message": "Not Found"}, 404)
        if request.headers.get("Accept") != "application/octet-stream":
            return _json({"id": asset_id})
        if self.assets_direct:  # streamed from a view: the server holds no copy of its own
            data = memoryview(self.assets[asset_id])
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = len(data)
            await response.prepare(request)
            for start in range(0, len(data), 256 * 1024):
                await response.write(data[start : start + 256 * 1024])
            await response.write_eof()
            return response
        location = f"{self.url}/storage/{asset_id}?X-Signature=abc"
        return web.Response(status=302, headers={"Location": location})

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        self.storage_auth.append(request.headers.get("Authorization"))
        if self.storage_gate is not None:
            await self.storage_gate.wait()
        data = self.assets.get(int(request.match_info["id"]))
        if data is None:
            return web.Response(status=404)
        if self.storage_pause is not None:  # a download in flight: its file is being written
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            await self.storage_pause.wait()
            await response.write(data[len(data) // 2 :])
            await response.write_eof()
            return response
        return web.Response(body=data, content_type="application/octet-stream")

    # -- git over smart HTTP ------------------------------------------------------------

    def git_requests(self, repo: str, service: str = "git-upload-pack") -> list[Seen]:
        return [
            s
            for s in self.git_seen
            if f"/{repo}.git/" in s.path and s.path.endswith(service) and s.method == "POST"
        ]

    async def _git(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            request.method,
            request.path,
            request.query_string,
            request.headers.get("Authorization"),
            None,
        )
        self.git_seen.append(seen)
        expected = "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            seen.status = 401
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
        tail = request.match_info["tail"]
        repo_name = tail.split(".git/", 1)[0].removesuffix(".wiki")
        repo = self.repos.get(repo_name)
        if repo is not None and repo.status is not None:
            seen.status = repo.status
            return web.Response(status=repo.status, text="blocked")
        if repo is not None and repo.git_refusals:
            seen.status = repo.git_refusals.pop(0)
            return web.Response(status=seen.status, text="refused")
        if repo is not None and repo.git_stalls:
            seen.status = -1  # a dead link: nothing comes back for this long (or until close)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), repo.git_stalls.pop(0))
            return web.Response(status=503, text="stalled")
        body = await request.read()  # aiohttp has already undone Content-Encoding: gzip
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{request.match_info['owner']}/{tail}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        if "Git-Protocol" in request.headers:
            env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        process = await asyncio.create_subprocess_exec(
            GIT,
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        seen.status = status
        return web.Response(status=status, body=payload, headers=headers)


def _scopes(header: str) -> set[str]:
    return {scope.strip() for scope in header.split(",") if scope.strip()}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )
