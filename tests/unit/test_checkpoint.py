from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import orjson
import pytest

from asyncbackup.checkpoint import CheckpointState, checkpoint_path, read_checkpoint, sanitize_name
from asyncbackup.checkpoint_identity import check_dest_endpoint, endpoint_for_checkpoint
from asyncbackup.checkpoint_lock import CheckpointLock
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    ConfigError,
    ObjectError,
)

SEED_EXAMPLE = """{
  "backup_id": "unique-identifier",
  "source_bucket": "source-bucket-name",
  "source_path": "path/within/bucket",
  "dest_bucket": "destination-bucket-name",
  "start_time": "2024-04-06T12:00:00",
  "last_update": "2024-04-06T13:15:30",
  "total_files": 1250,
  "processed_files": 820,
  "total_bytes": 1073741824,
  "processed_bytes": 536870912,
  "files": {
    "path/to/file1.txt": true,
    "path/to/file2.dat": true,
    "path/to/file3.csv": false
  },
  "errors": {
    "path/to/problem_file.bin": "AccessDenied: Access Denied"
  },
  "config": {
    "cleanup": true,
    "base_local_path": "/path/to/local/storage"
  }
}"""


def test_seed_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    path.write_text(SEED_EXAMPLE)
    state = read_checkpoint(path)
    assert state.backup_id == "unique-identifier"
    assert state.files == {
        "path/to/file1.txt": True,
        "path/to/file2.dat": True,
        "path/to/file3.csv": False,
    }
    assert state.errors == {"path/to/problem_file.bin": "AccessDenied: Access Denied"}
    assert state.config["base_local_path"] == "/path/to/local/storage"
    # processed_files follows the map (hand edits are honoured), not the stale counter
    assert state.processed_files == 2
    assert state.total_bytes == 1073741824


def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path: Path) -> None:
    data = json.loads(SEED_EXAMPLE)
    data["operator_note"] = {"ticket": 42}
    path = tmp_path / "x.checkpoint"
    path.write_text(json.dumps(data))
    manager = CheckpointManager(path)
    manager.flush(read_checkpoint(path))
    manager.close()
    written = orjson.loads(path.read_bytes())
    assert written["operator_note"] == {"ticket": 42}
    for field in data:
        assert field in written
    assert written["processed_files"] == 2
    assert isinstance(written["last_update"], str)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("backup_id"), "backup_id"),
        (lambda d: d.update(files={"a": "yes"}), "files"),
        (lambda d: d.update(total_files=-1), "total_files"),
        (lambda d: d.update(start_time="yesterday"), "start_time"),
        (lambda d: d.update(errors=[]), "errors"),
        # the engine's own sections: a hand edit that is no object was a crash mid-run
        (lambda d: d.update(multipart_uploads="abc"), "multipart_uploads"),
        (lambda d: d.update(github_etags=[]), "github_etags"),
    ],
)
def test_schema_violations_are_corrupt(tmp_path: Path, mutate: object, needle: str) -> None:
    data = json.loads(SEED_EXAMPLE)
    mutate(data)  # type: ignore[operator]
    path = tmp_path / "bad.checkpoint"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointCorruptError, match=needle):
        read_checkpoint(path)


def test_truncated_file_is_corrupt_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.checkpoint"
    path.write_text(SEED_EXAMPLE[:200])
    with pytest.raises(CheckpointCorruptError, match="--ignore-checkpoints"):
        read_checkpoint(path)
    assert path.read_text() == SEED_EXAMPLE[:200]


def test_an_unreadable_checkpoint_or_journal_says_what_to_do(tmp_path: Path) -> None:
    """An unreadable file (its permissions, or not a file at all) is a one-line error that
    says what to do, as a corrupt one is; nothing is changed."""
    path = tmp_path / "u.checkpoint"
    path.mkdir()
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and "permissions" in message and path.is_dir()
    path.rmdir()
    path.write_text(SEED_EXAMPLE)
    journal = tmp_path / "u.checkpoint.journal"
    journal.mkdir()
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and "permissions" in message and "--discard-journal" in message
    assert journal.is_dir() and path.read_text() == SEED_EXAMPLE


