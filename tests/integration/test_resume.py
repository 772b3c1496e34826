"""Resuming: a SIGKILLed run, hand edits to the checkpoint, --ignore-checkpoints."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup import BackupReport, plan_backup, run_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.checkpoint_identity import endpoint_for_checkpoint
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.errors import CheckpointEditedError, CheckpointMismatchError
from asyncbackup.journal import Changes
from asyncbackup.progress import NullObserver
from tests.conftest import Buckets, S3Server
from tests.helpers import (
    assert_same_objects,
    backup_data,
    bucket_digest,
    cli_args,
    list_keys,
    load_json,
    numbered_objects,
    put_objects,
    run_cli,
)
from tests.proxy import Rule, S3Proxy


def _checkpoint(base: Path, bucket: str, path: str) -> Path:
    return base / "checkpoints" / f"{bucket}_{path}.checkpoint"


def test_sigkill_then_resume_copies_everything_once(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    objects = numbered_objects(400)
    put_objects(s3, buckets.source, objects)
    args = ["data", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--concurrency", "1"]
    checkpoint = _checkpoint(tmp_path, buckets.source, "data")
    process = subprocess.Popen(
        [sys.executable, "-m", "asyncbackup", "s3", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if checkpoint.exists():
            orjson.loads(checkpoint.read_bytes())  # the JSON file is valid at every read
            # The last flush: the JSON file with its journal applied.
            if read_checkpoint(checkpoint).processed_files >= 30:
                break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    on_disk = load_json(checkpoint)  # still valid JSON after the kill
    state = read_checkpoint(checkpoint)
    assert len(state.files) >= len(on_disk["files"])
    done = [key for key, ok in state.files.items() if ok]
    assert 30 <= len(done) < len(objects), "the kill must land mid-run"
    assert state.processed_files == len(done)
    # Every file marked done really is at the destination, intact.
    dest = bucket_digest(s3, buckets.dest)
    source = bucket_digest(s3, buckets.source)
    for key in done:
        assert dest[key] == source[key]

    report = tmp_path / "report.json"
    result = run_cli([*args, "--concurrency", "8", "--report", str(report)])
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    summary = load_json(report)
    assert summary["skipped_files"] >= len(done)
    assert summary["copied_files"] + summary["skipped_files"] == len(objects)
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


def _seed_checkpoint(
    path: Path, source: str, dest: str, files: dict[str, bool], errors: Any
) -> None:
    """A checkpoint written by hand, in the seed's example format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "backup_id": "hand-written",
                "source_bucket": source,
                "source_path": "job",
                "dest_bucket": dest,
                "start_time": "2024-04-06T12:00:00",
                "last_update": "2024-04-06T13:15:30",
                "total_files": 4,
                "processed_files": 1,
                "total_bytes": 0,
                "processed_bytes": 0,
                "files": files,
                "errors": errors,
                "config": {"cleanup": True, "base_local_path": "/elsewhere"},
            },
            indent=2,
        )
    )


