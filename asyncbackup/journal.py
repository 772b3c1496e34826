"""The checkpoint journal: the changes since the JSON file was last written, one line a flush.

A flush of a running backup appends one line to ``<checkpoint>.journal`` and fsyncs it, so its
cost follows the batch, not the size of the map. A compaction writes the whole JSON file
atomically and removes the journal; ``checkpoint.load_checkpoint()`` applies the journal on
top of the JSON, so a reader sees the state of the last flush.

The file is JSON lines:

- the first line is a header, ``{"journal": 1, "backup_id": ..., "base_sha256": ...}``: the
  SHA-256 of the JSON file the journal continues. A JSON file with another digest was changed
  after the journal began (by hand, after a crash): the journal is not applied over it.
- every other line is a batch in the checkpoint's own words: ``files`` and ``errors`` entries
  to set (``null`` removes an error), ``notes`` (top-level sections of the checkpoint, by key;
  ``null`` removes a key), the counters and ``last_update``.
- ``{"compacted_sha256": ...}`` is written (and fsynced) just before a compaction replaces the
  JSON file: a JSON file with that digest already holds every batch, so a crash between the
  replace and the removal of the journal does not apply it twice - nor take the new file for
  a hand edit.

Only lines that end with a newline count. A last line that is cut short or unreadable is a
write a crash interrupted (never fsynced, so never reported as done) and is ignored; an
unreadable line before the last one is corruption.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

FORMAT = 1
JOURNAL_SUFFIX = ".journal"
_COUNTERS = ("total_files", "processed_files", "total_bytes", "processed_bytes")


def journal_path(checkpoint: Path) -> Path:
    """``<checkpoint>.journal``, beside the checkpoint."""
    return checkpoint.with_name(checkpoint.name + JOURNAL_SUFFIX)


@dataclass(slots=True)
class Changes:
    """What a flush appends: every entry the writer changed since the previous flush."""

    files: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str | None] = field(default_factory=dict)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note(self, section: str, key: str, value: Any) -> None:
        self.notes.setdefault(section, {})[key] = value

    def line(self, counters: dict[str, Any]) -> bytes:
        """One journal line: these changes and the counters (``last_update`` included)."""
        entry: dict[str, Any] = {}
        if self.files:
            entry["files"] = self.files
        if self.errors:
            entry["errors"] = self.errors
        if self.notes:
            entry["notes"] = self.notes
        entry.update(counters)
        return orjson.dumps(entry) + b"\n"


def header_line(backup_id: str, base_sha256: str) -> bytes:
    header = {"journal": FORMAT, "backup_id": backup_id, "base_sha256": base_sha256}
    return orjson.dumps(header) + b"\n"


def marker_line(sha256: str) -> bytes:
    return orjson.dumps({"compacted_sha256": sha256}) + b"\n"


class JournalFormatError(ValueError):
    """A line of the journal that is not torn, yet cannot be used."""


@dataclass(slots=True)
class JournalContents:
    """A parsed journal: its header, its batches and the compactions it saw begin."""

    backup_id: str | None = None
    base_sha256: str | None = None
    batches: list[dict[str, Any]] = field(default_factory=list)
    compacted: set[str] = field(default_factory=set)
    valid_bytes: int = 0  # the length of the complete lines; anything after is torn
    torn_bytes: int = 0

    @property
    def empty(self) -> bool:
        return self.base_sha256 is None and not self.compacted


def parse_journal(data: bytes) -> JournalContents:
    """Split ``data`` into lines and classify them; raise ``JournalFormatError`` if corrupt."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a write cut short
    try:
        # Fast path: every line a JSON object, decoded in one call.
        entries = orjson.loads(b"[" + b",".join(lines) + b"]")
    except orjson.JSONDecodeError:
        entries = None
    if isinstance(entries, list) and len(entries) == len(lines):
        out = JournalContents()
        try:
            for number, entry in enumerate(entries, start=1):
                if not isinstance(entry, dict):
                    raise JournalFormatError("not a JSON object")
                _classify(out, entry, number)
        except JournalFormatError:
            pass  # the slow path below names the line
        else:
            out.valid_bytes = len(data) - len(tail)
            out.torn_bytes = len(tail)
            return out
    return _parse_lines(data, lines, tail)


def _parse_lines(data: bytes, lines: list[bytes], tail: bytes) -> JournalContents:
    out = JournalContents()
    position = 0
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines) and not tail
        try:
            entry = orjson.loads(raw)
            if not isinstance(entry, dict):
                raise JournalFormatError("not a JSON object")
            _classify(out, entry, number)
        except (orjson.JSONDecodeError, JournalFormatError) as exc:
            if last and isinstance(exc, orjson.JSONDecodeError):
                break  # a final line that did not make it whole (power loss, say)
            raise JournalFormatError(f"line {number}: {exc}") from None
        position += len(raw) + 1
    out.valid_bytes = position
    out.torn_bytes = len(data) - position
    return out


