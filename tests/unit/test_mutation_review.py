"""Tests written by a mutation audit: each kills a mutant the rest of the suite let live (its
docstring names the mutant), where the mutant would change what a user gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asyncbackup.checkpoint import CheckpointState, load_checkpoint, read_checkpoint
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.errors import CheckpointCorruptError
from asyncbackup.etags import clean_etag, is_md5_etag, multipart_parts
from asyncbackup.journal import Changes, JournalWriter, journal_path
from asyncbackup.staging import Staging
from tests.unit.test_checkpoint import SEED_EXAMPLE


def test_an_upper_case_etag_is_still_an_md5_and_a_part_count() -> None:
    """Mutant: ``clean_etag`` without ``.lower()``. Some S3-compatible servers write the hex
    digits of an ETag in upper case: it must still be read as the object's MD5 (a download is
    checked against it; taken for an opaque ETag, a corrupted download would go unchecked) and
    compare equal to our own (lower-case) MD5 of the bytes, or every good copy is refused."""
    upper = '"9E107D9D372BB6826BD81D3542A419D6"'
    assert clean_etag(upper) == "9e107d9d372bb6826bd81d3542a419d6"
    assert is_md5_etag(upper)
    assert multipart_parts('"9E107D9D372BB6826BD81D3542A419D6-3"') == 3


@pytest.mark.parametrize("config", [[], "cleanup", 7, None])
def test_a_config_that_is_no_object_is_a_corrupt_checkpoint(tmp_path: Path, config: object) -> None:
    """Mutants: the check that ``config`` is an object dropped, or a bad one replaced by
    ``{}``. The config records where the copies went (``dest_prefix``, the endpoints): a
    hand edit that broke it must stop the run with the corrupt-checkpoint advice, not be
    forgotten (the resume then checks no endpoint, and verify looks for the copies in the
    wrong place) nor crash the run later on a list's missing ``.get``."""
    data = json.loads(SEED_EXAMPLE)
    data["config"] = config
    path = tmp_path / "bad.checkpoint"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointCorruptError, match="'config'"):
        read_checkpoint(path)


async def test_a_garbled_last_line_of_the_journal_is_cut_off_exactly(tmp_path: Path) -> None:
    """Mutant: ``end -= len(torn) + 1`` in ``read_journal`` as ``end -= len(torn)``. A last
    journal line that did not make it whole is left out, and the next run cuts the journal
    back to its complete lines before appending (``JournalWriter.adopt``). One byte off, the
    garbled line's first byte stays and the next line appended is glued to it: a journal
    that no later load can read (a corrupt checkpoint, the done marks lost)."""
    path = tmp_path / "x.checkpoint"
    manager = CheckpointManager(path)
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    state.files = {"k1": False, "k2": False}
    manager.flush(state)
    changes = Changes()
    state.files["k1"] = changes.files["k1"] = True
    await manager.save_async(state, changes)
    manager._writer.shutdown(wait=True)  # a SIGKILL: the files as they are
    manager.journal.close()
    journal = journal_path(path)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"files": {"k2": tr\n')  # a line garbled on its way down
    loaded = load_checkpoint(path)
    assert loaded.journal_batches == 1 and loaded.state.files == {"k1": True, "k2": False}
    assert loaded.journal_valid_bytes == len(whole)
    writer = JournalWriter(journal)
    writer.adopt(loaded.journal_valid_bytes)
    writer.append(b'{"files": {"k2": true}}\n')
    writer.close()
    assert load_checkpoint(path).state.files == {"k1": True, "k2": True}


@pytest.mark.parametrize(
    ("key", "twin"),
    [("a/./b", "a/b"), ("%2E%2E/x", "../x"), ("%2E", "."), ("a/%/b", "a//b"), ("x%5Cy", "x\\y")],
)
def test_keys_a_naive_encoding_would_merge_keep_their_own_staged_bytes(
    tmp_path: Path, key: str, twin: str
) -> None:
    """Mutants: ``.`` dropped from the special segments (pathlib then folds ``a/./b`` into
    ``a/b``), or ``%`` no longer percent-encoded (``%2E%2E`` then spells the encoding of
    ``..``). Two keys staged at one path: the second one's bytes replace the first one's
    staged file, which is uploaded under the first key - a wrong copy, marked done."""
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    first = staging.store(key, b"bytes of " + key.encode())
    second = staging.store(twin, b"bytes of " + twin.encode())
    assert first != second
    assert first.read_bytes() == b"bytes of " + key.encode()
    assert second.read_bytes() == b"bytes of " + twin.encode()


@pytest.mark.parametrize("length", [255, 256, 260])
def test_a_key_segment_just_past_the_file_name_limit_is_staged(tmp_path: Path, length: int) -> None:
    """Mutant: segments cut only past 260 bytes (``_MAX_SEGMENT_BYTES + 20``) instead of
    240. A file name holds 255 bytes: a key with a 256-260 byte segment (a valid S3 key)
    would fail to stage (ENAMETOOLONG) on every run, never backed up."""
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    key = "folder/" + "n" * length
    staged = staging.store(key, b"data")
    assert staged.read_bytes() == b"data"
    assert all(len(part.encode()) <= 255 for part in staged.parts)
