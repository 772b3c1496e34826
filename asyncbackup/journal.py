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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .filemodes import FILE_MODE, NOFOLLOW

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
    """What ``read_journal()`` found: the header, the batches, the compactions it saw begin."""

    backup_id: str | None = None
    base_sha256: str | None = None
    batches: int = 0
    applied: bool = False  # the batches were applied (the journal continues that JSON file)
    last: dict[str, Any] = field(default_factory=dict)  # the counters of the last batch
    compacted: set[str] = field(default_factory=set)
    valid_bytes: int = 0  # the length of the complete lines; anything after is torn

    @property
    def empty(self) -> bool:
        return self.base_sha256 is None and not self.compacted


Maps = tuple[dict[str, bool], dict[str, str], dict[str, Any]]
_BLOCK = 4096  # lines decoded at a time: memory stays small however long the journal


def parse_journal(data: bytes) -> JournalContents:
    """Check and classify every line of ``data``; raise ``JournalFormatError`` if corrupt."""
    return read_journal(data)


def read_journal(
    data: bytes, apply_to: Maps | None = None, json_sha256: str | None = None
) -> JournalContents:
    """Read a journal; if it continues the JSON file of digest ``json_sha256``, apply its
    batches in order to ``apply_to`` - a checkpoint's ``files``, ``errors`` and other top-level
    sections (the notes) - in place, a block of lines at a time.

    Raise ``JournalFormatError`` for a line that cannot be used, other than a torn last one.
    Only the counters of the last batch are checked (and returned in ``last``): the earlier
    ones are overwritten. ``processed_files`` is for the caller to recompute from the map.
    """
    out = JournalContents()
    end = data.rfind(b"\n") + 1  # after it: a write cut short, or nothing
    if json_sha256 is not None and _holds_marker(data[:end], json_sha256):
        apply_to = None  # that JSON file was written after every batch: it holds them all
    number = 0
    for block, final in _blocks(data, end):
        entries, torn = _decode(block, number, final and end == len(data))
        for entry in entries:
            number += 1
            _take(out, entry, number, apply_to, json_sha256)
        if torn is not None:
            end -= len(torn) + 1
    if out.batches:
        out.last = _checked_counters(out.last, out.batches)
    out.valid_bytes = end
    return out


def _holds_marker(data: bytes, sha256: str) -> bool:
    marker = marker_line(sha256)
    return data.startswith(marker) or b"\n" + marker in data


def _blocks(data: bytes, end: int) -> Iterator[tuple[list[bytes], bool]]:
    """The complete lines of ``data[:end]``, ``_BLOCK`` at a time, and whether it is the last."""
    block: list[bytes] = []
    start = 0
    while start < end:
        stop = data.index(b"\n", start)
        block.append(data[start:stop])
        start = stop + 1
        if len(block) == _BLOCK and start < end:
            yield block, False
            block = []
    if block:
        yield block, True


def _decode(
    block: list[bytes], before: int, may_tear: bool
) -> tuple[list[dict[str, Any]], bytes | None]:
    """The objects of ``block``'s lines, and its last line if it is torn (then left out)."""
    try:
        entries = orjson.loads(b"[" + b",".join(block) + b"]")  # the fast path: one call
    except orjson.JSONDecodeError:
        entries = None
    if (
        isinstance(entries, list)
        and len(entries) == len(block)
        and all(type(entry) is dict for entry in entries)
    ):
        return entries, None
    entries = []
    for offset, raw in enumerate(block):
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if may_tear and offset == len(block) - 1:
                return entries, raw  # a final line that did not make it whole (power loss)
            raise JournalFormatError(f"line {before + offset + 1}: {exc}") from None
        if type(entry) is not dict:
            raise JournalFormatError(f"line {before + offset + 1}: not a JSON object")
        entries.append(entry)
    return entries, None


def _take(
    out: JournalContents,
    entry: dict[str, Any],
    number: int,
    apply_to: Maps | None,
    json_sha256: str | None,
) -> None:
    if "journal" in entry:
        if number != 1:
            raise JournalFormatError(f"line {number}: a header after the first line")
        if entry["journal"] != FORMAT:
            raise JournalFormatError(f"line 1: unknown journal format {entry['journal']!r}")
        backup_id, base = entry.get("backup_id"), entry.get("base_sha256")
        if not isinstance(backup_id, str) or not isinstance(base, str):
            raise JournalFormatError("line 1: the header lacks backup_id or base_sha256")
        out.backup_id, out.base_sha256 = backup_id, base
        out.applied = apply_to is not None and base == json_sha256
    elif "compacted_sha256" in entry:
        digest = entry["compacted_sha256"]
        if not isinstance(digest, str):
            raise JournalFormatError(f"line {number}: compacted_sha256 is not a string")
        out.compacted.add(digest)
    else:
        if out.base_sha256 is None:
            raise JournalFormatError(f"line {number}: a batch before the header")
        out.batches += 1
        out.last = entry
        if out.applied:
            assert apply_to is not None
            try:
                _apply(*apply_to, entry)
            except JournalFormatError as exc:
                raise JournalFormatError(f"line {number}: {exc}") from None


def _checked_counters(last: dict[str, Any], batches: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _COUNTERS:
        if name in last:
            value = last[name]
            if type(value) is not int or value < 0:
                raise JournalFormatError(f"batch {batches}: {name!r} is not a count")
            out[name] = value
    if "last_update" in last:
        if not isinstance(last["last_update"], str):
            raise JournalFormatError(f"batch {batches}: 'last_update' is not a string")
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
        fd = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | NOFOLLOW, FILE_MODE
        )
        self._fd = fd
        self.size = self.batches = 0
        self._write(header_line(backup_id, base_sha256) + first)
        self.batches = 1
        fsync_dir(self.path.parent)  # the new name survives a power cut too

    def adopt(self, valid_bytes: int) -> None:
        """Append to a journal a crashed run left (cutting off its torn tail first)."""
        self.close()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | NOFOLLOW)
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

    def removed(self) -> bool:
        """Whether the open journal's file was removed (by hand, with its folder): what is
        appended to it then is on no path a reader or the next run would look at."""
        return self._fd is not None and os.fstat(self._fd).st_nlink == 0

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
