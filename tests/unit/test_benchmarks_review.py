"""The benchmark harness's own logic: what makes a published figure right or wrong.

The verification runs against the real S3 endpoint of the tests (moto in server mode); the
summaries and the table are pure functions of the runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from benchmarks import workloads as wl
from tests.conftest import Buckets

SMALL = wl.Workload("small", ((40, 64),))


def _seed(tmp_path: Path) -> tuple[dict[str, tuple[int, str]], dict[str, bytes]]:
    expected = wl.generate(SMALL, tmp_path)
    bodies = {key: (tmp_path / key).read_bytes() for key in expected}
    return expected, bodies


def _put_all(s3: Any, bucket: str, bodies: dict[str, bytes]) -> None:
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=f"small/{key}", Body=body)


def test_verify_accepts_a_complete_copy(s3: Any, buckets: Buckets, tmp_path: Path) -> None:
    expected, bodies = _seed(tmp_path)
    _put_all(s3, buckets.dest, bodies)
    assert wl.verify(s3, buckets.dest, "small", expected) is None


def test_verify_finds_a_wrong_body_of_the_right_size_outside_the_sample(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Two objects of the same size with their bodies swapped (what a mix-up between
    concurrent transfers writes): every key and size is right, the content is not."""
    expected, bodies = _seed(tmp_path)
    first, second = sorted(expected)[-2:]
    bodies[first], bodies[second] = bodies[second], bodies[first]
    assert hashlib.md5(bodies[first], usedforsecurity=False).hexdigest() != expected[first][1]
    _put_all(s3, buckets.dest, bodies)
    problem = wl.verify(s3, buckets.dest, "small", expected)
    assert problem is not None
    assert "content" in problem


def test_verify_finds_a_multipart_copy_with_a_wrong_part(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """An object uploaded in parts has no MD5 for an ETag: its content is read and checked."""
    big = wl.Workload("big", ((3, 6 * wl.MiB),))
    expected = wl.generate(big, tmp_path)
    keys = sorted(expected)
    for key in keys:
        body = bytearray((tmp_path / key).read_bytes())
        if key == keys[-1]:
            body[-1] ^= 0xFF  # one byte off in the last part
        upload = s3.create_multipart_upload(Bucket=buckets.dest, Key=f"big/{key}")
        parts = []
        for number, start in enumerate(range(0, len(body), 5 * wl.MiB), 1):
            part = s3.upload_part(
                Bucket=buckets.dest,
                Key=f"big/{key}",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=bytes(body[start : start + 5 * wl.MiB]),
            )
            parts.append({"PartNumber": number, "ETag": part["ETag"]})
        s3.complete_multipart_upload(
            Bucket=buckets.dest,
            Key=f"big/{key}",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": parts},
        )
    problem = wl.verify(s3, buckets.dest, "big", expected, sample=0)
    assert problem == f"content of {keys[-1]} differs"
