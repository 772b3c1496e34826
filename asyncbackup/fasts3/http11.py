"""HTTP/1.1 for the fast path: a pool of keep-alive connections to one origin, each request
written in one piece, each response parsed by httptools (llhttp, the C parser aiohttp and
Node.js use).

Why not aiohttp's client: the fast path sends thousands of small requests a second from one
event loop, and ``ClientSession.request`` spends about 100 µs of CPU on each (tracing hooks,
cookie jar, URL and header objects, a task per request body); this pool spends about 35 µs on
the same GET (measured with the README's commands; see "Where the CPU goes"). It covers what
the fast path sends and nothing more: GET and PUT, a body given as bytes or as an async
iterator of pieces with its length known, answers framed by ``Content-Length``, chunked or
ended by the server closing. No redirects, cookies, proxies or decompression: the fast path
wants none of them (``target.py`` leaves a bucket behind a proxy to botocore).

Failures are the ``HTTPError`` subclasses below; ``client.py`` turns them into the botocore
exceptions aiobotocore raises for the same failure.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import aiohappyeyeballs
import httptools

#: the body of a request: in memory, or pieces read as the request goes out
Body = bytes | bytearray | memoryview | AsyncIterator[bytes] | None
#: a body in memory up to this size is written in one call with the request's head
_ONE_WRITE = 256 * 1024
#: larger bodies in memory are written in slices of this size, waiting for the socket between
_SLICE = 1 << 20
#: reading from the socket pauses while this much of an answer's body waits to be read
_HIGH_WATER = 1 << 20
#: an answer whose status line and headers go on past this is refused (aiohttp, under
#: botocore, refuses a header line over 8 KiB): httptools joins a header's pieces one by one,
#: so a head of a gigabyte was minutes of CPU and its gigabyte held, from a broken or hostile
#: server (S3's own heads are a few KiB: its metadata is at most 2 KiB)
HEAD_LIMIT = 1 << 20
#: an idle connection older than this is closed rather than used (aiohttp's default): servers
#: close idle connections after their own timeout, and a request sent as one does is lost
KEEPALIVE = 15.0
#: the next of a host's addresses is tried this long after the last one got no answer yet
#: (aiohttp's default)
HAPPY_EYEBALLS_DELAY = 0.25
#: a host name's addresses are looked up once for this long (aiohttp's ``ttl_dns_cache``), not
#: once per connection: the first requests of a run open ``limit`` connections at once
DNS_TTL = 300.0


class HTTPError(Exception):
    """A request that got no complete answer."""


class ConnectError(HTTPError):
    """The connection could not be made (refused, unreachable, name not resolved)."""


class ConnectTimeout(HTTPError):
    """The connection was not made within the connect timeout."""


class TLSError(HTTPError):
    """The TLS handshake failed (a certificate not trusted, a host name not matching)."""


class ReadTimeout(HTTPError):
    """The server sent nothing (or took nothing) for the read timeout."""


class Disconnected(HTTPError):
    """The connection closed before the answer was complete."""


class BadResponse(HTTPError):
    """The server's answer is not HTTP/1.x."""


class BodyError(HTTPError):
    """The request's body failed: its iterator raised (the ``__cause__``), came up short or
    went past its length."""


