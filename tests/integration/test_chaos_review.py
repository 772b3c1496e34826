"""Faults a randomized chaos soak of the S3 backup found, shrunk to fixed faults.

Against moto over HTTP, through the recording, fault-injecting proxy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import MiB, backup_data, list_keys, put_multipart
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel


def no_uploads_left(s3: Any, bucket: str) -> bool:
    uploads: list[Any] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return not uploads


#: what the backups of objects of a few MiB are run with: parts of 5 MiB
IN_PARTS = {"multipart_threshold": 5 * MiB, "part_size": 5 * MiB}


async def copied_despite(
    faults: dict[str, int],
    buckets: Buckets,
    tmp_path: Path,
    proxy: S3Proxy,
    **options: Any,
) -> None:
    """Back up ``data`` through ``proxy`` (its rules set): the run ends 0, and each of
    ``faults`` struck as many times as given (the caller checks the copies)."""
    report = await backup_data(buckets, tmp_path, proxy.endpoint, **options)
    assert report.exit_code == 0, report.errors
    for fault, count in faults.items():
        assert sum(r.fault == fault for r in proxy.requests) == count, fault


def copy_of(s3: Any, buckets: Buckets, key: str) -> bytes:
    body: bytes = s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read()
    return body


@pytest.mark.parametrize(
    "size",
    [5, 300 * 1024, 2 * MiB],
    ids=["small", "in-memory", "streamed"],
)
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_put_answered_200_without_its_etag_is_not_done(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, size: int, fast_path: bool
) -> None:
    """A PUT's 200 without an ETag (a server or a middlebox that failed after its status
    line; here the request never reached the store) confirms nothing. It used to be taken
    as done: the checkpoint marked the object copied, the run ended 0, and the object was
    not at the destination."""
    body = os.urandom(size)
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=body)
    proxy.add_rule(Rule("empty_200", method="PUT", path=r"/data/a\.bin$", times=1))
    await copied_despite({"empty_200": 1}, buckets, tmp_path, proxy, fast_path=fast_path)
    assert copy_of(s3, buckets, "data/a.bin") == body


@pytest.mark.parametrize("step", ["part", "complete"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_multipart_step_answered_200_without_its_result_is_not_done(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, step: str, fast_path: bool
) -> None:
    """The same for UploadPart (no ETag) and CompleteMultipartUpload (no result) of a staged
    multipart copy."""
    body = os.urandom(6 * MiB)
    s3.put_object(Bucket=buckets.source, Key="data/big.bin", Body=body)
    if step == "part":
        proxy.add_rule(Rule("empty_200", method="PUT", query="partNumber=", times=1))
    else:
        proxy.add_rule(Rule("empty_200", method="POST", query="uploadId=", times=1))
    await copied_despite(
        {"empty_200": 1}, buckets, tmp_path, proxy, fast_path=fast_path, **IN_PARTS
    )
    assert copy_of(s3, buckets, "data/big.bin") == body
    assert no_uploads_left(s3, buckets.dest)


@pytest.mark.parametrize(
    "size",
    [5, 300 * 1024, 2 * MiB, 6 * MiB],
    ids=["small", "in-memory", "streamed", "parts"],
)
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_get_answered_200_with_an_empty_body_is_not_copied_empty(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, size: int, fast_path: bool
) -> None:
    """A GET's 200 with no body and no headers (a server that failed after its status line)
    is no download of the object."""
    body = os.urandom(size)
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=body)
    proxy.add_rule(Rule("empty_200", method="GET", path=r"/data/a\.bin$", times=1))
    await copied_despite(
        {"empty_200": 1}, buckets, tmp_path, proxy, fast_path=fast_path, **IN_PARTS
    )
    assert copy_of(s3, buckets, "data/a.bin") == body


@pytest.mark.parametrize("page", ["max-keys=100", "continuation-token"], ids=["first", "next"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_listing_page_answered_200_with_an_empty_body_does_not_end_the_listing(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fast_path: bool, page: str
) -> None:
    """A ListObjectsV2 200 with no body (a server that failed after its status line) is no
    page, least of all the last one. Its second page answered so used to end the listing
    after the first 100 keys: the run ended 0, the checkpoint archived as complete, with
    160 objects never copied (its first page: "nothing to back up", exit 0)."""
    objects = {f"data/k{i:04d}": b"x%d" % i for i in range(260)}
    put_parallel(s3, buckets.source, objects)
    proxy.add_rule(Rule("empty_200", method="GET", query=page, times=1))
    await copied_despite(
        {"empty_200": 1}, buckets, tmp_path, proxy, fast_path=fast_path, list_streams=1
    )
    assert sorted(list_keys(s3, buckets.dest)) == sorted(objects)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_an_empty_object_answered_200_without_headers_keeps_its_metadata(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fast_path: bool
) -> None:
    """A GET's 200 with no body and no headers looks like an empty object's download, but
    tells none of its metadata (nor its ETag): it used to be copied with none, as
    ``application/octet-stream``."""
    s3.put_object(
        Bucket=buckets.source,
        Key="data/empty",
        Body=b"",
        ContentType="image/png",
        CacheControl="max-age=60",
        Metadata={"owner": "team-a"},
    )
    proxy.add_rule(Rule("empty_200", method="GET", path=r"/data/empty$", times=1))
    await copied_despite({"empty_200": 1}, buckets, tmp_path, proxy, fast_path=fast_path)
    head = s3.head_object(Bucket=buckets.dest, Key="data/empty")
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == "max-age=60"
    assert head["Metadata"] == {"owner": "team-a"}


@pytest.mark.parametrize("direct", [False, True], ids=["staged", "direct"])
async def test_a_create_answered_200_without_an_upload_id_is_retried(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, direct: bool
) -> None:
    """A CreateMultipartUpload 200 without a body (a server that failed after its status
    line) used to stop the whole run: ``unexpected KeyError: 'UploadId'``, exit 3. It is
    a transient fault: retried, and the object copied; no upload left behind."""
    body = os.urandom(6 * MiB)
    if direct:
        put_multipart(s3, buckets.source, "data/big.bin", [5 * MiB, 1 * MiB])
        body = s3.get_object(Bucket=buckets.source, Key="data/big.bin")["Body"].read()
    else:
        s3.put_object(Bucket=buckets.source, Key="data/big.bin", Body=body)
    s3.put_object(Bucket=buckets.source, Key="data/small.txt", Body=b"small")
    proxy.add_rule(Rule("empty_200", method="POST", query="uploads", times=1))
    await copied_despite({"empty_200": 1}, buckets, tmp_path, proxy, direct=direct, **IN_PARTS)
    assert copy_of(s3, buckets, "data/big.bin") == body
    assert no_uploads_left(s3, buckets.dest)


async def test_a_direct_multipart_copy_whose_head_answered_200_without_headers_keeps_metadata(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """``--direct`` reads a multipart source's metadata with a HEAD (UploadPartCopy copies
    none). A HEAD's 200 without the object's headers (a server that failed after its status
    line) used to be taken as an object without any: the copy lost its content type and
    user metadata."""
    upload = s3.create_multipart_upload(
        Bucket=buckets.source,
        Key="data/big.bin",
        ContentType="image/png",
        Metadata={"owner": "team-a"},
    )
    parts = []
    for number, size in enumerate([5 * MiB, 1 * MiB], start=1):
        answer = s3.upload_part(
            Bucket=buckets.source,
            Key="data/big.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=os.urandom(size),
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(
        Bucket=buckets.source,
        Key="data/big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
    )
    proxy.add_rule(Rule(None, method="HEAD", query="partNumber"))  # let the layout's through
    proxy.add_rule(Rule("empty_200", method="HEAD", path=r"/data/big\.bin$", times=1))
    await copied_despite({"empty_200": 1}, buckets, tmp_path, proxy, direct=True)
    head = s3.head_object(Bucket=buckets.dest, Key="data/big.bin")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"owner": "team-a"}
    assert head["ETag"] == s3.head_object(Bucket=buckets.source, Key="data/big.bin")["ETag"]


def put_source_multipart(s3: Any, bucket: str, key: str, sizes: list[int]) -> bytes:
    """A multipart source object of parts of ``sizes``; its bytes."""
    put_multipart(s3, bucket, key, sizes)
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_layout_head_without_headers_and_a_corrupt_download_are_not_copied(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fast_path: bool
) -> None:
    """Two faults at once. The ``HEAD ?partNumber=1`` that tells a multipart source's layout
    answered 200 without the part's headers (no length): the layout was taken as unknown,
    as if the server refused the HEAD, so the download was never checked against the
    source's ETag - and a download corrupted on its way was copied and marked done."""
    body = put_source_multipart(s3, buckets.source, "data/big.bin", [5 * MiB, 1 * MiB])
    proxy.add_rule(Rule("empty_200", method="HEAD", query="partNumber", times=1))
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/data/big\.bin$", times=1))
    await copied_despite(
        {"empty_200": 1, "corrupt": 1}, buckets, tmp_path, proxy, fast_path=fast_path, **IN_PARTS
    )
    assert copy_of(s3, buckets, "data/big.bin") == body


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_multipart_source_listed_with_another_etag_and_a_corrupt_download(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fast_path: bool
) -> None:
    """Two faults at once: the listing gives a multipart source a single-part ETag (or the
    object was replaced by a multipart one since it was listed), and its download is
    corrupted on its way. The download is then of a version whose layout nobody probed:
    it must not be copied unchecked and marked done."""
    body = put_source_multipart(s3, buckets.source, "data/big.bin", [5 * MiB, 1 * MiB])
    proxy.add_rule(Rule("other_etag", method="GET", query="list-type"))
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/data/big\.bin$", times=1))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, fast_path=fast_path, **IN_PARTS)
    if report.exit_code == 0:
        assert copy_of(s3, buckets, "data/big.bin") == body
    else:  # refused as changed since its listing: the next run copies it
        assert report.exit_code == 1 and list(report.errors) == ["data/big.bin"]
        assert "ObjectChanged" in report.errors["data/big.bin"]
        proxy.clear_faults()
        again = await backup_data(
            buckets, tmp_path, proxy.endpoint, fast_path=fast_path, **IN_PARTS
        )
        assert again.exit_code == 0, again.errors
        assert copy_of(s3, buckets, "data/big.bin") == body
