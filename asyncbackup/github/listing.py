"""What a GitHub backup copies: the artifacts of every selected repository, page by page.

Each artifact is one object at the destination and one ``files`` entry of the checkpoint::

    github/<owner>/<repo>.bundle                  the git history (git bundle, every ref but
                                                  GitHub's refs/pull/*: ``git.EXCLUDED_REFS``)
    github/<owner>/<repo>.wiki.bundle             the wiki's history, where a wiki exists
    github/<owner>/<repo>/repository.json         the repository's own record
    github/<owner>/<repo>/issues.json             issues and pull requests (state=all)
    github/<owner>/<repo>/issue-comments.json     every issue and pull request comment
    github/<owner>/<repo>/pulls.json              pull requests (state=all)
    github/<owner>/<repo>/pull-comments.json      every review comment
    github/<owner>/<repo>/releases.json           releases, with their asset records
    github/<owner>/<repo>/releases/<tag>/<name>   each release asset's bytes

Release assets are found while listing (one conditional request per repository: a 304 reuses
the asset list kept in the checkpoint).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ObjectError
from ..pipeline import WorkItem
from .client import PER_PAGE, GitHubClient, GitHubError, PageTags, last_page_full, unseen_page

if TYPE_CHECKING:
    from .config import GitHubBackupConfig

log = logging.getLogger("asyncbackup")

PREFIX = "github"
BUNDLE, WIKI, ASSET = "bundle", "wiki", "asset"
#: Checkpoint sections (top-level objects beside ``files``) this backup keeps.
ETAGS = "github_etags"
VERSIONS = "github_versions"
RELEASE_LISTING = "github_release_listing"
SKIPPED = "github_skipped"
CARRIED_SECTIONS = (ETAGS, VERSIONS, RELEASE_LISTING)
_ISSUES, _PULLS = "has_issues", "has_pull_requests"
_FEATURES = {_ISSUES: "issues", _PULLS: "pull requests"}
#: readings of the repository list after the first, while one still finds repositories
_REREADS = 3


@dataclass(frozen=True, slots=True)
class MetadataKind:
    kind: str
    filename: str
    path: str  # relative to /repos/{owner}/{repo}
    paginated: bool
    params: tuple[tuple[str, str], ...] = ()
    #: repository record fields (``has_issues``...) for features a repository can turn off:
    #: the resource is there while any of them is on
    needs: tuple[str, ...] = ()
    #: read on with ``since`` past the depth GitHub pages it (its comment lists: edited
    #: rarely, so few items are listed again; an issue's update time moves with every
    #: comment, label or close, and the issues list is paged by cursors on large
    #: repositories anyway)
    by_since: bool = False


def turned_off(
    meta: MetadataKind, record: Mapping[str, Any], *, lenient: bool = False
) -> str | None:
    """Why the repository of ``record`` has no ``meta`` to copy, or None: every feature it
    needs is off. ``lenient`` (the resource answered 404 or 410): none is on and one is off,
    a field the record lacks (an older server) not counting."""
    states = [record.get(name) for name in meta.needs]
    if lenient:
        off = False in states and True not in states
    else:
        off = bool(states) and all(state is False for state in states)
    if not off:
        return None
    names = [_FEATURES[n] for n, state in zip(meta.needs, states, strict=True) if state is False]
    return f"{' and '.join(names)} are disabled for this repository"


_BY_CREATION = (("sort", "created"), ("direction", "asc"))
METADATA: tuple[MetadataKind, ...] = (
    MetadataKind("repository", "repository.json", "", paginated=False),
    MetadataKind(
        "issues",
        "issues.json",
        "/issues",
        paginated=True,
        params=(("state", "all"), *_BY_CREATION),
        needs=(_ISSUES,),
    ),
    MetadataKind(
        "issue-comments",
        "issue-comments.json",
        "/issues/comments",
        paginated=True,
        params=_BY_CREATION,
        needs=(_ISSUES, _PULLS),  # every pull request is an issue: its conversation too
        by_since=True,
    ),
    MetadataKind(
        "pulls",
        "pulls.json",
        "/pulls",
        paginated=True,
        params=(("state", "all"), *_BY_CREATION),
        needs=(_PULLS,),
    ),
    MetadataKind(
        "pull-comments",
        "pull-comments.json",
        "/pulls/comments",
        paginated=True,
        params=_BY_CREATION,
        needs=(_PULLS,),
        by_since=True,
    ),
    MetadataKind("releases", "releases.json", "/releases", paginated=True),
)
METADATA_BY_KIND = {m.kind: m for m in METADATA}


@dataclass(frozen=True, slots=True)
class Artifact(WorkItem):
    """One thing to back up. ``url`` is a clone URL (bundles) or an API URL (the rest)."""

    kind: str = ""
    owner: str = ""
    repo: str = ""
    url: str = ""
    version: str = ""  # pushed_at (bundle), "updated_at size" (asset)
    unlisted: str = ""  # releases: why its assets could not be listed (it fails once copied)


def _with_next(pages: PageTags) -> Iterator[tuple[list[str], str | None]]:
    """Each page of a reading with the URL of the one after it (None after the last)."""
    after: list[str | None] = [url for url, _ in pages[1:]]
    return zip(pages, [*after, None] if pages else [], strict=True)


def repo_prefix(owner: str, repo: str) -> str:
    return f"{PREFIX}/{owner}/{repo}"


def wiki_url(clone_url: str) -> str:
    base = clone_url[:-4] if clone_url.endswith(".git") else clone_url
    return f"{base}.wiki.git"


@dataclass(frozen=True, slots=True)
class RepoFilter:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_forks: bool = False
    skip_archived: bool = False

    @classmethod
    def of(cls, config: GitHubBackupConfig) -> RepoFilter:
        """The filter of ``config``'s flags (``--include``, ``--skip-forks``...)."""
        return cls(
            include=config.include,
            exclude=config.exclude,
            skip_forks=config.skip_forks,
            skip_archived=config.skip_archived,
        )

    def rejects(self, repo: Mapping[str, Any]) -> str | None:
        """Why ``repo`` is left out, or None when it is backed up."""
        name = str(repo.get("name", ""))
        folded = name.lower()
        if self.include and not any(fnmatch.fnmatchcase(folded, p.lower()) for p in self.include):
            return "not matched by --include"
        if any(fnmatch.fnmatchcase(folded, p.lower()) for p in self.exclude):
            return "matched by --exclude"
        if self.skip_forks and repo.get("fork"):
            return "a fork (--skip-forks)"
        if self.skip_archived and repo.get("archived"):
            return "archived (--skip-archived)"
        return None

    def describe(self) -> str:
        """The filters as flags: ``--include 'x*' --skip-forks``."""
        flags = [f"--include {p!r}" for p in self.include]
        flags += [f"--exclude {p!r}" for p in self.exclude]
        flags += ["--skip-forks"] * self.skip_forks + ["--skip-archived"] * self.skip_archived
        return " ".join(flags) or "no filters"


