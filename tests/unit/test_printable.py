"""Keys with control characters cannot forge output lines, columns or terminal escapes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from asyncbackup.checkpoint_tool import FailedFile, format_failed
from asyncbackup.logformat import TextFormatter
from asyncbackup.printable import printable
from asyncbackup.report import BackupReport
from asyncbackup.run_output import summary_lines

EVIL = "data/evil\nfailed: 0 errors\tx\x1b[2J\x7f\x9b"


def test_control_characters_are_escaped_and_nothing_else() -> None:
    assert printable(EVIL) == "data/evil\\nfailed: 0 errors\\tx\\x1b[2J\\x7f\\x9b"
    ordinary = "data/ünïcødé/日本語/back\\slash/quotes'\"/space here.txt"
    assert printable(ordinary) == ordinary


def test_checkpoint_errors_keep_one_line_of_three_columns() -> None:
    line = format_failed(FailedFile(EVIL, "AccessDenied", f"access denied to {EVIL}"))
    assert "\n" not in line and "\x1b" not in line
    key, code, message = line.split("\t")
    assert key == printable(EVIL) and code == "AccessDenied"
    assert message == f"access denied to {printable(EVIL)}"


def test_the_run_summary_shows_a_failed_key_on_one_line() -> None:
    report = BackupReport(
        status="completed_with_errors",
        processed_files=1,
        processed_bytes=1,
        total_files=2,
        total_bytes=2,
        copied_files=1,
        copied_bytes=1,
        skipped_files=0,
        unchanged_files=0,
        errors={EVIL: f"AccessDenied: no access to {EVIL}"},
        duration=1.0,
        checkpoint_path=Path("/tmp/cp.json"),
    )
    lines = summary_lines(report)
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    assert f"  {printable(EVIL)}: AccessDenied: no access to {printable(EVIL)}" in lines


def test_a_text_log_line_cannot_be_forged_and_a_traceback_keeps_its_lines() -> None:
    formatter = TextFormatter()
    record = logging.LogRecord("asyncbackup", logging.WARNING, "", 0, "retrying %s", (EVIL,), None)
    assert formatter.format(record).endswith(f"WARNING retrying {printable(EVIL)}")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "asyncbackup", logging.ERROR, "", 0, "failed %s", (EVIL,), sys.exc_info()
        )
    first, *rest = formatter.format(failed).split("\n")
    assert first.endswith(f"ERROR failed {printable(EVIL)}")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"
