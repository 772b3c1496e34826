"""The command line: argparse -> config -> a uvloop runner, with signals, logging and exit codes.

Exit codes: 0 all copied; 1 finished with per-file errors (in the checkpoint); 2 bad usage or
configuration; 3 a fatal error stopped the run (the checkpoint is valid: run again to resume);
120 a success whose stdout could not be written (``EXIT_STDOUT_LOST``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import io
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson

from .api import plan_backup, run_backup
from .atomicfile import write_atomic, written_file
from .checkpoint import now_iso, remedy
from .checkpoint_cli import add_checkpoint_commands
from .config import CHECKSUM_CHOICES, ON_COMPLETE_CHOICES, SSE_CHOICES, BackupConfig
from .errors import AsyncBackupError, ConfigError
from .fdlimit import raise_open_file_limit
from .logformat import LOG_FORMATS, make_handler
from .memory import collect_less, return_large_buffers_to_os
from .pipeline import primary_error
from .printable import escape_surrogates, printable
from .progress import Observer
from .redact import redact
from .report import BackupReport
from .run_output import ProgressDisplay, pick_progress, summary_lines, summary_record, write_report

if TYPE_CHECKING:
    from .github import GitHubBackupConfig

log = logging.getLogger("asyncbackup")
T = TypeVar("T")

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STDOUT_LOST = 120  # the interpreter's own code when it cannot flush stdout at exit
PROG = "asyncbackup"  # the command with subcommands (s3, github, checkpoint)
GRACE_SECONDS = 5.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """``8MiB`` -> 8388608, ``5MB`` -> 5000000, ``1024`` -> 1024."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 8MiB or 5000000)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    prefix = unit[:1] if unit[:1] in "KMGT" else ""
    factor = 1024 ** ("KMGT".index(prefix) + 1) if prefix and "I" in unit else _UNITS[prefix]
    return int(number * factor)


def parse_rate(text: str) -> int:
    """``50MB/s`` -> 50000000 bytes per second (``/s`` optional)."""
    stripped = text.strip()
    if stripped.lower().endswith("/s"):
        stripped = stripped[:-2]
    return parse_size(stripped)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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


class _ReportOnly(argparse.ArgumentParser):
    """Finds ``--report`` in a command line the real parser refused; never exits."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _report_bad_usage(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, refused: _BadUsage
) -> None:
    """A backup command line refused before it parsed still writes its ``--report`` (failed,
    exit 2), as any run stopped by an error does: the file must not keep the last run's
    result. Not for the checkpoint tool, which takes no ``--report``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if parser.prog == PROG and words[:1] == ["checkpoint"]:
        return
    finder = _ReportOnly(add_help=False)
    finder.add_argument("--report", type=Path)
    try:
        found, _ = finder.parse_known_args(words)
    except ValueError:
        return
    _report_end(found, "failed", EXIT_USAGE, refused.message)


class AutoProcesses(int):
    """``--processes auto``: one per CPU this process may run on, and no more than
    ``--concurrency`` (``s3_config``)."""


def process_count(text: str) -> int:
    """``--processes``: a whole number, or ``auto`` for one per CPU."""
    if text.strip().lower() == "auto":  # the CPUs this process may run on
        if hasattr(os, "sched_getaffinity"):
            return AutoProcesses(max(1, len(os.sched_getaffinity(0))))
        return AutoProcesses(os.cpu_count() or 1)
    return positive_int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    out.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress: only warnings, errors and the summary",
    )
    out.add_argument("--report", type=Path, metavar="FILE", help="write the summary as JSON")
    out.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="json: every line on stderr is a JSON record (time, level, message, fields), "
        "progress and summary included - for log shippers (default text)",
    )
    out.add_argument(
        "--progress-interval",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, a progress line every SECONDS (default 5)",
    )


def _add_max_attempts(group: argparse._ArgumentGroup) -> None:
    """``--max-attempts``, the same in every command."""
    group.add_argument(
        "--max-attempts",
        type=positive_int,
        default=8,
        metavar="N",
        help="attempts per request for transient failures, with backoff (default 8)",
    )


