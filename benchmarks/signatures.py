"""Does a real server accept the fast path's signatures? SeaweedFS with authentication on.

moto does not check signatures; SeaweedFS does when it starts with keys in its environment.
This starts it so, then: (1) a wrong secret is refused (auth really is on); (2) ``FastS3`` puts
and gets objects with odd keys, metadata and each checksum mode, none handed back to botocore;
(3) a whole ``run_backup`` with the fast path logs no hand-back. Prints one line per check.

    python -m benchmarks.signatures
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from asyncbackup import run_backup
from asyncbackup.fasts3 import open_fast_s3
from asyncbackup.retry import classify
from asyncbackup.s3client import open_client

from . import workloads as wl
from .install import PEERS_VENV, WORK
from .server import seaweedfs

KEY, SECRET = "bench", "bench-secret"
KEYS = ["plain", "a b/c+d~e", "100%/x", "ünï/日本", "x//y", "q'()!*$,;:@="]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _client(stack: contextlib.AsyncExitStack, endpoint: str) -> Any:
    return await open_client(
        stack,
        role="source",
        profile=None,
        endpoint_url=endpoint,
        region="us-east-1",
        max_pool_connections=8,
        connect_timeout=5,
        read_timeout=30,
    )


async def check(endpoint: str, stage: Path) -> list[str]:
    s3 = wl.client(endpoint)
    for bucket in ("sig-src", "sig-dst"):
        wl.ensure_bucket(s3, bucket)
    failures: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET + "-wrong"
        wrong = await _client(stack, endpoint)
        os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
        try:
            await wrong.put_object(Bucket="sig-src", Key="x", Body=b"x")
            failures.append("a wrong secret was accepted: authentication is off")
        except Exception as exc:
            print(f"wrong secret refused: {classify(exc).code}")
        client = await _client(stack, endpoint)
        fast = await open_fast_s3(
            stack, client, "sig-src", connections=8, connect_timeout=5, read_timeout=30
        )
        assert fast is not None
        for mode in ("md5", "crc32", "sha256", "none"):
            for index, key in enumerate(KEYS):
                body = os.urandom(1000 + index)
                params: dict[str, Any] = {
                    "Bucket": "sig-src",
                    "Key": f"data/{mode}/{key}",
                    "Body": body,
                    "Metadata": {"owner": "me"},
                    "ContentType": "text/plain",
                    "CacheControl": "max-age=60",
                }
                if mode == "md5":
                    params["ContentMD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
                elif mode != "none":
                    params["ChecksumAlgorithm"] = mode.upper()
                await fast.put_object(**params)
                answer = await fast.get_object(Bucket="sig-src", Key=f"data/{mode}/{key}")
                async with answer["Body"] as stream:
                    if await stream.read() != body:
                        failures.append(f"{mode} {key!r}: the body read back differs")
        print(f"fast path: {fast.fast_requests} requests signed here, enabled={fast.enabled}")
        if not fast.enabled or fast.fast_requests != 2 * 4 * len(KEYS):
            failures.append("the server refused fast-path requests")
    collect = _Collect()
    logging.getLogger("asyncbackup").addHandler(collect)
    report = await run_backup(
        source_bucket="sig-src",
        source_path="data",
        dest_bucket="sig-dst",
        base_local_path=stage,
        endpoint_url=endpoint,
        on_complete="delete",
    )
    logging.getLogger("asyncbackup").removeHandler(collect)
    print(
        f"run_backup: {report.status}, {report.copied_files} copied, warnings: {collect.messages}"
    )
    if report.exit_code != 0 or any("fast path off" in m for m in collect.messages):
        failures.append("run_backup handed the fast path back or failed")
    return failures


def main() -> int:
    weed = PEERS_VENV / "bin" / "weed"
    if not weed.exists():
        print("SeaweedFS is not installed: run python -m benchmarks.install", file=sys.stderr)
        return 2
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(WORK / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(WORK / "no-credentials"),
    )
    stage = WORK / "sig-stage"
    with seaweedfs(weed, WORK / "seaweedfs-auth", WORK / "seaweedfs-auth.log", (KEY, SECRET)) as ep:
        failures = asyncio.run(check(ep, stage))
    for failure in failures:
        print(f"FAILED: {failure}")
    print("all signatures accepted" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
