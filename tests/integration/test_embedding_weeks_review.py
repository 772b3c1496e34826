"""A service that embeds the library for weeks (a review): runs of every ending, one after
another and side by side in one process, leave nothing of themselves behind and do not
reach into each other; the service sees only the documented errors, with no secret in them.

See also test_embedding.py, test_embedding_review.py and test_library_quiet.py."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import random
import resource
import signal
import socket
import sys
import threading
import time
import traceback
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvloop

from asyncbackup import (
    AsyncBackupError,
    CheckpointLockedError,
    Endpoints,
    FatalRunError,
    NullObserver,
    StagingFullError,
    StoreUnavailableError,
    filemodes,
    localio,
    plan_backup,
    read_checkpoint,
    run_backup,
    run_github_backup,
    verify_checkpoint,
)
from asyncbackup.checkpoint import checkpoint_path
from asyncbackup.checkpoint_lock import CheckpointLock
from asyncbackup.checkpoint_manager import CheckpointManager
from tests.conftest import ACCESS_KEYS, Buckets, S3Server
from tests.helpers import assert_same_objects, list_keys, numbered_objects, put_objects
from tests.integration.github_org import TOKEN, running_org
from tests.integration.test_embedding import _options
from tests.proxy import Rule, S3Proxy
from tests.reliability import mount_tmpfs, put_parallel, unmount

SECRETS = (TOKEN, *(secret for _, secret in ACCESS_KEYS.values()))


def _loggers() -> dict[str, tuple[int, int, int, bool, bool]]:
    manager = logging.Logger.manager
    found = {"": logging.getLogger()}
    found.update(
        (name, logger)
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    )
    return {
        name: (
            len(logger.handlers),
            len(logger.filters),
            logger.level,
            logger.propagate,
            logger.disabled,
        )
        for name, logger in found.items()
    }


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_state() -> dict[str, Any]:
    """What a library may change in the process that embeds it, and must not."""
    return {
        "loggers": _loggers(),
        "logging.disable": logging.root.manager.disable,
        "warnings": list(warnings.filters),
        "excepthook": (sys.excepthook, threading.excepthook, sys.unraisablehook),
        "signals": {
            sig: signal.getsignal(sig) for sig in signal.valid_signals() if sig not in (9, 19)
        },
        "policy": type(asyncio.get_event_loop_policy()),
        "environ": dict(os.environ),
        "cwd": Path.cwd(),
        "umask": _umask(),
        "sys.path": list(sys.path),
        "rlimits": {
            name: resource.getrlimit(getattr(resource, name))
            for name in ("RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE")
        },
        "gc": (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()),
        "switchinterval": sys.getswitchinterval(),
        "recursionlimit": sys.getrecursionlimit(),
        "asyncgen_hooks": sys.get_asyncgen_hooks(),
        "socket_timeout": socket.getdefaulttimeout(),
        "atexit": atexit._ncallbacks(),
    }


def _loop_state(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    return {
        "exception_handler": loop.get_exception_handler(),
        "task_factory": loop.get_task_factory(),
        "debug": loop.get_debug(),
        "signal_handlers": dict(getattr(loop, "_signal_handlers", {})),
        "executor": getattr(loop, "_default_executor", None),
    }


def _counts() -> dict[str, int]:
    current = asyncio.current_task()
    return {
        "fds": len(list(Path("/proc/self/fd").iterdir())),
        # the loop's default executor grows to its size as it is used: not the runs' threads
        "threads": len([t for t in threading.enumerate() if not t.name.startswith("asyncio_")]),
        "tasks": len([t for t in asyncio.all_tasks() if t is not current]),
        "children": len(_children()),
    }


def _children() -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    return []


async def _settle() -> None:
    """Let callbacks scheduled by the runs' ends (connection closes) run."""
    for _ in range(5):
        await asyncio.sleep(0.05)
    gc.collect()


class _FirstDone(NullObserver):
    def __init__(self, after: int = 3) -> None:
        self.after = after
        self.done = 0
        self.keys: list[str] = []
        self.reached = asyncio.Event()

    def on_done(self, key: str, size: int) -> None:
        self.done += 1
        self.keys.append(key)
        if self.done >= self.after:
            self.reached.set()


