"""``await run_backup(...)`` never prints, also in a program that configured no logging.

Python prints the warnings of a logger nobody gave a handler to on stderr (its "last
resort" handler), so a library that logs warnings and adds no handler of its own prints them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Buckets
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel

PROGRAM = """
import asyncio, sys
from pathlib import Path
from asyncbackup import run_backup

async def main() -> None:
    report = await run_backup(
        source_bucket=sys.argv[1], source_path="q", dest_bucket=sys.argv[2],
        base_local_path=Path(sys.argv[3]), endpoint_url=sys.argv[4], max_attempts=1,
    )
    assert report.status == "completed", report
asyncio.run(main())
"""


def test_run_backup_prints_nothing_without_logging_configured(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, {f"q/{i}": b"x" * 10 for i in range(5)})
    # One reset: the object is tried again, with a warning logged ("retrying q/2 ...").
    reset = proxy.add_rule(Rule("reset_before", method="GET", path=r"/q/2$", times=1))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PROGRAM,
            buckets.source,
            buckets.dest,
            str(tmp_path),
            proxy.endpoint,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert reset.hits == 1
    assert done.stdout == "" and done.stderr == ""