def _add_keep_archives(group: argparse._ArgumentGroup) -> None:
    """``--keep-archives``, the same in every command."""
    group.add_argument(
        "--keep-archives",
        type=positive_int,
        metavar="N",
        help="keep only the N newest archived checkpoints of this job, removing older ones "
        "at each completion (default: keep every one)",
    )


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source_path",
        metavar="SOURCE_PATH",
        help="folder in the source bucket; every key under SOURCE_PATH/ is copied "
        "('' for the whole bucket)",
    )
    where = parser.add_argument_group("buckets and credentials")
    where.add_argument("--source-bucket", required=True)
    where.add_argument("--dest-bucket", required=True)
    where.add_argument("--source-profile", help="AWS profile for the source (default chain)")
    where.add_argument("--dest-profile", help="AWS profile for the destination")
    where.add_argument("--endpoint-url", help="S3 endpoint for both sides")
    where.add_argument("--source-endpoint-url", help="S3 endpoint of the source")
    where.add_argument("--dest-endpoint-url", help="S3 endpoint of the destination")
    where.add_argument("--region", help="region for both clients (default: the profile's)")
    local = parser.add_argument_group("staging and checkpoints")
    local.add_argument("--base-local-path", required=True, type=Path, help="staging directory")
    local.add_argument("--cleanup", action="store_true", help="delete staged files once copied")
    local.add_argument("--checkpoint-dir", type=Path, help="default: BASE/checkpoints")
    local.add_argument(
        "--checkpoint-interval",
        type=positive_int,
        default=1,
        metavar="N",
        help="write the checkpoint after every N processed files (default 1)",
    )
    local.add_argument(
        "--ignore-checkpoints",
        action="store_true",
        help="start from the beginning; an existing checkpoint is kept aside",
    )
    local.add_argument(
        "--on-complete",
        choices=ON_COMPLETE_CHOICES,
        default="archive",
        help="what happens to the checkpoint of a backup that completed without errors "
        "(default: archive, under CHECKPOINT_DIR/archive/)",
    )
    _add_keep_archives(local)
    tuning = parser.add_argument_group("transfer")
    tuning.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        metavar="N",
        help="objects in flight (default 16)",
    )
    tuning.add_argument(
        "--multipart-threshold",
        type=parse_size,
        default="64MiB",
        metavar="SIZE",
        help="objects from this size on are uploaded in parts, unless multipart at the source "
        "(copied in its layout); smaller ones in one PUT (default 64MiB)",
    )
    tuning.add_argument(
        "--part-size",
        type=parse_size,
        default="8MiB",
        metavar="SIZE",
        help="size of the parts of a multipart upload, grown to stay within 10,000 parts "
        "(default 8MiB)",
    )
    tuning.add_argument(
        "--checksum",
        choices=CHECKSUM_CHOICES,
        default="md5",
        help="checksum sent with every upload for the server to verify (default md5: "
        "Content-MD5, accepted by every S3-compatible server); --direct uploads no data, "
        "its copies are checked by ETag",
    )
    _add_max_attempts(tuning)
    tuning.add_argument(
        "--processes",
        type=process_count,
        default=1,
        metavar="N",
        help="copy in N processes: this one and N-1 workers, each with its own event loop and "
        "S3 clients, sharing --concurrency; for small objects, where one event loop is "
        "CPU-bound; 'auto' = one per CPU (default 1)",
    )
    tuning.add_argument(
        "--list-streams",
        type=positive_int,
        default=8,
        metavar="N",
        help="list the source in up to N streams over key ranges when one stream cannot keep "
        "up with the copying (a resume of a mostly done bucket); 1 = one stream. "
        "--skip-existing always lists each side in one stream (default 8)",
    )
    tuning.add_argument(
        "--no-fast-path",
        dest="fast_path",
        action="store_false",
        help="send every request through botocore (by default the listing, GETs, PUTs, "
        "multipart parts and --direct's CopyObject go over asyncbackup's own HTTP/1.1 pool, "
        "signed by it: less CPU each)",
    )
    tuning.add_argument(
        "--max-bandwidth",
        type=parse_rate,
        metavar="RATE",
        help="limit on download and on upload throughput, across all workers (e.g. 50MB/s)",
    )
    select = parser.add_argument_group("what to copy")
    select.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="copy only keys (relative to SOURCE_PATH) matching a pattern; repeatable",
    )
    select.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip keys (relative to SOURCE_PATH) matching a pattern; repeatable",
    )
    select.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip objects already at the destination with the same size and ETag "
        "(compared with a listing of the destination)",
    )
    select.add_argument(
        "--direct",
        action="store_true",
        help="copy server-side (CopyObject / UploadPartCopy), nothing staged: for one set of "
        "credentials that can read the source and write the destination on one endpoint",
    )
    select.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be copied (counts, bytes, the first keys) and touch nothing",
    )
    dest = parser.add_argument_group("destination options")
    dest.add_argument(
        "--dest-prefix",
        metavar="PREFIX",
        help="put the copies under PREFIX/ instead of SOURCE_PATH/ ('' for the bucket root)",
    )
    dest.add_argument(
        "--storage-class", metavar="CLASS", help="e.g. STANDARD_IA, GLACIER_IR, DEEP_ARCHIVE"
    )
    dest.add_argument(
        "--dest-write-only",
        action="store_true",
        help="the destination credentials may write but not list or read (s3:PutObject and "
        "s3:AbortMultipartUpload only): the destination is checked by starting and aborting "
        "an upload, not by a listing; not with --skip-existing",
    )
    dest.add_argument(
        "--copy-tags",
        action="store_true",
        help="copy each object's tags (S3 object tagging) with it: needs s3:GetObjectTagging "
        "on the source and s3:PutObjectTagging on the destination",
    )
    dest.add_argument("--sse", choices=SSE_CHOICES, help="server-side encryption: SSE-S3 or KMS")
    dest.add_argument("--sse-kms-key-id", metavar="KEY", help="KMS key id for --sse aws:kms")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Resumable, high-concurrency backups to S3.",
    )
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


