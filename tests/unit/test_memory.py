"""``return_large_buffers_to_os``: the command line's glibc setting for large buffers."""

from __future__ import annotations

import platform
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
