"""``asyncbackup checkpoint ...``: the command line of the checkpoint tool.

The logic lives in ``checkpoint_tool``; this module only parses, prints and picks exit codes.
Results go to stdout (text, or JSON with ``--json``); notes go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from . import checkpoint_tool as tool
from .errors import AsyncBackupError, CheckpointError
from .printable import json_dumps

EXIT_OK, EXIT_MISMATCH = 0, 1


class StdoutLostError(AsyncBackupError):
    """stdout cannot be written (a full disk under a redirect): the results are lost. Exit
    120, as Python's own when it cannot flush stdout at exit (and the dry run's)."""

    exit_code = 120


def _out(text: str) -> None:
    """One result to stdout. A reader that went away (``| head -1`` once it has its line) has
    what it wanted: the rest is dropped quietly, and the exit code stays the command's. Any
    other failure to write (a full disk) loses the results: one line, exit 120."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError as exc:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, quietly
        os.close(devnull)
        if not isinstance(exc, BrokenPipeError):
            raise StdoutLostError(
                f"cannot write to stdout ({exc.strerror}): the results are lost; free space "
                "where it goes, or redirect it elsewhere, and run the command again"
            ) from exc


def _emit_json(data: Any) -> None:
    _out(json_dumps(data, orjson.OPT_INDENT_2).decode())


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")


def add_checkpoint_commands(commands: Any) -> None:
    """Add ``checkpoint`` and its subcommands to the top-level subparsers ``commands``."""
    top: argparse.ArgumentParser = commands.add_parser(
        "checkpoint",
        help="inspect, list, edit and verify checkpoint files",
        description="Inspect, list, edit and verify checkpoint files, safely: edits are "
        "refused while a run holds the checkpoint and keep the file valid at every instant.",
    )
    sub = top.add_subparsers(dest="checkpoint_command", required=True, parser_class=type(top))

    show = sub.add_parser(
        "show",
        help="job, progress and errors grouped by code",
        description="Show a checkpoint as its last flush left it (its journal applied). When "
        "a run that stopped without compacting (a crash) left a journal and no run holds the "
        "checkpoint, the journal is first folded into the JSON file.",
    )
    show.add_argument("file", type=Path, metavar="FILE")
    _common(show)
    show.set_defaults(handler=_show)

    listing = sub.add_parser("list", help="the checkpoints under a directory, one a line")
    listing.add_argument(
        "directory",
        type=Path,
        nargs="?",
        metavar="DIR",
        help="where to look (default: BASE/checkpoints with --base-local-path, else ./checkpoints)",
    )
    listing.add_argument("--base-local-path", type=Path, metavar="BASE")
    listing.add_argument(
        "--all",
        action="store_true",
        help="also the archived checkpoints of completed backups and the ones set aside",
    )
    _common(listing)
    listing.set_defaults(handler=_list)

    errors = sub.add_parser("errors", help="one line per failed file: KEY<TAB>CODE<TAB>MESSAGE")
    errors.add_argument("file", type=Path, metavar="FILE")
    errors.add_argument("--code", help="only the files that failed with this code")
    _common(errors)
    errors.set_defaults(handler=_errors)

    mark = sub.add_parser(
        "mark",
        help="mark keys done (skip them) or pending (copy them again)",
        description="Mark the keys matching glob PATTERNs (on the whole key; * crosses /) "
        "done or pending. Refused while a run holds the checkpoint. --done drops the keys' "
        "errors; --pending keeps them unless --clear-errors.",
    )
    mark.add_argument("file", type=Path, metavar="FILE")
    state = mark.add_mutually_exclusive_group(required=True)
    state.add_argument("--done", action="store_true", help="mark done: the run skips them")
    state.add_argument("--pending", action="store_true", help="mark pending: copied again")
    mark.add_argument("patterns", nargs="+", metavar="PATTERN")
    mark.add_argument(
        "--clear-errors", action="store_true", help="with --pending: drop their errors too"
    )
    mark.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    _common(mark)
    mark.set_defaults(handler=_mark)

    compact = sub.add_parser(
        "compact",
        help="fold the journal a stopped run left into the JSON file",
        description="Fold FILE.journal, which a run that stopped without compacting (a crash) "
        "leaves beside the checkpoint, into the JSON file, so that jq and hand edits see "
        "everything. Refused while a run holds the checkpoint. --discard-journal keeps the "
        "JSON file as it is (a hand edit made after the crash) and sets the journal aside: "
        "the files it recorded as done are copied again.",
    )
    compact.add_argument("file", type=Path, metavar="FILE")
    compact.add_argument(
        "--discard-journal",
        action="store_true",
        help="keep the JSON file as it is and set the journal aside (FILE.journal.discarded-*)",
    )
    _common(compact)
    compact.set_defaults(handler=_compact)

    verify_cmd = sub.add_parser(
        "verify",
        help="check that every file marked done is at the destination, with the source's "
        "size and content",
        description="List the source and destination under the job's prefix and check that "
        "every key marked done is at the destination with the source's size and, where the "
        "ETags can tell, content. Exit 0 when all are, 1 otherwise (with the keys).",
    )
    verify_cmd.add_argument("file", type=Path, metavar="FILE")
    where = verify_cmd.add_argument_group("buckets and credentials (as for the s3 command)")
    where.add_argument("--source-profile", help="default: the one the checkpoint recorded")
    where.add_argument("--dest-profile", help="default: the one the checkpoint recorded")
    where.add_argument(
        "--endpoint-url",
        help="S3 endpoint for both sides (default: the ones the checkpoint recorded)",
    )
    where.add_argument("--source-endpoint-url")
    where.add_argument("--dest-endpoint-url")
    where.add_argument("--region")
    verify_cmd.add_argument(
        "--mark-pending",
        action="store_true",
        help="mark the missing and different keys pending, so the next run copies them "
        "again (refused while a run holds the checkpoint)",
    )
    _common(verify_cmd)
    verify_cmd.set_defaults(handler=_verify)


