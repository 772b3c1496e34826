"""Review: a hostile or badly broken S3-compatible server (or GitHub API server) must not take
down the machine running the backup, make it write outside its folders, or make it report
success.

The servers are loopback ones that answer as the test says: the scripted HTTP/1.1 server of
``test_fast_path_http_review`` for S3 (fast path and botocore alike), small ``aiohttp.web``
apps for GitHub. Bounds are asserted by a cap being hit or with ``tracemalloc``, never by
exhausting the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import BotoCoreError

from asyncbackup.config import grown_part_size
from asyncbackup.errors import FatalRunError, ObjectError
from asyncbackup.etags import multipart_parts
from asyncbackup.github.client import GitHubClient, GitHubError
from asyncbackup.github.listing import Lister, RepoFilter
from asyncbackup.github.ratelimit import PRIMARY_MAX_WAIT, RateGate
from asyncbackup.partfeed import ByteBudget
from asyncbackup.pipeline import WorkItem
from asyncbackup.retry import RetryPolicy
from asyncbackup.sinks.s3copy import ServerSideCopier
from asyncbackup.sources.s3 import S3Source
from asyncbackup.staging import Staging
from tests.github_server import FakeClock
from tests.integration.test_fast_path_http_review import (
    BUCKET,
    Request,
    Server,
    answer,
    fast_s3,
    get,
    serving,
)

TOKEN = "ghp_hostiletesttoken0123456789abcdefABCD"


def listing(entries: str, *, truncated: bool, token: str | None) -> bytes:
    next_token = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{BUCKET}</Name><Prefix>data/</Prefix><MaxKeys>1000</MaxKeys>"
        f"<EncodingType>url</EncodingType><IsTruncated>{str(truncated).lower()}</IsTruncated>"
        f"{next_token}{entries}</ListBucketResult>"
    ).encode()


def contents(key: str, size: int = 3, etag: str = '"abc"') -> str:
    return f"<Contents><Key>{key}</Key><Size>{size}</Size><ETag>{etag}</ETag></Contents>"


@contextlib.asynccontextmanager
async def s3_source(server: Server, *, fast: bool) -> AsyncIterator[S3Source]:
    """An ``S3Source`` of the scripted server's bucket, through the fast path or botocore."""
    async with fast_s3(server) as fast_path:
        source = S3Source(fast_path.client, BUCKET, RetryPolicy(2))
        source.fast = fast_path if fast else None
        yield source


def listing_server(
    page: Callable[[Request], bytes],
) -> Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]:
    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(answer(page(request), "content-type: application/xml"))
        await writer.drain()
        return True

    return handler


# -- S3: the listing --------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
async def test_a_continuation_token_that_never_changes_ends_the_listing(fast: bool) -> None:
    """A server that answers every page with the token it was sent (and the same keys) would
    be listed for ever: the run copying the same keys again and again, never done."""

    def page(request: Request) -> bytes:
        return listing(contents("data/a"), truncated=True, token="same-token")

    async with serving(listing_server(page)) as server, s3_source(server, fast=fast) as source:
        pages = 0
        with pytest.raises(FatalRunError, match="continuation token"):
            async with asyncio.timeout(20):
                async for _ in source.list("data/"):
                    pages += 1
                    assert pages < 50, "the listing went on, page after page of the same token"
    assert len(server.requests) <= 5


# -- GitHub -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def github_api(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[tuple[GitHubClient, str, list[web.Request]]]:
    """A loopback "API" answering with ``handler``, and a client of it (fake time: a pause
    passes at once, and is recorded in ``client.gate.waits``)."""
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    api = f"http://127.0.0.1:{port}/api"
    clock = FakeClock()
    try:
        async with aiohttp.ClientSession() as session:
            gate = RateGate(clock=clock, sleep=clock.sleep)
            client = GitHubClient(
                session, api, TOKEN, gate=gate, slots=asyncio.Semaphore(4), sleep=clock.sleep
            )
            yield client, api, seen
    finally:
        await runner.cleanup()


