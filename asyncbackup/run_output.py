"""What the CLI shows of a run: the progress display it picks, the final summary, the report.

- On a terminal: the live bar (``progress_bar``); otherwise (a dumb terminal included) a plain
  line every few seconds (``progress_line``); nothing with ``--quiet``; JSON log records with
  ``--log-format json``.
- The summary: objects, bytes, duration, throughput and errors grouped by code, as text lines
  or as the fields of one JSON log record; ``--report FILE`` writes it as a JSON document.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Protocol, TextIO

import orjson

from .atomicfile import write_atomic
from .checkpoint import now_iso
from .checkpoint_tool import errors_by_code, format_codes, human_bytes
from .printable import printable
from .progress import Observer
from .progress_line import ProgressLine, rate
from .report import BackupReport

_SHOWN_ERRORS = 10


class ProgressDisplay(Observer, Protocol):
    def start(self) -> None: ...

    async def run(self) -> None:
        """Whatever must run on the loop beside the backup (a ticker); cancelled at the end."""

    def close(self) -> None: ...


def pick_progress(args: argparse.Namespace, stream: TextIO, log: logging.Logger) -> ProgressDisplay:
    """The bar on a terminal, else the plain line; disabled with --quiet; JSON records with
    --log-format json (never the bar: every line of stderr must then be JSON)."""
    every: float = getattr(args, "progress_interval", 5.0)
    if getattr(args, "quiet", False):
        return ProgressLine(stream, enabled=False)
    if getattr(args, "log_format", "text") == "json":

        def emit(line: str, fields: dict[str, Any]) -> None:
            log.info("progress", extra=fields)

        return ProgressLine(stream, every=every, emit=emit)
    if stream.isatty():
        from .progress_bar import ProgressBar  # rich costs ~40 ms to import: only for the bar

        bar = ProgressBar(stream)
        # A terminal rich does not redraw on (TERM=dumb): the bar would show once, at the end.
        if bar.console.is_interactive:
            return bar
    return ProgressLine(stream, every=every)


def _rates(report: BackupReport) -> tuple[float, float]:
    if report.duration <= 0:
        return 0.0, 0.0
    return report.copied_bytes / report.duration, report.copied_files / report.duration


def summary_record(report: BackupReport) -> dict[str, Any]:
    """The summary as flat fields (for a JSON log record and the report)."""
    bytes_rate, files_rate = _rates(report)
    return {
        "status": report.status,
        "exit_code": report.exit_code,
        "files_copied": report.copied_files,
        "bytes_copied": report.copied_bytes,
        "files_skipped": report.skipped_files,
        "files_unchanged": report.unchanged_files,
        "files_deleted_from_source": report.source_deleted_files,
        "files_filtered_out": report.filtered_files,
        "files_excluded_by_storage_class": report.class_excluded_files,
        "repositories": report.repositories,
        "repositories_left_out": report.repositories_left_out,
        "duration_seconds": round(report.duration, 3),
        "bytes_per_second": round(bytes_rate, 1),
        "files_per_second": round(files_rate, 3),
        "job_files_done": report.processed_files,
        "job_files_total": report.total_files,
        "job_bytes_done": report.processed_bytes,
        "job_bytes_total": report.total_bytes,
        "error_count": len(report.errors),
        "errors_by_code": errors_by_code(report.errors),
        "failed_this_run_count": len(report.failed_this_run),
        "checkpoint": str(report.checkpoint_path),
        "archived_checkpoint": str(report.archived_checkpoint)
        if report.archived_checkpoint
        else None,
        "resumed": report.resumed,
    }


def left_out_text(filtered: int, class_excluded: int) -> str:
    """What a listing left out of the job, for a summary line (nothing when none)."""
    return (f"; {filtered:,} left out by --include/--exclude" if filtered else "") + (
        f"; {class_excluded:,} left out by --exclude-storage-class" if class_excluded else ""
    )


def _repositories(report: BackupReport) -> str:
    """A GitHub run's repositories, kept and left out, for a summary line."""
    if report.repositories is None:
        return ""
    left_out = report.repositories_left_out or 0
    return f"; {report.repositories:,} repositories" + (
        f", {left_out:,} left out by the filters" if left_out else ""
    )


def summary_lines(report: BackupReport) -> list[str]:
    """The summary as text, for stderr."""
    bytes_rate, files_rate = _rates(report)
    lines = [
        f"{report.status}: copied {report.copied_files:,} files, "
        f"{human_bytes(report.copied_bytes)} ({report.copied_bytes:,} bytes) in "
        f"{report.duration:.1f}s ({rate(bytes_rate)}, {files_rate:.1f} files/s); "
        f"{report.skipped_files:,} already done before"
        + (
            f" ({report.unchanged_files:,} found unchanged at the destination)"
            if report.unchanged_files
            else ""
        )
        + (
            f"; {report.source_deleted_files:,} deleted from the source since listed (left out)"
            if report.source_deleted_files
            else ""
        )
        + left_out_text(report.filtered_files, report.class_excluded_files)
        + _repositories(report),
        f"job: {report.processed_files:,} of {report.total_files:,} files done "
        f"({human_bytes(report.processed_bytes)} of {human_bytes(report.total_bytes)}); "
        f"{len(report.errors):,} errors",
    ]
    if report.errors:
        lines.append(f"errors by code: {format_codes(errors_by_code(report.errors))}")
        for key, error in list(report.errors.items())[:_SHOWN_ERRORS]:
            lines.append(f"  {printable(key)}: {printable(error)}")
        if len(report.errors) > _SHOWN_ERRORS:
            lines.append(f"  ... and {len(report.errors) - _SHOWN_ERRORS:,} more")
        path = report.checkpoint_path
        lines.append(
            f"the errors are recorded in {path}; list them with: "
            f"asyncbackup checkpoint errors {path}"
        )
    elif report.archived_checkpoint:
        lines.append(f"checkpoint archived as {report.archived_checkpoint}")
    return lines


def report_document(report: BackupReport) -> dict[str, Any]:
    """What ``--report FILE`` holds: ``BackupReport.to_dict()`` (the full errors map
    included) and the summary's fields, with the time it was written."""
    return {**report.to_dict(), **summary_record(report), "finished_at": now_iso()}


def write_report(path: Path, report: BackupReport) -> None:
    """Write the report atomically (a reader never sees half a file)."""
    data = orjson.dumps(
        report_document(report),
        option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
        default=str,
    )
    write_atomic(path, data)