def test_path_naming_follows_the_spec(tmp_path: Path) -> None:
    path = checkpoint_path(
        base_local_path=Path("/mnt/data/scratch"),
        source_bucket="company-data-db",
        source_path="Projects/TeamA/2024Q1",
        checkpoint_dir=None,
    )
    assert path == Path(
        "/mnt/data/scratch/checkpoints/company-data-db_Projects_TeamA_2024Q1.checkpoint"
    )
    custom = checkpoint_path(
        base_local_path=Path("/x"),
        source_bucket="b",
        source_path="a b/c:d",
        checkpoint_dir=Path("/persistent"),
    )
    assert custom == Path("/persistent/b_a_b_c_d.checkpoint")


@pytest.mark.parametrize(
    ("bucket", "checkpoint_dir"),
    [("checkpoints", None), ("b", Path("/x/b/state")), ("b", Path("/x/b"))],
)
def test_checkpoint_folder_inside_staging_is_refused(
    bucket: str, checkpoint_dir: Path | None
) -> None:
    """A key staged under ``/x/<bucket>`` could land on the checkpoint: refused up front."""
    with pytest.raises(ConfigError, match="--checkpoint-dir") as caught:
        checkpoint_path(
            base_local_path=Path("/x"),
            source_bucket=bucket,
            source_path="p",
            checkpoint_dir=checkpoint_dir,
        )
    assert "\n" not in str(caught.value)
    beside = checkpoint_path(
        base_local_path=Path("/x"),
        source_bucket=bucket,
        source_path="p",
        checkpoint_dir=Path("/x/bb"),
    )
    assert beside == Path(f"/x/bb/{bucket}_p.checkpoint")


def test_sanitized_long_names_stay_short_and_distinct() -> None:
    a, b = sanitize_name("x" * 500 + "a"), sanitize_name("x" * 500 + "b")
    assert a != b
    assert len(a) <= 200


def test_ignored_checkpoint_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "b_p.checkpoint"
    path.write_text("{not json")
    manager = CheckpointManager(path)
    state, resumed = manager.load_or_create(
        source_bucket="b", source_path="p", dest_bucket="d", config={}, ignore_existing=True
    )
    manager.close()
    assert not resumed
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    assert read_checkpoint(path).backup_id == state.backup_id


def test_set_asides_within_one_second_never_replace_each_other(tmp_path: Path) -> None:
    """Three --ignore-checkpoints starts in a few milliseconds: at least two share a second,
    and each set-aside file, the operator's original first, is kept."""
    path = tmp_path / "b_p.checkpoint"
    path.write_text(SEED_EXAMPLE)
    original = read_checkpoint(path).backup_id
    for _ in range(3):
        manager = CheckpointManager(path)
        manager.load_or_create(
            source_bucket="b", source_path="p", dest_bucket="d", config={}, ignore_existing=True
        )
        manager.close()
    aside = [p for p in tmp_path.iterdir() if ".ignored-" in p.name]
    assert len(aside) == 3
    assert original in {read_checkpoint(p).backup_id for p in aside}


def test_error_messages_are_stored_on_one_line() -> None:
    """A server's message with line breaks stays one line in the checkpoint (and in
    ``checkpoint errors``, one line per file)."""
    error = ObjectError("InternalError", "We encountered\r\nan internal error.\n  Retry.")
    assert str(error) == "InternalError: We encountered an internal error. Retry."


def test_checkpoint_of_another_job_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b_p.checkpoint"
    path.write_text(SEED_EXAMPLE)
    manager = CheckpointManager(path)
    with pytest.raises(CheckpointMismatchError, match="another job"):
        manager.load_or_create(
            source_bucket="b", source_path="p", dest_bucket="d", config={}, ignore_existing=False
        )
    manager.close()


def test_open_removes_the_temporary_files_a_killed_write_left(tmp_path: Path) -> None:
    path = tmp_path / "b_p.checkpoint"
    killed = tmp_path / ".b_p.checkpoint.4242.tmp"  # a compaction cut short by a SIGKILL
    others = [tmp_path / ".other.checkpoint.4242.tmp", tmp_path / ".b_p.checkpoint.x.tmp"]
    for file in (killed, *others):
        file.write_bytes(b"{")
    manager = CheckpointManager(path)
    manager.open()
    manager.close()
    assert not killed.exists()
    assert all(file.exists() for file in others)


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    first, second = CheckpointLock(path), CheckpointLock(path)
    first.acquire()
    with pytest.raises(CheckpointLockedError, match="in use"):
        second.acquire()
    assert second.is_held_elsewhere()
    first.release()
    second.acquire()
    second.release()


