"""``run_backup`` embedded in a long-running service (a review): what a run leaves behind
when it ends - normally, failed, stopped or cancelled at an awkward moment - and what two runs
in one event loop do to each other."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.model import Shape

from asyncbackup import (
    BackupConfig,
    GitHubBackupConfig,
    NullObserver,
    plan_backup,
    read_checkpoint,
    run_backup,
    run_github_backup,
)
from asyncbackup.checkpoint import checkpoint_path
from asyncbackup.checkpoint_lock import CheckpointLock
from asyncbackup.checkpoint_manager import CheckpointManager
from tests.conftest import Buckets, S3Server
from tests.helpers import numbered_objects, put_objects
from tests.integration.test_embedding import _options
from tests.proxy import Rule, S3Proxy

pytestmark = pytest.mark.both_loops


async def test_a_run_cancelled_while_it_takes_the_checkpoint_lock_lets_the_next_run_start(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(5))
    options = _options(s3_server, buckets, tmp_path)
    task = asyncio.create_task(run_backup(**options))
    await asyncio.sleep(0)  # the run starts: it takes the lock in a thread
    time.sleep(0.2)  # (blocking the loop) the thread has taken it by now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The service tries again: the lock the cancelled run took went with it.
    report = await run_backup(**options)
    assert report.status == "completed" and report.copied_files == 5


async def test_a_github_run_cancelled_while_it_takes_the_checkpoint_lock_leaves_no_lock(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    config = GitHubBackupConfig(
        owner="acme",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=s3_server.endpoint,
        api_url="http://127.0.0.1:9/api",  # never reached
        token="ghp_not-a-real-token",
    )
    task = asyncio.create_task(run_github_backup(config))
    await asyncio.sleep(0)
    time.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    path = checkpoint_path(
        base_local_path=tmp_path,
        source_bucket=config.source_name,
        source_path="acme",
        checkpoint_dir=None,
    )
    lock = CheckpointLock(path)
    lock.acquire()  # CheckpointLockedError while the cancelled run still holds it
    lock.release()


def _live_shapes() -> int:
    gc.collect()
    return sum(1 for thing in gc.get_objects() if isinstance(thing, Shape))


async def test_many_runs_in_one_process_keep_nothing_of_the_botocore_clients_they_made(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    # without the fast path, every request - the listing's too - goes through aiobotocore
    put_objects(s3, buckets.source, numbered_objects(5))
    options = _options(s3_server, buckets, tmp_path, fast_path=False, on_complete="delete")
    for _ in range(2):
        await run_backup(**options)
    before = _live_shapes()
    for _ in range(4):
        report = await run_backup(**options)
        assert report.status == "completed" and report.copied_files == 5
    # A service running backups for days: what a run made of botocore's model goes with it.
    assert _live_shapes() <= before


async def _upload_made(s3: Any, bucket: str) -> None:
    """Until the destination holds a multipart upload in progress."""
    for _ in range(200):
        if await asyncio.to_thread(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads")):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no multipart upload was made")


@pytest.mark.parametrize("processes", [1, 2])
async def test_cancelled_while_the_upload_is_being_created_leaves_no_upload_behind(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy, processes: int
) -> None:
    put_objects(s3, buckets.source, {"data/big": os.urandom(9 * 1024 * 1024)})
    # CreateMultipartUpload reaches the server, which makes the upload; its answer is late
    proxy.add_rule(Rule(None, method="POST", query="uploads", delay_after_forward=1.5, times=1))
    options = _options(s3_server, buckets, tmp_path, multipart_threshold=8 * 1024 * 1024)
    options.update(endpoint_url=proxy.endpoint, processes=processes)
    task = asyncio.create_task(run_backup(**options))
    await _upload_made(s3, buckets.dest)
    task.cancel()  # while the answer is on its way
    with pytest.raises(asyncio.CancelledError):
        await task
    # "Cancelling the awaiting task stops at once: multipart uploads in flight are aborted"
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads") is None
    state = read_checkpoint(tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint")
    assert state.files == {"data/big": False}
    assert "multipart_uploads" not in state.extra  # nothing left for the next run to abort


async def test_plan_backup_refuses_a_config_and_options_together_as_run_backup_does(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(3))
    config = BackupConfig(**_options(s3_server, buckets, tmp_path))
    # an option beside the config was dropped without a word: a plan of another job
    with pytest.raises(TypeError, match="not both"):
        await plan_backup(config, source_path="elsewhere")
    with pytest.raises(TypeError, match="not both"):
        await run_backup(config, source_path="elsewhere")
    plan = await plan_backup(config, sample=2)
    assert plan.copy_files == 3 and len(plan.first_keys) == 2


async def test_a_run_cancelled_while_it_archives_its_checkpoint_ends_that_first(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The end of a run (``conclude``: the completion entry, the checkpoint archived, its
    journal removed) ran in a thread that a cancellation left going while the lock was
    released: a service starting the job again at once could have its new checkpoint moved
    to the archive, or its journal removed, under it. A cancelled run now lets that step
    end before it lets go of the lock."""
    put_objects(s3, buckets.source, numbered_objects(3))
    archiving = threading.Event()
    finish = CheckpointManager.finish

    def slow_finish(self: CheckpointManager, on_complete: str) -> Path | None:
        archiving.set()
        time.sleep(0.5)  # an archive on a slow disk
        return finish(self, on_complete)

    monkeypatch.setattr(CheckpointManager, "finish", slow_finish)
    options = _options(s3_server, buckets, tmp_path)
    task = asyncio.create_task(run_backup(**options))
    while not archiving.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    path = checkpoint_path(
        base_local_path=tmp_path,
        source_bucket=buckets.source,
        source_path="data",
        checkpoint_dir=None,
    )
    assert not path.exists()  # archived before the cancellation went on
    assert len(list((path.parent / "archive").iterdir())) == 1


class _FlakyMetrics(NullObserver):
    """A service's metrics hook that fails now and then (its backend is down)."""

    def __init__(self) -> None:
        self.done = 0

    def on_done(self, key: str, size: int) -> None:
        self.done += 1
        if self.done % 2 == 0:
            raise ConnectionError("metrics backend unreachable")

    def on_flush(self, processed: int) -> None:
        raise ConnectionError("metrics backend unreachable")


async def test_an_observer_that_raises_does_not_stop_the_backup(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The observer is progress reporting. One that raised ended the run with its exception:
    the objects copied since the last flush were not recorded (copied again by the next run)
    and a completed job was not archived. It is now logged, once, and the backup goes on."""
    put_objects(s3, buckets.source, numbered_objects(6))
    metrics = _FlakyMetrics()
    report = await run_backup(**_options(s3_server, buckets, tmp_path), observer=metrics)
    assert report.status == "completed" and report.copied_files == 6
    assert report.archived_checkpoint is not None
    assert metrics.done == 6  # still told of every object after it raised
    warnings = [r for r in caplog.records if "observer" in r.getMessage()]
    assert len(warnings) == 1 and "metrics backend unreachable" in warnings[0].getMessage()
