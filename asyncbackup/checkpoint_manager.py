"""The checkpoint of a run: loaded or made at its start, written as it goes (journal appends,
compactions), archived or removed at its end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .atomicfile import stamped, write_atomic, write_atomic_pieces, written_file
from .checkpoint import (
    CheckpointState,
    despite_journal,
    load_checkpoint,
    now_iso,
    read_checkpoint,
    remedy,
    same_file,
)
from .checkpoint_identity import check_identity, same_job
from .checkpoint_lock import CheckpointLock
from .errors import (
    CheckpointCorruptError,
    CheckpointError,
)
from .filemodes import make_folders
from .journal import (
    Changes,
    JournalFormatError,
    JournalWriter,
    journal_path,
    parse_journal,
    read_journal,
)

T = TypeVar("T")

log = logging.getLogger("asyncbackup")


async def in_thread_to_the_end(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread(func, ...)`` that, cancelled, waits for ``func`` to end before the
    cancellation goes on. For the steps of a run that change the checkpoint's files (loading
    it, archiving it at the end): they are over before the caller's ``close()`` releases the
    lock, so a run of the job started at once never has them change its files."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-step") as pool:
        return await _to_the_end(pool.submit(func, *args, **kwargs), quiet=True)


async def _to_the_end(future: concurrent.futures.Future[T], *, quiet: bool = False) -> T:
    """``future``'s result. Cancelled meanwhile (again and again): wait for it to end, then go
    on with the cancellation - or raise its own failure instead, unless ``quiet``. The wait
    leaves the event loop free: a program embedding ``run_backup`` has other work on it (other
    runs, a health endpoint), which a blocking wait held up for as long as the step took."""
    waiting = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        await _until_done(waiting)
        with contextlib.suppress(Exception) if quiet else contextlib.nullcontext():
            future.result()
        raise


async def _until_done(waiting: asyncio.Future[Any]) -> bool:
    """Until ``waiting`` is done, whatever cancellations come meanwhile; whether one came."""
    cancelled = False
    while not waiting.done():
        try:
            await asyncio.wait([waiting])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


class CheckpointManager:
    """Owns one checkpoint file, and its journal, for the length of a run.

    ``flush()`` / ``flush_async()`` compact: the whole state to the JSON file, the journal
    removed. ``save_async()`` appends a batch of changes to the journal, or compacts when the
    journal has outgrown ``compact_ratio`` of the JSON file (at least ``compact_min_bytes``)
    or is ``compact_every`` seconds old. Every write runs in one thread, in order.
    """

    def __init__(
        self,
        path: Path,
        *,
        compact_ratio: float = 0.5,
        compact_min_bytes: int = 1 << 20,
        compact_every: float = 300.0,
    ) -> None:
        self.path = path
        self.lock = CheckpointLock(path)
        self.journal = JournalWriter(journal_path(path))
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.compact_every = compact_every
        self.flushes = 0  # journal appends and compactions
        self.compactions = 0
        self._base: str | None = None  # SHA-256 of the JSON file this manager last wrote
        self._json_size = 0
        self._written: os.stat_result | None = None  # the JSON file as this manager left it
        self._edit_warned = False
        self._compacted_at = time.monotonic()
        self._leftover_valid: int | None = None  # of a crashed run's journal, as loaded
        # One thread writes, so writes land in the order they were asked for, a flush
        # started before a cancellation included.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")

    def open(self) -> None:
        """Create the directory, take the lock, and remove the temporary files of writes a
        killed run left (only the lock's holder writes this checkpoint)."""
        try:
            make_folders(self.path.parent)
            self.lock.acquire()
            # write_atomic_pieces' names, beside the file written: the one a link points to
            for target in {self.path, written_file(self.path)}:
                prefix, suffix = f".{target.name}.", ".tmp"
                with contextlib.suppress(FileNotFoundError):  # a link to a folder not made yet
                    for leftover in target.parent.iterdir():
                        name = leftover.name
                        pid = name[len(prefix) : -len(suffix)]
                        if name.startswith(prefix) and name.endswith(suffix) and pid.isdigit():
                            leftover.unlink(missing_ok=True)
        except BaseException as exc:
            # Not kept by a failed open: the same process could never run again.
            self.lock.release()
            if not isinstance(exc, OSError):
                raise
            raise CheckpointError(
                f"cannot use checkpoint directory {self.path.parent}: {exc.strerror}; "
                f"{remedy(exc)}, or give the backup another --checkpoint-dir"
            ) from exc

    async def open_async(self) -> None:
        """``open()`` in the writer thread, the event loop free meanwhile. Cancelled while it
        runs, this waits for it to end before the cancellation goes on, so that the
        ``close()`` the caller registered first releases the lock it took: a lock left behind
        would refuse every later run of the job in this process ("in use by another run")."""
        # quiet: open() releases the lock itself when it fails
        await _to_the_end(self._writer.submit(self.open), quiet=True)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.journal.close()
        self.lock.release()

    def load_or_create(
        self,
        *,
        source_bucket: str,
        source_path: str,
        dest_bucket: str,
        config: dict[str, Any],
        ignore_existing: bool,
        carry: Iterable[str] = (),
    ) -> tuple[CheckpointState, bool]:
        """The state to run with, and whether it was resumed from an existing file.

        The journal of a run that crashed is folded into the JSON file at once. With
        ``ignore_existing``, the top-level sections named in ``carry`` (the multipart uploads a
        crashed run left, still to abort) go from the ignored checkpoint of the same job into
        the new one.
        """
        carried: dict[str, Any] = {}
        if self.path.exists():
            if ignore_existing:
                ignored = self._set_aside()
                if ignored is not None and same_job(
                    ignored, source_bucket, source_path, dest_bucket
                ):
                    carried = {name: ignored.extra[name] for name in carry if name in ignored.extra}
            else:
                loaded = load_checkpoint(self.path)
                state = loaded.state
                check_identity(self.path, state, source_bucket, source_path, dest_bucket)
                if loaded.journal:
                    self._leftover_valid = loaded.journal_valid_bytes
                    self.flush(state)
                return state, True
        elif carry:
            carried = self._orphaned(carry)
        state = CheckpointState.new(
            source_bucket=source_bucket,
            source_path=source_path,
            dest_bucket=dest_bucket,
            config=config,
        )
        state.extra.update(carried)
        self.flush(state)
        return state, False

    def _orphaned(self, carry: Iterable[str]) -> dict[str, Any]:
        """The sections named in ``carry`` that a journal records whose JSON file is gone
        (removed or moved aside by hand after a crash, "to start over"): the multipart
        uploads the crashed run had in flight, recorded there alone, still to abort. The new
        checkpoint's first write then removes the journal."""
        try:
            data = self.journal.path.read_bytes()
        except OSError:
            return {}
        extra: dict[str, Any] = {}
        with contextlib.suppress(JournalFormatError):  # a corrupt one: what could be read
            base = parse_journal(data).base_sha256
            if base is not None:
                read_journal(data, ({}, {}, extra), base)
        carried = {name: extra[name] for name in carry if name in extra}
        if carried:
            log.info(
                "%s is left without its checkpoint file (removed or moved aside after a "
                "crash): its progress is dropped, the multipart uploads it records are aborted",
                self.journal.path,
            )
        return carried

    def _set_aside(self) -> CheckpointState | None:
        """Keep an ignored checkpoint (and its journal) beside the new one; return its state
        (None when the JSON file is corrupt)."""
        ignored: CheckpointState | None = None
        try:
            ignored = read_checkpoint(self.path)
            suffix = "ignored"
        except CheckpointCorruptError:
            suffix = "corrupt"
            ignored = despite_journal(self.path)
        aside = stamped(self.path.parent, f"{self.path.name}.{suffix}-")
        if self.journal.path.exists():
            self.journal.path.replace(journal_path(aside))
        self._move_to(aside)
        return ignored

    # -- writing (in the writer thread) -------------------------------------------------

    def _compact(self, state: CheckpointState, touch: bool = True) -> None:
        if touch:
            state.last_update = now_iso()
        self.flushes += 1
        self.compactions += 1
        try:
            self._make_again_if_removed()
            self._warn_if_edited()
            self._base = write_atomic_pieces(
                self.path, state.iter_json(), before_replace=self._journal_superseded
            )
            self.journal.remove()
            self._written = self.path.stat()
            self._json_size = self._written.st_size
        except OSError as exc:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {exc.strerror}; the previous version "
                f"is intact - {remedy(exc)}, then run again to resume"
            ) from exc
        self._compacted_at = time.monotonic()

    def _make_again_if_removed(self) -> None:
        """The checkpoint's folder, JSON file or journal removed during the run (a clean-up
        script, ``rm -rf``): the folder made again, and the lock taken again (its file may
        be gone too), for the compaction to write the whole state where it was."""
        removed = self.journal.removed() or (self._base is not None and not self.path.exists())
        if not self.path.parent.is_dir():
            make_folders(self.path.parent)
            removed = True
        if self.lock.retake_if_removed() or removed:
            log.warning(
                "checkpoint %s (or its folder) was removed during the run; it is written "
                "again whole, with this run's progress",
                self.path,
            )

    def _warn_if_edited(self) -> None:
        """Say so, once, when the file changed since this run last wrote it: an edit made
        while the run holds the checkpoint (an editor, ``jq ... > FILE``), which this write
        overwrites with the run's own state."""
        if self._written is None or self._edit_warned:
            return
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return  # removed: ``_make_again_if_removed`` said so
        if not same_file(now, self._written):
            self._edit_warned = True
            log.warning(
                "checkpoint %s was changed while this run held it (an editor, jq > FILE): "
                "the run's own progress is written over the change; make it once the run "
                "is over (checkpoint show says whether one holds it)",
                self.path,
            )

    def _journal_superseded(self, sha256: str) -> None:
        """Before the new JSON file replaces the old: record in the journal that it did."""
        if not self.journal.is_open:
            valid, self._leftover_valid = self._leftover_valid, None
            if valid is None:
                try:
                    data = self.journal.path.read_bytes()
                except FileNotFoundError:
                    return
                try:
                    valid = parse_journal(data).valid_bytes
                except JournalFormatError:
                    valid = data.rfind(b"\n") + 1
            if valid == 0:
                return  # nothing in it to apply: removed after the replace
            self.journal.adopt(valid)
        self.journal.mark_compacted(sha256)

    def _append(self, state: CheckpointState, line: bytes) -> None:
        if self.journal.removed() or not self.path.exists():
            # the journal, the JSON file it continues or their folder was removed: a line
            # there would be read by nobody, or continue no file
            self._compact(state)
            return
        backup_id = state.backup_id
        self.flushes += 1
        try:
            if self.journal.is_open:
                self.journal.append(line)
            else:
                assert self._base is not None
                self.journal.start(backup_id, self._base, line)
        except OSError as exc:
            raise CheckpointError(
                f"cannot write checkpoint journal {self.journal.path}: {exc.strerror}; the "
                "checkpoint and its journal are intact up to the previous flush - "
                f"{remedy(exc)}, then run again to resume"
            ) from exc

    # -- the API ------------------------------------------------------------------------

    def flush(self, state: CheckpointState, *, touch: bool = True) -> None:
        """Compact now and wait, blocking (start-up, the end of a run, the checkpoint tool).

        Without ``touch``, ``last_update`` stays as it is: folding a journal is no update
        (it stays when the crashed run last recorded progress)."""
        self._writer.submit(self._compact, state, touch).result()

    async def flush_async(self, state: CheckpointState) -> None:
        """Compact without blocking the event loop; ordered after every earlier write.

        The state is serialised in the writer thread: nothing may change it until this returns.
        """
        await asyncio.wrap_future(self._writer.submit(self._compact, state))

    async def save_async(self, state: CheckpointState, changes: Changes) -> None:
        """Record ``changes`` (already applied to ``state``): a journal line, or a compaction.

        Appending costs the size of ``changes``, not of the state.
        """
        if self._base is None or self.compaction_due():
            await self.flush_async(state)
            return
        state.last_update = now_iso()
        line = self._encode(state, changes)
        await asyncio.wrap_future(self._writer.submit(self._append, state, line))

    def _encode(self, state: CheckpointState, changes: Changes) -> bytes:
        return changes.line(
            {
                "total_files": state.total_files,
                "processed_files": state.processed_files,
                "total_bytes": state.total_bytes,
                "processed_bytes": state.processed_bytes,
                "last_update": state.last_update,
            }
        )

    def compaction_due(self) -> bool:
        size = self.journal.size
        if not size:
            return False
        if size > max(self.compact_min_bytes, self.compact_ratio * self._json_size):
            return True
        return time.monotonic() - self._compacted_at >= self.compact_every

    async def flush_final(self, state: CheckpointState) -> None:
        """``flush_async()`` that completes even if the caller is cancelled meanwhile: then it
        waits for the write to land (the event loop free) before the cancellation goes on."""
        await _to_the_end(self._writer.submit(self._compact, state))

    async def settle(self) -> None:
        """Wait until every write asked for so far is done, or has failed, the event loop free.
        A cancellation meanwhile neither cuts the wait short nor is raised here (the caller
        has more to write first): it is made again, for the caller's next wait."""
        if await _until_done(asyncio.wrap_future(self._writer.submit(lambda: None))):
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the same request, not one more: asyncio.timeout counts them
                task.cancel()

    def finish(self, on_complete: str) -> Path | None:
        """Archive or delete the checkpoint of a completed backup; return the archive path."""
        self.journal.remove()  # gone already: the last flush compacted
        if on_complete == "delete":  # a link's file, not the link (``_move_to``)
            written_file(self.path).unlink(missing_ok=True)
            return None
        archive_dir = self.path.parent / "archive"
        make_folders(archive_dir)
        target = stamped(archive_dir, f"{self.path.name}.")
        self._move_to(target)
        return target

    def _move_to(self, target: Path) -> None:
        """Move the checkpoint file to ``target``. A link (an operator's, to other storage)
        stays, for the next run to write through: the file it points to moves, copied when it
        is on another file system (``target`` is beside the link, the file may not be)."""
        written = written_file(self.path)
        try:
            written.replace(target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            write_atomic(target, written.read_bytes())
            written.unlink()
