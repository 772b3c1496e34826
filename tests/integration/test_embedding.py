"""``await run_backup(...)`` from inside a running event loop."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup import BackupConfig, CheckpointLockedError, run_backup
from asyncbackup.progress import NullObserver
from tests.conftest import Buckets, S3Server
from tests.helpers import assert_same_objects, numbered_objects, put_objects

pytestmark = pytest.mark.both_loops


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.flushes: list[int] = []
        self.done: list[str] = []
        self.first_done = asyncio.Event()

    def on_done(self, key: str, size: int) -> None:
        self.done.append(key)
        if len(self.done) >= 10:
            self.first_done.set()

    def on_flush(self, processed: int) -> None:
        self.flushes.append(processed)


def _options(s3_server: S3Server, buckets: Buckets, base: Path, **extra: Any) -> dict[str, Any]:
    return {
        "source_bucket": buckets.source,
        "source_path": "data",
        "dest_bucket": buckets.dest,
        "base_local_path": base,
        "endpoint_url": s3_server.endpoint,
        **extra,
    }


async def test_run_backup_returns_a_report(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    objects = numbered_objects(40)
    put_objects(s3, buckets.source, objects)
    report = await run_backup(**_options(s3_server, buckets, tmp_path, cleanup=True))
    assert report.status == "completed" and report.exit_code == 0
    assert report.processed_files == 40 == report.copied_files
    assert report.processed_bytes == sum(map(len, objects.values()))
    assert report.errors == {}
    assert report.archived_checkpoint is not None and report.archived_checkpoint.exists()
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 40


async def test_checkpoint_interval_is_respected(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(53))
    recorder = Recorder()
    config = BackupConfig(**_options(s3_server, buckets, tmp_path, checkpoint_interval=10))
    report = await run_backup(config, observer=recorder)
    assert report.copied_files == 53
    # Every flush but the final one covers at least `interval` processed files...
    assert all(n >= 10 for n in recorder.flushes[:-1]), recorder.flushes
    assert sum(recorder.flushes) == 53
    # ...so there are at most 53 // 10 of them, plus the final one.
    assert len(recorder.flushes) <= 53 // 10 + 1


async def test_cancelling_the_task_leaves_a_valid_checkpoint(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    objects = numbered_objects(150)
    put_objects(s3, buckets.source, objects)
    recorder = Recorder()
    config = BackupConfig(**_options(s3_server, buckets, tmp_path, concurrency=1))
    task = asyncio.create_task(run_backup(config, observer=recorder))
    await asyncio.wait_for(recorder.first_done.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    state = orjson.loads(path.read_bytes())
    done = {key for key, ok in state["files"].items() if ok}
    # Every completion the run reported reached the file, and no more.
    assert done == set(recorder.done)
    assert 10 <= len(done) < 150
    # The lock was released: a new run resumes and finishes the job.
    report = await run_backup(dataclasses.replace(config, concurrency=8))
    assert report.status == "completed"
    assert report.skipped_files == len(done)
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 150


async def test_stop_event_finishes_in_flight_work_and_reports_stopped(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(200))
    recorder = Recorder()
    stop = asyncio.Event()
    config = BackupConfig(**_options(s3_server, buckets, tmp_path, concurrency=2))

    async def stop_soon() -> None:
        await recorder.first_done.wait()
        stop.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(stop_soon())
        run = tg.create_task(run_backup(config, observer=recorder, stop=stop))
    report = run.result()
    assert report.status == "stopped" and report.exit_code == 130
    assert 10 <= report.copied_files < 200
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    state = orjson.loads(path.read_bytes())
    assert state["processed_files"] == report.copied_files


async def test_a_second_run_on_the_same_checkpoint_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(100))
    recorder = Recorder()
    config = BackupConfig(**_options(s3_server, buckets, tmp_path, concurrency=1))
    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(run_backup(config, observer=recorder))
        await recorder.first_done.wait()
        with pytest.raises(CheckpointLockedError, match="in use by another run"):
            await run_backup(config)
    assert first.result().status == "completed"
