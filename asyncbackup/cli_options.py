"""The backup commands' options: their argparse definitions, value types and the configs
they make."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (
    CHECKSUM_CHOICES,
    ON_COMPLETE_CHOICES,
    REQUEST_PAYER_CHOICES,
    SSE_CHOICES,
    BackupConfig,
)
from .logformat import LOG_FORMATS

if TYPE_CHECKING:
    from .github import GitHubBackupConfig


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


class AutoProcesses(int):
    """``--processes auto``: one per CPU this process may run on, each with at least
    ``AUTO_SHARE`` objects in flight (``s3_config``)."""


#: the fewest objects in flight a process of ``--processes auto`` is given: at the default
#: concurrency of 128, 8 processes at most (a worker costs its start-up and 50-70 MB; one
#: with a few objects in flight waits on the stores rather than on its CPU)
AUTO_SHARE = 16


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


#: the libraries whose versions decide how a run talks to S3 and GitHub: a bug report needs them
_LIBRARIES = ("botocore", "aiobotocore", "aiohttp", "httptools", "uvloop")


def version_line(prog: str) -> str:
    """``PROG VERSION (Python X.Y.Z; botocore A, ...)``: what ``--version`` prints."""
    import importlib.metadata  # only here: 10 ms of every start-up otherwise
    import platform

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {version(name)}" for name in _LIBRARIES)
    return f"{prog} {version('asyncbackup')} (Python {platform.python_version()}; {libraries})"


class Version(argparse.Action):
    """``--version``: the line, on stdout, then exit 0 (the versions are read only then)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version of asyncbackup and its S3 libraries")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(version_line(parser.prog))
        parser.exit(0)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=Version)
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
        help="folder in the source bucket, without the bucket (Projects/TeamA, not "
        "s3://BUCKET/Projects/TeamA); every key under SOURCE_PATH/ is copied ('' for the "
        "whole bucket)",
    )
    where = parser.add_argument_group("buckets and credentials")
    where.add_argument("--source-bucket", required=True)
    where.add_argument("--dest-bucket", required=True)
    where.add_argument("--source-profile", help="AWS profile for the source (default chain)")
    where.add_argument("--dest-profile", help="AWS profile for the destination (default chain)")
    where.add_argument("--endpoint-url", help="S3 endpoint for both sides")
    where.add_argument("--source-endpoint-url", help="S3 endpoint of the source")
    where.add_argument("--dest-endpoint-url", help="S3 endpoint of the destination")
    where.add_argument("--region", help="region for both clients (default: the profile's)")
    where.add_argument(
        "--request-payer",
        choices=REQUEST_PAYER_CHOICES,
        help="the source is a Requester Pays bucket and you agree to pay for its requests "
        "and the bytes read: every request for it carries x-amz-request-payer",
    )
    local = parser.add_argument_group("staging and checkpoints")
    local.add_argument(
        "--base-local-path",
        required=True,
        type=Path,
        metavar="DIR",
        help="staging directory: objects are staged in DIR/<source bucket>/<key>, the "
        "checkpoint kept in DIR/checkpoints; give the same DIR to resume",
    )
    local.add_argument("--cleanup", action="store_true", help="delete staged files once copied")
    local.add_argument("--checkpoint-dir", type=Path, help="default: DIR/checkpoints")
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
        default=128,
        metavar="N",
        help="objects in flight (default 128)",
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
        "CPU-bound; 'auto' = one per CPU, each with 16 objects in flight at least (default 1)",
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
        help="limit on download and on upload throughput, across all workers (e.g. 50MB/s); "
        "not with --direct, whose copies are server-side",
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
        "--exclude-storage-class",
        action="append",
        default=[],
        metavar="CLASS",
        dest="exclude_storage_classes",
        help="leave out objects the listing gives in this storage class (GLACIER, "
        "DEEP_ARCHIVE: unreadable until restored, each one an error otherwise); repeatable",
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
    github.add_argument(
        "--dry-run",
        action="store_true",
        help="list the repositories that would be backed up (and those left out, and why), "
        "and touch nothing",
    )
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


def s3_config(args: argparse.Namespace) -> BackupConfig:
    return BackupConfig(
        source_bucket=args.source_bucket,
        source_path=args.source_path,
        source_profile=args.source_profile,
        source_endpoint_url=args.source_endpoint_url,
        skip_existing=args.skip_existing,
        exclude_storage_classes=tuple(args.exclude_storage_classes),
        dest_write_only=args.dest_write_only,
        dest_prefix=args.dest_prefix,
        storage_class=args.storage_class,
        sse=args.sse,
        sse_kms_key_id=args.sse_kms_key_id,
        copy_tags=args.copy_tags,
        request_payer=args.request_payer,
        max_bandwidth=args.max_bandwidth,
        direct=args.direct,
        fast_path=args.fast_path,
        processes=(
            min(args.processes, max(1, args.concurrency // AUTO_SHARE))
            if isinstance(args.processes, AutoProcesses)
            else args.processes
        ),
        list_streams=args.list_streams,
        **_shared_settings(args),
    )
