"""The checkpoint journal: appended, applied on load, compacted, and safe against crashes and
hand edits. Real files in a temporary directory; a crash is a manager dropped mid-way."""

from __future__ import annotations

import asyncio
import random
import string
import threading
from pathlib import Path

import orjson
import pytest

from asyncbackup.checkpoint import CheckpointState, load_checkpoint, read_checkpoint
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.checkpoint_tool import (
    compact_checkpoint,
    find_checkpoints,
    inspect_checkpoint,
    mark_keys,
)
from asyncbackup.errors import CheckpointCorruptError, CheckpointEditedError
from asyncbackup.journal import Changes, JournalWriter, journal_path, parse_journal


def _state(files: int = 10) -> CheckpointState:
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    state.files = {f"k{i:03d}": False for i in range(files)}
    state.total_files = files
    return state


def _done(state: CheckpointState, key: str, size: int = 10) -> Changes:
    changes = Changes()
    state.files[key] = changes.files[key] = True
    state.processed_files += 1
    state.processed_bytes += size
    if state.errors.pop(key, None) is not None:
        changes.errors[key] = None
    return changes


def _fail(state: CheckpointState, key: str, message: str) -> Changes:
    changes = Changes()
    state.files[key] = changes.files[key] = False
    state.errors[key] = changes.errors[key] = message
    return changes


def _open(path: Path, **options: float) -> CheckpointManager:
    manager = CheckpointManager(path, **options)  # type: ignore[arg-type]
    manager.open()
    return manager


def _crash(manager: CheckpointManager) -> None:
    """What a SIGKILL leaves: the files as they are, the lock released by the kernel."""
    manager._writer.shutdown(wait=True)
    manager.journal.close()
    manager.lock.release()


def _new(path: Path, **options: float) -> tuple[CheckpointManager, CheckpointState]:
    manager = _open(path, **options)
    state = _state()
    manager.flush(state)
    return manager, state


