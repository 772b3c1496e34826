"""Review of what a run prints for people: keys that would reorder or split a line."""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from rich.progress import ProgressColumn

from asyncbackup import cli
from asyncbackup.logformat import TextFormatter
from asyncbackup.printable import printable
from asyncbackup.progress_bar import ProgressBar
from asyncbackup.report import BackupReport
from asyncbackup.run_output import summary_lines

# Shown as "data/invoice-exe.pdf" on a terminal (U+202E reverses what follows), and two lines
# for whatever splits lines the Unicode way (U+2028, U+2029: Python's str.splitlines, editors).
SPOOF = "data/invoice-\u202efdp.exe"
SPLIT = "data/a\u2028failed: 0 errors\u2029b\u2066c\u2069\u200f"


def _failed_report(key: str) -> BackupReport:
    return BackupReport(
        status="completed_with_errors",
        processed_files=0,
        processed_bytes=0,
        total_files=1,
        total_bytes=1,
        copied_files=0,
        copied_bytes=0,
        skipped_files=0,
        unchanged_files=0,
        errors={key: "AccessDenied: Access Denied"},
        duration=1.0,
        checkpoint_path=Path("/tmp/cp.checkpoint"),
    )


def test_bidi_controls_and_line_separators_in_a_key_are_escaped_in_the_summary() -> None:
    lines = summary_lines(_failed_report(SPOOF))
    assert "  data/invoice-\\u202efdp.exe: AccessDenied: Access Denied" in lines
    text = "\n".join(summary_lines(_failed_report(SPLIT)))
    assert text.splitlines() == text.split("\n")  # no line but the summary's own
    assert not any(ch in text for ch in "\u2028\u2029\u2066\u2069\u200f")
    assert printable(SPLIT) == "data/a\\u2028failed: 0 errors\\u2029b\\u2066c\\u2069\\u200f"


def test_a_text_log_line_is_one_line_whatever_the_key() -> None:
    record = logging.LogRecord("asyncbackup", logging.WARNING, "", 0, "retrying %s", (SPLIT,), None)
    line = TextFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert "\u202e" not in TextFormatter().format(
        logging.LogRecord("asyncbackup", logging.INFO, "", 0, "copied %s", (SPOOF,), None)
    )


def test_ordinary_non_ascii_keys_still_print_as_they_are() -> None:
    # Arabic and Hebrew letters (right-to-left by themselves), emoji with a zero-width joiner
    ordinary = "data/تقرير/דוח/👩\u200d💻/ünï.txt"
    assert printable(ordinary) == ordinary


def test_the_bar_of_a_finished_run_with_failures_is_full_with_no_time_left() -> None:
    # Failed objects count one unit each but their bytes stayed "to do": the bar left on the
    # screen said "finished", 50% and an ETA, as if half the job were still coming.
    bar = ProgressBar(io.StringIO())
    bar.on_listed(2, 2_000_000, 0, 0)
    bar.on_listing_done()
    bar.on_done("data/a", 1_000_000)
    bar.on_failed("data/b", "AccessDenied: Access Denied")
    bar._push(final=True)
    assert bar.description() == "finished"
    assert bar._main.percentage == 100.0
    assert bar._main.time_remaining == 0.0
    columns = [column for column in bar.progress.columns if isinstance(column, ProgressColumn)]
    text = " ".join(str(column.render(bar._main)) for column in columns[3:])
    assert "1/2 files" in text and "ETA 0:00:00" in text and "1 errors" in text


def test_another_librarys_warning_in_text_mode_is_formatted_escaped_and_redacted() -> None:
    """botocore's or asyncio's warnings went to Python's last-resort handler in text mode:
    raw, so an escape sequence from a server's message reached the terminal and a URL's
    password the log (JSON mode already formatted them)."""

    program = (
        "import argparse, logging\n"
        "from asyncbackup.cli import configure_logging\n"
        "configure_logging(argparse.Namespace(log_format='text', debug=False, quiet=True))\n"
        "logging.getLogger('botocore.endpoint').warning(\n"
        "    'retrying http://me:hunter2@example.com/ after \\x1b[2J\\nforged line')\n"
        "logging.getLogger('botocore.endpoint').info('not shown: below WARNING')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert " WARNING retrying " in lines[0]
    assert "\x1b" not in done.stderr and "\\x1b[2J\\nforged line" in lines[0]
    assert "hunter2" not in done.stderr


def test_the_line_that_ends_a_failed_run_escapes_what_a_server_said(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The fatal line quotes the failure, a server's message included: an escape sequence
    in it must not reach the terminal, nor a newline forge a second line."""
    args = argparse.Namespace(log_format="text")
    cli._fatal(args, "asyncbackup: error: refused (\x1b[2J\nexit 0)", 3)
    err = capsys.readouterr().err
    assert err == "asyncbackup: error: refused (\\x1b[2J\\nexit 0)\n"
