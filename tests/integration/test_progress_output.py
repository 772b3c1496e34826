"""What a run shows while it goes and when it ends, through the CLI in a real process: the live
bar on a pseudo terminal, the plain line elsewhere, --quiet, --log-format json and --report.

A proxy slows every request down so that a run lasts long enough for progress to show.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import FaultyProxy, run_cli_async
from tests.helpers import cli_args, list_keys, load_json, run_on_terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LINE = re.compile(r"^progress: (\d+)/(\d+)(\+?) files, ")


def _fill(s3: Any, bucket: str, count: int) -> None:
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"data/f{i:03d}.bin", Body=os.urandom(1000 + i))


async def test_live_bar_on_a_terminal(
    s3: Any, buckets: Buckets, tmp_path: Path, faulty_proxy: FaultyProxy
) -> None:
    _fill(s3, buckets.source, 12)
    faulty_proxy.delay = 0.05
    args = cli_args(faulty_proxy.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    code, raw, out = await run_on_terminal(["data", *args, "--concurrency", "2"], "xterm-256color")
    assert code == 0, raw.decode(errors="replace")
    assert out == b""  # progress and summary go to stderr
    screen = ANSI.sub("", raw.decode(errors="replace"))
    assert "\x1b[" in raw.decode(errors="replace")  # drawn in place with terminal controls
    assert "12/12 files" in screen
    assert re.search(r"\b100%", screen), screen[-2000:]
    for part in ("files/s", "ETA", "0 errors"):
        assert part in screen, part
    assert screen.count("files/s") >= 2  # redrawn while the run went on, not once at the end
    assert "progress: " not in screen  # the plain line is for non-terminals only
    assert "completed: copied 12 files" in screen
    assert len(list_keys(s3, buckets.dest)) == 12


async def test_plain_line_every_interval_when_not_a_terminal(
    s3: Any, buckets: Buckets, tmp_path: Path, faulty_proxy: FaultyProxy
) -> None:
    _fill(s3, buckets.source, 3)
    faulty_proxy.delay = 0.3  # one object every ~0.6 s; a line every 0.2 s comes anyway
    base = tmp_path / "scratch"
    args = cli_args(faulty_proxy.endpoint, base, buckets.source, buckets.dest)
    result = await run_cli_async(
        ["s3", "data", *args, "--concurrency", "1", "--progress-interval", "0.2"]
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr  # no terminal: no bar, no control codes
    lines = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    done = [int(match.group(1)) for line in lines if (match := LINE.match(line))]
    assert len(done) == len(lines)
    # More lines than objects: the line is a heartbeat, not one per completed object.
    assert len(lines) >= 6, result.stderr
    assert done == sorted(done) and done[-1] <= 3
    assert any(a == b for a, b in itertools.pairwise(done))  # a stall still reports
    assert "completed: copied 3 files" in result.stderr

    # --quiet: no progress and no info logs, only the summary.
    quiet = await run_cli_async(
        [
            "s3",
            "data",
            *cli_args(faulty_proxy.endpoint, tmp_path / "q", buckets.source, buckets.dest),
            "--ignore-checkpoints",
            "--progress-interval",
            "0.1",
            "--quiet",
        ]
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "progress" not in quiet.stderr
    assert " INFO " not in quiet.stderr
    assert quiet.stderr.startswith("completed: copied 3 files")


async def test_log_format_json_makes_every_stderr_line_a_record(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, faulty_proxy: FaultyProxy
) -> None:
    _fill(s3, buckets.source, 3)
    faulty_proxy.delay = 0.15
    report = tmp_path / "report.json"
    args = cli_args(faulty_proxy.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    result = await run_cli_async(
        [
            "s3",
            "data",
            *args,
            "--concurrency",
            "1",
            "--log-format",
            "json",
            "--progress-interval",
            "0.2",
            "--report",
            str(report),
        ]
    )
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert records
    for record in records:
        assert {"time", "level", "message", "logger"} <= record.keys()
    progress = [r for r in records if r["message"] == "progress"]
    assert progress and all(r["level"] == "info" for r in progress)
    assert {"files_done", "files_total", "bytes_done", "errors"} <= progress[-1].keys()
    (summary,) = [r for r in records if r["message"] == "summary"]
    assert summary["files_copied"] == 3
    assert summary["status"] == "completed"
    assert summary["errors_by_code"] == {}
    assert any(r["message"].startswith("backup ") and "complete" in r["message"] for r in records)
    assert load_json(report)["files_copied"] == 3

    # A run that cannot start says so in one JSON record too.
    bad = await run_cli_async(
        [
            "s3",
            "data",
            *cli_args(s3_server.endpoint, tmp_path / "b", "no-such-bucket-z", buckets.dest),
            "--log-format",
            "json",
        ]
    )
    assert bad.returncode == 2
    (line,) = bad.stderr.splitlines()
    record = orjson.loads(line)
    assert record["level"] == "error" and record["exit_code"] == 2
    assert "no-such-bucket-z" in record["message"]


async def test_report_holds_the_summary(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    _fill(s3, buckets.source, 5)
    report = tmp_path / "out" / "report.json"
    args = cli_args(s3_server.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)

    # A report that could not be written is refused before anything is copied.
    early = await run_cli_async(["s3", "data", *args, "--report", str(report)])
    assert early.returncode == 2
    assert "--report" in early.stderr and early.stderr.count("\n") == 1
    assert list_keys(s3, buckets.dest) == []

    report.parent.mkdir()
    result = await run_cli_async(["s3", "data", *args, "--report", str(report)])
    assert result.returncode == 0, result.stderr
    data = load_json(report)
    assert data["status"] == "completed" and data["exit_code"] == 0
    assert data["files_copied"] == 5 and data["copied_files"] == 5
    assert data["bytes_copied"] == sum(1000 + i for i in range(5))
    assert data["duration_seconds"] > 0
    assert data["bytes_per_second"] > 0 and data["files_per_second"] > 0
    assert data["error_count"] == 0 and data["errors"] == {} and data["errors_by_code"] == {}
    assert data["job_files_done"] == data["job_files_total"] == 5
    assert Path(data["archived_checkpoint"]).is_file()
    assert "finished_at" in data
    # The summary on stderr says the same.
    assert "completed: copied 5 files" in result.stderr
    assert "job: 5 of 5 files done" in result.stderr
