"""What travels between the main process and its worker processes (``--processes N``).

One JSON object a line (orjson), over the worker's stdin and stdout. This module only turns
values into such objects and back; ``workerpool.py`` (the main process) and ``_worker.py`` (a
worker) do the talking. Nothing here ever holds a secret: the configuration has none (profiles
are names; each worker resolves its own credentials from the same environment).

main -> worker::

    {"op": "init", "config": {...}, "log_level": 20,       first line, once; the worker's
     "part_buffer_bytes": 67108864}                        share of the parts in memory
    {"op": "copy", "id": 7, "item": {...}}                  copy one object
    {"op": "cancel", "id": 7}                               stop copying it (abort, clean up)
    {"op": "ack", "id": 3}                                  durable note 3 is in the checkpoint
    end of file                                             stop: cancel what is in flight, exit

worker -> main::

    {"op": "ready"}                                         clients open: copies may come now
    {"op": "done", "id": 7, "size": 4096}                   durably at the destination
    {"op": "error", "id": 7, "error": {...}}                failed (see ``error_to_wire``)
    {"op": "cancelled", "id": 7}                            stopped by a cancel or end of file
    {"op": "note", "section": s, "key": k, "value": v}      pipeline.note()
    {"op": "note", "id": 3, "section": ...}                 pipeline.note_durably(), then ack
    {"op": "log", "name": "asyncbackup", "level": 30, "message": "..."}
    {"op": "fatal", "error": {...}}                         the worker cannot start or go on
    {"op": "bye", "cpu_seconds": 1.5}                       last line, after end of file
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson

from .config import BackupConfig
from .errors import (
    AsyncBackupError,
    CheckpointError,
    ConfigError,
    FatalRunError,
    IntegrityError,
    ObjectError,
    StagingFullError,
    StoreUnavailableError,
)
from .pipeline import WorkItem

Message = dict[str, Any]

#: error classes rebuilt from their message alone
_BY_NAME: dict[str, type[AsyncBackupError]] = {
    cls.__name__: cls
    for cls in (
        AsyncBackupError,
        ConfigError,
        StoreUnavailableError,
        CheckpointError,
        FatalRunError,
        StagingFullError,
    )
}


def encode(message: Message) -> bytes:
    """One protocol line."""
    return orjson.dumps(message) + b"\n"


def decode(line: bytes) -> Message:
    message = orjson.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError(f"not a protocol message: {line[:200]!r}")
    return message


def config_to_wire(config: BackupConfig) -> Message:
    out: Message = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def config_from_wire(data: Message) -> BackupConfig:
    """The inverse of ``config_to_wire`` (``BackupConfig`` turns strings back into paths)."""
    return BackupConfig(**data)


def item_to_wire(item: WorkItem) -> Message:
    return {"key": item.key, "size": item.size, "etag": item.etag}


def item_from_wire(data: Message) -> WorkItem:
    return WorkItem(key=data["key"], size=int(data["size"]), etag=data.get("etag", ""))


def error_to_wire(exc: BaseException) -> Message:
    """An exception raised in a worker, as data the main process can raise again."""
    if isinstance(exc, ObjectError):
        return {
            "type": type(exc).__name__,
            "code": exc.code,
            "message": exc.message,
            "retryable": exc.retryable,
        }
    if isinstance(exc, AsyncBackupError):
        kind = next(
            (cls.__name__ for cls in type(exc).__mro__ if cls.__name__ in _BY_NAME),
            "AsyncBackupError",
        )
        return {"type": kind, "message": str(exc)}
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return {"type": "unexpected", "message": f"unexpected {type(exc).__name__}: {detail}"}


def error_from_wire(data: Message) -> AsyncBackupError:
    """The exception ``error_to_wire`` described, to raise in the main process."""
    kind = data.get("type", "")
    message = str(data.get("message", ""))
    if kind == "IntegrityError":
        return IntegrityError(message)
    if kind == "ObjectError" or "code" in data:
        return ObjectError(str(data["code"]), message, retryable=bool(data.get("retryable")))
    cls = _BY_NAME.get(kind)
    if cls is not None:
        return cls(message)
    return FatalRunError(
        f"a worker process failed: {message} (the checkpoint is valid; run again to resume, "
        "with --debug for details)"
    )
