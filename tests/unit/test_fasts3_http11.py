"""The fast path's HTTP/1.1 pool against a real server on loopback, scripted per test: answer
framing (length, chunked, closed), keep-alive, the pool's limit, flow control, timeouts, a
failing request body, a kept connection the server has closed, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from asyncbackup.fasts3 import http11

pytestmark = pytest.mark.both_loops


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    port: int
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[Request] = field(default_factory=list)


Handler = Callable[[Request, asyncio.StreamWriter, int], Awaitable[bool]]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for text in lines:
        name, value = text.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    try:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None  # the client gave up on its request
    return Request(line, headers, body)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    """A server calling ``handler(request, writer, n)`` for the n-th request of each
    connection; the connection is kept while it returns True."""
    server = Server(port=0)
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
            while (request := await read_request(reader)) is not None:
                server.requests.append(request)
                if not await handler(request, writer, n):
                    break
                n += 1
        except ConnectionError:
            pass
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


def pool(
    server: Server, *, limit: int = 8, read_timeout: float = 5.0, keepalive: float = 15.0
) -> http11.Pool:
    return http11.Pool(
        "127.0.0.1",
        server.port,
        tls=None,
        limit=limit,
        keepalive=keepalive,
        connect_timeout=5,
        read_timeout=read_timeout,
    )


def answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{line}\r\n" for line in (f"HTTP/1.1 {status}", *extra))
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


async def get(p: http11.Pool, path: str = "/k", amt: int = -1) -> tuple[int, bytes]:
    response = await p.request("GET", path, {"host": "h"})
    try:
        parts = []
        while chunk := await response.read(amt):
            parts.append(chunk)
        return response.status, b"".join(parts)
    finally:
        response.release()


async def test_connections_are_kept_and_answers_framed_by_length_chunks_or_close() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        if request.line.startswith("GET /chunked"):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        elif request.line.startswith("GET /closed"):
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
            await writer.drain()
            return False
        elif request.line.startswith("GET /continue"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"after 100"))
        else:
            writer.write(answer(f"{request.line} #{n}".encode(), "x-amz-meta-Name: V"))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server) as p:
        assert await get(p) == (200, b"GET /k HTTP/1.1 #0")
        assert await get(p, "/chunked") == (200, b"hello world")
        assert await get(p, "/continue") == (200, b"after 100")
        assert await get(p, "/x") == (200, b"GET /x HTTP/1.1 #3")
        assert server.connections == 1
        assert await get(p, "/closed") == (200, b"until the end")
        assert await get(p) == (200, b"GET /k HTTP/1.1 #0")  # a new connection
        assert server.connections == 2
        response = await p.request("GET", "/k", {"host": "h"})
        assert ("x-amz-meta-Name", "V") in response.headers  # as received
        response.release()
    assert server.requests[0].headers["host"] == "h"


async def test_header_values_are_read_as_utf8_and_other_bytes_as_latin1() -> None:
    utf8 = 'attachment; filename="\u00e9\u20ac.txt"'.encode()

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        head = b"HTTP/1.1 200 OK\r\ncontent-disposition: " + utf8
        writer.write(head + b"\r\nx-amz-meta-a: \xe9t\xe9\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server) as p:
        response = await p.request("GET", "/k", {"host": "h"})
        response.release()
    # as aiobotocore reads them: the text whose UTF-8 botocore sends again is the same bytes
    assert ("content-disposition", utf8.decode()) in response.headers
    assert ("x-amz-meta-a", "\u00e9t\u00e9") in response.headers  # not UTF-8: a byte a char


async def test_a_header_value_is_refused_for_a_nul_byte_and_for_no_other() -> None:
    """Every byte value in a header (lenient parsing passes control characters on): the
    answer is refused for a NUL, wherever it stands, and read for any other byte."""
    values = [b"a" + bytes([byte]) + b"b" for byte in range(1, 256) if byte not in b"\r\n"]
    values += [b"\x00", b"\x00ab", b"ab\x00", b"a\x00b"]

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        value = values[int(request.line.split()[1].lstrip("/"))]
        writer.write(
            b"HTTP/1.1 200 OK\r\nx-amz-meta-v: " + value + b"\r\ncontent-length: 0\r\n\r\n"
        )
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server) as p:
        for index, value in enumerate(values):
            if 0 in value:
                with pytest.raises(http11.BadResponse, match="NUL"):
                    await p.request("GET", f"/{index}", {"host": "h"})
            else:
                response = await p.request("GET", f"/{index}", {"host": "h"})
                response.release()
                assert response.headers[0][0] == "x-amz-meta-v"


async def test_bodies_are_sent_whole_with_their_length() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b"", f"x-got: {len(request.body)}"))
        await writer.drain()
        return True

    big = os.urandom(3 * 1024 * 1024 + 5)

    async def pieces() -> AsyncIterator[bytes]:
        yield big[:1000]
        yield big[1000:]

    async with serving(handler) as server, pool(server) as p:
        for body in (b"small", big, bytearray(big), None):
            response = await p.request("PUT", "/k", {"host": "h"}, body)
            assert response.status == 200
            assert await response.read() == b""
            response.release()
        response = await p.request(
            "PUT", "/k", {"host": "h", "content-length": str(len(big))}, pieces()
        )
        response.release()
    assert [r.body for r in server.requests] == [b"small", big, big, b"", big]
    assert server.requests[3].headers["content-length"] == "0"
    assert server.connections == 1


async def test_a_failing_or_short_body_raises_and_the_connection_is_dropped() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b"ok"))
        await writer.drain()
        return True

    failure = OSError("the staged file went away")

    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * 10
        raise failure

    async def short() -> AsyncIterator[bytes]:
        yield b"x" * 10

    async with serving(handler) as server, pool(server, limit=1) as p:
        with pytest.raises(http11.BodyError) as raised:
            await p.request("PUT", "/k", {"host": "h", "content-length": "20"}, failing())
        assert raised.value.__cause__ is failure
        with pytest.raises(http11.BodyError, match="10 of its 20 bytes"):
            await p.request("PUT", "/k", {"host": "h", "content-length": "20"}, short())
        assert await get(p) == (200, b"ok")  # the one slot is free again
    assert server.connections == 3
    assert len(server.requests) == 1  # neither half-sent request reached the server whole


async def test_at_most_limit_connections_are_open() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.02)
        writer.write(answer(request.line.encode()))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server, limit=3) as p:
        results = await asyncio.gather(*(get(p, f"/{i}") for i in range(20)))
    assert [body for _, body in results] == [f"GET /{i} HTTP/1.1".encode() for i in range(20)]
    assert server.most_open == 3 and server.connections == 3


async def test_a_large_answer_is_read_in_pieces_with_reading_paused() -> None:
    data = os.urandom(16 * 1024 * 1024)

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(data))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server) as p:
        response = await p.request("GET", "/big", {"host": "h"})
        connection = response._connection
        assert connection is not None
        parts, most_buffered = [], 0
        while chunk := await response.read(256 * 1024):
            assert len(chunk) <= 256 * 1024
            parts.append(chunk)
            most_buffered = max(most_buffered, connection.buffered)
            await asyncio.sleep(0)  # a slow reader: the server is faster
        response.release()
        assert b"".join(parts) == data
        # the socket is not read while more than the high water waits (plus what one read
        # of the socket brings)
        assert most_buffered < 2 * 1024 * 1024
        assert await get(p, "/again") == (200, data)
        assert server.connections == 1


async def test_a_kept_connection_the_server_closes_unanswered_is_replaced_once() -> None:
    """A server's idle timeout closing a kept connection as a request goes out on it: a
    request that can be sent again is, once, on a new connection; a streamed one cannot."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            return False  # the second request of a connection: closed, not answered
        writer.write(answer(b"ok"))
        await writer.drain()
        return True

    async def streamed() -> AsyncIterator[bytes]:
        yield b"abc"

    async with serving(handler) as server, pool(server, limit=1) as p:
        assert await get(p) == (200, b"ok")
        assert await get(p) == (200, b"ok")
        response = await p.request("PUT", "/k", {"host": "h"}, b"abc")
        assert response.status == 200
        response.release()
        assert server.connections == 3
        with pytest.raises(http11.Disconnected):
            await p.request("PUT", "/k", {"host": "h", "content-length": "3"}, streamed())
    assert len(server.requests) == 6


