"""Crash safety: SIGKILL at random moments loses nothing, and no multipart upload leaks."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

from asyncbackup import run_backup
from asyncbackup.checkpoint import CheckpointState
from tests.conftest import Buckets
from tests.helpers import cli_args, numbered_objects, put_multipart
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    assert_done_means_copied,
    assert_identical,
    checkpoint_file,
    kill,
    put_parallel,
    read_valid,
    run_cli,
    start_cli,
    wait_for,
)

MiB = 1024 * 1024
MULTIPART = ("--multipart-threshold", "5MiB", "--part-size", "5MiB")


def uploads_in_progress(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def test_sigkill_at_20_random_moments_then_resume(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(700, size=64))
    proxy.latency = 0.05  # slow enough that 20 short runs do not finish the job
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--quiet", "--concurrency", "4"]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    rng = random.Random(20)
    done_counts: list[int] = []
    for attempt in range(20):
        uploads_before = len(proxy.seen(method="PUT"))
        process = start_cli(args)
        if attempt % 4 == 3:  # a moment of the start-up: checks, checkpoint load, listing
            delay = rng.uniform(0.0, 1.0)
        else:  # a moment of the copying: the first upload of this run has gone out
            wait_for(lambda n=uploads_before: len(proxy.seen(method="PUT")) > n, timeout=60)
            delay = rng.uniform(0.0, 0.8)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=delay)
        killed = process.poll() is None
        kill(process)
        process.communicate(timeout=30)
        assert killed, "the run ended by itself before the kill: give it more work"
        if not path.exists():  # killed before the first checkpoint write
            done_counts.append(0)
            continue
        state = read_valid(path)  # valid JSON in the schema, at every kill
        assert_done_means_copied(s3, state, buckets.source, buckets.dest)
        done_counts.append(state.processed_files)
    # Progress is never lost between kills, and the kills hit runs that were copying.
    print("processed files at each kill:", done_counts)
    assert done_counts == sorted(done_counts), done_counts
    assert len(set(done_counts)) >= 5, done_counts
    assert done_counts[-1] < 700, done_counts
    proxy.clear_faults()
    final = run_cli(args)
    assert final.returncode == 0, final.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 700
    assert not list((tmp_path / ".tmp").iterdir())  # no staging leftovers of the crashes


def wait_for_multipart_note(path: Path, key: str, *, pending: bool) -> CheckpointState:
    found: list[CheckpointState] = []

    def noted() -> bool:
        if not path.exists():
            return False
        state = read_valid(path)
        value = state.extra.get("multipart_uploads", {}).get(key)
        if value is None or (value == "") != pending:
            return False
        found.append(state)
        return True

    wait_for(noted, timeout=60)
    return found[-1]


def test_sigkill_during_multipart_upload_then_resume_leaks_nothing(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    body = os.urandom(11 * MiB)
    s3.put_object(Bucket=buckets.source, Key="m/big.bin", Body=body)
    # Parts crawl: the run is surely in the middle of the upload when it is killed.
    proxy.add_rule(Rule("latency", method="PUT", query="uploadId", delay=30))
    args = ["m", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += MULTIPART
    process = start_cli(args)
    path = checkpoint_file(tmp_path, buckets.source, "m")
    try:
        state = wait_for_multipart_note(path, "m/big.bin", pending=False)
        wait_for(lambda: bool(proxy.seen(method="PUT", path="/m/big.bin$")))
    finally:
        kill(process)
        process.communicate(timeout=30)
    leaked = uploads_in_progress(s3, buckets.dest)
    assert [u["UploadId"] for u in leaked] == [state.extra["multipart_uploads"]["m/big.bin"]]
    proxy.clear_faults()
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert uploads_in_progress(s3, buckets.dest) == []
    assert s3.get_object(Bucket=buckets.dest, Key="m/big.bin")["Body"].read() == body
    aborted = [r for r in proxy.seen(method="DELETE", path="/m/big.bin$") if "uploadId" in r.query]
    assert aborted, "the leftover upload was not aborted"


def test_sigkill_before_the_upload_id_is_known_leaks_nothing(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="m/big.bin", Body=os.urandom(6 * MiB))
    # The server creates the upload, but its answer never reaches the client before the kill.
    proxy.add_rule(Rule(None, method="POST", query="uploads", delay_after_forward=30))
    args = ["m", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += MULTIPART
    process = start_cli(args)
    path = checkpoint_file(tmp_path, buckets.source, "m")
    try:
        wait_for_multipart_note(path, "m/big.bin", pending=True)
        wait_for(lambda: len(uploads_in_progress(s3, buckets.dest)) == 1)
    finally:
        kill(process, signal.SIGKILL)
        process.communicate(timeout=30)
    proxy.clear_faults()
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert uploads_in_progress(s3, buckets.dest) == []
    assert "multipart_uploads" not in read_valid(checkpoint_file_archived(tmp_path)).extra


def checkpoint_file_archived(base: Path) -> Path:
    (archived,) = (base / "checkpoints" / "archive").iterdir()
    return archived


async def test_lost_create_answer_leaves_no_stray_upload(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    body = os.urandom(6 * MiB)
    s3.put_object(Bucket=buckets.source, Key="m/big.bin", Body=body)
    # The first CreateMultipartUpload is done by the server, then the connection drops.
    proxy.add_rule(Rule("reset_after", method="POST", query="uploads", times=1))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="m",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        multipart_threshold=5 * MiB,
        part_size=5 * MiB,
    )
    assert report.exit_code == 0, report.errors
    assert len([r for r in proxy.seen(method="POST") if "uploads" in r.query]) == 2
    assert uploads_in_progress(s3, buckets.dest) == []
    assert s3.get_object(Bucket=buckets.dest, Key="m/big.bin")["Body"].read() == body


def test_sigkill_during_a_direct_multipart_copy_then_resume_leaks_nothing(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    # A multipart source: --direct rebuilds it server-side with UploadPartCopy.
    put_multipart(s3, buckets.source, "m/big.bin", [5 * MiB, 1 * MiB])
    # The part copies crawl: the run is surely in the middle of the copy when it is killed.
    proxy.add_rule(Rule("latency", method="PUT", query="uploadId", delay=30))
    args = ["m", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += ["--direct"]
    process = start_cli(args)
    try:
        wait_for(lambda: bool(proxy.seen(method="PUT", path="/m/big.bin$")), timeout=60)
    finally:
        kill(process)
        process.communicate(timeout=30)
    assert len(uploads_in_progress(s3, buckets.dest)) == 1
    proxy.clear_faults()
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    # The upload the killed run had begun was aborted, not left (with its parts) for ever.
    assert uploads_in_progress(s3, buckets.dest) == []
    assert_identical(s3, buckets.source, buckets.dest)
    assert "multipart_uploads" not in read_valid(checkpoint_file_archived(tmp_path)).extra


async def test_lost_create_answer_of_a_direct_copy_leaves_no_stray_upload(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_multipart(s3, buckets.source, "m/big.bin", [5 * MiB, 1 * MiB])
    # The first CreateMultipartUpload is done by the server, then the connection drops.
    proxy.add_rule(Rule("reset_after", method="POST", query="uploads", times=1))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="m",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        direct=True,
    )
    assert report.exit_code == 0, report.errors
    assert len([r for r in proxy.seen(method="POST") if "uploads" in r.query]) == 2
    assert uploads_in_progress(s3, buckets.dest) == []
    assert_identical(s3, buckets.source, buckets.dest)
