"""The console commands' entry points: light, so that a Ctrl-C while the command is still
starting (its modules take 0.1-0.2 s to import) ends it as any Ctrl-C does, exit 130, instead
of a ``KeyboardInterrupt`` traceback from the middle of an import.

Nothing has started then: no checkpoint, no staged file, nothing to save.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130
#: what a command interrupted before its run started says (also ``cli.interrupted_at_start``)
START_INTERRUPTED = "interrupted before the run started; nothing was done"


def _interrupted(parser: str, prog: str) -> NoReturn:
    """The import was interrupted: import again (a Ctrl-C leaves no module half-made) to say
    so and write the ``--report`` as the command does; failing that, the line alone."""
    try:
        from . import cli

        code = cli.interrupted_at_start(getattr(cli, parser)(), None)
    except BaseException:  # another Ctrl-C: the exit code says it
        with contextlib.suppress(OSError, ValueError):
            print(f"{prog}: {START_INTERRUPTED}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)  # no teardown: another Ctrl-C there would print a traceback


def _start(name: str, parser: str, prog: str) -> NoReturn:
    try:
        from . import cli

        entry = getattr(cli, name)
    except KeyboardInterrupt:
        _interrupted(parser, prog)
    entry()
    raise AssertionError("unreachable: the command ends the process")


def console() -> NoReturn:
    """``asyncbackup`` (and ``python -m asyncbackup``)."""
    _start("console", "build_parser", "asyncbackup")


def console_s3() -> NoReturn:
    """``backup-s3``."""
    _start("console_s3", "build_s3_parser", "backup-s3")


def console_github() -> NoReturn:
    """``backup-github``."""
    _start("console_github", "build_github_parser", "backup-github")
