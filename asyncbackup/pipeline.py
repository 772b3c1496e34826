"""The engine: lister -> bounded queue -> N workers -> events -> one checkpoint writer.

It knows nothing of S3 or GitHub: a run is a listing (pages of ``WorkItem``) and a
``process`` coroutine that copies one item durably and returns its size. One
``asyncio.TaskGroup`` owns every task; the queue between listing and workers is bounded, so
listing never runs ahead unbounded and memory stays flat however large the job.

Only the writer task changes the checkpoint state. It batches events and flushes after every
``interval`` processed items (and at least every ``max_age`` seconds while work completes), and
once more on completion, failure or cancellation. A flush appends the batch's changes to the
checkpoint's journal (its cost follows the batch, not the map); the first flush of a run and
the last compact - write the whole JSON file - as does the manager when the journal grows.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .checkpoint import CheckpointState
from .checkpoint_manager import CheckpointManager
from .errors import FatalRunError, ObjectError
from .journal import Changes
from .loglimit import FirstFew
from .progress import GuardedObserver, NullObserver, Observer

log = logging.getLogger("asyncbackup")

T = TypeVar("T")

_STALE_SHOWN = 3  # stale errors named in the line that drops them
# Events the writer applies in one turn of the loop (a listed page counts as its items): a
# backlog piled up during a slow flush is applied in batches of a few milliseconds each,
# with the listing and the workers running between them.
_DRAIN_BATCH = 2048
# While a backlog is queued, a flush waits for its last batch, but for no more than this
# many events: a writer that never catches up (items that cost nothing) still flushes.
_FLUSH_DEFERRED_MAX = 8 * _DRAIN_BATCH
# Listed items the writer has not applied yet, at most, before the listing waits for it: a
# page waits in the writer's queue while a flush is slow (the first writes the whole map),
# and a resume whose objects are done does not wait for the workers, so it listed its whole
# bucket into that queue meanwhile. The listing goes on once half of them are applied.
_LISTED_AHEAD = _FLUSH_DEFERRED_MAX


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One thing to copy: an object key (or artifact name), its size and version tag."""

    key: str
    size: int
    etag: str = ""
    present: bool = False  # already identical at the destination (--skip-existing)
    #: at the destination with another size or ETag (--skip-existing): a file the checkpoint
    #: marks done was changed at the source since it was copied, and is copied again
    changed: bool = False


def done_before(files: Mapping[str, bool], item: WorkItem) -> bool:
    """Whether the checkpoint's ``files`` mark ``item`` done and the destination's copy has
    not changed since (``--skip-existing`` sees that): it is skipped, not copied."""
    return files.get(item.key) is True and not item.changed


@dataclass(frozen=True, slots=True)
class _Listed:
    items: Sequence[WorkItem]


@dataclass(frozen=True, slots=True)
class _Done:
    key: str
    size: int
    listed: int  # the size the listing gave (another version may have been copied)


@dataclass(frozen=True, slots=True)
class _Failed:
    key: str
    error: str


@dataclass(frozen=True, slots=True)
class _Gone:
    key: str
    listed: int  # the size the listing gave


@dataclass(frozen=True, slots=True)
class _Note:
    section: str
    key: str
    value: Any
    flushed: asyncio.Future[None] | None = None  # resolved once the note is on disk


class _ListingDone:
    pass


class _Stop:
    pass


_Event = _Listed | _Done | _Failed | _Gone | _Note | _ListingDone | _Stop


class SourceGone(Exception):
    """Raised by ``process``: the item is no longer in the source (deleted after it was
    listed). It leaves the job as a complete listing would have left it out: not copied,
    not an error, out of the totals."""


@dataclass(slots=True)
class PipelineResult:
    """What one run did (not the totals of the whole checkpoint)."""

    done_files: int = 0
    done_bytes: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0
    unchanged_files: int = 0
    source_deleted_files: int = 0  # listed, then deleted from the source before their copy
    failed: dict[str, str] = field(default_factory=dict)
    listed_files: int = 0
    listed_bytes: int = 0
    listing_complete: bool = False
    stopped: bool = False


Process = Callable[[WorkItem], Awaitable[int]]


