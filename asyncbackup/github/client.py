"""The GitHub REST API over aiohttp: pagination, rate limits, conditional requests, assets.

Every request passes the ``RateGate`` (primary and secondary limits) and holds one of a fixed
number of API slots, separate from the cap on git processes. Lists are read 100 items a page,
following ``Link: rel="next"``. A paginated resource can be read *conditionally*: the ETag of
every page of the last copy is sent back in ``If-None-Match``; when every page answers 304 (no
quota spent) the resource is unchanged.

The token only ever travels in the ``Authorization`` header of API requests; a release asset's
download redirect is followed by hand, without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import aiohttp
import orjson

from ..errors import ObjectError
from ..localio import open_for_writing
from ..retry import Backoff
from .ratelimit import RateGate, Sleep

log = logging.getLogger("asyncbackup")

PER_PAGE = 100
API_VERSION = "2022-11-28"
CHUNK = 1024 * 1024
#: an API answer longer than this (decompressed) is refused as it comes: a page of 100 items
#: is tens of MB at most (100 releases of 1,000 assets each: about 150), and a broken or
#: hostile server's gigabyte was read whole, then parsed
BODY_LIMIT = 256 * 1024 * 1024
_MAX_RATE_LIMIT_RETRIES = 12
_MAX_HOPS = 3
_JSON = "application/vnd.github+json"
_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Gone",
    422: "Unprocessable",
    451: "UnavailableForLegalReasons",
}

#: ``[[url, etag], ...]``: the pages of one copy of a resource, as kept in the checkpoint.
PageTags = list[list[str]]


def is_page_tags(value: object) -> bool:
    """Whether ``value`` has the shape of ``PageTags``: what a checkpoint holds may have been
    edited by hand (an ETag set to a string, say)."""
    return isinstance(value, list) and all(
        isinstance(page, list) and len(page) == 2 and all(isinstance(x, str) for x in page)
        for page in value
    )


class GitHubError(ObjectError):
    """An API answer that is an error; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str, *, retryable: bool = False) -> None:
        code = _CODES.get(status, f"HTTP{status}")
        super().__init__(code, message, retryable=retryable)
        self.status = status


