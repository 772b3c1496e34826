"""Scale benchmarks that need no S3 server, plus the listing-to-first-transfer latency.

Subcommands (each prints one JSON object; run each in a fresh process so RSS is its own):

- ``checkpoint --files N``: a checkpoint of N files: build, compact (serialise + write +
  fsync, and the longest the event loop waited meanwhile), size on disk, load for resume
  (read + validate, as a resumed run does); then a journal of one-file batches as long as the
  manager lets it grow before compacting, its cost per append, and the load with it applied
  (the worst case of a resume after a crash), each load in a fresh process for its peak RSS.
- ``load PATH [--resume]``: load one checkpoint (``--resume``: as a run does, folding its
  journal in) and report the time and peak RSS.
- ``pipeline --files N --interval K [--rate R]``: the real ``Pipeline`` over a synthetic
  listing of N objects whose "copy" takes ``concurrency / R`` seconds (R objects/s overall;
  0 = no wait), writing the checkpoint every K objects. Reports wall time, flushes (journal
  appends and compactions), time spent encoding on the event loop, appending and compacting in
  the writer thread, the longest event-loop stall, and peak RSS. Compare with the same command
  at ``--interval 1000000000`` (one write at the end) for the share of wall time.
- ``first-transfer --endpoint URL --bucket B --prefix P --dest D --stage DIR``: a real
  ``run_backup()`` against a large bucket, stopped after the first object is done; reports the
  seconds from the call to the first listed page and to the first completed object.
- ``listing --endpoint URL --bucket B --prefix P --streams 1 8 [--latency S] [--path fast
  botocore]``: the whole listing of a prefix with each number of streams (``S3Source.list``;
  the consumer takes pages as fast as they come, as a resume of a done bucket does), by the
  fast path (as a run lists) and/or by aiobotocore; ``--latency`` puts a loopback proxy adding
  S seconds to every request in front of the server, for a distant store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from asyncbackup.checkpoint import CheckpointState, load_checkpoint
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.journal import Changes
from asyncbackup.pipeline import Pipeline, WorkItem

from .delay import serving
from .install import WORK

_TIMED_APPENDS = 1000


def _key(index: int) -> str:
    return f"data/d{index // 1000:04d}/file-{index:07d}.bin"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TimedManager(CheckpointManager):
    """A CheckpointManager that adds up the time its writes take, and where."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.encode_seconds = 0.0  # journal lines, on the event loop
        self.append_seconds = 0.0  # journal appends + fsync, in the writer thread
        self.compact_seconds = 0.0  # full writes, in the writer thread

    def _encode(self, state: CheckpointState, changes: Changes) -> bytes:
        started = time.perf_counter()
        try:
            return super()._encode(state, changes)
        finally:
            self.encode_seconds += time.perf_counter() - started

    def _append(self, state: CheckpointState, line: bytes) -> None:
        started = time.perf_counter()
        try:
            super()._append(state, line)
        finally:
            self.append_seconds += time.perf_counter() - started

    def _compact(self, state: CheckpointState, touch: bool = True) -> None:
        started = time.perf_counter()
        try:
            super()._compact(state, touch)
        finally:
            self.compact_seconds += time.perf_counter() - started


class LoopStalls:
    """The longest the event loop took to wake a 1 ms sleeper, and the time lost in all."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.total = 0.0

    async def watch(self, until: asyncio.Event) -> None:
        while not until.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            late = time.perf_counter() - started - 0.001
            self.longest = max(self.longest, late)
            if late > 0.005:
                self.total += late


def _scratch() -> tempfile.TemporaryDirectory[str]:
    """Where the checkpoint benchmarks write: under ``benchmarks/.work/`` (the checkout's
    disk), not the system's temporary directory, a tmpfs on many systems, where an fsync is
    free and the checkpoint's cost would come out too low."""
    WORK.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="scale-", dir=WORK)


def _new_state(files: int, done_every: int = 0) -> CheckpointState:
    state = CheckpointState.new(
        source_bucket="bench-src", source_path="data", dest_bucket="bench-dst", config={}
    )
    state.files = {_key(i): bool(done_every and i % done_every == 0) for i in range(files)}
    state.processed_files = sum(state.files.values())
    state.total_files = files
    state.total_bytes = files * 4096
    return state