def test_new_state_has_every_schema_field() -> None:
    state = CheckpointState.new(source_bucket="s", source_path="p", dest_bucket="d", config={})
    data = orjson.loads(state.to_json())
    expected = {
        "backup_id", "source_bucket", "source_path", "dest_bucket", "start_time",
        "last_update", "total_files", "processed_files", "total_bytes", "processed_bytes",
        "files", "errors", "config",
    }  # fmt: skip
    assert expected <= set(data)


def test_the_note_sections_are_those_the_engine_writes() -> None:
    from asyncbackup.checkpoint import NOTE_SECTIONS
    from asyncbackup.github.listing import CARRIED_SECTIONS, SKIPPED
    from asyncbackup.uploads import SECTION

    assert {SECTION, SKIPPED, *CARRIED_SECTIONS} == NOTE_SECTIONS


def _linked_checkpoint(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """The seed's example as ``persistent/NAME``, and ``checkpoints/b_p.checkpoint`` a link to
    it: (the persistent folder, the file, the link)."""
    storage = tmp_path / "persistent"
    storage.mkdir()
    real = storage / name
    real.write_text(SEED_EXAMPLE)
    link = tmp_path / "checkpoints" / "b_p.checkpoint"
    link.parent.mkdir()
    link.symlink_to(real)
    return storage, real, link


def test_a_checkpoint_that_is_a_symlink_stays_one(tmp_path: Path) -> None:
    """An operator keeps the checkpoint elsewhere (persistent storage) through a link: every
    write goes to the file it points to, and the link stays."""
    storage, real, link = _linked_checkpoint(tmp_path, "b_p.checkpoint")
    manager = CheckpointManager(link)
    manager.open()
    state, resumed = manager.load_or_create(
        source_bucket="source-bucket-name",
        source_path="path/within/bucket",
        dest_bucket="destination-bucket-name",
        config={},
        ignore_existing=False,
    )
    assert resumed
    state.files["job/new"] = True
    manager.flush(state)
    manager.close()
    assert link.is_symlink() and link.resolve() == real
    assert read_checkpoint(real).files["job/new"] is True
    assert not [p for p in storage.iterdir() if p.name.endswith(".tmp")]


def test_open_removes_a_killed_write_s_temporary_file_beside_a_linked_checkpoint(
    tmp_path: Path,
) -> None:
    """A checkpoint that is a link is written beside the file it points to: the temporary file
    a write cut short by a SIGKILL left there (the whole checkpoint, tens of MB) is removed by
    the next run, as one beside an unlinked checkpoint is."""
    storage, real, link = _linked_checkpoint(tmp_path, "state.json")
    killed = storage / ".state.json.4242.tmp"  # write_atomic_pieces' name, beside the target
    other = storage / ".other.json.4242.tmp"
    for file in (killed, other):
        file.write_bytes(b"{")
    manager = CheckpointManager(link)
    manager.open()
    manager.close()
    assert not killed.exists()
    assert other.exists()
    assert link.is_symlink() and real.read_text() == SEED_EXAMPLE


def test_an_endpoint_with_its_default_port_spelled_out_is_the_same_endpoint() -> None:
    """botocore sends to https://h and https://h:443 alike: a resume with either is the same
    store, not a refusal."""
    assert endpoint_for_checkpoint("https://s3.example.com:443/") == endpoint_for_checkpoint(
        "https://s3.example.com"
    )
    assert endpoint_for_checkpoint("HTTP://minio:80") == "http://minio"
    assert endpoint_for_checkpoint("http://minio:443") == "http://minio:443"


def test_a_mistyped_endpoint_in_the_checkpoint_is_a_one_line_refusal() -> None:
    """The refusal says to set config.dest_endpoint_url by hand: a typo there is reported as
    another endpoint, not a traceback."""
    for typo in ("http://127.0.0.1:90o0", "http://127.0.0.1:99999"):
        with pytest.raises(CheckpointMismatchError, match="destination endpoint") as caught:
            check_dest_endpoint(
                Path("b_p.checkpoint"), {"dest_endpoint_url": typo}, "http://127.0.0.1:9000"
            )
        assert typo in str(caught.value) and "\n" not in str(caught.value)


def test_a_checkpoint_folder_in_the_staging_temporary_folder_is_refused(tmp_path: Path) -> None:
    """Staging.prepare() removes what a dead writer left in <base>/.tmp - anything whose name
    is not <pid>-...: a checkpoint kept there would be deleted by the run that made it."""
    with pytest.raises(ConfigError, match="--checkpoint-dir") as caught:
        checkpoint_path(
            base_local_path=tmp_path,
            source_bucket="b",
            source_path="p",
            checkpoint_dir=tmp_path / ".tmp" / "state",
        )
    assert "\n" not in str(caught.value)


def test_a_flush_out_of_open_files_says_so_not_free_space(tmp_path: Path) -> None:
    """Every descriptor in use (a --concurrency above the open-file limit): the checkpoint
    write fails with EMFILE, and its message says what to do about that, not "free space or
    fix permissions". The previous version stays intact."""
    path = tmp_path / "job.checkpoint"
    manager = CheckpointManager(path)
    manager.open()
    state, _ = manager.load_or_create(
        source_bucket="b", source_path="p", dest_bucket="d", config={}, ignore_existing=False
    )
    manager.flush(state)
    before = path.read_bytes()
    held: list[int] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = sum(1 for _ in Path("/proc/self/fd").iterdir())
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 64, hard))  # a few to take
    try:
        with pytest.raises(CheckpointError, match=r"open-file limit \(ulimit -n\)") as caught:
            while True:  # take every descriptor left, then write the checkpoint
                try:
                    held.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    state.files["k"] = True
                    manager.flush(state)
                    break
        assert "free space" not in str(caught.value)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        manager.close()
    assert path.read_bytes() == before