@dataclass(slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    next_url: str | None
    url: str = ""
    saved: tuple[int, bytes] | None = None  # (size, md5) of a 200 body written to a file

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    def json(self) -> Any:
        """The body, decoded; an ``ObjectError`` for this one answer when it is not JSON (a
        proxy's page, a garbled body), not an exception that stops the whole run."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise ObjectError(
                "InvalidJSON", f"the answer to GET {self.url} is not JSON ({exc})", retryable=True
            ) from exc


@dataclass(slots=True)
class Fetched:
    """A resource copied to a file, or found unchanged (``unchanged``: nothing was written)."""

    unchanged: bool
    pages: PageTags = field(default_factory=list)
    size: int = 0
    md5: bytes = b""
    items: int = 0


def _message(body: bytes, reason: str, secret: str = "") -> str:
    """GitHub's JSON ``message``, a plain-text body, or for an HTML page (a proxy's or load
    balancer's error page) the status line's reason: never markup in an error, nor
    ``secret`` (a page that echoes the request would show the token)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
        if text.lstrip().startswith("<"):
            text = reason
    else:
        text = str(data.get("message", "")) if isinstance(data, dict) else ""
    if secret:
        text = text.replace(secret, "***")  # before it is cut: no part of it either
    return " ".join(text.split())[:300]


class GitHubClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        token: str,
        *,
        gate: RateGate,
        slots: asyncio.Semaphore,
        max_attempts: int = 8,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.session = session
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._auth = {"Authorization": f"Bearer {token}"}
        self.gate = gate
        self.slots = slots
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff(base=1.0, cap=60.0)
        self.sleep = sleep
        self.requests = 0
        self.not_modified = 0
        # the proxies of the environment, as git (curl) and botocore take them: the session
        # is not ``trust_env``, which would also send ~/.netrc credentials in the token's
        # place (and refuse the request with both)
        self._proxies = urllib.request.getproxies_environment()

    def proxy_for(self, url: str) -> str | None:
        """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``http_proxy``...;
        none for a host of ``NO_PROXY``), or None: straight there."""
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme.lower())
        bypassed = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if not proxy or bypassed(parts.netloc, self._proxies):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"  # curl's default scheme

    @property
    def token_kind(self) -> str:
        """``scoped`` for a classic personal access token or an OAuth app's (``ghp_``,
        ``gho_``, or the 40 hex digits of one made before 2021): the tokens that have scopes;
        ``other`` for fine-grained and GitHub App tokens (``github_pat_``, ``ghs_``, ``ghu_``),
        which have permissions instead."""
        token = self._token
        if token.startswith(("ghp_", "gho_")):
            return "scoped"
        if len(token) == 40 and all(c in "0123456789abcdef" for c in token.lower()):
            return "scoped"
        return "other"

    def url(self, path: str, params: Mapping[str, str | int] | None = None) -> str:
        url = path if path.startswith(("http://", "https://")) else self.api_url + path
        return f"{url}?{urlencode(params)}" if params else url

    # -- requests -----------------------------------------------------------------------

    async def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        accept: str = _JSON,
        attempts: int | None = None,
        save_to: Path | None = None,
    ) -> Answer:
        """One GET, retried through rate limits and transient failures; 2xx or 304 only.

        With ``save_to``, a 200's body is streamed to that file (``Answer.saved``), never
        held in memory: an asset the server answers itself may be gigabytes."""
        if _origin(url) != _origin(self.api_url):  # a next link, an asset URL elsewhere
            parts = urlsplit(url)
            raise ObjectError(
                "NotTheAPI",
                f"not sending the token to {parts.scheme}://{parts.netloc}, which is not the "
                f"API's origin (a link or asset URL of {self.api_url}); check --api-url",
            )
        headers = {**self._auth, "Accept": accept, "X-GitHub-Api-Version": API_VERSION}
        if etag:
            headers["If-None-Match"] = etag
        attempt = limited = hops = 0
        max_attempts = attempts or self.max_attempts
        while True:
            await self.gate.wait_turn()
            try:
                async with (
                    self.slots,
                    self.session.get(
                        url, headers=headers, allow_redirects=False, proxy=self.proxy_for(url)
                    ) as response,
                ):
                    self.requests += 1
                    status, reason = response.status, response.reason or ""
                    saved = None
                    if save_to is not None and status == 200:
                        saved, body = await _save_body(response, save_to), b""
                    else:
                        body = await _read_body(response)
                    answer_headers = {k.lower(): v for k, v in response.headers.items()}
                    next_link = response.links.get("next")
                    next_url = str(next_link["url"]) if next_link else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                attempt += 1
                if attempt >= max_attempts:
                    detail = " ".join(str(exc).split()) or type(exc).__name__
                    raise ObjectError(type(exc).__name__, detail, retryable=True) from exc
                await self.sleep(self.backoff.delay(attempt))
                continue
            message = _message(body, reason, self._token) if status >= 400 else ""
            if self.gate.observe(status, answer_headers, message):
                limited += 1
                if limited > _MAX_RATE_LIMIT_RETRIES:
                    raise GitHubError(status, f"still rate limited: {message}", retryable=True)
                continue
            if status == 304:
                self.not_modified += 1
            location = answer_headers.get("location")
            target = urljoin(url, location) if location else ""
            # A redirect within the API is a renamed or transferred repository: followed with
            # the token, an asset download's too. Any other is an asset's storage host (the
            # caller's to follow, without the token), or for JSON not the API at all.
            within_api = target.startswith(self.api_url + "/")
            if status in (301, 302, 307, 308) and target and (accept == _JSON or within_api):
                if _origin(target) != _origin(self.api_url) or hops >= _MAX_HOPS:
                    raise GitHubError(status, f"redirected away from the API to {target}")
                url, hops = target, hops + 1
                continue
            if status < 400:
                return Answer(status, answer_headers, body, next_url, url, saved)
            if status >= 500 or status == 408:
                attempt += 1
                if attempt < max_attempts:
                    await self.sleep(self.backoff.delay(attempt))
                    continue
            retryable = status >= 500 or status == 408
            detail = f"{message or 'no message'} (GET {url}){_advice(status, answer_headers)}"
            raise GitHubError(status, detail, retryable=retryable)

    async def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        return (await self.get(self.url(path, params))).json()

    async def pages(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[list[Any]]:
        """Every page of a list, 100 items at a time."""
        url: str | None = self.url(path, {**(params or {}), "per_page": PER_PAGE})
        seen: set[str] = set()
        while url is not None:
            answer = await self.get(unseen_page(seen, url))
            data = answer.json()
            if not isinstance(data, list):
                raise GitHubError(answer.status, f"expected a list from {url}")
            yield data
            url = answer.next_url

    async def unchanged(self, previous: PageTags) -> bool:
        """True when every page of the last copy answers 304 Not Modified; False, for the
        resource to be read again, when ``previous`` is none or not ``PageTags`` (a hand edit
        of the checkpoint), or a page answers an error (GitHub's paging cap lowered since, a
        page gone): an error that stands is then the new reading's."""
        if not previous or not is_page_tags(previous):
            return False
        for url, etag in previous:
            try:
                answer = await self.get(url, etag=etag)
            except GitHubError as exc:
                log.debug("a page of the last copy answered %s: reading it again", exc)
                return False
            if answer.status != 304:
                return False
        return True

    # -- whole resources to a file -------------------------------------------------------

    async def fetch_to_file(
        self,
        first_url: str,
        out: Path,
        *,
        previous: PageTags | None,
        paginated: bool,
        by_since: bool = False,
    ) -> Fetched:
        """Copy a resource (every page of a list, as one JSON array) to ``out``.

        With ``previous`` (the ETags of the last copy) nothing is written when the resource
        has not changed. Pages are streamed to the file: memory holds one page at a time.
        A list sorted by creation that takes ``since`` (``by_since``) is read on past the
        depth GitHub pages it (``ListPosition``).
        """
        if previous and await self.unchanged(previous):
            return Fetched(unchanged=True, pages=previous)
        digest = hashlib.md5(usedforsecurity=False)
        pages: PageTags = []
        size = items = 0
        page_sizes: list[int] = []
        async with open_for_writing(out) as handle:  # closed even if cancelled mid-open

            async def write(data: bytes) -> None:
                nonlocal size
                digest.update(data)
                size += len(data)
                await asyncio.to_thread(handle.write, data)

            url: str | None = first_url
            position = ListPosition(first_url if by_since else None)
            if paginated:
                await write(b"[")
            seen: set[str] = set()
            while url is not None:
                try:
                    answer = await self.get(unseen_page(seen, url))
                except GitHubError as exc:
                    url = position.read_on(exc)
                    continue
                pages.append([url, answer.etag or ""])
                data = answer.json()
                if not paginated:
                    await write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
                    items = 1
                    break
                if not isinstance(data, list):
                    raise GitHubError(answer.status, f"expected a list from {url}")
                page_sizes.append(len(data))
                for item in data:
                    if position.written_before(item):
                        continue
                    await write(b",\n" if items else b"\n")
                    await write(orjson.dumps(item))
                    items += 1
                url = answer.next_url
            if paginated:
                await write(b"\n]\n")
        if any(not etag for _, etag in pages) or last_page_full(page_sizes):
            # Without every ETag, the next run cannot ask "changed?". After a full last page,
            # items added later go to a page no ETag covers while the kept ones answer 304.
            pages = []
        return Fetched(unchanged=False, pages=pages, size=size, md5=digest.digest(), items=items)

    async def download(self, url: str, out: Path) -> tuple[int, bytes]:
        """A release asset's bytes to ``out``: (size, md5).

        The API answers with a redirect to a storage host; that request is sent without the
        ``Authorization`` header (and without any of ours).
        """
        for attempt in range(1, self.max_attempts + 1):
            answer = await self.get(url, accept="application/octet-stream", save_to=out)
            location = answer.headers.get("location")
            try:
                if 300 <= answer.status < 400 and location:
                    return await self._stream(urljoin(url, location), out)
                if answer.status == 200 and answer.saved is not None:  # served by the API
                    return answer.saved
                raise GitHubError(answer.status, f"unexpected answer to an asset download ({url})")
            except ObjectError as exc:
                if not exc.retryable or attempt == self.max_attempts:
                    raise
                log.debug("retrying asset download %s after %s", url, exc)
                await self.sleep(self.backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def _stream(self, url: str, out: Path) -> tuple[int, bytes]:
        try:
            async with self.session.get(
                url, headers={"Accept": "application/octet-stream"}, proxy=self.proxy_for(url)
            ) as response:
                if response.status != 200:
                    await response.read()
                    raise GitHubError(
                        response.status,
                        "the asset's storage host refused the download",
                        retryable=response.status >= 500 or response.status == 429,
                    )
                return await _save_body(response, out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ObjectError(type(exc).__name__, detail, retryable=True) from exc


class ListPosition:
    """How far a list sorted by creation has been written, to read on past the depth GitHub
    pages it: a page past it answers 422 "pagination is limited for this resource" (some
    tens of thousands of a repository's comments: singer-io/tap-github#61). The list is then
    asked again from the last item written, with ``since`` its creation time (``since``
    filters by update time, and every item created later was updated at or after its
    creation); the items listed again, created up to it (and edited since), are skipped.
    ``first_url`` None: the list takes no ``since``, and the 422 stands."""

    def __init__(self, first_url: str | None) -> None:
        self.first_url = first_url
        self.last: tuple[str, int] | None = None  # (created_at, id) of the last item written
        self.skip: tuple[str, int] | None = None  # written up to here before a reading
        self.known = True  # every item written had its creation time and id

    def written_before(self, item: Any) -> bool:
        """Whether ``item`` was written by an earlier reading (and is left out now)."""
        created, ident = (
            (item.get("created_at"), item.get("id")) if isinstance(item, dict) else (None, None)
        )
        if not isinstance(created, str) or not isinstance(ident, int):
            self.known = False
            return False
        if self.skip is not None and (created, ident) <= self.skip:
            return True
        self.last = (created, ident)
        return False

    def read_on(self, exc: GitHubError) -> str:
        """The URL that reads on after ``exc`` ended a reading; ``exc`` itself, raised, when
        it is not the pagination cap, or nothing was written since the last reading."""
        capped = exc.status == 422 and "pagination is limited" in str(exc).lower()
        last = self.last
        if not capped or self.first_url is None or not self.known or last in (None, self.skip):
            raise exc
        assert last is not None
        parts = urlsplit(self.first_url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("page", "since")]
        url = parts._replace(query=urlencode([*query, ("since", last[0])])).geturl()
        log.info(
            "GitHub pages %s only so deep: reading on from the items created at %s",
            parts.path,
            last[0],
        )
        self.skip = last
        return url


def _advice(status: int, headers: Mapping[str, str]) -> str:
    """What GitHub's headers say to do about a refusal: the permission a fine-grained or app
    token lacks (``X-Accepted-GitHub-Permissions``, on a 403), or where to authorize it for
    an organisation's SAML SSO (``X-GitHub-SSO: required; url=...``)."""
    sso = _sso_advice(headers)
    needed = headers.get("x-accepted-github-permissions", "").strip()
    if sso or status != 403 or not needed:
        return sso
    return f"; the permissions GitHub names for it (a set, or sets split by ';'): {needed}"


def _sso_advice(headers: Mapping[str, str]) -> str:
    fields = [part.strip() for part in headers.get("x-github-sso", "").split(";")]
    if not fields or fields[0].lower() != "required":
        return ""
    for part in fields[1:]:
        if part.lower().startswith("url="):
            return f"; authorize the token for the organisation's SAML SSO at {part[4:]}"
    return "; authorize the token for the organisation's SAML SSO"


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """A response's body, refused (a ``GitHubError``) once it goes on past ``BODY_LIMIT``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > BODY_LIMIT:
            raise GitHubError(
                response.status,
                f"the answer to GET {response.url} goes on past {BODY_LIMIT:,} bytes; "
                "no page of the API is that long",
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _save_body(response: aiohttp.ClientResponse, out: Path) -> tuple[int, bytes]:
    """A response's body to ``out``, a chunk at a time: (size, md5)."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    async with open_for_writing(out) as handle:
        async for chunk in response.content.iter_chunked(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            await asyncio.to_thread(handle.write, chunk)
    return size, digest.digest()


def unseen_page(seen: set[str], url: str) -> str:
    """``url``, noted as a page of the list being read; a ``GitHubError`` when it is one
    read already: next links that loop (page 3 back to page 1) would read the list, and
    write it to its file, for ever."""
    if url in seen:
        raise GitHubError(200, f"the API's next links loop back to a page read already: {url}")
    seen.add(url)
    return url


def last_page_full(page_sizes: list[int]) -> bool:
    """Whether a list's last page held as many items as a page can (the first page's count
    when there are several: the server's page size)."""
    if not page_sizes or not page_sizes[-1]:
        return False
    full = page_sizes[0] if len(page_sizes) > 1 else PER_PAGE
    return page_sizes[-1] >= full


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default one when none is written) of ``url``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a port: an origin of its own, never the API's
        return scheme, parts.netloc, -1
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)
