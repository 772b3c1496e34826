"""Small objects (at most 1 MiB), held in memory from their GET to their PUT, count against
a budget of bytes in memory (a quarter of the parts': 32 MiB): what a staged run holds does
not grow with ``--concurrency``.

Before, each object in flight could hold up to 1 MiB outside the budget: ``--concurrency``
MiB at most (268 MB of peak RSS at 128 on the benchmark's mixed load, against 119 MB at 16).
Against moto over HTTP, through the recording proxy, which adds latency to every request so
that the copies overlap: the order in which the GETs and PUTs reach it shows how many small
objects were held at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from asyncbackup.partfeed import ByteBudget
from asyncbackup.pipeline import WorkItem
from asyncbackup.retry import RetryPolicy
from asyncbackup.sinks.s3 import S3Sink
from asyncbackup.sources.s3 import IN_MEMORY_LIMIT
from asyncbackup.staged import StagedCopier
from asyncbackup.staging import Staging
from tests.conftest import Buckets
from tests.helpers import MiB, open_test_client, s3_source
from tests.proxy import S3Proxy

SIZE = IN_MEMORY_LIMIT - 1000  # small: in memory from its GET to its PUT


async def test_small_objects_in_flight_hold_no_more_than_the_budget(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    bodies = {f"data/{n}.bin": os.urandom(SIZE) for n in range(6)}
    items = []
    for key, body in bodies.items():
        answer = s3.put_object(Bucket=buckets.source, Key=key, Body=body)
        items.append(WorkItem(key=key, size=len(body), etag=answer["ETag"]))
    staging = Staging(tmp_path, buckets.source)
    staging.prepare()
    budget = ByteBudget(2 * MiB)  # two of them
    parts = ByteBudget(8 * MiB)
    proxy.latency = 0.2  # every copy in flight at once, but for the budget
    async with contextlib.AsyncExitStack() as stack:
        sink = S3Sink(
            await open_test_client(stack, proxy.endpoint),
            buckets.dest,
            RetryPolicy(2),
            checksum="md5",
            multipart_threshold=64 * MiB,
            part_size_for=lambda size: 8 * MiB,
            part_concurrency=2,
            part_budget=parts,
        )
        source = await stack.enter_async_context(s3_source(proxy.endpoint, buckets.source))
        copier = StagedCopier(source, sink, staging, lambda key: key, cleanup=True)
        assert copier.small_budget.limit == 2 * MiB  # a quarter of the parts'
        copier.small_budget = budget
        async with asyncio.TaskGroup() as tg:
            for item in items:
                tg.create_task(copier.copy_once(item))
    assert budget.free == 2 * MiB  # every byte given back
    assert parts.free == 8 * MiB  # and none of the parts' taken
    requests = [r.method for r in proxy.requests if r.path.endswith(".bin")]
    assert requests.count("GET") == 6 and requests.count("PUT") == 6, requests
    # until a PUT ended and gave its object's bytes back, two objects only were fetched
    assert requests.index("PUT") == 2, requests
    for key, body in bodies.items():
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body
