"""``--processes N``: worker processes copy, the main process keeps the one checkpoint writer."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup import BackupConfig, run_backup
from asyncbackup.progress import NullObserver
from tests.conftest import Buckets
from tests.helpers import assert_same_objects, cli_args, numbered_objects
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    CLI,
    assert_done_means_copied,
    assert_identical,
    checkpoint_file,
    kill,
    one_error_line,
    put_parallel,
    read_valid,
    resume_to_completion,
    run_cli,
    start_cli,
    wait_for,
)

MiB = 1024 * 1024
MULTIPART = ("--multipart-threshold", "5MiB", "--part-size", "5MiB")
WORKER = b"asyncbackup._worker"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running (a zombie left to an init that does not reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def worker_pids(parent: int) -> set[int]:
    """Worker processes whose parent is ``parent``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and WORKER in _cmdline(int(entry.name)):
            found.add(int(entry.name))
    return found


def _one_key(query: str) -> bool:
    """A listing of one key: the start-up check of a bucket (under the job's prefix)."""
    return urllib.parse.parse_qs(query).get("max-keys") == ["1"]


def dest_checks(proxy: S3Proxy, dest: str) -> int:
    """The checks of the destination bucket that went through: one a process."""
    bucket = f"^/{dest}/?$"
    listed = [r for r in proxy.seen(method="GET", path=bucket) if _one_key(r.query)]
    return len(listed) + len(proxy.seen(method="HEAD", path=bucket))


def hold_listing_until_workers_ready(proxy: S3Proxy, dest: str, workers: int) -> None:
    """The main process gets its listing only once every worker has opened its clients (the
    last request of a start-up, the check of the destination bucket - a ListObjectsV2 of one
    key through the fast path, HEAD through botocore - went through): so the work is surely
    shared, and the first key listed goes to a worker (workers win ties)."""

    def ready() -> None:
        wait_for(lambda: dest_checks(proxy, dest) >= 1 + workers, timeout=60)
        time.sleep(0.5)

    # the listing's pages ask for 100, then 1,000 keys; the checks for one
    proxy.add_rule(Rule(None, method="GET", query="max-keys=10", action=ready, times=1))


def uploads_in_progress(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def test_three_processes_share_the_copying_with_metadata_and_multipart(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    objects = numbered_objects(120, size=2000)
    put_parallel(s3, buckets.source, objects)
    s3.put_object(
        Bucket=buckets.source,
        Key="data/meta.txt",
        Body=b"hello",
        ContentType="text/plain",
        CacheControl="max-age=60",
        Metadata={"owner": "team-a"},
    )
    big = os.urandom(11 * MiB)
    s3.put_object(Bucket=buckets.source, Key="data/big.bin", Body=big)
    hold_listing_until_workers_ready(proxy, buckets.dest, 2)
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--processes", "3", "--concurrency", "8", "--cleanup", "--debug", *MULTIPART]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    # Both workers and the main process copied a share.
    pattern = r"copied (\d+) objects in the main process and (\d+) in worker pid \d+ \([\d.]+ s "
    pattern += r"of CPU\), (\d+) in worker pid \d+ \([\d.]+ s of CPU\)"
    (split,) = re.findall(pattern, done.stderr)
    assert sum(map(int, split)) == 122 and all(int(n) > 0 for n in split), split
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 122
    head = s3.head_object(Bucket=buckets.dest, Key="data/meta.txt")
    assert head["ContentType"] == "text/plain"
    assert head["CacheControl"] == "max-age=60"
    assert head["Metadata"] == {"owner": "team-a"}
    big_head = s3.head_object(Bucket=buckets.dest, Key="data/big.bin")
    assert big_head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB: a multipart upload
    assert uploads_in_progress(s3, buckets.dest) == []
    (archived,) = (tmp_path / "checkpoints" / "archive").iterdir()
    state = read_valid(archived)
    assert state.processed_files == 122 and all(state.files.values())
    assert "multipart_uploads" not in state.extra  # the worker's journal notes came back
    assert "completed: copied 122 files" in done.stderr
    assert not list((tmp_path / ".tmp").iterdir())


def test_while_workers_start_the_main_process_takes_only_its_share(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(6, size=1000))

    def worker_ready() -> None:  # no upload finishes before the worker can take work
        wait_for(lambda: dest_checks(proxy, buckets.dest) >= 2, timeout=60)
        time.sleep(0.5)

    proxy.add_rule(Rule(None, method="PUT", path=f"^/{buckets.dest}/", action=worker_ready))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--processes", "2", "--concurrency", "6", "--debug"]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    # Six objects listed at once, the worker not started yet: this process takes its share
    # (6 / 2) and the rest waits for the worker instead of piling up here.
    assert "copied 3 objects in the main process and 3 in worker pid" in done.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 6


def test_object_errors_from_workers_are_recorded(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(60, size=100))
    denied = {"data/d1/obj-00001.bin", "data/d3/obj-00010.bin", "data/d5/obj-00040.bin"}
    for key in denied:
        proxy.add_rule(Rule("access_denied", method="GET", path=f"/{key}$"))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    hold_listing_until_workers_ready(proxy, buckets.dest, 1)
    args += ["--processes", "2", "--concurrency", "6"]
    done = run_cli(args)
    assert done.returncode == 1, done.stderr
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "data"))
    assert set(state.errors) == denied
    assert all(state.errors[key].startswith("AccessDenied: ") for key in denied)
    assert {key for key, ok in state.files.items() if not ok} == denied
    assert state.processed_files == 57
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    proxy.clear_faults()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 60