def _resolve(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


async def close_listing(listing: AsyncIterator[Any]) -> None:
    """Close ``listing`` when it is an async generator (its ``finally`` runs, its tasks end);
    a listing left unfinished would otherwise run on until it is garbage-collected."""
    close = getattr(listing, "aclose", None)
    if close is not None:
        await close()


async def listing_or_stop(
    pages: AsyncIterator[Sequence[WorkItem]], what: str, advice: str
) -> AsyncIterator[Sequence[WorkItem]]:
    """``pages``, with a failure of the listing made the run's: a listing cannot skip a page
    the way a copy skips an object, so the run stops (the checkpoint valid) with a
    ``FatalRunError`` that says ``what`` could not be listed and the ``advice``, rather than
    end with the bare object error as if an object had failed."""
    try:
        async for page in pages:
            yield page
    except ObjectError as exc:
        raise FatalRunError(
            f"stopping: cannot list {what} ({exc}); {advice}, then run again to resume"
        ) from exc
    finally:
        await close_listing(pages)


class StartedListing:
    """``listing`` with its first page asked for at once, in a task of its own, rather than
    when the run first reads it: its round trips (the fast path's new connection, the first
    page) overlap what the run does before it reads (the upload ``--skip-existing`` starts to
    ask the destination's encryption, the copiers made, worker processes started), and the
    two listings ``--skip-existing`` walks side by side start together. The page waits for
    its reader: nothing is compared or copied sooner, and a failure of the listing is raised
    to the reader, where it was. Read from one task at a time, as any listing; ``aclose``
    ends the task and closes the listing, read or not (the run's exit stack calls it: a run
    that fails before it reads must not leave the task behind)."""

    def __init__(self, listing: AsyncIterator[Sequence[WorkItem]]) -> None:
        self._listing = listing
        # a task of its own, not the run's TaskGroup: that group is the pipeline's, made
        # later; this one ends with the page, or in aclose
        self._first: asyncio.Task[Sequence[WorkItem] | None] | None = asyncio.ensure_future(
            _first_page(listing)
        )

    def __aiter__(self) -> StartedListing:
        return self

    async def __anext__(self) -> Sequence[WorkItem]:
        if self._first is None:
            return await anext(self._listing)
        first = self._first
        page = await first
        self._first = None  # read: the listing goes on from the reader's task
        if page is None:
            raise StopAsyncIteration
        return page

    async def aclose(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            await asyncio.wait({first})
            if not first.cancelled():
                first.exception()  # the run ends for another reason: this one is not said
        await close_listing(self._listing)


async def _first_page(listing: AsyncIterator[Sequence[WorkItem]]) -> Sequence[WorkItem] | None:
    return await anext(listing, None)


def primary_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one failure to report from a task group: the first that is not a cancellation."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if not isinstance(leaf, asyncio.CancelledError):
            return leaf
    return leaves[0]


async def for_each_bounded(
    items: Sequence[T], limit: int, work: Callable[[T], Awaitable[None]]
) -> None:
    """``work`` on every item, ``limit`` at a time, in order; the first failure cancels the
    rest and is raised itself (``primary_error``), not in a group."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await work(item)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(limit, len(items))):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        raise primary_error(group) from None


class Pipeline:
    def __init__(
        self,
        *,
        manager: CheckpointManager,
        state: CheckpointState,
        concurrency: int,
        interval: int,
        max_age: float = 30.0,
        observer: Observer | None = None,
        stop: asyncio.Event | None = None,
        exact_sizes: bool = True,
        forget_unlisted: bool = False,
    ) -> None:
        """``exact_sizes``: the listing's sizes are those ``process`` returns (S3), so the
        complete listing sets ``processed_bytes``; False when they are estimates (GitHub): it
        is then the bytes copied, carried over from the loaded checkpoint and added to.

        ``forget_unlisted``: a complete listing is the whole source as it is now (S3, GitHub), so
        the files of the checkpoint it did not list (deleted from the source since an earlier
        run) leave the map: the job's counts are of the files the source has."""
        self.manager = manager
        self.state = state
        self.concurrency = concurrency
        self.interval = interval
        self.max_age = max_age
        self.observer: Observer = GuardedObserver(observer) if observer else NullObserver()
        self.stop = stop or asyncio.Event()
        self.exact_sizes = exact_sizes
        self.forget_unlisted = forget_unlisted
        self.result = PipelineResult()
        self._work: asyncio.Queue[WorkItem | None] = asyncio.Queue(maxsize=concurrency * 4)
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._listed_unapplied = 0  # items of the ``_Listed`` events queued
        self._listing_room = asyncio.Event()  # set while the listing may go on
        self._listing_room.set()
        self._since_flush = 0
        self._last_flush = time.monotonic()
        self._stale_errors = set(state.errors)
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._base_total = (state.total_files, state.total_bytes)
        self._changes = Changes()  # what the next journal line records
        self._gone_lines = FirstFew(
            logging.INFO,
            "more objects were deleted from the source: logged at debug level (--debug)",
        )
        # The first flush writes the whole file: it holds whatever the caller changed in the
        # state before the run (the config, notes it dropped), which no journal line records.
        self._compacted = False

    async def run(self, listing: AsyncIterator[Sequence[WorkItem]], process: Process) -> None:
        """Copy everything ``listing`` yields that the checkpoint does not mark done."""
        try:
            await self._run(listing, process)
        except BaseExceptionGroup as group:
            raise primary_error(group) from None

    async def _run(self, listing: AsyncIterator[Sequence[WorkItem]], process: Process) -> None:
        try:
            async with asyncio.TaskGroup() as outer:
                outer.create_task(self._writer())
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._lister(listing))
                        for _ in range(self.concurrency):
                            tg.create_task(self._worker(process))
                finally:
                    self._events.put_nowait(_Stop())
        finally:
            # A compaction a cancellation interrupted may still be reading the state in the
            # writer thread: let it end before the state changes again.
            await self.manager.settle()
            # Whatever ended the run, the events already sent reach the file.
            self._drain_events()
            waiters, self._flush_waiters = self._flush_waiters, []
            # The final compaction; the loop keeps running (a second cancellation waits
            # for the write).
            await self.manager.flush_final(self.state)
            self._changes = Changes()
            self.observer.on_flush(self._since_flush)
            self._since_flush = 0
            _resolve(waiters)
            self.result.stopped = self.stop.is_set()

    def note(self, section: str, key: str, value: Any) -> None:
        """Record ``value`` under the checkpoint's top-level ``section`` object, by ``key``.

        For state a source or sink must find again after a crash (multipart upload ids,
        ETags for conditional requests). ``None`` removes the key. Written with the next flush.
        """
        self._events.put_nowait(_Note(section, key, value))

    async def note_durably(self, section: str, key: str, value: Any) -> None:
        """``note()``, and return only once the checkpoint file holds it (forces a flush).

        For a record that must survive a SIGKILL, such as a multipart upload about to start.
        """
        flushed = asyncio.get_running_loop().create_future()
        self._events.put_nowait(_Note(section, key, value, flushed))
        await flushed

    # -- lister -------------------------------------------------------------------------

    async def _lister(self, listing: AsyncIterator[Sequence[WorkItem]]) -> None:
        files = self.state.files
        try:
            async for page in listing:
                if self.stop.is_set():
                    break
                self._listed_unapplied += len(page)
                self._events.put_nowait(_Listed(page))
                for item in page:
                    if item.present or done_before(files, item):
                        continue
                    if self.stop.is_set():
                        break
                    await self._work.put(item)
                if self._listed_unapplied > _LISTED_AHEAD:  # the writer is behind: wait
                    self._listing_room.clear()
                    await self._listing_room.wait()
            else:
                self._events.put_nowait(_ListingDone())
        finally:  # stopped or cancelled: the listing's requests end now, not when collected
            await close_listing(listing)
        # Not in a ``finally``: on failure or cancellation the workers are cancelled too,
        # and nobody would take these from a full queue.
        for _ in range(self.concurrency):
            await self._work.put(None)

    # -- workers ------------------------------------------------------------------------

    async def _worker(self, process: Process) -> None:
        while (item := await self._work.get()) is not None:
            if self.stop.is_set():
                continue  # drain without starting new work
            try:
                size = await process(item)
            except ObjectError as exc:
                self._events.put_nowait(_Failed(item.key, str(exc)))
            except SourceGone:
                self._events.put_nowait(_Gone(item.key, item.size))
            else:
                self._events.put_nowait(_Done(item.key, size, item.size))

    # -- the checkpoint writer ----------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            timeout = self.max_age if self._since_flush else None
            try:
                event = await asyncio.wait_for(self._events.get(), timeout)
            except TimeoutError:
                await self._flush()
                continue
            if self._apply(event):
                return
            if self._drain_events(_DRAIN_BATCH):
                return
            overdue = self._since_flush and time.monotonic() - self._last_flush >= self.max_age
            # Entries of the next journal line that no completion counts (objects found
            # unchanged as they are listed): a line of a bounded size, however rare the
            # completions between them.
            large = len(self._changes.files) >= _FLUSH_DEFERRED_MAX
            backlog = not self._events.empty()
            if backlog and self._since_flush < _FLUSH_DEFERRED_MAX and not overdue and not large:
                # A backlog: the loop's other tasks run before the next batch, and the flush
                # waits for the batches after it (one flush for them, up to a cap).
                await asyncio.sleep(0)
            elif overdue or large or self._since_flush >= self.interval or self._flush_waiters:
                await self._flush()
            elif backlog:
                # Not left to the queue's get: from Python 3.12 on, wait_for returns an item
                # already queued without letting any other task run.
                await asyncio.sleep(0)

    async def _flush(self) -> None:
        processed, self._since_flush = self._since_flush, 0
        waiters, self._flush_waiters = self._flush_waiters, []
        self._last_flush = time.monotonic()
        changes, self._changes = self._changes, Changes()
        if self._compacted:
            await self.manager.save_async(self.state, changes)
        else:
            # The writer task waits here, so the state holds still while it is serialised.
            await self.manager.flush_async(self.state)
            self._compacted = True
        _resolve(waiters)
        self.observer.on_flush(processed)

    def _drain_events(self, limit: float = float("inf")) -> bool:
        """Apply queued events (until about ``limit`` are applied); True once the stop
        marker has been seen."""
        applied = 0
        while applied < limit:
            try:
                event = self._events.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if self._apply(event):
                return True
            applied += len(event.items) if isinstance(event, _Listed) else 1
        return False

    def _apply(self, event: _Event) -> bool:
        state, result, changes = self.state, self.result, self._changes
        match event:
            case _Done(key, size, listed):
                if size != listed and self.exact_sizes:
                    # Replaced since it was listed, and the new version copied: the total is
                    # of what is copied, or the job would end with more (or fewer) bytes
                    # done than its total.
                    result.listed_bytes += size - listed
                    self._set_totals()
                if state.files.get(key) is not True:
                    state.processed_files += 1
                state.files[key] = changes.files[key] = True
                state.processed_bytes += size
                if state.errors.pop(key, None) is not None:
                    changes.errors[key] = None
                result.done_files += 1
                result.done_bytes += size
                self._since_flush += 1
                self.observer.on_done(key, size)
            case _Failed(key, error):
                if state.files.get(key) is True:
                    state.processed_files -= 1
                state.files[key] = changes.files[key] = False
                state.errors[key] = changes.errors[key] = error
                result.failed[key] = error
                self._since_flush += 1
                self.observer.on_failed(key, error)
            case _Gone(key, listed):
                self._apply_gone(key, listed)
            case _Note(section, key, value, flushed):
                if flushed is not None:
                    self._flush_waiters.append(flushed)
                changes.note(section, key, value)
                notes = self.state.extra.setdefault(section, {})
                if value is None:
                    notes.pop(key, None)
                    if not notes:
                        del self.state.extra[section]
                else:
                    notes[key] = value
            case _Listed(items):
                self._apply_listed(items)
                self._listed_unapplied -= len(items)
                if self._listed_unapplied <= _LISTED_AHEAD // 2:
                    self._listing_room.set()
            case _ListingDone():
                result.listing_complete = True
                self._set_totals()
                # Exact now, whatever the loaded figure: a file reset to false by hand was
                # counted once before and once more when redone (the map keeps no sizes).
                if self.exact_sizes:
                    state.processed_bytes = result.skipped_bytes + result.done_bytes
                if self.forget_unlisted:
                    self._forget_unlisted()
                self._drop_stale_errors()
                self.observer.on_listing_done()
            case _Stop():
                return True
        return False

    def _apply_gone(self, key: str, listed: int) -> None:
        """``key`` was deleted from the source after it was listed: out of the map and the
        totals, as if the listing had not seen it (the next complete listing will not)."""
        state, result = self.state, self.result
        if state.files.pop(key, None) is True:
            state.processed_files -= 1
        state.errors.pop(key, None)
        result.listed_files -= 1
        result.listed_bytes -= listed
        result.source_deleted_files += 1
        self._set_totals()
        # A journal line cannot remove a file: the next flush writes the whole file.
        self._compacted = False
        self._since_flush += 1
        self.observer.on_listed(-1, -listed, 0, 0)
        if self._gone_lines.level() == logging.DEBUG:
            log.debug("%s: deleted from the source since it was listed", key)
        else:
            log.info("%s: deleted from the source since it was listed; left out of the job", key)

    def _drop_stale_errors(self) -> None:
        """Drop the errors of files that failed before and are no longer in the source:
        nothing is left to copy. Said in one line (a deleted folder may hold thousands)."""
        stale = sorted(self._stale_errors)
        if not stale:
            return
        for key in stale:
            if self.state.errors.pop(key, None) is not None:
                self._changes.errors[key] = None
        shown = ", ".join(stale[:_STALE_SHOWN])
        more = f" and {len(stale) - _STALE_SHOWN:,} more" if len(stale) > _STALE_SHOWN else ""
        log.info(
            "dropping %d stale errors of files no longer in the source: %s%s",
            len(stale),
            shown,
            more,
        )

    def _set_totals(self) -> None:
        """The job's totals: the listing's once it is complete; until then at least the
        loaded checkpoint's (a resume's listing has not yet seen what it had)."""
        state, result = self.state, self.result
        if result.listing_complete:
            state.total_files, state.total_bytes = result.listed_files, result.listed_bytes
        else:
            state.total_files = max(self._base_total[0], result.listed_files)
            state.total_bytes = max(self._base_total[1], result.listed_bytes)

    def _forget_unlisted(self) -> None:
        """Drop the files the complete listing did not list: every listed one is in the map,
        moved to its end (``_apply_listed``), so those are the first ``len - listed`` ones.
        A key listed twice makes that fewer: never a listed one dropped."""
        state = self.state
        stale = len(state.files) - self.result.listed_files
        if stale <= 0:
            return
        for key in list(itertools.islice(state.files, stale)):
            if state.files.pop(key):
                state.processed_files -= 1
            self._changes.files.pop(key, None)
            state.errors.pop(key, None)  # its error too (``_stale_errors`` logs it)
        log.info("forgetting %d files no longer in the source", stale)
        # A journal line cannot remove a file: the next flush writes the whole file.
        self._compacted = False

    def _apply_listed(self, items: Sequence[WorkItem]) -> None:
        state, result, changes = self.state, self.result, self._changes
        new = size = skipped = skipped_bytes = 0
        files = state.files
        for item in items:
            self._stale_errors.discard(item.key)
            size += item.size
            done = files.get(item.key)
            if done is not None and self.forget_unlisted:
                # Listed again: to the end of the map, after every file not (yet) listed
                # (``_forget_unlisted``). The order of a dict is its insertion order.
                del files[item.key]
                files[item.key] = done
            if done is True and item.changed:
                # Done by an earlier run of this checkpoint, and the source changed since: a
                # job that keeps ending with errors is resumed night after night, and its
                # changed files would otherwise keep their first copy for good.
                files[item.key] = changes.files[item.key] = done = False
                state.processed_files -= 1
            if done is True:
                skipped += 1
                skipped_bytes += item.size
                # A done file has no error: one marked true by hand (the spec's way to skip
                # a problematic file) leaves its old error behind, which would keep the job
                # from ever completing.
                if state.errors.pop(item.key, None) is not None:
                    changes.errors[item.key] = None
            elif item.present:
                # Identical at the destination already: done without a copy.
                state.files[item.key] = changes.files[item.key] = True
                state.processed_files += 1
                state.processed_bytes += item.size
                if state.errors.pop(item.key, None) is not None:
                    changes.errors[item.key] = None
                result.unchanged_files += 1
                skipped += 1
                skipped_bytes += item.size
            else:
                new += 1
                if done is None:
                    state.files[item.key] = changes.files[item.key] = False
        result.listed_files += len(items)
        result.listed_bytes += size
        result.skipped_files += skipped
        result.skipped_bytes += skipped_bytes
        self._set_totals()
        self.observer.on_listed(new, size - skipped_bytes, skipped, skipped_bytes)
