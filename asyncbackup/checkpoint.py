"""The checkpoint file: path resolution, load, flush, lock and archive.

The schema is the public contract of ``shared/spec/checkpoint-schema.md``. A full write goes
to a temporary file in the same directory, is fsynced and renamed over the checkpoint, so the
file is valid JSON at every instant, a SIGKILL included. Unknown top-level keys of a
hand-written file are kept as they are.

A running backup does not rewrite the whole file at every flush: it appends the batch of
changes to ``<checkpoint>.journal`` (see ``journal``), and compacts - rewrites the JSON file
whole and removes the journal - when the journal has grown past a share of the file, after
``compact_every`` seconds, and at the end of every run. ``load_checkpoint()`` applies the
journal on top of the JSON file, so every reader sees the last flush.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from .errors import (
    CheckpointCorruptError,
    CheckpointEditedError,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    ConfigError,
)
from .filemodes import FILE_MODE, NOFOLLOW, make_folders, private_opener, trusted_owner
from .journal import (
    JOURNAL_SUFFIX,
    Changes,
    JournalContents,
    JournalFormatError,
    JournalWriter,
    fsync_dir,
    journal_path,
    parse_journal,
    read_journal,
)
from .staging import is_within, out_of_inodes, staging_root, temp_root

CHECKPOINT_SUFFIX = ".checkpoint"
T = TypeVar("T")
log = logging.getLogger("asyncbackup")

_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")
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
        if now is not None and _same_file(seen, now):
            break
        time.sleep(0.005)  # a compaction replaced the file while we read: again
    state = _decode_json(path, raw)
    if jraw is None:
        return Loaded(state)
    digest = hashlib.sha256(raw).hexdigest()
    del raw  # a million-file checkpoint: 40 MB less while the journal is applied
    return _apply_journal(path, state, digest, jraw)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
    )


def _corrupt(path: Path, reason: object) -> CheckpointCorruptError:
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
        raise _corrupt(path, exc) from exc


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


def written_file(path: Path) -> Path:
    """The file a checkpoint ``path`` writes to: the file it points to when it is a symbolic
    link (an operator's, to other storage, which stays a link), else ``path`` itself.

    Only a link this user or root owns is followed: one another user owns may have been
    planted (in a shared folder, to this user's files) and raises ``ELOOP``, as the kernel's
    ``fs.protected_symlinks`` refuses it in ``/tmp`` (which ``realpath`` would get around)."""
    if not path.is_symlink():
        return path
    if not trusted_owner(path.lstat().st_uid):
        raise OSError(errno.ELOOP, "a symbolic link another user owns", str(path))
    return Path(os.path.realpath(path))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never a mix."""
    write_atomic_pieces(path, (data,))


def write_atomic_pieces(
    path: Path,
    pieces: Iterable[bytes],
    before_replace: Callable[[str], None] | None = None,
) -> str:
    """``write_atomic()`` of the concatenated ``pieces``; return their SHA-256.

    ``before_replace(sha256)`` runs once the temporary file is durable, just before it
    replaces ``path``. A ``path`` that is a symbolic link (an operator's, to other storage)
    stays one: the file it points to is replaced.
    """
    path = written_file(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        tmp.unlink(missing_ok=True)  # a name anyone can guess: made anew, never opened
        with open(tmp, "xb", opener=private_opener) as handle:
            for piece in pieces:
                handle.write(piece)
                digest.update(piece)
            handle.flush()
            os.fsync(handle.fileno())
        sha = digest.hexdigest()
        if before_replace is not None:
            before_replace(sha)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return sha


def timestamp() -> str:
    """``20240406T131530Z``: the suffix of archived and set-aside files."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def stamped(folder: Path, prefix: str) -> Path:
    """``folder/<prefix><timestamp>``, with ``-2``, ``-3``... after the highest number that
    second has (several within one second): a file set aside or archived never replaces an
    earlier one, and sorts after it, even once older ones are removed (``--keep-archives``)."""
    name = f"{prefix}{timestamp()}"
    numbers = [0]
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            stem = entry.name.removesuffix(JOURNAL_SUFFIX)
            if stem == name:
                numbers.append(1)
            elif stem.startswith(f"{name}-") and stem[len(name) + 1 :].isdigit():
                numbers.append(int(stem[len(name) + 1 :]))
    number = max(numbers) + 1
    return folder / (name if number == 1 else f"{name}-{number}")


class CheckpointLock:
    """An exclusive ``flock`` beside the checkpoint; the kernel drops it if the process dies."""

    def __init__(self, checkpoint: Path) -> None:
        self.path = checkpoint.with_name(checkpoint.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CheckpointLockedError(
                    f"checkpoint {self.path.with_suffix('')} is in use by another run; wait for "
                    "it to finish or stop it (a crashed run releases the lock by itself)"
                ) from None
            if self._still_linked(fd):
                break
            # The holder released (and unlinked) the file between our open and flock: the
            # lock we got is on a file nobody else will see. Take the current one instead.
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # a full disk fails here
        except BaseException:
            # Let go of the lock, or it stays with this process until it exits: every
            # later run in it (an embedding program trying again) would be "in use".
            self._fd = fd
            self.release()
            raise
        self._fd = fd

    def retake_if_removed(self) -> bool:
        """Take the lock again when its file was removed (with the checkpoint's folder) while
        held: a run started since would take a lock of its own on the same checkpoint.
        Raises ``CheckpointLockedError`` when one did; True when the lock was taken again."""
        if self._fd is None or self._still_linked(self._fd):
            return False
        fd, self._fd = self._fd, None
        os.close(fd)
        self.acquire()
        return True

    def _still_linked(self, fd: int) -> bool:
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


def _same_job(
    state: CheckpointState, source_bucket: str, source_path: str, dest_bucket: str
) -> bool:
    mine = (source_bucket, source_path.strip("/"), dest_bucket)
    return mine == (state.source_bucket, state.source_path.strip("/"), state.dest_bucket)


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


def check_identity(
    path: Path, state: CheckpointState, source_bucket: str, source_path: str, dest_bucket: str
) -> None:
    """Raise ``CheckpointMismatchError`` when ``state`` (read from ``path``) is another job's."""
    if not _same_job(state, source_bucket, source_path, dest_bucket):
        theirs = (state.source_bucket, state.source_path.strip("/"), state.dest_bucket)
        raise CheckpointMismatchError(
            f"checkpoint {path} belongs to another job (s3://{theirs[0]}/{theirs[1]} -> "
            f"{theirs[2]}); use --checkpoint-dir to keep this job's checkpoint elsewhere, "
            "or --ignore-checkpoints to replace it"
        )


def endpoint_for_checkpoint(url: str | None) -> str | None:
    """An endpoint URL as a checkpoint records it (None: AWS, any of its endpoints): scheme,
    host, port and path, never the user info or query string a URL could carry."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if host.endswith(_AWS_HOSTS):
        return None  # AWS: one bucket namespace, whatever the region's endpoint
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    try:
        number = parts.port
    except ValueError:  # not a port (a hand edit's typo): no endpoint is that one
        return f"{scheme}://{host}:{parts.netloc.rpartition(':')[2]}"
    port = f":{number}" if number not in (None, default) else ""
    return f"{scheme}://{host}{port}{parts.path.rstrip('/')}"


def recorded_patterns(path: Path, stored: dict[str, Any], name: str) -> tuple[str, ...]:
    """The glob patterns a checkpoint's ``config`` records under ``name`` (``include`` or
    ``exclude``); anything but a list of strings there is a corrupt checkpoint."""
    value = stored.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _corrupt(path, f"field 'config.{name}' must be a list of glob patterns")
    return tuple(value)


def recorded_text(path: Path, stored: dict[str, Any], name: str, what: str) -> str | None:
    """The string (or null) a checkpoint's ``config`` records under ``name``; anything else
    there - a number, a list - is a corrupt checkpoint, not "not recorded": a resume would
    then skip the files it marks done wherever they are."""
    value = stored[name]
    if value is not None and not isinstance(value, str):
        raise _corrupt(path, f"field 'config.{name}' must be {what} or null")
    return value


def check_dest_endpoint(path: Path, stored: dict[str, Any], endpoint: str | None) -> None:
    """A resume must copy to the store where the files the checkpoint marks done are: another
    endpoint (another server, with a bucket of the same name) would be left without them."""
    if "dest_endpoint_url" not in stored:
        return  # written by hand or by an older tool: nothing to compare
    recorded = recorded_text(path, stored, "dest_endpoint_url", "a URL")
    now = endpoint_for_checkpoint(endpoint)
    try:
        before = endpoint_for_checkpoint(recorded)
    except ValueError:  # a hand edit's typo: "http://[::1", say
        raise _corrupt(path, "field 'config.dest_endpoint_url' is not a URL") from None
    if before != now:
        raise CheckpointMismatchError(
            f"checkpoint {path} was made with destination endpoint {recorded or 'AWS'} (the "
            f"copies it marks done are there), this run's is {now or 'AWS'}; resume with the "
            "same endpoint, set config.dest_endpoint_url in the checkpoint if it is the same "
            "store under another name, or start over with --ignore-checkpoints"
        )


async def in_thread_to_the_end(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread(func, ...)`` that, cancelled, waits (blocking) for ``func`` to end
    before the cancellation goes on. For the steps of a run that change the checkpoint's files
    (loading it, archiving it at the end): they are over before the caller's ``close()``
    releases the lock, so a run of the job started at once never has them change its files."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-step") as pool:
        return await _to_the_end(pool.submit(func, *args, **kwargs), quiet=True)


async def _to_the_end(future: concurrent.futures.Future[T], *, quiet: bool = False) -> T:
    """``future``'s result. Cancelled meanwhile: wait (blocking) for it to end, then go on
    with the cancellation - or raise its own failure instead, unless ``quiet``."""
    try:
        return await asyncio.shield(asyncio.wrap_future(future))
    except asyncio.CancelledError:
        with contextlib.suppress(Exception) if quiet else contextlib.nullcontext():
            future.result()
        raise


class CheckpointManager:
    """Owns one checkpoint file, and its journal, for the length of a run.

    ``flush()`` / ``flush_async()`` compact: the whole state to the JSON file, the journal
    removed. ``save_async()`` appends a batch of changes to the journal, or compacts when the
    journal has outgrown ``compact_ratio`` of the JSON file (at least ``compact_min_bytes``)
    or is ``compact_every`` seconds old. Every write runs in one thread, in order.
    """

    def __init__(
        self,
        path: Path,
        *,
        compact_ratio: float = 0.5,
        compact_min_bytes: int = 1 << 20,
        compact_every: float = 300.0,
    ) -> None:
        self.path = path
        self.lock = CheckpointLock(path)
        self.journal = JournalWriter(journal_path(path))
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.compact_every = compact_every
        self.flushes = 0  # journal appends and compactions
        self.compactions = 0
        self._base: str | None = None  # SHA-256 of the JSON file this manager last wrote
        self._json_size = 0
        self._written: os.stat_result | None = None  # the JSON file as this manager left it
        self._edit_warned = False
        self._compacted_at = time.monotonic()
        self._leftover_valid: int | None = None  # of a crashed run's journal, as loaded
        # One thread writes, so writes land in the order they were asked for, a flush
        # started before a cancellation included.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")

    def open(self) -> None:
        """Create the directory, take the lock, and remove the temporary files of writes a
        killed run left (only the lock's holder writes this checkpoint)."""
        try:
            make_folders(self.path.parent)
            self.lock.acquire()
            # write_atomic_pieces' names, beside the file written: the one a link points to
            for target in {self.path, written_file(self.path)}:
                prefix, suffix = f".{target.name}.", ".tmp"
                with contextlib.suppress(FileNotFoundError):  # a link to a folder not made yet
                    for leftover in target.parent.iterdir():
                        name = leftover.name
                        pid = name[len(prefix) : -len(suffix)]
                        if name.startswith(prefix) and name.endswith(suffix) and pid.isdigit():
                            leftover.unlink(missing_ok=True)
        except BaseException as exc:
            # Not kept by a failed open: the same process could never run again.
            self.lock.release()
            if not isinstance(exc, OSError):
                raise
            raise CheckpointError(
                f"cannot use checkpoint directory {self.path.parent}: {exc.strerror}; "
                f"{remedy(exc)}, or give the backup another --checkpoint-dir"
            ) from exc

    async def open_async(self) -> None:
        """``open()`` in the writer thread, the event loop free meanwhile. Cancelled while it
        runs, this waits (blocking) for it to end before the cancellation goes on, so that the
        ``close()`` the caller registered first releases the lock it took: a lock left behind
        would refuse every later run of the job in this process ("in use by another run")."""
        # quiet: open() releases the lock itself when it fails
        await _to_the_end(self._writer.submit(self.open), quiet=True)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.journal.close()
        self.lock.release()

    def load_or_create(
        self,
        *,
        source_bucket: str,
        source_path: str,
        dest_bucket: str,
        config: dict[str, Any],
        ignore_existing: bool,
        carry: Iterable[str] = (),
    ) -> tuple[CheckpointState, bool]:
        """The state to run with, and whether it was resumed from an existing file.

        The journal of a run that crashed is folded into the JSON file at once. With
        ``ignore_existing``, the top-level sections named in ``carry`` (the multipart uploads a
        crashed run left, still to abort) go from the ignored checkpoint of the same job into
        the new one.
        """
        carried: dict[str, Any] = {}
        if self.path.exists():
            if ignore_existing:
                ignored = self._set_aside()
                if ignored is not None and _same_job(
                    ignored, source_bucket, source_path, dest_bucket
                ):
                    carried = {name: ignored.extra[name] for name in carry if name in ignored.extra}
            else:
                loaded = load_checkpoint(self.path)
                state = loaded.state
                check_identity(self.path, state, source_bucket, source_path, dest_bucket)
                if loaded.journal:
                    self._leftover_valid = loaded.journal_valid_bytes
                    self.flush(state)
                return state, True
        elif carry:
            carried = self._orphaned(carry)
        state = CheckpointState.new(
            source_bucket=source_bucket,
            source_path=source_path,
            dest_bucket=dest_bucket,
            config=config,
        )
        state.extra.update(carried)
        self.flush(state)
        return state, False

    def _orphaned(self, carry: Iterable[str]) -> dict[str, Any]:
        """The sections named in ``carry`` that a journal records whose JSON file is gone
        (removed or moved aside by hand after a crash, "to start over"): the multipart
        uploads the crashed run had in flight, recorded there alone, still to abort. The new
        checkpoint's first write then removes the journal."""
        try:
            data = self.journal.path.read_bytes()
        except OSError:
            return {}
        extra: dict[str, Any] = {}
        with contextlib.suppress(JournalFormatError):  # a corrupt one: what could be read
            base = parse_journal(data).base_sha256
            if base is not None:
                read_journal(data, ({}, {}, extra), base)
        carried = {name: extra[name] for name in carry if name in extra}
        if carried:
            log.info(
                "%s is left without its checkpoint file (removed or moved aside after a "
                "crash): its progress is dropped, the multipart uploads it records are aborted",
                self.journal.path,
            )
        return carried

    def _set_aside(self) -> CheckpointState | None:
        """Keep an ignored checkpoint (and its journal) beside the new one; return its state
        (None when the JSON file is corrupt)."""
        ignored: CheckpointState | None = None
        try:
            ignored = read_checkpoint(self.path)
            suffix = "ignored"
        except CheckpointCorruptError:
            suffix = "corrupt"
            ignored = despite_journal(self.path)
        aside = stamped(self.path.parent, f"{self.path.name}.{suffix}-")
        if self.journal.path.exists():
            self.journal.path.replace(journal_path(aside))
        self._move_to(aside)
        return ignored

    # -- writing (in the writer thread) -------------------------------------------------

    def _compact(self, state: CheckpointState, touch: bool = True) -> None:
        if touch:
            state.last_update = now_iso()
        self.flushes += 1
        self.compactions += 1
        try:
            self._make_again_if_removed()
            self._warn_if_edited()
            self._base = write_atomic_pieces(
                self.path, state.iter_json(), before_replace=self._journal_superseded
            )
            self.journal.remove()
            self._written = self.path.stat()
            self._json_size = self._written.st_size
        except OSError as exc:
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {exc.strerror}; the previous version "
                f"is intact - {remedy(exc)}, then run again to resume"
            ) from exc
        self._compacted_at = time.monotonic()

    def _make_again_if_removed(self) -> None:
        """The checkpoint's folder, JSON file or journal removed during the run (a clean-up
        script, ``rm -rf``): the folder made again, and the lock taken again (its file may
        be gone too), for the compaction to write the whole state where it was."""
        removed = self.journal.removed() or (self._base is not None and not self.path.exists())
        if not self.path.parent.is_dir():
            make_folders(self.path.parent)
            removed = True
        if self.lock.retake_if_removed() or removed:
            log.warning(
                "checkpoint %s (or its folder) was removed during the run; it is written "
                "again whole, with this run's progress",
                self.path,
            )

    def _warn_if_edited(self) -> None:
        """Say so, once, when the file changed since this run last wrote it: an edit made
        while the run holds the checkpoint (an editor, ``jq ... > FILE``), which this write
        overwrites with the run's own state."""
        if self._written is None or self._edit_warned:
            return
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return  # removed: ``_make_again_if_removed`` said so
        if not _same_file(now, self._written):
            self._edit_warned = True
            log.warning(
                "checkpoint %s was changed while this run held it (an editor, jq > FILE): "
                "the run's own progress is written over the change; make it once the run "
                "is over (checkpoint show says whether one holds it)",
                self.path,
            )

    def _journal_superseded(self, sha256: str) -> None:
        """Before the new JSON file replaces the old: record in the journal that it did."""
        if not self.journal.is_open:
            valid, self._leftover_valid = self._leftover_valid, None
            if valid is None:
                try:
                    data = self.journal.path.read_bytes()
                except FileNotFoundError:
                    return
                try:
                    valid = parse_journal(data).valid_bytes
                except JournalFormatError:
                    valid = data.rfind(b"\n") + 1
            if valid == 0:
                return  # nothing in it to apply: removed after the replace
            self.journal.adopt(valid)
        self.journal.mark_compacted(sha256)

    def _append(self, state: CheckpointState, line: bytes) -> None:
        if self.journal.removed() or not self.path.exists():
            # the journal, the JSON file it continues or their folder was removed: a line
            # there would be read by nobody, or continue no file
            self._compact(state)
            return
        backup_id = state.backup_id
        self.flushes += 1
        try:
            if self.journal.is_open:
                self.journal.append(line)
            else:
                assert self._base is not None
                self.journal.start(backup_id, self._base, line)
        except OSError as exc:
            raise CheckpointError(
                f"cannot write checkpoint journal {self.journal.path}: {exc.strerror}; the "
                "checkpoint and its journal are intact up to the previous flush - "
                f"{remedy(exc)}, then run again to resume"
            ) from exc

    # -- the API ------------------------------------------------------------------------

    def flush(self, state: CheckpointState, *, touch: bool = True) -> None:
        """Compact now and wait, blocking (start-up, the end of a run, the checkpoint tool).

        Without ``touch``, ``last_update`` stays as it is: folding a journal is no update
        (it stays when the crashed run last recorded progress)."""
        self._writer.submit(self._compact, state, touch).result()

    async def flush_async(self, state: CheckpointState) -> None:
        """Compact without blocking the event loop; ordered after every earlier write.

        The state is serialised in the writer thread: nothing may change it until this returns.
        """
        await asyncio.wrap_future(self._writer.submit(self._compact, state))

    async def save_async(self, state: CheckpointState, changes: Changes) -> None:
        """Record ``changes`` (already applied to ``state``): a journal line, or a compaction.

        Appending costs the size of ``changes``, not of the state.
        """
        if self._base is None or self.compaction_due():
            await self.flush_async(state)
            return
        state.last_update = now_iso()
        line = self._encode(state, changes)
        await asyncio.wrap_future(self._writer.submit(self._append, state, line))

    def _encode(self, state: CheckpointState, changes: Changes) -> bytes:
        return changes.line(
            {
                "total_files": state.total_files,
                "processed_files": state.processed_files,
                "total_bytes": state.total_bytes,
                "processed_bytes": state.processed_bytes,
                "last_update": state.last_update,
            }
        )

    def compaction_due(self) -> bool:
        size = self.journal.size
        if not size:
            return False
        if size > max(self.compact_min_bytes, self.compact_ratio * self._json_size):
            return True
        return time.monotonic() - self._compacted_at >= self.compact_every

    async def flush_final(self, state: CheckpointState) -> None:
        """``flush_async()`` that completes even if the caller is cancelled meanwhile: then it
        waits (blocking) for the write to land before the cancellation goes on."""
        await _to_the_end(self._writer.submit(self._compact, state))

    def settle(self) -> None:
        """Wait (blocking) until every write asked for so far is done, or has failed."""
        with contextlib.suppress(Exception):
            self._writer.submit(lambda: None).result()

    def finish(self, on_complete: str) -> Path | None:
        """Archive or delete the checkpoint of a completed backup; return the archive path."""
        self.journal.remove()  # gone already: the last flush compacted
        if on_complete == "delete":  # a link's file, not the link (``_move_to``)
            written_file(self.path).unlink(missing_ok=True)
            return None
        archive_dir = self.path.parent / "archive"
        make_folders(archive_dir)
        target = stamped(archive_dir, f"{self.path.name}.")
        self._move_to(target)
        return target

    def _move_to(self, target: Path) -> None:
        """Move the checkpoint file to ``target``. A link (an operator's, to other storage)
        stays, for the next run to write through: the file it points to moves, copied when it
        is on another file system (``target`` is beside the link, the file may not be)."""
        written = written_file(self.path)
        try:
            written.replace(target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            write_atomic(target, written.read_bytes())
            written.unlink()
