"""Weeks of scheduled runs (a review): a backup run every night or every hour, some of the
runs killed, and what each run leaves for the next one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asyncbackup import run_backup
from asyncbackup.staging import Staging
from tests.conftest import Buckets, S3Server
from tests.helpers import numbered_objects, put_objects
from tests.integration.test_embedding import _options


async def test_a_crashed_run_of_the_same_pid_leaves_no_temporary_file_for_good(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(3))
    # A nightly job in a container is pid 1 at every run: a run killed mid-download (the OOM
    # killer, a deadline) left its partial download under the pid this run has now.
    tmp = tmp_path / ".tmp"
    tmp.mkdir(mode=0o700)
    crashed = tmp / f"{os.getpid()}-0badc0de-7"
    crashed.write_bytes(b"x" * 4096)
    # another job of this process, sharing the staging path, has a download in flight
    other = Staging(tmp_path, buckets.source)
    in_flight = other.temp_path()
    in_flight.write_bytes(b"y")
    report = await run_backup(**_options(s3_server, buckets, tmp_path, cleanup=True))
    assert report.status == "completed" and report.copied_files == 3
    # "Crash, SIGKILL, power loss ... Run again. ... staging temporaries removed."
    assert not crashed.exists()
    assert in_flight.exists()
