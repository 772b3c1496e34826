"""Throttling, slow networks and the bandwidth limit, with the faults injected for real by the
loopback proxy in front of the S3 server (``tests/proxy.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_backup
from tests.conftest import Buckets
from tests.proxy import Rule, S3Proxy

KiB = 1024


@pytest.mark.parametrize("first_put_fails", [False, True], ids=["streamed", "from-staging"])
async def test_a_bandwidth_limited_upload_never_pauses_long_enough_for_s3_to_drop_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, first_put_fails: bool
) -> None:
    """S3 answers 400 RequestTimeout when a request's body pauses for about 20 s. An object
    of 1 MiB or more streamed in one PUT went out in 1 MiB pieces, each one waiting for its
    whole share of --max-bandwidth first: at 50KB/s (or 1MB/s shared by 32 workers) every
    such PUT paused 20 s between pieces, was refused, and so was each retry. Here the pause
    allowed is 2 s and the limit 256 KiB/s: a 1 MiB piece waited 4 s."""
    body = os.urandom(1536 * KiB)
    s3.put_object(Bucket=buckets.source, Key="bw/one", Body=body)
    if first_put_fails:  # the streamed PUT fails: the staged file is PUT instead
        proxy.add_rule(Rule("internal", method="PUT", path=r"/bw/one$", times=1))
    idle = proxy.add_rule(Rule(None, method="PUT", path=r"/bw/one$", body_idle=2.0))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="bw",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        max_bandwidth=256 * KiB,
        max_attempts=1,
    )
    assert report.exit_code == 0, report.errors
    assert idle.hits >= 1
    puts = proxy.seen(method="PUT", path=r"/bw/one$")
    assert [r.status for r in puts] == ([500, 200] if first_put_fails else [200])
    assert s3.get_object(Bucket=buckets.dest, Key="bw/one")["Body"].read() == body
