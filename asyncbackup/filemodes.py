"""The modes of what asyncbackup writes: private to the user who runs it, whatever the umask.

Staged files are copies of objects a bucket policy kept private; checkpoints, their journals
and reports name buckets and keys. So files are created ``0600`` and the folders asyncbackup
creates ``0700`` (as git, rclone and restic create their temporary files), not ``0644`` and
``0755`` under the usual umask 022, which would let every local user read them (in a shared
``/tmp``, say). An existing folder keeps its mode.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700
#: flags of every file asyncbackup creates or writes in place: a symbolic link at its name,
#: which another user may have planted in a shared folder (to the runner's ~/.bashrc, say), is
#: refused (``ELOOP``) instead of followed
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """An ``opener`` for ``open()``: the file, when created, is ``FILE_MODE``; a symbolic link
    at ``path`` is not followed (``ELOOP``, see ``NOFOLLOW``)."""
    return os.open(path, flags | NOFOLLOW, FILE_MODE)


def make_folders(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, every folder it creates ``FOLDER_MODE``
    (``mkdir -p`` makes the missing parents with the umask's mode)."""
    try:
        path.mkdir(FOLDER_MODE)
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_folders(path.parent)
        make_folders(path)
    except FileExistsError:
        if not path.is_dir():
            raise
