"""``--direct`` (server-side CopyObject / UploadPartCopy) when the source or the server misbehaves:
an object is marked done only once the destination has it whole, a failure of one object is
that object's error (never the run's), and a multipart copy keeps what a staged copy keeps.

Against moto over HTTP, through the recording, fault-injecting proxy.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.errors import ConfigError
from tests.conftest import Buckets, S3Server
from tests.helpers import MiB, backup_data, list_keys, put_multipart
from tests.proxy import Recorded, Rule, S3Proxy

KEY = "data/multi.bin"
PARTS = (5 * MiB, 1000)


def part_copies(proxy: S3Proxy) -> list[Recorded]:
    return [r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.query]


def no_uploads_left(s3: Any, bucket: str) -> bool:
    uploads: list[Any] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return not uploads


async def test_a_source_deleted_during_its_multipart_copy_is_left_out(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """A part copy that fails for good (the source deleted meanwhile: 404) used to leave the
    copy as an exception group, which no handler took for an object's error: the whole run
    stopped with it instead of recording it and copying the rest. The deletion is now
    confirmed and the object left out of the job; its upload is aborted."""
    put_multipart(s3, buckets.source, KEY, PARTS)
    s3.put_object(Bucket=buckets.source, Key="data/other.txt", Body=b"other")
    proxy.add_rule(
        Rule(
            None,
            method="PUT",
            query="partNumber=",
            times=1,
            action=lambda: s3.delete_object(Bucket=buckets.source, Key=KEY),
        )
    )
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True, concurrency=1)
    assert report.exit_code == 0 and report.copied_files == 1, report.errors
    assert report.source_deleted_files == 1 and report.total_files == 1
    assert list_keys(s3, buckets.dest) == ["data/other.txt"]
    assert no_uploads_left(s3, buckets.dest)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_copy_answered_200_without_its_result_is_not_done(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, fast_path: bool
) -> None:
    """S3 answers a CopyObject's 200 before the copy is made and tells the outcome in the
    body: a 200 without a ``CopyObjectResult`` (the server failed after its status line)
    says nothing was copied. It used to be taken as done, with nothing at the destination."""
    s3.put_object(Bucket=buckets.source, Key="data/a.txt", Body=b"hello")
    proxy.add_rule(Rule("empty_200", method="PUT", path=r"/data/a\.txt$", times=1))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True, fast_path=fast_path)
    assert report.exit_code == 0, report.errors
    assert [r.fault for r in proxy.requests if r.method == "PUT"] == ["empty_200", None]
    assert s3.get_object(Bucket=buckets.dest, Key="data/a.txt")["Body"].read() == b"hello"


@pytest.mark.parametrize("step", ["part", "complete"])
async def test_a_multipart_copy_answered_200_without_its_result_is_not_done(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, step: str
) -> None:
    """The same for UploadPartCopy (used to fail the whole run on the missing
    ``CopyPartResult``) and CompleteMultipartUpload (used to be taken as done when the copy's
    layout is not the source's, so no ETag is compared: here the server refuses
    ``HEAD ?partNumber=``), with nothing at the destination."""
    put_multipart(s3, buckets.source, KEY, PARTS)
    body = s3.get_object(Bucket=buckets.source, Key=KEY)["Body"].read()
    proxy.add_rule(Rule("not_implemented", method="HEAD", query="partNumber="))
    if step == "part":
        proxy.add_rule(Rule("empty_200", method="PUT", query="partNumber=", times=1))
    else:
        proxy.add_rule(Rule("empty_200", method="POST", query="uploadId=", times=1))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True)
    assert report.exit_code == 0, report.errors
    assert sum(r.fault == "empty_200" for r in proxy.requests) == 1
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == body
    assert no_uploads_left(s3, buckets.dest)


async def test_a_multipart_copy_keeps_the_metadata_a_staged_copy_keeps(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """UploadPartCopy copies no metadata: the upload is created with the source's. Its
    expiry (``Expires``) used to be left out, which a staged copy keeps."""
    expires = datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    upload = s3.create_multipart_upload(
        Bucket=buckets.source,
        Key=KEY,
        ContentType="application/x-test",
        CacheControl="max-age=60",
        Expires=expires,
        Metadata={"owner": "team-a"},
    )
    etags = []
    for number, size in enumerate(PARTS, start=1):
        answer = s3.upload_part(
            Bucket=buckets.source,
            Key=KEY,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=bytes([number]) * size,
        )
        etags.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(
        Bucket=buckets.source,
        Key=KEY,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": etags},
    )
    fields = ("ContentType", "CacheControl", "Expires", "Metadata", "ETag", "ContentLength")
    for direct in (False, True):
        dest = f"{buckets.dest}-{direct}".lower()
        s3.create_bucket(Bucket=dest)
        report = await backup_data(
            buckets, tmp_path / str(direct), proxy.endpoint, dest_bucket=dest, direct=direct
        )
        assert report.exit_code == 0, report.errors
        source = s3.head_object(Bucket=buckets.source, Key=KEY)
        copy = s3.head_object(Bucket=dest, Key=KEY)
        assert source["Expires"] == expires
        assert {f: copy.get(f) for f in fields} == {f: source.get(f) for f in fields}, direct


async def test_an_empty_multipart_source_is_copied_without_an_invalid_range(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """An empty object uploaded in one part of 0 bytes has a multipart ETag. Its copy used to
    be an UploadPartCopy of ``bytes=0--1``, which S3 refuses (InvalidArgument: the range must
    be ``bytes=first-last``; moto lets it through): it is copied as the plain empty object a
    staged copy makes."""
    etag = put_multipart(s3, buckets.source, "data/empty", (0,))
    assert etag.strip('"').endswith("-1")
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True)
    assert report.exit_code == 0, report.errors
    for request in part_copies(proxy):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["x-amz-copy-source-range"])
        assert match is not None and int(match[1]) <= int(match[2]), request.headers
    assert s3.get_object(Bucket=buckets.dest, Key="data/empty")["Body"].read() == b""
    assert no_uploads_left(s3, buckets.dest)


@pytest.mark.parametrize("direct", [False, True], ids=["staged", "direct"])
async def test_copies_under_the_source_path_of_the_same_bucket_are_refused(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, direct: bool
) -> None:
    """The source bucket as the destination, its copies under SOURCE_PATH: onto the objects
    themselves (--direct: InvalidRequest for every object; staged: each object put over
    itself and reported copied), or in a folder the next run lists and copies again
    (``data/copies/copies/...``, one level more every run). Refused before anything is
    written; a --dest-prefix outside SOURCE_PATH is a fine use of one bucket."""
    s3.put_object(Bucket=buckets.source, Key="data/a.txt", Body=b"a")
    for dest_prefix in (None, "data", "data/copies"):
        with pytest.raises(ConfigError, match="--dest-prefix") as refused:
            await backup_data(
                buckets,
                tmp_path,
                proxy.endpoint,
                dest_bucket=buckets.source,
                dest_prefix=dest_prefix,
                direct=direct,
            )
        assert "\n" not in str(refused.value)
    assert list_keys(s3, buckets.source) == ["data/a.txt"]
    assert not proxy.requests  # refused before any request
    for _ in range(2):  # twice: the second run does not copy the copies
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            dest_bucket=buckets.source,
            dest_prefix="copies",
            direct=direct,
            ignore_checkpoints=True,
        )
        assert report.exit_code == 0 and report.copied_files == 1, report.errors
    assert list_keys(s3, buckets.source) == ["copies/a.txt", "data/a.txt"]


async def test_a_source_overwritten_between_part_copies_is_never_a_mixed_copy(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Each part copy carries ``x-amz-copy-source-if-match``, but a server may ignore it
    (moto does): a source overwritten between two part copies then gives a copy made of both
    versions. The copy's ETag tells only when it has the source's layout; in parts of our
    own size (here: the server refuses ``HEAD ?partNumber=``) nothing did, and the mixed
    copy was completed and marked done. The source must still be the listed version once
    every part is copied, or the upload is aborted."""
    sizes = (5 * MiB, 5 * MiB, 77)
    put_multipart(s3, buckets.source, KEY, sizes)
    first = s3.get_object(Bucket=buckets.source, Key=KEY)["Body"].read()
    second: list[bytes] = []

    def overwrite() -> None:
        put_multipart(s3, buckets.source, KEY, sizes)  # same size, other bytes
        second.append(s3.get_object(Bucket=buckets.source, Key=KEY)["Body"].read())

    proxy.add_rule(Rule("not_implemented", method="HEAD", query="partNumber="))
    proxy.add_rule(Rule(None, method="PUT", query="partNumber=2", times=1, action=overwrite))
    report = await backup_data(
        buckets, tmp_path, proxy.endpoint, direct=True, part_size=5 * MiB, part_concurrency=1
    )
    assert second and second[0] != first
    assert KEY in report.errors and "PreconditionFailed" in report.errors[KEY], report.errors
    assert report.exit_code == 1 and report.copied_files == 0
    assert list_keys(s3, buckets.dest) == []  # never completed: no copy of two versions
    assert no_uploads_left(s3, buckets.dest)


