"""``--version`` on every command: what a bug report needs, without starting anything."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from asyncbackup.cli import main, main_github, main_s3


@pytest.mark.parametrize(
    ("entry", "words", "prog"),
    [
        (main, [], "asyncbackup"),
        (main, ["s3"], "asyncbackup s3"),
        (main, ["github"], "asyncbackup github"),
        (main_s3, [], "backup-s3"),
        (main_github, [], "backup-github"),
    ],
)
def test_version_names_the_package_python_and_the_s3_libraries(
    entry: Callable[[Sequence[str]], int],
    words: list[str],
    prog: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as ended:
        entry([*words, "--version"])
    assert ended.value.code == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith(f"{prog} {importlib.metadata.version('asyncbackup')} ")
    assert f"Python {platform.python_version()}" in out
    for library in ("botocore", "aiobotocore", "aiohttp"):
        assert f"{library} {importlib.metadata.version(library)}" in out


def test_version_from_the_console_script_starts_no_run(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "backup-s3"
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("backup-s3 ")
    assert done.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no checkpoint folder, no staging
