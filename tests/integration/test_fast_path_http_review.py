"""Review of the fast path's own HTTP/1.1 client against a server that misbehaves.

``FastS3`` (``asyncbackup/fasts3``) is driven as the engine drives it, against a scripted
S3-like server on loopback that answers each request as the test says: cut, stalled, framed
by chunks or by closing, with interim answers, errors in a 200, stale keep-alive
connections. What is checked is what the engine would see: the bytes of a body (never another
answer's, never a truncated body taken as whole), the botocore exception a failure becomes,
which connections are kept, and that no connection or file descriptor is leaked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from asyncbackup.fasts3 import open_fast_s3
from asyncbackup.fasts3.client import USER_AGENT, FastS3
from asyncbackup.retry import classify
from tests.conftest import Buckets, S3Server
from tests.helpers import backup_data, open_test_client

pytestmark = pytest.mark.both_loops

BUCKET = "bkt"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    fast: bool  # sent by the fast path (not botocore)


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[Request] = field(default_factory=list)


#: ``handler(request, reader, writer, n)`` answers the n-th request of its connection; the
#: connection is kept while it returns True
Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for text in lines:
        name, value = text.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    method, target, _ = line.split(" ")
    try:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    fast = headers.get("user-agent") == USER_AGENT
    return Request(method, target, headers, body, fast)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server()
    tasks: set[asyncio.Task[None]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        server.connections += 1
        server.open_now += 1
        server.most_open = max(server.most_open, server.open_now)
        try:
            n = 0
            while (request := await _read_request(reader)) is not None:
                server.requests.append(request)
                if not await handler(request, reader, writer, n):
                    break
                n += 1
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client's, or the test ending (cancelled: the task ends quietly)
        finally:
            server.open_now -= 1
            writer.close()

    listening = await asyncio.start_server(connection, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def fast_s3(
    server: Server, *, connections: int = 1, read_timeout: float = 5
) -> AsyncIterator[FastS3]:
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, f"http://127.0.0.1:{server.port}")
        fast = await open_fast_s3(
            stack,
            client,
            BUCKET,
            connections=connections,
            connect_timeout=2,
            read_timeout=read_timeout,
        )
        assert fast is not None
        yield fast


def answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{line}\r\n" for line in (f"HTTP/1.1 {status}", *extra))
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


def etag_of(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'


def object_answer(body: bytes, *extra: str) -> bytes:
    return answer(body, f"etag: {etag_of(body)}", *extra)


async def get(fast: FastS3, key: str, amt: int = 65536) -> tuple[dict[str, Any], bytes]:
    out = await fast.get_object(Bucket=BUCKET, Key=key)
    parts = []
    async with out["Body"] as body:
        while chunk := await body.read(amt):
            parts.append(chunk)
    return out, b"".join(parts)


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST), not a clean FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def open_sockets() -> set[str]:
    """This process's sockets (uvloop keeps a spare ``/dev/null`` open once it has accepted
    a connection: not counted)."""
    found = set()
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (link := str(entry.readlink())).startswith("socket:"):
                found.add(link)
    return found


def client_connections(port: int) -> int:
    """This process's connections to ``port`` (the client's ends): what the pool's limit
    bounds. The server's own count lags, its end of a connection the client closed staying
    open until it reads again."""
    count = 0
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if not str(entry.readlink()).startswith("socket:"):
                continue
            with socket.fromfd(int(entry.name), socket.AF_INET, socket.SOCK_STREAM) as sock:
                peer = sock.getpeername()
                count += isinstance(peer, tuple) and peer[1] == port
    return count


async def settle(fast: FastS3) -> None:
    """Until the pool's aborted connections have run their ``connection_lost``."""
    pool = fast.pool
    for _ in range(100):
        if pool._open == len(pool._idle):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pool._open} connections open, {len(pool._idle)} idle")


