"""Ctrl-C while the command is still starting (importing its modules, reading its flags) ends
it like any Ctrl-C: exit 130 and one line, no Python traceback. The run has not begun: nothing
to save. The signal is real (``os.kill``), sent when the start-up reaches a chosen import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the console script as pip wrote it, after a hook that sends SIGINT to the process
# when the named module starts being imported (its import then raises KeyboardInterrupt).
_HOOK = """
import os, runpy, signal, sys
target, script = sys.argv[1], sys.argv[2]
class Interrupt:
    def find_spec(self, name, path=None, target_=None):
        if name == target:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def _interrupted_at(
    module: str, script: Path, words: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``script words``, sent SIGINT as ``module`` starts being imported; no traceback."""
    done = subprocess.run(
        [sys.executable, "-c", _HOOK, module, str(script), *words],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.mark.parametrize(
    ("command", "module"),
    [
        ("backup-s3", "asyncbackup.cli"),
        ("backup-s3", "asyncbackup.api"),
        ("backup-s3", "orjson"),
        ("backup-s3", "botocore.session"),
        ("asyncbackup", "asyncbackup.checkpoint"),
        ("asyncbackup", "asyncbackup.checkpoint_cli"),  # imported while its parser is made
        ("backup-github", "asyncbackup.cli_options"),
        ("backup-s3", "importlib.metadata"),  # in --version: while the flags are read
    ],
)
def test_ctrl_c_during_start_up_is_exit_130_in_one_line(
    tmp_path: Path, command: str, module: str
) -> None:
    script = Path(sys.executable).parent / command
    words = ["s3"] if command == "asyncbackup" else []
    words += ["data", "--source-bucket", "a", "--dest-bucket", "b"]
    if command == "backup-github":
        words = ["--org", "acme", "--dest-bucket", "b"]
    if module == "importlib.metadata":
        words = ["--version"]
    words += ["--base-local-path", str(tmp_path / "stage")]
    done = _interrupted_at(module, script, words, tmp_path)
    assert done.stderr == f"{command}: interrupted before the run started; nothing was done\n"
    assert done.returncode == 130
    assert not (tmp_path / "stage").exists()  # nothing was started


@pytest.mark.parametrize(
    ("command", "module"),
    [
        ("backup-s3", "asyncbackup.api"),
        ("backup-s3", "uvloop"),
        ("asyncbackup", "asyncbackup.checkpoint_cli"),  # imported while its parser is made
    ],
)
def test_ctrl_c_during_start_up_replaces_the_last_runs_report(
    tmp_path: Path, command: str, module: str
) -> None:
    """A monitor reading ``--report`` must not take the last run's result for this one's."""
    report = tmp_path / "report.json"
    report.write_text('{"status": "completed", "exit_code": 0}')
    script = Path(sys.executable).parent / command
    words = ["s3"] if command == "asyncbackup" else []
    words += ["data", "--source-bucket", "a", "--dest-bucket", "b", "--report", str(report)]
    words += ["--base-local-path", str(tmp_path / "stage")]
    done = _interrupted_at(module, script, words, tmp_path)
    assert done.returncode == 130
    written = json.loads(report.read_text())
    assert (written["status"], written["exit_code"]) == ("interrupted", 130)
