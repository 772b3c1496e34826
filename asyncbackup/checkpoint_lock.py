"""The lock that keeps one run at a time on a checkpoint."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .errors import (
    CheckpointLockedError,
)
from .filemodes import FILE_MODE, NOFOLLOW


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
