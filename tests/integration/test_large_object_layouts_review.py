"""Large objects as other tools leave them in buckets: multipart layouts, their part-number
HEADs and what an encrypted neighbour does to them. Against moto over HTTP, through the
recording proxy."""

from __future__ import annotations

import base64
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import MiB, backup_data, put_multipart
from tests.proxy import Rule, S3Proxy

#: a last part larger than the others: no uniform layout fits the first part's 5 MiB
LAST_LARGER = (5 * MiB, 5 * MiB, 7 * MiB)


async def test_an_sse_c_object_does_not_turn_off_the_checks_of_the_objects_after_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 answers a HEAD of an SSE-C object made without its key 400, no body: the same
    answer a server that does not do ``HEAD ?partNumber=`` gives. That object fails (its GET
    is refused too); the objects after it must still be checked against their ETags."""
    put_multipart(s3, buckets.source, "data/0-secret", (5 * MiB, 1 * MiB))
    put_multipart(s3, buckets.source, "data/1-uneven", LAST_LARGER)
    proxy.add_rule(Rule("sse_c_key_missing", path=r"/data/0-secret$"))
    # the uneven object's download is corrupted once: only its ETag, in its true layout,
    # can tell (its parts are checked by the destination as they were downloaded)
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/data/1-uneven$", times=1))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            concurrency=1,
            part_size=5 * MiB,
            multipart_threshold=5 * MiB,
        )
    assert list(report.errors) == ["data/0-secret"], report.errors
    source = s3.get_object(Bucket=buckets.source, Key="data/1-uneven")["Body"].read()
    copy = s3.get_object(Bucket=buckets.dest, Key="data/1-uneven")["Body"].read()
    assert copy == source  # was: the corrupted download, completed and marked done
    # nor is the bucket said to refuse part-number HEADs for one object's encryption
    assert "refuses HEAD ?partNumber" not in caplog.text


@pytest.mark.parametrize("threshold", [5 * MiB, 64 * MiB], ids=["in-parts", "one-put"])
async def test_a_server_that_ignores_part_numbers_still_gets_its_multipart_objects_copied(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    threshold: int,
) -> None:
    """Some servers answer ``HEAD ?partNumber=N`` as a plain HEAD: the whole object's length
    for every part. No layout can be read from that; the objects are copied in our parts,
    as for a server that refuses the parameter, rather than failing "the download does not
    make ETag ..." on every attempt of every run."""
    put_multipart(s3, buckets.source, "data/uniform", (5 * MiB, 5 * MiB, 2 * MiB))
    put_multipart(s3, buckets.source, "data/uneven", LAST_LARGER)
    proxy.add_rule(Rule("ignore_part_number", method="HEAD", query="partNumber="))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            concurrency=1,
            part_size=5 * MiB,
            multipart_threshold=threshold,
            max_attempts=2,
        )
    assert report.exit_code == 0, report.errors
    for key in ("data/uniform", "data/uneven"):
        source = s3.get_object(Bucket=buckets.source, Key=key)["Body"].read()
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == source
    assert caplog.text.count("partNumber") == 1  # said once, for the bucket
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


def _put_kms_multipart(
    s3: Any, bucket: str, key: str, sizes: tuple[int, ...], algorithm: str, kind: str
) -> bytes:
    """An SSE-KMS object uploaded in parts with a checksum of ``kind`` (``FULL_OBJECT`` or
    ``COMPOSITE``), as the AWS SDKs upload by default since early 2025; returns its bytes."""
    upload = s3.create_multipart_upload(
        Bucket=bucket,
        Key=key,
        ServerSideEncryption="aws:kms",
        ChecksumAlgorithm=algorithm,
        ChecksumType=kind,
    )
    parts, body = [], b""
    for number, size in enumerate(sizes, start=1):
        data = os.urandom(size)
        body += data
        answer = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm=algorithm,
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    whole = {}
    if kind == "FULL_OBJECT":
        whole["ChecksumCRC32"] = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
        ChecksumType=kind,
        **whole,
    )
    return body


async def _corrupted_once_then_copied(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, key: str, body: bytes, **options: Any
) -> None:
    proxy.add_rule(Rule("corrupt", method="GET", path=f"/{key}$", times=1))
    report = await backup_data(
        buckets, tmp_path, proxy.endpoint, part_size=5 * MiB, multipart_threshold=5 * MiB, **options
    )
    assert report.exit_code == 0, report.errors
    gets = [r for r in proxy.requests if r.method == "GET" and r.path.endswith(key)]
    assert [r.fault for r in gets] == ["corrupt", None]  # found, and copied again
    assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body


@pytest.mark.parametrize(
    ("key", "algorithm", "size"),
    [
        ("data/small", "SHA256", 300_000),  # received in memory
        ("data/large", "CRC32", 3 * MiB),  # staged whole: an opaque ETag is no Content-MD5
        ("data/sha1", "SHA1", 3 * MiB),
    ],
)
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_an_sse_kms_source_is_checked_by_its_checksum_not_its_length_alone(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    key: str,
    algorithm: str,
    size: int,
    fast_path: bool,
) -> None:
    """An SSE-KMS object's ETag is no MD5 (moto's look like one: the GET's headers tell), so
    nothing checked its download but its length; a corrupted one was copied and marked
    done. S3 keeps an additional checksum of it (of every object uploaded since 2025): the
    download is checked against it."""
    body = os.urandom(size)
    s3.put_object(
        Bucket=buckets.source,
        Key=key,
        Body=body,
        ServerSideEncryption="aws:kms",
        ChecksumAlgorithm=algorithm,
    )
    await _corrupted_once_then_copied(proxy, buckets, s3, tmp_path, key, body, fast_path=fast_path)


@pytest.mark.parametrize(
    ("algorithm", "kind", "sizes"),
    [
        ("CRC32", "FULL_OBJECT", (5 * MiB, 1 * MiB)),
        ("CRC32", "COMPOSITE", (5 * MiB, 1 * MiB)),  # cut in its own parts
        ("SHA256", "COMPOSITE", (5 * MiB, 6 * MiB, 1 * MiB)),  # in ours: its own asked for
    ],
)
async def test_an_sse_kms_source_uploaded_in_parts_is_checked_by_its_checksum(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    algorithm: str,
    kind: str,
    sizes: tuple[int, ...],
) -> None:
    """The same for one uploaded in parts: its checksum is of the whole object, or composite
    (of its parts' checksums), computed in the source's part sizes."""
    key = "data/parts"
    body = _put_kms_multipart(s3, buckets.source, key, sizes, algorithm, kind)
    await _corrupted_once_then_copied(proxy, buckets, s3, tmp_path, key, body)
