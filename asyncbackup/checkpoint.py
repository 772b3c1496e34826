"""The checkpoint file: path resolution, load, flush, lock and archive.

The schema is the public contract of ``shared/spec/checkpoint-schema.md``. Every write goes to
a temporary file in the same directory, is fsynced and renamed over the checkpoint, so the file
is valid JSON at every instant, a SIGKILL included. Unknown top-level keys of a hand-written
file are kept as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson

from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
)

CHECKPOINT_SUFFIX = ".checkpoint"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME_BYTES = 200

_INT_FIELDS = ("total_files", "processed_files", "total_bytes", "processed_bytes")
_STR_FIELDS = ("backup_id", "source_bucket", "source_path", "dest_bucket")
_TIME_FIELDS = ("start_time", "last_update")
KNOWN_FIELDS = frozenset((*_STR_FIELDS, *_TIME_FIELDS, *_INT_FIELDS, "files", "errors", "config"))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sanitize_name(text: str) -> str:
    """Replace every character that is unsafe in a file name with ``_``."""
    name = _UNSAFE_NAME_CHARS.sub("_", text)
    if len(name) > _MAX_NAME_BYTES:
        digest = sha256(text.encode()).hexdigest()[:16]
        name = f"{name[: _MAX_NAME_BYTES - 17]}-{digest}"
    return name


def checkpoint_path(
    *, base_local_path: Path, source_bucket: str, source_path: str, checkpoint_dir: Path | None
) -> Path:
    """``<base_local_path>/checkpoints/<source_bucket>_<sanitized source_path>.checkpoint``."""
    directory = checkpoint_dir if checkpoint_dir is not None else base_local_path / "checkpoints"
    name = sanitize_name(f"{source_bucket}_{source_path.strip('/')}")
    return directory / f"{name}{CHECKPOINT_SUFFIX}"


@dataclass(slots=True)
class CheckpointState:
    """The in-memory form of one checkpoint file."""

    backup_id: str
    source_bucket: str
    source_path: str
    dest_bucket: str
    start_time: str
    last_update: str
    total_files: int = 0
    processed_files: int = 0
    total_bytes: int = 0
    processed_bytes: int = 0
    files: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls, *, source_bucket: str, source_path: str, dest_bucket: str, config: dict[str, Any]
    ) -> CheckpointState:
        stamp = now_iso()
        return cls(
            backup_id=str(uuid.uuid4()),
            source_bucket=source_bucket,
            source_path=source_path,
            dest_bucket=dest_bucket,
            start_time=stamp,
            last_update=stamp,
            config=dict(config),
        )

    @classmethod
    def from_dict(cls, data: object) -> CheckpointState:
        """Validate a decoded checkpoint; raise ``ValueError`` naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError("the top level is not a JSON object")
        for name in _STR_FIELDS:
            if not isinstance(data.get(name), str):
                raise ValueError(f"field {name!r} is missing or not a string")
        for name in _TIME_FIELDS:
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"field {name!r} is missing or not a string")
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"field {name!r} is not an ISO date-time: {value!r}") from None
        for name in _INT_FIELDS:
            value = data.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"field {name!r} is not a non-negative integer")
        files = data.get("files", {})
        if not isinstance(files, dict) or not all(isinstance(v, bool) for v in files.values()):
            raise ValueError("field 'files' must map paths to true or false")
        errors = data.get("errors", {})
        if not isinstance(errors, dict) or not all(isinstance(v, str) for v in errors.values()):
            raise ValueError("field 'errors' must map paths to messages")
        config = data.get("config", {})
        if not isinstance(config, dict):
            raise ValueError("field 'config' must be an object")
        state = cls(
            backup_id=data["backup_id"],
            source_bucket=data["source_bucket"],
            source_path=data["source_path"],
            dest_bucket=data["dest_bucket"],
            start_time=data["start_time"],
            last_update=data["last_update"],
            total_files=data.get("total_files", 0),
            processed_files=data.get("processed_files", 0),
            total_bytes=data.get("total_bytes", 0),
            processed_bytes=data.get("processed_bytes", 0),
            files=files,
            errors=errors,
            config=config,
            extra={k: v for k, v in data.items() if k not in KNOWN_FIELDS},
        )
        # Hand edits are honoured: the count follows the map, whatever the file said.
        state.processed_files = sum(1 for done in files.values() if done)
        return state

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backup_id": self.backup_id,
            "source_bucket": self.source_bucket,
            "source_path": self.source_path,
            "dest_bucket": self.dest_bucket,
            "start_time": self.start_time,
            "last_update": self.last_update,
            "total_files": self.total_files,
            "processed_files": self.processed_files,
            "total_bytes": self.total_bytes,
            "processed_bytes": self.processed_bytes,
            "files": self.files,
            "errors": self.errors,
            "config": self.config,
        }
        out.update(self.extra)
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def read_checkpoint(path: Path) -> CheckpointState:
    """Load and validate ``path``; a bad file raises ``CheckpointCorruptError``, untouched."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    try:
        return CheckpointState.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise CheckpointCorruptError(
            f"checkpoint {path} is corrupt ({exc}); it was left untouched: repair it by hand, "
            "or run again with --ignore-checkpoints to start over (the bad file is then kept "
            "beside it with a .corrupt suffix)"
        ) from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


class CheckpointLock:
    """An exclusive ``flock`` beside the checkpoint; the kernel drops it if the process dies."""

    def __init__(self, checkpoint: Path) -> None:
        self.path = checkpoint.with_name(checkpoint.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CheckpointLockedError(
                    f"checkpoint {self.path.with_suffix('')} is in use by another run; wait for "
                    "it to finish or stop it (a crashed run releases the lock by itself)"
                ) from None
            # The previous holder unlinks the file as it releases it: a lock taken on the
            # unlinked file would guard nothing, as the next process creates a new one.
            if self._is_at_path(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _is_at_path(self, fd: int) -> bool:
        try:
            return self.path.stat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(fd)

    def is_held_elsewhere(self) -> bool:
        """True when another process holds the lock now."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


