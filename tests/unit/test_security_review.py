"""Security review: modes and planted symbolic links of the files beside a checkpoint."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from asyncbackup.atomicfile import write_atomic
from asyncbackup.checkpoint_lock import CheckpointLock
from asyncbackup.journal import JournalWriter


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


def _plant(link: Path, victim: Path) -> None:
    victim.write_text("precious\n")
    link.symlink_to(victim)


def test_a_journal_planted_as_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    """``JournalWriter.start`` opened ``<checkpoint>.journal`` with O_CREAT|O_TRUNC, through
    a link planted there: the file it pointed to was truncated and given the journal."""
    victim = tmp_path / "bashrc"
    _plant(tmp_path / "b_p.checkpoint.journal", victim)
    journal = JournalWriter(tmp_path / "b_p.checkpoint.journal")
    with pytest.raises(OSError):
        journal.start("id", "0" * 64, b"{}\n")
    journal.close()
    assert victim.read_text() == "precious\n"


def test_a_temporary_file_planted_as_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    """``write_atomic`` writes ``.<name>.<pid>.tmp`` beside the file, then renames it: a name
    anyone can guess (the lock file holds the pid). A link planted there was opened and
    truncated, given the checkpoint, and renamed over it: the file it pointed to was lost and
    the checkpoint became a link to it. Now the write makes a file of its own."""
    victim = tmp_path / "bashrc"
    target = tmp_path / "b_p.checkpoint"
    _plant(tmp_path / f".{target.name}.{os.getpid()}.tmp", victim)
    write_atomic(target, b"{}\n")
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and target.read_bytes() == b"{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
