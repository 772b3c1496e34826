"""The checkpoint writer shares the event loop with the listing and the workers: however many
completion events pile up while it waits for a slow flush, it applies them a bounded batch at
a time, letting the other tasks run between batches (it applied them all at once: a 1M-object
job stalled every task for about a second after its first flush)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from asyncbackup.checkpoint import CheckpointState
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.pipeline import Pipeline, WorkItem
from asyncbackup.progress import NullObserver

_PILED = 30_000  # events queued while the first flush is held


class _HeldManager(CheckpointManager):
    """The first (whole-file) flush waits until ``release`` is set: a slow disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = asyncio.Event()

    async def flush_async(self, state: CheckpointState) -> None:
        await self.release.wait()
        await super().flush_async(state)


class _Counted(NullObserver):
    def __init__(self) -> None:
        self.done = 0

    def on_done(self, key: str, size: int) -> None:
        self.done += 1


async def _pages(items: Sequence[WorkItem]) -> AsyncIterator[Sequence[WorkItem]]:
    yield items


@pytest.mark.parametrize("interval", [1, 100_000])
async def test_the_writer_applies_a_backlog_in_batches_between_other_tasks(
    tmp_path: Path, interval: int
) -> None:
    manager = _HeldManager(tmp_path / "job.checkpoint")
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    observer = _Counted()
    started = 0
    durable: list[asyncio.Task[None]] = []

    async def process(item: WorkItem) -> int:
        nonlocal started
        started += 1
        if started == 1:  # a flush at once, whatever the interval: one note made durable
            durable.append(asyncio.create_task(pipeline.note_durably("test", "k", 1)))
        if started == _PILED:
            manager.release.set()
        return item.size

    items = [WorkItem(f"p/{i:06d}", 1) for i in range(_PILED + 10)]
    pipeline = Pipeline(
        manager=manager, state=state, concurrency=4, interval=interval, observer=observer
    )
    seen: list[int] = []
    try:
        run = asyncio.create_task(pipeline.run(_pages(items), process))
        await manager.release.wait()
        while not run.done():  # another task of the loop: what it sees between its turns
            seen.append(observer.done)
            await asyncio.sleep(0)
        await run
    finally:
        manager.close()
    assert pipeline.result.done_files == len(items) and not pipeline.result.failed
    steps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(steps) <= 5_000, f"the writer applied {max(steps)} events in one turn"


class _Flushes(NullObserver):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def on_flush(self, processed: int) -> None:
        self.batches.append(processed)


async def test_a_writer_that_never_catches_up_still_flushes_every_few_batches(
    tmp_path: Path,
) -> None:
    """Workers that complete faster than the writer applies (items that cost nothing) keep a
    backlog queued for good: the flush waited for an empty queue (or 30 s), and a 1M-object
    benchmark run wrote its checkpoint twice, at its start and its end, at interval 1."""
    manager = CheckpointManager(tmp_path / "job.checkpoint")
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    observer = _Flushes()

    async def process(item: WorkItem) -> int:
        await asyncio.sleep(0)
        return item.size

    items = [WorkItem(f"p/{i:06d}", 1) for i in range(200_000)]
    pipeline = Pipeline(manager=manager, state=state, concurrency=64, interval=1, observer=observer)
    try:
        await pipeline.run(_pages(items), process)
    finally:
        manager.close()
    assert pipeline.result.done_files == len(items)
    assert max(observer.batches) <= 20_000, observer.batches[:20]
