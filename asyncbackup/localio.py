"""Small blocking file operations: on the event loop while the disk is fast, in threads once not;
and ``open_for_writing``, a file opened and closed in worker threads.

Staging a 4 KiB object is an open, a write, a close and a rename: well under a millisecond on a
local disk. Handing that to a worker thread costs more than doing it: each of those system calls
gives up the GIL and must win it back from the busy event loop, so the hand-off turns into about
85 futex calls per object (``strace -c -f``: 174,000 for 2,000 objects, against 1,800 inline).
So ``LocalIO.run`` calls the function directly and times it. The times are averaged
(exponentially, so one stall of a busy machine does not count for much): once the average passes
``slow_after`` (a network file system, a disk under pressure), or one call takes longer than
``stall_after``, the calls go to ``asyncio.to_thread`` for the rest of the run, and the event
loop is no longer held up by the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from .filemodes import private_opener
from .staging import raise_if_unusable

log = logging.getLogger("asyncbackup")

T = TypeVar("T")

#: the average time of an inline operation above which the rest go to threads
SLOW_AFTER = 0.002
#: one inline operation this slow sends the rest to threads at once
STALL_AFTER = 0.1
#: the weight of the newest time in the average
WEIGHT = 0.05


class LocalIO:
    """Run small file operations inline while they take less than ``slow_after`` seconds on
    average (and none ``stall_after``), in worker threads from then on."""

    def __init__(self, slow_after: float = SLOW_AFTER, stall_after: float = STALL_AFTER) -> None:
        self.slow_after = slow_after
        self.stall_after = stall_after
        self.inline = True
        self.average = 0.0

    async def run(self, function: Callable[..., T], *args: object) -> T:
        if not self.inline:
            return await asyncio.to_thread(function, *args)
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self._timed(time.perf_counter() - started)

    def _timed(self, elapsed: float) -> None:
        self.average += WEIGHT * (elapsed - self.average)
        if self.average > self.slow_after or elapsed > self.stall_after:
            self.inline = False
            log.info(
                "staging is slow (file operations take %.1f ms, the last %.1f ms): they move "
                "to worker threads",
                self.average * 1000,
                elapsed * 1000,
            )


@contextlib.asynccontextmanager
async def open_for_writing(path: Path) -> AsyncIterator[BinaryIO]:
    """``open(path, "wb")`` in a worker thread, closed in one. Cancelled while the open runs,
    the file that thread goes on to open is closed too (``aiofiles.open`` would leak it);
    cancelled while the close waits for its thread, the block is left once it is closed. A
    full disk found by the close (the last buffered bytes) is a ``StagingFullError``, as at
    any write."""
    opening: asyncio.Future[BinaryIO] = asyncio.ensure_future(
        asyncio.to_thread(open, path, "wb", opener=private_opener)
    )
    try:
        raw = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_if_opened)
        raise
    try:
        yield raw
    finally:
        try:
            await _close(raw)
        except OSError as exc:
            raise_if_unusable(exc, path.parent)
            raise


async def _close(raw: BinaryIO) -> None:
    """``raw.close()`` in a worker thread, done when this returns even if cancelled meanwhile.

    An executor call cancelled before a thread took it (every thread busy: a loaded machine)
    never runs, and the file would stay open until the garbage collector finds it. So a
    cancellation waits for the close, then propagates (its error, if any, is dropped)."""
    closing = asyncio.get_running_loop().run_in_executor(None, raw.close)
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        while not closing.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([closing])
        if not closing.cancelled():
            closing.exception()  # retrieved: the cancellation is what propagates
        raise


def _close_if_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


async def remove_temporary(path: Path) -> None:
    """Remove ``path`` (if it is there) in a thread, shielded: a second cancellation while
    the removal waits for a free thread must not cancel it, or the file would stay until the
    next run's clean-up of staging."""
    await asyncio.shield(asyncio.to_thread(path.unlink, True))
