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


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """An ``opener`` for ``open()``: the file, when created, is ``FILE_MODE``."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


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
