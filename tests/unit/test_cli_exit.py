"""The console commands end with ``leave()``: no interpreter teardown, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = """
import logging, sys
from asyncbackup.cli import leave
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
sys.stdout.write("o" * 300_000)  # more than a pipe holds: flushing must wait for the reader
sys.stderr.write("the last line on stderr\\n")
logging.getLogger("x").info("the last log record")
leave(3)
"""


def test_leave_flushes_stdout_stderr_and_log_handlers_then_exits_with_the_code(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "run.log"
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(log_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    assert result.stdout == "o" * 300_000
    assert result.stderr.endswith("the last line on stderr\n")
    assert "the last log record" in log_file.read_text()


def test_leave_with_a_closed_stdout_still_exits_with_the_code() -> None:
    script = _SCRIPT.replace(
        'sys.stdout.write("o" * 300_000)', 'sys.stdout.write("o"); sys.stdout.close()'
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "/dev/null"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    assert "Traceback" not in result.stderr


def test_python_m_asyncbackup_exits_with_the_commands_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncbackup",
            "s3",
            "p",
            "--source-bucket",
            "a",
            "--dest-bucket",
            "b",
            "--base-local-path",
            str(tmp_path),
            "--no-such-flag",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


@pytest.mark.parametrize(("code", "expected"), [(0, 120), (3, 3)])
def test_leave_on_a_full_disk_fails_like_the_interpreter(code: int, expected: int) -> None:
    """stdout on a full disk: the flush fails, and a run that succeeded exits 120, as
    Python itself does when it cannot flush stdout at exit."""
    script = f"import sys; from asyncbackup.cli import leave; sys.stdout.write('x'); leave({code})"
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-c", script],
            stdout=full,
            stderr=subprocess.PIPE,
            env=buffered,
            timeout=60,
        )
    assert result.returncode == expected