GITHUB_DESCRIPTION = (
    "Back up every repository of OWNER (an organisation or a user) to the destination bucket: "
    "a git bundle of each repository and wiki, its metadata as JSON (the repository record, "
    "issues, pull requests, comments, releases) and its release assets, resumably. The token "
    "is read from the environment (GITHUB_TOKEN, or the variable named by --token-env), never "
    "from the command line."
)


def add_github_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("owner", metavar="OWNER", help="GitHub organisation or user")
    github = parser.add_argument_group("GitHub")
    github.add_argument(
        "--api-url",
        default="https://api.github.com",
        help="API root (default https://api.github.com); for GitHub Enterprise Server "
        "https://HOST/api/v3",
    )
    github.add_argument(
        "--token-env",
        default="GITHUB_TOKEN",
        metavar="NAME",
        help="environment variable holding the token (default GITHUB_TOKEN)",
    )
    github.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only repositories whose name matches this glob (repeatable)",
    )
    github.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out repositories whose name matches this glob (repeatable)",
    )
    github.add_argument("--skip-forks", action="store_true", help="leave out forks")
    github.add_argument("--skip-archived", action="store_true", help="leave out archived ones")
    github.add_argument("--no-wikis", action="store_true", help="do not back up wikis")
    where = parser.add_argument_group("destination")
    where.add_argument("--dest-bucket", required=True)
    where.add_argument("--dest-profile", help="AWS profile for the destination")
    where.add_argument("--endpoint-url", help="S3 endpoint of the destination")
    where.add_argument("--dest-endpoint-url", help="S3 endpoint of the destination (wins)")
    where.add_argument("--region", help="region of the destination client")
    local = parser.add_argument_group("staging and checkpoints")
    local.add_argument("--base-local-path", required=True, type=Path, help="staging directory")
    local.add_argument(
        "--cleanup",
        action="store_true",
        help="delete staged bundles, files and mirrors once uploaded (the next run then "
        "clones changed repositories again instead of fetching into the kept mirror)",
    )
    local.add_argument("--checkpoint-dir", type=Path, help="default: BASE/checkpoints")
    local.add_argument(
        "--checkpoint-interval",
        type=positive_int,
        default=1,
        metavar="N",
        help="write the checkpoint after every N processed artifacts (default 1)",
    )
    local.add_argument(
        "--ignore-checkpoints",
        action="store_true",
        help="start from the beginning and copy everything again; an existing checkpoint is "
        "kept aside",
    )
    local.add_argument(
        "--on-complete",
        choices=ON_COMPLETE_CHOICES,
        default="archive",
        help="what happens to the checkpoint of a backup that completed without errors "
        "(default: archive; the next run reads it to skip unchanged repositories)",
    )
    _add_keep_archives(local)
    tuning = parser.add_argument_group("transfer")
    tuning.add_argument(
        "--concurrency",
        type=positive_int,
        default=8,
        metavar="N",
        help="artifacts in flight (default 8)",
    )
    tuning.add_argument(
        "--api-concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="concurrent GitHub API requests (default 4)",
    )
    tuning.add_argument(
        "--git-concurrency",
        type=positive_int,
        default=2,
        metavar="N",
        help="concurrent git processes (default 2)",
    )
    tuning.add_argument(
        "--multipart-threshold",
        type=parse_size,
        default="8MiB",
        metavar="SIZE",
        help="artifacts from this size on are uploaded in parts (default 8MiB)",
    )
    tuning.add_argument(
        "--part-size",
        type=parse_size,
        default="8MiB",
        metavar="SIZE",
        help="size of the parts of a multipart upload (default 8MiB)",
    )
    tuning.add_argument(
        "--checksum",
        choices=CHECKSUM_CHOICES,
        default="md5",
        help="checksum sent with every upload for the server to verify (default md5)",
    )
    _add_max_attempts(tuning)


