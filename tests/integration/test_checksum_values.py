"""``--checksum crc32`` / ``sha256``: the values sent are the data's, on every path (an object in
memory, a staged file in one PUT, parts streamed through staging, parts read back from a staged
file), and they are computed off the event loop, in the worker-thread call that already writes
or reads the bytes. ``--checksum none`` hashes nothing that nothing reads.

moto does not verify ``x-amz-checksum-*`` (it keeps what it is sent), so the values the proxy
recorded are compared with hashlib's and zlib's here. Where hashing runs is seen by wrapping
``hashlib.md5``, ``hashlib.sha256`` and ``zlib.crc32`` (not the S3 or HTTP client).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_backup
from asyncbackup.checksums import INLINE_LIMIT
from asyncbackup.fasts3 import open_fast_s3
from asyncbackup.fasts3.client import put_headers
from asyncbackup.fetched import FetchedObject
from asyncbackup.partfeed import ByteBudget
from asyncbackup.retry import RetryPolicy
from asyncbackup.sinks.s3 import S3Sink
from tests.conftest import Buckets, S3Server
from tests.helpers import MiB, open_test_client, put_multipart
from tests.proxy import Recorded, S3Proxy

PART = 5 * MiB


def expected_checksum(mode: str, data: bytes) -> str:
    if mode == "crc32":
        return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def uploads_to(proxy: S3Proxy, bucket: str) -> list[Recorded]:
    """PutObject and UploadPart requests into ``bucket``."""
    return [r for r in proxy.requests if r.method == "PUT" and r.path.startswith(f"/{bucket}/")]


def sent_bytes(request: Recorded, bucket: str, bodies: dict[str, bytes]) -> bytes:
    """What ``request`` carried: the whole object, or its part (parts of ``PART``)."""
    body = bodies[request.path[len(f"/{bucket}/") :]]
    query = dict(pair.split("=", 1) for pair in request.query.split("&") if "=" in pair)
    if "partNumber" not in query:
        return body
    start = (int(query["partNumber"]) - 1) * PART
    return body[start : start + PART]


def check_checksums(
    mode: str, uploads: list[Recorded], bucket: str, bodies: dict[str, bytes]
) -> None:
    for request in uploads:
        data = sent_bytes(request, bucket, bodies)
        header = request.headers.get(f"x-amz-checksum-{mode}")
        assert header == expected_checksum(mode, data), (request.path, request.query)
        assert request.headers["x-amz-sdk-checksum-algorithm"] == mode.upper()
        assert "content-md5" not in request.headers


def source_objects(s3: Any, bucket: str) -> dict[str, bytes]:
    """One object of each path: in memory (two sizes), one staged PUT, two streamed layouts."""
    bodies = {
        "data/tiny": os.urandom(3000),
        "data/small": os.urandom(700 * 1024),  # in memory, hashed in a thread (> INLINE_LIMIT)
        "data/medium": os.urandom(2 * MiB + 5),  # one PUT: streamed with md5, else staged
        "data/single": os.urandom(2 * PART + 3),  # a single-part source sent in parts
    }
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    put_multipart(s3, bucket, "data/multi", (PART, PART, 1234))  # copied in its own layout
    bodies["data/multi"] = s3.get_object(Bucket=bucket, Key="data/multi")["Body"].read()
    return bodies


async def backup(buckets: Buckets, tmp_path: Path, endpoint: str, mode: str) -> Any:
    return await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path / mode,
        endpoint_url=endpoint,
        checksum=mode,
        concurrency=3,
        multipart_threshold=PART,
        part_size=PART,
    )


@pytest.mark.parametrize("mode", ["sha256", "crc32"])
async def test_the_checksums_sent_are_those_of_the_data(
    mode: str, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    bodies = source_objects(s3, buckets.source)
    report = await backup(buckets, tmp_path, proxy.endpoint, mode)
    assert report.exit_code == 0, report.errors
    uploads = uploads_to(proxy, buckets.dest)
    assert len(uploads) == 3 + 3 + 3  # three PUTs, two objects of three parts
    check_checksums(mode, uploads, buckets.dest, bodies)
    for key, body in bodies.items():
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body


@pytest.mark.parametrize("mode", ["sha256", "crc32", "none"])
async def test_parts_read_back_from_staging_carry_their_checksum(
    mode: str, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """``S3Sink.put`` of a staged file above the threshold (how GitHub archives go up): its
    parts are read back from the file and hashed in the same worker-thread call."""
    body = os.urandom(2 * PART + 17)
    staged = tmp_path / "staged.bin"
    staged.write_bytes(body)
    md5 = hashlib.md5(body).digest()
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, proxy.endpoint)
        sink = S3Sink(
            client,
            buckets.dest,
            RetryPolicy(2),
            checksum=mode,  # type: ignore[arg-type]
            multipart_threshold=PART,
            part_size_for=lambda size: PART,
            part_concurrency=2,
            part_budget=ByteBudget(4 * PART),
        )
        sink.fast = await open_fast_s3(
            stack, client, buckets.dest, connections=4, connect_timeout=2, read_timeout=10
        )
        await sink.put(FetchedObject("data/archive", staged, len(body), md5, ""), "data/archive")
    uploads = uploads_to(proxy, buckets.dest)
    assert len(uploads) == 3
    if mode == "none":
        assert not any(h.startswith("x-amz-checksum-") for u in uploads for h in u.headers)
    else:
        check_checksums(mode, uploads, buckets.dest, {"data/archive": body})
    assert s3.get_object(Bucket=buckets.dest, Key="data/archive")["Body"].read() == body


@dataclass
class Call:
    name: str
    size: int
    on_loop: bool


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every ``hashlib.md5``/``hashlib.sha256``/``zlib.crc32`` call on more than INLINE_LIMIT
    bytes, and whether it ran on an event loop's thread."""
    calls: list[Call] = []

    def wrap(module: Any, name: str) -> None:
        real: Callable[..., Any] = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            data = args[0] if args else b""
            if len(data) > INLINE_LIMIT:
                calls.append(Call(name, len(data), _on_event_loop()))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    wrap(hashlib, "md5")
    wrap(hashlib, "sha256")
    wrap(zlib, "crc32")
    return calls


