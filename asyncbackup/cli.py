"""The command line: the parsers (options in ``cli_options``) -> config -> a uvloop runner, with
signals, logging and exit codes.

Exit codes: 0 all copied; 1 finished with per-file errors (in the checkpoint); 2 bad usage or
configuration; 3 a fatal error stopped the run (the checkpoint is valid: run again to resume);
120 a success whose stdout could not be written (``EXIT_STDOUT_LOST``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import difflib
import io
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import orjson

from .api import BackupPlan, plan_backup, run_backup
from .atomicfile import write_atomic, written_file
from .checkpoint import now_iso, remedy
from .cli_options import (
    GITHUB_DESCRIPTION,
    AutoProcesses,
    Version,
    add_common_arguments,
    add_github_arguments,
    add_s3_arguments,
    github_config,
    s3_config,
)
from .config import BackupConfig
from .console import START_INTERRUPTED
from .errors import AsyncBackupError, ConfigError
from .fdlimit import (
    BASE_FILES,
    FILES_PER_DIRECT_OBJECT,
    FILES_PER_OBJECT,
    concurrency_within,
    raise_open_file_limit,
)
from .logformat import make_handler
from .memory import collect_less, return_large_buffers_to_os
from .pipeline import primary_error
from .printable import escape_surrogates, printable
from .progress import Observer
from .redact import redact
from .report import BackupReport
from .run_output import (
    ProgressDisplay,
    left_out_text,
    pick_progress,
    summary_lines,
    summary_record,
    write_report,
)

if TYPE_CHECKING:
    from .github.plan import GitHubPlan  # aiohttp: only for the github command

log = logging.getLogger("asyncbackup")
T = TypeVar("T")


class _Plan(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


PlanT = TypeVar("PlanT", bound=_Plan)

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STDOUT_LOST = 120  # the interpreter's own code when it cannot flush stdout at exit
PROG = "asyncbackup"  # the command with subcommands (s3, github, checkpoint)
GRACE_SECONDS = 5.0


class _BadUsage(SystemExit):
    """A command line the parser refused: exit 2, after its one line on stderr."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.prog, self.message = prog, message


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        message = f"{message} (see {self.prog} --help)"
        _say(f"{self.prog}: error: {message}")
        raise _BadUsage(self.prog, message)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        """Words no parser took are refused by the parser of the (sub)command they were
        given to, with the flag meant where one is close: argparse's own refusal came from
        the top parser, ``(see asyncbackup --help)``, whose help lists no flag."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = _command_parser(self, parsed)
            options = [name for action in command._actions for name in action.option_strings]
            meant = [
                close[0]
                for word in extras
                if word.startswith("--")
                and (close := difflib.get_close_matches(word.split("=", 1)[0], options, n=1))
            ]
            message = f"unrecognized arguments: {' '.join(extras)}"
            message += f" (did you mean {' and '.join(meant)}?)" if meant else ""
            command.error(message)
        return parsed


def _command_parser(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> Any:
    """The parser of the subcommand (``s3``, ``checkpoint list``...) ``parsed`` went to."""
    while True:
        chosen = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
        if chosen is None:
            return parser
        parser = chosen


class _ReportOnly(argparse.ArgumentParser):
    """Finds ``--report`` in a command line the real parser refused; never exits."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _report_unparsed(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    status: str,
    exit_code: int,
    message: str,
) -> None:
    """A backup command that ended before its command line was parsed (refused by the parser,
    exit 2; interrupted while starting, 130) still writes its ``--report``, as any run
    stopped by an error or a signal does: the file must not keep the last run's result. Not
    for the checkpoint tool, which takes no ``--report``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if parser.prog == PROG and words[:1] == ["checkpoint"]:
        return
    finder = _ReportOnly(add_help=False)
    finder.add_argument("--report", type=Path)
    try:
        found, _ = finder.parse_known_args(words)
    except ValueError:
        return
    _report_end(found, status, exit_code, message)


def interrupted_at_start(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Ctrl-C before the run started: one line, the ``--report``, exit 130."""
    _say(f"{parser.prog}: {START_INTERRUPTED}")
    _report_unparsed(parser, argv, "interrupted", EXIT_INTERRUPTED, START_INTERRUPTED)
    return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Resumable, high-concurrency backups to S3.",
    )
    parser.add_argument("--version", action=Version)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s3 = commands.add_parser(
        "s3",
        help="copy a prefix of one S3 bucket to another",
        description="Copy every object under SOURCE_PATH/ of the source bucket to the "
        "destination bucket, through the staging directory, resumably.",
    )
    add_s3_arguments(s3)
    add_common_arguments(s3)
    s3.set_defaults(handler=_s3_command)
    github = commands.add_parser(
        "github",
        help="back up an organisation's or user's GitHub repositories to S3",
        description=GITHUB_DESCRIPTION,
    )
    add_github_arguments(github)
    add_common_arguments(github)
    github.set_defaults(handler=_github_command)
    from .checkpoint_cli import add_checkpoint_commands  # only this command has them

    add_checkpoint_commands(commands)
    return parser


