"""A worker process of a multi-process backup (``--processes N``).

Started by ``workerpool.py`` (never by hand). It reads its configuration from the first line of
stdin, opens its own S3 clients (credentials resolved here, from the same environment and
profiles as the main process) and copies the objects the main process sends it with the same
copier as a single-process run, on an event loop of its own. It never touches the checkpoint:
completions, failures, multipart journal notes and log records go back to the main process as
protocol lines (``wire.py``) on stdout, which nothing else may write to.

It lives as long as its stdin: at end of file (the main process is done, or was killed) it
cancels what is in flight - multipart uploads are aborted - and exits. It runs in a session of
its own, which a terminal's Ctrl-C does not reach, and ignores SIGINT and SIGTERM: the main
process decides what happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any

from . import wire
from .api import _direct_copier, _open_stores, _staged_copier, open_job_destination
from .config import BackupConfig
from .credprocess import ROLE_CACHE
from .errors import AsyncBackupError, FatalRunError
from .memory import return_large_buffers_to_os
from .pipeline import Process, primary_error
from .uploads import UploadJournal

log = logging.getLogger("asyncbackup")

_LINE_LIMIT = 16 * 1024 * 1024


class Channel:
    """Protocol lines to the main process: whole lines, from any thread, never interleaved.

    Writes block (they are small, and the main process always reads); once the main process
    is gone, they are dropped.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.closed = False

    def send(self, message: wire.Message) -> None:
        data = memoryview(wire.encode(message))
        with self.lock:
            if self.closed:
                return
            try:
                while data:
                    data = data[os.write(self.fd, data) :]
            except OSError:  # the main process is gone; end of file on stdin follows
                self.closed = True


class ForwardingHandler(logging.Handler):
    """Log records go to the main process, which logs them with its own handlers."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.channel.send(
                {"op": "log", "name": record.name, "level": record.levelno, "message": message}
            )
        except Exception:  # a log record must never break a copy
            self.handleError(record)


class Notes:
    """The checkpoint notes of the main process's pipeline, over the channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[None]] = {}

    def note(self, section: str, key: str, value: Any) -> None:
        self.channel.send({"op": "note", "section": section, "key": key, "value": value})

    async def note_durably(self, section: str, key: str, value: Any) -> None:
        note_id = next(self.ids)
        acked = asyncio.get_running_loop().create_future()
        self.waiting[note_id] = acked
        try:
            self.channel.send(
                {"op": "note", "id": note_id, "section": section, "key": key, "value": value}
            )
            await acked
        finally:
            self.waiting.pop(note_id, None)

    def acknowledge(self, note_id: int) -> None:
        acked = self.waiting.pop(note_id, None)
        if acked is not None and not acked.done():
            acked.set_result(None)


