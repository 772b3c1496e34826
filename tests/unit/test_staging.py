from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from asyncbackup import filemodes, liveness
from asyncbackup import staging as staging_module
from asyncbackup.liveness import LivenessLock
from asyncbackup.sources.s3 import _temporary
from asyncbackup.staging import Staging, encode_segment, is_within, relative_path_for_key

HOSTILE_KEYS = [
    "../../etc/passwd",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "..",
    ".",
    "",
    "dir/",
    "back\\slash\\..\\..\\x",
    "ctrl\x00\x01\x1f\x7fchars",
    "long/" + "n" * 1000,
    "%2E%2E/escaped",
    "ünïcode/ key with spaces",
]


def test_is_within_answers_as_commonpath_does() -> None:
    """``is_within`` answers without ``commonpath`` for a path below the root: the same
    answer as ``commonpath`` for roots and paths of every shape (relative, ``.``, ``..``,
    repeated and trailing slashes, ``/``, the two leading slashes POSIX keeps, a name that
    only starts like the root's)."""

    def by_commonpath(root: Path, path: Path) -> bool:
        # as commonpath() gives the root: it drops two leading slashes (which Linux takes
        # for one), and a root kept with them was found to hold nothing
        root_s = os.path.abspath(root)
        return os.path.commonpath([root_s, os.path.abspath(path)]) == os.path.commonpath([root_s])

    rng = random.Random(7)
    parts = ["a", "b", "ab", "a b", ".", "..", "", "stage", "stage2", "st", "x.y", "\u00fc"]
    roots = ["/", "//", "///", "/stage", "//stage", "/stage/", "stage", ".", "..", "/a/b"]
    paths = []
    for _ in range(20_000):
        lead = rng.choice(["", "/", "//", "///", "/stage/", "//stage/", "stage/", "/stage"])
        paths.append(lead + "/".join(rng.choices(parts, k=rng.randint(0, 5))))
    roots += paths[:200]
    inside = 0
    for path in paths:
        for root in rng.sample(roots, 5):
            expected = by_commonpath(Path(root), Path(path))
            assert is_within(Path(root), Path(path)) == expected, (root, path)
            inside += expected
    assert inside > 1_000


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_every_key_stays_inside_staging(tmp_path: Path, key: str) -> None:
    staging = Staging(tmp_path, "bucket")
    path = staging.path_for(key)
    assert is_within(staging.root, path)
    assert ".." not in path.relative_to(staging.root).parts
    assert all(len(part.encode()) <= 255 for part in path.parts)
    assert "\x00" not in str(path)


def test_distinct_keys_get_distinct_paths() -> None:
    paths = {relative_path_for_key(k) for k in HOSTILE_KEYS}
    assert len(paths) == len(HOSTILE_KEYS)
    assert relative_path_for_key("a%b") != relative_path_for_key("a%25b")


def test_a_segment_spelled_as_a_cut_one_does_not_share_its_path() -> None:
    """A segment over 240 bytes is cut and given a hash suffix (``head~<16 hex>``); a key
    whose segment is spelled so already was staged at the same path, each copy's staging
    writing over the other's."""
    long = "x" * 300
    cut = encode_segment(long)
    assert len(cut.encode()) <= 240 and cut != long
    assert relative_path_for_key(f"p/{cut}") != relative_path_for_key(f"p/{long}")
    assert encode_segment(cut) != cut
    assert encode_segment("a~0123456789abcdeg") == "a~0123456789abcdeg"  # not hex: as it is


def test_special_segments_are_encoded() -> None:
    assert encode_segment("..") == "%2E%2E"
    assert encode_segment("") == "%"
    assert encode_segment("a\\b") == "a%5Cb"


def test_file_and_folder_collision_goes_to_conflicts(tmp_path: Path) -> None:
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    for key in ("a", "a/b", "c/d", "c"):
        tmp = staging.temp_path()
        tmp.write_bytes(key.encode())
        final = staging.commit(tmp, key)
        assert final.read_bytes() == key.encode()
        assert is_within(staging.root, final)
    assert staging.path_for("a").is_file()
    assert staging.path_for("c/d").is_file()