async def test_a_get_cancelled_mid_body_never_leaves_its_bytes_for_the_next_request() -> None:
    """The classic integrity bug of a pool: a request given up mid-answer (its task
    cancelled, a timeout) whose connection goes back to the pool, so that the next request
    reads the rest of the old body as its answer. Cancelled while the body is still coming,
    timed out, or left with most of a fully sent body unread: each time the next GET on the
    one-connection pool gets its own object, on a new connection."""
    big = os.urandom(3 * 1024 * 1024)
    gate = asyncio.Event()

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        key = request.path.rsplit("/", 1)[1]
        if key == "trickle":  # the head and a first part, then nothing until the test ends
            writer.write(object_answer(big)[: 200 * 1024])
            await writer.drain()
            await gate.wait()
            return False
        if key == "whole":  # all of it, at once
            writer.write(object_answer(big))
        else:
            writer.write(object_answer(key.encode() * 3))
        await writer.drain()
        return True

    async def read_some_then_wait(key: str, started: asyncio.Event) -> None:
        out = await fast.get_object(Bucket=BUCKET, Key=key)
        async with out["Body"] as body:
            first = b""
            while len(first) < 65536:
                first += await body.read(65536 - len(first))
            assert first == big[:65536]
            started.set()
            if key == "trickle":
                await body.read()  # the rest, which never comes
            await asyncio.sleep(30)  # most of "whole" unread

    async with serving(handler) as server, fast_s3(server) as fast:
        for key in ("trickle", "whole"):
            started = asyncio.Event()
            task = asyncio.create_task(read_some_then_wait(key, started))
            await asyncio.wait(
                [task, asyncio.ensure_future(started.wait())],
                timeout=5,
                return_when=asyncio.FIRST_COMPLETED,
            )
            assert started.is_set()
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            out, data = await get(fast, f"after-{key}")
            assert data == f"after-{key}".encode() * 3
            assert out["ETag"] == etag_of(data)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await get(fast, "trickle")
        out, data = await get(fast, "small")
        assert data == b"smallsmallsmall" and out["ETag"] == etag_of(data)
        # each answer given up on closed its connection: a new one for the answer after
        assert server.connections == 4
        await settle(fast)
        assert fast.pool._open == 1
        gate.set()


