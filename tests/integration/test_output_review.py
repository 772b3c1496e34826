"""Review of what a run tells its operator, through the CLI in a real process: the summary under
--quiet with JSON logs, and a run whose stderr (or stdout) is a pipe nobody reads any more
(``| head -1``, a log shipper that died): the backup's outcome must not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import FaultyProxy, run_cli_async
from tests.helpers import cli_args, list_keys, load_json, run_on_terminal
from tests.reliability import tmpfs


def _fill(s3: Any, bucket: str, count: int) -> None:
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"data/f{i:03d}.bin", Body=os.urandom(1000 + i))


async def _run_with_closed(which: str, args: Sequence[str]) -> tuple[int, str]:
    """The ``asyncbackup ARGS`` console command with ``which`` ("stdout" or "stderr") a pipe whose
    reading end is already closed; the return code and what the other stream got."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    streams: dict[str, Any] = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    streams[which] = write_end
    # As in production: stdout and stderr buffered (the test run may set PYTHONUNBUFFERED).
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from asyncbackup.cli import console; console()",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            **streams,
        )
    finally:
        os.close(write_end)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, (out if which == "stderr" else err).decode()


async def test_quiet_with_json_logs_still_gives_the_summary_record(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    # README: --quiet is "warnings, errors and the summary only"; with --log-format json the
    # summary of a clean run is an info record, which --quiet used to drop: nothing at all.
    _fill(s3, buckets.source, 3)
    args = cli_args(s3_server.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    result = await run_cli_async(
        ["s3", "data", *args, "--quiet", "--log-format", "json", "--progress-interval", "0.05"]
    )
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stderr.splitlines()]
    summaries = [r for r in records if r["message"] == "summary"]
    assert len(summaries) == 1, result.stderr
    assert summaries[0]["status"] == "completed" and summaries[0]["files_copied"] == 3
    # Still quiet: no progress records, no other info records.
    assert all(r["message"] == "summary" or r["level"] != "info" for r in records), records


async def test_a_closed_stderr_changes_neither_the_copy_nor_the_report(
    s3: Any, buckets: Buckets, tmp_path: Path, faulty_proxy: FaultyProxy
) -> None:
    # `backup-s3 ... 2>&1 | head -1`, or a log shipper that died: every write to stderr fails
    # with EPIPE. The progress line used to raise inside the run (nothing copied, exit 1 from
    # an uncaught traceback), and the summary's failed print kept --report from being written.
    _fill(s3, buckets.source, 4)
    faulty_proxy.delay = 0.05
    report = tmp_path / "report.json"
    report.write_bytes(b'{"status": "an earlier run"}\n')
    args = cli_args(faulty_proxy.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    code, _ = await _run_with_closed(
        "stderr",
        [
            "s3",
            "data",
            *args,
            "--concurrency",
            "1",
            "--progress-interval",
            "0.02",
            "--report",
            str(report),
        ],
    )
    assert len(list_keys(s3, buckets.dest)) == 4
    data = load_json(report)
    assert data["status"] == "completed" and data["files_copied"] == 4
    assert code == 0

    # A run that cannot start: its one-line error cannot be written either, and still the
    # exit code is the documented 2 (not 1, "some objects failed", from a traceback) and
    # --report says why.
    bad = cli_args(faulty_proxy.endpoint, tmp_path / "bad", "no-such-bucket-z", buckets.dest)
    code, _ = await _run_with_closed("stderr", ["s3", "data", *bad, "--report", str(report)])
    assert code == 2
    failed = load_json(report)
    assert failed["status"] == "failed" and "no-such-bucket-z" in failed["error"]


async def test_a_dry_run_into_a_closed_pipe_is_not_an_unexpected_fatal_error(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    # `asyncbackup s3 ... --dry-run | head -1`: once head is gone, the list of keys cannot be
    # written. That used to be "unexpected BrokenPipeError ... the checkpoint is valid", exit 3
    # (a fatal error midway, per the README) and a --report saying the dry run failed.
    for i in range(25):  # long keys: more than stdout's buffer, so a print itself fails
        s3.put_object(Bucket=buckets.source, Key=f"data/{i:02d}-" + "k" * 900, Body=b"x")
    report = tmp_path / "plan.json"
    args = cli_args(s3_server.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    code, stderr = await _run_with_closed(
        "stdout", ["s3", "data", *args, "--dry-run", "--report", str(report)]
    )
    assert "unexpected" not in stderr and "error" not in stderr, stderr
    assert code == 120  # as Python itself when it cannot write stdout; not 3
    plan = load_json(report)
    assert plan["copy_files"] == 25
    assert list_keys(s3, buckets.dest) == []


async def test_a_dumb_terminal_gets_the_plain_progress_line(
    s3: Any, buckets: Buckets, tmp_path: Path, faulty_proxy: FaultyProxy
) -> None:
    # TERM=dumb (an Emacs shell, some CI consoles): a terminal, but rich does not redraw on it
    # and draws the bar once, at the end - the whole run used to show no progress at all.
    _fill(s3, buckets.source, 3)
    faulty_proxy.delay = 0.2
    args = cli_args(faulty_proxy.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    extra = ["--concurrency", "1", "--progress-interval", "0.2"]
    code, raw, _ = await run_on_terminal(["data", *args, *extra], "dumb")
    screen = raw.decode(errors="replace")
    assert code == 0, screen
    lines = [line for line in screen.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 2, screen  # while it ran, not only at the end
    assert "\x1b[" not in screen  # no cursor movement a dumb terminal cannot do
    assert "completed: copied 3 files" in screen


async def test_a_report_that_cannot_be_written_does_not_leave_the_last_runs_in_place(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    # README: "the file never keeps an earlier run's result for a monitor to read as this
    # one's". The report's disk fills up during the run: the new report cannot be written, and
    # the earlier run's (here, a failed one's) used to stay in its place.
    _fill(s3, buckets.source, 2)
    args = cli_args(s3_server.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    with tmpfs(tmp_path / "reports", "size=1m") as where:
        report = where / "report.json"
        report.write_bytes(b'{"status": "failed", "exit_code": 3}\n')
        filler = where / "filler"
        with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:  # until the disk is full
                handle.write(b"x" * 4096)
        result = await run_cli_async(["s3", "data", *args, "--report", str(report)])
        assert len(list_keys(s3, buckets.dest)) == 2
        assert "cannot write the report" in result.stderr
        assert not report.exists() or b"failed" not in report.read_bytes()
        assert result.returncode == 0, result.stderr  # the backup itself went well