Note = Callable[[str, str, Any], None]


class Lister:
    """Turns the owner's repository list into pages of artifacts."""

    def __init__(
        self,
        client: GitHubClient,
        *,
        repos_path: str,
        repos_params: Mapping[str, str],
        repo_filter: RepoFilter,
        wikis: bool,
        previous_listing: Mapping[str, Any],
        note: Note,
    ) -> None:
        self.client = client
        self.repos_path = repos_path
        self.repos_params = repos_params
        self.filter = repo_filter
        self.wikis = wikis
        self.previous_listing = previous_listing
        self.note = note
        self.repositories = 0
        self.left_out: dict[str, str] = {}
        # GitHub pages by offset: a repository created while the list is read (hours, as
        # pages are read as the copies go) pushes one already listed onto the next page.
        self._seen: set[str] = set()

    async def pages(self) -> AsyncIterator[list[WorkItem]]:
        """The artifacts of every repository, a page of the list at a time.

        Then the list is read again: a repository deleted while it was read (for hours, as
        the copies go) moved the next one onto a page already read. The pages are asked for
        with their ETags, so unchanged ones answer a free 304, and only repositories not seen
        yet are yielded; again while a reading finds some, at most ``_REREADS`` times.
        """
        tags: PageTags = []
        async for items in self._read_list([], tags, again=False):
            yield items
        for _ in range(_REREADS):
            seen, previous, tags = len(self._seen), tags, []
            async for items in self._read_list(previous, tags, again=True):
                if items:
                    yield items
            found = len(self._seen) - seen
            if not found:
                return
            log.info("the list read again: %d more repositories (moved while it was read)", found)

    async def _repo_pages(self, previous: PageTags, out: PageTags) -> AsyncIterator[list[Any]]:
        """The pages of the repository list, each one's URL and ETag added to ``out``. A page
        of ``previous`` (an earlier reading) that answers 304 to its ETag is skipped."""
        following = {url: (etag, nxt) for (url, etag), nxt in _with_next(previous)}
        url: str | None = self.client.url(
            self.repos_path, {**self.repos_params, "per_page": PER_PAGE}
        )
        seen: set[str] = set()
        while url is not None:
            etag, after = following.get(unseen_page(seen, url), ("", None))
            answer = await self.client.get(url, etag=etag or None)
            if answer.status == 304:
                out.append([url, etag])
                url = after
                continue
            data = answer.json()
            if not isinstance(data, list):
                raise GitHubError(answer.status, f"expected a list from {url}")
            # A full last page is asked whole next time: a repository added after it goes on a
            # new page, which no ETag covers, while this one's body (and ETag) is unchanged.
            full_last = answer.next_url is None and len(data) >= PER_PAGE
            out.append([url, "" if full_last else answer.etag or ""])
            yield data
            url = answer.next_url

    async def _read_list(
        self, previous: PageTags, tags: PageTags, *, again: bool
    ) -> AsyncIterator[list[WorkItem]]:
        async for page in self._repo_pages(previous, tags):
            selected = []
            for repo in page:
                identity = repo.get("id") or repo.get("full_name")
                if identity is not None:
                    if str(identity) in self._seen:
                        if not again:
                            name = repo.get("full_name")
                            log.debug("%s is listed again: already in this run", name)
                        continue
                    self._seen.add(str(identity))
                elif again:
                    continue  # no identity to tell: yielded by the first reading only
                reason = self.filter.rejects(repo)
                if reason is None:
                    selected.append(repo)
                else:
                    self.left_out[str(repo.get("full_name"))] = reason
                    log.debug("leaving out %s: %s", repo.get("full_name"), reason)
            assets: dict[str, list[Artifact]] = {}
            unlisted: dict[str, str] = {}
            async with asyncio.TaskGroup() as tg:  # at most one page (100) of small tasks
                for repo in selected:
                    tg.create_task(self._assets_of(repo, assets, unlisted))
            items: list[WorkItem] = []
            for repo in selected:
                self.repositories += 1
                items.extend(self._artifacts_of(repo, unlisted.get(str(repo["name"]), "")))
                items.extend(assets.get(str(repo["name"]), ()))
            yield items

    def _artifacts_of(self, repo: Mapping[str, Any], unlisted: str = "") -> list[Artifact]:
        owner, name = str(repo["owner"]["login"]), str(repo["name"])
        prefix = repo_prefix(owner, name)
        clone_url = str(repo.get("clone_url") or "")
        pushed_at = str(repo.get("pushed_at") or "")
        out = [
            Artifact(
                key=f"{prefix}.bundle",
                size=int(repo.get("size") or 0) * 1024,
                etag=pushed_at,
                kind=BUNDLE,
                owner=owner,
                repo=name,
                url=clone_url,
                version=pushed_at,
            )
        ]
        if self.wikis and repo.get("has_wiki"):
            out.append(
                Artifact(
                    key=f"{prefix}.wiki.bundle",
                    size=0,
                    kind=WIKI,
                    owner=owner,
                    repo=name,
                    url=wiki_url(clone_url),
                )
            )
        api = self.client.url(f"/repos/{owner}/{name}")
        for meta in METADATA:
            key = f"{prefix}/{meta.filename}"
            reason = turned_off(meta, repo)
            if reason is not None:
                self.note(SKIPPED, key, reason)
                continue
            params: dict[str, str | int] = dict(meta.params)
            if meta.paginated:
                params["per_page"] = PER_PAGE
            out.append(
                Artifact(
                    key=key,
                    size=0,
                    kind=meta.kind,
                    owner=owner,
                    repo=name,
                    url=self.client.url(api + meta.path, params),
                    unlisted=unlisted if meta.kind == "releases" else "",
                )
            )
        return out

    async def _assets_of(
        self, repo: Mapping[str, Any], out: dict[str, list[Artifact]], unlisted: dict[str, str]
    ) -> None:
        owner, name = str(repo["owner"]["login"]), str(repo["name"])
        prefix = repo_prefix(owner, name)
        previous = self.previous_listing.get(prefix)
        recorded = _asset_rows(previous.get("assets")) if isinstance(previous, dict) else None
        try:
            if (
                isinstance(previous, dict)
                and recorded is not None
                and previous.get("pages")
                and await self.client.unchanged(previous["pages"])
            ):
                rows = recorded
            else:
                rows, pages = await self._list_assets(owner, name)
                self.note(RELEASE_LISTING, prefix, {"pages": pages, "assets": rows})
        except ObjectError as exc:
            # releases.json records the failure; the assets listed last time are still copied
            # (a resumed run's releases.json may be done already: it would not record it)
            log.debug("cannot list the releases of %s/%s: %s", owner, name, exc)
            unlisted[name] = str(exc)
            rows = recorded or []
        out[name] = [
            Artifact(
                key=str(key),
                size=int(size),
                kind=ASSET,
                owner=owner,
                repo=name,
                url=str(url),
                version=str(version),
            )
            for key, size, url, version in rows
        ]

    async def _list_assets(self, owner: str, name: str) -> tuple[list[list[Any]], PageTags]:
        prefix = repo_prefix(owner, name)
        rows: list[list[Any]] = []
        pages: PageTags = []
        page_sizes: list[int] = []
        keys: set[str] = set()
        url: str | None = self.client.url(f"/repos/{owner}/{name}/releases", {"per_page": PER_PAGE})
        seen: set[str] = set()
        while url is not None:
            answer = await self.client.get(unseen_page(seen, url))
            pages.append([url, answer.etag or ""])
            releases = answer.json()
            page_sizes.append(len(releases))
            for release in releases:
                folder = (
                    f"draft-{release['id']}"
                    if release.get("draft") or not release.get("tag_name")
                    else str(release["tag_name"])
                )
                for asset in release.get("assets", ()):
                    key = f"{prefix}/releases/{folder}/{asset['name']}"
                    if key in keys:  # its release was pushed onto the next page meanwhile
                        continue
                    keys.add(key)
                    rows.append(
                        [
                            key,
                            int(asset.get("size") or 0),
                            str(asset["url"]),
                            f"{asset.get('updated_at', '')} {asset.get('size', 0)}",
                        ]
                    )
            url = answer.next_url
        if any(not etag for _, etag in pages) or last_page_full(page_sizes):
            # as for metadata: a release added after a full last page goes on a page no
            # ETag covers, while the kept ones answer 304 (and its assets would be missed)
            pages = []
        return rows, pages


def _asset_rows(value: object) -> list[list[Any]] | None:
    """The assets a checkpoint's release listing records, ``[[key, size, url, version],
    ...]``; None when they are not in that shape (a hand edit): the releases are listed
    again."""
    if not isinstance(value, list):
        return None
    for row in value:
        if not (isinstance(row, list) and len(row) == 4):
            return None
        key, size, url, version = row
        if not (
            isinstance(key, str)
            and isinstance(size, int)
            and not isinstance(size, bool)
            and isinstance(url, str)
            and isinstance(version, str)
        ):
            return None
    return value
