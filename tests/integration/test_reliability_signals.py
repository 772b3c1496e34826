"""Graceful stop on SIGINT/SIGTERM, a second SIGINT stops at once; one run per checkpoint."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Buckets
from tests.helpers import cli_args, numbered_objects
from tests.proxy import S3Proxy
from tests.reliability import (
    assert_done_means_copied,
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


def object_gets(
    proxy: S3Proxy, source: str, *, after: float = 0.0, before: float = float("inf")
) -> set[str]:
    """Keys whose download was requested in the time window."""
    return {
        r.path
        for r in proxy.seen(method="GET", path=f"^/{source}/.")
        if after <= r.started < before and "list-type" not in r.query
    }


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_taking_work_flushes_and_exits_130(
    sig: signal.Signals, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(300, size=64))
    proxy.latency = 0.15
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--concurrency", "8"]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    process = start_cli(args)
    try:
        wait_for(lambda: path.exists() and read_valid(path).processed_files >= 10, timeout=60)
    except BaseException:
        kill(process)
        raise
    signalled = time.monotonic()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    took = time.monotonic() - signalled
    assert process.returncode == 130, stderr
    assert took < 5.0, took  # in-flight objects finish (a few requests), nothing more
    assert "interrupted; the checkpoint is saved" in stderr
    assert "Traceback" not in stderr
    # No new object was started after the signal: every download after it was one already
    # in flight (a retry or the rest of it), never a new key.
    started_before = object_gets(proxy, buckets.source, before=signalled)
    assert object_gets(proxy, buckets.source, after=signalled + 0.05) <= started_before
    state = read_valid(path)
    assert 10 <= state.processed_files < 300
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    resume_to_completion(proxy, s3, buckets.source, buckets.dest, args, 300)


def test_in_flight_objects_are_abandoned_after_the_grace_period(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(40, size=64))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    process = start_cli(args)
    wait_for(lambda: path.exists() and object_gets(proxy, buckets.source), timeout=60)
    proxy.latency = 60.0  # every request from now on hangs
    time.sleep(0.3)
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    took = time.monotonic() - signalled
    assert process.returncode == 130, stderr
    assert took < 9.0, took  # the grace period is 5 s
    assert "Traceback" not in stderr
    state = read_valid(path)
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)


def test_second_sigint_stops_at_once_with_a_valid_checkpoint(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(100, size=64))
    proxy.latency = 0.1
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    process = start_cli(args)
    wait_for(lambda: path.exists() and read_valid(path).processed_files >= 5, timeout=60)
    proxy.latency = 60.0
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    took = time.monotonic() - signalled
    assert process.returncode == 130, stderr
    assert took < 2.5, took
    assert "Traceback" not in stderr
    state = read_valid(path)
    assert state.processed_files >= 5
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    resume_to_completion(proxy, s3, buckets.source, buckets.dest, args, 100)


def test_one_run_per_checkpoint_and_a_killed_run_does_not_hold_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, numbered_objects(100, size=64))
    proxy.latency = 0.2
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--quiet"]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    first = start_cli(args)
    try:
        wait_for(lambda: path.exists(), timeout=60)
        second = run_cli(args)
        assert first.poll() is None
        before = path.read_bytes()
    finally:
        kill(first)  # SIGKILL: the lock must not outlive the process
        first.communicate(timeout=30)
    assert second.returncode == 2, second.stderr
    line = one_error_line(second.stderr)
    assert str(path) in line and "in use by another run" in line
    assert read_valid(path)  # the refused run did not touch it
    assert before  # and the first run had written it
    resume_to_completion(proxy, s3, buckets.source, buckets.dest, args, 100)


def test_a_run_that_ends_without_a_summary_still_writes_its_report(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """--report holds how this run ended, also when an error or a signal ended it: the
    previous run's "completed" left in place would be read as this run's by a monitor."""
    report = tmp_path / "report.json"
    stale = {"status": "completed", "exit_code": 0}
    report.write_bytes(orjson.dumps(stale))
    put_parallel(s3, buckets.source, numbered_objects(300, size=64))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--report", str(report)]

    # a fatal error before the run: the source bucket does not exist (exit 2)
    missing = [*args, "--source-bucket", "no-such-bucket"]
    done = run_cli(missing)
    assert done.returncode == 2, done.stderr
    failed = orjson.loads(report.read_bytes())
    assert failed["status"] == "failed" and failed["exit_code"] == 2
    assert "no-such-bucket" in failed["error"] and failed["finished_at"]

    # interrupted: the same file says so
    report.write_bytes(orjson.dumps(stale))
    proxy.latency = 0.15
    path = checkpoint_file(tmp_path, buckets.source, "data")
    process = start_cli([*args, "--concurrency", "8"])
    try:
        wait_for(lambda: path.exists() and read_valid(path).processed_files >= 10, timeout=60)
    except BaseException:
        kill(process)
        raise
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    interrupted = orjson.loads(report.read_bytes())
    assert interrupted["status"] == "interrupted" and interrupted["exit_code"] == 130
