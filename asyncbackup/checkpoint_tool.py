"""The checkpoint tool: inspect, list, filter errors and mark keys.

Everything an operator used to do with ``jq`` and ``vi`` on a checkpoint file, done safely:

- ``find_checkpoints()`` / ``failed_files()`` only read, and never take the run's lock (a run
  starting at that instant must not be refused because of them). Every read applies the
  checkpoint's journal (``<checkpoint>.journal``), so it shows the last flush of a run.
- ``inspect_checkpoint()`` reads too; when a run that stopped without compacting (a crash) left
  a journal and no run holds the checkpoint, it first folds the journal into the JSON file,
  under the lock, so that the file an operator then edits by hand is complete.
- ``mark_keys()`` takes the run's lock for as long as it edits, so it is refused while a run
  holds the checkpoint, and no run can start in the middle of an edit; it writes through
  ``CheckpointManager`` (temporary file, fsync, rename), so the file is valid at every instant,
  and the journal is folded into the same write. ``compact_checkpoint()`` only folds (or, on
  request, sets the journal aside).
- ``verify`` (its own module) checks a checkpoint's copies against both buckets.

Nothing here prints; the ``format_*`` functions at the end build the CLI's text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import re
import shlex
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .atomicfile import stamped, write_atomic_pieces
from .checkpoint import (
    CHECKPOINT_SUFFIX,
    CheckpointState,
    despite_journal,
    load_checkpoint,
    read_checkpoint,
)
from .checkpoint_lock import CheckpointLock
from .checkpoint_manager import CheckpointManager
from .errors import (
    CheckpointError,
    CheckpointLockedError,
    ConfigError,
)
from .journal import JOURNAL_SUFFIX, journal_path
from .printable import printable
from .uploads import SECTION as UPLOADS

log = logging.getLogger("asyncbackup")

UNKNOWN_CODE = "Unknown"
#: what follows ``NAME.checkpoint.`` in the name of an archive a completion made (``stamped``)
_STAMPED = re.compile(r"\d{8}T\d{6}Z(?:-\d+)?")
#: the notes by which a GitHub run takes an artifact for unchanged since its last copy
#: (``github.listing.VERSIONS`` and ``ETAGS``, not imported: they would load aiohttp here)
REFETCH_NOTES = ("github_versions", "github_etags")
_PROC_LOCKS = Path("/proc/locks")

# -- errors ---------------------------------------------------------------------------------


def split_error(message: str) -> tuple[str, str]:
    """``"AccessDenied: Access Denied"`` -> ``("AccessDenied", "Access Denied")``.

    A message without a ``Code:`` prefix (a hand-written one, say) has the code ``Unknown``.
    """
    code, sep, rest = message.partition(":")
    code = code.strip()
    if not sep or not code or any(ch.isspace() for ch in code):
        return UNKNOWN_CODE, message.strip()
    return code, rest.strip()


def errors_by_code(errors: Mapping[str, str]) -> dict[str, int]:
    """How many files failed with each code, the most frequent first."""
    counts = Counter(split_error(message)[0] for message in errors.values())
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True, slots=True)
class FailedFile:
    key: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "code": self.code, "message": self.message}


def failed_files(state: CheckpointState, code: str | None = None) -> list[FailedFile]:
    """The failed files of a checkpoint, sorted by key; only those of ``code`` if given."""
    out: list[FailedFile] = []
    for key in sorted(state.errors):
        error_code, message = split_error(state.errors[key])
        if code is None or error_code == code:
            out.append(FailedFile(key, error_code, message))
    return out


# -- who holds the lock ---------------------------------------------------------------------


def lock_holder(checkpoint: Path) -> int | None:
    """The pid of the run holding ``checkpoint``'s lock, 0 if held by an unknown pid, else None.

    On Linux this reads ``/proc/locks`` and never touches the lock itself. Elsewhere it falls
    back to a non-blocking try of the lock, which a run starting at that very instant could
    see as taken.
    """
    lock = CheckpointLock(checkpoint)
    try:
        st = lock.path.stat()
    except FileNotFoundError:
        return None
    try:
        table = _PROC_LOCKS.read_text()
    except OSError:
        return _pid_in(lock.path) if lock.is_held_elsewhere() else None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 10460 fe:00:2181345 0 EOF"; blocked waiters have "->".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            return int(fields[4]) if fields[4].isdigit() else 0
    return None


def _pid_in(path: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return 0


# -- show and list --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What ``checkpoint show`` tells of one checkpoint."""

    path: Path
    backup_id: str
    source: str
    source_bucket: str
    source_path: str
    dest_bucket: str
    start_time: str
    last_update: str
    total_files: int
    processed_files: int
    pending_files: int
    total_bytes: int
    processed_bytes: int
    error_count: int
    errors_by_code: dict[str, int]
    holder_pid: int | None
    journal_batches: int = 0  # applied from a journal not yet folded into the JSON file
    journal_folded: int = 0  # batches a stopped run left, folded in by this look
    #: the flags the job was run with that its resume needs (``resume_options``)
    options: list[str] = dataclasses.field(default_factory=list)

    @property
    def in_use(self) -> bool:
        return self.holder_pid is not None

    @property
    def percent_files(self) -> float:
        return 100.0 * self.processed_files / self.total_files if self.total_files else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        out["path"] = str(self.path)
        out["in_use"] = self.in_use
        out["percent_files"] = round(self.percent_files, 2)
        return out


