"""Ctrl-C after the run has ended, while its event loop closes (``asyncio.Runner.close``
waits for the loop's executor threads): the run's outcome stands. The backup completed, its
checkpoint was archived and its summary printed; the command went on to exit 130 and
rewrote ``--report`` as "interrupted", which a monitor would take for a run to resume. The
signal is real (``os.kill``), sent as the loop starts closing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args

# The CLI, with a real SIGINT sent to the process when the runner starts closing its loop.
_HOOK = """
import asyncio, os, signal
closing = asyncio.Runner.close
def close(self):
    os.kill(os.getpid(), signal.SIGINT)
    return closing(self)
asyncio.Runner.close = close
from asyncbackup.cli import console_s3
console_s3()
"""


def interrupted_run(
    hook: str, args: list[str], report: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``backup-s3 p ARGS --report REPORT`` under ``hook``; its outcome and its report. No
    traceback, and no word of an interruption: the run had ended when the signal came."""
    done = subprocess.run(
        [sys.executable, "-c", hook, "p", *args, "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "interrupted" not in done.stderr, done.stderr
    written: dict[str, Any] = orjson.loads(report.read_bytes())
    return done, written


def test_ctrl_c_while_the_loop_closes_keeps_the_completed_outcome(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    for i in range(3):
        s3.put_object(Bucket=buckets.source, Key=f"p/o{i}", Body=b"x" * (i + 1))
    report = tmp_path / "report.json"
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    done, written = interrupted_run(_HOOK, args, report)
    assert "completed: copied 3 files" in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert written["status"] == "completed" and written["exit_code"] == 0, written
    assert len(list((tmp_path / "checkpoints" / "archive").iterdir())) == 1


def test_ctrl_c_while_the_loop_closes_after_a_failure_keeps_the_error(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A run that failed (here: a destination bucket that does not exist, exit 2) closes its
    loop before its error is said: a Ctrl-C then, pressed at an exit that waits for a thread,
    turned the error into 'interrupted; run the same command to resume', exit 130, and a
    --report saying "interrupted": the reason the backup failed was never shown."""
    s3.put_object(Bucket=buckets.source, Key="p/o", Body=b"x")
    report = tmp_path / "report.json"
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest + "-missing")
    done, written = interrupted_run(_HOOK, args, report)
    assert f"destination bucket '{buckets.dest}-missing' does not exist" in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert written["status"] == "failed" and written["exit_code"] == 2, written


# The CLI, with a real SIGINT sent as the run's summary starts being printed (the run's own
# signal handlers are gone by then).
_SUMMARY_HOOK = """
import os, signal
import asyncbackup.cli as cli
summarize = cli._summarize
def interrupted(report, args):
    os.kill(os.getpid(), signal.SIGINT)
    return summarize(report, args)
cli._summarize = interrupted
cli.console_s3()
"""


def test_ctrl_c_while_the_summary_is_said_keeps_the_completed_outcome(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The run completed and archived its checkpoint; a Ctrl-C as its summary is printed
    made it exit 130 and write --report as interrupted. The outcome stands: exit 0, the
    report says completed."""
    s3.put_object(Bucket=buckets.source, Key="p/o", Body=b"x")
    report = tmp_path / "report.json"
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    done, written = interrupted_run(_SUMMARY_HOOK, args, report)
    assert done.returncode == 0, done.stderr
    assert written["status"] == "completed" and written["exit_code"] == 0, written
