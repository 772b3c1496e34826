"""The aiobotocore client is made on the first request that needs it (``s3client.LazyClient``):
a run whose requests all take the fast path never imports aiobotocore or aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Buckets, S3Server
from tests.helpers import (
    assert_same_objects,
    cli_args,
    numbered_objects,
    open_test_client,
    put_objects,
)

_RUN = """
import sys
from asyncbackup.cli import main_s3
code = main_s3(sys.argv[1:])
print(code, "aiohttp" in sys.modules, "aiobotocore" in sys.modules)
"""


def _run(args: list[str]) -> tuple[int, bool, bool]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    code, aiohttp, aiobotocore = done.stdout.splitlines()[-1].split()  # after a plan
    return int(code), aiohttp == "True", aiobotocore == "True"


def test_a_run_on_the_fast_path_never_imports_aiobotocore(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(20))
    base = [*cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest), "--quiet"]
    staged = _run(["data", *base])
    assert staged == (0, False, False)
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 20
    direct = _run(["data", *base, "--direct", "--ignore-checkpoints"])
    assert direct == (0, False, False)
    # Off the fast path, botocore sends everything: the aiobotocore client is made.
    slow = _run(["data", *base, "--no-fast-path", "--ignore-checkpoints"])
    assert slow == (0, True, True)


def test_an_incremental_run_on_the_fast_path_never_imports_aiobotocore(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """``--skip-existing`` lists the destination and asks its encryption (an upload started
    and aborted) through the fast path: a nightly run with nothing to copy made the
    aiobotocore client for them, a third of its time on a small bucket."""
    put_objects(s3, buckets.source, numbered_objects(20))
    base = [*cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest), "--quiet"]
    assert _run(["data", *base, "--skip-existing"]) == (0, False, False)
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 20
    assert _run(["data", *base, "--skip-existing"]) == (0, False, False)  # nothing copied
    assert _run(["data", *base, "--skip-existing", "--dry-run"])[0] == 0
    uploads = s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", [])
    assert uploads == []  # each run's upload was aborted


async def test_the_aiobotocore_client_is_made_once_on_first_use(
    s3_server: S3Server, s3: Any, buckets: Buckets
) -> None:
    s3.put_object(Bucket=buckets.source, Key="k", Body=b"v")
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, s3_server.endpoint)
        assert not client.made
        made, make = [], client._make

        async def counted() -> Any:
            made.append(1)
            return await make()

        client._make = counted
        assert client.meta.region_name == "us-east-1"  # botocore's half, at once
        heads = await asyncio.gather(
            *(client.head_object(Bucket=buckets.source, Key="k") for _ in range(5))
        )
        assert client.made and {h["ContentLength"] for h in heads} == {1}
        assert len(made) == 1  # five first calls at once: one client
        first = await client.aio()
        assert await client.aio() is first
