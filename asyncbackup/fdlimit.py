"""The open-file limit of the processes the command line starts; a program embedding
``run_backup`` keeps its own.

Every object in flight holds a connection to each side and, for a while, a staged file; the
listing and the checkpoint hold a few more. Linux gives a process a soft limit of 1,024 open
files by default and a far higher hard one (524,288 under systemd): a ``--concurrency`` of a
few hundred ran out of descriptors under the soft one ('Too many open files' on staged files,
then on the checkpoint). The soft limit may be raised to the hard one by any process, as Go
programs do at start; worker processes (``--processes``) inherit it.
"""

from __future__ import annotations

import contextlib

#: with an unlimited hard limit, the soft one goes no higher than this (the kernel's default
#: ``fs.nr_open``, above which setrlimit fails)
_CEILING = 1 << 20


def raise_open_file_limit() -> int | None:
    """Set the soft limit of open files to the hard one; return the soft limit (None where
    there is no such limit, as on Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # refused: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft
