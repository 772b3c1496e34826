"""Test helpers: fill a bucket, compare two buckets, run the CLI as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from asyncbackup import BackupReport, run_backup
from asyncbackup.retry import RetryPolicy
from asyncbackup.s3client import open_client
from asyncbackup.sources.s3 import S3Source
from tests.conftest import Buckets

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def put_objects(client: Any, bucket: str, objects: Mapping[str, bytes], **extra: Any) -> None:
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body, **extra)


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", ()))
    return keys


def bucket_digest(client: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    """key -> sha256 of the body, for every object under ``prefix``."""
    out: dict[str, str] = {}
    for key in list_keys(client, bucket, prefix):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        out[key] = hashlib.sha256(body).hexdigest()
    return out


def assert_same_objects(client: Any, source: str, dest: str, prefix: str = "") -> int:
    src = bucket_digest(client, source, prefix)
    dst = bucket_digest(client, dest, prefix)
    assert src == dst, {
        "missing": sorted(set(src) - set(dst))[:10],
        "extra": sorted(set(dst) - set(src))[:10],
        "different": sorted(k for k in src if k in dst and src[k] != dst[k])[:10],
    }
    return len(src)


def numbered_objects(count: int, prefix: str = "data/", size: int = 256) -> dict[str, bytes]:
    return {f"{prefix}d{i % 7}/obj-{i:05d}.bin": os.urandom(size + i % 13) for i in range(count)}


def cli_args(endpoint: str, base: Path, source: str, dest: str, *extra: str) -> list[str]:
    return [
        "--source-bucket",
        source,
        "--dest-bucket",
        dest,
        "--base-local-path",
        str(base),
        "--endpoint-url",
        endpoint,
        *extra,
    ]


def run_cli(
    args: Sequence[str], *, command: str = "backup-s3", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a real process (``python -m asyncbackup`` or ``backup-s3``)."""
    if command == "backup-s3":
        argv = [
            sys.executable,
            "-c",
            "from asyncbackup.cli import console_s3; console_s3()",
            *args,
        ]
    else:
        argv = [sys.executable, "-m", "asyncbackup", "s3", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=os.environ)


def load_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def put_multipart(client: Any, bucket: str, key: str, sizes: Sequence[int], **create: Any) -> str:
    """Upload ``key`` as a multipart object with parts of ``sizes`` (``create``: more
    CreateMultipartUpload parameters); return its ETag."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **create)
    parts = []
    for number, size in enumerate(sizes, start=1):
        answer = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=os.urandom(size),
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    done = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return str(done["ETag"])


async def open_test_client(
    stack: contextlib.AsyncExitStack, endpoint: str | None, region: str = "us-east-1"
) -> Any:
    """One of our aiobotocore clients on ``endpoint`` (None: AWS's), living as long as
    ``stack``."""
    return await open_client(
        stack,
        role="source",
        profile=None,
        endpoint_url=endpoint,
        region=region,
        max_pool_connections=4,
        connect_timeout=2,
        read_timeout=5,
    )


@contextlib.asynccontextmanager
async def s3_source(endpoint: str, bucket: str, attempts: int = 2) -> AsyncIterator[S3Source]:
    """An ``S3Source`` of ``bucket`` with its own client."""
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, endpoint)
        yield S3Source(client, bucket, RetryPolicy(attempts))


async def backup_data(
    buckets: Buckets, tmp_path: Path, endpoint: str, **options: Any
) -> BackupReport:
    """``run_backup`` of the source bucket's ``data`` folder to the destination bucket over
    ``endpoint`` (moto, or a proxy in front of it), staged under ``tmp_path / "stage"``."""
    settings: dict[str, Any] = {
        "source_bucket": buckets.source,
        "source_path": "data",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path / "stage",
        "endpoint_url": endpoint,
        **options,
    }
    return await run_backup(**settings)


def _read_until_closed(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every holder of the terminal's other side has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def run_on_terminal(args: Sequence[str], term: str) -> tuple[int, bytes, bytes]:
    """``asyncbackup s3 ARGS`` with its stderr on a pseudo terminal of type ``term``, 200
    columns wide: its exit code, what the terminal received, and its stdout."""
    unset = ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(TERM=term, COLUMNS="200")
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncbackup",
            "s3",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
            env=env,
        )
        os.close(terminal)
        terminal = -1
        raw = await asyncio.wait_for(asyncio.to_thread(_read_until_closed, controller), 60)
        out, _ = await process.communicate()
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert process.returncode is not None
    return process.returncode, raw, out
