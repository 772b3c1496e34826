"""Review of what a run tells its operator, through the CLI in a real process: the summary under
--quiet with JSON logs, and a run whose stderr (or stdout) is a pipe nobody reads any more
(``| head -1``, a log shipper that died): the backup's outcome must not depend on it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import FaultyProxy, run_cli_async
from tests.helpers import cli_args


@pytest.fixture
async def proxy(s3_server: S3Server) -> AsyncIterator[FaultyProxy]:
    faulty = FaultyProxy(s3_server.endpoint)
    await faulty.start()
    try:
        yield faulty
    finally:
        await faulty.close()


def _fill(s3: Any, bucket: str, count: int) -> None:
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"data/f{i:03d}.bin", Body=os.urandom(1000 + i))


async def _run_with_closed(which: str, args: Sequence[str]) -> tuple[int, str]:
    """``python -m asyncbackup ARGS`` with ``which`` ("stdout" or "stderr") a pipe whose
    reading end is already closed; the return code and what the other stream got."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    streams: dict[str, Any] = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    streams[which] = write_end
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncbackup",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
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
