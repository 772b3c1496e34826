"""How the sink cuts an object: one PUT, or parts (pure logic: no request is sent)."""

from __future__ import annotations

from typing import cast

from asyncbackup.config import S3_MAX_PART_SIZE, grown_part_size
from asyncbackup.partfeed import ByteBudget
from asyncbackup.retry import RetryPolicy
from asyncbackup.s3client import S3Client
from asyncbackup.sinks.s3 import S3Sink

MiB = 1024 * 1024
GiB = 1024 * MiB


def sink(multipart_threshold: int) -> S3Sink:
    return S3Sink(
        cast(S3Client, object()),  # part_size_of sends nothing
        "dest",
        RetryPolicy(1),
        checksum="md5",
        multipart_threshold=multipart_threshold,
        part_size_for=lambda size: grown_part_size(8 * MiB, size),
        part_concurrency=2,
        part_budget=ByteBudget(128 * MiB),
    )


def test_an_object_larger_than_one_put_allows_goes_in_parts_whatever_the_threshold() -> None:
    """S3 refuses a PUT over 5 GiB (EntityTooLarge): with --multipart-threshold above that,
    such an object (a multipart source whose layout is unknown) failed on every attempt,
    and without the fast path was first read whole into memory."""
    high = sink(multipart_threshold=100 * GiB)
    assert high.part_size_of(S3_MAX_PART_SIZE, None) is None  # one PUT still takes it
    part = high.part_size_of(S3_MAX_PART_SIZE + 1, None)
    assert part is not None and part <= S3_MAX_PART_SIZE
    assert high.part_size_of(64 * MiB, None) is None  # below the threshold: one PUT


def test_the_threshold_still_decides_below_that() -> None:
    low = sink(multipart_threshold=64 * MiB)
    assert low.part_size_of(64 * MiB - 1, None) is None
    assert low.part_size_of(64 * MiB, None) == 8 * MiB