def build_s3_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backup-s3",
        description="Copy every object under SOURCE_PATH/ of the source bucket to the "
        "destination bucket, through the staging directory, resumably.",
    )
    add_s3_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=_s3_command)
    return parser


def build_github_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backup-github", description=GITHUB_DESCRIPTION)
    add_github_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=_github_command)
    return parser


async def _run_and_summarize(
    args: argparse.Namespace,
    start: Callable[[Observer, asyncio.Event], Coroutine[Any, Any, BackupReport]],
) -> int:
    """Run with progress and signal handling, then print the summary; the exit code."""
    _check_report_path(args)
    progress = pick_progress(args, sys.stderr, log)
    report = await _with_progress(
        progress, lambda: _interruptible(lambda stop: start(progress, stop))
    )
    if report is None:
        message = "interrupted; the checkpoint is saved - run the same command to resume"
        log.warning(message)
        _report_end(args, "interrupted", EXIT_INTERRUPTED, message)
        return EXIT_INTERRUPTED
    try:
        _summarize(report, args)
    except KeyboardInterrupt:  # the run has ended: a Ctrl-C while it is said changes nothing
        _write_report(report, args)
    return report.exit_code


async def _github_command(args: argparse.Namespace) -> int:
    from .github import run_github_backup

    config = github_config(args)
    config.resolved_token()  # fail before any work when the token is missing
    if args.dry_run:
        from .github.plan import plan_github_backup

        return await _show_plan(args, lambda: plan_github_backup(config), _github_plan_lines)
    return await _run_and_summarize(
        args, lambda observer, stop: run_github_backup(config, observer=observer, stop=stop)
    )


def configure_logging(args: argparse.Namespace) -> None:
    log_format = getattr(args, "log_format", "text")
    handler = make_handler(log_format)
    log.handlers[:] = [handler]
    log.propagate = False
    # Other libraries' warnings (botocore, asyncio) through the same formatter: JSON lines in
    # JSON mode; escaped and redacted lines in text mode, not Python's raw last resort.
    root = logging.getLogger()
    root.handlers[:] = [make_handler(log_format)]
    root.setLevel(logging.WARNING)
    if args.debug:
        log.setLevel(logging.DEBUG)
    elif getattr(args, "quiet", False):
        log.setLevel(logging.WARNING)
    else:
        log.setLevel(logging.INFO)


async def _s3_command(args: argparse.Namespace) -> int:
    config = s3_config(args)
    if args.dry_run:
        return await _dry_run(config, args)
    return await _run_and_summarize(
        args, lambda observer, stop: run_backup(config, observer=observer, stop=stop)
    )