def bench_checkpoint(files: int) -> dict[str, Any]:
    with _scratch() as tmp:
        path = Path(tmp) / "bench-src_data.checkpoint"
        started = time.perf_counter()
        state = _new_state(files, done_every=2)
        build = time.perf_counter() - started
        manager = TimedManager(path)
        manager.open()
        try:
            started = time.perf_counter()
            manager.flush(state)
            flush = time.perf_counter() - started
            stalls = asyncio.run(_compact_async(manager, state))
        finally:
            manager.close()
        size = path.stat().st_size
        plain = _load_elsewhere(path, resume=True)
        manager = TimedManager(path)
        manager.open()
        try:
            manager.flush(state)
            # A journal as long as it may grow before the manager compacts it.
            appends, append_seconds = _fill_journal(manager, state, files)
            journal_mb = manager.journal.path.stat().st_size / 1e6
        finally:
            manager.close()
        del state
        with_journal = _load_elsewhere(path, resume=False)
        assert with_journal["journal_batches"] == appends, with_journal
        resumed = _load_elsewhere(path, resume=True)
        return {
            "files": files,
            "build_seconds": round(build, 3),
            "compact_seconds": round(flush, 3),
            "compact_async_longest_loop_stall_ms": round(stalls.longest * 1000, 1),
            "compact_async_loop_time_lost_seconds": round(stalls.total, 3),
            "file_mb": round(size / 1e6, 1),
            "load_seconds": plain["seconds"],
            "load_peak_rss_mb": plain["peak_rss_mb"],
            "journal_appends": appends,
            "journal_mb": round(journal_mb, 1),
            "append_ms": round(1000 * append_seconds, 3),
            "load_with_journal_seconds": with_journal["seconds"],
            "resume_with_journal_seconds": resumed["seconds"],
            "resume_with_journal_peak_rss_mb": resumed["peak_rss_mb"],
        }