async def looping_pages(request: web.Request) -> web.Response:
    """Pages 1, 2, 3 of a list, page 3's next link back to page 1."""
    page = int(request.query.get("page", "1"))
    following = page % 3 + 1
    link = f'<{request.url.with_query(page=following, per_page=100)}>; rel="next"'
    items = [{"id": page * 100 + i, "title": f"item {i}"} for i in range(3)]
    return web.json_response(items, headers={"Link": link})


async def test_github_next_links_that_loop_end_the_reading(tmp_path: Path) -> None:
    """A server whose page 3 links back to page 1: the resource was written to its file
    for ever (the staging disk filled), and the repository list read for ever."""
    async with github_api(looping_pages) as (client, api, seen):
        out = tmp_path / "issues.json"
        with pytest.raises(GitHubError, match="loop"):
            async with asyncio.timeout(10):
                await client.fetch_to_file(f"{api}/items", out, previous=None, paginated=True)
        assert len(seen) <= 4
        assert out.stat().st_size < 10_000
        seen.clear()
        pages = 0
        with pytest.raises(GitHubError, match="loop"):
            async with asyncio.timeout(20):
                async for _ in client.pages("/items"):
                    pages += 1
                    assert pages < 50, "the pages went on, round and round"
        assert len(seen) <= 4


async def looping_repositories(request: web.Request) -> web.Response:
    """An organisation's repository list whose page 3 links back to page 1 (each repository
    with no release), or the releases of one of them, whose page 2 links back to page 1."""
    page = int(request.query.get("page", "1"))
    if request.path.endswith("/releases"):
        following = page % 2 + 1
        items: list[dict[str, Any]] = [
            {"id": page * 10 + i, "tag_name": f"v{page}.{i}", "assets": []} for i in range(2)
        ]
    else:
        following = page % 3 + 1
        items = [
            {
                "id": page * 100 + i,
                "name": f"r{page}-{i}",
                "full_name": f"acme/r{page}-{i}",
                "owner": {"login": "acme"},
            }
            for i in range(3)
        ]
    link = f'<{request.url.with_query(page=following, per_page=100)}>; rel="next"'
    return web.json_response(items, headers={"Link": link})


async def test_github_repository_and_release_lists_that_loop_end_the_listing() -> None:
    async with github_api(looping_repositories) as (client, _, seen):
        lister = Lister(
            client,
            repos_path="/orgs/acme/repos",
            repos_params={},
            repo_filter=RepoFilter(),
            wikis=False,
            previous_listing={},
            note=lambda *_: None,
        )
        with pytest.raises(GitHubError, match="loop"):
            async with asyncio.timeout(10):
                await lister._list_assets("acme", "r1-0")
        assert len(seen) <= 3
        with pytest.raises(GitHubError, match="loop"):
            async with asyncio.timeout(10):
                async for _ in lister.pages():
                    pass
        listed = [r for r in seen if r.path.endswith("/orgs/acme/repos")]
        assert len(listed) <= 4


@pytest.mark.parametrize("retry_after", ["1000000000", "inf", "-5"])
async def test_github_retry_after_far_away_is_no_pause_for_ever(retry_after: str) -> None:
    """A secondary limit's ``retry-after`` of 10^9 seconds paused every request for 31 years
    (one warning, then silence); a reset time far away is capped at an hour already."""
    answers = 0

    async def limited_once(request: web.Request) -> web.Response:
        nonlocal answers
        answers += 1
        if answers == 1:
            return web.json_response(
                {"message": "You have exceeded a secondary rate limit."},
                status=403,
                headers={"retry-after": retry_after},
            )
        return web.json_response({"id": 1})

    async with github_api(limited_once) as (client, _, _):
        assert await client.get_json("/repos/acme/alpha") == {"id": 1}
        waits = [seconds for _, seconds in client.gate.waits]
        assert waits and all(1.0 <= seconds <= PRIMARY_MAX_WAIT for seconds in waits)


