"""The modes of what asyncbackup writes: private to the user who runs it, whatever the umask.

Staged files are copies of objects a bucket policy kept private; checkpoints, their journals
and reports name buckets and keys. So files are created ``0600`` and the folders asyncbackup
creates ``0700`` (as git, rclone and restic create their temporary files), not ``0644`` and
``0755`` under the usual umask 022, which would let every local user read them (in a shared
``/tmp``, say). An existing folder keeps its mode, but a staging folder another user could
write into is refused (``refuse_shared_folder``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError

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


def trusted_owner(uid: int) -> bool:
    """Whether a file or link of ``uid`` can be trusted: this user's, or root's."""
    return uid in (os.geteuid(), 0)


def refuse_shared_folder(path: Path, what: str) -> None:
    """Refuse a folder whose files another user could redirect (``ConfigError``): one they own
    (or a link to it they own), or one they may write, where they could plant a symbolic
    link at the name of a subfolder to be, and have the files written through it. As ssh's
    StrictModes; root's folders are trusted."""
    if path.is_symlink() and not trusted_owner(path.lstat().st_uid):
        raise ConfigError(
            f"{what} {path} is a symbolic link another user owns: the files written there "
            "would go where they chose; use a folder of your own (--base-local-path)"
        )
    status = path.stat()
    if not trusted_owner(status.st_uid):
        raise ConfigError(
            f"{what} {path} belongs to another user (uid {status.st_uid}), who could redirect "
            "the files written there through a symbolic link; use a folder of your own "
            "(--base-local-path)"
        )
    if _others_may_write(status):
        raise ConfigError(
            f"{what} {path} is writable by other users (mode {stat.S_IMODE(status.st_mode):o}), "
            "who could redirect the files written there through a symbolic link; "
            f"chmod go-w {path}, or choose another --base-local-path"
        )


def refuse_open_parent(path: Path) -> None:
    """Refuse ``--base-local-path`` when others may write it without the sticky bit: they
    could move the staging folder away and put theirs in its place (``/tmp``, sticky, is
    fine: only the owner of a folder there may move it)."""
    status = path.stat()
    if _others_may_write(status) and not status.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"{path} is writable by other users without the sticky bit (mode "
            f"{stat.S_IMODE(status.st_mode):o}): another user could put a folder of theirs in "
            f"place of the staging folder; chmod go-w {path} (or +t), or choose another "
            "--base-local-path"
        )


def _others_may_write(status: os.stat_result) -> bool:
    """Whether users other than this one may write the folder: anyone (``o+w``), or its group
    (``g+w``) when that is not this user's own group (a umask of 002 makes folders ``g+w`` in
    the user's private group, as Debian and Ubuntu give every user: harmless)."""
    if status.st_mode & stat.S_IWOTH:
        return True
    return bool(status.st_mode & stat.S_IWGRP) and status.st_gid != os.getegid()