@pytest.mark.parametrize("mode", ["sha256", "crc32", "md5", "none"])
async def test_data_is_hashed_off_the_event_loop(
    mode: str, buckets: Buckets, s3: Any, tmp_path: Path, s3_server: S3Server, hashing: list[Call]
) -> None:
    bodies = source_objects(s3, buckets.source)
    hashing.clear()  # only the backup's own: boto3 here hashes too, on this thread
    report = await backup(buckets, tmp_path, s3_server.endpoint, mode)
    calls = list(hashing)
    assert report.exit_code == 0, report.errors
    assert not [call for call in calls if call.on_loop], calls
    count = {name: len([c for c in calls if c.name == name]) for name in ("md5", "sha256")}
    if mode in ("sha256", "crc32"):  # the object in memory's, the staged PUT's, 4 full parts'
        assert len([call for call in calls if call.name == mode]) >= 1 + 1 + 4, calls
    elif mode == "md5":  # Content-MD5 of the 4 full parts; "medium" is streamed with the
        # source's MD5 (its ETag) as Content-MD5: not hashed here at all
        assert count["md5"] >= 4 and count["sha256"] == 0, calls
        assert not [call for call in calls if call.size == 2 * MiB + 5], calls
    else:  # none: the SHA-256 that signs a payload without a checksum (as botocore does)
        assert count["sha256"] >= 1 + 4, calls
    for key, body in bodies.items():
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body


async def test_checksum_none_computes_no_part_md5_nothing_reads(
    buckets: Buckets, s3: Any, tmp_path: Path, s3_server: S3Server, hashing: list[Call]
) -> None:
    """A single-part source sent in parts with ``--checksum none``: its whole MD5 is checked
    against the ETag; MD5s of its parts would be sent with nothing and checked against
    nothing, so none is computed. A multipart source in its own layout still has its parts'
    MD5s: they are what its download is checked against."""
    single = os.urandom(2 * PART + 3)
    s3.put_object(Bucket=buckets.source, Key="data/single", Body=single)
    report = await backup(buckets, tmp_path, s3_server.endpoint, "none")
    assert report.exit_code == 0, report.errors
    assert s3.get_object(Bucket=buckets.dest, Key="data/single")["Body"].read() == single
    assert not [call for call in hashing if call.name == "md5"], hashing
    put_multipart(s3, buckets.source, "data/multi", (PART, PART, 1234))
    report = await backup(buckets, tmp_path / "second", s3_server.endpoint, "none")
    assert report.exit_code == 0, report.errors
    assert len([call for call in hashing if call.name == "md5"]) == 2, hashing


def test_the_fast_path_sends_a_checksum_it_is_given_as_it_is() -> None:
    """Given (computed off the loop), a checksum is sent, not computed again; not given, the
    fast path still computes it (other callers), and leaves CRC32C to botocore."""
    params = {"Bucket": "b", "Key": "k", "Body": b"abc", "ChecksumAlgorithm": "SHA256"}
    assert put_headers({**params, "ChecksumSHA256": "given"}) == {
        "x-amz-checksum-sha256": "given",
        "x-amz-sdk-checksum-algorithm": "SHA256",
    }
    assert put_headers(params) == {
        "x-amz-checksum-sha256": expected_checksum("sha256", b"abc"),
        "x-amz-sdk-checksum-algorithm": "SHA256",
    }
    assert put_headers({**params, "ChecksumAlgorithm": "CRC32C"}) is None
