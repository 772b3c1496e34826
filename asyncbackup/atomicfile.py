"""Files replaced whole, never seen half-written, and the timestamped names of files set aside."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from .filemodes import private_opener, trusted_owner
from .journal import (
    JOURNAL_SUFFIX,
    fsync_dir,
)


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
