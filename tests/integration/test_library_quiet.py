"""``await run_backup(...)`` never prints, also in a program that configured no logging.

Python prints the warnings of a logger nobody gave a handler to on stderr (its "last
resort" handler), so a library that logs warnings and adds no handler of its own prints them.
"""

from __future__ import annotations

import json
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


FORWARDED = """
import json, logging
from asyncbackup.workerpool import forwarded_logger

names = ("botocore.credentials", "asyncio", "asyncbackup", "asyncbackup.staging")
for name in names:  # nobody configured logging: nothing may be printed
    forwarded_logger(name).warning("from a worker: %s", name)
seen = []
handler = logging.Handler()
handler.emit = lambda record: seen.append((record.name, record.getMessage()))
logging.getLogger("asyncbackup").addHandler(handler)
for name in names:  # an embedding program's (or the CLI's) handler gets every one
    forwarded_logger(name).warning("from a worker: %s", name)
print(json.dumps(seen))
"""


def test_a_worker_log_record_of_another_library_is_not_printed_by_the_library() -> None:
    """A --processes worker forwards its warnings, botocore's and asyncio's too, to the main
    process, which logs them under their names. A logger outside ``asyncbackup`` has no
    handler in a program that configured no logging: Python's last resort printed them."""
    done = subprocess.run(
        [sys.executable, "-c", FORWARDED], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    seen = json.loads(done.stdout)
    assert [message for _, message in seen] == [
        f"from a worker: {name}"
        for name in ("botocore.credentials", "asyncio", "asyncbackup", "asyncbackup.staging")
    ]
    assert seen[0][0] == "asyncbackup.worker.botocore.credentials"
