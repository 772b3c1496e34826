"""Source buckets as real AWS accounts configure them: SSE-C and SSE-KMS objects the reader
cannot decrypt, Requester Pays, Intelligent-Tiering's archive tiers, additional checksums,
versioning with delete markers, folder markers with content, Object Lock legal holds."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.checkpoint import read_checkpoint
from tests.conftest import Buckets
from tests.helpers import MiB, cli_args, put_multipart
from tests.proxy import Rule, S3Proxy
from tests.reliability import checkpoint_file, listing, one_error_line, put_parallel, run_cli

MODES = {"fast": (), "no-fast": ("--no-fast-path",), "direct": ("--direct",)}


def run(proxy: S3Proxy, tmp_path: Path, buckets: Buckets, *extra: str) -> Any:
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest), *extra]
    started = time.monotonic()
    done = run_cli([*args, "--concurrency", "2"])
    return done, time.monotonic() - started


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("multipart", [False, True])
def test_an_sse_c_source_object_is_one_error_that_names_sse_c(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str, multipart: bool
) -> None:
    """S3 serves an object encrypted with SSE-C (a key of its owner's, which S3 does not keep)
    only to a request that carries the key: a GET (or CopyObject, UploadPartCopy) without it
    is 400 InvalidRequest ("The object was stored using a form of Server Side Encryption. The
    correct parameters must be provided to retrieve the object."), a HEAD 400 with no body
    (moto serves such objects to anyone: the proxy answers as S3 does). Such an object was an
    error that never said SSE-C, nor that asyncbackup has no way to give a key; a multipart
    one copied with --direct (no GET: its layout's HEADs alone) was a bare "400: Bad Request".
    Now each is one error naming SSE-C and what to do, not retried, never done; the rest is
    copied and the run ends with exit 1."""
    put_parallel(s3, buckets.source, {f"p/o{i}": b"x" * 100 for i in range(4)})
    if multipart:
        put_multipart(s3, buckets.source, "p/secret", [5 * MiB, MiB])
    else:
        s3.put_object(Bucket=buckets.source, Key="p/secret", Body=os.urandom(300))
    for method in ("GET", "HEAD", "PUT"):  # PUT: --direct's CopyObject and UploadPartCopy
        proxy.add_rule(Rule("sse_c_key_missing", method=method, path=r"/p/secret$"))
    done, took = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 1, done.stderr
    assert took < 30  # one refusal, not minutes of retries
    assert "4 of 5 files done" in done.stderr and "1 errors" in done.stderr, done.stderr
    state = read_checkpoint(checkpoint_file(tmp_path, buckets.source, "p"))
    assert state.files["p/secret"] is False and list(state.errors) == ["p/secret"]
    assert "SSE-C" in state.errors["p/secret"], state.errors
    assert "checkpoint mark --done" in state.errors["p/secret"], state.errors
    assert sorted(listing(s3, buckets.dest)) == [f"p/o{i}" for i in range(4)]
    assert not s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads")
    asked = [r for r in proxy.requests if r.path.endswith("/p/secret")]
    assert len(asked) <= 6, [(r.method, r.query) for r in asked]


@pytest.mark.parametrize("mode", MODES)
def test_a_requester_pays_source_is_refused_at_start_in_a_line_that_names_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """S3 ("Downloading objects from Requester Pays buckets"): a request of another account
    without ``x-amz-request-payer: requester`` is refused, 403 AccessDenied, listings
    included. asyncbackup sends no such header (Requester Pays is not supported): the run
    stops at its start-up check, exit 2, nothing read. Its line said to check the
    credentials and the bucket policy only, which are not the cause; it now names Requester
    Pays too."""
    put_parallel(s3, buckets.source, {f"p/o{i}": b"x" * 100 for i in range(4)})
    proxy.add_rule(
        Rule("access_denied", path=f"^/{buckets.source}", unless_header="x-amz-request-payer")
    )
    done, _ = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert f"source bucket {buckets.source!r} was refused (AccessDenied)" in line, line
    assert "Requester Pays" in line and "--source-profile" in line, line
    assert not proxy.seen(method="GET", path=f"^/{buckets.source}/p/")
    assert not listing(s3, buckets.dest)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("access_denied", "AccessDenied"),  # no kms:Decrypt on the key: S3 says no more
        ("kms_disabled", "KMS.DisabledException"),
        ("kms_invalid_state", "KMS.KMSInvalidStateException"),  # pending deletion
        ("invalid_object_state", "InvalidObjectState"),  # Intelligent-Tiering's archive tiers
    ],
)
def test_a_source_object_the_reader_cannot_decrypt_or_read_is_one_error(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str, fault: str, code: str
) -> None:
    """SSE-KMS objects whose key the reader may not use (403 AccessDenied), or whose key is
    disabled or pending deletion (400 KMS.DisabledException, KMS.KMSInvalidStateException),
    and Intelligent-Tiering objects moved to an archive tier (listed as INTELLIGENT_TIERING,
    like the others: GET and copies answer 403 InvalidObjectState): each is one error with
    S3's code, asked once (not retried), never done; the rest is copied, the summary counts
    it, exit 1. An archived one says to restore it, as GLACIER's do (test_archived_objects)."""
    put_parallel(s3, buckets.source, {f"p/o{i}": b"x" * 100 for i in range(4)})
    put_multipart(s3, buckets.source, "p/big", [5 * MiB, MiB])
    s3.put_object(
        Bucket=buckets.source,
        Key="p/small",
        Body=os.urandom(300),
        StorageClass="INTELLIGENT_TIERING",
    )
    for method in ("GET", "PUT"):  # PUT: --direct's CopyObject and UploadPartCopy
        proxy.add_rule(Rule(fault, method=method, path=r"/p/(big|small)$"))
    done, took = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 1, done.stderr
    assert took < 30
    assert f"errors by code: {code} 2" in done.stderr, done.stderr
    state = read_checkpoint(checkpoint_file(tmp_path, buckets.source, "p"))
    assert {key: state.files[key] for key in ("p/big", "p/small")} == {
        "p/big": False,
        "p/small": False,
    }
    assert sorted(state.errors) == ["p/big", "p/small"]
    for message in state.errors.values():
        assert message.startswith(f"{code}: "), message
        if fault == "invalid_object_state":
            assert "the object is archived: restore it" in message, message
    assert sorted(listing(s3, buckets.dest)) == [f"p/o{i}" for i in range(4)]
    assert not s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads")
    # each refusal is final: no request asked again (--direct's part copies are in flight
    # together: both parts of p/big may be refused)
    refused = [(r.method, r.path, r.query) for r in proxy.requests if r.fault == fault]
    assert 2 <= len(refused) <= 3 and len(set(refused)) == len(refused), refused


def put_with_checksum(s3: Any, bucket: str, key: str, algorithm: str, kind: str) -> None:
    """``key`` uploaded in two parts with a checksum of ``algorithm``, of ``kind``
    (``FULL_OBJECT`` or ``COMPOSITE``), as the AWS SDKs upload since early 2025."""
    upload = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm, ChecksumType=kind
    )
    parts = []
    for number, size in enumerate((5 * MiB, MiB), start=1):
        answer = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=os.urandom(size),
            ChecksumAlgorithm=algorithm,
        )
        parts.append(
            {
                "PartNumber": number,
                "ETag": answer["ETag"],
                f"Checksum{algorithm}": answer[f"Checksum{algorithm}"],
            }
        )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
        ChecksumType=kind,
    )


