"""Several processes copy for one run (``--processes N``): more cores, one checkpoint writer.

On small objects one Python event loop is CPU-bound (about 1 ms of CPU a request in
botocore/aiohttp) long before the S3 server is. So ``N - 1`` worker processes
(``_worker.py``), each with its own event loop and S3 clients, copy beside this (main) process,
which keeps the listing, the bounded queue, the pipeline's workers and the one checkpoint
writer, and copies its own share in-process as a single-process run does.

The pipeline's ``process`` step becomes ``WorkerPool.process``: copy here, or send the item to
the least busy worker that is ready and await its answer - the size once the object is durably
at the destination, or the error to raise here (``wire.py``). So the checkpoint contract is
unchanged: only the writer of this process touches the checkpoint, and an object is marked done
only after its worker said it is at the destination. The workers' multipart journal notes come
back here and go through ``pipeline.note`` / ``note_durably`` (a worker waits for the
acknowledgement before it creates the upload), so a crash leaks no upload. Log records come
back too, to this process's handlers.

Cancellation: a cancelled ``process`` tells its worker to cancel that object (which aborts a
multipart upload) and waits a bounded time for the answer, while the checkpoint writer still
runs. Closing the pool closes the workers' stdin; they finish and exit, and are killed if they
do not within the grace period. A killed main process closes their stdin as well, so no worker
outlives it for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import sys
from pathlib import Path

from . import wire
from .config import BackupConfig
from .credprocess import ROLE_CACHE
from .errors import AsyncBackupError, ConfigError, FatalRunError
from .pipeline import Process, WorkItem
from .uploads import Notes, settle

log = logging.getLogger("asyncbackup")

#: how long a cancelled object may take to clean up (a multipart abort is bounded by 10 s)
CANCEL_GRACE = 15.0
#: how long workers may take to exit once their stdin is closed
EXIT_GRACE = 15.0
_LINE_LIMIT = 16 * 1024 * 1024
_MIN_BANDWIDTH = 1024
#: A worker imports the very asyncbackup this process runs, whatever its working directory
#: holds: the directory of this package takes the place of the working directory on sys.path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = (
    "import sys; sys.path[0] = sys.argv.pop(1); "
    "from asyncbackup._worker import main; sys.exit(main())"
)


#: multipart parts held in memory at once in a run, across all its objects and processes:
#: memory stays flat whatever the concurrency, the part size or the object size (``ByteBudget``)
PART_BUFFER_BYTES = 128 * 1024 * 1024


def budget_share(count: int) -> int:
    """The bytes of parts one of ``count`` copying processes may hold in memory: the run's
    ``PART_BUFFER_BYTES`` shared, so that ``--processes`` does not multiply it."""
    return PART_BUFFER_BYTES // count


def share_of(config: BackupConfig, count: int) -> BackupConfig:
    """The configuration of one of ``count`` copying processes: its part of the concurrency
    and of the bandwidth limit (``config`` itself when ``count`` is 1)."""
    if count == 1:
        return config
    bandwidth = config.max_bandwidth
    if bandwidth is not None:
        bandwidth = max(_MIN_BANDWIDTH, bandwidth // count)
    return dataclasses.replace(
        config,
        processes=1,
        concurrency=max(1, -(-config.concurrency // count)),
        max_bandwidth=bandwidth,
    )


def forwarded_logger(name: str) -> logging.Logger:
    """Where a worker's log record named ``name`` goes in this process: its own logger for
    ours, and under ``asyncbackup.worker.`` for another library's (botocore, asyncio), so it
    reaches the handlers of ``asyncbackup`` (the CLI's formatter, an embedding program's) and
    never Python's last-resort handler, which would print from inside a library."""
    if name == "asyncbackup" or name.startswith("asyncbackup."):
        return logging.getLogger(name)
    return logging.getLogger(f"asyncbackup.worker.{name}")