def test_no_key_is_staged_where_a_conflict_goes(tmp_path: Path) -> None:
    """A crafted key naming the conflict of another cannot replace that staged file."""
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    first = staging.commit(_tmp(staging, b"folder"), "a/b")
    moved = staging.commit(_tmp(staging, b"file"), "a")  # a file where a folder is: conflict
    crafted = ".conflicts/" + moved.name
    assert moved.parent == staging.conflict_dir
    landed = staging.commit(_tmp(staging, b"crafted"), crafted)
    assert landed != moved and is_within(staging.root, landed)
    assert (moved.read_bytes(), first.read_bytes(), landed.read_bytes()) == (
        b"file",
        b"folder",
        b"crafted",
    )
    assert relative_path_for_key(".conflicts") == Path("%2Econflicts")
    assert relative_path_for_key("x/.conflicts/y") == Path("x/.conflicts/y")  # only at the top


def test_remove_prunes_empty_folders_only(tmp_path: Path) -> None:
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    kept = staging.commit(_tmp(staging, b"1"), "x/y/keep")
    gone = staging.commit(_tmp(staging, b"2"), "x/z/gone")
    staging.remove(gone)
    assert not gone.parent.exists()
    assert kept.exists()


def _tmp(staging: Staging, data: bytes) -> Path:
    tmp = staging.temp_path()
    tmp.write_bytes(data)
    return tmp


def test_commit_survives_cleanups_racing_on_the_same_folders(tmp_path: Path) -> None:
    """Workers commit into folders that other workers' cleanups prune when empty."""
    import threading

    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(300):
                key = f"a/b/c/{n}-{i}"
                path = staging.commit(_tmp(staging, b"x"), key)
                staging.remove(path)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not (staging.root / "a").exists()


def test_commit_into_a_folder_removed_behind_our_back(tmp_path: Path) -> None:
    """Folders made once are not made again for every file; one deleted by someone else
    (an operator cleaning the staging directory mid-run) is made again."""
    import shutil

    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    first = staging.store("deep/dir/a", b"1")
    shutil.rmtree(staging.root / "deep")
    second = staging.store("deep/dir/b", b"2")
    assert second.read_bytes() == b"2" and not first.exists()
    assert staging.store("deep/dir/c", b"3").read_bytes() == b"3"
    staging.close()  # the run's end: its lock file goes too
    assert sorted(p.name for p in staging.tmp_dir.iterdir()) == []


def test_opaque_etags_of_encrypted_objects_are_not_taken_for_md5s() -> None:
    from asyncbackup.etags import etag_is_digest, etag_is_md5

    md5 = '"9e107d9d372bb6826bd81d3542a419d6"'
    assert etag_is_md5(md5, {}) and etag_is_digest({"ServerSideEncryption": "AES256"})
    for encrypted in (
        {"ServerSideEncryption": "aws:kms"},
        {"ServerSideEncryption": "aws:kms:dsse"},
        {"SSECustomerAlgorithm": "AES256"},
    ):
        assert not etag_is_md5(md5, encrypted) and not etag_is_digest(encrypted)


def test_prepare_removes_what_dead_runs_left_not_what_live_ones_write(tmp_path: Path) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    Staging(tmp_path, "bucket").prepare()
    leftover = tmp_path / ".tmp" / f"{int(ended.stdout)}-0a1b2c3d-7"  # a killed run's
    leftover.write_bytes(b"partial")
    in_flight = _tmp(Staging(tmp_path, "other"), b"being written")  # a run still going
    Staging(tmp_path, "third").prepare()  # another job on the same base path starts
    assert not leftover.exists()
    assert in_flight.read_bytes() == b"being written"


async def test_a_second_cancellation_still_removes_the_temporary_file(tmp_path: Path) -> None:
    # A failed download's temporary file is removed in a thread. With every executor thread
    # busy, that removal waits in the queue; a second cancellation (Ctrl-C twice, a task
    # group tearing down) used to cancel the queued removal, leaving the file behind.
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1)
    loop.set_default_executor(executor)
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    made: list[Path] = []
    release = threading.Event()

    async def download() -> None:
        async with _temporary(staging) as tmp:
            tmp.write_bytes(b"partial")
            made.append(tmp)
            await asyncio.sleep(3600)

    busy = loop.run_in_executor(None, release.wait)  # the only thread, taken
    task = asyncio.create_task(download())
    while not made:
        await asyncio.sleep(0)
    task.cancel()  # the first: the block fails, the removal is queued behind `busy`
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()  # the second, while the removal waits
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await busy
    await asyncio.to_thread(lambda: None)  # the queue has run up to here
    assert not made[0].exists()
    executor.shutdown()