@pytest.mark.parametrize("mode", MODES)
def test_objects_with_additional_checksums_are_copied_and_compared_by_etag(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """Objects uploaded with additional checksums (CRC32, SHA-1, SHA-256; in parts, of the
    whole object or composite): their ETags stay MD5s (of the object, of its parts' MD5s),
    so every copy keeps its source's ETag, in memory, streamed in one PUT, in parts, and
    with --direct (CopyObject; UploadPartCopy in the source's layout). A --direct CopyObject
    keeps the source's checksum too (S3: "if the source object has a checksum, that
    checksum value will be copied to the new object by default"); a copy this machine
    uploads carries its own (its MD5; --checksum's)."""
    objects = {}
    for algorithm in ("CRC32", "SHA1", "SHA256"):
        for size in (3000, 2 * MiB):
            key = f"p/{algorithm}-{size}"
            objects[key] = algorithm
            s3.put_object(
                Bucket=buckets.source, Key=key, Body=os.urandom(size), ChecksumAlgorithm=algorithm
            )
    for algorithm, kind in (
        ("CRC32", "FULL_OBJECT"),
        ("CRC32", "COMPOSITE"),
        ("SHA256", "COMPOSITE"),
    ):
        put_with_checksum(s3, buckets.source, f"p/parts-{algorithm}-{kind}", algorithm, kind)
    done, _ = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 0, done.stderr
    source = listing(s3, buckets.source)
    assert len(source) == 9 and listing(s3, buckets.dest) == source
    for key in source:
        copy = s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read()
        assert copy == s3.get_object(Bucket=buckets.source, Key=key)["Body"].read(), key
    for key, algorithm in objects.items():
        head = s3.head_object(Bucket=buckets.dest, Key=key, ChecksumMode="ENABLED")
        kept = s3.head_object(Bucket=buckets.source, Key=key, ChecksumMode="ENABLED")
        if mode == "direct":
            assert head.get(f"Checksum{algorithm}") == kept[f"Checksum{algorithm}"], key


@pytest.mark.parametrize("mode", MODES)
def test_a_versioned_source_gives_its_current_versions_and_folder_markers_keep_content(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """A versioned source: only each key's current version is copied (not its noncurrent
    ones), and a key whose current version is a delete marker not at all (ListObjectsV2
    lists neither). Folder markers with content (``p/dir/`` holding bytes, beside ``p/dir``
    and ``p/dir/x``) are objects like any other: copied with their bytes."""
    s3.put_bucket_versioning(Bucket=buckets.source, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"old")
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"new")
    s3.put_object(Bucket=buckets.source, Key="p/gone", Body=b"deleted since")
    s3.delete_object(Bucket=buckets.source, Key="p/gone")  # its current version: a marker
    put_multipart(s3, buckets.source, "p/big", [5 * MiB, MiB])
    current = put_multipart(s3, buckets.source, "p/big", [5 * MiB, 2 * MiB])
    folders = {"p/dir/": b"folder content", "p/dir/x": b"x", "p/dir": b"file"}
    for key, body in folders.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    done, _ = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 0, done.stderr
    assert "5 of 5 files done" in done.stderr, done.stderr
    copies = listing(s3, buckets.dest)
    assert sorted(copies) == ["p/a", "p/big", "p/dir", "p/dir/", "p/dir/x"]
    assert copies["p/big"] == (7 * MiB, current)
    assert s3.get_object(Bucket=buckets.dest, Key="p/a")["Body"].read() == b"new"
    for key, body in folders.items():
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body
    versions = s3.list_object_versions(Bucket=buckets.dest)
    assert len(versions.get("Versions", [])) == 5 and not versions.get("DeleteMarkers")


@pytest.mark.parametrize("mode", MODES)
def test_objects_under_a_legal_hold_or_retention_at_the_source_are_copied_without_them(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """Object Lock at the source (a legal hold, a retention) does not stop reading: such
    objects are copied like any other, and their copies carry no lock (none is asked for:
    the destination bucket, without Object Lock, would refuse it), as the README says."""
    source = f"{buckets.source}-lock"
    s3.create_bucket(Bucket=source, ObjectLockEnabledForBucket=True)
    s3.put_object(Bucket=source, Key="p/held", Body=b"x" * 100, ObjectLockLegalHoldStatus="ON")
    put_multipart(s3, source, "p/big-held", [5 * MiB, MiB], ObjectLockLegalHoldStatus="ON")
    s3.put_object(
        Bucket=source,
        Key="p/retained",
        Body=os.urandom(2 * MiB),
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate="2099-01-01T00:00:00Z",
    )
    assert s3.head_object(Bucket=source, Key="p/held")["ObjectLockLegalHoldStatus"] == "ON"
    done, _ = run(proxy, tmp_path, Buckets(source, buckets.dest), *MODES[mode])
    assert done.returncode == 0, done.stderr
    assert listing(s3, buckets.dest) == listing(s3, source)
    for key in ("p/held", "p/big-held", "p/retained"):
        head = s3.head_object(Bucket=buckets.dest, Key=key)
        assert "ObjectLockLegalHoldStatus" not in head and "ObjectLockMode" not in head, key


KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("mode", MODES)
def test_a_kms_object_the_reader_may_not_decrypt_says_which_key(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """S3 refuses the GET (or the copy) of an SSE-KMS object whose key the reader may not
    use (no kms:Decrypt) with the same bare 403 "AccessDenied: Access Denied" as a missing
    s3:GetObject (boto/boto3#2952): the error said nothing of the key, and the operator
    went looking in the bucket policy. The object's HEAD (which needs no kms:Decrypt) tells
    its key: the error now names it and the permission. An object whose HEAD shows no KMS
    key keeps the bare error."""
    put_parallel(s3, buckets.source, {f"p/o{i}": b"x" * 100 for i in range(4)})
    s3.put_object(
        Bucket=buckets.source,
        Key="p/kms",
        Body=os.urandom(300),
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=KMS_KEY,
    )
    s3.put_object(
        Bucket=buckets.source,
        Key="p/kms-2m",  # streamed
        Body=os.urandom(2 * MiB),
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=KMS_KEY,
    )
    kms = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY}
    put_multipart(s3, buckets.source, "p/kms-parts", [5 * MiB, MiB], **kms)
    s3.put_object(Bucket=buckets.source, Key="p/plain", Body=os.urandom(300))
    # PUT: --direct's CopyObject and UploadPartCopy, refused as S3 refuses them
    for method in ("GET", "PUT"):
        proxy.add_rule(Rule("access_denied", method=method, path=r"/p/(kms.*|plain)$"))
    done, _ = run(proxy, tmp_path, buckets, *MODES[mode])
    assert done.returncode == 1, done.stderr
    errors = read_checkpoint(checkpoint_file(tmp_path, buckets.source, "p")).errors
    assert sorted(errors) == ["p/kms", "p/kms-2m", "p/kms-parts", "p/plain"]
    assert errors.pop("p/plain") == "AccessDenied: Access Denied"
    for message in errors.values():
        assert message.startswith("AccessDenied: Access Denied ("), errors
        assert KMS_KEY in message and "kms:Decrypt" in message, errors
    assert sorted(listing(s3, buckets.dest)) == [f"p/o{i}" for i in range(4)]