async def _show(args: argparse.Namespace) -> int:
    info = await asyncio.to_thread(tool.inspect_checkpoint, args.file)
    if args.json:
        _emit_json(info.to_dict())
    else:
        _out(tool.format_info(info))
    return EXIT_OK


async def _list(args: argparse.Namespace) -> int:
    directory = args.directory
    if directory is None:
        base = args.base_local_path
        directory = base / "checkpoints" if base is not None else Path("checkpoints")
    found = await asyncio.to_thread(tool.find_checkpoints, directory, include_all=args.all)
    if args.json:
        _emit_json([item.to_dict() for item in found])
    elif found:
        _out("\n".join(tool.format_listed(item) for item in found))
    else:
        print(f"no checkpoints under {directory}", file=sys.stderr)
    return EXIT_OK


async def _errors(args: argparse.Namespace) -> int:
    state = await asyncio.to_thread(tool.load, args.file)
    failed = tool.failed_files(state, args.code)
    if args.json:
        _emit_json([item.to_dict() for item in failed])
    elif failed:
        _out("\n".join(tool.format_failed(item) for item in failed))
    else:
        which = f" with code {args.code}" if args.code else ""
        print(f"no failed files{which} in {args.file}", file=sys.stderr)
    return EXIT_OK


async def _mark(args: argparse.Namespace) -> int:
    result = await asyncio.to_thread(
        tool.mark_keys,
        args.file,
        args.patterns,
        done=args.done,
        clear_errors=args.clear_errors,
        dry_run=args.dry_run,
    )
    if args.json:
        _emit_json(result.to_dict())
    else:
        _out(tool.format_mark(result))
    return EXIT_OK


async def _compact(args: argparse.Namespace) -> int:
    result = await asyncio.to_thread(
        tool.compact_checkpoint, args.file, discard_journal=args.discard_journal
    )
    if args.json:
        _emit_json(result.to_dict())
    else:
        _out(tool.format_compact(result))
    return EXIT_OK


async def _verify(args: argparse.Namespace) -> int:
    from . import verify  # its clients and listings: only for this command

    where = verify.Endpoints(
        source_profile=args.source_profile,
        dest_profile=args.dest_profile,
        endpoint_url=args.endpoint_url,
        source_endpoint_url=args.source_endpoint_url,
        dest_endpoint_url=args.dest_endpoint_url,
        region=args.region,
    )
    result = await verify.verify_checkpoint(args.file, where)
    marked: tool.MarkResult | None = None
    refused: CheckpointError | None = None
    if args.mark_pending and not result.ok:
        bad = [*result.missing, *(m.key for m in result.different)]
        try:
            marked = await asyncio.to_thread(tool.mark_exact, args.file, bad, done=False)
        except CheckpointError as exc:  # a run took it meanwhile: still say what was found
            refused = exc
    if args.json:
        out = result.to_dict()
        out["marked_pending"] = marked.matched if marked else []
        _emit_json(out)
    else:
        _out(verify.format_verify(result, args.file))
        if marked is not None:
            _out(tool.format_mark(marked))
    if refused is not None:
        raise refused
    return EXIT_OK if result.ok else EXIT_MISMATCH