def _load_elsewhere(path: Path, *, resume: bool) -> dict[str, Any]:
    """``load`` in a fresh process, so that its peak RSS is its own."""
    command = [sys.executable, "-m", "benchmarks.scale", "load", str(path)]
    out = subprocess.run(
        [*command, "--resume"] if resume else command,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def bench_load(path: Path, *, resume: bool) -> dict[str, Any]:
    """Load ``path`` with its journal; with ``resume``, as a run does (the journal folded in)."""
    started = time.perf_counter()
    if resume:
        manager = CheckpointManager(path)
        manager.open()
        try:
            state, resumed = manager.load_or_create(
                source_bucket="bench-src",
                source_path="data",
                dest_bucket="bench-dst",
                config={},
                ignore_existing=False,
            )
        finally:
            manager.close()
        assert resumed
        batches = -1
    else:
        loaded = load_checkpoint(path)
        state, batches = loaded.state, loaded.journal_batches
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "files": len(state.files),
        "journal_batches": batches,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


async def _compact_async(manager: CheckpointManager, state: CheckpointState) -> LoopStalls:
    """A compaction from a running event loop, and how long the loop was kept waiting."""
    stalls, done = LoopStalls(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(stalls.watch(done))
        await asyncio.sleep(0.01)
        await manager.flush_async(state)
        done.set()
    return stalls


def _fill_journal(manager: TimedManager, state: CheckpointState, files: int) -> tuple[int, float]:
    """One-file batches (the most lines per byte) until the next would make a compaction due.

    The first ``_TIMED_APPENDS`` go through the manager (append + fsync each, timed); the rest
    are the same lines written at once, to build the long journal quickly.
    """
    bound = max(manager.compact_min_bytes, manager.compact_ratio * manager._json_size)
    appends, size, bulk = 0, 0, bytearray()
    while True:
        changes = Changes()
        key = _key((appends * 2 + 1) % files)
        state.files[key] = changes.files[key] = True
        state.processed_files += 1
        state.processed_bytes += 4096
        line = manager._encode(state, changes)
        if size + len(line) > bound:
            break
        if appends < _TIMED_APPENDS:
            manager._writer.submit(manager._append, state, line).result()
            size = manager.journal.size
        else:
            bulk += line
            size += len(line)
        appends += 1
    with manager.journal.path.open("ab") as handle:
        handle.write(bulk)
    return appends, manager.append_seconds / min(appends, _TIMED_APPENDS)


async def _listing(files: int) -> AsyncIterator[Sequence[WorkItem]]:
    for start in range(0, files, 1000):
        yield [WorkItem(_key(i), 4096, "") for i in range(start, min(files, start + 1000))]
        await asyncio.sleep(0)


async def _pipeline(files: int, interval: int, rate: float, concurrency: int) -> dict[str, Any]:
    with _scratch() as tmp:
        manager = TimedManager(Path(tmp) / "bench-src_data.checkpoint")
        manager.open()
        stalls, done = LoopStalls(), asyncio.Event()
        try:
            state = CheckpointState.new(
                source_bucket="bench-src", source_path="data", dest_bucket="bench-dst", config={}
            )
            delay = concurrency / rate if rate > 0 else 0.0

            async def process(item: WorkItem) -> int:
                await asyncio.sleep(delay)
                return item.size

            pipeline = Pipeline(
                manager=manager, state=state, concurrency=concurrency, interval=interval
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(stalls.watch(done))
                started = time.perf_counter()
                await pipeline.run(_listing(files), process)
                wall = time.perf_counter() - started
                done.set()
        finally:
            manager.close()
    assert pipeline.result.done_files == files
    ideal = files / rate if rate > 0 else 0.0
    thread = manager.append_seconds + manager.compact_seconds
    return {
        "files": files,
        "interval": interval,
        "rate": rate,
        "concurrency": concurrency,
        "wall_seconds": round(wall, 3),
        "ideal_seconds": round(ideal, 3),
        "flushes": manager.flushes,
        "compactions": manager.compactions,
        "encode_seconds": round(manager.encode_seconds, 3),
        "encode_share": round(manager.encode_seconds / wall, 4),
        "append_seconds": round(manager.append_seconds, 3),
        "compact_seconds": round(manager.compact_seconds, 3),
        "writer_thread_share": round(thread / wall, 4),
        "longest_loop_stall_ms": round(stalls.longest * 1000, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


class _FirstDone:
    def __init__(self, started: float, stop: asyncio.Event) -> None:
        self.started = started
        self.stop = stop
        self.first_listed: float | None = None
        self.first_done: float | None = None

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        if self.first_listed is None:
            self.first_listed = time.perf_counter() - self.started

    def on_listing_done(self) -> None:
        pass

    def on_done(self, key: str, size: int) -> None:
        if self.first_done is None:
            self.first_done = time.perf_counter() - self.started
            self.stop.set()

    def on_failed(self, key: str, error: str) -> None:
        pass

    def on_flush(self, processed: int) -> None:
        pass


async def _first_transfer(args: argparse.Namespace) -> dict[str, Any]:
    from asyncbackup import run_backup

    stop = asyncio.Event()
    started = time.perf_counter()
    observer = _FirstDone(started, stop)
    report = await run_backup(
        source_bucket=args.bucket,
        source_path=args.prefix,
        dest_bucket=args.dest,
        base_local_path=Path(args.stage),
        endpoint_url=args.endpoint,
        ignore_checkpoints=True,
        # 0: asyncbackup's own default (the harness's --own-defaults), as a Job's 0 is
        **({"concurrency": args.concurrency} if args.concurrency else {}),
        observer=observer,
        stop=stop,
    )
    return {
        "first_page_seconds": observer.first_listed,
        "first_done_seconds": observer.first_done,
        "stopped_after_seconds": round(time.perf_counter() - started, 3),
        "copied_files": report.copied_files,
        "status": report.status,
    }


async def _list_all(
    endpoint: str, bucket: str, prefix: str, streams: int, path: str
) -> dict[str, Any]:
    from asyncbackup.fasts3 import open_fast_s3
    from asyncbackup.listing import PROBES
    from asyncbackup.retry import RetryPolicy
    from asyncbackup.s3client import open_client
    from asyncbackup.sources.s3 import S3Source

    async with contextlib.AsyncExitStack() as stack:
        client = await open_client(
            stack,
            role="source",
            profile=None,
            endpoint_url=endpoint,
            region=None,
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=60,
        )
        source = S3Source(client, bucket, RetryPolicy(8))
        if path == "fast":
            source.fast = await open_fast_s3(
                stack,
                client,
                bucket,
                connections=streams + PROBES,
                connect_timeout=10,
                read_timeout=60,
            )
            if source.fast is None:
                raise SystemExit(f"no fast path to {endpoint}")
        started, cpu = time.perf_counter(), time.process_time()
        keys: list[str] = []
        async for page in source.list(prefix, streams=streams):
            keys.extend(item.key for item in page)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if len(set(keys)) != len(keys):
        raise SystemExit(f"{streams} streams listed {len(keys) - len(set(keys))} keys twice")
    return {
        "path": path,
        "streams": streams,
        "keys": len(keys),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
    }


_PROXY = """
import sys, time
from tests.proxy import run_proxy
with run_proxy(sys.argv[1]) as proxy:
    proxy.latency = float(sys.argv[2])
    print(proxy.endpoint, flush=True)
    sys.stdin.read()
"""


def _latency_proxy(endpoint: str, latency: float) -> contextlib.AbstractContextManager[str]:
    """A loopback proxy adding ``latency`` seconds to every request, in a process of its own
    (in this one it would take the event loop's CPU)."""
    return serving([sys.executable, "-c", _PROXY, endpoint, str(latency)])


def bench_listing(args: argparse.Namespace) -> dict[str, Any]:
    """The whole listing of a prefix with each number of streams, optionally through a proxy
    that adds latency to every request."""
    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint
        if args.latency:
            endpoint = stack.enter_context(_latency_proxy(args.endpoint, args.latency))
        runs = []
        for streams in args.streams:
            for path in args.path:
                listing = _list_all(endpoint, args.bucket, args.prefix, streams, path)
                with asyncio.Runner(loop_factory=_loop) as runner:
                    runs.append(runner.run(listing))
    counts = {run["keys"] for run in runs}
    if len(counts) != 1:
        raise SystemExit(f"the runs listed different numbers of keys: {runs}")
    return {"latency_seconds": args.latency, "runs": runs}


def _loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    sub = parser.add_subparsers(dest="command", required=True)
    cp = sub.add_parser("checkpoint")
    cp.add_argument("--files", type=int, default=1_000_000)
    ld = sub.add_parser("load")
    ld.add_argument("path", type=Path)
    ld.add_argument("--resume", action="store_true")
    pl = sub.add_parser("pipeline")
    pl.add_argument("--files", type=int, default=100_000)
    pl.add_argument("--interval", type=int, default=1)
    pl.add_argument("--rate", type=float, default=0.0)
    pl.add_argument("--concurrency", type=int, default=64)
    ft = sub.add_parser("first-transfer")
    for name in ("endpoint", "bucket", "prefix", "dest", "stage"):
        ft.add_argument(f"--{name}", required=True)
    ft.add_argument("--concurrency", type=int, default=64, help="0: asyncbackup's own default")
    ls = sub.add_parser("listing")
    for name in ("endpoint", "bucket", "prefix"):
        ls.add_argument(f"--{name}", required=True)
    ls.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    ls.add_argument("--latency", type=float, default=0.0)
    # fast: ListObjectsV2 by the fast path (what a run does); botocore: by aiobotocore
    ls.add_argument("--path", nargs="+", choices=("fast", "botocore"), default=["fast"])
    args = parser.parse_args(argv)
    if args.command == "checkpoint":
        result = bench_checkpoint(args.files)
    elif args.command == "load":
        result = bench_load(args.path, resume=args.resume)
    elif args.command == "listing":
        result = bench_listing(args)
    else:
        with asyncio.Runner(loop_factory=_loop) as runner:
            if args.command == "pipeline":
                coro = _pipeline(args.files, args.interval, args.rate, args.concurrency)
                result = runner.run(coro)
            else:
                result = runner.run(_first_transfer(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