async def test_a_kept_connection_closed_by_the_server_sends_the_put_again_whole() -> None:
    """A server that closes a kept connection as the next request arrives (its idle timeout
    racing the request): PutObject and UploadPart of a body in memory are sent again, once,
    on a new connection, with their whole body from its start (small, and large enough to be
    written in slices); a streamed PUT, which cannot be sent twice, fails as a dropped
    connection, retryable, never taken as stored."""
    bodies = [os.urandom(1000), os.urandom(3 * 1024 * 1024 + 17)]

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if n == 1:  # the second request of every connection: read, then dropped unanswered
            if request.path.endswith("rst"):
                reset(writer)
            return False
        writer.write(answer(b"", f"etag: {etag_of(request.body)}"))
        await writer.drain()
        return True

    async def stream(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    async with serving(handler) as server, fast_s3(server) as fast:
        for i, body in enumerate(bodies):
            for key in (f"warm-{i}", f"put-{i}", f"warm2-{i}", f"put-{i}-rst"):
                out = await fast.put_object(
                    Bucket=BUCKET, Key=key, Body=body, ContentMD5=md5_b64(body)
                )
                assert out["ETag"] == etag_of(body)
            out = await fast.upload_part(
                Bucket=BUCKET,
                Key="mpu",
                UploadId="u1",
                PartNumber=3,
                Body=body,
                ContentMD5=md5_b64(body),
            )
            assert out["ETag"] == etag_of(body)
        put_keys = [r.path.rsplit("/", 1)[1] for r in server.requests if r.method == "PUT"]
        # every dropped request was sent again at once, whole, with the same Content-MD5
        for request in server.requests:
            assert request.headers["content-md5"] == md5_b64(request.body)
            assert request.body in bodies
        assert put_keys.count("put-0") == put_keys.count("put-0-rst") == 2
        assert put_keys.count("put-1") == put_keys.count("put-1-rst") == 2
        # a connection answers its first request only: the next one goes on a doomed one
        await fast.put_object(Bucket=BUCKET, Key="warm", Body=b"x", ContentMD5=md5_b64(b"x"))
        assert len(fast.pool._idle) == 1
        params = {"Bucket": BUCKET, "Key": "streamed", "ContentMD5": md5_b64(bodies[0])}
        with pytest.raises(ConnectionClosedError) as caught:
            await fast.put_object_stream(params, len(bodies[0]), stream(bodies[0]))
        assert classify(caught.value).retryable
        assert [r.path for r in server.requests].count("/bkt/streamed") == 1  # not sent again
        assert fast.enabled  # a dropped connection is no reason to leave the fast path


async def test_get_bodies_framed_every_way_and_no_cut_one_taken_as_whole() -> None:
    """A GET's body framed by chunks, by the server closing, or by a length, arrives exact; a
    body cut short - fewer bytes than its length, a chunked body without its last chunk, a
    reset before the close that would end it, a server that stops sending - is an error the
    engine retries, never a complete (shorter) body; bytes past the length are not part of
    it, nor taken as the next answer."""
    data = os.urandom(300_000)
    tag = f"etag: {etag_of(data)}"

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        key = request.path.rsplit("/", 1)[1]
        head = f"HTTP/1.1 200 OK\r\n{tag}\r\n"
        keep = True
        if key == "chunked":
            pieces = [data[:1], data[1:70_000], data[70_000:]]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
            writer.write(f"{head}transfer-encoding: chunked\r\n\r\n".encode() + body)
        elif key == "chunked-cut":
            writer.write(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
            writer.write(b"%x\r\n%s\r\n" % (1000, data[:1000]))  # no last chunk: closed
            keep = False
        elif key == "close":
            writer.write(f"{head}connection: close\r\n\r\n".encode() + data)
            keep = False
        elif key in ("close-reset", "long-reset", "chunked-reset"):
            framing = {
                "close-reset": "connection: close",
                "long-reset": f"content-length: {len(data)}",
                "chunked-reset": "transfer-encoding: chunked",
            }[key]
            writer.write(f"{head}{framing}\r\n\r\n".encode())
            writer.write(b"3e8\r\n" + data[:1000] if "chunked" in key else data[:1000])
            await writer.drain()
            await asyncio.sleep(0.05)
            reset(writer)
            return False
        elif key == "long":  # a length, fewer bytes, then a clean close
            writer.write(f"{head}content-length: {len(data)}\r\n\r\n".encode() + data[:-1])
            keep = False
        elif key == "stall":  # a length, fewer bytes, then nothing
            writer.write(f"{head}content-length: {len(data)}\r\n\r\n".encode() + data[:1000])
            await writer.drain()
            await asyncio.sleep(2)
            keep = False
        elif key == "extra":  # bytes past its length, then a whole answer nobody asked for
            writer.write(answer(data, tag) + b"garbage")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(answer(b"unasked", 'etag: "0"'))
        else:
            writer.write(answer(data, tag))
        await writer.drain()
        return keep

    async with serving(handler) as server, fast_s3(server, read_timeout=0.5) as fast:
        for key in ("chunked", "close", "plain", "extra"):
            for amt in (-1, 7, 65536):
                out, body = await get(fast, key, amt)
                assert body == data, key
                assert out["ETag"] == etag_of(data)
                await asyncio.sleep(0.1)  # any bytes the server sends after it have arrived
        for key in ("chunked-cut", "close-reset", "long-reset", "chunked-reset", "long"):
            with pytest.raises(ResponseStreamingError) as caught:
                await get(fast, key)
            assert classify(caught.value).retryable, key
        with pytest.raises(ReadTimeoutError) as timed_out:
            await get(fast, "stall")
        assert classify(timed_out.value).retryable
        # no body but the ones asked for: "unasked" was never taken as an answer
        assert (await get(fast, "plain"))[1] == data
        await settle(fast)
        assert fast.pool._open == 1


async def test_interim_answers_content_encoding_and_connection_close() -> None:
    """``100 Continue`` and ``103 Early Hints`` before the answer are skipped (their headers
    are not the answer's); an object stored with ``Content-Encoding: gzip`` comes as its
    stored bytes, not decompressed, its encoding reported; ``Connection: close`` (or an
    HTTP/1.0 answer without keep-alive) is honoured even when the server leaves the
    connection open; a folded header (obsolete) is one value, its lines joined."""
    plain = b"hello, gzip " * 1000
    stored = gzip.compress(plain)

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        key = request.path.rsplit("/", 1)[1].split("?")[0]
        if key == "interim":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b'HTTP/1.1 103 Early Hints\r\nlink: </x>\r\netag: "wrong"\r\n\r\n')
            if request.method == "PUT":
                writer.write(answer(b"", f"etag: {etag_of(request.body)}"))
            else:
                writer.write(object_answer(b"interim"))
        elif key == "gzipped":
            writer.write(object_answer(stored, "content-encoding: gzip", "vary: accept-encoding"))
        elif key == "closing":
            writer.write(object_answer(b"closing", "connection: close"))
        elif key == "http10":
            writer.write(object_answer(b"http10").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        elif key == "folded":
            writer.write(object_answer(b"folded", "x-amz-meta-a: one", " two"))
        else:
            writer.write(object_answer(b"next"))
        await writer.drain()
        return True  # the connection is left open whatever the answer said

    async with serving(handler) as server, fast_s3(server) as fast:
        out, body = await get(fast, "interim")
        assert body == b"interim" and out["ETag"] == etag_of(b"interim")
        assert "link" not in out["ResponseMetadata"]["HTTPHeaders"]
        put = await fast.put_object(
            Bucket=BUCKET, Key="interim", Body=b"put body", ContentMD5=md5_b64(b"put body")
        )
        assert put["ETag"] == etag_of(b"put body")
        assert server.connections == 1  # kept across the interim answers
        out, body = await get(fast, "gzipped")
        assert body == stored and out["ContentEncoding"] == "gzip"
        assert server.requests[-1].headers["accept-encoding"] == "identity"
        for key in ("closing", "http10"):
            before = server.connections
            out, body = await get(fast, key)
            assert body == key.encode()
            assert (await get(fast, "next"))[1] == b"next"
            assert server.connections == before + 1  # not asked on the connection it closed
        out, body = await get(fast, "folded")  # as aiohttp reads it (leniently)
        assert body == b"folded" and out["Metadata"] == {"a": "one two"}
        assert (await get(fast, "next"))[1] == b"next"


def error_document(code: str, message: str = "m") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>r1</RequestId></Error>"
    ).encode()


async def test_errors_in_any_status_are_read_classified_and_never_taken_as_success() -> None:
    """A 5xx's XML error is read and raised as botocore's ``ClientError`` (its code,
    ``Retry-After``), its connection kept; a long HTML error page is cut at 64 KiB and its
    connection closed, the next request answered right; a 200 to CopyObject or PutObject
    whose body is an ``<Error>`` - after the whitespace S3 sends while a copy runs, in chunks
    - is that error, retryable; one cut before its document is a dropped connection; a
    redirect makes botocore repeat the request (and keeps the bucket there)."""
    html = b"<html><body>" + b"busy " * 40_000 + b"</body></html>"
    result = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult>'
        b"<LastModified>2026-01-02T03:04:05.000Z</LastModified><ETag>&quot;abc&quot;</ETag>"
        b"</CopyObjectResult>"
    )

    def chunked(*pieces: bytes) -> bytes:
        return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        key = request.path.rsplit("/", 1)[1]
        chunked_200 = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        if not request.fast:  # botocore, after a hand-back
            writer.write(object_answer(b"from botocore"))
        elif key == "slow-down":
            body = error_document("SlowDown", "Please reduce your request rate.")
            writer.write(answer(body, "retry-after: 3", status="503 Slow Down"))
        elif key == "html":
            writer.write(answer(html, "content-type: text/html", status="502 Bad Gateway"))
        elif key == "missing":
            writer.write(answer(error_document("NoSuchKey"), status="404 Not Found"))
        elif key in ("copy-error", "copy-ok", "copy-cut"):
            writer.write(chunked_200)
            writer.write(chunked(b'<?xml version="1.0" encoding="UTF-8"?>\n'))
            for _ in range(3):  # S3's keep-alive while the copy runs
                await asyncio.sleep(0.02)
                writer.write(chunked(b" "))
            if key == "copy-cut":
                await writer.drain()
                return False
            document = result if key == "copy-ok" else error_document("InternalError")
            writer.write(chunked(document[38:]) + b"0\r\n\r\n")
        elif key == "put-error":
            writer.write(answer(error_document("InternalError"), 'etag: "abc"'))
        elif key == "moved":
            writer.write(
                answer(error_document("TemporaryRedirect"), "location: /x", status="307 Moved")
            )
        else:
            writer.write(object_answer(b"fine"))
        await writer.drain()
        return True

    async def failure(call: Awaitable[Any]) -> tuple[str, int, bool]:
        with pytest.raises(ClientError) as caught:
            await call
        response = caught.value.response
        status = response["ResponseMetadata"]["HTTPStatusCode"]
        return response["Error"]["Code"], status, classify(caught.value).retryable

    def copy(key: str) -> Awaitable[dict[str, Any]]:
        return fast.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": "s"})

    async with serving(handler) as server, fast_s3(server) as fast:
        with pytest.raises(ClientError) as caught:
            await get(fast, "slow-down")
        assert caught.value.response["Error"]["Code"] == "SlowDown"
        assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"
        assert await failure(get(fast, "missing")) == ("NoSuchKey", 404, False)
        assert server.connections == 1  # error documents read whole: the connection kept
        assert await failure(get(fast, "html")) == ("502", 502, True)
        assert (await get(fast, "fine"))[1] == b"fine"
        assert server.connections == 2  # the page was not read to its end: closed
        assert await failure(copy("copy-error")) == ("InternalError", 500, True)
        copied = await copy("copy-ok")
        assert copied["CopyObjectResult"]["ETag"] == '"abc"'
        with pytest.raises(ConnectionClosedError):
            await copy("copy-cut")
        put = fast.put_object(Bucket=BUCKET, Key="put-error", Body=b"x", ContentMD5=md5_b64(b"x"))
        assert await failure(put) == ("InternalError", 500, True)
        out = await fast.get_object(Bucket=BUCKET, Key="moved")
        async with out["Body"] as body:
            assert await body.read() == b"from botocore"
        assert not fast.enabled