def test_sigkill_of_the_main_process_leaves_no_worker_and_no_upload(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(80, size=100))
    big = os.urandom(11 * MiB)
    s3.put_object(Bucket=buckets.source, Key="data/big.bin", Body=big)
    # Parts crawl: the kill surely lands in the middle of the multipart upload.
    proxy.add_rule(Rule("latency", method="PUT", query="uploadId", delay=2))
    # data/big.bin is listed first, so a worker copies it: its journal notes cross over.
    hold_listing_until_workers_ready(proxy, buckets.dest, 1)
    proxy.latency = 0.02
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--quiet", "--processes", "2", "--concurrency", "4", *MULTIPART]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    process = start_cli(args)
    try:
        # The worker's durable note of the upload id reached the main process's checkpoint.
        wait_for(
            lambda: (
                path.exists()
                and bool(read_valid(path).extra.get("multipart_uploads", {}).get("data/big.bin"))
            ),
            timeout=60,
        )
        workers = worker_pids(process.pid)
        assert len(workers) == 1
    finally:
        kill(process, signal.SIGKILL)
        process.communicate(timeout=30)
    # Their stdin closed with the main process: the workers stop (and abort their upload).
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=20)
    state = read_valid(path)
    assert state.processed_files < 81
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    proxy.clear_faults()
    # The killed run's worker aborted its multipart upload on the way out.
    assert uploads_in_progress(s3, buckets.dest) == []
    resumed = start_cli(args)
    workers = set()
    while resumed.poll() is None:  # --quiet: stderr cannot fill its pipe meanwhile
        workers |= worker_pids(resumed.pid)
        time.sleep(0.05)
    _, stderr = resumed.communicate(timeout=120)
    assert len(workers) == 1
    assert resumed.returncode == 0, stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 81  # big.bin too
    assert uploads_in_progress(s3, buckets.dest) == []
    assert not any(_alive(pid) for pid in workers)


def test_a_worker_killed_mid_run_stops_the_run_with_exit_3_and_a_valid_checkpoint(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(120, size=64))
    proxy.latency = 0.05
    hold_listing_until_workers_ready(proxy, buckets.dest, 1)
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--quiet", "--processes", "2", "--concurrency", "6"]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    process = start_cli(args)
    try:
        wait_for(lambda: path.exists() and read_valid(path).processed_files >= 10, timeout=60)
        (worker,) = worker_pids(process.pid)
        os.kill(worker, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        kill(process)
    assert process.returncode == 3, stderr
    line = one_error_line(stderr)
    assert f"worker process (pid {worker}) exited unexpectedly" in line
    assert "run again to resume" in line
    state = read_valid(path)
    assert 10 <= state.processed_files < 120
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    resume_to_completion(proxy, s3, buckets.source, buckets.dest, args, 120)


def test_direct_copy_in_two_processes_is_server_side(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(80, size=300))
    hold_listing_until_workers_ready(proxy, buckets.dest, 1)
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--direct", "--processes", "2", "--concurrency", "6", "--debug"]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 80
    (split,) = re.findall(r"copied (\d+) objects in the main process and (\d+) in", done.stderr)
    assert all(int(n) > 0 for n in split) and sum(map(int, split)) == 80, split
    gets = [r for r in proxy.seen(method="GET", path=f"^/{buckets.source}/.") if not r.query]
    assert gets == []  # no object went through either process
    assert not (tmp_path / buckets.source).exists()  # nothing was staged


def test_ctrl_c_to_the_process_group_exits_130_with_a_valid_checkpoint(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(150, size=64))
    proxy.latency = 0.1
    hold_listing_until_workers_ready(proxy, buckets.dest, 2)
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--processes", "3", "--concurrency", "8"]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    # Its own process group, as a shell gives a command: Ctrl-C reaches every process of it.
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: path.exists() and read_valid(path).processed_files >= 10, timeout=60)
        workers = worker_pids(process.pid)
    except BaseException:
        kill(process)
        raise
    assert len(workers) == 2
    os.killpg(process.pid, signal.SIGINT)  # the workers ignore it: the main process decides
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "interrupted; the checkpoint is saved" in stderr
    assert "Traceback" not in stderr
    assert not any(_alive(pid) for pid in workers)
    state = read_valid(path)
    assert 10 <= state.processed_files < 150
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    resume_to_completion(proxy, s3, buckets.source, buckets.dest, args, 150)


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.done: list[str] = []
        self.some_done = asyncio.Event()

    def on_done(self, key: str, size: int) -> None:
        self.done.append(key)
        if len(self.done) >= 10:
            self.some_done.set()