def test_sliced_serialisation_is_byte_for_byte_to_json() -> None:
    rng = random.Random(7)
    for count in (0, 1, 5, 300):
        state = _state(0)
        keys = ["".join(rng.choice(string.printable) for _ in range(8)) for _ in range(count)]
        state.files = {key: rng.random() < 0.5 for key in keys}
        state.errors = {key: 'Code: "quoted"\nline' for key in keys[: count // 3]}
        state.config = {"nested": {"list": [1, {}, []]}, "empty": {}}
        state.extra = {"multipart_uploads": dict.fromkeys(keys[: count // 2], "id"), "x": []}
        for slice_size in (1, 7, 20_000):
            assert b"".join(state.iter_json(slice_size)) == state.to_json()


async def test_a_flush_appends_a_line_and_loading_applies_it(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    json_before = path.read_bytes()
    await manager.save_async(state, _done(state, "k001"))
    await manager.save_async(state, _fail(state, "k002", "AccessDenied: no"))
    await manager.save_async(state, _done(state, "k002"))
    _crash(manager)
    assert path.read_bytes() == json_before  # the JSON file is not rewritten per flush
    lines = journal_path(path).read_bytes().splitlines()
    assert len(lines) == 4 and orjson.loads(lines[0])["journal"] == 1
    assert orjson.loads(lines[2])["errors"] == {"k002": "AccessDenied: no"}
    loaded = load_checkpoint(path)
    assert loaded.journal and loaded.journal_batches == 3
    assert loaded.state.files == state.files and loaded.state.errors == {}
    assert (loaded.state.processed_files, loaded.state.processed_bytes) == (2, 20)
    assert loaded.state.last_update == state.last_update


async def test_notes_are_set_and_removed_through_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    changes = Changes()
    changes.note("multipart_uploads", "big", "upload-1")
    changes.note("multipart_uploads", "other", "")
    await manager.save_async(state, changes)
    assert read_checkpoint(path).extra == {"multipart_uploads": {"big": "upload-1", "other": ""}}
    changes = Changes()
    changes.note("multipart_uploads", "big", None)
    changes.note("multipart_uploads", "other", None)
    await manager.save_async(state, changes)
    _crash(manager)
    assert "multipart_uploads" not in read_checkpoint(path).extra  # emptied: gone, as in a run


async def test_torn_last_line_is_ignored_then_cut_off_by_the_fold(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    await manager.save_async(state, _done(state, "k001"))
    _crash(manager)
    journal = journal_path(path)
    whole = journal.read_bytes()
    torn = _done(state, "k002").line({"processed_files": 2})
    journal.write_bytes(whole + torn[: len(torn) // 2])  # SIGKILL in the middle of a write
    loaded = load_checkpoint(path)
    assert loaded.journal_batches == 1 and loaded.journal_valid_bytes == len(whole)
    assert loaded.state.files["k001"] is True and loaded.state.files["k002"] is False
    # The next run folds it in: the JSON file holds everything, the journal is gone.
    resumed = _open(path)
    state, was_resumed = resumed.load_or_create(
        source_bucket="b", source_path="p", dest_bucket="d", config={}, ignore_existing=False
    )
    resumed.close()
    assert was_resumed and state.files["k001"] is True
    assert not journal.exists()
    assert orjson.loads(path.read_bytes())["files"]["k001"] is True


async def test_unreadable_middle_line_is_a_clear_corrupt_error(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    await manager.save_async(state, _done(state, "k001"))
    await manager.save_async(state, _done(state, "k002"))
    _crash(manager)
    journal = journal_path(path)
    lines = journal.read_bytes().split(b"\n")
    lines[1] = lines[1][:-3]
    journal.write_bytes(b"\n".join(lines))
    before = (path.read_bytes(), journal.read_bytes())
    with pytest.raises(CheckpointCorruptError, match=r"journal .*line 2.*--discard-journal"):
        read_checkpoint(path)
    assert (path.read_bytes(), journal.read_bytes()) == before  # left untouched
    # A batch in the wrong shape is corruption too, wherever it is.
    journal.write_bytes(b"\n".join([lines[0], b'{"files": {"k001": "yes"}}', b""]))
    with pytest.raises(CheckpointCorruptError, match="line 2: 'files'"):
        read_checkpoint(path)


async def test_compaction_when_the_journal_outgrows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path, compact_ratio=0.5, compact_min_bytes=0)
    json_size = path.stat().st_size
    for index in range(10):
        await manager.save_async(state, _done(state, f"k{index:03d}"))
        assert manager.journal.size <= 0.5 * json_size + 200  # one line past the bound at most
    assert manager.compactions >= 2 and manager.flushes == 11
    on_disk = orjson.loads(path.read_bytes())
    assert sum(on_disk["files"].values()) >= 5  # a compaction carried the batches over
    manager.flush(state)  # the end of a run
    manager.close()
    assert not journal_path(path).exists()
    assert orjson.loads(path.read_bytes())["processed_files"] == 10


async def test_compaction_after_compact_every_seconds(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path, compact_every=0.0)
    await manager.save_async(state, _done(state, "k001"))
    assert journal_path(path).exists()  # the first flush after a compaction appends
    await manager.save_async(state, _done(state, "k002"))
    assert not journal_path(path).exists()  # the journal was older than compact_every
    manager.close()
    assert orjson.loads(path.read_bytes())["processed_files"] == 2


class _NoRemove(JournalWriter):
    def remove(self) -> None:  # the crash falls between the replace and the removal
        self.close()


async def test_crash_after_the_replace_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    await manager.save_async(state, _fail(state, "k001", "SlowDown: busy"))
    manager.journal = _NoRemove(manager.journal.path)
    manager.journal.adopt(journal_path(path).stat().st_size)
    state.errors.clear()  # changed in memory only, then compacted
    manager.flush(state)
    _crash(manager)
    contents = parse_journal(journal_path(path).read_bytes())
    assert contents.batches == 1 and len(contents.compacted) == 1
    loaded = load_checkpoint(path)
    assert loaded.journal and loaded.journal_batches == 0  # already in the JSON file
    assert loaded.state.errors == {}


async def test_hand_edit_after_a_crash_is_refused_until_resolved(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    await manager.save_async(state, _done(state, "k001"))
    _crash(manager)
    data = orjson.loads(path.read_bytes())
    data["files"]["k005"] = True  # the operator skips k005 by hand, journal still there
    path.write_bytes(orjson.dumps(data))
    edited = path.read_bytes()
    with pytest.raises(CheckpointEditedError, match="--discard-journal"):
        read_checkpoint(path)
    with pytest.raises(CheckpointEditedError):
        inspect_checkpoint(path)
    with pytest.raises(CheckpointEditedError):
        compact_checkpoint(path)
    assert path.read_bytes() == edited
    result = compact_checkpoint(path, discard_journal=True)
    assert result.discarded_to is not None and result.discarded_to.exists()
    assert not journal_path(path).exists() and path.read_bytes() == edited
    state = read_checkpoint(path)
    assert state.files["k005"] is True and state.files["k001"] is False  # the edit wins


async def test_show_folds_a_leftover_journal_and_mark_edits_over_it(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    await manager.save_async(state, _done(state, "k001"))
    await manager.save_async(state, _done(state, "k002"))
    _crash(manager)
    info = inspect_checkpoint(path, fold=False)
    assert (info.processed_files, info.journal_batches, info.journal_folded) == (2, 2, 0)
    assert journal_path(path).exists()
    info = inspect_checkpoint(path)
    assert (info.processed_files, info.journal_folded) == (2, 2)
    assert not journal_path(path).exists()
    assert orjson.loads(path.read_bytes())["processed_files"] == 2  # what jq now shows
    # mark after another crash: the journal is folded into the edit's one write
    manager = _open(path)
    state = read_checkpoint(path)
    manager.flush(state)
    await manager.save_async(state, _done(state, "k003"))
    _crash(manager)
    result = mark_keys(path, ["k001"], done=False)
    assert result.changed == 1 and result.processed_files == 2
    assert not journal_path(path).exists()
    on_disk = orjson.loads(path.read_bytes())["files"]
    assert (on_disk["k001"], on_disk["k002"], on_disk["k003"]) == (False, True, True)


async def test_ignored_checkpoint_takes_its_journal_aside(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    await manager.save_async(state, _done(state, "k001"))
    _crash(manager)
    fresh = _open(path)
    state, resumed = fresh.load_or_create(
        source_bucket="b", source_path="p", dest_bucket="d", config={}, ignore_existing=True
    )
    fresh.close()
    assert not resumed and not journal_path(path).exists()
    (aside,) = tmp_path.glob("x.checkpoint.ignored-*[0-9TZ]")
    assert read_checkpoint(aside).files["k001"] is True  # its journal went with it


def test_readers_beside_a_writer_always_see_a_whole_recent_state(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path, compact_ratio=0.0, compact_min_bytes=0)
    stop = threading.Event()
    seen: list[int] = []
    problems: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                orjson.loads(path.read_bytes())
                seen.append(read_checkpoint(path).processed_files)
            except BaseException as exc:
                problems.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:

        async def write() -> None:
            state.files.update({f"k{i:04d}": False for i in range(1000)})
            for index in range(1000):
                await manager.save_async(state, _done(state, f"k{index:04d}"))

        asyncio.run(write())
    finally:
        stop.set()
        thread.join()
        manager.close()
    assert not problems, problems
    assert manager.compactions > 3 and len(seen) > 10
    assert seen == sorted(seen)  # never behind an earlier read


async def test_list_reads_through_the_journal_and_skips_journal_files(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    manager, state = _new(path)
    await manager.save_async(state, _done(state, "k001"))
    _crash(manager)
    (tmp_path / "x.checkpoint.journal.discarded-20240101T000000Z").write_bytes(b"{")
    (listed,) = find_checkpoints(tmp_path, include_all=True)
    assert listed.path == path and listed.info is not None
    assert listed.info.processed_files == 1 and listed.info.journal_batches == 1
    assert journal_path(path).exists()  # list only reads