def describe(
    path: Path, state: CheckpointState, *, journal_batches: int = 0, journal_folded: int = 0
) -> CheckpointInfo:
    return CheckpointInfo(
        path=path,
        backup_id=state.backup_id,
        source=describe_source(state),
        source_bucket=state.source_bucket,
        source_path=state.source_path,
        dest_bucket=state.dest_bucket,
        start_time=state.start_time,
        last_update=state.last_update,
        total_files=max(state.total_files, len(state.files)),
        processed_files=state.processed_files,
        pending_files=sum(1 for done in state.files.values() if not done),
        total_bytes=state.total_bytes,
        processed_bytes=state.processed_bytes,
        error_count=len(state.errors),
        errors_by_code=errors_by_code(state.errors),
        holder_pid=lock_holder(path),
        journal_batches=journal_batches,
        journal_folded=journal_folded,
        options=resume_options(state),
    )


#: S3 checkpoint config -> the flag that set it, and the kind of value the run records:
#: a list of texts (the flag once for each), a text, or a switch (true)
_OPTION_FLAGS: dict[str, tuple[str, type]] = {
    "include": ("--include", list),
    "exclude": ("--exclude", list),
    "exclude_storage_classes": ("--exclude-storage-class", list),
    "dest_prefix": ("--dest-prefix", str),
    "storage_class": ("--storage-class", str),
    "sse": ("--sse", str),
    "sse_kms_key_id": ("--sse-kms-key-id", str),
    "copy_tags": ("--copy-tags", bool),
    "skip_existing": ("--skip-existing", bool),
    "direct": ("--direct", bool),
    "request_payer": ("--request-payer", str),
    "source_profile": ("--source-profile", str),
    "dest_profile": ("--dest-profile", str),
}


def resume_options(state: CheckpointState) -> list[str]:
    """The flags an S3 job's checkpoint records that a resume is checked against or that
    change what is copied (filters, --dest-prefix, storage class, encryption...), and its
    endpoints, in the order of ``_OPTION_FLAGS``. A value of another type than the run writes
    (a hand edit) is left out, as is every option of a GitHub checkpoint."""
    if is_github(state):
        return []
    config = state.config
    out: list[str] = []
    for name, (flag, kind) in _OPTION_FLAGS.items():
        value = config.get(name)
        if kind is bool and value is True:
            out.append(flag)
        elif kind is str and isinstance(value, str):
            out += [flag, value]
        elif kind is list and isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    out += [flag, item]
    source, dest = config.get("source_endpoint_url"), config.get("dest_endpoint_url")
    if isinstance(source, str) and source == dest:
        out += ["--endpoint-url", source]
    else:
        for flag, value in (("--source-endpoint-url", source), ("--dest-endpoint-url", dest)):
            if isinstance(value, str):
                out += [flag, value]
    return out


