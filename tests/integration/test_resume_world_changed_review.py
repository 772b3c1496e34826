"""Review: a resume after the world changed between the stopped run and the next one.

Backups of large buckets are stopped (SIGKILL, Ctrl-C, a crash) and resumed hours or days
later: meanwhile a lifecycle rule aborted the upload left in progress, the source object was
replaced, someone tidied the staging folder, deleted copies at the destination, emptied the
destination bucket, moved the staging folder, added and removed thousands of source objects,
or the clock went back. Every resume ends with the destination identical to the source, or
with one line, a non-zero exit and a checkpoint that loads and marks done only what is at the
destination.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import CheckpointState
from asyncbackup.progress import NullObserver
from tests.conftest import ACCESS_KEYS, Buckets
from tests.faulty_proxy import Finished, run_cli_async
from tests.github_server import FakeRepo, git
from tests.helpers import backup_data, cli_args, list_keys, put_multipart
from tests.integration.github_org import config, running_org
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    CLI,
    checkpoint_file,
    kill,
    one_error_line,
    put_parallel,
    read_valid,
    run_cli,
    start_cli,
    wait_for,
)

MiB = 1024 * 1024
MULTIPART = ("--multipart-threshold", "5MiB", "--part-size", "5MiB")


def _uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def _kill_after_two_parts(proxy: S3Proxy, args: list[str], path: Path, key: str) -> CheckpointState:
    """Run the CLI and SIGKILL it once two parts of ``key`` are at the destination and its
    third crawls: the upload is left in progress, recorded in the checkpoint."""
    proxy.add_rule(Rule("latency", method="PUT", query="partNumber=3", delay=5))
    process = start_cli(args)
    try:
        wait_for(
            lambda: (
                len(
                    [
                        r
                        for r in proxy.seen(method="PUT", path=f"/{key}$")
                        if "partNumber" in r.query and r.status == 200
                    ]
                )
                >= 2
            ),
            timeout=60,
        )
        wait_for(lambda: path.exists() and bool(_recorded_upload(read_valid(path), key)))
    finally:
        kill(process, signal.SIGKILL)
        process.communicate(timeout=30)
    proxy.clear_faults()
    return read_valid(path)


def _same_bytes(s3: Any, buckets: Buckets) -> int:
    """The destination holds exactly the source's keys, each with the source's bytes."""
    keys = list_keys(s3, buckets.source)
    assert list_keys(s3, buckets.dest) == keys
    for key in keys:
        source = s3.get_object(Bucket=buckets.source, Key=key)["Body"].read()
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == source, key
    return len(keys)


def _recorded_upload(state: CheckpointState, key: str) -> str:
    return str(state.extra.get("multipart_uploads", {}).get(key) or "")


@pytest.mark.parametrize("change", ["aborted_and_replaced_same_size", "replaced_other_size"])
def test_an_upload_left_in_progress_then_changed_meanwhile_is_started_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, change: str
) -> None:
    """Killed with two parts of ``m/big`` uploaded. Meanwhile a lifecycle rule
    (AbortIncompleteMultipartUpload) aborts the upload, and/or the source object is replaced.
    The resume aborts what is left (NoSuchUpload counts as gone), copies the object again from
    the start: one version, the source's current one, ETag checked; nothing left in progress."""
    old = os.urandom(11 * MiB)
    s3.put_object(Bucket=buckets.source, Key="m/big", Body=old)
    s3.put_object(Bucket=buckets.source, Key="m/small", Body=b"s" * 100)
    args = ["m", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += [*MULTIPART, "--concurrency", "1"]
    path = checkpoint_file(tmp_path, buckets.source, "m")
    state = _kill_after_two_parts(proxy, args, path, "m/big")
    upload_id = _recorded_upload(state, "m/big")
    assert [u["UploadId"] for u in _uploads(s3, buckets.dest)] == [upload_id]
    new = old
    if change.startswith("aborted"):
        s3.abort_multipart_upload(Bucket=buckets.dest, Key="m/big", UploadId=upload_id)
    if "replaced" in change:
        size = 11 * MiB if change.endswith("same_size") else 13 * MiB + 7
        new = os.urandom(size)
        s3.put_object(Bucket=buckets.source, Key="m/big", Body=new)
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert _same_bytes(s3, buckets) == 2
    assert s3.get_object(Bucket=buckets.dest, Key="m/big")["Body"].read() == new
    assert _uploads(s3, buckets.dest) == []


def _abort_every_upload(s3: Any, bucket: str) -> None:
    for upload in _uploads(s3, bucket):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


@pytest.mark.parametrize(
    "step", ["part", "complete", "direct_part"], ids=["part", "complete", "direct-part"]
)
def test_an_upload_aborted_by_a_lifecycle_rule_during_the_run_is_started_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, step: str
) -> None:
    """A lifecycle rule aborts the upload while the run is sending it: the next UploadPart
    (UploadPartCopy with --direct) or the CompleteMultipartUpload is answered NoSuchUpload, as
    S3 answers it (moto answers 500). No request of that upload can succeed any more, but the
    object can, with a new upload: it was recorded as a NoSuchUpload error (exit 1), left for
    the next run, which may be a day later."""
    args = ["m", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += [*MULTIPART, "--concurrency", "1"]
    if step == "direct_part":
        put_multipart(s3, buckets.source, "m/big", [5 * MiB, 5 * MiB, MiB])
        args.append("--direct")
    else:
        s3.put_object(Bucket=buckets.source, Key="m/big", Body=os.urandom(11 * MiB))
    rule = proxy.add_rule(
        Rule(
            "no_such_upload",
            method="POST" if step == "complete" else "PUT",
            path="/m/big$",
            query="uploadId=" if step == "complete" else "partNumber=2",
            times=1,
            action=lambda: _abort_every_upload(s3, buckets.dest),
        )
    )
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert rule.hits == 1
    assert "retrying m/big after NoSuchUpload" in done.stderr
    assert _same_bytes(s3, buckets) == 1
    assert _uploads(s3, buckets.dest) == []


def _staged(base: Path, bucket: str, key: str) -> Path:
    return base / bucket / key


@pytest.mark.parametrize("cleanup", [False, True], ids=["kept", "cleanup"])
def test_staged_files_changed_by_someone_between_runs(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, cleanup: bool
) -> None:
    """Killed with most objects staged and uploaded (the checkpoint flushed rarely, so some
    are still pending in it), its download of ``data/zz`` half-way. Meanwhile someone
    truncates, extends, rewrites and deletes staged files, puts a folder where a staged file
    was and a file where a staged folder was. Staged files are never read back by a resume:
    each pending object is downloaded again, and the destination ends identical."""
    objects = {f"data/k{i}": os.urandom(300 + i) for i in range(6)}
    objects |= {"data/sub/x": os.urandom(500), "data/mid": os.urandom(3 * MiB)}
    objects |= {"data/big": os.urandom(11 * MiB), "data/zz": os.urandom(2 * MiB)}
    for key, body in objects.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    base = tmp_path / "stage"
    extra = [*MULTIPART, "--concurrency", "1", "--checkpoint-interval", "1000000"]
    args = ["data", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest, "--quiet")]
    proxy.add_rule(Rule(None, method="GET", path="/data/zz$", drip=1))

    def partly_staged() -> bool:  # the download of data/zz half-way in a temporary file
        if not proxy.seen(method="GET", path="/data/zz$"):
            return False
        return any(p.stat().st_size >= 256 * 1024 for p in (base / ".tmp").glob("*-*-[0-9]*"))

    process = start_cli([*args, *extra])
    try:
        wait_for(partly_staged, timeout=60)
    finally:
        kill(process, signal.SIGKILL)
        process.communicate(timeout=30)
    proxy.clear_faults()
    # ... and replaced in the source meanwhile, same size: the resume copies the new one
    objects["data/zz"] = os.urandom(2 * MiB)
    s3.put_object(Bucket=buckets.source, Key="data/zz", Body=objects["data/zz"])
    root = base / buckets.source
    os.truncate(root / "data/k0", 10)
    with open(root / "data/k1", "ab") as extended:
        extended.write(b"more")
    (root / "data/k2").write_bytes(os.urandom(302))  # same size, other bytes
    (root / "data/k3").unlink()
    (root / "data/k4").unlink()
    (root / "data/k4").mkdir()
    (root / "data/k4" / "planted").write_bytes(b"p")
    (root / "data/big").write_bytes(b"")
    shutil.rmtree(root / "data/sub")
    (root / "data/sub").write_bytes(b"a file where a folder was")
    before = read_valid(checkpoint_file(base, buckets.source, "data"))
    assert not any(before.files.values())  # flushed rarely: each still to copy
    resumed = run_cli(
        [*args, *extra, *(["--cleanup", "--on-complete", "delete"] if cleanup else [])]
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _same_bytes(s3, buckets) == len(objects)
    if cleanup:
        assert not list((base / "checkpoints").glob("**/*.checkpoint*"))
        left = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        assert left == {"data/k4/planted", "data/sub"}  # the operator's own files


def _stop_after(count: int, stop: asyncio.Event) -> NullObserver:
    class StopAfter(NullObserver):
        done = 0

        def on_done(self, key: str, size: int) -> None:
            self.done += 1
            if self.done == count:
                stop.set()

    return StopAfter()


async def _stopped_half_way(
    buckets: Buckets, s3: Any, tmp_path: Path, endpoint: str
) -> tuple[dict[str, bytes], list[str]]:
    """Twenty objects; a run stopped once four are done: the objects, and the keys done."""
    objects = {f"data/k{i:02d}": os.urandom(200 + i) for i in range(20)}
    for key, body in objects.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    stop = asyncio.Event()
    first = await backup_data(
        buckets, tmp_path, endpoint, concurrency=1, observer=_stop_after(4, stop), stop=stop
    )
    assert first.status == "stopped"
    state = read_valid(first.checkpoint_path)
    done = sorted(key for key, ok in state.files.items() if ok)
    assert 4 <= len(done) <= 16
    return objects, done


async def _run(*args: str) -> Finished:
    return await run_cli_async(["s3", *args])


@pytest.mark.parametrize("skip_existing", [False, True], ids=["resume", "skip-existing"])
async def test_copies_of_done_files_deleted_or_overwritten_at_the_destination(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, skip_existing: bool
) -> None:
    """Someone deletes one copy a stopped run made and overwrites two others (same size, other
    size). As the README says: a resume skips every file the checkpoint marks done, so it
    completes (exit 0) without them; `checkpoint verify` of the archive names the missing and
    different ones (exit 1) and `--mark-pending` has them copied again. With
    --skip-existing the overwritten ones are copied again (another size or MD5 ETag), the
    deleted one stays skipped (the README: it could be one marked done by hand)."""
    objects, done = await _stopped_half_way(buckets, s3, tmp_path, proxy.endpoint)
    gone, same_size, other_size = done[:3]
    s3.delete_object(Bucket=buckets.dest, Key=gone)
    s3.put_object(Bucket=buckets.dest, Key=same_size, Body=os.urandom(len(objects[same_size])))
    s3.put_object(Bucket=buckets.dest, Key=other_size, Body=b"x")
    args = ["data", *cli_args(proxy.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    resumed = await _run(*args, *(["--skip-existing"] if skip_existing else []))
    assert resumed.returncode == 0, resumed.stderr
    changed = [same_size, other_size] if not skip_existing else []
    for key, body in objects.items():
        if key == gone:
            assert key not in list_keys(s3, buckets.dest)
        elif key not in changed:
            assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body, key
    (archive,) = (tmp_path / "stage" / "checkpoints" / "archive").iterdir()
    verify = await run_cli_async(["checkpoint", "verify", str(archive), "--json"])
    assert verify.returncode == 1, verify.stderr
    found = json.loads(verify.stdout)
    assert found["missing"] == [gone]
    assert sorted(entry["key"] for entry in found["different"]) == sorted(changed)
    # The README's way back: mark them pending, put the archive back in place, run again.
    marked = await run_cli_async(["checkpoint", "verify", str(archive), "--mark-pending"])
    assert marked.returncode == 1, marked.stderr
    live = checkpoint_file(tmp_path / "stage", buckets.source, "data")
    assert f"cp {archive} {live}" in marked.stdout + marked.stderr
    shutil.copy(archive, live)
    again = await _run(*args)
    assert again.returncode == 0, again.stderr
    assert _same_bytes(s3, buckets) == len(objects)


@pytest.mark.parametrize("how", ["emptied", "recreated"])
async def test_a_resume_into_a_destination_emptied_since(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, how: str
) -> None:
    """The destination bucket was emptied (or deleted and made again) between the runs. The
    resume skipped the files the checkpoint marks done, completed with exit 0 and archived the
    checkpoint: "completed", 20 of 20 done, and the objects done before nowhere at the destination.
    A destination with nothing under the job's prefix cannot hold any file marked done: the
    resume stops at its start with one line saying so (exit 2), the checkpoint as it was."""
    objects, done = await _stopped_half_way(buckets, s3, tmp_path, proxy.endpoint)
    for key in list_keys(s3, buckets.dest):
        s3.delete_object(Bucket=buckets.dest, Key=key)
    if how == "recreated":
        s3.delete_bucket(Bucket=buckets.dest)
        s3.create_bucket(Bucket=buckets.dest)
    base = tmp_path / "stage"
    path = checkpoint_file(base, buckets.source, "data")
    before = path.read_bytes()
    args = ["data", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest)]
    planned = await _run(*args, "--dry-run")  # the run's decision, as the README says
    assert planned.returncode == 2 and "holds no object" in planned.stderr, planned.stderr
    resumed = await _run(*args)
    assert resumed.returncode == 2, resumed.stderr
    line = one_error_line(resumed.stderr)
    assert f"marks {len(done)} files done" in line and "--mark-pending" in line, line
    assert path.read_bytes() == before
    assert list_keys(s3, buckets.dest) == []
    # What the line says to do works: the missing copies marked pending, the job completes.
    marked = await run_cli_async(["checkpoint", "verify", str(path), "--mark-pending"])
    assert marked.returncode == 1, marked.stderr
    again = await _run(*args)
    assert again.returncode == 0, again.stderr
    assert _same_bytes(s3, buckets) == len(objects)


async def test_a_resume_into_a_destination_bucket_deleted_since(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The destination bucket was deleted: one line naming it, exit 2, the checkpoint as it
    was (its done files still done, for when the bucket is back)."""
    await _stopped_half_way(buckets, s3, tmp_path, proxy.endpoint)
    for key in list_keys(s3, buckets.dest):
        s3.delete_object(Bucket=buckets.dest, Key=key)
    s3.delete_bucket(Bucket=buckets.dest)
    path = checkpoint_file(tmp_path / "stage", buckets.source, "data")
    before = path.read_bytes()
    args = ["data", *cli_args(proxy.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    try:
        resumed = await _run(*args)
    finally:
        s3.create_bucket(Bucket=buckets.dest)
    assert resumed.returncode == 2, resumed.stderr
    line = one_error_line(resumed.stderr)
    assert f"destination bucket '{buckets.dest}' does not exist" in line, line
    assert path.read_bytes() == before


@pytest.mark.parametrize("how", ["staging_moved", "checkpoint_copied_elsewhere"])
async def test_a_resume_from_a_moved_staging_folder_or_a_copied_checkpoint(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, how: str
) -> None:
    """The checkpoint kept in ``--checkpoint-dir``; the staging folder moved to another path
    (``--base-local-path`` changed), or the checkpoint copied to another machine (another
    folder, a fresh staging folder) and the job resumed there: it completes, identical."""
    objects = {f"data/k{i}": os.urandom(200 + i) for i in range(8)}
    objects["data/big"] = os.urandom(11 * MiB)
    for key, body in objects.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    first_base, checkpoints = tmp_path / "a", tmp_path / "cp"
    stop = asyncio.Event()
    first = await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        base_local_path=first_base,
        checkpoint_dir=checkpoints,
        concurrency=1,
        observer=_stop_after(3, stop),
        stop=stop,
    )
    assert first.status == "stopped"
    (first_base / ".tmp" / "999999-dead-7").write_bytes(b"a crashed run's leftover")
    if how == "staging_moved":
        base = tmp_path / "b"
        first_base.rename(base)
    else:
        base, moved = tmp_path / "other-machine", tmp_path / "other-cp"
        shutil.copytree(checkpoints, moved)
        shutil.rmtree(checkpoints)
        checkpoints = moved
    args = ["data", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest)]
    args += [*MULTIPART, "--checkpoint-dir", str(checkpoints)]
    resumed = await _run(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done before" in resumed.stderr and " 0 already done" not in resumed.stderr
    assert _same_bytes(s3, buckets) == len(objects)
    (archive,) = (checkpoints / "archive").iterdir()
    assert read_valid(archive).config["base_local_path"] == str(base)


async def test_a_source_that_gained_thousands_and_lost_some_between_runs(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Stopped with part of 20 objects done; meanwhile 1,000 objects are added (before and
    after the keys done, in key order) and 6 deleted (3 done, 3 not). The resume copies what
    is new or still to do, and its summary, report and archived checkpoint count the source
    as it is now: no deleted key counted, done or total."""
    objects, done = await _stopped_half_way(buckets, s3, tmp_path, proxy.endpoint)
    more = {f"data/{c}{i:04d}": os.urandom(64) for c in "aZ" for i in range(500)}
    put_parallel(s3, buckets.source, more)
    pending = sorted(set(objects) - set(done))
    deleted = done[:3] + pending[:3]
    for key in deleted:
        s3.delete_object(Bucket=buckets.source, Key=key)
    now = {k: v for k, v in (objects | more).items() if k not in deleted}
    report_file = tmp_path / "report.json"
    args = ["data", *cli_args(proxy.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    resumed = await _run(*args, "--report", str(report_file), "--concurrency", "32")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(report_file.read_text())
    assert report["job_files_total"] == report["job_files_done"] == len(now)
    assert report["job_bytes_total"] == report["job_bytes_done"] == sum(map(len, now.values()))
    assert report["files_copied"] == len(now) - (len(done) - 3)
    assert report["files_skipped"] == len(done) - 3
    archived = read_valid(Path(report["archived_checkpoint"]))
    assert set(archived.files) == set(now) and all(archived.files.values())
    assert (archived.total_files, archived.processed_files) == (len(now), len(now))
    for key in sorted(now)[::50] + pending[3:]:
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == now[key], key
    assert len(list_keys(s3, buckets.dest)) == len(now) + 3  # deletions are not propagated


async def test_a_clock_set_back_between_runs(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The clock went back a day between the runs: the checkpoint's times, and the archive of
    an earlier completion, are in the future. The resume loads it (times are not compared),
    completes, and ``--keep-archives 1`` keeps the archive it made, not the one named after
    the future."""
    objects, _ = await _stopped_half_way(buckets, s3, tmp_path, proxy.endpoint)
    path = checkpoint_file(tmp_path / "stage", buckets.source, "data")
    data = json.loads(path.read_text())
    data["start_time"] = data["last_update"] = "2099-01-02T03:04:05+00:00"
    path.write_text(json.dumps(data))
    archive_dir = path.parent / "archive"
    archive_dir.mkdir(mode=0o700)
    future = archive_dir / f"{path.name}.20990102T030405Z"
    future.write_text(json.dumps(data))
    args = ["data", *cli_args(proxy.endpoint, tmp_path / "stage", buckets.source, buckets.dest)]
    resumed = await _run(*args, "--keep-archives", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert _same_bytes(s3, buckets) == len(objects)
    (kept,) = archive_dir.iterdir()
    assert kept != future
    state = read_valid(kept)
    assert state.processed_files == len(objects) and state.start_time.startswith("2099")


def test_a_resume_as_another_user_is_one_line_and_changes_nothing(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Run first as root (files 0600, folders 0700, whatever the umask), stopped by SIGKILL;
    the job then resumed by another user (a cron entry moved to a service account): one line,
    exit 2, the checkpoint as it was; resumed as root again, it completes."""
    objects = {f"data/k{i}": os.urandom(200 + i) for i in range(30)}
    put_parallel(s3, buckets.source, objects)
    shared = Path(tempfile.mkdtemp(prefix="s18e-"))
    try:
        shared.chmod(0o755)
        base = shared / "stage"
        args = ["data", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest)]
        args += ["--concurrency", "1"]
        proxy.add_rule(Rule("latency", method="GET", path="/data/k2[0-9]$", delay=5))
        old_umask = os.umask(0o002)
        try:
            process = start_cli(args)
        finally:
            os.umask(old_umask)
        path = checkpoint_file(base, buckets.source, "data")
        try:
            wait_for(lambda: bool(proxy.seen(method="GET", path="/data/k20$")), timeout=60)
        finally:
            kill(process, signal.SIGKILL)
            process.communicate(timeout=30)
        proxy.clear_faults()
        before = {p: p.read_bytes() for p in path.parent.iterdir() if p.is_file()}
        made = [p for p in base.rglob("*") if not p.is_symlink()]
        modes = {p.stat().st_mode & 0o777 for p in made if p.is_file()}
        assert modes == {0o600} and {p.stat().st_mode & 0o777 for p in made if p.is_dir()} == {
            0o700
        }
        key, secret = ACCESS_KEYS["default"]
        env = {
            "PATH": os.environ["PATH"],
            "HOME": "/nonexistent",
            "PYTHONPATH": str(Path(__file__).parents[2]),
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        other = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd="/",
        )
        assert other.returncode == 2, other.stderr
        line = one_error_line(other.stderr)
        assert "Permission denied" in line and str(base) in line, line
        assert {p: p.read_bytes() for p in path.parent.iterdir() if p.is_file()} == before
        assert read_valid(path).processed_files >= 1
        again = run_cli(args)
        assert again.returncode == 0, again.stderr
        assert _same_bytes(s3, buckets) == len(objects)
    finally:
        shutil.rmtree(shared)


async def test_a_bundle_upload_aborted_by_a_lifecycle_rule_is_started_again(
    tmp_path: Path, proxy: S3Proxy, buckets: Buckets, s3: Any
) -> None:
    """The GitHub backup's artifacts go up by the same sink: a bundle's multipart upload
    aborted under the run (NoSuchUpload on its second part) was an error of the artifact
    (completed_with_errors), not an artifact started again."""
    async with running_org(tmp_path / "git") as github:
        github.add_repo(FakeRepo("big", has_wiki=False))
        work = tmp_path / "big.work"
        git("init", "-q", "-b", "main", str(work))
        (work / "blob.bin").write_bytes(os.urandom(6 * MiB))
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "big", cwd=work)
        git("clone", "-q", "--bare", str(work), str(github.git_dir("big")))
        rule = proxy.add_rule(
            Rule(
                "no_such_upload",
                method="PUT",
                path=r"/big\.bundle$",
                query="partNumber=2",
                times=1,
                action=lambda: _abort_every_upload(s3, buckets.dest),
            )
        )
        options = config(github, proxy.endpoint, buckets.dest, tmp_path / "work")
        options.update(include=("big",), multipart_threshold=5 * MiB, part_size=5 * MiB)
        clock = github.clock
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert rule.hits == 1
        assert report.status == "completed", report.errors
        assert s3.head_object(Bucket=buckets.dest, Key="github/acme/big.bundle")["ContentLength"]
        assert _uploads(s3, buckets.dest) == []