# -- S3: sizes and part counts ----------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
async def test_an_etag_claiming_millions_of_parts_allocates_and_asks_nothing_per_part(
    fast: bool, tmp_path: Path
) -> None:
    """S3 makes at most 10,000 parts. An ETag ``<md5>-1000000000`` made the download's
    layout check allocate a list of 10^9 sizes (8 GB) and ask a HEAD ?partNumber= of each;
    10^7 here (80 MB) shows it without exhausting the machine."""
    body = bytes(range(256)) * 8192  # 2 MiB: staged through a file, its layout checked
    etag = f'"{hashlib.md5(body).hexdigest()}-10000000"'

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if "partNumber" in request.path:
            writer.write(answer(b"", status="501 Not Implemented"))
        else:
            writer.write(answer(body if request.method == "GET" else b"", f"etag: {etag}"))
        await writer.drain()
        return True

    async with serving(handler) as server, s3_source(server, fast=fast) as source:
        staging = Staging(tmp_path / "stage", BUCKET)
        staging.prepare()
        tracemalloc.start()
        try:
            fetched = await source.fetch(WorkItem("data/big", len(body), etag), staging)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert fetched.size == len(body)
    assert peak < 30 * 1024 * 1024, f"{peak / 2**20:.0f} MiB at the peak"
    assert not [r for r in server.requests if "partNumber" in r.path]


@pytest.mark.parametrize("count", ["0", "10001", "1000000000", "9" * 5000])
def test_no_part_count_s3_never_makes_is_taken_from_an_etag(count: str) -> None:
    assert multipart_parts(f'"{"0" * 32}-{count}"') is None
    assert multipart_parts(f'"{"0" * 32}-10000"') == 10_000


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
async def test_a_get_announcing_petabytes_makes_no_part_per_announced_byte(
    fast: bool, tmp_path: Path
) -> None:
    """A GET streamed to a multipart upload as it arrives was cut in parts by its announced
    Content-Length before any byte came: a future per part. 2^62 bytes in parts of 8 MiB
    was 5.5 * 10^11 of them (the machine out of memory); 200,000 parts here show it."""
    part_size = 8 * 1024 * 1024
    announced = part_size * 200_000
    etag = f'"{"0" * 32}"'

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        head = f"HTTP/1.1 200 OK\r\netag: {etag}\r\ncontent-length: {announced}\r\n\r\n"
        writer.write(head.encode() + b"abc")  # then the connection closes: a body cut short
        await writer.drain()
        return False

    async def upload(fetched: Any, feed: Any) -> None:
        await asyncio.Event().wait()  # until the download's failure cancels it

    async with serving(handler) as server, s3_source(server, fast=fast) as source:
        staging = Staging(tmp_path / "stage", BUCKET)
        staging.prepare()
        tracemalloc.start()
        try:
            with pytest.raises(ObjectError):
                await source.fetch_streamed(
                    WorkItem("data/big", 100 * 1024 * 1024, etag),
                    staging,
                    part_size=part_size,
                    source_part_size=None,
                    budget=ByteBudget(4 * part_size),
                    upload=upload,
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        gc.collect()  # a refused answer's connection left open warns here, not in a later test
    assert peak < 20 * 1024 * 1024, f"{peak / 2**20:.0f} MiB at the peak"


async def test_a_direct_copy_of_a_listed_size_past_any_multipart_upload_plans_no_parts() -> None:
    """``--direct`` cut an object into parts by its listed Size before any request: a listed
    Size of 10^20 was a list of 1.9 * 10^10 part sizes (the machine out of memory); 2.7 * 10^16
    here (5 * 10^6 parts) shows it. No multipart upload of S3's (10,000 parts of 5 GiB) can
    take more than 50 TiB: such an object fails, and nothing is asked of the server."""

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(answer(b"", status="500 Internal Server Error"))
        await writer.drain()
        return True

    async with serving(handler) as server, s3_source(server, fast=False) as source:
        copier = ServerSideCopier(
            source.client,
            source_bucket=BUCKET,
            dest_bucket="dest",
            retry=RetryPolicy(1),
            dest_key=lambda key: key,
            part_size_for=lambda size: grown_part_size(8 * 1024 * 1024, size),
            part_concurrency=2,
        )
        tracemalloc.start()
        try:
            with pytest.raises(ObjectError, match="EntityTooLarge") as failed:
                await copier.copy(WorkItem("data/huge", 5 * 2**30 * 5_000_000, '"abc"'))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert not failed.value.retryable
    assert peak < 10 * 1024 * 1024, f"{peak / 2**20:.0f} MiB at the peak"
    assert server.requests == []


# -- S3: headers ------------------------------------------------------------------------


async def test_a_huge_answer_head_is_refused_by_the_fast_path() -> None:
    """aiohttp (botocore's) refuses a header line over 8 KiB; the fast path took a head of
    any size, each header's pieces joined one by one (quadratic: a 1 GB header was minutes of
    CPU and its gigabyte held). 16 MiB here, read as the request's answer."""
    value = b"x" * (16 * 1024 * 1024)

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\netag: "abc"\r\nx-amz-meta-big: ')
        for start in range(0, len(value), 1 << 20):
            writer.write(value[start : start + (1 << 20)])
            await writer.drain()
        writer.write(b"\r\ncontent-length: 3\r\n\r\nabc")
        await writer.drain()
        return True

    async with serving(handler) as server, fast_s3(server) as fast:
        tracemalloc.start()
        try:
            with pytest.raises(BotoCoreError):
                await get(fast, "data/a")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.0f} MiB at the peak"


