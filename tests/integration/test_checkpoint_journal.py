"""The checkpoint journal in real runs: SIGKILLed mid-run, resumed, inspected, edited.

Every run is the CLI in its own process against the S3 server, through a loopback proxy that
slows each request (so a kill lands mid-run) and records what was uploaded.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup.checkpoint import CheckpointState, load_checkpoint, read_checkpoint
from asyncbackup.journal import journal_path
from tests.conftest import Buckets
from tests.helpers import assert_same_objects, bucket_digest, cli_args, numbered_objects
from tests.proxy import S3Proxy
from tests.reliability import (
    checkpoint_file,
    kill,
    one_error_line,
    put_parallel,
    run_cli,
    start_cli,
    wait_for,
)

COUNT = 150
TOOL = [sys.executable, "-m", "asyncbackup", "checkpoint"]


@pytest.fixture
def job(proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path) -> tuple[list[str], Path]:
    put_parallel(s3, buckets.source, numbered_objects(COUNT, size=64))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--quiet", "--concurrency", "2", "--checkpoint-interval", "1"]
    return args, checkpoint_file(tmp_path, buckets.source, "data")


def jq(*args: str) -> str:
    result = subprocess.run(["jq", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=60)


def kill_mid_run(proxy: S3Proxy, args: list[str], path: Path, done: int = 20) -> CheckpointState:
    """Start a run, SIGKILL it once ``done`` files are recorded; the state it left."""
    proxy.latency = 0.03
    process = start_cli(args)
    try:
        wait_for(
            lambda: path.exists() and read_checkpoint(path).processed_files >= done, timeout=60
        )
    finally:
        kill(process, signal.SIGKILL)
        process.communicate(timeout=30)
    proxy.latency = 0.0
    return read_checkpoint(path)


def uploaded_since(proxy: S3Proxy, start: int, bucket: str) -> list[str]:
    """The keys PUT to ``bucket`` since the proxy had seen ``start`` requests."""
    prefix = f"/{bucket}/"
    return [
        r.path[len(prefix) :]
        for r in proxy.seen()[start:]
        if r.method == "PUT" and r.path.startswith(prefix)
    ]


def done_keys(state: CheckpointState) -> set[str]:
    return {key for key, done in state.files.items() if done}


def test_sigkill_leaves_valid_json_and_a_journal_the_resume_applies(
    proxy: S3Proxy, job: tuple[list[str], Path], buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    args, path = job
    state = kill_mid_run(proxy, args, path)
    # The JSON file is valid for jq, and lags behind: the later flushes are in the journal.
    json_done = int(jq(".files | map_values(select(.)) | length", str(path)))
    assert int(jq(".processed_files", str(path))) == json_done
    loaded = load_checkpoint(path)
    assert loaded.journal and loaded.journal_batches > 0
    done = done_keys(state)
    assert len(done) > json_done and len(done) < COUNT, (json_done, len(done))
    # Everything marked done in JSON + journal is at the destination, intact.
    source, dest = bucket_digest(s3, buckets.source), bucket_digest(s3, buckets.dest)
    assert all(dest.get(key) == source[key] for key in done)

    before = len(proxy.seen())
    report = tmp_path / "report.json"
    resumed = run_cli([*args, "--report", str(report)])
    assert resumed.returncode == 0, resumed.stderr
    again = uploaded_since(proxy, before, buckets.dest)
    assert not done & set(again), "a file the journal marked done was copied again"
    assert sorted(again) == sorted(set(source) - done)
    summary = orjson.loads(report.read_bytes())
    assert (summary["skipped_files"], summary["copied_files"]) == (len(done), COUNT - len(done))
    assert assert_same_objects(s3, buckets.source, buckets.dest) == COUNT
    assert not list(path.parent.glob("*.journal"))  # folded at the start, compacted at the end


def test_torn_last_line_after_a_kill_is_ignored_by_the_resume(
    proxy: S3Proxy, job: tuple[list[str], Path], buckets: Buckets, s3: Any
) -> None:
    args, path = job
    state = kill_mid_run(proxy, args, path)
    journal = journal_path(path)
    with journal.open("ab") as handle:  # the kill landed in the middle of an append
        handle.write(b'{"files": {"data/d0/obj-00000.bin": tr')
    assert read_checkpoint(path).files == state.files
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == COUNT


def test_show_and_mark_after_a_crash_see_the_journal(
    proxy: S3Proxy, job: tuple[list[str], Path], buckets: Buckets, s3: Any
) -> None:
    args, path = job
    state = kill_mid_run(proxy, args, path)
    json_only = load_checkpoint(path, journal=False).state
    only_in_journal = sorted(done_keys(state) - done_keys(json_only))
    assert only_in_journal, "the kill must leave progress only the journal records"
    redo = only_in_journal[0]
    # mark folds the journal into the same write as the edit
    marked = tool("mark", str(path), "--pending", redo)
    assert marked.returncode == 0, marked.stderr
    assert not journal_path(path).exists()
    on_disk = orjson.loads(path.read_bytes())
    assert on_disk["files"][redo] is False
    assert {k for k, v in on_disk["files"].items() if v} == done_keys(state) - {redo}
    # another crash, then show: it reports the journaled state and folds it in for jq
    state = kill_mid_run(proxy, args, path, done=len(done_keys(state)) + 10)
    shown = tool("show", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    info = orjson.loads(shown.stdout)
    assert info["processed_files"] == state.processed_files and info["journal_folded"] > 0
    assert not journal_path(path).exists()
    assert int(jq(".processed_files", str(path))) == state.processed_files
    text = tool("show", str(path))
    assert "journal" not in text.stdout  # nothing left to fold

    before = len(proxy.seen())
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    again = set(uploaded_since(proxy, before, buckets.dest))
    assert again and not again & done_keys(state)
    assert assert_same_objects(s3, buckets.source, buckets.dest) == COUNT


def test_hand_edit_after_a_crash_is_refused_then_kept_with_discard_journal(
    proxy: S3Proxy, job: tuple[list[str], Path], buckets: Buckets, s3: Any
) -> None:
    args, path = job
    state = kill_mid_run(proxy, args, path)
    data = orjson.loads(path.read_bytes())
    skip = sorted(key for key, done in state.files.items() if not done)[-1]
    data["files"][skip] = True  # the operator skips a file with vi, the journal still there
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    edited, journal = path.read_bytes(), journal_path(path).read_bytes()
    refused = run_cli(args)
    assert refused.returncode == 2
    line = one_error_line(refused.stderr)
    assert "was changed after" in line and "checkpoint compact" in line
    assert "--discard-journal" in line
    assert (path.read_bytes(), journal_path(path).read_bytes()) == (edited, journal)
    assert tool("show", str(path)).returncode == 2

    kept = tool("compact", str(path), "--discard-journal")
    assert kept.returncode == 0, kept.stderr
    assert "set the journal aside" in kept.stdout and not journal_path(path).exists()
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    dest = bucket_digest(s3, buckets.dest)
    assert skip not in dest  # the edit was honoured
    source = bucket_digest(s3, buckets.source)
    assert {key: source[key] for key in source if key != skip} == dest


def test_a_stopped_run_compacts_and_leaves_no_journal(
    proxy: S3Proxy, job: tuple[list[str], Path], buckets: Buckets
) -> None:
    args, path = job
    proxy.latency = 0.03
    process = start_cli(args)
    try:
        wait_for(lambda: journal_path(path).exists(), timeout=60)
        wait_for(lambda: read_checkpoint(path).processed_files >= 10, timeout=60)
    finally:
        kill(process, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert not journal_path(path).exists()
    on_disk = orjson.loads(path.read_bytes())
    assert on_disk["processed_files"] == read_checkpoint(path).processed_files >= 10
    assert sum(on_disk["files"].values()) == on_disk["processed_files"]