def _header_text(raw: bytes) -> str:
    """A header's name or value as text: UTF-8, as aiobotocore reads it, so that a value that
    is not ASCII (a file name in a Content-Disposition) is the text botocore gives, and a
    copy sent on by botocore, which writes UTF-8, has the same bytes. Bytes that are not
    UTF-8 (which aiobotocore refuses) are read as latin-1, one character a byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Connection(asyncio.Protocol):
    """One connection, and the answer being received on it (httptools calls the ``on_``
    methods from ``feed_data``)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # Header values read as aiohttp (under botocore) reads an answer: control characters
        # taken (an object's metadata stored with them by a server that keeps what it is
        # sent), a NUL not (``on_header``); the answer's framing checked as strictly.
        self.parser.set_dangerous_leniencies(lenient_headers=True)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self.begin()

    def begin(self) -> None:
        """Ready for the next request's answer."""
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False  # any byte of the answer
        self.head_bytes = 0  # received while the head was not complete
        self.error: HTTPError | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._interim = False  # a 1xx answer, which another one follows
        self._reading_paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # 101: no
            cause = exc.__context__  # HTTP after it, and not an HttpParserError
            if isinstance(cause, BadResponse):
                self._fail(cause)
            else:
                self._fail(BadResponse(f"the server's answer is not HTTP/1.1 ({exc})"))
            self.abort()
        else:
            if not self.headers_done:
                self.head_bytes += len(data)
                if self.head_bytes > HEAD_LIMIT:
                    self._fail(
                        BadResponse(f"the server's answer has a head over {HEAD_LIMIT:,} bytes")
                    )
                    self.abort()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        aborted = self.closed  # by this side: a failure, the pool closing, a body not wanted
        self.closed = True
        if self.complete:
            pass
        elif not aborted and exc is None and self.headers_done and self._until_eof():
            self.complete = True  # an answer framed by the server closing: that was its end
        elif aborted:
            self._fail(Disconnected("the connection was closed before the answer was complete"))
        else:  # a reset (exc) is no end of an answer framed by the server closing
            reason = f": {exc}" if exc else ""
            self._fail(Disconnected(f"the server closed the connection{reason}"))
        self._wake()
        self.pool._lost(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    def _until_eof(self) -> bool:
        """Whether the answer's body is framed by the server closing the connection."""
        names = {name.lower() for name, _ in self.headers}
        return (
            "content-length" not in names
            and "transfer-encoding" not in names
            and self.status not in (204, 304)
        )

    # httptools

    def on_message_begin(self) -> None:
        if self.complete:  # a message after the answer, with no request for it
            raise BadResponse("the server sent more than its answer")
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # A NUL byte, looked for as the byte value 0: ``b"\0" in value`` first tries its
        # operand as an int, which fails and formats a TypeError (1,800 instructions a header)
        if 0 in value:
            raise BadResponse("the server's answer has a NUL in a header value")
        try:  # ``_header_text`` of each, without two calls for every header
            self.headers.append((name.decode("utf-8"), value.decode("utf-8")))
        except UnicodeDecodeError:
            self.headers.append((_header_text(name), _header_text(value)))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue and the like: the real answer follows
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True

    # the request's side

    def _fail(self, error: HTTPError) -> None:
        if self.error is None:
            self.error = error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self._fail(ReadTimeout(f"no answer within {self.pool.read_timeout:g} s"))
        self._wake()
        self.abort()

    async def wait(self) -> None:
        """Until the connection has news: data, the socket writable again, an end."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiter = waiter
        timeout = self.pool.read_timeout
        timer = self.loop.call_later(timeout, self._expire) if timeout else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def abort(self) -> None:
        """Close at once (the answer is not wanted, or cannot be trusted)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def take(self, amt: int) -> bytes:
        """Up to ``amt`` buffered bytes (all of them when ``amt`` < 0)."""
        chunks = self.chunks
        if amt < 0 or amt >= self.buffered:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        else:
            parts: list[bytes] = []
            left = amt
            while left:
                chunk = chunks.popleft()
                if len(chunk) > left:
                    chunks.appendleft(chunk[left:])
                    chunk = chunk[:left]
                parts.append(chunk)
                left -= len(chunk)
            data = b"".join(parts)
        self.buffered -= len(data)
        if self.buffered <= _HIGH_WATER // 4:
            self._resume_reading()
        return data

    def finish(self) -> None:
        """Done with a complete answer: what is left of its body dropped, and the socket read
        again if reading paused (the answer's last piece can be the one past the high water)."""
        self.chunks.clear()
        self.buffered = 0
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    async def send(self, head: bytes, body: Body, length: int) -> None:
        """Write one request; return early if the server answers before taking all of it."""
        transport = self.transport
        assert transport is not None
        if body is None:
            transport.write(head)
        elif isinstance(body, bytes | bytearray | memoryview):
            if len(body) <= _ONE_WRITE:
                transport.write(head + body)
            else:
                transport.write(head)
                view = memoryview(body)
                for start in range(0, len(view), _SLICE):
                    if not await self._writable():
                        return
                    transport.write(view[start : start + _SLICE])
        else:
            transport.write(head)
            sent = 0
            pieces = aiter(body)
            while True:
                try:  # only the body's own failure is a BodyError, not the connection's
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    self.abort()
                    raise BodyError(f"the request body failed: {exc}") from exc
                if sent + len(piece) > length:  # not one byte past the length: the server
                    self.abort()  # would take the first ``length`` as the whole body
                    raise BodyError(f"the request body had more than its {length} bytes")
                if not await self._writable():
                    return
                transport.write(piece)
                sent += len(piece)
            if sent != length:
                self.abort()
                raise BodyError(f"the request body had {sent} of its {length} bytes")

    async def _writable(self) -> bool:
        """Wait while the socket's buffer is full; False once the server has answered (it
        will not read the rest); an error once the connection is gone."""
        while True:
            if self.headers_done:
                self.keep_alive = False  # the request was not sent whole
                return False
            if self.error is not None:
                raise self.error
            if self.closed:
                raise Disconnected("the connection closed while the request was sent")
            if not self._writing_paused:
                return True
            await self.wait()

    async def answer(self) -> None:
        """Until the answer's status and headers are in."""
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self.wait()


class Response:
    """An answer: ``status``, ``headers`` (name, value pairs as received), and its body to
    ``read()``; ``release()`` gives the connection back (or closes it, if the body was not
    read to its end)."""

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.headers = connection.headers

    async def read(self, amt: int = -1) -> bytes:
        """Up to ``amt`` bytes of the body (all that is left when ``amt`` < 0); b"" at its
        end. Fewer than ``amt`` when fewer have arrived."""
        connection = self._connection
        if connection is None:
            return b""
        if amt < 0:
            parts: list[bytes] = []
            while True:
                if connection.chunks:  # taken as it comes: reading pauses past the high water
                    parts.append(connection.take(-1))
                elif connection.complete:
                    return parts[0] if len(parts) == 1 else b"".join(parts)
                elif connection.error is not None:
                    raise connection.error
                else:
                    await connection.wait()
        while True:
            if connection.chunks:
                return connection.take(amt)
            if connection.complete:
                return b""
            if connection.error is not None:
                raise connection.error
            await connection.wait()

    def __del__(self) -> None:
        # Dropped without release(): its connection would count against the pool's limit for
        # good (aiohttp's response closes its connection the same way when collected).
        connection = self._connection
        if connection is not None and not connection.closed and not connection.loop.is_closed():
            connection.abort()

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.complete and connection.keep_alive and not connection.closed:
            connection.finish()
            connection.pool._put_back(connection)
        else:
            connection.abort()


class Pool:
    """Keep-alive connections to one origin: at most ``limit`` open at a time (a request
    waits for one beyond that), idle ones reused last-in first-out, for ``keepalive``
    seconds."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float | None,
        read_timeout: float | None,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.host = host
        self.keepalive = keepalive
        self.port = port
        self.tls = tls
        self.limit = max(1, limit)
        # 0 (or less) is no timeout, as aiohttp takes it (aiobotocore hands botocore's on)
        self.connect_timeout = connect_timeout if connect_timeout and connect_timeout > 0 else None
        self.read_timeout = read_timeout if read_timeout and read_timeout > 0 else None
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._open = 0  # connections made or being made, not yet closed
        self._all: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._addresses: list[tuple[Any, ...]] = []
        self._addresses_until = 0.0
        self._lookup: asyncio.Future[list[tuple[Any, ...]]] | None = None
        self.lookups = 0  # host name lookups made (for tests and the curious)

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: Body = None
    ) -> Response:
        """Send one request; the answer once its status and headers are in. ``headers``
        must carry ``host``; ``content-length`` too when the body is an iterator."""
        if body is None:
            length = 0
            if method in ("PUT", "POST"):
                headers = {**headers, "content-length": "0"}
        elif isinstance(body, bytes | bytearray | memoryview):
            length = len(body)
            headers = {**headers, "content-length": str(length)}
        else:
            length = int(headers["content-length"])
        head = _head(method, target, headers)
        replayable = body is None or isinstance(body, bytes | bytearray | memoryview)
        while True:
            connection = await self._acquire()
            try:
                await connection.send(head, body, length)
                await connection.answer()
            except Disconnected:
                connection.abort()
                # A kept connection the server had closed before reading this request (its
                # idle timeout): nothing was received, so the request is sent again, once.
                if connection.reused and not connection.received and replayable:
                    replayable = False
                    continue
                raise
            except BaseException:
                connection.abort()
                raise
            return Response(connection)

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                connection = self._idle.pop()
                transport = connection.transport
                # closing: the server's close was read, its connection_lost() not run yet
                if connection.closed or transport is None or transport.is_closing():
                    continue
                if self.loop.time() - connection.idle_since > self.keepalive:
                    connection.abort()  # its slot comes back with its connection_lost()
                    continue
                connection.reused = True
                connection.begin()
                return connection
            if self._closed:
                raise Disconnected("the connection pool is closed")
            if self._open < self.limit:
                break
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # its turn passes to the next in line
                else:
                    waiter.cancel()
                raise
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake()
            raise

    async def _resolve(self) -> list[tuple[Any, ...]]:
        """The host's addresses (``getaddrinfo``): looked up once per ``DNS_TTL``, one lookup
        shared by the connections made meanwhile (a cancelled one does not cancel it)."""
        if self._addresses and self.loop.time() < self._addresses_until:
            return self._addresses
        if self._lookup is None:
            self.lookups += 1
            self._lookup = asyncio.ensure_future(
                self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            )
            self._lookup.add_done_callback(self._looked_up)
        return await asyncio.shield(self._lookup)

    def _looked_up(self, lookup: asyncio.Future[list[tuple[Any, ...]]]) -> None:
        self._lookup = None
        if not lookup.cancelled() and lookup.exception() is None:  # a failure: next time again
            self._addresses = lookup.result()
            self._addresses_until = self.loop.time() + DNS_TTL

    async def _open_connection(self) -> _Connection:
        """A connection to the first of the host's addresses that takes one, the next one
        tried ``HAPPY_EYEBALLS_DELAY`` after the last while it has no answer (RFC 8305, as
        aiohttp under botocore: an address that never answers - a node down behind a
        firewall, an IPv6 route to nowhere - is not waited on for the whole connect timeout).
        TLS is then made on the connected socket: a handshake that fails is the server's
        answer, and another address would not do better."""
        addresses = await self._resolve()
        if not addresses:
            raise OSError(f"no address for {self.host}")
        try:
            sock = await aiohappyeyeballs.start_connection(
                addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, loop=self.loop
            )
        except RuntimeError as exc:  # uvloop's, for some failures to connect
            raise OSError(str(exc)) from exc
        factory: Callable[[], _Connection] = lambda: _Connection(self)  # noqa: E731
        try:
            _, connection = await self.loop.create_connection(
                factory,
                sock=sock,
                ssl=self.tls,
                server_hostname=self.host if self.tls else None,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await self._open_connection()
        except TimeoutError as exc:  # ours, or the system's (ETIMEDOUT: an OSError too)
            within = f" within {self.connect_timeout:g} s" if self.connect_timeout else ""
            raise ConnectTimeout(f"no connection to {self.host}:{self.port}{within}") from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS with {self.host}:{self.port} failed: {exc}") from exc
        except OSError as exc:
            raise ConnectError(f"could not connect to {self.host}:{self.port}: {exc}") from exc
        if self._closed:
            connection.abort()
            raise Disconnected("the connection pool is closed")
        if connection.closed:  # its connection_lost() ran before it was counted in _all:
            raise Disconnected("the connection closed as it was made")  # _acquire frees its slot
        self._all.add(connection)
        return connection

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _put_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.abort()
            return
        connection.idle_since = self.loop.time()
        self._idle.append(connection)
        self._wake()

    def _lost(self, connection: _Connection) -> None:
        if connection in self._all:
            self._all.discard(connection)
            self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake()

    async def close(self) -> None:
        """Close every connection; requests still running fail with ``Disconnected``."""
        self._closed = True
        for connection in list(self._all):
            connection.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports' connection_lost run

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def _head(method: str, target: str, headers: dict[str, str]) -> bytes:
    """The request line and headers, as sent; a CR or LF in one of them is refused (it would
    end the header early: header injection)."""
    lines = [
        f"{method} {target} HTTP/1.1",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    # looked for in the lines joined without their separators: ``in`` finds a character with
    # memchr, where counting them in the joined head looked at each of its characters
    together = "".join(lines)
    if "\n" in together or "\r" in together:
        raise ValueError("a header or the request target holds a line break")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