async def test_a_reset_mid_answer_raises_and_the_connection_is_not_reused() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        if request.line.startswith("GET /cut"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
            await writer.drain()
            return False
        if request.line.startswith("GET /garbage"):
            writer.write(b"SMTP ready\r\n\r\n")
        else:
            writer.write(answer(b"ok"))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server) as p:
        with pytest.raises(http11.Disconnected):
            await get(p, "/cut")
        assert await get(p) == (200, b"ok")
        with pytest.raises(http11.BadResponse):
            await get(p, "/garbage")
        assert await get(p) == (200, b"ok")
    assert server.connections == 3


async def test_no_answer_is_a_read_timeout_and_cancelling_frees_the_slot() -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        if request.line.startswith("GET /slow"):
            await asyncio.sleep(3)
        writer.write(answer(b"ok"))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server, limit=1, read_timeout=0.2) as p:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(http11.ReadTimeout):
            await p.request("GET", "/slow", {"host": "h"})
        assert loop.time() - started < 2
        task = asyncio.create_task(get(p, "/slow"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await get(p) == (200, b"ok")
    assert server.connections == 3


async def test_refusals_connection_and_header_injection() -> None:
    async with serving(lambda *_: asyncio.sleep(0, False)) as server:
        port = server.port
    closed = http11.Pool("127.0.0.1", port, tls=None, limit=1, connect_timeout=2, read_timeout=2)
    with pytest.raises(http11.ConnectError):
        await closed.request("GET", "/", {"host": "h"})
    with pytest.raises(ValueError, match="line break"):
        await closed.request("GET", "/", {"host": "h", "x-amz-meta-a": "b\r\nevil: 1"})
    await closed.close()


def test_a_request_head_is_refused_for_any_line_break_in_it_and_sent_as_written() -> None:
    """A CR or LF anywhere in the request target, a header's name or its value (alone, as
    CR LF, at either end) refuses the request; every other head is the lines joined by
    CR LF, then an empty line, in latin-1."""
    rng = random.Random(11)
    pieces = ["a", "b", " ", ":", "\r", "\n", "\r\n", "\n\r", "\t", "\u00e9", "-", "/"]
    refused = 0
    for _ in range(5_000):
        target = "/" + "".join(rng.choices(pieces, k=rng.randint(0, 3)))
        headers = {
            "".join(rng.choices(pieces, k=rng.randint(1, 3))): "".join(
                rng.choices(pieces, k=rng.randint(0, 4))
            )
            for _ in range(rng.randint(1, 4))
        }
        lines = [f"PUT {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        if any("\r" in line or "\n" in line for line in lines):
            refused += 1
            with pytest.raises(ValueError, match="line break"):
                http11._head("PUT", target, headers)
        else:
            expected = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            assert http11._head("PUT", target, headers) == expected
    assert refused > 1_000 and 5_000 - refused > 100  # both kinds of head, many times


async def test_an_answer_complete_while_reading_is_paused_leaves_a_reading_connection() -> None:
    """The byte that ends an answer can be the one past the high water (reading pauses as the
    answer completes); released unread, its connection must read the next answer."""
    data = os.urandom(1024 * 1024 + 1)

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(data if request.line.startswith("GET /big") else b"ok"))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server, limit=1, read_timeout=1) as p:
        response = await p.request("GET", "/big", {"host": "h"})
        connection = response._connection
        assert connection is not None
        while not connection.complete:  # all of it arrives; nothing is read yet
            await connection.wait()
        assert await response.read(10) == data[:10]
        response.release()  # the rest not wanted: a complete answer, the connection kept
        assert await get(p) == (200, b"ok")
    assert server.connections == 1


async def test_an_answer_framed_by_close_is_cut_by_a_reset_or_the_pool_closing() -> None:
    """An answer with no length ends when the server closes the connection; a reset, or the
    pool closing it, is no such end: the body is cut, not complete."""
    stall = asyncio.Event()

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart of it")
        await writer.drain()
        if request.line.startswith("GET /reset"):
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            await stall.wait()
        return False

    async with serving(handler) as server, pool(server) as p:
        response = await p.request("GET", "/reset", {"host": "h"})
        with pytest.raises(http11.Disconnected):
            await response.read()
        response.release()
        response = await p.request("GET", "/k", {"host": "h"})
        assert await response.read(100) == b"part of it"
        reading = asyncio.ensure_future(response.read())
        await asyncio.sleep(0.05)
        await p.close()
        with pytest.raises(http11.Disconnected):
            await reading
        response.release()
        stall.set()


async def test_data_after_the_answer_is_not_part_of_it_and_the_connection_is_dropped() -> None:
    """Bytes after a complete answer (a second answer nobody asked for) are no part of its
    body, and a connection that sends them is not trusted with another request."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        if request.line.startswith("GET /extra"):
            writer.write(answer(b"ok") + answer(b"unasked", status="404 Not Found"))
        else:
            writer.write(answer(b"fine"))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server, limit=1) as p:
        response = await p.request("GET", "/extra", {"host": "h"})
        await asyncio.sleep(0.05)  # all of it arrives before the body is read
        assert response.status == 200
        assert await response.read() == b"ok"
        response.release()
        assert await get(p) == (200, b"fine")
    assert server.connections == 2


async def test_the_connection_failing_while_a_streamed_body_goes_is_no_body_error() -> None:
    """A server closing (or not reading) while a streamed body goes out is a connection
    failure, reported as one: ``BodyError`` is for the body's own iterator failing."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head, then no more: closed
        writer.close()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 10
            await asyncio.sleep(0.02)

    listening = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    async with (
        listening,
        http11.Pool("127.0.0.1", port, tls=None, limit=1, connect_timeout=2, read_timeout=2) as p,
    ):
        with pytest.raises(http11.Disconnected):
            await p.request("PUT", "/k", {"host": "h", "content-length": "200"}, slow())


async def test_a_body_longer_than_its_length_is_refused_before_the_server_has_it_whole() -> None:
    """A streamed body with more bytes than its ``content-length`` (a staged file that grew)
    fails before its first ``content-length`` bytes reach the server as a whole request."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b"stored"))
        await writer.drain()
        return True

    async def longer() -> AsyncIterator[bytes]:
        yield b"x" * 15
        yield b"y" * 15

    async with serving(handler) as server, pool(server, limit=1) as p:
        with pytest.raises(http11.BodyError, match="more than its 20 bytes"):
            await p.request("PUT", "/k", {"host": "h", "content-length": "20"}, longer())
        assert await get(p) == (200, b"stored")
    assert [r.line for r in server.requests] == ["GET /k HTTP/1.1"]


async def test_a_switch_of_protocols_is_a_bad_response() -> None:
    """101 Switching Protocols is no answer the fast path can read: a ``BadResponse``, not an
    exception escaping the protocol into the event loop's handler."""
    escaped: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: escaped.append(context))

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n"
        )
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server) as p:
        with pytest.raises(http11.BadResponse):
            await p.request("GET", "/k", {"host": "h"})
    assert not [c for c in escaped if "data_received" in str(c["message"])]


