"""The GitHub API client against a loopback GitHub: pagination, ETags, rate limits, assets."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from asyncbackup.github.client import GitHubClient, GitHubError
from asyncbackup.github.ratelimit import RateGate
from tests.github_server import FakeClock, FakeGitHub, FakeRepo

TOKEN = "ghp_apitesttoken0123456789abcdefABCDEF"


@pytest.fixture
async def github(tmp_path: Path) -> AsyncIterator[FakeGitHub]:
    server = FakeGitHub(tmp_path / "git", token=TOKEN, clock=FakeClock())
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_client(
    github: FakeGitHub,
    session: aiohttp.ClientSession,
    token: str = TOKEN,
    clock: Callable[[], float] | None = None,
) -> GitHubClient:
    gate = RateGate(clock=clock or github.clock, sleep=github.clock.sleep)
    return GitHubClient(
        session,
        github.api_url,
        token,
        gate=gate,
        slots=asyncio.Semaphore(4),
        max_attempts=3,
        sleep=github.clock.sleep,
    )


def with_issues(github: FakeGitHub, count: int) -> FakeRepo:
    repo = github.add_repo(FakeRepo("alpha"))
    repo.issues = [{"number": i, "title": f"issue {i}"} for i in range(1, count + 1)]
    return repo


async def test_pages_follow_link_headers_100_at_a_time(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with_issues(github, 230)
    client = make_client(github, session)
    url = client.url("/repos/acme/alpha/issues", {"state": "all", "per_page": 100})
    out = tmp_path / "issues.json"
    fetched = await client.fetch_to_file(url, out, previous=None, paginated=True)
    numbers = [issue["number"] for issue in orjson.loads(out.read_bytes())]
    assert numbers == list(range(1, 231))
    assert fetched.items == 230 and fetched.size == out.stat().st_size
    assert len(fetched.pages) == 3 and all(etag for _, etag in fetched.pages)
    queries = [s.query for s in github.api_requests("/issues")]
    assert all("per_page=100" in q for q in queries) and len(queries) == 3


async def test_conditional_requests_answer_304_and_spend_no_quota(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    repo = with_issues(github, 150)
    client = make_client(github, session)
    url = client.url("/repos/acme/alpha/issues", {"per_page": 100})
    first = await client.fetch_to_file(url, tmp_path / "a.json", previous=None, paginated=True)
    quota = github.remaining
    again = await client.fetch_to_file(
        url, tmp_path / "b.json", previous=first.pages, paginated=True
    )
    assert again.unchanged
    assert not (tmp_path / "b.json").exists()
    assert github.remaining == quota  # two 304 answers, no quota spent
    assert [s.status for s in github.seen[-2:]] == [304, 304]
    assert all(s.if_none_match for s in github.seen[-2:])

    repo.issues[120]["title"] = "edited"  # the second page changes
    changed = await client.fetch_to_file(
        url, tmp_path / "c.json", previous=first.pages, paginated=True
    )
    assert not changed.unchanged
    titles = [i["title"] for i in orjson.loads((tmp_path / "c.json").read_bytes())]
    assert titles[120] == "edited" and len(titles) == 150
    assert changed.pages[1][1] != first.pages[1][1]


async def test_a_list_with_a_full_last_page_is_read_again_when_it_grows(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # 200 issues: two full pages. Issue 201 goes on a third page, which no ETag covers,
    # while the two pages kept answer 304: unchanged ETags must not hide it.
    repo = with_issues(github, 200)
    client = make_client(github, session)
    url = client.url("/repos/acme/alpha/issues", {"per_page": 100})
    first = await client.fetch_to_file(url, tmp_path / "a.json", previous=None, paginated=True)
    repo.issues.append({"number": 201, "title": "issue 201"})
    again = await client.fetch_to_file(
        url, tmp_path / "b.json", previous=first.pages, paginated=True
    )
    assert not again.unchanged
    numbers = [i["number"] for i in orjson.loads((tmp_path / "b.json").read_bytes())]
    assert numbers == list(range(1, 202))


async def test_primary_limit_waits_for_the_reset(
    github: FakeGitHub, session: aiohttp.ClientSession
) -> None:
    with_issues(github, 450)
    github.limit = github.remaining = 2
    reset_in = github.reset_at - github.clock.now
    client = make_client(github, session)
    pages = [page async for page in client.pages("/repos/acme/alpha/issues")]
    assert sum(len(p) for p in pages) == 450
    # five pages on a budget of two a window: two waits of about an hour each, none real
    waits = [w for reason, w in client.gate.waits if reason.startswith("primary")]
    assert len(waits) == 2
    assert waits[0] == pytest.approx(reset_in + 1, abs=1)
    assert sum(github.clock.sleeps) >= 2 * 3600
    refused = [s for s in github.seen if s.status == 403]
    assert len(refused) <= 2  # the gate waits before asking again once it saw remaining=0


async def test_primary_limit_with_our_clock_five_minutes_ahead(
    github: FakeGitHub, session: aiohttp.ClientSession
) -> None:
    """Our clock runs 5 minutes ahead of GitHub's: the reset is still waited for in full
    (measured from the answers' Date), not taken as already past."""
    with_issues(github, 250)
    github.limit = github.remaining = 2
    reset_in = github.reset_at - github.clock.now
    client = make_client(github, session, clock=lambda: github.clock.now + 300)
    pages = [page async for page in client.pages("/repos/acme/alpha/issues")]
    assert sum(len(p) for p in pages) == 250
    waits = [w for reason, w in client.gate.waits if reason.startswith("primary")]
    assert waits and waits[0] == pytest.approx(reset_in + 1, abs=1)
    refused = [s for s in github.seen if s.status == 403]
    assert len(refused) <= 1  # not one refusal after another while our clock says "past"


async def test_secondary_limit_honours_retry_after_then_backs_off_exponentially(
    github: FakeGitHub, session: aiohttp.ClientSession
) -> None:
    with_issues(github, 5)
    github.secondary["/api/repos/acme/alpha/issues"] = [7, None, None]
    client = make_client(github, session)
    pages = [page async for page in client.pages("/repos/acme/alpha/issues")]
    assert len(pages[0]) == 5
    # still limited after a retry-after wait: 60 s doubled per consecutive refusal
    assert [round(s) for s in github.clock.sleeps] == [7, 120, 240]
    assert [w for _, w in client.gate.waits] == [7, 120, 240]


async def test_asset_redirect_is_followed_without_the_token(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    repo = github.add_repo(FakeRepo("alpha"))
    github.add_release(repo, "v1.0", {"tool.tar.gz": b"\x00binary" * 1000})
    asset = repo.releases[0]["assets"][0]
    client = make_client(github, session)
    size, md5 = await client.download(asset["url"], tmp_path / "asset")
    assert (tmp_path / "asset").read_bytes() == b"\x00binary" * 1000
    assert size == 7000 and md5 == hashlib.md5(b"\x00binary" * 1000).digest()
    assert github.storage_auth == [None]  # the storage host never saw the token
    assert github.seen[-1].authorization == f"Bearer {TOKEN}"


async def test_an_asset_the_api_serves_itself_is_streamed_to_the_file(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A server that answers the asset with 200 instead of a redirect (GitHub Enterprise
    can): the bytes go to the file a chunk at a time, never whole in memory."""
    data = os.urandom(48 * 1024 * 1024)
    repo = github.add_repo(FakeRepo("alpha"))
    github.add_release(repo, "v1.0", {"big.iso": data})
    github.assets_direct = True
    asset = repo.releases[0]["assets"][0]
    client = make_client(github, session)
    tracemalloc.start()
    try:
        size, md5 = await client.download(asset["url"], tmp_path / "asset")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == len(data) and md5 == hashlib.md5(data).digest()
    assert (tmp_path / "asset").read_bytes() == data
    assert peak < 16 * 1024 * 1024, f"{peak / 2**20:.0f} MiB allocated at once"
    assert github.storage_auth == []  # no redirect was involved


async def test_errors_carry_the_status(github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    github.add_repo(FakeRepo("dmca", status=451))
    client = make_client(github, session)
    with pytest.raises(GitHubError) as caught:
        await client.get_json("/repos/acme/dmca")
    assert caught.value.status == 451 and caught.value.code == "UnavailableForLegalReasons"
    with pytest.raises(GitHubError) as refused:
        await make_client(github, session, token="wrong").get_json("/user")
    assert refused.value.status == 401
    assert "wrong" not in str(refused.value)


async def test_an_html_error_page_is_reported_as_its_status_not_as_markup(
    github: FakeGitHub, session: aiohttp.ClientSession
) -> None:
    page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>\n"

    async def gateway(request: web.Request) -> web.StreamResponse | None:
        return web.Response(status=502, text=page, content_type="text/html")

    github.hooks.append(gateway)  # GitHub Enterprise Server behind a proxy that is down
    client = make_client(github, session)
    with pytest.raises(GitHubError) as caught:
        await client.get_json("/repos/acme/alpha")
    url = client.url("/repos/acme/alpha")
    assert str(caught.value) == f"HTTP502: Bad Gateway (GET {url})"


async def test_a_copy_cancelled_while_its_file_opens_leaves_no_file_open(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with_issues(github, 5)
    client = make_client(github, session)
    out = tmp_path / "fifo"
    os.mkfifo(out)  # opening it to write blocks (in a worker thread) until a reader comes
    url = client.url("/repos/acme/alpha/issues", {"per_page": 100})
    task = asyncio.create_task(client.fetch_to_file(url, out, previous=None, paginated=True))
    await asyncio.sleep(0.2)
    task.cancel()  # a stop, a second Ctrl-C: while the file is being opened
    with pytest.raises(asyncio.CancelledError):
        await task
    reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)  # the thread's open() returns now
    try:
        deadline = time.monotonic() + 10
        while True:  # the file it opened is closed by us, not left to the garbage collector
            try:
                assert os.read(reader, 1) == b""  # end of file: no writer holds it open
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the writer end is still open"
                await asyncio.sleep(0.01)
    finally:
        os.close(reader)
    gc.collect()  # an unclosed file would be reported (as an error) by pytest here
