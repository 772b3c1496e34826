"""A part whose connection is reset while its body is being sent is sent again whole, at once.

The fast path sends a body above 1 MiB as an async generator of slices. aiohttp before 3.14.4
(aio-libs/aiohttp#13329, #13330) retried an idempotent request (a PUT) once by itself after a
reset, with that generator half drained: the server got the announced Content-Length but only
the rest of the body, and waited until the read timeout. From 3.14.4 a body that cannot be
replayed is not retried by aiohttp; our retry sends the part again, whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asyncbackup import run_backup
from tests.conftest import Buckets
from tests.helpers import MiB, put_multipart
from tests.proxy import Rule, S3Proxy

PART = 5 * MiB


async def test_a_part_reset_mid_body_is_sent_again_whole(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    put_multipart(s3, buckets.source, "data/big.bin", (PART, PART, 1000))
    body = s3.get_object(Bucket=buckets.source, Key="data/big.bin")["Body"].read()
    s3.put_object(Bucket=buckets.source, Key="data/a-first.bin", Body=os.urandom(2 * MiB))
    # The connection of part 1 is reset once its headers are read, its body still coming.
    proxy.add_rule(Rule("reset_before", method="PUT", query="partNumber=1&", times=1))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        concurrency=1,
        multipart_threshold=PART,
        part_size=PART,
        read_timeout=20,
    )
    assert report.exit_code == 0, report.errors
    assert s3.get_object(Bucket=buckets.dest, Key="data/big.bin")["Body"].read() == body
    first = [
        r
        for r in proxy.requests
        if r.method == "PUT" and "data/big.bin" in r.path and "partNumber=1&" in r.query
    ]
    # the reset, then our retry, whole: no attempt that sent part of the body and waited
    assert [r.fault for r in first] == ["reset_before", None], [(r.fault, r.status) for r in first]
    assert all(r.headers["content-length"] == str(PART) for r in first)
    assert first[1].status == 200
