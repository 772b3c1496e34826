"""The open-file limit of the processes the command line starts; a program embedding
``run_backup`` keeps its own.

Every object in flight holds a connection to each side and, for a while, a staged file; the
listing and the checkpoint hold a few more. Linux gives a process a soft limit of 1,024 open
files by default and a far higher hard one (524,288 under systemd): a ``--concurrency`` of a
few hundred ran out of descriptors under the soft one ('Too many open files' on staged files,
then on the checkpoint). The soft limit may be raised to the hard one by any process, as Go
programs do at start; worker processes (``--processes``) inherit it.

macOS gives 256 and an unlimited hard limit, but refuses a soft limit above ``OPEN_MAX``
(10,240): the limit is raised that far there. Where it stays too low for the objects in flight
asked (a hard limit of a few hundred: a container's, a shell's ``ulimit -Hn``), the command
copies fewer at a time and says so (``concurrency_within``), rather than failing mid-run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

#: with an unlimited hard limit, the soft one goes no higher than this (the kernel's default
#: ``fs.nr_open``, above which setrlimit fails)
_CEILING = 1 << 20
#: macOS's ``OPEN_MAX``: its setrlimit refuses a soft limit above it whatever the hard one
OPEN_MAX = 10_240
#: what a process holds whatever its concurrency: the interpreter's files, the checkpoint and
#: its journal, the listing's connections, the log
BASE_FILES = 64
#: what an object in flight holds at most, about: a connection to each side, its staged file
#: (measured: 279 open files for 128 in flight on the benchmark's mixed load, 145 with --direct)
FILES_PER_OBJECT = 3
#: with ``--direct``, nothing staged but a multipart copy's UploadPartCopy requests, the
#: ``part_concurrency`` (4) of them at once, each on its connection (measured: 268 open files
#: for 64 multipart copies in flight, 17 for none; a staged copy's parts are held to its
#: parts budget instead)
FILES_PER_DIRECT_OBJECT = 4

Limits = tuple[int, int]


def raise_open_file_limit(
    getrlimit: Callable[[], Limits] | None = None,
    setrlimit: Callable[[Limits], None] | None = None,
) -> int | None:
    """Raise the soft limit of open files to the hard one (or to ``OPEN_MAX`` where the system
    refuses more); return the soft limit (None where there is no such limit, as on Windows).
    ``getrlimit`` and ``setrlimit`` are the system's, for RLIMIT_NOFILE, unless given."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a Unix
        return None
    if getrlimit is None:
        getrlimit = functools.partial(resource.getrlimit, resource.RLIMIT_NOFILE)
    if setrlimit is None:
        setrlimit = functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE)
    soft, hard = getrlimit()
    if soft == resource.RLIM_INFINITY:
        return None
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    for wanted in (target, min(target, OPEN_MAX)):
        if soft >= wanted:
            break
        try:
            setrlimit((wanted, hard))
        except (ValueError, OSError):  # refused: a lower one may not be
            continue
        soft = wanted
        break
    return soft


def concurrency_within(
    limit: int | None, concurrency: int, processes: int = 1, per_object: int = FILES_PER_OBJECT
) -> int:
    """The objects in flight, at most ``concurrency``, that ``limit`` open files in each of
    ``processes`` processes (which share them) leave room for, each object holding
    ``per_object`` files; 1 at least."""
    if limit is None:
        return concurrency
    per_process = max(1, (limit - BASE_FILES) // per_object)
    return min(concurrency, per_process * processes)