def test_hand_edits_are_honoured(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    keys = ["job/skip-me", "job/redo-me", "job/had-error", "job/new"]
    for key in keys:
        s3.put_object(Bucket=buckets.source, Key=key, Body=f"fresh {key}".encode())
    # The destination holds a stale copy of the file the operator marked false.
    s3.put_object(Bucket=buckets.dest, Key="job/redo-me", Body=b"stale")
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(
        checkpoint,
        buckets.source,
        buckets.dest,
        files={"job/skip-me": True, "job/redo-me": False},
        errors={},  # the operator removed "job/had-error": "AccessDenied: ..."
    )
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli([*args, "--on-complete", "delete"])
    assert result.returncode == 0, result.stderr
    # true -> skipped: never copied
    assert "job/skip-me" not in list_keys(s3, buckets.dest)
    # false -> redone: the stale copy is replaced
    body = s3.get_object(Bucket=buckets.dest, Key="job/redo-me")["Body"].read()
    assert body == b"fresh job/redo-me"
    assert {"job/had-error", "job/new"} <= set(list_keys(s3, buckets.dest))
    assert not checkpoint.exists()


async def test_a_file_reset_by_hand_is_not_counted_twice_in_processed_bytes(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The operator resets a done file to false: its bytes were counted by the run that did
    it; the run that copies it again must leave processed_bytes equal to the bytes done."""
    sizes = {"job/kept": 300, "job/reset": 5_000, "job/new": 70}
    for key, size in sizes.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=b"x" * size)
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(checkpoint, buckets.source, buckets.dest, {"job/kept": True}, {})
    edited = load_json(checkpoint)
    # As the earlier run left it, then "job/reset": true -> false by hand.
    edited.update(total_bytes=5_300, processed_bytes=5_300, total_files=2, processed_files=2)
    edited["files"]["job/reset"] = False
    checkpoint.write_text(json.dumps(edited))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="job",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=s3_server.endpoint,
    )
    assert report.status == "completed" and report.archived_checkpoint is not None
    state = load_json(report.archived_checkpoint)
    assert state["total_bytes"] == state["processed_bytes"] == sum(sizes.values())
    assert state["total_files"] == state["processed_files"] == 3
    assert report.processed_bytes == sum(sizes.values())


def test_a_checkpoint_saved_with_a_byte_order_mark_is_honoured(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Some editors save UTF-8 with a byte order mark; jq reads such a file, and so do we."""
    for key in ("job/skip-me", "job/new"):
        s3.put_object(Bucket=buckets.source, Key=key, Body=key.encode())
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(
        checkpoint, buckets.source, buckets.dest, files={"job/skip-me": True}, errors={}
    )
    checkpoint.write_bytes(b"\xef\xbb\xbf" + checkpoint.read_bytes())
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli([*args, "--on-complete", "delete"])
    assert result.returncode == 0, result.stderr
    assert list_keys(s3, buckets.dest) == ["job/new"]  # the file marked true was skipped


def test_a_failed_file_marked_true_by_hand_is_skipped_and_the_job_completes(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    for key in ("job/problem_file.dat", "job/ok"):
        s3.put_object(Bucket=buckets.source, Key=key, Body=f"fresh {key}".encode())
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    # The spec's example edit: "job/problem_file.dat": false -> true, nothing else touched
    # (its error from the failed run is still in "errors").
    _seed_checkpoint(
        checkpoint,
        buckets.source,
        buckets.dest,
        files={"job/problem_file.dat": True, "job/ok": False},
        errors={"job/problem_file.dat": "AccessDenied: Access Denied"},
    )
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli([*args, "--on-complete", "delete"])
    # Skipped, so nothing is left to fail: the job completes (exit 0, checkpoint deleted)
    # instead of reporting the skipped file's old error for ever.
    assert result.returncode == 0, result.stderr
    assert list_keys(s3, buckets.dest) == ["job/ok"]
    assert not checkpoint.exists()


def test_recorded_errors_keep_the_checkpoint_and_clear_when_fixed(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="job/a", Body=b"a")
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(
        checkpoint,
        buckets.source,
        buckets.dest,
        files={"job/a": False, "job/gone": False},
        errors={"job/a": "InternalError: try later", "job/gone": "NoSuchKey: deleted"},
    )
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    archived = next((tmp_path / "checkpoints" / "archive").iterdir())
    state = load_json(archived)
    # The retried file succeeded and the error of a key no longer in the source is dropped.
    assert state["errors"] == {}
    assert state["files"]["job/a"] is True


def test_ignore_checkpoints_starts_over_and_keeps_the_old_file(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    keys = ["job/x", "job/y"]
    for key in keys:
        s3.put_object(Bucket=buckets.source, Key=key, Body=b"1")
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(
        checkpoint, buckets.source, buckets.dest, files=dict.fromkeys(keys, True), errors={}
    )
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    skipped = run_cli(args)
    assert skipped.returncode == 0, skipped.stderr
    assert list_keys(s3, buckets.dest) == []  # everything was marked done already

    _seed_checkpoint(
        checkpoint, buckets.source, buckets.dest, files=dict.fromkeys(keys, True), errors={}
    )
    fresh = run_cli([*args, "--ignore-checkpoints"])
    assert fresh.returncode == 0, fresh.stderr
    assert sorted(list_keys(s3, buckets.dest)) == keys
    kept = [p for p in checkpoint.parent.iterdir() if ".ignored-" in p.name]
    assert len(kept) == 1 and load_json(kept[0])["backup_id"] == "hand-written"


def test_corrupt_checkpoint_is_an_error_and_left_untouched(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="job/x", Body=b"1")
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b'{"backup_id": "trunc')
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli(args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(checkpoint) in lines[0] and "--ignore-checkpoints" in lines[0]
    assert checkpoint.read_bytes() == b'{"backup_id": "trunc'
    assert list_keys(s3, buckets.dest) == []


async def _stopped_after_one(
    s3: Any, buckets: Buckets, tmp_path: Path, endpoint: str, objects: int = 30, **options: Any
) -> BackupReport:
    """A backup of ``objects`` objects asked to stop once one is done: it stops, a few done."""
    put_objects(s3, buckets.source, numbered_objects(objects))
    stop = asyncio.Event()

    class StopAtFirst(NullObserver):
        def on_done(self, key: str, size: int) -> None:
            stop.set()

    first = await backup_data(
        buckets, tmp_path, endpoint, concurrency=1, observer=StopAtFirst(), stop=stop, **options
    )
    assert first.status == "stopped" and 1 <= first.copied_files < objects
    return first


async def test_resume_with_another_dest_prefix_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    first = await _stopped_after_one(s3, buckets, tmp_path, s3_server.endpoint, dest_prefix="old")
    # The files marked done are under old/: a run putting its copies under new/ would skip
    # them and report the job complete with new/ missing them.
    with pytest.raises(CheckpointMismatchError, match="--dest-prefix"):
        await backup_data(buckets, tmp_path, s3_server.endpoint, dest_prefix="new")
    assert list_keys(s3, buckets.dest, "new/") == []
    # The same destination, however spelled, resumes and completes the job.
    done = await backup_data(buckets, tmp_path, s3_server.endpoint, dest_prefix="/old/")
    assert done.status == "completed" and done.skipped_files == first.copied_files
    assert len(list_keys(s3, buckets.dest, "old/")) == 30


async def test_resume_to_another_destination_endpoint_is_refused(
    s3_server: S3Server, proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Another endpoint is another store (here the proxy stands for one): the files the
    checkpoint marks done are not there, and a resume would skip them."""
    first = await _stopped_after_one(s3, buckets, tmp_path, s3_server.endpoint)
    checkpoint = _checkpoint(tmp_path / "stage", buckets.source, "data")
    recorded = load_json(checkpoint)["config"]["dest_endpoint_url"]
    assert recorded == s3_server.endpoint.rstrip("/")
    with pytest.raises(CheckpointMismatchError, match="destination endpoint") as refused:
        await backup_data(buckets, tmp_path, s3_server.endpoint, dest_endpoint_url=proxy.endpoint)
    assert "--ignore-checkpoints" in str(refused.value)
    assert not [r for r in proxy.requests if r.method == "PUT"]
    # The same store under another name: the operator says so in the checkpoint.
    edited = load_json(checkpoint)
    edited["config"]["dest_endpoint_url"] = proxy.endpoint + "/"
    checkpoint.write_bytes(orjson.dumps(edited))
    done = await backup_data(
        buckets, tmp_path, s3_server.endpoint, dest_endpoint_url=proxy.endpoint
    )
    assert done.status == "completed" and done.skipped_files == first.copied_files
    assert len(list_keys(s3, buckets.dest)) == 30


def test_an_endpoint_is_recorded_without_what_it_could_hide() -> None:
    assert endpoint_for_checkpoint("HTTPS://user:secret@S3.Example.com:9000/base/?token=t") == (
        "https://s3.example.com:9000/base"
    )
    assert endpoint_for_checkpoint("http://[::1]:9000") == "http://[::1]:9000"
    assert endpoint_for_checkpoint("http://h:1/") == endpoint_for_checkpoint("HTTP://H:1")
    assert endpoint_for_checkpoint(None) is None and endpoint_for_checkpoint("") is None


def left_upload(s3: Any, buckets: Buckets, tmp_path: Path) -> tuple[Path, str]:
    """A source object ``job/x``, a multipart upload of ``job/big`` with one part at the
    destination, and the job's checkpoint (``job/big`` not done); the upload's id."""
    s3.put_object(Bucket=buckets.source, Key="job/x", Body=b"1")
    upload: str = s3.create_multipart_upload(Bucket=buckets.dest, Key="job/big")["UploadId"]
    s3.upload_part(
        Bucket=buckets.dest, Key="job/big", UploadId=upload, PartNumber=1, Body=b"p" * 1024
    )
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(checkpoint, buckets.source, buckets.dest, files={"job/big": False}, errors={})
    return checkpoint, upload


async def crashed_mid_upload(s3: Any, buckets: Buckets, tmp_path: Path) -> tuple[Path, str]:
    """``left_upload``, as a run SIGKILLed mid-upload leaves it: the upload recorded in the
    checkpoint's journal only (not in the JSON file), the lock released."""
    checkpoint, upload = left_upload(s3, buckets, tmp_path)
    crashed = CheckpointManager(checkpoint)
    crashed.open()
    state = read_checkpoint(checkpoint)
    crashed.flush(state)
    changes = Changes()
    changes.note("multipart_uploads", "job/big", upload)
    state.extra["multipart_uploads"] = {"job/big": upload}
    await crashed.save_async(state, changes)
    crashed._writer.shutdown(wait=True)  # a SIGKILL: the files stay, the lock goes
    crashed.journal.close()
    crashed.lock.release()
    return checkpoint, upload


def test_ignore_checkpoints_still_aborts_the_uploads_a_crashed_run_left(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    # What a run SIGKILLed mid-upload leaves: an upload at the destination, recorded in its
    # checkpoint's multipart_uploads section (by destination key).
    checkpoint, upload = left_upload(s3, buckets, tmp_path)
    data = load_json(checkpoint)
    data["multipart_uploads"] = {"job/big": upload}
    checkpoint.write_bytes(orjson.dumps(data))
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli([*args, "--ignore-checkpoints", "--on-complete", "delete"])
    assert result.returncode == 0, result.stderr
    assert list_keys(s3, buckets.dest) == ["job/x"]
    # Starting over does not leave the old run's upload (and its parts) behind for ever.
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


async def test_an_upload_whose_abort_failed_at_the_start_is_aborted_at_the_end(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A run that completes archives its checkpoint: a leftover upload still recorded then
    would never be aborted. The run tries once more before it concludes."""
    s3.put_object(Bucket=buckets.source, Key="job/x", Body=b"1")
    upload = s3.create_multipart_upload(Bucket=buckets.dest, Key="job/big")["UploadId"]
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(checkpoint, buckets.source, buckets.dest, files={}, errors={})
    data = load_json(checkpoint)
    data["multipart_uploads"] = {"job/big": upload}
    checkpoint.write_bytes(orjson.dumps(data))
    # The start-up abort fails (both of its attempts); the servers answer again later.
    refusal = proxy.add_rule(Rule("internal", method="DELETE", query="uploadId", times=2))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="job",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        max_attempts=2,
    )
    assert report.exit_code == 0, report.errors
    assert refusal.hits == 2  # the start's try did fail
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    assert report.archived_checkpoint is not None
    assert "multipart_uploads" not in load_json(report.archived_checkpoint)


def job_settings(s3_server: S3Server, buckets: Buckets, tmp_path: Path) -> dict[str, Any]:
    """``run_backup``'s settings for the source's ``job`` folder, staged under ``tmp_path``."""
    return {
        "source_bucket": buckets.source,
        "source_path": "job",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path,
        "endpoint_url": s3_server.endpoint,
    }


async def test_a_dry_run_refuses_the_checkpoint_of_another_job_like_the_run(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Two jobs from one source folder to two buckets share a checkpoint name: the run
    refuses the other job's checkpoint, so the dry run must not count its files as done."""
    keys = ["job/a", "job/b"]
    for key in keys:
        s3.put_object(Bucket=buckets.source, Key=key, Body=b"1")
    checkpoint = _checkpoint(tmp_path, buckets.source, "job")
    _seed_checkpoint(
        checkpoint, buckets.source, "another-bucket", files=dict.fromkeys(keys, True), errors={}
    )
    settings = job_settings(s3_server, buckets, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="another job"):
        await run_backup(**settings)
    with pytest.raises(CheckpointMismatchError, match="another job"):
        await plan_backup(**settings)
    plan = await plan_backup(**settings, ignore_checkpoints=True)
    assert plan.copy_files == 2 and plan.done_files == 0
    assert list_keys(s3, buckets.dest) == []


async def test_starting_over_from_an_edited_crashed_checkpoint_still_aborts_its_uploads(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """After a crash, the upload in flight is recorded in the journal only. An operator who
    then edits the file gets CheckpointEditedError, which offers --ignore-checkpoints: the
    fresh start must still abort that upload, not leave its parts billed for ever."""
    checkpoint, _ = await crashed_mid_upload(s3, buckets, tmp_path)
    data = load_json(checkpoint)
    data["files"]["job/big"] = True  # the operator's edit, the journal still there
    checkpoint.write_bytes(orjson.dumps(data))
    settings = job_settings(s3_server, buckets, tmp_path)
    with pytest.raises(CheckpointEditedError, match="--ignore-checkpoints"):
        await run_backup(**settings)
    report = await run_backup(**settings, ignore_checkpoints=True, on_complete="delete")
    assert report.status == "completed"
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    # The edited file and its journal are both kept aside, untouched.
    kept = sorted(p.name for p in checkpoint.parent.iterdir() if "-20" in p.name)
    assert len(kept) == 2 and kept[1] == kept[0] + ".journal"


async def test_the_destination_endpoint_set_in_the_environment_is_the_one_compared(
    s3_server: S3Server,
    proxy: S3Proxy,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The destination endpoint can come from AWS_ENDPOINT_URL (or the profile) rather than a
    flag: a resume to another one that way is refused too (the proxy stands for another
    store), and the same one given by a flag resumes."""
    put_objects(s3, buckets.source, numbered_objects(30))
    stop = asyncio.Event()

    class StopAtFirst(NullObserver):
        def on_done(self, key: str, size: int) -> None:
            stop.set()

    def run(**options: Any) -> Any:
        return run_backup(
            source_bucket=buckets.source,
            source_path="data",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path / "stage",
            source_endpoint_url=s3_server.endpoint,
            **options,
        )

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    first = await run(concurrency=1, observer=StopAtFirst(), stop=stop)
    assert first.status == "stopped" and 1 <= first.copied_files < 30
    checkpoint = _checkpoint(tmp_path / "stage", buckets.source, "data")
    assert load_json(checkpoint)["config"]["dest_endpoint_url"] == s3_server.endpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    with pytest.raises(CheckpointMismatchError, match="destination endpoint"):
        await run()
    assert not [r for r in proxy.requests if r.method == "PUT"]

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    done = await run(dest_endpoint_url=s3_server.endpoint + "/")
    assert done.status == "completed" and done.skipped_files == first.copied_files
    assert len(list_keys(s3, buckets.dest)) == 30
    # AWS is one store whatever the region's endpoint the client picked
    assert endpoint_for_checkpoint("https://s3.eu-west-1.amazonaws.com/") is None


def _linked_job_checkpoint(tmp_path: Path, buckets: Buckets) -> tuple[Path, Path]:
    """The job's checkpoint as a link to ``persistent/job.checkpoint``, dangling until the
    first run writes through it: (the file, the link)."""
    storage = tmp_path / "persistent"
    storage.mkdir()
    real = storage / "job.checkpoint"
    link = _checkpoint(tmp_path / "stage", buckets.source, "data")
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    return real, link


async def test_a_linked_checkpoint_stays_linked_once_the_job_completes(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The operator links the checkpoint to persistent storage. The completed job's checkpoint
    is archived, and the link stays: the next run of the job keeps its checkpoint where the
    link points, not on the machine's own disk."""
    put_objects(s3, buckets.source, numbered_objects(20))
    real, link = _linked_job_checkpoint(tmp_path, buckets)

    first = await backup_data(buckets, tmp_path, s3_server.endpoint)
    assert first.status == "completed" and first.archived_checkpoint is not None
    assert not first.archived_checkpoint.is_symlink()
    assert read_checkpoint(first.archived_checkpoint).processed_files == 20
    assert link.is_symlink() and not real.exists()  # archived: nothing to resume

    second = await _stopped_after_one(s3, buckets, tmp_path, s3_server.endpoint, objects=40)
    assert link.is_symlink() and real.exists()
    assert read_checkpoint(real).processed_files == second.processed_files


async def test_a_linked_checkpoint_set_aside_by_ignore_checkpoints_stays_linked(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """--ignore-checkpoints sets the old checkpoint aside: the file, not the operator's link,
    which the new run writes through."""
    put_objects(s3, buckets.source, numbered_objects(20))
    real, link = _linked_job_checkpoint(tmp_path, buckets)
    stop = asyncio.Event()

    class StopAtFirst(NullObserver):
        def on_done(self, key: str, size: int) -> None:
            stop.set()

    def stopped_run(**options: Any) -> Any:
        stop.clear()
        return backup_data(
            buckets,
            tmp_path,
            s3_server.endpoint,
            concurrency=1,
            observer=StopAtFirst(),
            stop=stop,
            **options,
        )

    assert (await stopped_run()).status == "stopped"
    old_id = read_checkpoint(real).backup_id
    assert (await stopped_run(ignore_checkpoints=True)).status == "stopped"
    assert link.is_symlink() and read_checkpoint(real).backup_id != old_id
    (aside,) = link.parent.glob(f"{link.name}.ignored-*")
    assert not aside.is_symlink() and read_checkpoint(aside).backup_id == old_id
