"""Workloads: generate the data once, upload it to the source bucket, check every copy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Workload:
    name: str
    groups: tuple[tuple[int, int], ...]  # (count, size) pairs

    @property
    def count(self) -> int:
        return sum(count for count, _ in self.groups)

    @property
    def total_bytes(self) -> int:
        return sum(count * size for count, size in self.groups)

    def describe(self) -> str:
        return " + ".join(f"{count:,} x {_human(size)}" for count, size in self.groups)

    def objects(self) -> Iterator[tuple[str, int]]:
        """Relative keys (two levels, 100 objects a folder) and sizes."""
        index = 0
        for count, size in self.groups:
            for _ in range(count):
                yield f"d{index // 100:03d}/{index:06d}-{size}.bin", size
                index += 1


def _human(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"


FULL = (
    Workload("small", ((2000, 4 * KiB),)),
    Workload("large", ((20, 32 * MiB),)),
    Workload("mixed", ((1000, 4 * KiB), (100, MiB), (5, 32 * MiB))),
)
QUICK = (
    Workload("small", ((200, 4 * KiB),)),
    Workload("large", ((3, 16 * MiB),)),
    Workload("mixed", ((100, 4 * KiB), (10, MiB), (1, 16 * MiB))),
)


def client(endpoint: str, pool: int = 64) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        region_name="us-east-1",
        config=Config(max_pool_connections=pool, retries={"max_attempts": 5}),
    )


def generate(workload: Workload, root: Path) -> dict[str, tuple[int, str]]:
    """Write the workload's files under ``root``; return key -> (size, md5 hex)."""
    rng = random.Random(workload.name)
    expected: dict[str, tuple[int, str]] = {}
    for key, size in workload.objects():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("wb") as out:
            for offset in range(0, size, 8 * MiB):  # randbytes() tops out below 256 MiB
                data = rng.randbytes(min(8 * MiB, size - offset))
                out.write(data)
                digest.update(data)
        expected[key] = (size, digest.hexdigest())
    return expected


def upload(
    s3: Any,
    root: Path,
    bucket: str,
    prefix: str,
    s5cmd: Path | None,
    env: dict[str, str],
    part_mib: int = 50,
) -> None:
    """Put every file under ``root`` to ``s3://bucket/prefix/`` (s5cmd when it is there), in
    parts of ``part_mib`` MiB; a smaller file in one PUT, either way."""
    if s5cmd is not None:
        argv = [str(s5cmd), "--endpoint-url", s3.meta.endpoint_url, "cp", "-p", str(part_mib)]
        argv.append(f"{root}/*")
        subprocess.run(
            [*argv, f"s3://{bucket}/{prefix}/"], check=True, env=env, stdout=subprocess.DEVNULL
        )
        return
    files = [p for p in root.rglob("*") if p.is_file()]

    # in one PUT below the part size, as s5cmd does (boto3's own threshold is 8 MiB)
    config = TransferConfig(multipart_threshold=part_mib * MiB, multipart_chunksize=part_mib * MiB)

    def put(path: Path) -> None:
        key = f"{prefix}/{path.relative_to(root).as_posix()}"
        s3.upload_file(str(path), bucket, key, Config=config)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, files))


def listing(s3: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Relative key -> (size, ETag without quotes) of every object under ``prefix/``."""
    found: dict[str, tuple[int, str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", ()):
            found[item["Key"][len(prefix) + 1 :]] = (int(item["Size"]), item["ETag"].strip('"'))
    return found


def last_modified(s3: Any, bucket: str, prefix: str) -> dict[str, Any]:
    """Relative key -> LastModified of every object under ``prefix/``: an object written
    again (the same bytes, the same ETag) has a new one."""
    found: dict[str, Any] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", ()):
            found[item["Key"][len(prefix) + 1 :]] = item["LastModified"]
    return found


def _md5_of(s3: Any, bucket: str, key: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    while chunk := body.read(MiB):
        digest.update(chunk)
    return digest.hexdigest()


def verify(
    s3: Any, bucket: str, prefix: str, expected: dict[str, tuple[int, str]], sample: int = 10
) -> str | None:
    """None when the copy is complete and right; else why not.

    Every key and size; the content of every object: an object stored in one PUT (or copied
    from one) has the MD5 of its content for an ETag, checked against the data; any other
    (a multipart ETag ``MD5-N``, or an ETag that differs) is read back whole and hashed. Then
    the MD5 of a sample read back, in case a server's ETag is not what it stored."""
    found = listing(s3, bucket, prefix)
    missing = set(expected) - set(found)
    extra = set(found) - set(expected)
    if missing or extra:
        return f"{len(missing)} missing, {len(extra)} unexpected objects"
    wrong = [key for key, (size, _) in expected.items() if found[key][0] != size]
    if wrong:
        return f"{len(wrong)} objects with the wrong size, e.g. {wrong[0]}"
    rng = random.Random(len(expected))
    to_read = {key for key, (_, md5) in expected.items() if found[key][1] != md5}
    to_read.update(rng.sample(sorted(expected), min(sample, len(expected))))

    def differs(key: str) -> bool:
        return _md5_of(s3, bucket, f"{prefix}/{key}") != expected[key][1]

    with ThreadPoolExecutor(8) as pool:
        for key, bad in zip(sorted(to_read), pool.map(differs, sorted(to_read)), strict=True):
            if bad:
                return f"content of {key} differs"
    return None


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def verify_staged(stage: Path, expected: dict[str, tuple[int, str]]) -> str | None:
    """None when the staging folder of a staged run holds every object whole; else why not.

    The destination's check cannot show it: a tool may upload from memory, not from its staged
    file (asyncbackup does). Tools name their files differently (by key, under a prefix of
    their own; by index), so an object counts as staged when some file under ``stage`` has its
    size and MD5; other files (a checkpoint) are left alone."""
    wanted = Counter(expected.values())
    sizes = {size for size, _ in wanted}
    found: Counter[tuple[int, str]] = Counter()
    for dirpath, _, names in os.walk(stage):
        for name in names:
            path = Path(dirpath) / name
            size = path.stat().st_size
            if size in sizes:
                found[(size, _md5_file(path))] += 1
    missing = sum((wanted - found).values())
    if missing:
        return f"{missing} of {len(expected)} objects not in the staging folder whole"
    return None


def clear(s3: Any, bucket: str) -> None:
    """Delete every object of ``bucket`` and the bucket, then make it again (between runs).

    SeaweedFS gives a deleted object's disk back only when its volume is vacuumed, but a
    bucket's at once (the bucket is a collection of volumes of its own). Emptying alone let
    a full run (about 40 GB written) fill the disk, and the server then failed writes with
    "No writable volumes"."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    with contextlib.suppress(botocore.exceptions.ClientError):  # e.g. an unfinished upload
        s3.delete_bucket(Bucket=bucket)
    ensure_bucket(s3, bucket)


def ensure_bucket(s3: Any, bucket: str) -> None:
    """Create ``bucket`` (or find it made already, by an earlier step of the same invocation)
    and pay SeaweedFS's first-write cost (~0.2 s) before any timing."""
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="warmup", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="warmup")


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            total += (Path(dirpath) / name).stat().st_size
    return total