def _other_namespace_run(tmp_path: Path, stop: Path) -> tuple[subprocess.Popen[str], Path]:
    """A run in another container sharing the staging folder, still writing: its own
    process (here, so the kernel holds its lock), its files named with a pid of its own
    namespace, which means nothing in ours (here: the pid of a process that ended)."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    runner = (
        "import os, sys, pathlib, time\n"
        "os.getpid = lambda: int(sys.argv[3])  # its pid in its own namespace\n"
        "import asyncbackup.staging as s\n"
        "st = s.Staging(pathlib.Path(sys.argv[1]), 'bucket')\n"
        "st.prepare()\n"
        "path = st.temp_path()\n"
        "path.write_bytes(b'being written')\n"
        "print(path, flush=True)\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\n"
    )
    argv = [sys.executable, "-c", runner, str(tmp_path), str(stop), ended.stdout.strip()]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_run_in_another_pid_namespace_keeps_its_temporary_files(tmp_path: Path) -> None:
    """Jobs in two containers may share a staging volume (two prefixes of one bucket, in
    Kubernetes CronJobs with one volume). Each has pids the other's namespace does not have
    (or has for another process: pid 1): taken for a dead run's, a live run's partial
    downloads were removed by the other's start. A run now holds a lock while it writes;
    its files are kept while the lock is held, and removed once it is not (killed)."""
    stop = tmp_path / "stop"
    process, in_flight = _other_namespace_run(tmp_path, stop)
    try:
        Staging(tmp_path, "other-prefix").prepare()  # another job on the same base path
        assert in_flight.read_bytes() == b"being written"
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    Staging(tmp_path, "third").prepare()  # after it was killed: a dead run's leftovers
    assert not in_flight.exists()
    assert [p.name for p in (tmp_path / ".tmp").iterdir()] == []


def test_the_folders_known_to_exist_are_a_bounded_number(tmp_path: Path) -> None:
    """Staging remembers the folders it made (no mkdir per file), but not every folder of
    the job: a bucket of 10M objects each in a folder of its own (``<id>/file``) held 10M
    paths in memory beside the checkpoint's map, unless --cleanup pruned them."""
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    paths = [staging.store(f"jobs/{i:05d}/result", str(i).encode()) for i in range(3000)]
    assert all(path.read_bytes() == str(i).encode() for i, path in enumerate(paths))
    assert len(staging._made) <= 1024, f"{len(staging._made)} folders remembered"
    # a folder forgotten since is made again as needed, and one still known is reused
    again = staging.store("jobs/00000/second", b"a")
    assert again.read_bytes() == b"a" and again.parent == paths[0].parent


