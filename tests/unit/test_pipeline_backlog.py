"""The listing waits for the checkpoint writer: while a flush is slow (the first one writes the
whole map; a checkpoint on a slow or hung disk), pages already listed wait in the writer's
queue, and a resume whose objects are mostly done kept listing page after page into that queue
at the listing's speed - with a 10M-key bucket, all of them in memory at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from asyncbackup.checkpoint import CheckpointState
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.journal import Changes
from asyncbackup.pipeline import Pipeline, WorkItem

_PAGES = 60
_PAGE = 1000


class _HeldManager(CheckpointManager):
    """Every whole-file flush waits until ``release`` is set: a slow disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def flush_async(self, state: CheckpointState) -> None:
        self.held.set()
        await self.release.wait()
        await super().flush_async(state)


async def test_the_listing_waits_while_a_slow_flush_holds_the_pages_it_listed(
    tmp_path: Path,
) -> None:
    manager = _HeldManager(tmp_path / "job.checkpoint")
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    keys = [f"p/{i:08d}" for i in range(_PAGES * _PAGE)]
    state.files = dict.fromkeys(keys[1:], True)  # a resume: all done but the first
    state.processed_files = len(keys) - 1
    fetched = 0

    async def listing() -> AsyncIterator[Sequence[WorkItem]]:
        nonlocal fetched
        for start in range(0, len(keys), _PAGE):
            await asyncio.sleep(0)  # a round trip
            fetched += 1
            yield [WorkItem(key, 1) for key in keys[start : start + _PAGE]]

    async def process(item: WorkItem) -> int:
        # a multipart upload about to start: its record must be on disk first (a flush)
        await pipeline.note_durably("uploads", item.key, "id")
        return item.size

    pipeline = Pipeline(manager=manager, state=state, concurrency=4, interval=100)
    try:
        run = asyncio.create_task(pipeline.run(listing(), process))
        await asyncio.wait_for(manager.held.wait(), 10)
        for _ in range(5000):  # the loop's other tasks run meanwhile: the listing too
            await asyncio.sleep(0)
        listed_while_held = fetched
        manager.release.set()
        await asyncio.wait_for(run, 60)
    finally:
        manager.close()
    assert fetched == _PAGES
    assert pipeline.result.done_files == 1 and pipeline.result.skipped_files == len(keys) - 1
    assert pipeline.result.listing_complete
    # a bounded number of pages ahead of the writer, not the whole bucket
    assert listed_while_held <= 20, f"{listed_while_held} of {_PAGES} pages listed meanwhile"


async def test_the_workers_wait_while_a_slow_flush_holds_their_completions(
    tmp_path: Path,
) -> None:
    """Each copy the workers complete is an event queued for the writer: with the checkpoint
    on a hung disk they went on copying the whole job, every completion held in memory (and
    recorded nowhere)."""
    manager = _HeldManager(tmp_path / "job.checkpoint")
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    items = [WorkItem(f"p/{i:08d}", 1) for i in range(200_000)]
    started = 0

    async def listing() -> AsyncIterator[Sequence[WorkItem]]:
        for start in range(0, len(items), _PAGE):
            await asyncio.sleep(0)
            yield items[start : start + _PAGE]

    async def process(item: WorkItem) -> int:
        nonlocal started
        started += 1
        if started == 1:  # a flush at once: one note made durable
            await pipeline.note_durably("uploads", item.key, "id")
        await asyncio.sleep(0)
        return item.size

    pipeline = Pipeline(manager=manager, state=state, concurrency=8, interval=100)
    try:
        run = asyncio.create_task(pipeline.run(listing(), process))
        await asyncio.wait_for(manager.held.wait(), 10)
        for _ in range(300_000):
            await asyncio.sleep(0)
            if run.done():
                break
        started_while_held = started
        manager.release.set()
        await asyncio.wait_for(run, 120)
    finally:
        manager.close()
    assert pipeline.result.done_files == len(items) and not pipeline.result.failed
    assert started_while_held <= 70_000, f"{started_while_held} copies made meanwhile"


class _Batches(CheckpointManager):
    """Records the number of file entries of each journal line the writer asks for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    async def save_async(self, state: CheckpointState, changes: Changes) -> None:
        self.batches.append(len(changes.files))
        await super().save_async(state, changes)


async def test_objects_found_unchanged_are_recorded_in_batches_of_bounded_size(
    tmp_path: Path,
) -> None:
    """``--skip-existing``: an object identical at the destination is marked done as it is
    listed, no copy, no completion event. Those waited for the next completion to be
    flushed: a bucket that gained a few objects kept every unchanged one listed in between
    in one batch, encoded on the event loop as one journal line (10M keys: gigabytes)."""
    manager = _Batches(tmp_path / "job.checkpoint")
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    present = [WorkItem(f"p/b{i:08d}", 1, present=True) for i in range(50 * _PAGE)]
    first_done = asyncio.Event()

    async def listing() -> AsyncIterator[Sequence[WorkItem]]:
        yield [WorkItem("p/a", 1)]  # new: copied, the first flush (the whole file)
        await first_done.wait()
        for start in range(0, len(present), _PAGE):
            await asyncio.sleep(0)
            yield present[start : start + _PAGE]
        yield [WorkItem("p/c", 1)]  # new, at the end: its completion flushes

    async def process(item: WorkItem) -> int:
        first_done.set()
        return item.size

    pipeline = Pipeline(manager=manager, state=state, concurrency=2, interval=1)
    try:
        await asyncio.wait_for(pipeline.run(listing(), process), 60)
    finally:
        manager.close()
    assert pipeline.result.unchanged_files == len(present)
    assert pipeline.result.done_files == 2
    assert len(manager.batches) >= 2  # recorded as they come, in several journal lines
    assert max(manager.batches) <= 20_000, f"a journal line of {max(manager.batches)} files"