async def test_thousands_of_headers_and_far_off_dates_are_read_as_botocore_reads_them() -> None:
    """5,000 small headers (1 MiB in all would be refused: see above; these are 150 KiB), a
    Date years off and a Retry-After of 10^9 on an answer: read, not slept on."""
    headers = "".join(f"x-amz-meta-h{i}: v{i}\r\n" for i in range(5000))

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        head = (
            'HTTP/1.1 200 OK\r\netag: "900150983cd24fb0d6963f7d28e17f72"\r\n'
            "date: Mon, 01 Jan 1990 00:00:00 GMT\r\nretry-after: 1000000000\r\n"
            f"{headers}content-length: 3\r\n\r\nabc"
        )
        writer.write(head.encode())
        await writer.drain()
        return True

    async with serving(handler) as server, fast_s3(server) as fast:
        out, body = await get(fast, "data/a")
    assert body == b"abc" and len(out["Metadata"]) == 5000


# -- XML ----------------------------------------------------------------------------------

_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lollollollollollollollollollol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    + "]>"
)
HOSTILE_XML = {
    "billion-laughs": _LAUGHS.encode()
    + listing(contents("data/&lol9;"), truncated=False, token=None).split(b"?>", 1)[1],
    "external-entity": (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        + listing(contents("data/&xxe;"), truncated=False, token=None).split(b"?>", 1)[1]
    ),
    "external-dtd": (
        b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd">'
        + listing(contents("data/a"), truncated=False, token=None).split(b"?>", 1)[1]
    ),
    "deep-nesting": listing(
        contents("data/a") + "<x>" * 200_000 + "</x>" * 200_000, truncated=False, token=None
    ),
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
@pytest.mark.parametrize("kind", list(HOSTILE_XML))
async def test_hostile_xml_in_a_listing_expands_nothing_and_reads_no_local_file(
    kind: str, fast: bool
) -> None:
    """Entity bombs, external entities (a DOCTYPE naming /etc/passwd) and 200,000 nested
    elements in a ListObjectsV2 page: refused or read as plain text, never expanded, never
    a local file's content in a key or an error; memory stays small."""
    body = HOSTILE_XML[kind]

    def page(request: Request) -> bytes:
        return body

    passwd = Path("/etc/passwd").read_text()[:8]  # "root:x:0" on any Linux
    keys: list[str] = []
    tracemalloc.start()
    try:
        async with serving(listing_server(page)) as server, s3_source(server, fast=fast) as source:
            try:
                async with asyncio.timeout(30):
                    async for items in source.list("data/"):
                        keys.extend(item.key for item in items)
                failure = ""
            except (ObjectError, FatalRunError) as exc:
                failure = str(exc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert passwd not in failure and all(passwd not in key for key in keys)
    assert all(len(key) < 100 for key in keys), "an entity was expanded"
    assert kind in ("external-dtd", "deep-nesting") or failure  # refused outright
    assert peak < 64 * 1024 * 1024, f"{peak / 2**20:.0f} MiB at the peak"


async def test_a_listing_page_of_gigabytes_is_refused_by_the_fast_path_unparsed() -> None:
    """A ListObjectsV2 page asked for 1,000 keys is a few MB at most; the fast path read a
    body of any size whole and parsed it (a 2 GB page: tens of GB). 17 MiB of 4,400 keys of
    4 KiB here: refused, its parse never made."""
    entries = "".join(contents(f"data/{i:06d}-{'k' * 4000}") for i in range(4400))
    body = listing(entries, truncated=False, token=None)
    assert len(body) > 17 * 1024 * 1024

    def page(request: Request) -> bytes:
        return body

    async with serving(listing_server(page)) as server, s3_source(server, fast=True) as source:
        tracemalloc.start()
        try:
            with pytest.raises(ObjectError, match="InvalidResponse"):
                async for _ in source.list("data/"):
                    pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 48 * 1024 * 1024, f"{peak / 2**20:.0f} MiB at the peak"


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
async def test_continuation_tokens_that_cycle_end_the_listing(fast: bool) -> None:
    """Tokens A, B, C, then A again (the same keys with each): listed for ever, as with one
    token repeated."""

    def page(request: Request) -> bytes:
        sent = request.path.partition("continuation-token=")[2].partition("&")[0]
        following = {"": "A", "A": "B", "B": "C", "C": "A"}[sent]
        return listing(contents("data/a"), truncated=True, token=following)

    async with serving(listing_server(page)) as server, s3_source(server, fast=fast) as source:
        pages = 0
        with pytest.raises(FatalRunError, match="continuation token"):
            async with asyncio.timeout(20):
                async for _ in source.list("data/"):
                    pages += 1
                    assert pages < 50, "the listing went on, round and round"
    assert len(server.requests) <= 6


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
async def test_truncated_pages_without_a_token_or_progress_end_the_listing(fast: bool) -> None:
    def page(request: Request) -> bytes:
        return listing(contents("data/a"), truncated=True, token=None)

    async with serving(listing_server(page)) as server, s3_source(server, fast=fast) as source:
        with pytest.raises(FatalRunError, match="neither a continuation token"):
            async with asyncio.timeout(20):
                async for _ in source.list("data/"):
                    pass
    assert len(server.requests) <= 3


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
async def test_a_github_answer_past_the_body_limit_is_refused_as_it_comes(
    compressed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of 100 items is tens of MB at most; an answer of any size was read whole (a
    1 GB JSON body: a gigabyte, then its parse several more). The limit is lowered to 1 MiB
    here, the answer 4 MiB (gzip: 4 MiB from a few KiB, a decompression bomb)."""
    monkeypatch.setattr("asyncbackup.github.client.BODY_LIMIT", 1024 * 1024)
    body = b"[" + b",".join([b'{"id": 1}'] * 400_000) + b"]"

    async def huge(request: web.Request) -> web.StreamResponse:
        if compressed:
            return web.Response(
                body=gzip.compress(body),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)  # chunked: no Content-Length to refuse it by
        for start in range(0, len(body), 65536):
            await response.write(body[start : start + 65536])
        await response.write_eof()
        return response

    async with github_api(huge) as (client, _, seen):
        with pytest.raises(GitHubError, match="past"):
            await client.get_json("/repos/acme/alpha/issues")
    assert len(seen) == 1  # not retried


async def test_github_redirects_and_links_to_another_host_never_carry_the_token() -> None:
    """A redirect of an API request, or a next link, to another origin: refused, and the
    other host never sees the token."""
    elsewhere_seen: list[web.Request] = []

    async def elsewhere_handler(request: web.Request) -> web.Response:
        elsewhere_seen.append(request)
        return web.json_response([{"id": 9}])

    async with github_api(elsewhere_handler) as (_, elsewhere, _):

        async def pointing_away(request: web.Request) -> web.Response:
            if request.path.endswith("/redirected"):
                raise web.HTTPFound(f"{elsewhere}/steal")
            link = f'<{elsewhere}/steal?page=2>; rel="next"'
            return web.json_response([{"id": 1}], headers={"Link": link})

        async with github_api(pointing_away) as (client, _, seen):
            with pytest.raises(GitHubError, match="redirected away"):
                await client.get_json("/repos/acme/alpha/redirected")
            with pytest.raises(ObjectError, match="NotTheAPI"):
                async for _ in client.pages("/repos/acme/alpha/issues"):
                    pass
            assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in seen)
    assert elsewhere_seen == []


async def test_github_rate_limit_reset_far_away_is_waited_out_an_hour_at_most() -> None:
    answers = 0

    async def spent_once(request: web.Request) -> web.Response:
        nonlocal answers
        answers += 1
        if answers == 1:
            return web.json_response(
                {"message": "API rate limit exceeded"},
                status=403,
                headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "99999999999"},
            )
        return web.json_response({"id": 1})

    async with github_api(spent_once) as (client, _, _):
        assert await client.get_json("/repos/acme/alpha") == {"id": 1}
        waits = [seconds for _, seconds in client.gate.waits]
        assert waits and all(seconds <= PRIMARY_MAX_WAIT for seconds in waits)


@pytest.mark.parametrize(
    "length", ["-1", str(2**64), "18446744073709551616000", "1e3", "3, 4"], ids=str
)
async def test_a_content_length_no_server_sends_is_a_connection_error(length: str) -> None:
    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(
            f'HTTP/1.1 200 OK\r\netag: "abc"\r\ncontent-length: {length}\r\n\r\nabc'.encode()
        )
        await writer.drain()
        return False

    async with serving(handler) as server, fast_s3(server) as fast:
        with pytest.raises(BotoCoreError):
            await get(fast, "data/a")


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
async def test_a_get_longer_or_shorter_than_announced_is_never_staged_as_whole(
    fast: bool, tmp_path: Path
) -> None:
    """More bytes than Content-Length (the rest is no answer: the connection is dropped), or
    2^63 announced and 3 sent: never a copy taken as complete with other bytes."""
    body = b"abc"
    etag = f'"{hashlib.md5(body).hexdigest()}"'

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if request.path.endswith("/longer"):
            writer.write(answer(body, f"etag: {etag}") + b"and more bytes than announced")
        else:
            head = f"HTTP/1.1 200 OK\r\netag: {etag}\r\ncontent-length: {2**63}\r\n\r\n"
            writer.write(head.encode() + body)
        await writer.drain()
        return False

    async with serving(handler) as server, s3_source(server, fast=fast) as source:
        staging = Staging(tmp_path / "stage", BUCKET)
        staging.prepare()
        try:  # the fast path drops the rest; aiohttp (botocore) fails on it: either is right
            fetched = await source.fetch(WorkItem("data/longer", 3, etag), staging)
        except ObjectError:
            assert not fast
        else:
            assert fetched.size == 3 and fetched.path.read_bytes() == body
        with pytest.raises(ObjectError):
            await source.fetch(WorkItem("data/announced", 3, etag), staging)
        with pytest.raises(ObjectError):
            await source.fetch(WorkItem("data/announced", 2 * 1024 * 1024, etag), staging)


ESCAPING_KEYS = [
    "data/..%2F..%2F..%2Fescaped",
    "data/../../../escaped2",
    "data/a/..%2F..%2F..%2F..%2Fescaped3",
    "data/%00nul",
    "data//%2Fabsolute",
    "data/.",
    "data/..",
    "data/%2E%2E/%2E%2E/escaped4",
]


async def test_keys_the_fast_path_decodes_never_stage_outside_staging(tmp_path: Path) -> None:
    """Keys that climb out (``../`` plain and URL-encoded), a NUL, an absolute-looking path,
    as the fast path's own parser decodes them: each is staged under the staging folder,
    or refused, never written elsewhere."""
    body = b"abc"
    etag = f'"{hashlib.md5(body).hexdigest()}"'

    def page(request: Request) -> bytes:
        return listing(
            "".join(contents(key, 3, etag) for key in ESCAPING_KEYS), truncated=False, token=None
        )

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if "list-type=2" in request.path:
            writer.write(answer(page(request), "content-type: application/xml"))
        else:
            writer.write(answer(body, f"etag: {etag}"))
        await writer.drain()
        return True

    before = set(tmp_path.parent.iterdir())
    async with serving(handler) as server, s3_source(server, fast=True) as source:
        keys = [item.key async for items in source.list("data/") for item in items]
        assert "data/../../../escaped" in keys and "data/\0nul" in keys
        staging = Staging(tmp_path / "stage", BUCKET)
        staging.prepare()
        root = staging.root.resolve()
        for key in keys:
            try:
                fetched = await source.fetch(WorkItem(key, 3, etag), staging)
            except ObjectError:
                continue
            assert fetched.path.resolve().is_relative_to(root), key
    assert set(tmp_path.parent.iterdir()) == before
    assert not [p for p in tmp_path.rglob("escaped*") if not p.resolve().is_relative_to(root)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
async def test_a_small_object_whose_get_goes_on_unannounced_is_held_in_memory_no_further(
    fast: bool, tmp_path: Path
) -> None:
    """A small object (listed under 1 MiB) is received in memory; one grown past it is
    refused by its announced Content-Length, but a GET without one (chunked) that went on
    and on was held whole, without end for an answer that never ends. 8 MiB here."""
    body = b"x" * (8 * 1024 * 1024)
    etag = f'"{hashlib.md5(body).hexdigest()}"'

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(
            f"HTTP/1.1 200 OK\r\netag: {etag}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        )
        for start in range(0, len(body), 65536):
            writer.write(b"10000\r\n" + body[start : start + 65536] + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    async with serving(handler) as server, s3_source(server, fast=fast) as source:
        staging = Staging(tmp_path / "stage", BUCKET)
        staging.prepare()
        tracemalloc.start()
        try:
            with pytest.raises(ObjectError, match="ObjectChanged"):
                await source.fetch(WorkItem("data/small", 3, etag), staging)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 5 * 1024 * 1024, f"{peak / 2**20:.1f} MiB at the peak"


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "botocore"])
@pytest.mark.parametrize("retry_after", ["1000000000", "inf", "nan", "-5"])
async def test_an_s3_retry_after_far_away_is_waited_a_minute_at_most(
    retry_after: str, fast: bool
) -> None:
    slowdown = (
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )

    def page(request: Request) -> bytes:
        return listing(contents("data/a"), truncated=False, token=None)

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if len(server.requests) == 1:
            writer.write(answer(slowdown, f"retry-after: {retry_after}", status="503 Slow Down"))
        else:
            writer.write(answer(page(request), "content-type: application/xml"))
        await writer.drain()
        return True

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with serving(handler) as server, s3_source(server, fast=fast) as source:
        source.retry = RetryPolicy(3, sleep=sleep)
        keys = [item.key async for items in source.list("data/") for item in items]
    assert keys == ["data/a"]
    assert slept and all(0 <= seconds <= 60 for seconds in slept)