async def test_a_source_check_answered_200_without_an_etag_is_not_taken_for_unchanged(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """The If-Match HEAD before completing a multipart copy no ETag can check: a 200 without
    headers (a server failing after its status line) passed as "unchanged", and a copy made
    of two versions was completed and marked done, exit 0."""
    sizes = (5 * MiB, 5 * MiB, 77)
    put_multipart(s3, buckets.source, KEY, sizes)
    versions: list[bytes] = [s3.get_object(Bucket=buckets.source, Key=KEY)["Body"].read()]

    def overwrite() -> None:
        put_multipart(s3, buckets.source, KEY, sizes)  # same size, other bytes
        versions.append(s3.get_object(Bucket=buckets.source, Key=KEY)["Body"].read())
        # the next HEAD of the key is the check before the completion
        proxy.add_rule(Rule("empty_200", method="HEAD", path=f"/{KEY}$", times=1))

    proxy.add_rule(Rule("not_implemented", method="HEAD", query="partNumber="))
    proxy.add_rule(Rule(None, method="PUT", query="partNumber=2", times=1, action=overwrite))
    report = await backup_data(
        buckets, tmp_path, proxy.endpoint, direct=True, part_size=5 * MiB, part_concurrency=1
    )
    assert len(versions) == 2 and versions[0] != versions[1]
    copied = list_keys(s3, buckets.dest)
    if copied:  # only ever a whole version
        body = s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read()
        assert body in versions, "a copy made of two versions was completed"
    assert KEY in report.errors and report.exit_code == 1, report.errors
    assert no_uploads_left(s3, buckets.dest)


@pytest.mark.parametrize("sse", [None, "aws:kms"], ids=["plain-source", "kms-source"])
async def test_a_mixed_copy_in_the_source_layout_is_never_completed_either(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy, sse: str | None
) -> None:
    """In the source's own layout the copy's ETag does tell a mixed copy, but only once the
    copy is completed: the object failed, yet a copy made of two versions stayed at the
    destination (its retries then fail on the changed source). Every multipart copy now
    checks the source before it completes, unless its parts' ETags make the listed one."""
    sizes = (5 * MiB, 5 * MiB, 77)
    extra = {"ServerSideEncryption": sse} if sse else {}
    put_multipart(s3, buckets.source, KEY, sizes, **extra)
    overwritten: list[bool] = []

    def overwrite() -> None:
        put_multipart(s3, buckets.source, KEY, sizes, **extra)  # same size, other bytes
        overwritten.append(True)

    proxy.add_rule(Rule(None, method="PUT", query="partNumber=2", times=1, action=overwrite))
    report = await backup_data(
        buckets, tmp_path, proxy.endpoint, direct=True, part_concurrency=1, max_attempts=2
    )
    assert overwritten
    assert KEY in report.errors and report.exit_code == 1, report.errors
    assert list_keys(s3, buckets.dest) == []  # no copy of two versions left there
    assert no_uploads_left(s3, buckets.dest)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
@pytest.mark.parametrize("source_sse", ["aws:kms", None], ids=["kms-source", "plain-source"])
async def test_a_copy_of_an_sse_kms_source_is_not_held_to_its_opaque_etag(
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    proxy: S3Proxy,
    fast_path: bool,
    source_sse: str | None,
) -> None:
    """An SSE-KMS source's ETag is no MD5, and the listing does not say so; a copy to an
    unencrypted destination answers the MD5 as its ETag. The two differ on S3 (moto's KMS
    ETags are MD5s: the proxy gives the copy another ETag), and every such object used to
    fail "copy ETag differs" on every attempt. The source's HEAD now tells: an opaque ETag
    is not compared (the copy was made with the listed ETag as its if-match). A plain
    source's differing ETag is still an error."""
    extra = {"ServerSideEncryption": source_sse} if source_sse else {}
    s3.put_object(Bucket=buckets.source, Key="data/a.txt", Body=b"hello", **extra)
    proxy.add_rule(Rule("other_etag", method="PUT", path=r"/data/a\.txt$"))
    report = await backup_data(
        buckets, tmp_path, proxy.endpoint, direct=True, fast_path=fast_path, max_attempts=2
    )
    if source_sse:
        assert report.exit_code == 0, report.errors
        assert s3.get_object(Bucket=buckets.dest, Key="data/a.txt")["Body"].read() == b"hello"
    else:
        assert report.exit_code == 1
        assert "differs from source" in report.errors["data/a.txt"]


async def test_a_multipart_copy_of_an_sse_kms_source_is_checked_by_its_head(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """The same for a multipart SSE-KMS source copied in its own layout: its ETag is not
    the MD5 of its parts' MD5s, so the copy's cannot match it (the proxy makes them differ,
    as S3's do), and the copy is not held to it. That the copy is of one version is checked
    as for one in parts of our size (``test_a_mixed_copy_in_the_source_layout...``)."""
    put_multipart(s3, buckets.source, KEY, PARTS, ServerSideEncryption="aws:kms")
    proxy.add_rule(Rule("other_etag", method="POST", query="uploadId="))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True, max_attempts=2)
    assert report.exit_code == 0, report.errors
    source = s3.get_object(Bucket=buckets.source, Key=KEY)["Body"].read()
    assert s3.get_object(Bucket=buckets.dest, Key=KEY)["Body"].read() == source


async def test_direct_accepts_one_endpoint_spelled_two_ways(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """--direct needs one endpoint for both sides: the same one written with a trailing slash
    is that endpoint, not a refusal (the URLs were compared as strings). Another server is
    still refused."""
    s3.put_object(Bucket=buckets.source, Key="data/a.txt", Body=b"a")
    report = await backup_data(
        buckets,
        tmp_path,
        s3_server.endpoint,
        direct=True,
        source_endpoint_url=s3_server.endpoint + "/",
        dest_endpoint_url=s3_server.endpoint,
    )
    assert report.status == "completed", report.errors
    assert list_keys(s3, buckets.dest) == ["data/a.txt"]
    with pytest.raises(ConfigError, match="one endpoint"):
        await backup_data(
            buckets,
            tmp_path,
            s3_server.endpoint,
            direct=True,
            dest_endpoint_url="http://127.0.0.2:1",
        )


async def test_a_copy_whose_parts_make_the_listed_etag_needs_no_source_check(
    buckets: Buckets, s3: Any, tmp_path: Path, proxy: S3Proxy
) -> None:
    """The source's If-Match HEAD before completing is for a copy whose parts cannot show
    which version they came from. In the source's own layout, the parts' ETags (each its
    range's MD5) make the listed ETag: the bytes copied are the listed version's, and the
    HEAD - one more round trip in every multipart copy's chain - is not sent."""
    put_multipart(s3, buckets.source, KEY, (5 * MiB, 5 * MiB, 77))
    report = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True)
    assert report.exit_code == 0 and report.copied_files == 1, report.errors
    heads = [r for r in proxy.requests if r.method == "HEAD" and r.path.endswith(KEY)]
    assert heads and not [r for r in heads if r.if_match], heads
    source = s3.head_object(Bucket=buckets.source, Key=KEY)["ETag"]
    assert s3.head_object(Bucket=buckets.dest, Key=KEY)["ETag"] == source
