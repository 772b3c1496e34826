"""`make demo` is one of the README's two set-up commands: it must keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_the_demo_backs_up_interrupts_and_resumes(tmp_path: Path) -> None:
    env = {**os.environ, "ASYNCBACKUP_DEMO_DIR": str(tmp_path / "demo")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "exit code: 130" in out  # interrupted mid-run...
    assert "exit code: 0" in out  # ...and resumed to completion
    assert "all 484 objects identical" in out
    assert "OK: 484 files marked done; 0 missing, 0 different" in out  # checkpoint verify
    assert "resuming" in result.stderr
    assert list((tmp_path / "demo" / "scratch" / "checkpoints" / "archive").iterdir())
