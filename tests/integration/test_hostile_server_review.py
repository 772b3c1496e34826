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
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from asyncbackup.errors import FatalRunError
from asyncbackup.retry import RetryPolicy
from asyncbackup.sources.s3 import S3Source
from tests.integration.test_fast_path_http_review import (
    BUCKET,
    Request,
    Server,
    answer,
    fast_s3,
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