async def test_an_answer_dropped_unreleased_gives_its_slot_back() -> None:
    """A response lost without ``release()`` (an exception between the request and the
    ``async with`` of its body) closes its connection when collected, as aiohttp's does:
    the pool's slot is not lost for the rest of the run."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b"ok"))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server, limit=1) as p:
        response = await p.request("GET", "/dropped", {"host": "h"})
        assert response.status == 200
        del response
        gc.collect()
        assert await asyncio.wait_for(get(p), 2) == (200, b"ok")
    assert server.connections == 2


async def test_a_timeout_of_zero_or_none_is_no_timeout() -> None:
    """As aiohttp (and so aiobotocore) takes them: 0 or None, no limit on connecting or
    reading, not a connection that times out at once."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b"ok"))
        await writer.drain()
        return True

    async with serving(handler) as server:
        for timeout in (0, None):
            async with http11.Pool(
                "127.0.0.1",
                server.port,
                tls=None,
                limit=1,
                connect_timeout=timeout,
                read_timeout=timeout,
            ) as p:
                assert await get(p) == (200, b"ok")


async def test_a_kept_connection_already_closing_is_not_taken_for_a_request() -> None:
    """The server's close of a kept connection has been read (the transport is closing) but
    its ``connection_lost`` has not run yet: a request in that moment gets another connection
    (which matters for a streamed body: it cannot be sent twice)."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b"ok"))
        await writer.drain()
        return request.line.startswith("PUT")  # after a GET: closed, as by an idle timeout

    async def streamed() -> AsyncIterator[bytes]:
        yield b"abc"

    async with serving(handler) as server, pool(server, limit=2) as p:
        response = await p.request("GET", "/k", {"host": "h"})
        connection = response._connection
        assert connection is not None and connection.transport is not None
        assert await response.read() == b"ok"
        response.release()
        while not connection.transport.is_closing():
            await asyncio.sleep(0)
        response = await p.request("PUT", "/k", {"host": "h", "content-length": "3"}, streamed())
        assert response.status == 200
        response.release()
    assert server.requests[-1].body == b"abc"


async def test_slots_come_back_from_every_cancel_and_a_close_fails_what_runs() -> None:
    """The pool's accounting under cancellation: a request cancelled waiting for a slot,
    woken for one and cancelled before it ran (its turn passes on), waiting for an answer, or
    reading a body gives its slot back; ``close()`` fails the requests running or waiting."""
    gate = asyncio.Event()

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        if request.line.startswith("GET /hold"):
            await gate.wait()
        if request.line.startswith("GET /part"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            await writer.drain()
            await gate.wait()
            return False
        writer.write(answer(b"ok"))
        await writer.drain()
        return True

    async def settle(p: http11.Pool) -> None:
        for _ in range(50):  # until the aborted connections' connection_lost() ran
            await asyncio.sleep(0.01)
            if p._open == len(p._idle):
                return

    async with serving(handler) as server, pool(server, limit=1) as p:
        first = await p.request("GET", "/a", {"host": "h"})
        waiting = asyncio.ensure_future(get(p, "/b"))
        woken = asyncio.ensure_future(get(p, "/c"))
        last = asyncio.ensure_future(get(p, "/d"))
        await asyncio.sleep(0.05)
        waiting.cancel()  # cancelled in line
        await asyncio.sleep(0)
        assert await first.read() == b"ok"
        first.release()  # wakes "woken"...
        woken.cancel()  # ... which is cancelled before it runs: "last" gets the connection
        assert await asyncio.wait_for(last, 2) == (200, b"ok")
        for task in (waiting, woken):
            with pytest.raises(asyncio.CancelledError):
                await task
        for path in ("/hold", "/part"):  # cancelled waiting for the answer, reading the body
            task = asyncio.ensure_future(get(p, path))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await settle(p)
            assert p._open == len(p._idle) <= 1
            assert await asyncio.wait_for(get(p), 2) == (200, b"ok")
        running = asyncio.ensure_future(get(p, "/hold"))
        queued = asyncio.ensure_future(get(p, "/e"))
        await asyncio.sleep(0.05)
        await p.close()
        for task in (running, queued):
            with pytest.raises(http11.Disconnected):
                await asyncio.wait_for(task, 2)
        await settle(p)
        assert p._open == 0 and not p._all and not p._idle
        gate.set()


async def test_a_connection_idle_past_the_keepalive_is_closed_not_used() -> None:
    """A server closes idle connections after its own timeout; one idle longer than ours is
    closed here rather than risked (a streamed PUT on it could not be sent again)."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(f"#{n}".encode()))
        await writer.drain()
        return True

    async with serving(handler) as server, pool(server, limit=1, keepalive=0.1) as p:
        assert await get(p) == (200, b"#0")
        assert await get(p) == (200, b"#1")  # at once: kept
        await asyncio.sleep(0.2)
        assert await get(p) == (200, b"#0")  # idle too long: a new connection
        assert server.connections == 2


