"""``--processes N`` under stress: what a review of the worker pool proved wrong, kept fixed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupConfig, run_backup
from asyncbackup.errors import AsyncBackupError, ConfigError
from asyncbackup.pipeline import WorkItem
from asyncbackup.workerpool import WorkerPool
from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.integration.test_processes import _alive, worker_pids
from tests.proxy import Rule, S3Proxy
from tests.reliability import CLI, kill, start_cli, wait_for


class RecordedNotes:
    """The pipeline's notes, kept in a dict (durable at once)."""

    def __init__(self) -> None:
        self.notes: dict[tuple[str, str], Any] = {}

    def note(self, section: str, key: str, value: Any) -> None:
        self.notes[section, key] = value

    async def note_durably(self, section: str, key: str, value: Any) -> None:
        self.notes[section, key] = value


async def _never_local(item: WorkItem) -> int:
    raise AssertionError(f"{item.key} was copied in the main process")


async def test_a_copy_cancelled_before_its_worker_started_it_answers_at_once(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A busy worker reads "copy" and "cancel" in one go: the copy's task is cancelled
    before it ran. The worker still says "cancelled", so the main process does not wait out
    its whole grace period (15 s) for an answer that never comes."""
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=b"x" * 100)
    config = BackupConfig(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        concurrency=2,
        processes=2,
        direct=True,
    )
    async with WorkerPool(config, RecordedNotes(), _never_local, 1) as pool:
        (child,) = pool._children
        deadline = time.monotonic() + 60
        while not child.ready:
            assert time.monotonic() < deadline, "the worker never became ready"
            await asyncio.sleep(0.02)
        os.kill(child.proc.pid, signal.SIGSTOP)  # busy: both lines wait in its pipe
        try:
            copy = asyncio.ensure_future(pool.process(WorkItem("data/a.bin", 100)))
            await asyncio.sleep(0.2)  # "copy" sent
            copy.cancel()
            await asyncio.sleep(0.2)  # "cancel" sent
        finally:
            os.kill(child.proc.pid, signal.SIGCONT)
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await copy
        assert time.monotonic() - started < 5


def test_a_worker_still_opening_its_clients_exits_with_a_killed_main_process(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The worker's check of the source bucket hangs (an endpoint slow to answer); the main
    process is SIGKILLed meanwhile. The worker sees its stdin close and exits at once, rather
    than outlive the main process until its check times out (60 s a try, 4 tries)."""
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=b"x")
    release = threading.Event()
    checks = 0

    def hang_after_the_first() -> None:  # the main process's check goes through
        nonlocal checks
        checks += 1
        if checks > 1:
            release.wait(60)

    path = f"^/{buckets.source}/?$"
    proxy.add_rule(
        Rule(None, method="GET", path=path, query="max-keys=1", action=hang_after_the_first)
    )
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    process = start_cli([*args, "--quiet", "--processes", "2"])
    try:
        wait_for(lambda: checks >= 2, timeout=60)  # the worker's check hangs
        workers = worker_pids(process.pid)
        assert len(workers) == 1
        kill(process, signal.SIGKILL)
        wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=10)
    finally:
        release.set()
        kill(process, signal.SIGKILL)
        process.communicate(timeout=60)  # the worker held its stderr


def _catches_sigint(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_while_the_workers_start_is_an_interruption_not_their_tracebacks(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Ctrl-C reaches the whole process group, workers still importing included (about a
    second): they ignore it from their first line on, so the run ends as interrupted, without
    a worker's KeyboardInterrupt traceback or a worker "exited unexpectedly"."""
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=b"x")
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    process = subprocess.Popen(
        [*CLI, *args, "--processes", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(worker_pids(process.pid)) == 2, timeout=60, every=0.005)
        workers = worker_pids(process.pid)
        # Python's own SIGINT handler is in place: the workers are importing asyncbackup.
        wait_for(lambda: all(_catches_sigint(pid) for pid in workers), timeout=60, every=0.002)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        kill(process)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "exited unexpectedly" not in stderr, stderr
    assert process.returncode in (0, 130), stderr


def _config(proxy: S3Proxy, buckets: Buckets, base: Path, **options: Any) -> BackupConfig:
    return BackupConfig(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=base,
        endpoint_url=proxy.endpoint,
        **options,
    )


async def test_an_interpreter_gone_is_one_clear_error_and_the_checkpoint_stays_usable(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python a long-running program was started with was removed (a virtualenv rebuilt):
    no worker can be started. That is an ``AsyncBackupError`` naming the interpreter and what
    to do, not a bare ``FileNotFoundError``."""
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=b"x")
    gone = tmp_path / "venv" / "bin" / "python"
    with monkeypatch.context() as patch, pytest.raises(AsyncBackupError) as raised:
        patch.setattr(sys, "executable", str(gone))
        await run_backup(_config(proxy, buckets, tmp_path, processes=2))
    message = str(raised.value)
    assert str(gone) in message and "--processes 1" in message and "\n" not in message
    report = await run_backup(_config(proxy, buckets, tmp_path))  # the lock was let go
    assert report.status == "completed" and report.copied_files == 1


async def test_a_worker_that_cannot_start_is_not_told_to_run_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interpreter runs but cannot run a worker (another Python, without asyncbackup's
    dependencies): the worker exits before it is ready. Running again fails the same way, so
    the error says the worker could not start and what to do instead."""
    for index in range(40):
        s3.put_object(Bucket=buckets.source, Key=f"data/{index:03d}.bin", Body=b"x")
    python = tmp_path / "other-python"
    python.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'orjson'\" >&2\nexit 1\n"
    )
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    proxy.latency = 0.05  # the worker has exited before the main process is done
    with pytest.raises(ConfigError) as raised:
        await run_backup(_config(proxy, buckets, tmp_path / "base", processes=2, concurrency=2))
    message = str(raised.value)
    assert "could not start" in message and "--processes 1" in message, message
    assert "run again to resume" not in message
