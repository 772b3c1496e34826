"""The benchmark's JSON says what was measured: each tool's version and our commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.tools import Tool, discover, source_commit, versions


def _steps(job: object) -> list[list[str]]:
    return []


def test_every_tool_found_but_the_floor_has_a_version_command() -> None:
    tools, _ = discover()
    versioned = {tool.name for tool in tools if tool.version is not None}
    assert "asyncbackup" in versioned
    assert versioned == {tool.name for tool in tools} - {"bare-http"}


def test_versions_are_the_first_line_printed_or_say_why_unknown(tmp_path: Path) -> None:
    tools = [
        Tool("ours", _steps, None, [str(Path(sys.executable).parent / "backup-s3"), "--version"]),
        Tool("refuses", _steps, None, [sys.executable, "-c", "import sys; sys.exit(2)"]),
        Tool("missing", _steps, None, [str(tmp_path / "no-such-binary"), "version"]),
        Tool("two-lines", _steps, None, [sys.executable, "-c", "print('v1.2'); print('x')"]),
        Tool("none", _steps, None),
    ]
    found = versions({tool.name: tool.version for tool in tools if tool.version is not None})
    assert found["ours"].startswith("backup-s3 ") and "botocore" in found["ours"]
    assert found["refuses"] == "unknown (exit 2)"
    assert found["missing"] == "unknown (FileNotFoundError)"
    assert found["two-lines"] == "v1.2"
    assert "none" not in found


def test_the_commit_is_marked_dirty_when_a_tracked_file_differs(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    assert source_commit(tmp_path) == "unknown"
    git("init", "-q")
    (tmp_path / "f").write_text("a")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    assert source_commit(tmp_path) == head
    (tmp_path / "untracked").write_text("x")  # the benchmark's own work files are untracked
    assert source_commit(tmp_path) == head
    (tmp_path / "f").write_text("b")
    assert source_commit(tmp_path) == f"{head}-dirty"