async def test_the_pool_keeps_its_limit_and_leaks_no_connection_on_any_failure() -> None:
    """Many requests at once never open more connections than the pool's size, and each
    gets its own body; after every kind of failure (cut, reset, garbage, a timeout, a
    cancel, a server closing idle connections) the pool's count is right and the process
    holds no more file descriptors than before."""
    bodies = {f"k{i}": os.urandom(1000 + i) for i in range(40)}

    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        key = request.path.rsplit("/", 1)[1]
        most_open.append(client_connections(server.port))
        if key == "cut":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
            await writer.drain()
            return False
        if key == "reset":
            reset(writer)
            return False
        if key == "garbage":
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        elif key == "stall":
            await asyncio.sleep(1)
            return False
        elif key == "idle-close":  # answered, then the server closes the kept connection
            writer.write(object_answer(b"bye"))
            await writer.drain()
            await asyncio.sleep(0.05)
            return False
        else:
            await asyncio.sleep(0.01)
            writer.write(object_answer(bodies[key]))
        await writer.drain()
        return True

    async def failing(key: str) -> None:
        failures = (ClientError, ConnectionClosedError, ResponseStreamingError, ReadTimeoutError)
        with contextlib.suppress(*failures, TimeoutError):
            async with asyncio.timeout(2):
                await get(fast, key)

    most_open: list[int] = []
    sockets = open_sockets()
    async with serving(handler) as server:
        async with fast_s3(server, connections=4, read_timeout=0.3) as fast:
            for _ in range(2):
                results = await asyncio.gather(*(get(fast, key) for key in bodies))
                assert [data for _, data in results] == list(bodies.values())
            assert max(most_open) == 4
            for _ in range(3):
                keys = ["cut", "reset", "garbage", "stall", "idle-close", "k0", "k1", "k2"]
                await asyncio.gather(*(failing(key) for key in keys))
                cancelled = asyncio.ensure_future(get(fast, "stall"))
                await asyncio.sleep(0.1)
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
            await asyncio.sleep(0.1)  # the idle connections' closes read
            await settle(fast)
            assert fast.pool._open == len(fast.pool._idle) <= 4
            results = await asyncio.gather(*(get(fast, key) for key in bodies))
            assert [data for _, data in results] == list(bodies.values())
            assert max(most_open) == 4
            assert client_connections(server.port) == fast.pool._open
        assert client_connections(server.port) == 0
    await asyncio.sleep(0.05)  # the server's transports closed
    assert open_sockets() == sockets