def is_github(state: CheckpointState) -> bool:
    """A checkpoint of ``asyncbackup github`` (its source is an API, not a bucket)."""
    return state.source_bucket == "github" and "api_url" in state.config


def describe_source(state: CheckpointState) -> str:
    if is_github(state):
        return f"GitHub {state.source_path} ({state.config['api_url']})"
    return f"s3://{state.source_bucket}/{state.source_path.strip('/')}"


def inspect_checkpoint(path: Path, *, fold: bool = True) -> CheckpointInfo:
    """Describe ``path``; a bad file raises ``CheckpointError``.

    With ``fold``, the journal a stopped run left is folded into the JSON file first (see
    ``fold_leftover_journal()``); otherwise, and while a run holds it, this only reads.
    """
    if not path.is_file():
        load(path)  # the message for a missing file
    folded = fold_leftover_journal(path) if fold else 0
    loaded = load_checkpoint(path)
    return describe(
        path, loaded.state, journal_batches=loaded.journal_batches, journal_folded=folded
    )


def fold_leftover_journal(path: Path) -> int:
    """Fold a journal left by a run that stopped without compacting; return its batches.

    Does nothing (0) when there is no journal, when a run holds the checkpoint (its journal
    is live), or when the lock or the write is refused (a read-only directory): the caller
    then reads the checkpoint with the journal applied, as always. A corrupt journal, or a
    JSON file edited after the journal began, raises ``CheckpointCorruptError``.
    """
    if not journal_path(path).exists() or lock_holder(path) is not None:
        return 0
    manager = CheckpointManager(path)
    try:
        manager.open()
    except CheckpointError:
        return 0
    try:
        loaded = load_checkpoint(path)
        if not loaded.journal:
            return 0
        with contextlib.suppress(CheckpointError):
            manager.flush(loaded.state, touch=False)
            return loaded.journal_batches
        return 0
    finally:
        manager.close()


def load(path: Path) -> CheckpointState:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {_where_else(path)}")
    return read_checkpoint(path)


def archived_versions(path: Path) -> list[Path]:
    """The archives of the live checkpoint ``path`` (its completed backups), oldest first."""
    with contextlib.suppress(OSError):
        return sorted(
            (
                candidate
                for candidate in (path.parent / "archive").iterdir()
                if candidate.name.startswith(f"{path.name}.") and _kind(candidate) == "archived"
            ),
            key=_archive_order,
        )
    return []


