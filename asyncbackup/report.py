"""The outcome of a run: ``BackupReport``, and the conclusion every kind of backup shares
(archive or delete a completed checkpoint, the completion log entry)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from .checkpoint import CheckpointState, now_iso, remedy
from .checkpoint_manager import CheckpointManager
from .checkpoint_tool import prune_archives
from .config import OnComplete
from .errors import CheckpointError
from .filemodes import private_opener
from .pipeline import PipelineResult

log = logging.getLogger("asyncbackup")

Status = Literal["completed", "completed_with_errors", "stopped"]


@dataclass(frozen=True, slots=True)
class BackupReport:
    """The outcome of one run.

    ``processed_files`` / ``processed_bytes`` / ``errors`` are the checkpoint's (the whole job,
    earlier runs included); ``copied_files`` / ``copied_bytes`` are this run's alone;
    ``skipped_files`` were already done (per checkpoint, or unchanged at the destination),
    ``unchanged_files`` of them found identical at the destination by this run;
    ``source_deleted_files`` were listed, then deleted from the source before their copy
    (left out of the job: not copied, not errors); ``filtered_files`` and
    ``class_excluded_files`` are in the source, but this run's listing left them out of the
    job (``--include``/``--exclude``, ``--exclude-storage-class``). A GitHub run's
    ``repositories`` are those its listing kept, ``repositories_left_out`` those its filters
    left out (``--include``, ``--exclude``, ``--skip-forks``, ``--skip-archived``); None
    for an S3 run.
    """

    status: Status
    processed_files: int
    processed_bytes: int
    total_files: int
    total_bytes: int
    copied_files: int
    copied_bytes: int
    skipped_files: int
    unchanged_files: int
    errors: dict[str, str]
    duration: float
    checkpoint_path: Path
    archived_checkpoint: Path | None = None
    resumed: bool = False
    failed_this_run: dict[str, str] = field(default_factory=dict)
    source_deleted_files: int = 0
    filtered_files: int = 0
    class_excluded_files: int = 0
    repositories: int | None = None
    repositories_left_out: int | None = None

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "completed_with_errors": 1, "stopped": 130}[self.status]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        out["checkpoint_path"] = str(self.checkpoint_path)
        out["archived_checkpoint"] = (
            str(self.archived_checkpoint) if self.archived_checkpoint else None
        )
        out["exit_code"] = self.exit_code
        return out


def conclude(
    manager: CheckpointManager,
    state: CheckpointState,
    result: PipelineResult,
    *,
    on_complete: OnComplete,
    resumed: bool,
    duration: float,
    keep_archives: int | None = None,
) -> BackupReport:
    """Decide the status; archive or delete the checkpoint of a completed job, and remove
    all but its ``keep_archives`` newest archives (blocking)."""
    archived: Path | None = None
    status: Status
    if result.stopped or not result.listing_complete:
        status = "stopped"
    elif state.errors:
        status = "completed_with_errors"
    else:
        status = "completed"
        # The entry first: when the archive then fails, the checkpoint stays in place and the
        # next run completes it again (a second entry); archived first, a failed entry would
        # leave no way to write it but by hand.
        try:
            append_completion(manager.path, state, duration)
            archived = manager.finish(on_complete)
        except OSError as exc:
            raise CheckpointError(
                f"every file is copied, but the checkpoint directory {manager.path.parent} "
                f"cannot be written ({exc.strerror}), so the checkpoint was not archived: "
                f"{remedy(exc)}, then run the same command again to complete it (it copies "
                "nothing again)"
            ) from exc
        log_completion(manager.path, state, duration)
        if archived is not None and keep_archives is not None:
            prune_archives(manager.path, keep_archives, just_made=archived)
    return BackupReport(
        status=status,
        processed_files=state.processed_files,
        processed_bytes=state.processed_bytes,
        total_files=state.total_files,
        total_bytes=state.total_bytes,
        copied_files=result.done_files,
        copied_bytes=result.done_bytes,
        skipped_files=result.skipped_files,
        unchanged_files=result.unchanged_files,
        errors=dict(state.errors),
        duration=duration,
        checkpoint_path=manager.path,
        archived_checkpoint=archived,
        resumed=resumed,
        failed_this_run=dict(result.failed),
        source_deleted_files=result.source_deleted_files,
    )


def log_completion(path: Path, state: CheckpointState, duration: float) -> None:
    """The completion's log line (its JSON line: ``append_completion``)."""
    log.info(
        "backup %s complete: %d files, %d bytes from %s/%s to s3://%s in %.1fs",
        state.backup_id,
        state.processed_files,
        state.processed_bytes,
        state.source_bucket,
        state.source_path,
        state.dest_bucket,
        duration,
    )


def append_completion(path: Path, state: CheckpointState, duration: float) -> None:
    """The completion entry: a JSON line in ``completions.log`` beside the checkpoint."""
    entry = {
        "backup_id": state.backup_id,
        "completed": now_iso(),
        "source_bucket": state.source_bucket,
        "source_path": state.source_path,
        "dest_bucket": state.dest_bucket,
        "files": state.processed_files,
        "bytes": state.processed_bytes,
        "seconds": round(duration, 3),
    }
    line = orjson.dumps(entry) + b"\n"
    fd = private_opener(path.parent / "completions.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        # other jobs' runs append to the same log: none may come between the size taken
        # here and a truncation back to it
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            # A disk that took part of the line only (the room left in its last block):
            # never leave it for the next completion's line to be glued to.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)