class CheckpointManager:
    """Owns one checkpoint file for the length of a run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = CheckpointLock(path)
        self.flushes = 0
        # One thread writes, so writes land in the order they were asked for, a flush
        # started before a cancellation included.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")

    def open(self) -> None:
        """Create the directory and take the lock."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as exc:
            raise CheckpointError(
                f"cannot use checkpoint directory {self.path.parent}: {exc.strerror}; "
                "choose a writable one with --checkpoint-dir"
            ) from exc

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.lock.release()

    def load_or_create(
        self,
        *,
        source_bucket: str,
        source_path: str,
        dest_bucket: str,
        config: dict[str, Any],
        ignore_existing: bool,
    ) -> tuple[CheckpointState, bool]:
        """The state to run with, and whether it was resumed from an existing file."""
        if self.path.exists():
            if ignore_existing:
                self._set_aside()
            else:
                state = read_checkpoint(self.path)
                self._check_identity(state, source_bucket, source_path, dest_bucket)
                return state, True
        state = CheckpointState.new(
            source_bucket=source_bucket,
            source_path=source_path,
            dest_bucket=dest_bucket,
            config=config,
        )
        self.flush(state)
        return state, False

    def _check_identity(
        self, state: CheckpointState, source_bucket: str, source_path: str, dest_bucket: str
    ) -> None:
        mine = (source_bucket, source_path.strip("/"), dest_bucket)
        theirs = (state.source_bucket, state.source_path.strip("/"), state.dest_bucket)
        if mine != theirs:
            raise CheckpointMismatchError(
                f"checkpoint {self.path} belongs to another job (s3://{theirs[0]}/{theirs[1]} -> "
                f"{theirs[2]}); use --checkpoint-dir to keep this job's checkpoint elsewhere, "
                "or --ignore-checkpoints to replace it"
            )

    def _set_aside(self) -> None:
        """Keep an ignored checkpoint beside the new one rather than overwrite it."""
        try:
            read_checkpoint(self.path)
            suffix = "ignored"
        except CheckpointCorruptError:
            suffix = "corrupt"
        aside = self.path.with_name(f"{self.path.name}.{suffix}-{_stamp()}")
        self.path.replace(aside)

    def _write(self, data: bytes) -> None:
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {exc.strerror}; the previous version "
                "is intact - free space or fix permissions, then run again to resume"
            ) from exc

    def _serialize(self, state: CheckpointState) -> bytes:
        state.last_update = now_iso()
        self.flushes += 1
        return state.to_json()

    def flush(self, state: CheckpointState) -> None:
        """Write now and wait, blocking (start-up, and the final flush of a cancelled run)."""
        self._writer.submit(self._write, self._serialize(state)).result()

    async def flush_async(self, state: CheckpointState) -> None:
        """Write without blocking the event loop; ordered after every earlier flush."""
        data = self._serialize(state)
        await asyncio.wrap_future(self._writer.submit(self._write, data))

    def finish(self, on_complete: str) -> Path | None:
        """Archive or delete the checkpoint of a completed backup; return the archive path."""
        if on_complete == "delete":
            self.path.unlink(missing_ok=True)
            return None
        archive_dir = self.path.parent / "archive"
        archive_dir.mkdir(exist_ok=True)
        target = archive_dir / f"{self.path.name}.{_stamp()}"
        self.path.replace(target)
        return target