def prune_archives(path: Path, keep: int, just_made: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` newest archives of the live checkpoint ``path`` (``keep``
    at least 1: a GitHub backup reads the newest); the ones removed. One that cannot be is
    left, and said: the backup itself is done. Only the names a completion gives its archives
    (``NAME.checkpoint.<time>``, ``-2``...) count: a copy a user made beside them
    (``NAME.checkpoint.<time>.bak``) is neither removed nor one of the ``keep``.
    ``just_made``, the archive of the completion that prunes, is one of the ``keep`` whatever
    its name's place: an archive named after the present (a clock that was ahead) sorts last."""
    removed: list[Path] = []
    made = [
        archive
        for archive in archived_versions(path)
        if _STAMPED.fullmatch(archive.name.removeprefix(f"{path.name}."))
    ]
    if just_made in made:
        made.remove(just_made)
        keep -= 1
    for old in made[: len(made) - keep]:
        try:
            old.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("old archived checkpoint %s not removed (%s)", old, exc.strerror)
            continue
        removed.append(old)
    return removed


def _archive_order(path: Path) -> tuple[str, int, str]:
    """``NAME.<time>`` then ``NAME.<time>-2``... ``-10`` (``stamped``): by time, then number.
    The time is what follows ``.checkpoint.`` (as ``_kind`` reads it), not the last dot: a
    copy a user made, ``NAME.<time>.bak``, is of its time, not after every time."""
    tail = path.name.rsplit(CHECKPOINT_SUFFIX + ".", 1)[-1]
    stamp, dash, number = tail.partition("-")
    return stamp, int(number) if dash and number.isdigit() else 1, path.name


def live_path(path: Path) -> Path | None:
    """The live checkpoint an archived one was (the file runs read), or None if ``path`` is
    not an archive: ``DIR/archive/NAME.checkpoint.<time>`` was ``DIR/NAME.checkpoint``."""
    if _kind(path) != "archived":
        return None
    return path.parent.parent / (
        path.name.rsplit(CHECKPOINT_SUFFIX + ".", 1)[0] + CHECKPOINT_SUFFIX
    )


def _where_else(path: Path) -> str:
    """What to do about a checkpoint that is not at ``path``: a completed backup's is in
    ``archive/``, which ``list`` shows only with ``--all``."""
    archived = archived_versions(path)
    if archived:
        return (
            f"its backup completed and the checkpoint was archived, last as {archived[-1]} "
            "(give that path)"
        )
    folder = path.parent if path.parent.is_dir() else Path("DIR")
    return (
        f"list the checkpoints with: asyncbackup checkpoint list {folder} --all "
        "(--all: the archived ones of completed backups too)"
    )


Kind = Literal["active", "archived", "set-aside"]


@dataclass(frozen=True, slots=True)
class ListedCheckpoint:
    """One file found by ``find_checkpoints()``: described, or with the reason it is not."""

    path: Path
    kind: Kind
    info: CheckpointInfo | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "info": self.info.to_dict() if self.info else None,
            "problem": self.problem,
        }


def _kind(path: Path) -> Kind | None:
    name = path.name
    if name.startswith(".") or name.endswith((".lock", ".tmp", JOURNAL_SUFFIX)):
        return None
    if CHECKPOINT_SUFFIX + JOURNAL_SUFFIX in name:
        return None  # a journal set aside by ``compact --discard-journal``
    if name.endswith(CHECKPOINT_SUFFIX):
        return "active"
    if CHECKPOINT_SUFFIX + "." not in name:
        return None
    tail = name.rsplit(CHECKPOINT_SUFFIX + ".", 1)[1]
    if tail.startswith(("ignored-", "corrupt-")):
        return "set-aside"
    return "archived" if path.parent.name == "archive" else None


def find_checkpoints(directory: Path, *, include_all: bool = False) -> list[ListedCheckpoint]:
    """The checkpoints under ``directory`` (recursively), sorted by path.

    Only the live ones (``*.checkpoint``) unless ``include_all``, which adds the archived
    checkpoints of completed backups and the ones set aside by ``--ignore-checkpoints``.
    A file that cannot be read is listed with its problem, not skipped.
    """
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ConfigError(
            f"{directory} {what}; pass the checkpoint directory "
            "(BASE/checkpoints by default) or --base-local-path BASE"
        )
    found: list[ListedCheckpoint] = []
    for path in sorted(directory.rglob(f"*{CHECKPOINT_SUFFIX}*")):
        kind = _kind(path)
        if kind is None or (kind != "active" and not include_all):
            continue
        # a directory in a live checkpoint's place stops its runs: listed, with the reason
        if not (path.is_file() or (kind == "active" and path.is_dir())):
            continue
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as exc:
            problem = _first_clause(str(exc)).replace(f"checkpoint {path} ", "")
            found.append(ListedCheckpoint(path, kind, problem=problem))
        else:
            info = describe(path, loaded.state, journal_batches=loaded.journal_batches)
            found.append(ListedCheckpoint(path, kind, info=info))
    return found


def _first_clause(message: str) -> str:
    return message.split(";", 1)[0]


# -- mark -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarkResult:
    """What ``mark_keys()`` did (or, with ``dry_run``, would do)."""

    path: Path
    done: bool
    matched: list[str]
    changed: int
    errors_cleared: int
    processed_files: int
    total_files: int
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        out["path"] = str(self.path)
        return out


def match_keys(keys: Iterable[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The keys matching at least one glob pattern, and the patterns that matched nothing.

    Patterns are ``fnmatch`` globs on the whole key, case-sensitive; ``*`` crosses ``/``. A
    pattern that is one of the keys as it is matches that key alone: a key with ``[``, ``*``
    or ``?`` in it (pasted from ``checkpoint errors``) is never taken for a glob that could
    match other keys.
    """
    pool = keys if isinstance(keys, Collection) else list(keys)
    present = pool if isinstance(pool, Mapping | AbstractSet) else set(pool)
    literal = {pattern for pattern in patterns if pattern in present}
    globs = [pattern for pattern in dict.fromkeys(patterns) if pattern not in literal]
    matched: set[str] = set(literal)
    used: set[str] = set(literal)
    if globs:
        for key in pool:
            for pattern in globs:
                if fnmatch.fnmatchcase(key, pattern):
                    used.add(pattern)
                    matched.add(key)
    return sorted(matched), [p for p in patterns if p not in used]


def mark_keys(
    path: Path,
    patterns: Sequence[str],
    *,
    done: bool,
    clear_errors: bool = False,
    dry_run: bool = False,
) -> MarkResult:
    """Mark the keys matching ``patterns`` done (``True``) or pending (``False``).

    Marking done drops the keys' errors (a done file has none); marking pending keeps them
    unless ``clear_errors``, and drops what a GitHub run knows of their last copy (version,
    ETags), so that they are copied again even when unchanged. ``processed_files`` is
    recomputed from the map; ``processed_bytes`` cannot be (the checkpoint keeps no sizes):
    the next run sets it from its complete listing.
    Refused with ``CheckpointLockedError`` while a run holds the checkpoint; holds the lock
    itself for the length of the edit. A pattern that matches no key refuses the whole edit.
    """
    if not patterns:
        raise ConfigError("give at least one glob PATTERN of keys to mark (quote it: 'data/*')")

    def select(state: CheckpointState) -> list[str]:
        matched, unused = match_keys(state.files, patterns)
        if unused:
            example = next(iter(state.files), None)
            hint = f" (keys look like {example!r})" if example is not None else ""
            raise ConfigError(
                f"pattern {unused[0]!r} matches no key in {path}{hint}; nothing was changed - "
                "patterns are globs on the whole key, quote them so the shell leaves them alone"
            )
        return matched

    return _edit(path, select, done=done, clear_errors=clear_errors, dry_run=dry_run)


def mark_exact(
    path: Path, keys: Iterable[str], *, done: bool, clear_errors: bool = False
) -> MarkResult:
    """Like ``mark_keys()`` for exact keys (no glob); keys not in the checkpoint are ignored."""
    wanted = set(keys)

    def select(state: CheckpointState) -> list[str]:
        return sorted(key for key in wanted if key in state.files)

    return _edit(path, select, done=done, clear_errors=clear_errors, dry_run=False)


def _edit(
    path: Path,
    select: Callable[[CheckpointState], list[str]],
    *,
    done: bool,
    clear_errors: bool,
    dry_run: bool,
) -> MarkResult:
    load(path)  # a clear message for a missing or corrupt file, before locking anything
    manager = _lock_for_edit(path, "mark")
    try:
        # Again, under the lock: the last flush, with the journal of a crashed run applied
        # (the write below folds it in).
        state = read_checkpoint(path)
        matched = select(state)
        changed = sum(1 for key in matched if state.files[key] is not done)
        cleared = 0
        for key in matched:
            state.files[key] = done
            if (done or clear_errors) and state.errors.pop(key, None) is not None:
                cleared += 1
            if not done:
                _forget_versions(state, key)
        state.processed_files = sum(1 for value in state.files.values() if value)
        if not dry_run:
            manager.flush(state)
        return MarkResult(
            path=path,
            done=done,
            matched=matched,
            changed=changed,
            errors_cleared=cleared,
            processed_files=state.processed_files,
            total_files=max(state.total_files, len(state.files)),
            dry_run=dry_run,
        )
    finally:
        manager.close()


def _forget_versions(state: CheckpointState, key: str) -> None:
    """A key marked pending is copied again: a GitHub run must not find its version or ETag
    unchanged since the last copy, and skip it."""
    for section in REFETCH_NOTES:
        notes = state.extra.get(section)
        if isinstance(notes, dict):
            notes.pop(key, None)


def _lock_for_edit(path: Path, verb: str) -> CheckpointManager:
    manager = CheckpointManager(path)
    try:
        manager.open()
    except CheckpointLockedError:
        holder = lock_holder(path)
        who = f" (pid {holder})" if holder else ""
        raise CheckpointLockedError(
            f"checkpoint {path} is in use by a running backup{who}; it was not changed - "
            f"stop the run (Ctrl-C) or wait for it to finish, then {verb} again"
        ) from None
    return manager


# -- compact --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompactResult:
    """What ``compact_checkpoint()`` did."""

    path: Path
    had_journal: bool
    folded_batches: int = 0
    discarded_to: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "had_journal": self.had_journal,
            "folded_batches": self.folded_batches,
            "discarded_to": str(self.discarded_to) if self.discarded_to else None,
        }


def compact_checkpoint(path: Path, *, discard_journal: bool = False) -> CompactResult:
    """Fold the journal a stopped run left into the JSON file, under the run's lock.

    With ``discard_journal``, keep the JSON file as it is (a hand edit made after a crash,
    say) and set the journal aside as ``<journal>.discarded-<time>``: the progress it
    recorded is forgotten, so those files are copied again.
    """
    if not path.is_file():
        load(path)  # the message for a missing file
    manager = _lock_for_edit(path, "compact")
    try:
        jpath = journal_path(path)
        if discard_journal:
            kept = load_checkpoint(path, journal=False).state  # the JSON file must be sound
            if not jpath.exists():
                return CompactResult(path, had_journal=False)
            _keep_journal_uploads(path, kept)
            aside = stamped(jpath.parent, f"{jpath.name}.discarded-")
            jpath.replace(aside)
            return CompactResult(path, had_journal=True, discarded_to=aside)
        loaded = load_checkpoint(path)
        if loaded.journal:
            manager.flush(loaded.state, touch=False)
        return CompactResult(path, loaded.journal, folded_batches=loaded.journal_batches)
    finally:
        manager.close()


def _keep_journal_uploads(path: Path, kept: CheckpointState) -> None:
    """Before a journal is set aside: the multipart uploads it alone records (a crash in the
    middle of one) go into the JSON file, for the next run to abort. Discarding a journal
    forgets its progress, never an upload still billed at the destination."""
    journaled = despite_journal(path)
    theirs = journaled.extra.get(UPLOADS) if journaled is not None else None
    if not theirs:
        return
    ours: dict[str, Any] = kept.extra.get(UPLOADS) or {}
    merged = {**ours, **theirs}
    if merged != ours:
        kept.extra[UPLOADS] = merged
        write_atomic_pieces(path, kept.iter_json())


# -- formatting for the CLI -----------------------------------------------------------------


def human_bytes(size: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _job(info: CheckpointInfo) -> str:
    """Escaped, as the run logs it: a source path is a key prefix, and may hold any character
    (a hand-written checkpoint, any field)."""
    return printable(f"{info.backup_id}  {info.source} -> s3://{info.dest_bucket}")


def _state(info: CheckpointInfo) -> str:
    if info.holder_pid is None:
        return "idle (no run holds it)"
    return f"in use by a running backup (pid {info.holder_pid or '?'})"


def format_codes(codes: Mapping[str, int]) -> str:
    return ", ".join(f"{printable(code)} {count:,}" for code, count in codes.items())


def format_info(info: CheckpointInfo) -> str:
    pct_bytes = 100.0 * info.processed_bytes / info.total_bytes if info.total_bytes else 0.0
    lines = [
        f"checkpoint   {info.path}",
        f"job          {_job(info)}",
        f"state        {_state(info)}",
        # ISO, but Python's reading takes any one character between date and time
        printable(f"started      {info.start_time}    last update {info.last_update}"),
        f"files        {info.processed_files:,} of {info.total_files:,} done "
        f"({info.percent_files:.1f}%), {info.pending_files:,} pending",
        f"bytes        {human_bytes(info.processed_bytes)} of {human_bytes(info.total_bytes)} "
        f"({pct_bytes:.1f}%)",
        f"errors       {info.error_count:,}",
    ]
    if info.options:  # as a shell takes them: quoted where needed
        lines.append(printable(f"options      {shlex.join(info.options)}"))
    if info.journal_folded:
        lines.append(
            f"journal      {info.journal_folded:,} batches a stopped run left were folded into "
            "the file"
        )
    elif info.journal_batches:
        lines.append(
            f"journal      {info.journal_batches:,} batches since the file was last written "
            "whole (applied above; the run folds them in)"
        )
    codes = {printable(code): count for code, count in info.errors_by_code.items()}
    width = max((len(code) for code in codes), default=0)
    lines.extend(f"  {code:<{width}}  {count:,}" for code, count in codes.items())
    if info.error_count:
        lines.append(f"(one line per failed file: asyncbackup checkpoint errors {info.path})")
    return "\n".join(lines)


def format_listed(item: ListedCheckpoint) -> str:
    kind = "" if item.kind == "active" else f"  [{item.kind}]"
    if item.info is None:
        return f"{item.path}  UNREADABLE: {item.problem}{kind}"
    info = item.info
    running = "  [running]" if info.in_use else ""
    job = _job(dataclasses.replace(info, backup_id=info.backup_id[:8]))
    return (
        f"{item.path}  {job}  "
        f"{info.processed_files:,}/{info.total_files:,} files ({info.percent_files:.0f}%)  "
        f"{info.error_count:,} errors{running}{kind}"
    )


def format_failed(failed: FailedFile) -> str:
    """``key<TAB>Code<TAB>message``: easy to ``cut -f1`` or ``grep`` (a tab or newline in
    the key, code or message is escaped: ``printable``)."""
    return f"{printable(failed.key)}\t{printable(failed.code)}\t{printable(failed.message)}"


def format_mark(result: MarkResult) -> str:
    what = "done" if result.done else "pending"
    verb = "would mark" if result.dry_run else "marked"
    line = (
        f"{verb} {len(result.matched):,} keys {what} ({result.changed:,} changed), "
        f"cleared {result.errors_cleared:,} errors; now {result.processed_files:,} of "
        f"{result.total_files:,} files done"
    )
    if result.dry_run:
        line += " (dry run: the checkpoint was not changed)"
    return line


def format_compact(result: CompactResult) -> str:
    journal = journal_path(result.path)
    if result.discarded_to is not None:
        return (
            f"set the journal aside as {result.discarded_to}; {result.path} is kept as it is "
            "(the files the journal recorded as done will be copied again)"
        )
    if not result.had_journal:
        return f"nothing to fold: {result.path} has no journal"
    return f"folded {result.folded_batches:,} batches from {journal} into {result.path}"
