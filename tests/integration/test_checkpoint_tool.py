"""``asyncbackup checkpoint ...`` through the CLI in a real process, on checkpoints written by
real runs against the S3 server (failures injected by a proxy where a test needs errors)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.checkpoint_lock import CheckpointLock
from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import FaultyProxy, run_cli_async
from tests.helpers import assert_same_objects, cli_args, list_keys, load_json

DENIED = {"data/d1/obj-00001.bin", "data/d3/obj-00003.bin"}
VANISHED = {"data/d5/obj-00005.bin"}
COUNT = 24


def _objects() -> dict[str, bytes]:
    return {f"data/d{i % 7}/obj-{i:05d}.bin": os.urandom(100 + i) for i in range(COUNT)}


@dataclass
class FailedRun:
    base: Path
    checkpoint: Path
    report: Path
    stderr: str
    returncode: int
    objects: dict[str, bytes]
    endpoint: str


@pytest.fixture
async def failed_run(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, faulty_proxy: FaultyProxy
) -> FailedRun:
    """A real backup of 24 objects in which 2 are denied and 1 vanishes: exit 1, 3 errors."""
    objects = _objects()
    for key, body in objects.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    faulty_proxy.deny, faulty_proxy.vanish = set(DENIED), set(VANISHED)
    base = tmp_path / "scratch"
    report = tmp_path / "report.json"
    args = cli_args(
        faulty_proxy.endpoint, base, buckets.source, buckets.dest, "--report", str(report)
    )
    result = await run_cli_async(["s3", "data", *args, "--concurrency", "4"])
    return FailedRun(
        base=base,
        checkpoint=base / "checkpoints" / f"{buckets.source}_data.checkpoint",
        report=report,
        stderr=result.stderr,
        returncode=result.returncode,
        objects=objects,
        endpoint=faulty_proxy.endpoint,  # the checkpoint's destination endpoint: a resume's too
    )


async def test_show_list_and_errors_describe_a_run_with_failures(failed_run: FailedRun) -> None:
    assert failed_run.returncode == 1, failed_run.stderr
    path = str(failed_run.checkpoint)

    show = await run_cli_async(["checkpoint", "show", path])
    assert show.returncode == 0, show.stderr
    assert "21 of 24 done" in show.stdout
    assert "3 pending" in show.stdout
    assert "idle (no run holds it)" in show.stdout
    lines = show.stdout.splitlines()
    assert any(line.split() == ["AccessDenied", "2"] for line in lines), show.stdout
    assert any(line.split() == ["NoSuchKey", "1"] for line in lines), show.stdout

    shown = orjson.loads((await run_cli_async(["checkpoint", "show", path, "--json"])).stdout)
    assert shown["processed_files"] == 21
    assert shown["total_files"] == 24
    assert shown["error_count"] == 3
    assert shown["errors_by_code"] == {"AccessDenied": 2, "NoSuchKey": 1}
    assert shown["in_use"] is False

    listed = await run_cli_async(["checkpoint", "list", "--base-local-path", str(failed_run.base)])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("\n") == 1
    assert path in listed.stdout and "21/24 files" in listed.stdout and "3 errors" in listed.stdout

    errors = await run_cli_async(["checkpoint", "errors", path])
    rows = [line.split("\t") for line in errors.stdout.splitlines()]
    assert sorted(row[0] for row in rows) == sorted(DENIED | VANISHED)
    assert {row[0]: row[1] for row in rows} == {
        **dict.fromkeys(DENIED, "AccessDenied"),
        **dict.fromkeys(VANISHED, "NoSuchKey"),
    }
    only = await run_cli_async(["checkpoint", "errors", path, "--code", "NoSuchKey", "--json"])
    assert [row["key"] for row in orjson.loads(only.stdout)] == sorted(VANISHED)

    # The run's own summary and report say the same.
    assert "errors by code: AccessDenied 2, NoSuchKey 1" in failed_run.stderr
    report = load_json(failed_run.report)
    assert report["status"] == "completed_with_errors"
    assert report["exit_code"] == 1
    assert report["files_copied"] == 21
    assert report["errors_by_code"] == {"AccessDenied": 2, "NoSuchKey": 1}
    assert set(report["errors"]) == DENIED | VANISHED
    assert report["errors"][sorted(DENIED)[0]].startswith("AccessDenied: ")


async def test_list_finds_archived_and_unreadable_checkpoints(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    (directory / "archive").mkdir(parents=True)
    (directory / "broken.checkpoint").write_text("{not json")
    (directory / "archive" / "b_x.checkpoint.20240101T000000Z").write_text("{}")
    plain = await run_cli_async(["checkpoint", "list", str(directory)])
    assert plain.returncode == 0
    assert "broken.checkpoint  UNREADABLE" in plain.stdout
    assert "[archived]" not in plain.stdout
    every = orjson.loads(
        (await run_cli_async(["checkpoint", "list", str(directory), "--all", "--json"])).stdout
    )
    assert sorted(item["kind"] for item in every) == ["active", "archived"]
    missing = await run_cli_async(["checkpoint", "list", str(tmp_path / "nowhere")])
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and missing.stderr.count("\n") == 1
    a_file = tmp_path / "file"
    a_file.write_text("x")
    not_folder = await run_cli_async(["checkpoint", "list", str(a_file)])
    assert not_folder.returncode == 2 and "is not a directory" in not_folder.stderr


async def test_mark_edits_safely_and_the_next_run_follows(
    failed_run: FailedRun, s3: Any, buckets: Buckets, faulty_proxy: FaultyProxy
) -> None:
    path = failed_run.checkpoint
    before = read_checkpoint(path)
    assert before.processed_files == 21

    # --done on a failed key: it is skipped from now on and its error goes.
    denied = sorted(DENIED)
    done = await run_cli_async(["checkpoint", "mark", str(path), "--done", denied[0]])
    assert done.returncode == 0, done.stderr
    assert "marked 1 keys done (1 changed), cleared 1 errors" in done.stdout
    state = read_checkpoint(path)
    assert state.files[denied[0]] is True and denied[0] not in state.errors
    assert orjson.loads(path.read_bytes())["processed_files"] == 22

    # --pending keeps errors unless --clear-errors.
    kept = await run_cli_async(["checkpoint", "mark", str(path), "--pending", denied[1]])
    assert kept.returncode == 0, kept.stderr
    assert denied[1] in read_checkpoint(path).errors
    cleared = await run_cli_async(
        ["checkpoint", "mark", str(path), "--pending", "data/d5/*", "--clear-errors"]
    )
    assert cleared.returncode == 0, cleared.stderr
    state = read_checkpoint(path)
    assert sorted(VANISHED)[0] not in state.errors
    assert all(state.files[k] is False for k in state.files if k.startswith("data/d5/"))
    pending_d5 = [k for k in state.files if k.startswith("data/d5/")]
    assert len(pending_d5) == 3  # 12 and 19 were done; pending now, with 5

    # A pattern that matches nothing refuses the whole edit; the file is byte for byte the same.
    snapshot = path.read_bytes()
    typo = await run_cli_async(["checkpoint", "mark", str(path), "--done", "data/*", "dta/*"])
    assert typo.returncode == 2
    assert "'dta/*' matches no key" in typo.stderr and typo.stderr.count("\n") == 1
    assert path.read_bytes() == snapshot
    dry = await run_cli_async(["checkpoint", "mark", str(path), "--done", "data/*", "--dry-run"])
    assert "would mark 24 keys done" in dry.stdout
    assert path.read_bytes() == snapshot

    # The copies of the keys marked pending are gone at the destination; the next run (the
    # faults gone) copies exactly the pending keys again and the buckets match.
    for key in pending_d5:
        s3.delete_object(Bucket=buckets.dest, Key=key)
    faulty_proxy.deny.clear()
    faulty_proxy.vanish.clear()
    args = cli_args(failed_run.endpoint, failed_run.base, buckets.source, buckets.dest)
    rerun = await run_cli_async(["s3", "data", *args])
    assert rerun.returncode == 0, rerun.stderr
    assert "copied 4 files" in rerun.stderr  # d5's 3 and the second denied key
    # denied[0] was marked done without being copied: exactly what --done means.
    assert denied[0] not in list_keys(s3, buckets.dest)
    s3.delete_object(Bucket=buckets.source, Key=denied[0])
    assert assert_same_objects(s3, buckets.source, buckets.dest, "data/") == COUNT - 1


async def test_mark_is_refused_while_a_run_holds_the_checkpoint(failed_run: FailedRun) -> None:
    path = failed_run.checkpoint
    snapshot = path.read_bytes()
    lock = CheckpointLock(path)
    lock.acquire()
    try:
        refused = await run_cli_async(["checkpoint", "mark", str(path), "--done", "data/*"])
        assert refused.returncode == 2
        assert f"in use by a running backup (pid {os.getpid()})" in refused.stderr
        assert "it was not changed" in refused.stderr and refused.stderr.count("\n") == 1
        assert path.read_bytes() == snapshot
        shown = await run_cli_async(["checkpoint", "show", str(path)])
        assert f"in use by a running backup (pid {os.getpid()})" in shown.stdout
        listed = await run_cli_async(["checkpoint", "list", str(path.parent)])
        assert "[running]" in listed.stdout
    finally:
        lock.release()
    accepted = await run_cli_async(["checkpoint", "mark", str(path), "--done", "data/*"])
    assert accepted.returncode == 0, accepted.stderr
    state = read_checkpoint(path)
    assert state.processed_files == COUNT and not state.errors
    assert not lock.path.exists()  # the tool released its own lock


async def test_verify_finds_missing_and_wrong_size_objects_from_listings(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, faulty_proxy: FaultyProxy
) -> None:
    for key, body in _objects().items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    s3.put_object(Bucket=buckets.source, Key="elsewhere/not-in-job.bin", Body=b"x")
    base = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)
    backup = await run_cli_async(["s3", "data", *args])
    assert backup.returncode == 0, backup.stderr
    (archived,) = (base / "checkpoints" / "archive").iterdir()

    where = ["--endpoint-url", faulty_proxy.endpoint]
    good = await run_cli_async(["checkpoint", "verify", str(archived), *where])
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"OK: {COUNT} files marked done; 0 missing" in good.stdout
    # Listings only: no HEAD per object, no GET of an object.
    buckets_paths = {f"/{buckets.source}", f"/{buckets.dest}"}
    assert faulty_proxy.requests and all(r.method in ("GET", "HEAD") for r in faulty_proxy.requests)
    assert all(r.path.rstrip("/") in buckets_paths for r in faulty_proxy.requests), (
        faulty_proxy.requests
    )
    assert len(faulty_proxy.requests) <= 6

    missing, wrong = "data/d2/obj-00002.bin", "data/d4/obj-00011.bin"
    s3.delete_object(Bucket=buckets.dest, Key=missing)
    s3.put_object(Bucket=buckets.dest, Key=wrong, Body=b"short")
    bad = await run_cli_async(["checkpoint", "verify", str(archived), *where])
    assert bad.returncode == 1
    assert f"missing    {missing}" in bad.stdout
    assert f"different  {wrong}  (source {100 + 11} bytes, dest 5)" in bad.stdout
    assert "FAILED" in bad.stdout
    as_json = orjson.loads(
        (await run_cli_async(["checkpoint", "verify", str(archived), *where, "--json"])).stdout
    )
    assert as_json["ok"] is False
    assert as_json["missing"] == [missing]
    (entry,) = as_json["different"]
    assert entry == {**entry, "key": wrong, "source_size": 111, "dest_size": 5}
    assert entry["dest_etag"] == hashlib.md5(b"short").hexdigest()

    # Repair: put the checkpoint back in place, mark the bad keys pending, run again.
    live = base / "checkpoints" / f"{buckets.source}_data.checkpoint"
    live.write_bytes(archived.read_bytes())
    fix = await run_cli_async(["checkpoint", "verify", str(live), *where, "--mark-pending"])
    assert fix.returncode == 1
    assert "marked 2 keys pending" in fix.stdout
    rerun = await run_cli_async(["s3", "data", *args])
    assert rerun.returncode == 0, rerun.stderr
    assert "copied 2 files" in rerun.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest, "data/") == COUNT


async def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    nothing = await run_cli_async(["checkpoint", "show", str(tmp_path / "nope.checkpoint")])
    assert nothing.returncode == 2
    assert "no checkpoint at" in nothing.stderr and nothing.stderr.count("\n") == 1
    corrupt = tmp_path / "bad.checkpoint"
    corrupt.write_text('{"backup_id": 1}')
    shown = await run_cli_async(["checkpoint", "errors", str(corrupt)])
    assert shown.returncode == 2 and "is corrupt" in shown.stderr
    both = await run_cli_async(["checkpoint", "mark", str(corrupt), "--done", "--pending", "x"])
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert corrupt.read_text() == '{"backup_id": 1}'


async def test_verify_looks_under_the_recorded_dest_prefix(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    for key, body in list(_objects().items())[:6]:
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    base = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)
    backup = await run_cli_async(["s3", "data", *args, "--dest-prefix", "copies/2024"])
    assert backup.returncode == 0, backup.stderr
    assert all(k.startswith("copies/2024/") for k in list_keys(s3, buckets.dest))
    (archived,) = (base / "checkpoints" / "archive").iterdir()
    where = ["--endpoint-url", s3_server.endpoint]
    good = await run_cli_async(["checkpoint", "verify", str(archived), *where])
    assert good.returncode == 0, good.stdout + good.stderr
    s3.delete_object(Bucket=buckets.dest, Key="copies/2024/d0/obj-00000.bin")
    bad = await run_cli_async(["checkpoint", "verify", str(archived), *where])
    assert bad.returncode == 1
    assert "missing    data/d0/obj-00000.bin" in bad.stdout