async def test_the_host_name_is_looked_up_once_for_the_connections_made_together() -> None:
    """The first requests of a run open ``limit`` connections at once: one lookup of the host
    name serves them all (aiohttp's DNS cache did the same), and an address that refuses (a
    ``localhost`` that is ``::1`` first, with the server on 127.0.0.1) gives way to the next."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.02)  # all eight in flight at once
        writer.write(answer(request.line.encode()))
        await writer.drain()
        return True

    async with serving(handler) as server:
        named = http11.Pool(
            "localhost", server.port, tls=None, limit=8, connect_timeout=5, read_timeout=5
        )
        async with named:
            results = await asyncio.gather(*(get(named, f"/{i}") for i in range(8)))
            assert results == [(200, f"GET /{i} HTTP/1.1".encode()) for i in range(8)]
            assert server.connections == 8 and named.lookups == 1


class _TwoAddresses(http11.Pool):
    """A host name with two addresses, as DNS gives them: ``127.0.0.2`` first, then the
    server's ``127.0.0.1`` (a name with an A record per node, or an AAAA and an A)."""

    async def _resolve(self) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", self.port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", self.port)),
        ]


async def test_an_address_that_never_answers_gives_way_to_the_next_one() -> None:
    """A first address that drops the connection's SYN (a node down behind a firewall, an
    IPv6 route that goes nowhere) is not waited on for the whole connect timeout: the next
    address is tried a moment later, as aiohttp (under botocore) does (Happy Eyeballs)."""

    async def handler(request: Request, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b"ok"))
        await writer.drain()
        return True

    async with serving(handler) as server:
        # 127.0.0.2 on the same port: a listener that accepts nothing, its queue full, so
        # a connection to it hangs, unanswered
        hole = socket.socket()
        held: list[socket.socket] = []
        try:
            hole.bind(("127.0.0.2", server.port))
            hole.listen(0)
            for _ in range(2):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.2", server.port))
                held.append(filler)
            await asyncio.sleep(0.1)
            two = _TwoAddresses(
                "s3.example.test", server.port, tls=None, limit=1, connect_timeout=3, read_timeout=3
            )
            async with two:
                started = asyncio.get_running_loop().time()
                assert await get(two) == (200, b"ok")
                assert asyncio.get_running_loop().time() - started < 1.5
        finally:
            for sock in (*held, hole):
                sock.close()