def build_github_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backup-github", description=GITHUB_DESCRIPTION)
    add_github_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=_github_command)
    return parser


def _shared_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings both backup commands take, by config field name."""
    names = (
        "dest_bucket", "base_local_path", "dest_profile", "endpoint_url", "dest_endpoint_url",
        "region", "cleanup", "checkpoint_dir", "checkpoint_interval", "ignore_checkpoints",
        "on_complete", "keep_archives", "concurrency", "multipart_threshold", "part_size",
        "checksum", "max_attempts",
    )  # fmt: skip
    settings = {name: getattr(args, name) for name in names}
    settings["include"], settings["exclude"] = tuple(args.include), tuple(args.exclude)
    return settings


def github_config(args: argparse.Namespace) -> GitHubBackupConfig:
    from .github import GitHubBackupConfig  # aiohttp: only for this command

    return GitHubBackupConfig(
        owner=args.owner,
        api_url=args.api_url,
        token_env=args.token_env,
        skip_forks=args.skip_forks,
        skip_archived=args.skip_archived,
        wikis=not args.no_wikis,
        api_concurrency=args.api_concurrency,
        git_concurrency=args.git_concurrency,
        **_shared_settings(args),
    )


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
    _summarize(report, args)
    return report.exit_code


async def _github_command(args: argparse.Namespace) -> int:
    from .github import run_github_backup

    config = github_config(args)
    config.resolved_token()  # fail before any work when the token is missing
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


def s3_config(args: argparse.Namespace) -> BackupConfig:
    return BackupConfig(
        source_bucket=args.source_bucket,
        source_path=args.source_path,
        source_profile=args.source_profile,
        source_endpoint_url=args.source_endpoint_url,
        skip_existing=args.skip_existing,
        dest_write_only=args.dest_write_only,
        dest_prefix=args.dest_prefix,
        storage_class=args.storage_class,
        sse=args.sse,
        sse_kms_key_id=args.sse_kms_key_id,
        copy_tags=args.copy_tags,
        max_bandwidth=args.max_bandwidth,
        direct=args.direct,
        fast_path=args.fast_path,
        processes=(
            min(args.processes, args.concurrency)
            if isinstance(args.processes, AutoProcesses)
            else args.processes
        ),
        list_streams=args.list_streams,
        **_shared_settings(args),
    )


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
    _check_report_path(args)
    plan = await _until_signal(plan_backup(config))
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
    lines = [
        f"dry run: would copy {plan.copy_files} files ({plan.copy_bytes} bytes) of "
        f"{plan.listed_files} listed ({plan.listed_bytes} bytes); {plan.done_files} already "
        f"done per checkpoint, {plan.unchanged_files} unchanged at the destination",
        *(f"  {printable(key)}" for key in plan.first_keys),
    ]
    if plan.copy_files > len(plan.first_keys):
        lines.append(f"  ... and {plan.copy_files - len(plan.first_keys)} more")
    try:
        print("\n".join(lines))
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
    open_standard_streams()
    escape_what_stdout_cannot_encode()
    try:
        args = parser.parse_args(argv)
    except _BadUsage as refused:
        _report_bad_usage(parser, argv, refused)
        raise
    configure_logging(args)
    return_large_buffers_to_os()  # the command line owns its process (see memory.py)
    raise_open_file_limit()  # and its open files (fdlimit.py)
    collect_less()
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            code: int = runner.run(args.handler(args))
            return code
    except AsyncBackupError as exc:
        if args.debug:
            _say(redact(traceback.format_exc()).rstrip("\n"))
        _fatal(args, f"{parser.prog}: error: {exc}", exc.exit_code)
        _report_end(args, "failed", exc.exit_code, f"{exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an untranslated failure: still one line
        if args.debug:
            _say(redact(traceback.format_exc()).rstrip("\n"))
        detail = " ".join(str(exc).split()) or type(exc).__name__
        message = f"unexpected {type(exc).__name__}: {detail}"
        _fatal(
            args,
            f"{parser.prog}: error: {message} (the checkpoint is valid; run with --debug for "
            "details)",
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


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def main_s3(argv: Sequence[str] | None = None) -> int:
    return run(build_s3_parser(), argv)


def main_github(argv: Sequence[str] | None = None) -> int:
    return run(build_github_parser(), argv)


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