def test_the_newest_archive_is_found_among_more_than_ten_in_one_second(tmp_path: Path) -> None:
    """Archives made within one second are named ``<time>``, ``<time>-2``... ``<time>-11``:
    sorted by name, ``-10`` and ``-11`` came before ``-2``, and the "newest" archive (which a
    GitHub backup carries its artifacts' versions forward from) was the ninth."""
    from asyncbackup.checkpoint_tool import archived_versions

    path = tmp_path / "job.checkpoint"
    for run in range(12):
        manager = CheckpointManager(path)
        manager.open()
        state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
        state.extra["run"] = {"number": run}
        manager.flush(state)
        manager.finish("archive")
        manager.close()
    archives = archived_versions(path)
    runs = [read_checkpoint(a).extra["run"]["number"] for a in archives]
    assert runs == list(range(12))


def test_a_copy_of_an_old_archive_with_a_suffix_is_not_taken_for_the_newest(
    tmp_path: Path,
) -> None:
    """``NAME.checkpoint.<time>.bak`` (a copy a user kept of an older archive) was ordered by
    what follows its last dot, ``bak``, after every time: ``checkpoint show`` named it the
    last archive and a GitHub backup carried its old versions forward, not the newest's."""
    import shutil

    from asyncbackup.checkpoint_tool import archived_versions

    path = tmp_path / "job.checkpoint"
    for run, stamp in enumerate(("20260101T000000Z", "20260102T000000Z")):
        manager = CheckpointManager(path)
        manager.open()
        state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
        state.extra["run"] = {"number": run}
        manager.flush(state)
        archived = manager.finish("archive")
        manager.close()
        assert archived is not None
        archived.rename(archived.with_name(f"{path.name}.{stamp}"))
    old = path.parent / "archive" / f"{path.name}.20260101T000000Z"
    shutil.copy(old, old.with_name(f"{old.name}.bak"))
    archives = archived_versions(path)
    assert [a.name.removeprefix(f"{path.name}.") for a in archives] == [
        "20260101T000000Z",
        "20260101T000000Z.bak",
        "20260102T000000Z",
    ]
    assert read_checkpoint(archives[-1]).extra["run"] == {"number": 1}