def _check_report_path(args: argparse.Namespace) -> None:
    """Refuse a --report path that cannot be written before the run, not after hours of it."""
    report: Path | None = args.report
    if report is not None and (report.is_dir() or not report.parent.is_dir()):
        raise ConfigError(
            f"--report {report}: the directory {report.parent} does not exist or the path is a "
            "directory; give a file in an existing directory"
        )
    if report is not None:
        try:
            written_file(report)
        except OSError as exc:
            raise ConfigError(f"--report {report}: {exc.strerror}; {remedy(exc)}") from None
    # The report is written beside itself, then renamed: the directory must take new files.
    if report is not None and not os.access(report.parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--report {report}: this user cannot write in {report.parent} (read-only or "
            "its permissions); give a file in a directory this user can write"
        )


async def _with_progress(
    progress: ProgressDisplay, main: Callable[[], Coroutine[Any, Any, BackupReport | None]]
) -> BackupReport | None:
    """Run ``main()`` with the progress display drawn, and its ticker beside it."""
    progress.start()
    try:
        async with asyncio.TaskGroup() as tg:
            ticker = tg.create_task(progress.run())
            try:
                return await main()
            finally:
                ticker.cancel()
    except BaseExceptionGroup as group:  # the run's own error, not a group of one
        raise primary_error(group) from None
    finally:
        progress.close()


async def _dry_run(config: BackupConfig, args: argparse.Namespace) -> int:
    return await _show_plan(args, lambda: plan_backup(config), _s3_plan_lines)


def _s3_plan_lines(plan: BackupPlan) -> list[str]:
    return [
        f"dry run: would copy {plan.copy_files} files ({plan.copy_bytes} bytes) of "
        f"{plan.listed_files} listed ({plan.listed_bytes} bytes); {plan.done_files} already "
        f"done per checkpoint, {plan.unchanged_files} unchanged at the destination"
        + left_out_text(plan.filtered_files, plan.class_excluded_files),
        *_sample(plan.first_keys, plan.copy_files),
    ]


_SAMPLE = 20  # the repositories left out a GitHub dry run prints (as it prints the kept)


def _github_plan_lines(plan: GitHubPlan) -> list[str]:
    left_out = [f"left out: {name} ({why})" for name, why in plan.left_out.items()]
    return [
        f"dry run: would back up {plan.repositories} repositories of {plan.owner} "
        f"({plan.artifacts} artifacts: bundles, wikis, metadata, release assets; "
        f"{plan.done_artifacts} already done per checkpoint); {len(plan.left_out)} left out",
        *_sample(plan.first_repositories, plan.repositories),
        *_sample(
            left_out[:_SAMPLE],
            len(left_out),
            "more left out (every one in --report's left_out)",
        ),
    ]


def _sample(shown: Sequence[str], total: int, more: str = "more") -> list[str]:
    """A dry run's lines for the first of ``total`` names, ``shown``: each indented and
    escaped, then how many more there are."""
    lines = [f"  {printable(name)}" for name in shown]
    if total > len(shown):
        lines.append(f"  ... and {total - len(shown)} {more}")
    return lines


async def _show_plan(
    args: argparse.Namespace,
    make: Callable[[], Coroutine[Any, Any, PlanT]],
    lines: Callable[[PlanT], list[str]],
) -> int:
    """A dry run: the plan ``make()`` makes, on stdout (``lines``) and in ``--report``."""
    _check_report_path(args)
    plan = await _until_signal(make())
    if plan is None:
        log.warning("interrupted; a dry run changes nothing")
        _report_end(args, "interrupted", EXIT_INTERRUPTED, "interrupted before the plan was made")
        return EXIT_INTERRUPTED
    if args.report:  # first: the report does not depend on anybody reading stdout
        try:
            write_atomic(args.report, orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise ConfigError(
                f"cannot write --report {args.report}: {exc.strerror}; {remedy(exc)}"
            ) from exc
    try:
        print("\n".join(lines(plan)))
    except OSError:  # `| head -1` has what it wanted; the rest is lost, as Python says: 120
        return EXIT_STDOUT_LOST
    return EXIT_OK


async def _until_signal(work: Coroutine[Any, Any, T]) -> T | None:
    """``await work``, or None once SIGINT or SIGTERM cancelled it (something that changes
    nothing, such as a dry run, has nothing to finish first)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        signalled = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await work
    except asyncio.CancelledError:
        if not signalled:
            raise
        task.uncancel()
        return None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _interruptible(
    start: Callable[[asyncio.Event], Coroutine[Any, Any, BackupReport]],
) -> BackupReport | None:
    """Run with SIGINT/SIGTERM handling: the first stops gracefully, the second at once.

    Returns None when a signal cancelled the run (the checkpoint was flushed on the way out).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop = asyncio.Event()
    signalled = False
    grace: asyncio.TimerHandle | None = None

    def on_signal(signame: str) -> None:
        nonlocal signalled, grace
        if not signalled:
            signalled = True
            log.warning(
                "%s: finishing objects in flight (at most %.0fs); press Ctrl-C again to stop "
                "at once",
                signame,
                GRACE_SECONDS,
            )
            stop.set()
            grace = loop.call_later(GRACE_SECONDS, task.cancel)
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        report = await start(stop)
    except asyncio.CancelledError:
        if not signalled:
            raise
        return None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if grace is not None:  # a run that stopped within the grace period: no late cancel
            grace.cancel()
    return None if report.status == "stopped" and signalled else report


def _summarize(report: BackupReport, args: argparse.Namespace) -> None:
    """The final summary on stderr (a JSON record with --log-format json), and --report."""
    if getattr(args, "log_format", "text") == "json":
        # Handled whatever the logger's level: --quiet drops info records, not the summary.
        level = logging.WARNING if report.errors else logging.INFO
        record = log.makeRecord(
            log.name, level, __file__, 0, "summary", (), None, extra=summary_record(report)
        )
        log.handle(record)
    else:
        _say("\n".join(summary_lines(report)))
    _write_report(report, args)


def _write_report(report: BackupReport, args: argparse.Namespace) -> None:
    """``--report``: the run's outcome, or no file (never an earlier run's)."""
    if args.report:
        try:
            write_report(args.report, report)
        except OSError as exc:
            _drop_stale_report(args.report)
            log.error(
                "cannot write the report %s: %s (an earlier report there is removed)",
                args.report,
                exc.strerror,
            )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def open_standard_streams() -> None:
    """Give a closed stdin, stdout or stderr (``<&-``, ``2>&-``, a launcher that closes them)
    ``/dev/null``, as daemons do. Left closed, the next file opened takes its number: log
    lines and the summary would land in it, and libuv aborts the process (SIGABRT, after a
    completed copy) when it closes a descriptor below 3 that its loop had been given."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            name = {1: "stdout", 2: "stderr"}.get(fd)
            if name is not None and getattr(sys, name) is None:
                stream = open(fd, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115
                setattr(sys, name, stream)


def _escape_unencodable(exc: UnicodeError) -> tuple[str | bytes, int]:
    """``surrogateescape`` where it applies (bytes a file name had, given back as they were),
    ``backslashreplace`` for the rest (a character the encoding lacks)."""
    try:
        return codecs.lookup_error("surrogateescape")(exc)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(exc)


codecs.register_error("asyncbackup.escape", _escape_unencodable)


def escape_what_stdout_cannot_encode() -> None:
    """Results on a stdout whose encoding lacks a key's characters (``PYTHONIOENCODING=ascii``,
    the C locale with ``PYTHONUTF8=0``, a latin-1 locale) print them escaped (``\\xe9``), as
    stderr does, instead of ending the command half-way with an ``UnicodeEncodeError``."""
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper) and stdout.errors in ("strict", "surrogateescape"):
        stdout.reconfigure(errors="asyncbackup.escape")


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        return _run(parser, argv)
    except KeyboardInterrupt:  # before the run started (its own Ctrl-C is handled in it)
        return interrupted_at_start(parser, argv)


def fit_open_files(args: argparse.Namespace, limit: int | None) -> None:
    """Copy fewer objects at a time than ``--concurrency`` asks where the open-file limit
    leaves no room for them (a hard limit of a few hundred), and say so: the run would fail
    with 'Too many open files' on its staged files or its checkpoint."""
    concurrency: int | None = getattr(args, "concurrency", None)
    if concurrency is None or limit is None:
        return
    processes = getattr(args, "processes", 1)
    if isinstance(processes, AutoProcesses):  # their number depends on the concurrency
        processes = 1
    per_object = FILES_PER_DIRECT_OBJECT if getattr(args, "direct", False) else FILES_PER_OBJECT
    fits = concurrency_within(limit, concurrency, processes, per_object)
    if fits < concurrency:
        needed = BASE_FILES + per_object * -(-concurrency // processes)
        log.warning(
            "the open-file limit (ulimit -n) is %d, too low for --concurrency %d (about %d "
            "files per object in flight): copying %d at a time; raise it (ulimit -n %d) for %d",
            limit, concurrency, per_object, fits, needed, concurrency,
        )  # fmt: skip
        args.concurrency = fits


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    open_standard_streams()
    escape_what_stdout_cannot_encode()
    try:
        args = parser.parse_args(argv)
    except _BadUsage as refused:
        _report_unparsed(parser, argv, "failed", EXIT_USAGE, refused.message)
        raise
    configure_logging(args)
    return_large_buffers_to_os()  # the command line owns its process (see memory.py)
    fit_open_files(args, raise_open_file_limit())  # and its open files (fdlimit.py)
    collect_less()
    code: int | None = None  # the run's, once it has ended and said so
    failure: Exception | None = None  # the run's error, said once the loop is closed
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            try:
                code = runner.run(args.handler(args))
            except Exception as exc:
                failure = exc
                raise
        return code
    except KeyboardInterrupt:  # outside the run's own handling: making its loop, say
        if code is not None:  # or closing it: the run ended, summary and report written
            return code
        if failure is not None:  # or closing it after the run failed: its error stands
            return _failed(parser, args, failure)
        message = "interrupted; run the same command to resume"
        _fatal(args, f"{parser.prog}: {message}", EXIT_INTERRUPTED)
        _report_end(args, "interrupted", EXIT_INTERRUPTED, message)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _failed(parser, args, exc)


def _failed(parser: argparse.ArgumentParser, args: argparse.Namespace, exc: Exception) -> int:
    """Say why the run failed (one line; the traceback too with --debug); its exit code."""
    if args.debug:
        _say(redact("".join(traceback.format_exception(exc))).rstrip("\n"))
    if isinstance(exc, AsyncBackupError):
        _fatal(args, f"{parser.prog}: error: {exc}", exc.exit_code)
        _report_end(args, "failed", exc.exit_code, f"{exc}")
        return exc.exit_code
    # a bug or an untranslated failure: still one line
    detail = " ".join(str(exc).split()) or type(exc).__name__
    message = f"unexpected {type(exc).__name__}: {detail}"
    _fatal(
        args,
        f"{parser.prog}: error: {message} (the checkpoint is valid; run with --debug for details)",
        EXIT_FATAL,
    )
    _report_end(args, "failed", EXIT_FATAL, message)
    return EXIT_FATAL


def _report_end(args: argparse.Namespace, status: str, exit_code: int, message: str) -> None:
    """A run that ends without a summary (stopped by an error or a signal) still writes its
    ``--report``: the file must not go on holding an earlier run's result, which a monitor
    would read as this one's. Nothing when it cannot be written (the error said why)."""
    path: Path | None = getattr(args, "report", None)
    if path is None:
        return
    document = {
        "status": status,
        "exit_code": exit_code,
        # a path whose bytes are not UTF-8 (lone surrogates) as \udce9, which JSON can hold
        "error": escape_surrogates(redact(" ".join(message.split()))),
        "finished_at": now_iso(),
    }
    try:
        write_atomic(path, orjson.dumps(document, option=orjson.OPT_INDENT_2))
    except OSError:
        _drop_stale_report(path)


def _drop_stale_report(path: Path) -> None:
    """The report could not be written (a full disk): remove the earlier run's, so that no
    monitor reads it as this run's (removing a file needs no space)."""
    with contextlib.suppress(OSError):
        written_file(path).unlink(missing_ok=True)  # through the operator's link, as written


def _fatal(args: argparse.Namespace, message: str, exit_code: int) -> None:
    """The one line that ends a failed run: plain (its control characters escaped: it may
    quote a server's message), or a JSON record with --log-format json."""
    message = redact(message)
    if getattr(args, "log_format", "text") == "json":
        log.error(message, extra={"exit_code": exit_code})
    else:
        _say(printable(message))


def _say(text: str) -> None:
    """``text`` on stderr; nothing when stderr cannot be written (a pipe nobody reads any
    more): what the run did, its exit code and its --report must not depend on it."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr)


def _main(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    try:
        parser = build()
    except KeyboardInterrupt:  # while it is made (it imports the checkpoint commands' module)
        return interrupted_at_start(build(), argv)
    return run(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return _main(build_parser, argv)


def main_s3(argv: Sequence[str] | None = None) -> int:
    return _main(build_s3_parser, argv)


def main_github(argv: Sequence[str] | None = None) -> int:
    return _main(build_github_parser, argv)


def leave(code: int) -> NoReturn:
    """End the process with ``code`` once the run has returned, skipping the interpreter's
    teardown: freeing every module and object of a finished run costs about 0.1 s (a tenth
    of a 2,000-object copy) and has nothing left to do. By then the run is over: the loop is
    closed, its executor joined, the checkpoint closed and fsynced. What is still buffered -
    log handlers, stdout, stderr - is flushed first. Only for the console commands, which
    own their process; ``main()`` and friends return the code for callers in Python.

    stdout that cannot be flushed (a full disk, a closed pipe) makes a success 120, as the
    interpreter's own exit: the command's output is lost. stderr does not: it only carries
    progress and the summary, and the run's code (and --report) must not depend on whether
    anybody still reads them."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except ValueError:  # closed by the program: nothing left in it
            pass
        except OSError:
            if stream is sys.stdout:
                code = code or 120
    os._exit(code)


def console() -> NoReturn:
    """``asyncbackup`` (and ``python -m asyncbackup``)."""
    leave(main())


def console_s3() -> NoReturn:
    """``backup-s3``."""
    leave(main_s3())


def console_github() -> NoReturn:
    """``backup-github``."""
    leave(main_github())
