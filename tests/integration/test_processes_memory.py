"""``--processes N`` keeps the 128 MiB budget of parts held in memory for the whole run: each
process built a budget of its own, so two processes held up to 256 MiB of parts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import Buckets
from tests.helpers import assert_same_objects, cli_args
from tests.integration.test_processes import hold_listing_until_workers_ready
from tests.proxy import Recorded, Rule, S3Proxy
from tests.reliability import run_cli

MiB = 1024 * 1024
_PART = 5 * MiB
_BUDGET = 128 * MiB


def _most_at_once(records: list[Recorded]) -> int:
    """The most of ``records`` the proxy held at the same time."""
    moments = sorted(
        [(r.started, 1) for r in records] + [(r.finished, -1) for r in records],
        key=lambda moment: (moment[0], moment[1]),  # an end before a start at the same time
    )
    most = now = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def test_two_processes_hold_no_more_parts_than_the_budget_in_all(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    # eight objects of four parts, four a process, each sending its four parts at once:
    # 160 MiB of parts if each process held all it could send
    body = os.urandom(4 * _PART)
    keys = [f"data/{n}.bin" for n in range(8)]
    for key in keys:
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    hold_listing_until_workers_ready(proxy, buckets.dest, 1)
    # every part's upload waits at the destination: its bytes stay in the sender's memory
    proxy.add_rule(Rule(None, method="PUT", query="partNumber", delay=4.0))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    # botocore: the fast path's pool (concurrency + 8) keeps parts waiting for a connection
    # in memory, out of the proxy's sight
    args += ["--processes", "2", "--concurrency", "8", "--no-fast-path", "--debug"]
    args += ["--multipart-threshold", "5MiB", "--part-size", "5MiB", "--cleanup"]
    done = run_cli(args, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "copied 4 objects in the main process and 4 in worker pid" in done.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(keys)
    parts = [r for r in proxy.seen(method="PUT") if "partNumber" in r.query]
    assert len(parts) == 4 * len(keys)
    held = _most_at_once(parts)
    assert held * _PART <= _BUDGET, f"{held} parts of 5 MiB held at once"
