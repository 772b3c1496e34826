"""``run_backup()``: build source and destination from the config and run the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from .checkpoint import CheckpointManager, CheckpointState, checkpoint_path, now_iso
from .config import BackupConfig
from .errors import FatalRunError, ObjectError
from .pipeline import Pipeline, WorkItem
from .progress import Observer
from .retry import FATAL_CODES, AdaptiveLimiter, RetryPolicy
from .s3client import check_bucket, open_client
from .sinks.s3 import S3Sink
from .sources.s3 import S3Source
from .staging import Staging

log = logging.getLogger("asyncbackup")

Status = Literal["completed", "completed_with_errors", "stopped"]
_OBJECT_ATTEMPTS = 3
_PART_BUFFER_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BackupReport:
    """The outcome of one ``run_backup()``.

    ``processed_files`` / ``processed_bytes`` / ``errors`` are the checkpoint's (the whole job,
    earlier runs included); ``copied_files`` / ``copied_bytes`` are this run's alone.
    """

    status: Status
    processed_files: int
    processed_bytes: int
    total_files: int
    total_bytes: int
    copied_files: int
    copied_bytes: int
    skipped_files: int
    errors: dict[str, str]
    duration: float
    checkpoint_path: Path
    archived_checkpoint: Path | None = None
    resumed: bool = False
    failed_this_run: dict[str, str] = field(default_factory=dict)

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


def _checkpoint_config(config: BackupConfig) -> dict[str, Any]:
    """What the checkpoint records of the configuration (never a secret)."""
    return {
        "cleanup": config.cleanup,
        "base_local_path": str(config.base_local_path),
        "checkpoint_interval": config.checkpoint_interval,
        "concurrency": config.concurrency,
        "checksum": config.checksum,
        "source_profile": config.source_profile,
        "dest_profile": config.dest_profile,
    }


async def run_backup(
    config: BackupConfig | None = None,
    *,
    observer: Observer | None = None,
    stop: asyncio.Event | None = None,
    **options: Any,
) -> BackupReport:
    """Copy everything under ``source_path`` of the source bucket to the destination bucket.

    Pass a ``BackupConfig``, or its fields as keyword arguments named like the CLI flags
    (``source_bucket=..., source_path=..., dest_bucket=..., base_local_path=...``).
    Setting ``stop`` asks the run to finish the objects in flight and return with status
    ``"stopped"``; cancelling the awaiting task stops at once. Either way the checkpoint is
    flushed and valid. Raises an ``AsyncBackupError`` when the run cannot start or go on.
    """
    if config is None:
        config = BackupConfig(**options)
    elif options:
        raise TypeError("pass either a BackupConfig or keyword options, not both")
    started = time.monotonic()
    path = checkpoint_path(
        base_local_path=config.base_local_path,
        source_bucket=config.source_bucket,
        source_path=config.source_path,
        checkpoint_dir=config.checkpoint_dir,
    )
    manager = CheckpointManager(path)
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.to_thread(manager.open)
        stack.callback(manager.close)
        source_client = await open_client(
            stack,
            role="source",
            profile=config.source_profile,
            endpoint_url=config.effective_source_endpoint,
            region=config.region,
            max_pool_connections=config.concurrency + 8,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        dest_client = await open_client(
            stack,
            role="destination",
            profile=config.dest_profile,
            endpoint_url=config.effective_dest_endpoint,
            region=config.region,
            max_pool_connections=config.concurrency * config.part_concurrency + 8,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        await check_bucket(source_client, config.source_bucket, role="source", write=False)
        await check_bucket(dest_client, config.dest_bucket, role="destination", write=True)
        state, resumed = await asyncio.to_thread(
            manager.load_or_create,
            source_bucket=config.source_bucket,
            source_path=config.source_path,
            dest_bucket=config.dest_bucket,
            config=_checkpoint_config(config),
            ignore_existing=config.ignore_checkpoints,
        )
        if resumed:
            log.info(
                "resuming %s: %d of %d files already done",
                path,
                state.processed_files,
                state.total_files,
            )
        staging = Staging(config.base_local_path, config.source_bucket)
        await asyncio.to_thread(staging.prepare)
        source = S3Source(
            source_client,
            config.source_bucket,
            RetryPolicy(config.max_attempts, limiter=AdaptiveLimiter(config.concurrency)),
        )
        sink = S3Sink(
            dest_client,
            config.dest_bucket,
            RetryPolicy(config.max_attempts, limiter=AdaptiveLimiter(config.concurrency * 4)),
            checksum=config.checksum,
            multipart_threshold=config.multipart_threshold,
            part_size_for=config.part_size_for,
            part_concurrency=config.part_concurrency,
            part_slots=asyncio.Semaphore(_part_slots(config)),
        )
        copier = _Copier(source, sink, staging, cleanup=config.cleanup)
        pipeline = Pipeline(
            manager=manager,
            state=state,
            concurrency=config.concurrency,
            interval=config.checkpoint_interval,
            max_age=config.checkpoint_max_age,
            observer=observer,
            stop=stop,
        )
        await pipeline.run(source.list(config.source_prefix), copier.copy)
        return await asyncio.to_thread(
            _conclude, config, manager, state, pipeline, resumed, time.monotonic() - started
        )
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


def _part_slots(config: BackupConfig) -> int:
    """Multipart parts in flight across all objects: each holds its part in memory, so bound
    their bytes (not their count) and memory stays flat whatever the concurrency."""
    return max(config.part_concurrency, _PART_BUFFER_BYTES // config.part_size)


class _Copier:
    """The ``process`` step of an S3 backup: fetch to staging, put, clean up."""

    def __init__(self, source: S3Source, sink: S3Sink, staging: Staging, *, cleanup: bool):
        self.source = source
        self.sink = sink
        self.staging = staging
        self.cleanup = cleanup

    async def copy(self, item: WorkItem) -> int:
        for attempt in range(1, _OBJECT_ATTEMPTS + 1):
            try:
                return await self._copy_once(item)
            except ObjectError as exc:
                if exc.code in FATAL_CODES:
                    raise FatalRunError(
                        f"stopping: {exc} (on {item.key!r}); check the credentials and "
                        "buckets, then run again to resume"
                    ) from exc
                if not exc.retryable or attempt == _OBJECT_ATTEMPTS:
                    raise
                log.warning("retrying %s after %s", item.key, exc)
        raise AssertionError("unreachable")

    async def _copy_once(self, item: WorkItem) -> int:
        fetched = await self.source.fetch(item, self.staging)
        try:
            await self.sink.put(fetched, item.key)
        finally:
            if self.cleanup:
                await asyncio.to_thread(self.staging.remove, fetched.path)
        return fetched.size


def _conclude(
    config: BackupConfig,
    manager: CheckpointManager,
    state: CheckpointState,
    pipeline: Pipeline,
    resumed: bool,
    duration: float,
) -> BackupReport:
    result = pipeline.result
    archived: Path | None = None
    status: Status
    if result.stopped or not result.listing_complete:
        status = "stopped"
    elif state.errors:
        status = "completed_with_errors"
    else:
        status = "completed"
        archived = manager.finish(config.on_complete)
        _log_completion(manager.path, state, duration)
    return BackupReport(
        status=status,
        processed_files=state.processed_files,
        processed_bytes=state.processed_bytes,
        total_files=state.total_files,
        total_bytes=state.total_bytes,
        copied_files=result.done_files,
        copied_bytes=result.done_bytes,
        skipped_files=result.skipped_files,
        errors=dict(state.errors),
        duration=duration,
        checkpoint_path=manager.path,
        archived_checkpoint=archived,
        resumed=resumed,
        failed_this_run=dict(result.failed),
    )


def _log_completion(path: Path, state: CheckpointState, duration: float) -> None:
    """The completion entry: a log line, and a JSON line in ``completions.log``."""
    log.info(
        "backup %s complete: %d files, %d bytes from s3://%s/%s to s3://%s in %.1fs",
        state.backup_id,
        state.processed_files,
        state.processed_bytes,
        state.source_bucket,
        state.source_path,
        state.dest_bucket,
        duration,
    )
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
    with (path.parent / "completions.log").open("ab") as handle:
        handle.write(orjson.dumps(entry) + b"\n")
