"""Resources fail cleanly: one clear line, a non-zero exit, a valid checkpoint, nothing marked
done that is not at the destination.

The full disk is a real 2 MiB tmpfs when this process may mount one (root, as in CI
containers); elsewhere the CLI runs with RLIMIT_FSIZE as the size limit (EFBIG instead of
ENOSPC: a file too large for staging, which stops the run the same way).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    CLI,
    assert_done_means_copied,
    assert_identical,
    checkpoint_file,
    mount_tmpfs,
    one_error_line,
    put_parallel,
    read_valid,
    remount,
    run_cli,
    start_cli,
    unmount,
    wait_for,
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """A 2 MiB file system (True), or a plain directory to use with a file size limit."""
    where = tmp_path / "small"
    mounted = mount_tmpfs(where, "size=2m")
    try:
        yield where, mounted
    finally:
        if mounted:
            unmount(where)


def limited_cli(args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG rather than a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_file_size,
        env=dict(os.environ),
    )


def test_full_staging_disk_is_one_line_exit_3_and_resumable(
    small_disk: tuple[Path, bool], s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    base, mounted = small_disk
    objects = {f"f/{i:02d}": os.urandom(300_000) for i in range(12)}  # 3.6 MB > 2 MiB
    put_parallel(s3, buckets.source, objects)
    checkpoints = tmp_path / "checkpoints"  # elsewhere: the state must survive the full disk
    args = ["f", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    args += ["--quiet", "--checkpoint-dir", str(checkpoints), "--concurrency", "2"]
    failed = run_cli(args) if mounted else limited_cli(args, 250_000)
    assert failed.returncode == 3, failed.stderr
    line = one_error_line(failed.stderr)
    full = "no space left in" if mounted else "a file too large for"
    assert f"{full} staging directory" in line and "--base-local-path" in line
    path = checkpoints / checkpoint_file(base, buckets.source, "f").name
    state = read_valid(path)
    assert not all(state.files.get(key) for key in objects)
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    # Recovery, as the message says: free space (or use --cleanup), run again.
    shutil.rmtree(base / buckets.source)
    resumed = run_cli([*args, "--cleanup"])
    assert resumed.returncode == 0, resumed.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 12


def test_full_disk_under_the_checkpoint_too_keeps_the_last_good_checkpoint(
    small_disk: tuple[Path, bool], s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    base, mounted = small_disk
    if not mounted:  # a file size limit cannot fill the disk under the checkpoint
        base.mkdir(exist_ok=True)
    objects = {f"f/{i:02d}": os.urandom(300_000) for i in range(12)}
    put_parallel(s3, buckets.source, objects)
    args = ["f", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    args += ["--quiet", "--concurrency", "2"]
    failed = run_cli(args) if mounted else limited_cli(args, 250_000)
    assert failed.returncode in (2, 3), failed.stderr
    line = one_error_line(failed.stderr)
    assert "no space left" in line or "too large" in line or "cannot write checkpoint" in line
    state = read_valid(checkpoint_file(base, buckets.source, "f"))
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)


def test_unwritable_checkpoint_directory(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="w/one", Body=b"1")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = ["w", *cli_args(s3_server.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    done = run_cli([*args, "--checkpoint-dir", str(blocker / "checkpoints")])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "cannot use checkpoint directory" in line and "--checkpoint-dir" in line
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")


def test_read_only_checkpoint_directory_leaves_the_checkpoint_as_it_was(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="w/one", Body=b"1")
    s3.put_object(Bucket=buckets.source, Key="w/two", Body=b"2")
    checkpoints = tmp_path / "ro"
    mounted = mount_tmpfs(checkpoints, "size=1m")
    args = ["w", *cli_args(s3_server.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    args += ["--checkpoint-dir", str(checkpoints), "--quiet"]
    try:
        # A checkpoint with one file left to do, as an interrupted run leaves it.
        first = run_cli([*args, "--max-attempts", "1"])
        assert first.returncode == 0, first.stderr
        (archived,) = (checkpoints / "archive").iterdir()
        path = checkpoints / archived.name.rsplit(".", 1)[0]
        state = read_valid(archived)
        state.files["w/two"] = False
        state.processed_files = 1
        path.write_bytes(state.to_json())
        before = path.read_bytes()
        if mounted:
            remount(checkpoints, "ro")
        else:  # pragma: no cover - without root: permissions are enforced
            checkpoints.chmod(0o500)
        done = run_cli(args)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert str(checkpoints) in line and "--checkpoint-dir" in line
        assert path.read_bytes() == before
    finally:
        if mounted:
            unmount(checkpoints)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_missing_bucket_wrong_credentials_unreachable_endpoint(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Each fails at start-up with one line and exit 2; the checkpoint of the job is intact."""
    put_parallel(s3, buckets.source, {f"r/{i}": b"x" * i for i in range(1, 6)})
    proxy.add_rule(Rule("access_denied", method="GET", path=r"/r/3$"))
    args = ["r", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    first = run_cli(args)
    assert first.returncode == 1, first.stderr  # leaves a checkpoint: r/3 failed
    path = checkpoint_file(tmp_path, buckets.source, "r")
    before = path.read_bytes()

    cases: dict[str, tuple[list[str], str]] = {}
    unreachable = f"http://127.0.0.1:{closed_port()}"
    cases["unreachable"] = (
        ["r", *cli_args(unreachable, tmp_path, buckets.source, buckets.dest, "--quiet")],
        "cannot reach the source endpoint",
    )
    cases["missing source"] = (
        ["r", *cli_args(proxy.endpoint, tmp_path, "no-such-bucket-x", buckets.dest, "--quiet")],
        "source bucket 'no-such-bucket-x' does not exist",
    )
    cases["missing dest"] = (
        ["r", *cli_args(proxy.endpoint, tmp_path, buckets.source, "no-such-bucket-y", "--quiet")],
        "destination bucket 'no-such-bucket-y' does not exist",
    )
    for name, (case_args, expected) in cases.items():
        done = run_cli(case_args)
        assert done.returncode == 2, (name, done.stderr)
        assert expected in one_error_line(done.stderr), (name, done.stderr)
        assert path.read_bytes() == before, name

    bad_keys = proxy.add_rule(Rule("invalid_access_key"))
    done = run_cli(args)
    assert bad_keys.hits >= 1
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "refused (InvalidAccessKeyId)" in line and "--source-profile" in line
    assert path.read_bytes() == before
    assert read_valid(path).errors.keys() == {"r/3"}


def test_credentials_revoked_mid_run_stop_the_run_cleanly(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, {f"v/{i:03d}": os.urandom(50) for i in range(200)})
    proxy.latency = 0.05
    args = ["v", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    path = checkpoint_file(tmp_path, buckets.source, "v")
    process = start_cli(args)
    wait_for(lambda: path.exists() and read_valid(path).processed_files >= 10, timeout=60)
    proxy.add_rule(Rule("invalid_access_key"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    line = one_error_line(stderr)
    assert "InvalidAccessKeyId" in line and "run again to resume" in line
    state = read_valid(path)
    assert 10 <= state.processed_files < 200
    assert_done_means_copied(s3, state, buckets.source, buckets.dest)
    # A fatal error is not blamed on the object that met it.
    assert not state.errors


@pytest.mark.parametrize("side", ["source", "destination"])
@pytest.mark.parametrize("extra", [(), ("--no-fast-path",)], ids=["fast", "botocore"])
def test_credentials_refused_mid_run_name_their_side(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    side: str,
    extra: tuple[str, ...],
) -> None:
    """A backup between two accounts (two profiles), one side's temporary credentials
    expiring mid-run: the line said "check the credentials and buckets", so which of the two
    to renew was a guess. It names the side, its flag and its bucket, not the other's."""
    put_parallel(s3, buckets.source, {f"e/{i:03d}": os.urandom(50) for i in range(200)})
    proxy.latency = 0.05
    stderr = expire_mid_run(proxy, buckets, tmp_path, side, list(extra), done=10)
    assert_names_side(one_error_line(stderr), side, buckets)
    path = checkpoint_file(tmp_path, buckets.source, "e")
    assert_done_means_copied(s3, read_valid(path), buckets.source, buckets.dest)


def expire_mid_run(
    proxy: S3Proxy,
    buckets: Buckets,
    tmp_path: Path,
    side: str,
    extra: list[str],
    *,
    done: int,
    timeout: float = 60,
) -> str:
    """A quiet run of ``e`` whose ``side``'s token expires once ``done`` objects are done:
    its stderr, once it stopped with exit 3."""
    args = ["e", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    path = checkpoint_file(tmp_path, buckets.source, "e")
    process = start_cli([*args, *extra])
    wait_for(lambda: path.exists() and read_valid(path).processed_files >= done, timeout=60)
    bucket = buckets.source if side == "source" else buckets.dest
    proxy.add_rule(Rule("expired_token", path=f"^/{bucket}/"))
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 3, stderr
    return str(stderr)


def assert_names_side(line: str, side: str, buckets: Buckets) -> None:
    """``line`` stops the run on an expired token of ``side``, and names that side's flag
    and bucket, not the other's."""
    assert "ExpiredToken" in line and "run again to resume" in line, line
    bucket, other = (buckets.source, buckets.dest)[:: 1 if side == "source" else -1]
    flag = "--source-profile" if side == "source" else "--dest-profile"
    assert f"check the {side}'s credentials ({flag}) and bucket {bucket!r}" in line, line
    assert repr(other) not in line, line


def test_credentials_refused_mid_run_of_a_direct_copy_name_the_one_set(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """``--direct`` copies with one set of credentials (``--dest-profile``'s), which read the
    source and write the destination: the line says so, and names both buckets."""
    put_parallel(s3, buckets.source, {f"d/{i:03d}": os.urandom(50) for i in range(200)})
    proxy.latency = 0.05
    args = ["d", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    path = checkpoint_file(tmp_path, buckets.source, "d")
    process = start_cli([*args, "--direct"])
    wait_for(lambda: path.exists() and read_valid(path).processed_files >= 10, timeout=60)
    proxy.add_rule(Rule("expired_token", path=f"^/{buckets.dest}/"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    line = one_error_line(stderr)
    assert "ExpiredToken" in line and "check the credentials of --dest-profile" in line, line
    assert repr(buckets.source) in line and repr(buckets.dest) in line, line
    assert_done_means_copied(s3, read_valid(path), buckets.source, buckets.dest)


MIB = 1024 * 1024


@pytest.mark.parametrize("side", ["source", "destination"])
@pytest.mark.parametrize(
    "extra",
    [
        ("--multipart-threshold", "5MiB", "--part-size", "5MiB", "--concurrency", "4"),
        ("--processes", "2"),
        ("--concurrency", "4"),
    ],
    ids=["parts", "processes", "stream"],
)
def test_credentials_refused_mid_run_name_their_side_in_parts_and_processes(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    side: str,
    extra: tuple[str, ...],
) -> None:
    """As above, for objects downloaded while their parts go up (the destination's upload
    runs beside the source's download) and for copies made in worker processes (their
    errors sent to the main process), and for objects of more than 1 MiB streamed in one PUT
    as they are downloaded."""
    size = {"--part-size": 11 * MIB, "--processes": 50}.get(extra[0], 2 * MIB + 1)
    count = 200 if "--processes" in extra else 40
    put_parallel(s3, buckets.source, {f"e/{i:03d}": os.urandom(size) for i in range(count)})
    proxy.latency = 0.05 if "--processes" in extra else 0.3
    stderr = expire_mid_run(proxy, buckets, tmp_path, side, list(extra), done=2, timeout=120)
    # the uploads the stop left behind may not be aborted with expired credentials: said
    line = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr, stderr
    assert_names_side(line, side, buckets)


def test_credentials_refused_on_the_check_of_a_kept_key_name_the_destination(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A key ending in "/" with data is checked kept by a listing at the destination after
    its copy (``keptkeys.py``): that listing refused with the destination's credentials
    expired said "check the credentials and buckets", as if it could be the source's."""
    put_parallel(s3, buckets.source, {"k/dir/": b"data"})
    quoted = "dir"  # only the check lists under the key itself (prefix=k/dir/)
    proxy.add_rule(Rule("expired_token", path=f"^/{buckets.dest}/?$", query=quoted))
    args = ["k", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    done = run_cli(args)
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert "ExpiredToken" in line, line
    assert (
        f"check the destination's credentials (--dest-profile) and bucket {buckets.dest!r}" in line
    ), line