class _Child:
    """One worker process and the requests it has in flight."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: dict[int, asyncio.Future[wire.Message]] = {}
        self.failure: AsyncBackupError | None = None
        self.ready = False  # its clients are open: it gets work from now on
        self.copied = 0
        self.cpu_seconds: float | None = None  # reported when it exits

    def send(self, message: wire.Message) -> bool:
        stdin = self.proc.stdin
        if self.failure is not None or stdin is None or stdin.is_closing():
            return False
        stdin.write(wire.encode(message))
        return True


class WorkerPool:
    """N worker processes behind one ``process`` coroutine (see the module docstring)."""

    def __init__(
        self,
        config: BackupConfig,
        notes: Notes,
        local: Process,
        count: int,
        *,
        opaque_etags: bool = False,
    ) -> None:
        self.config = config
        #: the destination's ETags are no MD5s (``api.opaque_dest_etags``), learned once
        self.opaque_etags = opaque_etags
        self.notes = notes
        self.local = local
        self.count = count
        self._local_in_flight = 0
        self._local_share = share_of(config, count + 1).concurrency
        self._local_copied = 0
        self._change = asyncio.Event()
        self._children: list[_Child] = []
        self._ids = itertools.count(1)
        self._tasks = asyncio.TaskGroup()
        self._acks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def __aenter__(self) -> WorkerPool:
        if not sys.executable:
            raise ConfigError(
                "--processes needs the path of the Python interpreter (sys.executable), which "
                "this embedding does not provide; use --processes 1"
            )
        await self._tasks.__aenter__()
        try:
            init = {
                "op": "init",
                "config": wire.config_to_wire(share_of(self.config, self.count + 1)),
                "part_buffer_bytes": budget_share(self.count + 1),
                "log_level": log.getEffectiveLevel(),
                # the roles this process assumed: a worker assuming one with mfa_serial again
                # would ask for a code of its own, with no standard input (the protocol's)
                "roles": ROLE_CACHE,
                "opaque_etags": self.opaque_etags,
            }
            for _ in range(self.count):
                try:
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-c",
                        _BOOT,
                        _PACKAGE_ROOT,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        limit=_LINE_LIMIT,
                        # Out of the terminal's process group: a Ctrl-C there is this
                        # process's to handle, and would kill a worker still starting
                        # (before it can ignore it) with a traceback.
                        start_new_session=True,
                    )
                except OSError as exc:  # the interpreter is gone, or no process can be made
                    raise ConfigError(
                        f"cannot start a worker process with {sys.executable} "
                        f"({exc.strerror or exc}); use --processes 1, or run with a Python "
                        "that exists"
                    ) from exc
                child = _Child(proc)
                self._children.append(child)
                child.send(init)
                self._tasks.create_task(self._read(child))
        except BaseException:
            await self._close()
            await self._tasks.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._close()
        finally:
            await self._tasks.__aexit__(None, None, None)  # the readers saw every last line
        log.debug(
            "copied %d objects in the main process and %s",
            self._local_copied,
            ", ".join(
                f"{c.copied} in worker pid {c.proc.pid} ({c.cpu_seconds} s of CPU)"
                for c in self._children
            ),
        )

    async def process(self, item: WorkItem) -> int:
        """Copy ``item`` here or in the least busy worker; its size once it is durably at the
        destination."""
        child = await self._choose()
        if child is None:  # a local slot is reserved
            try:
                size = await self.local(item)
            finally:
                self._local_in_flight -= 1
                self._changed()
            self._local_copied += 1
            return size
        request = next(self._ids)
        answer: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
        child.pending[request] = answer
        try:
            if not child.send({"op": "copy", "id": request, "item": wire.item_to_wire(item)}):
                raise child.failure or FatalRunError("a worker process is gone; run again")
            try:
                message = await asyncio.shield(answer)
            except asyncio.CancelledError:
                # Let the worker stop and clean up (abort a multipart upload, send its notes)
                # while the checkpoint writer still runs.
                if child.send({"op": "cancel", "id": request}):
                    await settle(answer, CANCEL_GRACE)
                raise
        finally:
            child.pending.pop(request, None)
        if message["op"] == "done":
            child.copied += 1
            return int(message["size"])
        if message["op"] == "error":
            raise wire.error_from_wire(message["error"])
        raise child.failure or FatalRunError(
            f"a worker process stopped copying {item.key!r}; run again to resume"
        )

    async def _choose(self) -> _Child | None:
        """The ready worker with the fewest objects in flight, or None for this process (with
        a slot of its share reserved); waits while no worker is ready and the share is full.

        Fewest in flight is enough to balance: a busier process takes longer per object, so it
        has more in flight and gets less. Workers win ties: this process lists and writes the
        checkpoint too. The share (``share_of``) keeps this process from taking everything
        while the workers start (large objects would all stay here).
        """
        while True:
            best: _Child | None = None
            for child in self._children:
                if child.failure is not None:
                    raise child.failure
                if child.ready and (best is None or len(child.pending) < len(best.pending)):
                    best = child
            room = self._local_in_flight < self._local_share
            if best is not None and (len(best.pending) <= self._local_in_flight or not room):
                return best
            if room:
                self._local_in_flight += 1
                return None
            await self._change.wait()

    def _changed(self) -> None:
        """Wake the ``_choose`` calls waiting for a worker or a local slot (they look again)."""
        self._change.set()
        self._change = asyncio.Event()

    # -- each worker's answers --------------------------------------------------------------

    async def _read(self, child: _Child) -> None:
        stdout = child.proc.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                self._dispatch(child, wire.decode(line))
        except Exception as exc:  # a broken line, or a bug: this worker is unusable
            child.failure = FatalRunError(
                f"a worker process sent what cannot be read ({type(exc).__name__}: {exc}); "
                "the checkpoint is valid: run again to resume"
            )
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        finally:
            if child.failure is None and not self._closing:
                with contextlib.suppress(TimeoutError):  # its stdout closed: it is exiting
                    await asyncio.wait_for(child.proc.wait(), 5.0)
                status = child.proc.returncode
                if not child.ready and status is not None and status > 0:
                    # It exited by itself before it could copy: it will again, next run too.
                    child.failure = ConfigError(
                        f"a worker process (pid {child.proc.pid}) could not start (exit "
                        f"status {status}; its error, if any, is above): check that "
                        f"{sys.executable} can run asyncbackup, or use --processes 1"
                    )
                else:
                    child.failure = FatalRunError(
                        f"a worker process (pid {child.proc.pid}) exited unexpectedly "
                        f"(exit status {status}); the checkpoint is valid: run again to resume"
                    )
            gone = {"op": "gone"}
            for answer in child.pending.values():
                if not answer.done():
                    answer.set_result(gone)
            self._changed()

    def _dispatch(self, child: _Child, message: wire.Message) -> None:
        match message["op"]:
            case "done" | "error" | "cancelled":
                answer = child.pending.get(message["id"])
                if answer is not None and not answer.done():
                    answer.set_result(message)
            case "ready":
                child.ready = True
                self._changed()
            case "bye":
                child.cpu_seconds = float(message["cpu_seconds"])
            case "note" if "id" in message:
                task = self._tasks.create_task(self._note_durably(child, message))
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)
            case "note":
                self.notes.note(message["section"], message["key"], message["value"])
            case "log":
                logger = forwarded_logger(str(message.get("name") or "asyncbackup"))
                logger.log(int(message.get("level", logging.WARNING)), "%s", message["message"])
            case "fatal":
                child.failure = wire.error_from_wire(message["error"])

    async def _note_durably(self, child: _Child, message: wire.Message) -> None:
        await self.notes.note_durably(message["section"], message["key"], message["value"])
        child.send({"op": "ack", "id": message["id"]})

    # -- shutdown ---------------------------------------------------------------------------

    async def _close(self) -> None:
        """Close every worker's stdin, wait for them to exit (killing the late ones)."""
        self._closing = True
        for child in self._children:
            stdin = child.proc.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.close()
        try:
            waits = [child.proc.wait() for child in self._children]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), EXIT_GRACE)
        finally:
            for child in self._children:
                if child.proc.returncode is None:
                    log.warning("worker process %d did not exit: killing it", child.proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
            for child in self._children:
                await _reap(child.proc)
            for task in list(self._acks):  # nobody flushes the checkpoint any more
                task.cancel()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed process, even if cancelled meanwhile (it exits at once)."""
    waiter = asyncio.ensure_future(proc.wait())
    while not waiter.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({waiter})


async def start_worker_processes(
    stack: contextlib.AsyncExitStack,
    config: BackupConfig,
    notes: Notes,
    local: Process,
    *,
    opaque_etags: bool = False,
) -> Process:
    """The ``process`` step of a run copied by ``config.processes`` processes: this one (with
    ``local``, whose staging is prepared) and ``processes - 1`` workers living as long as
    ``stack``, told whether the destination's ETags are MD5s (``opaque_etags``)."""
    count = config.processes - 1
    pool = WorkerPool(config, notes, local, count, opaque_etags=opaque_etags)
    pool = await stack.enter_async_context(pool)
    return pool.process
