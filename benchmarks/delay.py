"""A loopback TCP relay that puts a distance between the tools and the server: every byte
crosses it ``rtt / 2`` seconds late in each direction, and each new connection waits one
``rtt`` before its first byte goes through (the TCP handshake a distant server costs).

The kernel's own delay (``tc netem``) is not in every container, and the HTTP proxy of the
tests parses every request (its CPU, on two cores, would be the limit, not the distance):
this relay only copies bytes, in a process of its own. Each direction keeps its order: the
chunks wait in a queue, each stamped with the time it may leave.

``python -m benchmarks.delay HOST:PORT RTT`` prints ``http://127.0.0.1:PORT`` (its own
endpoint) and relays until its standard input closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

_CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read, in
    order; then half-close ``writer``."""
    loop = asyncio.get_running_loop()
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    arrived = asyncio.Event()
    done = False

    async def send() -> None:
        while queue or not done:
            if not queue:
                arrived.clear()
                await arrived.wait()
                continue
            due, data = queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if data:
                    writer.write(data)
                    await writer.drain()
                else:  # end of stream
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
            except (ConnectionError, OSError, RuntimeError):
                # the peer is gone: uvloop says so of a transport a reset closed with a
                # RuntimeError, not a ConnectionError
                return

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(_CHUNK)
            queue.append((loop.time() + delay, data))
            arrived.set()
            if not data:
                break
    except (ConnectionError, OSError):
        queue.append((loop.time() + delay, b""))
        arrived.set()
    done = True
    with contextlib.suppress(ConnectionError, OSError):
        await sender


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    host: str,
    port: int,
    rtt: float,
) -> None:
    await asyncio.sleep(rtt)  # the handshake with a distant server
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(
            _pump(client_reader, server_writer, rtt / 2),
            _pump(server_reader, client_writer, rtt / 2),
        )
    finally:
        for writer in (server_writer, client_writer):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def serve(upstream: str, rtt: float) -> None:
    host, _, port = upstream.rpartition(":")
    server = await asyncio.start_server(
        lambda r, w: _relay(r, w, host, int(port), rtt), "127.0.0.1", 0, backlog=1024
    )
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    async with server:
        await stdin_closed


def distant(endpoint: str, rtt: float) -> contextlib.AbstractContextManager[str]:
    """``endpoint`` seen from ``rtt`` seconds away: the relay's endpoint, while it runs."""
    netloc = urlsplit(endpoint).netloc
    return serving([sys.executable, "-m", "benchmarks.delay", netloc, str(rtt)])


@contextlib.contextmanager
def serving(argv: list[str]) -> Iterator[str]:
    """A server in a process of its own (started from the repository's root), which prints
    its endpoint on its first line and serves until its standard input closes: the endpoint,
    while it runs."""
    with subprocess.Popen(
        argv,
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            yield process.stdout.readline().strip()
        finally:
            process.stdin.close()
            process.wait(10)


def main() -> None:
    uvloop.run(serve(sys.argv[1], float(sys.argv[2])))


if __name__ == "__main__":
    main()
