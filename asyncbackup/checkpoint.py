"""The checkpoint file: its name, its state, and loading it (its journal applied).

The schema is the public contract of ``shared/spec/checkpoint-schema.md``. Unknown top-level
keys of a hand-written file are kept as they are.

A running backup does not rewrite the whole file at every flush: it appends the batch of
changes to ``<checkpoint>.journal`` (see ``journal``), and compacts - rewrites the JSON file
whole (``atomicfile``: valid JSON at every instant, a SIGKILL included) and removes the
journal - when the journal has grown past a share of the file, after ``compact_every``
seconds, and at the end of every run (``checkpoint_manager``). ``load_checkpoint()`` applies
the journal on top of the JSON file, so every reader sees the last flush. One run at a time
holds a checkpoint (``checkpoint_lock``); ``checkpoint_identity`` tells whether it is a job's.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from .errors import (
    CheckpointCorruptError,
    CheckpointEditedError,
    CheckpointError,
    ConfigError,
)
from .journal import (
    JournalContents,
    JournalFormatError,
    journal_path,
    parse_journal,
    read_journal,
)
from .staging import is_within, out_of_inodes, staging_root, temp_root

CHECKPOINT_SUFFIX = ".checkpoint"

log = logging.getLogger("asyncbackup")


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME_BYTES = 200

_INT_FIELDS = ("total_files", "processed_files", "total_bytes", "processed_bytes")
_STR_FIELDS = ("backup_id", "source_bucket", "source_path", "dest_bucket")
_TIME_FIELDS = ("start_time", "last_update")
KNOWN_FIELDS = frozenset((*_STR_FIELDS, *_TIME_FIELDS, *_INT_FIELDS, "files", "errors", "config"))
#: the top-level sections the engine keeps its notes in (``Pipeline.note``): objects, by key
#: (multipart uploads in flight; GitHub's ETags, versions, release listings and skips)
NOTE_SECTIONS = frozenset(
    {
        "multipart_uploads",
        "github_etags",
        "github_versions",
        "github_release_listing",
        "github_skipped",
    }
)
_SLICE = 20_000  # entries of a large object serialised at a time


def remedy(exc: OSError) -> str:
    """What to do about a checkpoint file that could not be written: by its cause."""
    if exc.errno == errno.ENOSPC and exc.filename and out_of_inodes(Path(exc.filename).parent):
        return "free inodes on its disk (df -i: one per file and folder; df -h may show room)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space on its disk"
    if exc.errno == errno.EFBIG:
        return "raise the file size limit (ulimit -f), or use another file system"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return "raise the open-file limit (ulimit -n) or lower --concurrency"
    if exc.errno == errno.ELOOP:
        return (
            f"{exc.filename} is a symbolic link, which asyncbackup does not write through "
            "(another user of the machine may have put it there): remove it"
        )
    return "make it writable by this user"


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
    """``<base_local_path>/checkpoints/<source_bucket>_<sanitized source_path>.checkpoint``.

    Raises ``ConfigError`` if that folder is inside the bucket's staging folder, where a key
    could be staged over the checkpoint (a bucket named ``checkpoints``, say), or inside the
    staging's temporary folder, which ``Staging.prepare()`` empties.
    """
    directory = checkpoint_dir if checkpoint_dir is not None else base_local_path / "checkpoints"
    staged = staging_root(base_local_path, source_bucket)
    if is_within(staged, directory):
        raise ConfigError(
            f"the checkpoint folder {directory} is inside {staged}, where the objects of "
            f"{source_bucket!r} are staged and could overwrite it; pass --checkpoint-dir "
            "outside it (and move a checkpoint of this job there to resume it)"
        )
    temporary = temp_root(base_local_path)
    if is_within(temporary, directory):
        raise ConfigError(
            f"the checkpoint folder {directory} is inside {temporary}, the staging's "
            "temporary folder, which every run empties of what is not its own; pass "
            "--checkpoint-dir outside it"
        )
    name = sanitize_name(f"{source_bucket}_{source_path.strip('/')}")
    return directory / f"{name}{CHECKPOINT_SUFFIX}"


def _bad(mapping: object, kind: type) -> str:
    """``: 'KEY' is VALUE``, the first entry of ``mapping`` that is not a ``kind``: one among
    a million a hand edit broke can be found (empty when ``mapping`` is no object)."""
    if not isinstance(mapping, dict):
        return ""
    for key, value in mapping.items():
        if not isinstance(value, kind):
            shown = orjson.dumps(value).decode()
            shown = shown if len(shown) <= 40 else f"{shown[:40]}..."
            return f": {key!r} is {shown}"
    return ""


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
            raise ValueError(f"field 'files' must map paths to true or false{_bad(files, bool)}")
        errors = data.get("errors", {})
        if not isinstance(errors, dict) or not all(isinstance(v, str) for v in errors.values()):
            raise ValueError(f"field 'errors' must map paths to messages{_bad(errors, str)}")
        for name in NOTE_SECTIONS & data.keys():
            if not isinstance(data[name], dict):
                raise ValueError(f"field {name!r} must be an object")
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

    def iter_json(self, slice_size: int = _SLICE) -> Iterator[bytes]:
        """``to_json()`` in pieces (the same bytes): a large object a slice at a time.

        A thread serialising a million-file checkpoint this way holds the GIL for one slice
        at a time (a few ms), so the event loop keeps running. The maps must not change
        while the pieces are taken.
        """
        indent = orjson.OPT_INDENT_2
        separator = b"{\n"
        for key, value in self.to_dict().items():
            head = separator + b"  " + orjson.dumps(key) + b": "
            separator = b",\n"
            if not (isinstance(value, dict) and len(value) > slice_size):
                yield head + orjson.dumps(value, option=indent).replace(b"\n", b"\n  ")
                continue
            items = iter(value.items())
            between = head + b"{\n"
            while piece := dict(islice(items, slice_size)):
                # {\n  "k": v,\n  ...\n} -> the entries, one level deeper
                body = orjson.dumps(piece, option=indent)[2:-2]
                yield between + b"  " + body.replace(b"\n", b"\n  ")
                between = b",\n"
            yield b"\n  }"
        yield b"\n}\n"


@dataclass(frozen=True, slots=True)
class Loaded:
    """A checkpoint as read: the state, and what its journal contributed."""

    state: CheckpointState
    journal: bool = False  # a journal file was there: the JSON file lags behind it
    journal_batches: int = 0  # batches applied on top of the JSON file
    journal_valid_bytes: int = 0  # the journal's complete lines (a torn tail after them)


def load_checkpoint(path: Path, *, journal: bool = True) -> Loaded:
    """Load and validate ``path`` and apply its journal; a bad file raises, left untouched.

    Safe beside a running backup (which may compact meanwhile): the JSON file and the journal
    are read again until both come from the same generation.
    """
    jpath = journal_path(path)
    for _ in range(20):
        try:
            with path.open("rb") as handle:
                raw = handle.read()
                seen = os.fstat(handle.fileno())
        except OSError as exc:
            raise CheckpointError(
                f"cannot read checkpoint {path}: {exc.strerror}; nothing was changed - make it "
                "a file this user can read (check its owner and permissions), or move it aside "
                "to start over"
            ) from exc
        jraw: bytes | None = None
        if journal:
            try:
                jraw = jpath.read_bytes()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CheckpointError(
                    f"cannot read checkpoint journal {jpath}: {exc.strerror}; nothing was "
                    "changed - make it a file this user can read (check its owner and "
                    "permissions), or set it aside with: asyncbackup checkpoint compact "
                    f"{path} --discard-journal (the files it recorded as done are copied again)"
                ) from exc
        try:
            now = path.stat()
        except FileNotFoundError:
            now = None
        if now is not None and same_file(seen, now):
            break
        time.sleep(0.005)  # a compaction replaced the file while we read: again
    state = _decode_json(path, raw)
    if jraw is None:
        return Loaded(state)
    digest = hashlib.sha256(raw).hexdigest()
    del raw  # a million-file checkpoint: 40 MB less while the journal is applied
    return _apply_journal(path, state, digest, jraw)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
    )


def corrupt_checkpoint(path: Path, reason: object) -> CheckpointCorruptError:
    return CheckpointCorruptError(
        f"checkpoint {path} is corrupt ({reason}); it was left untouched: repair it by hand, "
        "or run again with --ignore-checkpoints to start over (the bad file is then kept "
        "beside it with a .corrupt suffix)"
    )


def _decode_json(path: Path, raw: bytes) -> CheckpointState:
    # An editor may save the file with a UTF-8 byte order mark; jq reads it, so do we.
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return CheckpointState.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise corrupt_checkpoint(path, exc) from exc


def _apply_journal(path: Path, state: CheckpointState, digest: str, jraw: bytes) -> Loaded:
    try:
        contents = read_journal(jraw, (state.files, state.errors, state.extra), digest)
    except JournalFormatError as exc:
        raise _corrupt_journal(path, exc) from exc
    valid = contents.valid_bytes
    if contents.empty or digest in contents.compacted:
        # Empty, or a compaction replaced the file and stopped before removing the journal:
        # the file holds every batch (none was applied).
        return Loaded(state, journal=True, journal_valid_bytes=valid)
    if not contents.applied:
        raise _edited(path, contents)
    for name, value in contents.last.items():
        setattr(state, name, value)
    state.processed_files = sum(1 for done in state.files.values() if done)
    return Loaded(state, journal=True, journal_batches=contents.batches, journal_valid_bytes=valid)


def _corrupt_journal(path: Path, reason: object) -> CheckpointCorruptError:
    return CheckpointCorruptError(
        f"checkpoint journal {journal_path(path)} is corrupt ({reason}); both files were left "
        "untouched: keep the checkpoint as it was last written whole and set the journal "
        f"aside with: asyncbackup checkpoint compact {path} --discard-journal (the files it "
        "recorded as done are copied again), or run again with --ignore-checkpoints to start "
        "over"
    )


def _edited(path: Path, contents: JournalContents) -> CheckpointEditedError:
    return CheckpointEditedError(
        f"checkpoint {path} was changed after its last run stopped without folding in its "
        f"journal {journal_path(path)} ({contents.batches} batches of later progress), "
        "so the journal was not applied over your edit and nothing was changed: keep the edit "
        f"and drop the journal with: asyncbackup checkpoint compact {path} --discard-journal "
        "(the files it recorded as done are copied again); or put back the file as it was, "
        "run asyncbackup checkpoint show on it (which folds the journal in), then edit; or "
        "start over with --ignore-checkpoints"
    )


def read_checkpoint(path: Path) -> CheckpointState:
    """Load and validate ``path`` (its journal applied); a bad file raises, left untouched."""
    return load_checkpoint(path).state


def despite_journal(path: Path) -> CheckpointState | None:
    """A checkpoint whose journal cannot be applied (corrupt, or the JSON file edited after a
    crash): the JSON file with as many of the journal's batches as can be read applied anyway,
    for the sections a crashed run recorded there (its multipart uploads, still to abort).
    None when the JSON file itself is corrupt."""
    try:
        state = load_checkpoint(path, journal=False).state
    except CheckpointError:
        return None
    try:
        data = journal_path(path).read_bytes()
        base = parse_journal(data).base_sha256
        if base is not None:
            read_journal(data, (state.files, state.errors, state.extra), base)
    except (OSError, JournalFormatError):
        pass  # a corrupt journal: what the JSON file records is still carried
    return state
