"""``uploads.run_to_completion``: the cleanup of a failed or cancelled upload (its abort) is
given its time, and then the block's own failure goes on - never the cleanup's timeout.

A hung endpoint made the abort of a cancelled multipart upload time out; that
``TimeoutError`` (an ``OSError``) replaced the cancellation, was taken for a local I/O
failure and the object retried: Ctrl-C did not stop the run, nor did a second one."""

from __future__ import annotations

import asyncio

import pytest

from asyncbackup.uploads import run_to_completion


async def _never() -> None:
    await asyncio.sleep(3600)


async def test_a_cleanup_that_times_out_lets_the_blocks_own_failure_go_on() -> None:
    async def block() -> None:
        try:
            raise RuntimeError("the upload failed")
        except RuntimeError:
            await run_to_completion(_never(), 0.05)
            raise

    with pytest.raises(RuntimeError, match="the upload failed"):
        await block()


async def test_a_cancelled_block_stays_cancelled_when_its_cleanup_times_out() -> None:
    started = asyncio.Event()

    async def block() -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await run_to_completion(_never(), 0.05)
            raise

    task = asyncio.create_task(block())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cleanup_that_fails_does_not_replace_the_failure() -> None:
    async def failing_cleanup() -> None:
        raise ConnectionResetError("the abort's connection dropped")

    async def block() -> None:
        try:
            raise RuntimeError("the upload failed")
        except RuntimeError:
            await run_to_completion(failing_cleanup(), 1.0)
            raise

    with pytest.raises(RuntimeError, match="the upload failed"):
        await block()