class Worker:
    def __init__(self, channel: Channel, process: Process, notes: Notes) -> None:
        self.channel = channel
        self.process = process
        self.notes = notes
        self.tasks: dict[int, asyncio.Task[None]] = {}

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Take requests until end of file; then cancel whatever is still in flight."""
        self.channel.send({"op": "ready"})
        async with asyncio.TaskGroup() as tg:
            while line := await reader.readline():
                message = wire.decode(line)
                match message["op"]:
                    case "copy":
                        request = message["id"]
                        item = wire.item_from_wire(message["item"])
                        copying = tg.create_task(self.copy(request, item))
                        copying.add_done_callback(functools.partial(self.finished, request))
                        self.tasks[request] = copying
                    case "cancel":
                        task = self.tasks.get(message["id"])
                        if task is not None:
                            task.cancel()
                    case "ack":
                        self.notes.acknowledge(message["id"])
            for task in self.tasks.values():
                task.cancel()

    def finished(self, request: int, task: asyncio.Task[None]) -> None:
        """A cancelled copy says so here, not in ``copy``: a task cancelled before it ran
        (its "copy" and "cancel" read in one go) never enters ``copy``, and the main process
        would wait its whole grace period for the answer."""
        self.tasks.pop(request, None)
        if task.cancelled():
            self.channel.send({"op": "cancelled", "id": request})

    async def copy(self, request: int, item: Any) -> None:
        try:
            size = await self.process(item)
        except Exception as exc:  # reported to the main process, which raises it there
            if not isinstance(exc, AsyncBackupError):
                log.debug("unexpected error copying %s", item.key, exc_info=True)
            self.channel.send({"op": "error", "id": request, "error": wire.error_to_wire(exc)})
        else:
            self.channel.send({"op": "done", "id": request, "size": size})


async def _open(
    config: BackupConfig,
    stack: contextlib.AsyncExitStack,
    journal: UploadJournal,
    part_buffer_bytes: int,
    opaque_etags: bool,
) -> Process:
    """The copier, its clients opened (and their buckets checked) on ``stack``; its parts
    held in memory bounded to ``part_buffer_bytes``, its share of the run's; the
    destination's ETags no MD5s with ``opaque_etags`` (the main process asked)."""
    if config.direct:  # server-side: the destination's client is all it needs
        client = await open_job_destination(stack, config, worker=True)
        return await _direct_copier(config, client, stack, journal, opaque_etags=opaque_etags)
    source_client, dest_client = await _open_stores(stack, config, worker=True)
    return await _staged_copier(
        config,
        source_client,
        dest_client,
        journal,
        stack,
        part_buffer_bytes=part_buffer_bytes,
        prepare=False,
        opaque_etags=opaque_etags,
    )


async def _until_eof(
    reader: asyncio.StreamReader, opening: Coroutine[Any, Any, Process]
) -> Process | None:
    """``opening``'s result; or None, ``opening`` cancelled, if stdin ends first: a main
    process killed while this one opens its clients (on an endpoint slow to answer, that can
    take minutes) must not leave it running."""

    async def eof() -> None:
        if line := await reader.readline():  # nothing may come before "ready"
            raise FatalRunError(f"the main process spoke before this worker was ready: {line!r}")

    try:
        async with asyncio.TaskGroup() as tg:
            opened = tg.create_task(opening)
            ended = tg.create_task(eof())
            await asyncio.wait({opened, ended}, return_when=asyncio.FIRST_COMPLETED)
            (ended if opened.done() else opened).cancel()
    except BaseExceptionGroup as group:
        raise primary_error(group) from None
    return None if opened.cancelled() else opened.result()


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


async def serve(in_fd: int, out_fd: int) -> int:
    channel = Channel(out_fd)
    reader = await _reader(in_fd)
    first = await reader.readline()
    if not first:
        return 0  # the main process went away before it said anything
    init = wire.decode(first)
    handler = ForwardingHandler(channel)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(int(init.get("log_level", logging.INFO)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    try:
        config = wire.config_from_wire(init["config"])
        ROLE_CACHE.update(init.get("roles") or {})  # the main process's: not asked again
        notes = Notes(channel)
        async with contextlib.AsyncExitStack() as stack:
            budget = int(init["part_buffer_bytes"])
            opaque = bool(init.get("opaque_etags"))
            opening = _open(config, stack, UploadJournal(notes), budget, opaque)
            process = await _until_eof(reader, opening)
            if process is None:
                return 0  # the main process went away while this one opened its clients
            await Worker(channel, process, notes).serve(reader)
    except Exception as exc:
        if not isinstance(exc, AsyncBackupError):
            log.debug("worker failed", exc_info=True)
        channel.send({"op": "fatal", "error": wire.error_to_wire(exc)})
        return 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    channel.send({"op": "bye", "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3)})
    return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return_large_buffers_to_os()
    # The protocol gets private copies of stdin and stdout; fd 1 then points at stderr, so
    # that a stray print() anywhere cannot corrupt the protocol.
    in_fd, out_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(serve(in_fd, out_fd))


if __name__ == "__main__":
    sys.exit(main())