def _no_secret(exc: BaseException, *others: str) -> None:
    """Nor in what a service's ``log.exception`` prints: the chain of causes, tracebacks."""
    text = "".join(traceback.format_exception(exc))
    seen: BaseException | None = exc
    while seen is not None:
        text += f"{seen!s} {seen!r} {getattr(seen, '__dict__', '')}"
        seen = seen.__cause__ or seen.__context__
    for secret in (*SECRETS, *others):
        assert secret not in text, exc


class Service:
    """The runs a service makes, of every ending; each checks what the service saw."""

    def __init__(
        self,
        s3_server: S3Server,
        s3: Any,
        buckets: Buckets,
        proxy: S3Proxy,
        base: Path,
        small_disk: Path,
        github_url: str,
        github_api: str,
    ) -> None:
        self.s3_server, self.s3, self.buckets, self.proxy = s3_server, s3, buckets, proxy
        self.base = base
        self.small_disk = small_disk
        self.github_api = github_api
        self.random = random.Random(18)
        self.denied_bucket = f"{buckets.source}-denied"
        s3.create_bucket(Bucket=self.denied_bucket)
        put_objects(s3, self.denied_bucket, numbered_objects(2))
        s3.create_bucket(Bucket=f"{buckets.source}-big")
        put_objects(s3, f"{buckets.source}-big", {"data/big": os.urandom(3 * 1024 * 1024)})
        proxy.add_rule(Rule("invalid_access_key", path=f"^/{self.denied_bucket}"))
        self.runs = 0

    def options(self, **extra: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "source_bucket": self.buckets.source,
            "source_path": "data",
            "dest_bucket": self.buckets.dest,
            "base_local_path": self.base,
            "endpoint_url": self.s3_server.endpoint,
            "on_complete": "delete",
            "concurrency": 4,
        }
        options.update(extra)
        return options

    async def completed(self) -> None:
        options = self.options(on_complete="archive", ignore_checkpoints=True, cleanup=True)
        report = await run_backup(**options)
        assert report.status == "completed", report
        plan = await plan_backup(**self.options(skip_existing=True))
        assert plan.copy_files == 0 and plan.unchanged_files == report.processed_files
        assert report.archived_checkpoint is not None
        where = Endpoints(endpoint_url=self.s3_server.endpoint)
        verified = await verify_checkpoint(report.archived_checkpoint, where)
        assert verified.ok, verified
        # and the same, cancelled at a random point
        for call in (
            plan_backup(**self.options(skip_existing=True)),
            verify_checkpoint(report.archived_checkpoint, where),
        ):
            task = asyncio.create_task(call)
            await asyncio.sleep(self.random.uniform(0.0, 0.1))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        report.archived_checkpoint.unlink()

    async def missing_bucket(self) -> None:
        with pytest.raises(StoreUnavailableError, match="does not exist") as caught:
            await run_backup(**self.options(source_bucket="no-such-bucket-s18d"))
        _no_secret(caught.value)
        with pytest.raises(StoreUnavailableError) as caught:
            await plan_backup(**self.options(dest_bucket="no-such-bucket-s18d"))
        _no_secret(caught.value)

    async def refused_credentials(self) -> None:
        options = self.options(source_bucket=self.denied_bucket, endpoint_url=self.proxy.endpoint)
        with pytest.raises(StoreUnavailableError, match="InvalidAccessKeyId") as caught:
            await run_backup(**options)
        _no_secret(caught.value)

    async def staging_full(self) -> None:
        options = self.options(
            source_bucket=f"{self.buckets.source}-big",
            base_local_path=self.small_disk,
            checkpoint_dir=self.base / "small-checkpoints",
            ignore_checkpoints=True,
        )
        with pytest.raises(StagingFullError) as caught:
            await run_backup(**options)
        _no_secret(caught.value)

    async def cancelled(self) -> None:
        task = asyncio.create_task(run_backup(**self.options(ignore_checkpoints=True)))
        await asyncio.sleep(self.random.uniform(0.0, 0.4))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            report = await task
            assert report.status == "completed"  # it ended before the cancellation came
        # a service's time limit: the cancellation its timeout makes is not swallowed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.random.uniform(0.0, 0.4)):
                report = await run_backup(**self.options(ignore_checkpoints=True))
            assert report.status == "completed"

    async def stopped(self) -> None:
        stop = asyncio.Event()
        seen = _FirstDone()
        task = asyncio.create_task(
            run_backup(
                **self.options(ignore_checkpoints=True, concurrency=1), observer=seen, stop=stop
            )
        )
        await asyncio.wait_for(seen.reached.wait(), 30)
        stop.set()
        report = await task
        assert report.status in ("stopped", "completed"), report

    async def locked(self) -> None:
        path = checkpoint_path(
            base_local_path=self.base,
            source_bucket=self.buckets.source,
            source_path="data",
            checkpoint_dir=None,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = CheckpointLock(path)
        lock.acquire()
        try:
            with pytest.raises(CheckpointLockedError) as caught:
                await run_backup(**self.options())
            _no_secret(caught.value)
        finally:
            lock.release()

    async def github(self) -> None:
        options = github_config_for(self.github_api, self.s3_server.endpoint, self.buckets.dest)
        report = await run_github_backup(base_local_path=self.base / "gh", **options)
        assert report.status == "completed", report.errors

    async def github_cancelled(self) -> None:
        options = github_config_for(self.github_api, self.s3_server.endpoint, self.buckets.dest)
        options["ignore_checkpoints"] = True
        task = asyncio.create_task(run_github_backup(base_local_path=self.base / "gh", **options))
        await asyncio.sleep(self.random.uniform(0.0, 0.5))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            report = await task
            assert report.status == "completed"  # it ended before the cancellation came

    async def github_stopped(self) -> None:
        options = github_config_for(self.github_api, self.s3_server.endpoint, self.buckets.dest)
        options.update(ignore_checkpoints=True, include=("alpha", "beta", "old"))
        stop = asyncio.Event()
        stop.set()  # a service shutting down as the run starts
        report = await run_github_backup(base_local_path=self.base / "gh", stop=stop, **options)
        assert report.status == "stopped", report

    async def github_refused(self) -> None:
        options = github_config_for(self.github_api, self.s3_server.endpoint, self.buckets.dest)
        options["token"] = "ghp_wrongtoken0123456789abcdefXYZ0000"
        with pytest.raises(AsyncBackupError) as caught:
            await run_github_backup(base_local_path=self.base / "gh", **options)
        _no_secret(caught.value, options["token"])

    async def cycle(self) -> None:
        for run in (
            self.completed,
            self.missing_bucket,
            self.refused_credentials,
            self.staging_full,
            self.cancelled,
            self.stopped,
            self.locked,
            self.github,
            self.github_cancelled,
            self.github_stopped,
            self.github_refused,
        ):
            await run()
            self.runs += 1


def github_config_for(api_url: str, endpoint: str, bucket: str) -> dict[str, Any]:
    return {
        "owner": "acme",
        "dest_bucket": bucket,
        "endpoint_url": endpoint,
        "api_url": api_url,
        "token": TOKEN,
        "skip_forks": True,
        "include": ("beta",),
        "on_complete": "delete",
    }


@contextlib.asynccontextmanager
async def _service(
    s3_server: S3Server, s3: Any, buckets: Buckets, proxy: S3Proxy, tmp_path: Path
) -> AsyncIterator[Service]:
    small = tmp_path / "small"
    mounted = mount_tmpfs(small, "size=1m")
    if not mounted:
        pytest.skip("needs a tmpfs (root) for a full staging disk")
    try:
        async with running_org(tmp_path / "git") as github:
            yield Service(
                s3_server, s3, buckets, proxy, tmp_path / "work", small, github.url, github.api_url
            )
    finally:
        unmount(small)


async def test_many_runs_of_every_ending_leave_the_process_as_they_found_it(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    proxy: S3Proxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    put_objects(s3, buckets.source, numbered_objects(12))
    loop = asyncio.get_running_loop()
    async with _service(s3_server, s3, buckets, proxy, tmp_path) as service:
        await service.cycle()  # imports, the default executor's threads, botocore's loader
        await _settle()
        process, loop_before, counts = _process_state(), _loop_state(loop), _counts()
        tracemalloc.start()
        try:
            await service.cycle()
            await _settle()
            first = tracemalloc.take_snapshot()
            size_first = tracemalloc.get_traced_memory()[0]
            await service.cycle()
            await _settle()
            size_last = tracemalloc.get_traced_memory()[0]
            last = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = last.compare_to(first, "lineno")[:10]
        assert _counts() == counts
        assert _process_state() == process
        assert _loop_state(loop) == loop_before
        # nothing left on the staging disks or in the destination by the runs that ended early
        for base in (tmp_path / "work", tmp_path / "work" / "gh", service.small_disk):
            assert list((base / ".tmp").iterdir()) == [], base
        assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads") is None
        # one more cycle of 11 runs: what stays of it is bounded (botocore's endpoint
        # cache, of 100 entries, fills: eight cycles kept 225 kB, the last ones 6-9 kB each)
        assert size_last - size_first < 250_000, "\n".join(map(str, growth))
    # no task destroyed pending, no unclosed transport, no exception nobody retrieved
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def _job_buckets(s3: Any, name: str, objects: dict[str, bytes]) -> Buckets:
    suffix = f"{name}-{os.urandom(4).hex()}"
    job = Buckets(source=f"src-{suffix}", dest=f"dst-{suffix}")
    s3.create_bucket(Bucket=job.source)
    s3.create_bucket(Bucket=job.dest)
    put_parallel(s3, job.source, objects)
    return job


def _job(job: Buckets, endpoint: str, base: Path, **extra: Any) -> dict[str, Any]:
    return {
        "source_bucket": job.source,
        "source_path": "data",
        "dest_bucket": job.dest,
        "base_local_path": base,
        "endpoint_url": endpoint,
        **extra,
    }


async def _side_by_side(s3_server: S3Server, s3: Any, proxy: S3Proxy, tmp_path: Path) -> None:
    """Five runs at once in one loop: a slow one through the proxy with profiles of its own
    and a bandwidth limit, a fast one straight to the server, a GitHub one, one whose
    credentials are revoked mid-run, one cancelled mid-run."""
    slow = _job_buckets(s3, "slow", numbered_objects(24, size=8 * 1024))
    fast = _job_buckets(s3, "fast", numbered_objects(60))
    revoked = _job_buckets(s3, "revoked", numbered_objects(80))
    cancelled = _job_buckets(s3, "cancel", numbered_objects(80))
    base = tmp_path / "work"
    slow_options = _job(
        slow,
        proxy.endpoint,
        base,
        source_profile="src",
        dest_profile="dst",
        max_bandwidth=64 * 1024,
        concurrency=2,
    )
    fast_options = _job(fast, s3_server.endpoint, base, concurrency=16)
    revoked_options = _job(revoked, proxy.endpoint, base, concurrency=2)
    cancelled_options = _job(cancelled, s3_server.endpoint, base, concurrency=1)
    revoked_seen, cancelled_seen = _FirstDone(5), _FirstDone(5)
    timings: dict[str, float] = {}

    async def timed(name: str, run: Awaitable[Any]) -> Any:
        started = asyncio.get_running_loop().time()
        try:
            return await run
        finally:
            timings[name] = asyncio.get_running_loop().time() - started

    async def revoke() -> None:
        await revoked_seen.reached.wait()
        proxy.add_rule(Rule("invalid_access_key", path=f"^/{revoked.source}"))

    async with running_org(tmp_path / "git") as github:
        gh_options = github_config_for(github.api_url, s3_server.endpoint, fast.dest)
        gh_options["on_complete"] = "archive"
        async with asyncio.TaskGroup() as tg:
            runs = {
                "slow": tg.create_task(timed("slow", run_backup(**slow_options))),
                "fast": tg.create_task(timed("fast", run_backup(**fast_options))),
                "github": tg.create_task(
                    timed("github", run_github_backup(base_local_path=base, **gh_options))
                ),
            }
            failing = asyncio.create_task(run_backup(**revoked_options, observer=revoked_seen))
            cancelling = asyncio.create_task(
                run_backup(**cancelled_options, observer=cancelled_seen)
            )
            tg.create_task(revoke())
            await cancelled_seen.reached.wait()
            cancelling.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelling
            with pytest.raises(FatalRunError, match="InvalidAccessKeyId") as caught:
                await failing
            _no_secret(caught.value)
    reports = {name: task.result() for name, task in runs.items()}
    assert all(report.status == "completed" for report in reports.values()), reports
    assert reports["slow"].copied_files == 24 and reports["fast"].copied_files == 60
    # each run's checkpoint holds its own job only
    for name, job in (("slow", slow), ("fast", fast)):
        archived = reports[name].archived_checkpoint
        assert archived is not None
        state = read_checkpoint(archived)
        assert state.source_bucket == job.source and state.dest_bucket == job.dest
        assert set(state.files) == set(list_keys(s3, job.source))
        assert assert_same_objects(s3, job.source, job.dest, "data/") == len(state.files)
    github_archive = reports["github"].archived_checkpoint
    assert github_archive is not None
    github_state = read_checkpoint(github_archive)
    assert github_state.source_bucket == "github" and all(github_state.files.values())
    # the cancelled and the revoked runs left valid checkpoints of their own, part done
    for job in (cancelled, revoked):
        path = checkpoint_path(
            base_local_path=base, source_bucket=job.source, source_path="data", checkpoint_dir=None
        )
        state = read_checkpoint(path)
        done = {key for key, ok in state.files.items() if ok}
        assert 5 <= len(done) < 80 and done <= set(list_keys(s3, job.source))
        assert not state.errors  # a fatal error, or a cancellation, is no object's
    # the slow run's settings were its own: its profiles on its own requests, nobody else's
    # requests through its endpoint, its bandwidth limit on its own copies
    through_proxy = {r.path.split("/")[1] for r in proxy.requests}
    assert through_proxy <= {slow.source, slow.dest, revoked.source, revoked.dest}
    keys = {(r.path.split("/")[1], r.access_key) for r in proxy.requests if r.access_key}
    assert {key for bucket, key in keys if bucket == slow.source} == {ACCESS_KEYS["src"][0]}
    assert {key for bucket, key in keys if bucket == slow.dest} == {ACCESS_KEYS["dst"][0]}
    assert {key for bucket, key in keys if bucket.startswith("src-revoked")} == {
        ACCESS_KEYS["default"][0]
    }
    slow_bytes = sum(8 * 1024 + i % 13 for i in range(24))
    assert timings["slow"] >= slow_bytes / (64 * 1024) - 0.5, timings
    assert timings["fast"] < timings["slow"], timings


def test_side_by_side_under_asyncio_run_with_a_one_thread_default_executor(
    s3_server: S3Server, s3: Any, proxy: S3Proxy, tmp_path: Path
) -> None:
    """A service whose loop has a default executor of its own, of one thread: the runs'
    blocking steps queue on it, and none waits on another's."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="service")
        loop.set_default_executor(executor)
        await asyncio.wait_for(_side_by_side(s3_server, s3, proxy, tmp_path), 120)
        assert loop._default_executor is executor  # type: ignore[attr-defined]

    policy = type(asyncio.get_event_loop_policy())
    asyncio.run(main())
    assert type(asyncio.get_event_loop_policy()) is policy


def test_side_by_side_under_uvloop_run(
    s3_server: S3Server, s3: Any, proxy: S3Proxy, tmp_path: Path
) -> None:
    policy = type(asyncio.get_event_loop_policy())
    uvloop.run(asyncio.wait_for(_side_by_side(s3_server, s3, proxy, tmp_path), 120))
    assert type(asyncio.get_event_loop_policy()) is policy


async def test_a_temporary_file_a_cancelled_run_left_is_removed_by_the_next_run_in_the_process(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run cancelled while a slow disk opens a large object's temporary file (an NFS
    stall) removes the file before the open that thread goes on with creates it: the file
    stays in the staging folder. A new process's run removes it (the writer is dead). A
    service runs the next backup in the same process: that run took the file for one of a
    run still going (its own pid), and so did every later run, for the life of the process:
    each cancellation left its files on the staging disk for good."""
    put_objects(s3, buckets.source, {"data/large": os.urandom(2 * 1024 * 1024)})
    opening = threading.Event()
    slow = {"on": True}
    opener = filemodes.private_opener

    def slow_opener(path: str | os.PathLike[str], flags: int) -> int:
        if slow["on"] and Path(path).parent.name == ".tmp":
            opening.set()
            time.sleep(0.5)  # the disk stalls
        return opener(path, flags)

    monkeypatch.setattr(localio, "private_opener", slow_opener)
    options = {**_options(s3_server, buckets, tmp_path), "fast_path": True}
    task = asyncio.create_task(run_backup(**options))
    while not opening.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.0)  # the stalled open ends
    tmp_dir = tmp_path / ".tmp"
    left = [p.name for p in tmp_dir.iterdir()]
    slow["on"] = False
    report = await run_backup(**options)  # the service's next run of the job
    assert report.status == "completed" and report.copied_files == 1
    assert [p.name for p in tmp_dir.iterdir()] == [], left


def test_runs_in_threads_of_their_own_each_with_its_own_loop(
    s3_server: S3Server, s3: Any, tmp_path: Path
) -> None:
    """A service that gives every backup a thread and a loop of its own (asyncio.run in one,
    uvloop.run in another, at once): nothing the library keeps is bound to one loop."""
    jobs = [_job_buckets(s3, f"thread{n}", numbered_objects(12)) for n in range(3)]
    base = tmp_path / "work"
    results: dict[int, Any] = {}

    def backup(n: int, runner: Callable[[Awaitable[Any]], Any]) -> None:
        options = _job(jobs[n], s3_server.endpoint, base, concurrency=4, fast_path=n != 1)
        try:
            results[n] = runner(plan_then_run(options))
        except BaseException as exc:  # reported below
            results[n] = exc

    async def plan_then_run(options: dict[str, Any]) -> Any:
        plan = await plan_backup(**options)
        assert plan.copy_files == 12
        return await run_backup(**options)

    runners = (asyncio.run, uvloop.run, asyncio.run)
    threads = [
        threading.Thread(target=backup, args=(n, runner)) for n, runner in enumerate(runners)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for n, job in enumerate(jobs):
        assert getattr(results[n], "status", results[n]) == "completed"
        assert assert_same_objects(s3, job.source, job.dest) == 12


class _Heartbeat:
    """A service's own work on the loop (a health endpoint, other runs): the longest the
    loop left it waiting."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> _Heartbeat:
        gc.disable()  # a full collection of what earlier tests left is no wait of the runs'
        self._task = asyncio.create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        gc.enable()
        assert self._task is not None
        self._task.cancel()


@pytest.mark.parametrize("step", ["finish", "_compact"])
async def test_a_cancelled_run_waiting_for_its_checkpoint_step_leaves_the_loop_to_others(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """A run cancelled while its checkpoint step runs in a thread (the archive at the end,
    a compaction: a second on a slow disk, or with a checkpoint of a million files) waits
    for that step before it lets go of the lock. It waited blocking the event loop: the
    service's other runs, its health endpoint, everything on the loop stood still for as
    long. It now waits with the loop free."""
    put_objects(s3, buckets.source, numbered_objects(3))
    other = _job_buckets(s3, "other", numbered_objects(20))
    in_step = threading.Event()
    slow = getattr(CheckpointManager, step)

    def slow_step(self: CheckpointManager, *args: Any, **kwargs: Any) -> Any:
        if self.path.name.startswith(buckets.source):
            in_step.set()
            time.sleep(1.5)  # a slow disk
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointManager, step, slow_step)
    options = _options(s3_server, buckets, tmp_path)
    with _Heartbeat() as heartbeat:
        task = asyncio.create_task(run_backup(**options))
        while not in_step.is_set():
            await asyncio.sleep(0.01)
        beside = asyncio.create_task(
            run_backup(**_job(other, s3_server.endpoint, tmp_path / "other"))
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        report = await beside
    assert report.status == "completed" and report.copied_files == 20
    assert heartbeat.longest < 0.75, heartbeat.longest  # was the whole step: 1.5 s
    # the step ended before the lock was let go: the job starts again at once
    again = await run_backup(**options)
    assert again.status == "completed"


async def test_a_run_cancelled_again_while_it_waits_for_its_checkpoint_still_flushes_it(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service shutting down cancels again while a cancelled run waits for its checkpoint
    to be written: the wait and the final flush go on, the cancellation comes after; and a
    run under ``asyncio.timeout`` still ends in ``TimeoutError``."""
    put_parallel(s3, buckets.source, numbered_objects(200))
    compact = CheckpointManager._compact

    def slow_compact(self: CheckpointManager, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # a slow disk
        return compact(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointManager, "_compact", slow_compact)
    seen = _FirstDone(5)
    options = _options(s3_server, buckets, tmp_path, concurrency=1)
    task = asyncio.create_task(run_backup(**options, observer=seen))
    await seen.reached.wait()
    for _ in range(3):  # the first stops the copies; the others come while it writes
        task.cancel()
        await asyncio.sleep(0.1)
    with pytest.raises(asyncio.CancelledError):
        await task
    path = checkpoint_path(
        base_local_path=tmp_path,
        source_bucket=buckets.source,
        source_path="data",
        checkpoint_dir=None,
    )
    done = {key for key, ok in read_checkpoint(path).files.items() if ok}
    assert done == set(seen.keys) and 5 <= len(done) < 200
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await run_backup(**options)
    monkeypatch.setattr(CheckpointManager, "_compact", compact)
    report = await run_backup(**{**options, "concurrency": 8})
    assert report.status == "completed"
    assert report.processed_files == 200 and report.skipped_files >= len(done)
