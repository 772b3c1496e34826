"""``LocalIO``: small file operations inline while the disk is fast, in threads once not."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pytest

from asyncbackup.errors import StagingFullError
from asyncbackup.localio import LocalIO, open_for_writing


def where() -> int:
    return threading.get_ident()


async def test_fast_operations_run_on_the_event_loop_thread() -> None:
    local = LocalIO()
    for _ in range(50):
        assert await local.run(where) == threading.get_ident()
    assert local.inline


async def test_a_slow_disk_moves_operations_to_threads() -> None:
    local = LocalIO(slow_after=0.002)

    def slow() -> int:
        time.sleep(0.004)
        return where()

    calls = 0
    while local.inline:
        calls += 1
        assert await local.run(slow) == threading.get_ident()
        assert calls < 100
    assert calls > 5  # one slow call is not enough: the average has to pass the limit
    assert await local.run(where) != threading.get_ident()


async def test_one_stall_moves_operations_to_threads_at_once() -> None:
    local = LocalIO(stall_after=0.01)
    await local.run(time.sleep, 0.02)
    assert not local.inline
    assert await local.run(where) != threading.get_ident()


async def test_errors_propagate_and_are_timed() -> None:
    local = LocalIO(stall_after=0.01)

    def failing() -> None:
        time.sleep(0.02)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        await local.run(failing)
    assert not local.inline


async def test_a_file_is_closed_when_its_task_is_cancelled_during_the_close(
    tmp_path: Path,
) -> None:
    """The block is done, and the close waits for a worker thread (every one busy: a loaded
    machine) when the task is cancelled. The file is closed all the same, before the
    cancellation propagates: a ``to_thread`` call cancelled before a thread took it never
    runs, and the file stayed open until the garbage collector found it."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))  # this test's loop only
    release = threading.Event()
    handles: list[BinaryIO] = []
    blocked: list[asyncio.Future[bool]] = []

    async def write() -> None:
        async with open_for_writing(tmp_path / "staged") as handle:
            handle.write(b"data")
            blocked.append(loop.run_in_executor(None, release.wait))  # the only thread, taken
            handles.append(handle)
        # the close is queued behind the blocked thread from here on

    task = asyncio.create_task(write())
    try:
        while not handles:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not task.done()  # waiting for the close
        task.cancel()
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert handles[0].closed
        assert (tmp_path / "staged").read_bytes() == b"data"
    finally:
        release.set()
        await asyncio.gather(*blocked)
        for handle in handles:
            handle.close()


async def test_a_full_disk_found_at_close_stops_the_run_as_a_full_disk() -> None:
    """The last bytes of a staged file may only be written when it is closed (buffered): a
    full disk then must be the run-stopping StagingFullError, as at any write, not one
    object's error."""
    with pytest.raises(StagingFullError, match="no space left in staging directory /dev"):
        async with open_for_writing(Path("/dev/full")) as out:
            out.write(b"x" * 100)  # buffered: /dev/full refuses it at the flush
