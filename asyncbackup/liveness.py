"""Whether the run that named a temporary file in a shared staging folder is still going.

A run names its temporary files ``<pid>-<token>-<n>`` and, while it writes them, holds an
``flock`` on ``<pid>-<token>-alive`` beside them. A run starting on the same base path removes
only the files of runs whose lock is free: the kernel frees it when its holder ends, however
it ends, and the lock is seen across containers sharing the folder, whose pids mean nothing
to each other (a container's job is pid 1 at every run). Files with no lock file beside them
(a run of an older version, a file system without locks) are judged by their pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import weakref
from pathlib import Path

from .filemodes import FILE_MODE

ALIVE = "alive"
#: the prefixes (``<pid>-<token>-``) of this process's runs still going: a temporary file with
#: this process's pid and another prefix is a dead process's that had the same pid, or that of
#: a run of this process that has ended (a program embedding ``run_backup`` runs many)
OWN_PREFIXES: set[str] = set()


def _lock_state(path: Path) -> bool | None:
    """Whether a run holds the lock file ``path``; None when there is none to ask (or the
    file system cannot say)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # and with it the shared lock just taken
    return False


def writer_alive(folder: Path, name: str) -> bool:
    """Whether the run that named the file ``name`` in ``folder`` still runs."""
    pid, _, rest = name.partition("-")
    if not pid.isdigit():
        return False
    prefix = f"{pid}-{rest.partition('-')[0]}-"
    held = _lock_state(folder / f"{prefix}{ALIVE}")
    if held is not None:
        return held
    if int(pid) == os.getpid():  # ours, or a crashed run's that had this pid before
        return prefix in OWN_PREFIXES
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_lock_file(path: Path) -> None:
    """Remove the lock file ``path`` of a run found dead (``writer_alive``), holding its lock
    meanwhile: a run that made it and locks it just now keeps it, and one that locks it
    later finds it gone (``LivenessLock.hold`` makes another). Removed once its check was
    over, it was the lock file of the run that had locked it in between."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError:  # not a file to lock (a link, say): removed as any leftover
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its run has locked it since: alive
        except OSError:
            pass  # no locks here: the pid judged it
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), path.lstat()):
                path.unlink()
    finally:
        os.close(fd)


def is_lock_file(name: str) -> bool:
    """Whether ``name`` is that of a run's lock file (``<pid>-<token>-alive``)."""
    return name.endswith(f"-{ALIVE}")


def _release(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()  # first: nobody finds it unlocked
    os.close(fd)


class LivenessLock:
    """The lock a run holds on ``<prefix>alive`` in ``folder`` while it writes temporary
    files named ``<prefix>...`` there (``hold``: once, before the first)."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.path = folder / f"{prefix}{ALIVE}"
        self._prefix = prefix
        self._tried = False
        #: temporary files are named in worker threads: none before the lock is held
        self._taking = threading.Lock()
        self._finalizer: weakref.finalize[[int, Path], LivenessLock] | None = None
        OWN_PREFIXES.add(prefix)

    def hold(self) -> None:
        """Take the lock (blocking: two system calls). Where it cannot be taken (no locks on
        this file system) no lock file is left: the pid decides, as before there were
        locks. A run removing a dead run's lock file between its creation and the lock
        being taken would leave this one unseen: it is made again."""
        with self._taking:
            if not self._tried:
                self._tried = True
                self._take()

    def _take(self) -> None:
        for _ in range(3):
            try:  # read-only: a file open for writing would keep its disk from being
                # remounted read-only (busy), and flock needs no more
                flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                fd = os.open(self.path, flags, FILE_MODE)
            except OSError:
                return  # the temporary files' own creation will say what is wrong
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a run starting checks it (a shared lock, for a
                    # moment): it has locks, and the name is ours alone - wait for it
                    fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.path.samestat(os.fstat(fd), self.path.stat())
            except FileNotFoundError:
                held = False  # removed by a run that found it unlocked: again
            except OSError:  # no locks here
                _release(fd, self.path)
                return
            if held:
                self._finalizer = weakref.finalize(self, _release, fd, self.path)
                return
            os.close(fd)

    def release(self) -> None:
        """The run is over: its temporary files are gone, and so is the lock file. A file it
        left after all (an open that a slow disk finished after a cancellation had removed
        the file) is a dead run's from now on, for the next run of this process too."""
        if self._finalizer is not None:
            self._finalizer()
        OWN_PREFIXES.discard(self._prefix)
