"""Pure logic of the operator tools: error codes, key globs, finding checkpoints, JSON logs,
the bar's counters, and the lock check that never takes the lock."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from asyncbackup.checkpoint import CheckpointState, read_checkpoint
from asyncbackup.checkpoint_lock import CheckpointLock
from asyncbackup.checkpoint_tool import (
    errors_by_code,
    failed_files,
    find_checkpoints,
    format_info,
    inspect_checkpoint,
    lock_holder,
    mark_keys,
    match_keys,
    split_error,
)
from asyncbackup.errors import ConfigError
from asyncbackup.logformat import JsonFormatter
from asyncbackup.progress_bar import ProgressBar
from asyncbackup.progress_line import rate, sizes
from asyncbackup.verify import Endpoints, verify_checkpoint


def _state(**files: bool) -> CheckpointState:
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    state.files = {k.replace("__", "/"): v for k, v in files.items()}
    return state


def test_split_error_and_grouping() -> None:
    assert split_error("AccessDenied: Access Denied") == ("AccessDenied", "Access Denied")
    assert split_error("IntegrityError: size 3: expected 4") == (
        "IntegrityError",
        "size 3: expected 4",
    )
    assert split_error("something went wrong") == ("Unknown", "something went wrong")
    assert split_error("two words: x") == ("Unknown", "two words: x")
    counts = errors_by_code({"a": "NoSuchKey: x", "b": "AccessDenied: y", "c": "AccessDenied: z"})
    assert list(counts.items()) == [("AccessDenied", 2), ("NoSuchKey", 1)]


def test_failed_files_sorted_and_filtered() -> None:
    state = _state(b=False, a=False)
    state.errors = {"b": "NoSuchKey: gone", "a": "AccessDenied: no"}
    assert [f.key for f in failed_files(state)] == ["a", "b"]
    assert [f.key for f in failed_files(state, "NoSuchKey")] == ["b"]


def test_match_keys_globs_whole_keys() -> None:
    keys = ["p/a.txt", "p/sub/b.txt", "p/c.log", "q/[x].txt"]
    assert match_keys(keys, ["p/*.txt"]) == (["p/a.txt", "p/sub/b.txt"], [])
    assert match_keys(keys, ["*.log", "nope*"]) == (["p/c.log"], ["nope*"])
    assert match_keys(keys, ["q/[[]x].txt"]) == (["q/[x].txt"], [])


def test_mark_keeps_the_file_valid_and_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "b_p.checkpoint"
    state = _state(p__a=True, p__b=False, p__c=False)
    state.errors = {"p/b": "AccessDenied: no", "p/c": "NoSuchKey: gone"}
    state.extra = {"multipart_uploads": {"p/x": "upload-id"}}
    path.write_bytes(state.to_json())
    result = mark_keys(path, ["p/b"], done=True)
    assert (result.changed, result.errors_cleared, result.processed_files) == (1, 1, 2)
    data = orjson.loads(path.read_bytes())
    assert data["multipart_uploads"] == {"p/x": "upload-id"}
    assert data["processed_files"] == 2 and data["errors"] == {"p/c": "NoSuchKey: gone"}
    mark_keys(path, ["p/a", "p/c"], done=False)
    after = read_checkpoint(path)
    assert after.files == {"p/a": False, "p/b": True, "p/c": False}
    assert after.errors == {"p/c": "NoSuchKey: gone"}  # --pending keeps errors
    mark_keys(path, ["p/c"], done=False, clear_errors=True)
    assert read_checkpoint(path).errors == {}
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob("*.lock"))


def test_find_checkpoints_kinds(tmp_path: Path) -> None:
    good = _state(x=True).to_json()
    (tmp_path / "archive").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.checkpoint").write_bytes(good)
    (tmp_path / "sub" / "b.checkpoint").write_bytes(good)
    (tmp_path / "a.checkpoint.lock").write_text("1\n")
    (tmp_path / ".a.checkpoint.123.tmp").write_bytes(good)
    (tmp_path / "a.checkpoint.ignored-20240101T000000Z").write_bytes(good)
    (tmp_path / "archive" / "a.checkpoint.20240101T000000Z").write_bytes(good)
    (tmp_path / "notes.txt").write_text("hi")
    active = find_checkpoints(tmp_path)
    assert [p.path.relative_to(tmp_path).as_posix() for p in active] == [
        "a.checkpoint",
        "sub/b.checkpoint",
    ]
    every = find_checkpoints(tmp_path, include_all=True)
    assert sorted(p.kind for p in every) == ["active", "active", "archived", "set-aside"]
    assert all(p.info is not None and p.info.processed_files == 1 for p in every)


def test_lock_holder_sees_another_process_without_taking_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.checkpoint"
    assert lock_holder(path) is None
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from asyncbackup.checkpoint_lock import CheckpointLock; "
            f"CheckpointLock(pathlib.Path({str(path)!r})).acquire(); print('held', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert lock_holder(path) == holder.pid
        assert lock_holder(path) == holder.pid  # looking twice changes nothing
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    assert lock_holder(path) is None  # the lock died with its process
    lock = CheckpointLock(path)
    lock.acquire()  # and it can be taken: looking never kept it
    lock.release()


def test_json_formatter_has_time_level_message_and_fields() -> None:
    record = logging.LogRecord("asyncbackup", logging.WARNING, __file__, 1, "copied %d", (3,), None)
    record.files_done = 3
    data = orjson.loads(JsonFormatter().format(record))
    assert data["level"] == "warning" and data["message"] == "copied 3"
    assert data["files_done"] == 3 and data["time"].endswith("+00:00")
    assert "args" not in data and "msg" not in data


def test_bar_counts_and_takes_back_an_early_finish() -> None:
    bar = ProgressBar(io.StringIO())
    bar.on_listed(2, 200, 1, 50)
    bar.on_done("a", 100)
    bar.on_done("b", 100)
    assert (bar.done_files, bar.total_files, bar.skipped_files) == (2, 2, 1)
    bar._push(force=True)
    assert bar._main.finished  # all listed so far is done...
    bar.on_listed(1, 100, 0, 0)  # ...but the listing goes on
    assert not bar._main.finished
    bar.on_failed("c", "AccessDenied: no")
    bar.on_listing_done()
    assert bar.failed == 1 and bar.description() == "finished (1 already done)"


def test_sizes_and_rates_are_readable() -> None:
    assert sizes(0, 0) == "0/0 B"
    assert sizes(1_500, 3_000_000) == "0.0/3.0 MB"
    assert sizes(410_200_000, 800_000_000) == "410.2/800.0 MB"
    assert rate(52_400_000) == "52.4 MB/s"


async def test_github_checkpoints_are_described_and_not_verified(tmp_path: Path) -> None:
    state = CheckpointState.new(
        source_bucket="github",
        source_path="acme",
        dest_bucket="d",
        config={"api_url": "https://api.github.com"},
    )
    path = tmp_path / "github_acme.checkpoint"
    path.write_bytes(state.to_json())
    info = inspect_checkpoint(path)
    assert info.source == "GitHub acme (https://api.github.com)"
    assert "GitHub acme (https://api.github.com) -> s3://d" in format_info(info)
    with pytest.raises(ConfigError, match="checkpoint of a GitHub backup"):
        await verify_checkpoint(path, Endpoints())


def test_error_counts_by_code_have_thousands_separators_as_every_other_count() -> None:
    """The summary said "job: 0 of 30,000 files done; 30,000 errors" and then "errors by code:
    AccessDenied 30000" (the failure-at-scale review)."""
    from asyncbackup.checkpoint_tool import format_codes

    assert format_codes({"AccessDenied": 30000, "SlowDown": 2}) == "AccessDenied 30,000, SlowDown 2"