def _checked_by_another_run(tmp_path: Path) -> tuple[Staging, int]:
    """A run's staging whose pid this namespace does not have (the run's, in its own), and
    the descriptor of another run's check of its lock file, holding a shared lock now."""
    staging = Staging(tmp_path, "bucket")
    dead = 99_999_999
    staging._tmp_prefix = f"{dead}-0badcafe-"
    staging._alive = LivenessLock(staging.tmp_dir, staging._tmp_prefix)
    staging.tmp_dir.mkdir()
    checking = os.open(staging._alive.path, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(checking, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return staging, checking


def test_a_run_taking_its_lock_while_another_run_checks_it_still_holds_it(
    tmp_path: Path,
) -> None:
    """A run starting checks each lock file in the shared folder by taking a shared lock on
    it for a moment. A run taking its own lock in that moment found it taken (EWOULDBLOCK),
    took that for a file system without locks and removed its lock file: its partial
    downloads were then judged by its pid, which means nothing in another container's
    namespace, and removed by the next job's start."""
    staging, checking = _checked_by_another_run(tmp_path)
    check_done = threading.Timer(0.2, os.close, [checking])  # a moment later
    check_done.start()
    try:
        staging.prepare()
    finally:
        check_done.join()
    in_flight = staging.temp_path()
    in_flight.write_bytes(b"being written")
    Staging(tmp_path, "other-prefix").prepare()  # another job on the same base path
    assert in_flight.read_bytes() == b"being written"
    staging.close()
    Staging(tmp_path, "third").prepare()
    assert not in_flight.exists()


def test_a_run_taking_its_lock_just_after_another_found_it_free_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run starting found a lock file free (the run that made it had not locked it yet),
    and removed it once its check was over: the run locking it in between lost its lock
    file and went on without one, its partial downloads judged by a pid that means nothing
    in another container - removed by the next job's start."""
    other = Staging(tmp_path, "bucket")
    dead = 99_999_999  # a pid this namespace does not have (the run's, in its own)
    other._tmp_prefix = f"{dead}-0badcafe-"
    other._alive = LivenessLock(other.tmp_dir, other._tmp_prefix)
    other.tmp_dir.mkdir()
    os.close(os.open(other._alive.path, os.O_RDONLY | os.O_CREAT, 0o600))  # made, not locked
    real = liveness._lock_state

    def checked_then_locked(path: Path) -> bool | None:
        held = real(path)
        if path == other._alive.path:
            other._alive.hold()  # the other run takes its lock right after the check
        return held

    monkeypatch.setattr(liveness, "_lock_state", checked_then_locked)
    Staging(tmp_path, "other-prefix").prepare()
    monkeypatch.setattr(liveness, "_lock_state", real)
    in_flight = other.temp_path()
    in_flight.write_bytes(b"being written")
    Staging(tmp_path, "third").prepare()
    assert in_flight.read_bytes() == b"being written"
    other.close()
    Staging(tmp_path, "fourth").prepare()
    assert not in_flight.exists()
    assert [p.name for p in other.tmp_dir.iterdir()] == []


def test_a_killed_run_of_another_container_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A job in a container is pid 1 there, at every run, and pid 1 is alive in every
    namespace. Killed, its run leaves its temporary files and its lock file, free. A run
    starting that came to the lock file first removed it, then judged the temporary files
    by their pid: alive, kept - at every later start too, a partial download left for good."""
    tmp_dir = tmp_path / ".tmp"
    tmp_dir.mkdir()
    for n in range(8):  # the lock file made before or after a file: whatever the listing order
        names = [f"1-0000000{n}-alive", f"1-0000000{n}-0"]
        for name in names if n % 2 else reversed(names):
            (tmp_dir / name).write_bytes(b"")
    Staging(tmp_path, "bucket").prepare()
    assert [p.name for p in tmp_dir.iterdir() if p.name.startswith("1-")] == []


def test_a_second_temporary_file_waits_for_the_lock_the_first_is_taking(tmp_path: Path) -> None:
    """A worker process (--processes) takes its lock with its first temporary file: a
    second one asked meanwhile, in another thread, went ahead without the lock held - a
    run starting then (another run's check held the lock file) removed it as a dead
    run's."""
    staging, checking = _checked_by_another_run(tmp_path)
    made: list[Path] = []

    def second() -> None:
        path = staging.temp_path()
        path.write_bytes(b"being written")
        made.append(path)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(staging.temp_path)  # waits for the check to end
        time.sleep(0.1)
        done = pool.submit(second)
        with contextlib.suppress(TimeoutError):
            done.result(timeout=0.3)
        Staging(tmp_path, "other-prefix").prepare()  # another job starting, meanwhile
        os.close(checking)
        first.result(timeout=5)
        done.result(timeout=5)
    assert made[0].read_bytes() == b"being written"
    staging.close()


def test_a_link_planted_as_a_runs_lock_file_is_not_followed(tmp_path: Path) -> None:
    """Files in staging are opened without following links (the security rules in the
    README); the lock file too: a link planted under its name made it elsewhere."""
    staging = Staging(tmp_path, "bucket")
    (tmp_path / ".tmp").mkdir()
    elsewhere = tmp_path / "elsewhere"
    staging._alive.path.symlink_to(elsewhere)
    staging.prepare()
    assert not elsewhere.exists()
    assert staging.store("k", b"x").read_bytes() == b"x"
    staging.close()


def test_known_folders_are_remembered_by_their_text_and_forgotten_when_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder this process made is not made again for its next file; once ``remove``
    deletes it (empty), the next file there makes it again, at once (no failed rename)."""
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    made: list[Path] = []
    renames: list[Path] = []
    real_make, real_rename = filemodes.make_folders, staging_module._rename

    def make(path: Path) -> None:
        made.append(path)
        real_make(path)

    def rename(tmp: Path, target: Path) -> None:
        renames.append(target)
        real_rename(tmp, target)

    monkeypatch.setattr(staging_module, "make_folders", make)
    monkeypatch.setattr(staging_module, "_rename", rename)
    first = staging.store("d/a/1", b"1")
    second = staging.store("d/a/2", b"2")
    assert made == [first.parent] and renames == [first, second]
    assert list(staging._made) == [str(first.parent)]
    staging.remove(first)
    staging.remove(second)  # d/a and d emptied: removed, and forgotten
    assert not first.parent.exists() and not staging._made
    third = staging.store("d/a/3", b"3")
    assert made == [first.parent, first.parent] and renames == [first, second, third]
    assert third.read_bytes() == b"3"
