"""The command line's process-wide memory settings: glibc's for large buffers, the collector's."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from asyncbackup.memory import return_large_buffers_to_os


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_sets_the_threshold_on_glibc() -> None:
    assert return_large_buffers_to_os() is True


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert return_large_buffers_to_os() is False


def test_collect_less_freezes_start_up_and_raises_the_young_threshold() -> None:
    """In a process of its own: the collector's settings are the whole process's."""
    script = (
        "import gc; from asyncbackup.memory import GC_YOUNG_THRESHOLD, collect_less; "
        "before = gc.get_threshold(); collect_less(); after = gc.get_threshold(); "
        "print(gc.get_freeze_count() > 10_000, after[0] == GC_YOUNG_THRESHOLD, "
        "after[1:] == before[1:])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]