async def test_header_values_botocore_reads_are_read_alike(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A header value with control characters (an object's metadata, stored as sent: moto
    keeps ``\\x01`` and DEL) is read by botocore, whose aiohttp parses answers leniently; the
    fast path refused the whole answer as not HTTP, on every attempt (a dropped connection,
    retried): the object failed where ``--no-fast-path`` copied it. A NUL is refused by
    both."""
    metadata = {"ctl": "a\x01b\x7fc", "tab": "a\tb"}
    s3.put_object(Bucket=buckets.source, Key="data/odd", Body=b"odd", Metadata=metadata)
    report = await backup_data(buckets, tmp_path, s3_server.endpoint, max_attempts=2)
    assert report.exit_code == 0 and report.copied_files == 1, report.errors
    assert s3.head_object(Bucket=buckets.dest, Key="data/odd")["Metadata"] == metadata
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, s3_server.endpoint)
        fast = await open_fast_s3(
            stack, client, buckets.source, connections=1, connect_timeout=2, read_timeout=5
        )
        assert fast is not None
        by_botocore = await client.get_object(Bucket=buckets.source, Key="data/odd")
        async with by_botocore["Body"]:
            pass
        out = await fast.get_object(Bucket=buckets.source, Key="data/odd")
        async with out["Body"] as body:
            assert await body.read() == b"odd"
        assert out["Metadata"] == by_botocore["Metadata"] == metadata
        assert fast.fast_requests == 1


async def test_a_nul_in_a_header_value_is_refused() -> None:
    async def handler(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(object_answer(b"nul", "x-amz-meta-a: a\x00b"))
        await writer.drain()
        return True

    async with serving(handler) as server, fast_s3(server) as fast:
        with pytest.raises(ConnectionClosedError):
            await get(fast, "nul")


async def test_a_put_cancelled_mid_body_never_lends_its_connection_to_the_next() -> None:
    """A PUT cancelled while its body is still going out (the server reads it slowly): had
    its connection gone back to the pool, the server would take the next request's bytes as
    the rest of that body. The next PUT goes whole on a new connection, and no request the
    server read holds bytes of another."""
    big = os.urandom(8 * 1024 * 1024)
    small = b"small body"
    received: list[tuple[str, bytes]] = []  # whole requests, as the server read them
    connections = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        done = asyncio.Event()
        ended.append(done)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                path = head.split(" ")[1]
                length = int(head.lower().split("content-length: ")[1].split("\r\n")[0])
                body = b""
                while len(body) < length:  # "big" in a trickle: the client's writes back up
                    piece = await reader.read(min(16384, length - len(body)))
                    if not piece:
                        raise asyncio.IncompleteReadError(body, length)
                    body += piece
                    if path.endswith("/big") and len(body) < 1024 * 1024:
                        await asyncio.sleep(0.01)
                received.append((path, body))
                writer.write(answer(b"", f"etag: {etag_of(body)}"))
                await writer.drain()
        writer.close()
        done.set()

    ended: list[asyncio.Event] = []
    listening = await asyncio.start_server(connection, "127.0.0.1", 0)
    async with listening:
        server = Server(port=listening.sockets[0].getsockname()[1])
        async with fast_s3(server) as fast:
            task = asyncio.create_task(
                fast.put_object(Bucket=BUCKET, Key="big", Body=big, ContentMD5=md5_b64(big))
            )
            await asyncio.sleep(0.3)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            out = await fast.put_object(
                Bucket=BUCKET, Key="small", Body=small, ContentMD5=md5_b64(small)
            )
            assert out["ETag"] == etag_of(small)
            await asyncio.sleep(0.05)
            assert received == [("/bkt/small", small)]
            assert connections == 2
            await settle(fast)
            assert fast.pool._open == 1
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ended)), 2)
