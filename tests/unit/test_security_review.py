"""Security review: modes and planted symbolic links of the files beside a checkpoint."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbackup.checkpoint import CheckpointLock
from asyncbackup.journal import JournalWriter


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_lock_and_the_journal_are_private_under_umask_022(
    umask_022: None, tmp_path: Path
) -> None:
    """The lock (it holds the pid) and the journal (keys done, multipart uploads) are 0600."""
    lock = CheckpointLock(tmp_path / "b_p.checkpoint")
    lock.acquire()
    journal = JournalWriter(tmp_path / "b_p.checkpoint.journal")
    journal.start("id", "0" * 64, b"{}\n")
    try:
        assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    finally:
        journal.close()
        lock.release()