async def test_embedded_run_with_processes_completes_and_cancels_cleanly(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    objects = numbered_objects(120, size=64)
    put_parallel(s3, buckets.source, objects)
    proxy.latency = 0.05
    hold_listing_until_workers_ready(proxy, buckets.dest, 1)
    config = BackupConfig(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        concurrency=4,
        processes=2,
    )
    recorder = Recorder()
    task = asyncio.create_task(run_backup(config, observer=recorder))
    await asyncio.wait_for(recorder.some_done.wait(), 60)
    workers = worker_pids(os.getpid())
    assert len(workers) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(_alive(pid) for pid in workers)
    state = orjson.loads(checkpoint_file(tmp_path, buckets.source, "data").read_bytes())
    done = {key for key, ok in state["files"].items() if ok}
    assert done == set(recorder.done)  # every reported completion reached the file, no more
    assert 10 <= len(done) < 120
    proxy.latency = 0.0
    report = await run_backup(config)
    assert report.status == "completed" and report.exit_code == 0
    assert report.skipped_files == len(done)
    assert report.copied_files == 120 - len(done)
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 120
    assert worker_pids(os.getpid()) == set()


async def test_cancelling_aborts_a_workers_multipart_upload_and_clears_its_record(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="data/big.bin", Body=os.urandom(11 * MiB))
    proxy.add_rule(Rule("latency", method="PUT", query="uploadId", delay=2))  # parts crawl
    hold_listing_until_workers_ready(proxy, buckets.dest, 1)  # the one object goes to a worker
    config = BackupConfig(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        processes=2,
        multipart_threshold=5 * MiB,
        part_size=5 * MiB,
    )
    path = checkpoint_file(tmp_path, buckets.source, "data")
    task = asyncio.create_task(run_backup(config))

    def upload_recorded() -> bool:
        recorded = path.exists() and read_valid(path).extra.get("multipart_uploads", {})
        return bool(recorded and recorded.get("data/big.bin"))

    while not upload_recorded():  # the worker's durable note reached the checkpoint
        assert not task.done()
        await asyncio.sleep(0.05)
    workers = worker_pids(os.getpid())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(workers) == 1 and not any(_alive(pid) for pid in workers)
    # The worker aborted its upload, and its note saying so reached the final flush.
    assert uploads_in_progress(s3, buckets.dest) == []
    assert "multipart_uploads" not in read_valid(path).extra
    aborts = [r for r in proxy.seen(method="DELETE") if "uploadId" in r.query]
    assert len(aborts) == 1


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_process_count_is_one_line_and_exit_2(value: str, tmp_path: Path) -> None:
    args = ["data", *cli_args("http://127.0.0.1:9", tmp_path, "src", "dst")]
    done = run_cli([*args, "--processes", value])
    assert done.returncode == 2
    assert "--processes" in one_error_line(done.stderr)
    assert not (tmp_path / "checkpoints").exists()


def test_workers_start_no_upload_of_their_own_to_check_the_destination(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The main process checks that the destination takes the run's storage class (or SSE-KMS
    key, or with --dest-write-only that it may write) by starting and aborting an upload of
    PREFIX/.asyncbackup-write-check; every worker did the same at its start, so a worker the
    run stopped between the two (a short job done before it was up) left that upload."""
    put_parallel(s3, buckets.source, numbered_objects(30, size=300))
    hold_listing_until_workers_ready(proxy, buckets.dest, 2)
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--processes", "3", "--concurrency", "6", "--storage-class", "STANDARD_IA"]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 30
    probe = f"^/{buckets.dest}/data/.asyncbackup-write-check$"
    started = [r for r in proxy.seen(method="POST", path=probe) if "uploads" in r.query]
    assert len(started) == 1, started  # the main process's check alone
    assert uploads_in_progress(s3, buckets.dest) == []
