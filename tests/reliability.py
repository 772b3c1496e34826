"""Helpers of the reliability tests: fill buckets fast, compare by listing, run the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asyncbackup.checkpoint import CheckpointState, read_checkpoint

CLI = [sys.executable, "-c", "from asyncbackup.cli import console_s3; console_s3()"]


def put_parallel(client: Any, bucket: str, objects: Mapping[str, bytes], **extra: Any) -> None:
    """PUT every object with a few threads (a boto3 client is thread-safe)."""
    with ThreadPoolExecutor(8) as pool:
        for future in [
            pool.submit(client.put_object, Bucket=bucket, Key=key, Body=body, **extra)
            for key, body in objects.items()
        ]:
            future.result()


def listing(client: Any, bucket: str, prefix: str = "") -> dict[str, tuple[int, str]]:
    """key -> (size, ETag); a single-part ETag is the MD5 of the body the server stored."""
    out: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = (obj["Size"], obj["ETag"])
    return out


def assert_identical(client: Any, source: str, dest: str, prefix: str = "") -> int:
    """Same keys, sizes and content MD5s (single-part objects) in both buckets."""
    src, dst = listing(client, source, prefix), listing(client, dest, prefix)
    assert src == dst, {
        "missing": sorted(set(src) - set(dst))[:10],
        "extra": sorted(set(dst) - set(src))[:10],
        "different": sorted(k for k in src if k in dst and src[k] != dst[k])[:10],
    }
    return len(src)


def assert_done_means_copied(client: Any, state: CheckpointState, source: str, dest: str) -> None:
    """Every key the checkpoint marks done is at the destination, byte for byte."""
    done = [key for key, ok in state.files.items() if ok]
    if not done:
        return
    src, dst = listing(client, source), listing(client, dest)
    wrong = [key for key in done if dst.get(key) != src.get(key)]
    assert not wrong, f"marked done but not at the destination: {wrong[:10]}"


def checkpoint_file(base: Path, bucket: str, source_path: str) -> Path:
    name = f"{bucket}_{source_path.strip('/')}".replace("/", "_")
    return base / "checkpoints" / f"{name}.checkpoint"


def read_valid(path: Path) -> CheckpointState:
    """The checkpoint at ``path``, which must be valid (raises otherwise)."""
    return read_checkpoint(path)


def start_cli(args: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env if env is not None else os.environ),
    )


def run_cli(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env if env is not None else os.environ),
    )


def wait_for(predicate: Any, timeout: float = 30.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(every)


def kill(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)


def one_error_line(stderr: str) -> str:
    """The single line of a clean failure: no traceback, nothing else."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def resume_to_completion(
    proxy: Any, client: Any, source: str, dest: str, args: Sequence[str], count: int
) -> None:
    """The interrupted run's sequel: with the proxy's latency off, the same command
    completes (exit 0) and the destination holds exactly the ``count`` source objects."""
    proxy.latency = 0.0
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert assert_identical(client, source, dest) == count


def mount_tmpfs(where: Path, *options: str) -> bool:
    """Mount a tmpfs with ``options`` at ``where`` (made if missing); False where this
    process may not mount (not root)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join(options)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=False)
    return done.returncode == 0


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def remount(where: Path, *options: str) -> None:
    """Change the options of the tmpfs at ``where`` (its size, inodes, ``ro``)."""
    subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(where)], check=True)


@contextlib.contextmanager
def tmpfs(where: Path, *options: str) -> Iterator[Path]:
    """A tmpfs at ``where`` for the block, for a test that needs a real full or read-only
    file system (root, as CI has)."""
    assert mount_tmpfs(where, *options), "this test needs to mount a tmpfs (root)"
    try:
        yield where
    finally:
        unmount(where)