def _classify(out: JournalContents, entry: dict[str, Any], number: int) -> None:
    if "journal" in entry:
        if number != 1:
            raise JournalFormatError("a header after the first line")
        if entry["journal"] != FORMAT:
            raise JournalFormatError(f"unknown journal format {entry['journal']!r}")
        backup_id, base = entry.get("backup_id"), entry.get("base_sha256")
        if not isinstance(backup_id, str) or not isinstance(base, str):
            raise JournalFormatError("the header lacks backup_id or base_sha256")
        out.backup_id, out.base_sha256 = backup_id, base
    elif "compacted_sha256" in entry:
        digest = entry["compacted_sha256"]
        if not isinstance(digest, str):
            raise JournalFormatError("compacted_sha256 is not a string")
        out.compacted.add(digest)
    else:
        if out.base_sha256 is None:
            raise JournalFormatError("a batch before the header")
        out.batches.append(entry)


def apply_batches(
    files: dict[str, bool],
    errors: dict[str, str],
    notes: dict[str, Any],
    batches: list[dict[str, Any]],
) -> dict[str, Any]:
    """Apply ``batches`` in order to a checkpoint's maps, in place; return the last counters
    and ``last_update``. ``notes`` holds the checkpoint's other top-level sections (one that
    is not an object is replaced). Raise ``JournalFormatError`` for a batch in a wrong shape.
    ``processed_files`` is for the caller to recompute from the map.
    """
    last: dict[str, Any] = {}
    for number, batch in enumerate(batches, start=1):
        try:
            _apply(files, errors, notes, batch)
        except JournalFormatError as exc:
            raise JournalFormatError(f"batch {number}: {exc}") from None
        last = batch
    out: dict[str, Any] = {}
    for name in _COUNTERS:
        if name in last:
            value = last[name]
            if type(value) is not int or value < 0:
                raise JournalFormatError(f"batch {len(batches)}: {name!r} is not a count")
            out[name] = value
    if "last_update" in last:
        if not isinstance(last["last_update"], str):
            raise JournalFormatError(f"batch {len(batches)}: 'last_update' is not a string")
        out["last_update"] = last["last_update"]
    return out


_BOOL = {bool}
_MESSAGE = {str, type(None)}


def _apply(
    files: dict[str, bool], errors: dict[str, str], notes: dict[str, Any], batch: dict[str, Any]
) -> None:
    changed = batch.get("files")
    if changed is not None:
        if type(changed) is not dict or not set(map(type, changed.values())) <= _BOOL:
            raise JournalFormatError("'files' must map keys to true or false")
        files.update(changed)
    messages = batch.get("errors")
    if messages is not None:
        if type(messages) is not dict or not set(map(type, messages.values())) <= _MESSAGE:
            raise JournalFormatError("'errors' must map keys to messages or null")
        for key, message in messages.items():
            if message is None:
                errors.pop(key, None)
            else:
                errors[key] = message
    sections = batch.get("notes")
    if sections is not None:
        if type(sections) is not dict:
            raise JournalFormatError("'notes' must map sections to objects")
        for section, entries in sections.items():
            if type(entries) is not dict:
                raise JournalFormatError("'notes' must map sections to objects")
            current = notes.get(section)
            if not isinstance(current, dict):
                current = notes[section] = {}
            for key, value in entries.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value
            if not current:
                del notes[section]


class JournalWriter:
    """The append side: one file descriptor, opened on the first append after a compaction.

    Used from the checkpoint's one writer thread only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0  # bytes of complete lines in the file
        self.batches = 0
        self._fd: int | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def start(self, backup_id: str, base_sha256: str, first: bytes) -> None:
        """Create the journal (replacing any) with its header and first batch, fsynced."""
        self.close()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._fd = fd
        self.size = self.batches = 0
        self._write(header_line(backup_id, base_sha256) + first)
        self.batches = 1
        fsync_dir(self.path.parent)  # the new name survives a power cut too

    def adopt(self, valid_bytes: int) -> None:
        """Append to a journal a crashed run left (cutting off its torn tail first)."""
        self.close()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._fd = fd
        os.ftruncate(fd, valid_bytes)
        self.size = valid_bytes

    def append(self, data: bytes) -> None:
        self._write(data)
        self.batches += 1

    def _write(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            # Never leave half a line for the next one to follow (disk full, say).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise
        self.size += len(data)

    def mark_compacted(self, sha256: str) -> None:
        self._write(marker_line(sha256))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def remove(self) -> None:
        """Close and delete the journal (its changes are in the JSON file now)."""
        self.close()
        self.size = self.batches = 0
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)
