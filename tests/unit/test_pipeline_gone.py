"""An object deleted from the source after it was listed (``SourceGone``): out of the map and
the totals, in memory and in the checkpoint on disk while the run goes on (a SIGKILL then
must not leave it pending, or counted in a total it is not in)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest

from asyncbackup.checkpoint import CheckpointState, load_checkpoint
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.pipeline import Pipeline, SourceGone, WorkItem
from asyncbackup.progress import NullObserver


class _Totals(NullObserver):
    """An observer keeping what a progress display would show; ``shrunk`` is set by the
    first flush after the totals went down."""

    def __init__(self) -> None:
        self.files = self.bytes = self.done = self.most = 0
        self.flushed = asyncio.Event()
        self.shrunk = asyncio.Event()

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        self.files += files
        self.bytes += size
        self.most = max(self.most, self.files)

    def on_done(self, key: str, size: int) -> None:
        self.done += 1

    def on_flush(self, processed: int) -> None:
        self.flushed.set()
        if self.files < self.most:
            self.shrunk.set()


async def _pages(items: Sequence[WorkItem]) -> AsyncIterator[Sequence[WorkItem]]:
    yield items


async def test_a_deleted_object_leaves_the_map_and_totals_and_the_file_on_disk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "job.checkpoint"
    manager = CheckpointManager(path)
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    # done by earlier runs: a file the journal's lines stay small beside
    state.files = {f"q/{i:05d}": True for i in range(5000)}
    state.processed_files = 5000
    # an error of an earlier run, which must go with the file
    state.files["p/gone"] = False
    state.errors["p/gone"] = "InternalError: earlier"
    release = asyncio.Event()
    totals = _Totals()

    async def process(item: WorkItem) -> int:
        if item.key == "p/gone":
            await totals.flushed.wait()  # after the first flush, which writes the whole file
            raise SourceGone(item.key)
        if item.key == "p/last":
            await release.wait()  # the run holds here while the file on disk is read
        return item.size

    items = [WorkItem("p/a", 10), WorkItem("p/gone", 20), WorkItem("p/last", 30)]
    pipeline = Pipeline(manager=manager, state=state, concurrency=1, interval=1, observer=totals)
    try:
        run = asyncio.create_task(pipeline.run(_pages(items), process))
        await asyncio.wait_for(totals.shrunk.wait(), 10)
        # What a SIGKILL now would leave: the file and its journal, loaded as a resume does.
        on_disk = load_checkpoint(path).state
        assert "p/gone" not in on_disk.files and "p/gone" not in on_disk.errors
        assert on_disk.files["p/a"] is True and on_disk.files["p/last"] is False
        assert (on_disk.total_files, on_disk.total_bytes) == (2, 40)
        assert on_disk.processed_files == 5001
        # the JSON file alone (what jq reads) does not list it either
        assert "p/gone" not in orjson.loads(path.read_bytes())["files"]
        release.set()
        await asyncio.wait_for(run, 10)
    finally:
        manager.close()
    assert pipeline.result.source_deleted_files == 1
    assert pipeline.result.listing_complete and not pipeline.result.failed
    assert (state.total_files, state.total_bytes, state.processed_files) == (2, 40, 5002)
    assert "p/gone" not in state.files and state.errors == {}
    assert (totals.files, totals.bytes, totals.done) == (2, 40, 2)


@pytest.mark.parametrize("deleted", [10, 11])
async def test_the_line_about_more_deletions_comes_only_with_more(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, deleted: int
) -> None:
    """The first ten deletions are logged one a line; the line saying the rest go to debug
    level came with the tenth, so a run with exactly ten said more were deleted than were."""
    path = tmp_path / "job.checkpoint"
    manager = CheckpointManager(path)
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})

    async def process(item: WorkItem) -> int:
        raise SourceGone(item.key)

    items = [WorkItem(f"p/{i:02d}", 1) for i in range(deleted)]
    pipeline = Pipeline(manager=manager, state=state, concurrency=1, interval=100)
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncbackup"):
            await pipeline.run(_pages(items), process)
    finally:
        manager.close()
    assert pipeline.result.source_deleted_files == deleted
    shown = [r for r in caplog.records if "left out of the job" in r.getMessage()]
    assert [r.levelno for r in shown] == [logging.INFO] * 10
    more = [r for r in caplog.records if "more objects were deleted" in r.getMessage()]
    assert len(more) == (deleted > 10)
