"""The fast path (``fasts3``) against a real S3 server over HTTP, through the recording proxy.

Its requests carry ``User-Agent: asyncbackup-fast-path``, so the proxy tells which path each
request took. moto does not check signatures (the signer is checked against botocore in
``tests/unit/test_fasts3_signer.py``); here we check what a server sees and keeps: the bytes,
the metadata, the checksum headers, the session token, and that every failure is classified
exactly as the same failure on the botocore path.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import logging
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from asyncbackup import run_backup
from asyncbackup.errors import IntegrityError
from asyncbackup.fasts3 import open_fast_s3
from asyncbackup.fasts3.client import USER_AGENT, put_headers
from asyncbackup.fasts3.responses import _copy_result_parsed, _copy_result_simple
from asyncbackup.retry import RetryPolicy, classify, is_throttle, retry_after
from asyncbackup.sources.s3 import IN_MEMORY_LIMIT, S3Source
from tests.conftest import Buckets, S3Server
from tests.helpers import (
    MiB,
    assert_same_objects,
    backup_data,
    cli_args,
    list_keys,
    open_test_client,
    put_multipart,
    run_cli,
)
from tests.proxy import Recorded, Rule, S3Proxy

KEYS = [
    "data/plain.txt",
    "data/sub dir/file with spaces.bin",
    "data/a+b=c&d.txt",
    "data/tilde~name",
    "data/100%/done%20already%2Fencoded",
    "data/double//slash",
    "data/unicode/ünïcødé/日本語",
    "data/quotes'()!*$,;:@",
]
#: what S3Source copies, as head_object names it
FIELDS = (
    "ContentType",
    "ContentEncoding",
    "CacheControl",
    "ContentDisposition",
    "ContentLanguage",
    "Expires",
    "WebsiteRedirectLocation",
    "Metadata",
    "ContentLength",
    "ETag",
)


def fast(requests: list[Recorded], method: str) -> list[Recorded]:
    """The object requests (not the listing's) that took the fast path."""
    return [r for r in fast_all(requests, method) if not listing(r)]


def fast_all(requests: list[Recorded], method: str) -> list[Recorded]:
    return [r for r in requests if r.method == method and r.headers.get("user-agent") == USER_AGENT]


def listing(request: Recorded) -> bool:
    return request.method == "GET" and "list-type=2" in request.query


def fill(s3: Any, bucket: str) -> dict[str, bytes]:
    bodies = {key: os.urandom(100 + i * 37) for i, key in enumerate(KEYS)}
    for i, (key, body) in enumerate(bodies.items()):
        extra: dict[str, Any] = {"Metadata": {"owner": f"team-{i}", "Mixed-Case": "v a l"}}
        if i % 2 == 0:
            extra.update(
                ContentType="text/plain; charset=utf-8",
                CacheControl="max-age=3600, public",
                ContentDisposition=f'attachment; filename="f{i}.txt"',
                ContentEncoding="gzip",  # the stored bytes must not be decompressed
                ContentLanguage="fr-CH",
                Expires=datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
                WebsiteRedirectLocation="/elsewhere.html",
            )
        s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    big = os.urandom(IN_MEMORY_LIMIT + 4096)  # above the limit: staged as it streams
    s3.put_object(
        Bucket=bucket,
        Key="data/big.bin",
        Body=big,
        ContentType="application/x-big",
        Metadata={"owner": "team-big"},
    )
    bodies["data/big.bin"] = big
    return bodies


def heads(s3: Any, bucket: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        out[key] = {name: head.get(name) for name in FIELDS}
    return out


async def test_copies_are_identical_with_metadata_on_both_paths(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    bodies = fill(s3, buckets.source)
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path / "fast",
        endpoint_url=proxy.endpoint,
        concurrency=4,
    )
    assert report.exit_code == 0 and report.copied_files == len(bodies), report.errors
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(bodies)
    source_heads = heads(s3, buckets.source, list(bodies))
    assert heads(s3, buckets.dest, list(bodies)) == source_heads
    assert source_heads[KEYS[0]]["Metadata"] == {"owner": "team-0", "mixed-case": "v a l"}
    assert source_heads[KEYS[0]]["ContentEncoding"] == "gzip"
    # Every object went through the fast path, both ways, and so did the listing, the
    # checks of both buckets (one key listed) and the check that the destination kept
    # "data/double//slash" (a listing of "data/double//"): botocore sent nothing. The big
    # one was streamed to the destination in one PUT as it was downloaded, unsigned,
    # carrying the source's MD5 (its ETag) for the server to check.
    every = sorted(f"/{buckets.source}/{key}" for key in [*KEYS, "data/big.bin"])
    assert sorted(r.path for r in fast(proxy.requests, "GET")) == every
    lists = sorted(r.path for r in fast_all(proxy.requests, "GET") if listing(r))
    assert lists == sorted([f"/{buckets.source}"] * 2 + [f"/{buckets.dest}"] * 2)
    assert all(r.headers.get("user-agent") == USER_AGENT for r in proxy.requests)
    assert len(fast(proxy.requests, "PUT")) == len(KEYS) + 1
    (big_put,) = [r for r in fast(proxy.requests, "PUT") if "big.bin" in r.path]
    md5 = hashlib.md5(bodies["data/big.bin"]).digest()
    assert big_put.headers["content-md5"] == base64.b64encode(md5).decode()
    assert big_put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert big_put.headers["content-length"] == str(IN_MEMORY_LIMIT + 4096)
    assert "transfer-encoding" not in big_put.headers
    assert source_heads["data/big.bin"]["ETag"] == f'"{md5.hex()}"'

    # The same backup with the fast path off: the same objects, the same metadata.
    proxy.requests.clear()
    s3.create_bucket(Bucket=buckets.dest + "-b")
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest + "-b",
        base_local_path=tmp_path / "slow",
        endpoint_url=proxy.endpoint,
        concurrency=4,
        fast_path=False,
    )
    assert report.exit_code == 0 and report.copied_files == len(bodies), report.errors
    assert heads(s3, buckets.dest + "-b", list(bodies)) == source_heads
    assert not fast(proxy.requests, "GET") and not fast(proxy.requests, "PUT")


@contextlib.asynccontextmanager
async def both_paths(endpoint: str, bucket: str) -> Any:
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, endpoint)
        fast_s3 = await open_fast_s3(
            stack, client, bucket, connections=4, connect_timeout=2, read_timeout=5
        )
        assert fast_s3 is not None
        yield client, fast_s3


async def outcome(call: Callable[[Any], Awaitable[Any]], api: Any) -> tuple[Any, ...]:
    """How the engine sees a failure: classify()'s code, flag and message, the Retry-After
    hint and whether it throttles; or the response body when there is no failure."""
    try:
        response = await call(api)
    except Exception as exc:
        error = classify(exc)
        message = error.message if error.code in ("NoSuchKey", "AccessDenied") else ""
        return (error.code, error.retryable, message, retry_after(exc), is_throttle(exc))
    if "Body" not in response:  # a PUT: its ETag
        return ("ok", response["ETag"])
    async with response["Body"] as body:
        return ("ok", await body.read())


async def test_failures_are_classified_as_on_the_botocore_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any
) -> None:
    s3.put_object(Bucket=buckets.source, Key="k", Body=b"0123456789")
    etag = s3.head_object(Bucket=buckets.source, Key="k")["ETag"]
    async with both_paths(proxy.endpoint, buckets.source) as (client, fast_s3):
        calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "get": lambda api: api.get_object(Bucket=buckets.source, Key="k"),
            "missing": lambda api: api.get_object(Bucket=buckets.source, Key="nope"),
            "range": lambda api: api.get_object(
                Bucket=buckets.source, Key="k", Range="bytes=4-", IfMatch=etag
            ),
            "changed": lambda api: api.get_object(
                Bucket=buckets.source, Key="k", Range="bytes=4-", IfMatch='"0000"'
            ),
            "put": lambda api: api.put_object(Bucket=buckets.source, Key="p", Body=b"x"),
        }
        faults = {
            "denied": ("access_denied", "get"),
            "slowdown": ("slowdown", "get"),
            "throttle": ("throttle", "put"),
            "internal": ("internal", "put"),
            "reset": ("reset_before", "get"),
            "invalid_key": ("invalid_access_key", "get"),
        }
        seen: dict[str, tuple[Any, ...]] = {}
        for name, call in calls.items():
            results = []
            for api in (client, fast_s3):
                results.append(await outcome(call, api))
            assert results[0] == results[1], name
            seen[name] = results[1]
        for name, (fault, call_name) in faults.items():
            results = []
            for api in (client, fast_s3):
                proxy.add_rule(Rule(fault, times=1, retry_after=3.0))
                results.append(await outcome(calls[call_name], api))
            proxy.clear_faults()
            assert results[0] == results[1], name
            seen[name] = results[1]
        assert fast_s3.enabled and fast_s3.fast_requests >= 2
    assert seen["get"] == ("ok", b"0123456789") and seen["range"] == ("ok", b"456789")
    assert seen["missing"][:2] == ("NoSuchKey", False)
    assert seen["changed"][:2] == ("PreconditionFailed", False)
    assert seen["denied"][:2] == ("AccessDenied", False)
    assert seen["slowdown"] == ("SlowDown", True, "", 3.0, True)
    assert seen["throttle"][:2] == ("TooManyRequests", True)
    assert seen["internal"][:2] == ("InternalError", True)
    # aiohttp itself repeats a GET whose reused connection was reset: both paths do
    assert seen["reset"][0] == "ok" or seen["reset"][1] is True
    assert seen["invalid_key"][:2] == ("InvalidAccessKeyId", False)
    assert len(fast(proxy.requests, "GET")) >= 8


async def test_no_credentials_is_classified_as_on_the_botocore_path(
    s3_server: S3Server, buckets: Buckets, aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_env / "missing"))

    def get(api: Any) -> Awaitable[Any]:
        return api.get_object(Bucket=buckets.source, Key="k")  # type: ignore[no-any-return]

    async with both_paths(s3_server.endpoint, buckets.source) as (client, fast_s3):
        results = [await outcome(get, api) for api in (client, fast_s3)]
    assert results[0] == results[1] == ("NoCredentials", False, "", None, False)


async def test_slowdown_and_short_bodies_are_retried_on_the_fast_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    for i in range(6):
        s3.put_object(Bucket=buckets.source, Key=f"data/o{i}", Body=os.urandom(5000 + i))
    proxy.add_rule(Rule("slowdown", method="GET", path=r"/data/o0$", times=2))
    proxy.add_rule(Rule("slowdown", method="PUT", path=r"/data/o1$", times=2))
    proxy.add_rule(Rule("truncate", method="GET", path=r"/data/o2$", times=1))
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path,
        endpoint_url=proxy.endpoint,
        concurrency=3,
    )
    assert report.exit_code == 0 and report.copied_files == 6, report.errors
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 6
    assert proxy.faults_injected() == {"slowdown": 4, "truncate": 1}
    gets = [r for r in fast(proxy.requests, "GET") if r.path.endswith("/data/o2")]
    assert len(gets) == 2 and gets[1].range == "bytes=2501-" and gets[1].if_match  # resumed
    assert len(fast(proxy.requests, "GET")) == 6 + 2 + 1
    assert len(fast(proxy.requests, "PUT")) == 6 + 2


async def test_a_signature_complaint_hands_the_bucket_back_to_botocore(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(5):
        s3.put_object(Bucket=buckets.source, Key=f"data/o{i}", Body=os.urandom(300))
    proxy.add_rule(Rule("signature_mismatch", method="GET", path=r"/data/o", times=1))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await run_backup(
            source_bucket=buckets.source,
            source_path="data",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            endpoint_url=proxy.endpoint,
            concurrency=1,
        )
    assert report.exit_code == 0 and report.copied_files == 5, report.errors
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 5
    assert len(fast(proxy.requests, "GET")) == 1  # the one refused; then botocore
    assert len([r for r in proxy.requests if r.method == "GET" and "/data/o" in r.path]) == 6
    assert len(fast(proxy.requests, "PUT")) == 5  # the destination bucket kept its fast path
    assert "fast path off for bucket" in caplog.text and "SignatureDoesNotMatch" in caplog.text


async def test_session_token_and_checksum_headers_reach_the_server(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, aws_env: Path
) -> None:
    with (aws_env / "credentials").open("a") as handle:
        handle.write("[tok]\naws_access_key_id = ASIATEMP0000TEST\n")
        handle.write("aws_secret_access_key = temp-secret-0123456789\n")
        handle.write("aws_session_token = FQoGZXIvYXdzE+token/with=chars\n")
    with (aws_env / "config").open("a") as handle:
        handle.write("\n[profile tok]\nregion = us-east-1\n")
    bodies = {f"data/c{i}": os.urandom(1000 + i) for i in range(3)}
    for key, body in bodies.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    for mode in ("crc32", "sha256"):
        proxy.requests.clear()
        report = await run_backup(
            source_bucket=buckets.source,
            source_path="data",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path / mode,
            endpoint_url=proxy.endpoint,
            source_profile="tok",
            dest_profile="tok",
            checksum=mode,
        )
        assert report.exit_code == 0 and report.copied_files == 3, report.errors
        puts = fast(proxy.requests, "PUT")
        assert len(puts) == 3 and len(fast(proxy.requests, "GET")) == 3
        for put in fast(proxy.requests, "GET") + puts:
            assert put.headers["x-amz-security-token"] == "FQoGZXIvYXdzE+token/with=chars"
            assert "x-amz-security-token" in put.headers["authorization"]
            assert put.access_key == "ASIATEMP0000TEST"
        for put in puts:
            body = bodies[put.path.split("/", 2)[2]]
            if mode == "crc32":
                expected = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
            else:
                expected = s3_checksum_sha256(body)
            assert put.headers[f"x-amz-checksum-{mode}"] == expected
            assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
            assert "content-md5" not in put.headers
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 3


def s3_checksum_sha256(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def test_what_the_fast_path_leaves_to_botocore() -> None:
    body = b"abc"
    assert put_headers({"Bucket": "b", "Key": "k", "Body": body, "ContentMD5": "x"}) == {
        "content-md5": "x"
    }
    assert (
        put_headers({"Bucket": "b", "Key": "k", "Body": body, "ChecksumAlgorithm": "CRC32C"})
        is None
    )
    assert put_headers({"Bucket": "b", "Key": "k", "Body": body, "ACL": "private"}) is None
    assert put_headers({"Bucket": "b", "Key": "k", "Body": body, "Metadata": {"a": "é"}}) is None
    broken = {"a": "one\r\nx-amz-meta-b: injected"}  # would end the header early
    assert put_headers({"Bucket": "b", "Key": "k", "Body": body, "Metadata": broken}) is None
    assert put_headers({"Bucket": "b", "Key": "k", "Body": open}) is None  # not bytes
    expires = put_headers({"Bucket": "b", "Key": "k", "Body": body, "Expires": "2030-01-01"})
    assert expires == {"expires": "Tue, 01 Jan 2030 00:00:00 GMT"}


def test_cli_no_fast_path_sends_everything_through_botocore(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="data/one", Body=b"1")
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")
    done = run_cli(["data", *args, "--no-fast-path"])
    assert done.returncode == 0, done.stderr
    assert [r for r in proxy.requests if r.path.endswith("/data/one")]
    assert not fast(proxy.requests, "GET") and not fast(proxy.requests, "PUT")
    proxy.requests.clear()
    done = run_cli(["data", *args, "--ignore-checkpoints"])
    assert done.returncode == 0, done.stderr
    assert len(fast(proxy.requests, "GET")) == len(fast(proxy.requests, "PUT")) == 1


def copy_requests(requests: list[Recorded], *, fast_only: bool = True) -> list[Recorded]:
    """The CopyObject requests (PUTs with a copy source, no multipart query)."""
    return [
        r
        for r in requests
        if r.method == "PUT"
        and "x-amz-copy-source" in r.headers
        and not r.query
        and (not fast_only or r.headers.get("user-agent") == USER_AGENT)
    ]


async def test_direct_copy_goes_through_the_fast_path_and_keeps_objects_identical(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    bodies = fill(s3, buckets.source)
    put_multipart(s3, buckets.source, "data/multi.bin", (5 * MiB, 1000))  # botocore's
    keys = [*bodies, "data/multi.bin"]
    source_heads = heads(s3, buckets.source, list(bodies))
    for fast_path, dest in ((True, buckets.dest), (False, buckets.dest + "-b")):
        if not fast_path:
            s3.create_bucket(Bucket=dest)
        proxy.requests.clear()
        report = await backup_data(
            buckets,
            tmp_path / str(fast_path),
            proxy.endpoint,
            dest_bucket=dest,
            concurrency=4,
            direct=True,
            fast_path=fast_path,
        )
        assert report.exit_code == 0 and report.copied_files == len(keys), report.errors
        assert assert_same_objects(s3, buckets.source, dest) == len(keys)  # byte for byte
        assert heads(s3, dest, list(bodies)) == source_heads  # ETags and metadata too
        copies = copy_requests(proxy.requests, fast_only=False)
        assert sorted(r.path for r in copies) == sorted(f"/{dest}/{key}" for key in bodies)
        fast_copies = copy_requests(proxy.requests)
        if fast_path:  # every single-part object, whatever its size; multipart on botocore
            assert fast_copies == copies
            for copy in fast_copies:
                key = copy.path.split("/", 2)[2]
                assert copy.headers["x-amz-copy-source"] == quote(f"{buckets.source}/{key}")
                assert copy.headers["x-amz-copy-source-if-match"] == source_heads[key]["ETag"]
                assert copy.headers["x-amz-metadata-directive"] == "COPY"
        else:
            assert not fast_copies and not fast(proxy.requests, "PUT")
        assert not fast(proxy.requests, "GET")
        part_copies = [r for r in proxy.requests if "uploadId" in r.query and r.method == "PUT"]
        assert part_copies and not fast(part_copies, "PUT")
        # Server-side: no object body passed through this machine.
        assert not [r for r in proxy.requests if r.method == "GET" and not r.query]


def test_moto_copy_answers_are_read_without_an_xml_parser(buckets: Buckets, s3: Any) -> None:
    """The CopyObject answers of a real server (moto's, as sent), plain and with checksums:
    the simple parse reads them (no expat parser built) to what expat reads."""
    bodies: list[bytes] = []
    s3.meta.events.register(
        "after-call.s3.CopyObject",
        lambda http_response, **_: bodies.append(http_response.content),
    )
    s3.put_object(Bucket=buckets.source, Key="k", Body=b"0123456789")
    source = {"Bucket": buckets.source, "Key": "k"}
    s3.copy_object(Bucket=buckets.dest, Key="a", CopySource=source)
    s3.copy_object(Bucket=buckets.dest, Key="b", CopySource=source, ChecksumAlgorithm="SHA256")
    assert len(bodies) == 2
    for body in bodies:
        simple = _copy_result_simple(body)
        assert simple is not None and simple["ETag"] and simple["LastModified"], body
        assert simple == _copy_result_parsed([], 200, body, "CopyObject")
    assert "ChecksumSHA256" in (_copy_result_simple(bodies[1]) or {})


async def test_copy_failures_are_classified_as_on_the_botocore_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any
) -> None:
    s3.put_object(Bucket=buckets.source, Key="k", Body=b"0123456789")
    etag = s3.head_object(Bucket=buckets.source, Key="k")["ETag"]

    def copy(key: str = "k", **condition: str) -> Callable[[Any], Awaitable[Any]]:
        return lambda api: api.copy_object(
            Bucket=buckets.dest,
            Key="copy",
            CopySource={"Bucket": buckets.source, "Key": key},
            MetadataDirective="COPY",
            StorageClass="STANDARD_IA",
            **(condition or {"CopySourceIfMatch": etag}),
        )

    async def copy_outcome(call: Callable[[Any], Awaitable[Any]], api: Any) -> tuple[Any, ...]:
        try:
            response = await call(api)
        except Exception as exc:
            error = classify(exc)
            return (error.code, error.retryable, retry_after(exc), is_throttle(exc))
        result = response["CopyObjectResult"]
        return ("ok", result["ETag"], type(result["LastModified"]), sorted(response))

    async with both_paths(proxy.endpoint, buckets.dest) as (client, fast_s3):
        calls = {
            "ok": copy(),
            "missing": copy("nope"),
            # moto checks If-None-Match on a copy source, not If-Match: the same 412
            "changed": copy(CopySourceIfNoneMatch=etag),
        }
        faults = ("slowdown", "internal", "internal_in_200", "access_denied", "reset_before")
        seen: dict[str, tuple[Any, ...]] = {}
        for name, call in calls.items():
            results = [await copy_outcome(call, api) for api in (client, fast_s3)]
            assert results[0] == results[1], name
            seen[name] = results[1]
        for fault in faults:
            results = []
            for api in (client, fast_s3):
                proxy.add_rule(Rule(fault, method="PUT", times=1, retry_after=2.0))
                results.append(await copy_outcome(calls["ok"], api))
            proxy.clear_faults()
            assert results[0] == results[1], fault
            seen[fault] = results[1]
        succeeded = [name for name, result in seen.items() if result[0] == "ok"]
        assert fast_s3.enabled and fast_s3.fast_requests == len(succeeded)
    assert seen["ok"][:2] == ("ok", etag)
    assert seen["missing"][:2] == ("NoSuchKey", False)
    assert seen["changed"][:2] == ("PreconditionFailed", False)
    assert seen["slowdown"] == ("SlowDown", True, 2.0, True)
    assert seen["internal"][:2] == seen["internal_in_200"][:2] == ("InternalError", True)
    assert seen["access_denied"][:2] == ("AccessDenied", False)
    # aiohttp repeats a request whose reused connection was reset: both paths do
    assert seen["reset_before"][0] == "ok" or seen["reset_before"][1] is True
    assert len(copy_requests(proxy.requests)) >= len(calls) + len(faults)
    assert all(r.headers["content-length"] == "0" for r in copy_requests(proxy.requests))
    assert s3.head_object(Bucket=buckets.dest, Key="copy")["StorageClass"] == "STANDARD_IA"


async def test_direct_copy_errors_are_those_of_the_botocore_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A source deleted, or replaced, between the listing and its copy: the same outcome with
    and without the fast path (the deleted one left out, the replaced one an error), and
    everything else copied."""
    errors = []
    for fast_path in (True, False):
        for i in range(4):
            s3.put_object(Bucket=buckets.source, Key=f"data/o{i}", Body=bytes([i]) * (200 + i))
        dest = f"{buckets.dest}-{fast_path}".lower()
        s3.create_bucket(Bucket=dest)
        proxy.add_rule(
            Rule(
                None,
                method="PUT",
                path=rf"^/{dest}/data/o1$",
                times=1,
                action=lambda: s3.delete_object(Bucket=buckets.source, Key="data/o1"),
            )
        )
        proxy.add_rule(
            Rule(
                None,
                method="PUT",
                path=rf"^/{dest}/data/o2$",
                times=1,
                action=lambda: s3.put_object(Bucket=buckets.source, Key="data/o2", Body=b"new"),
            )
        )
        proxy.requests.clear()
        report = await backup_data(
            buckets,
            tmp_path / str(fast_path),
            proxy.endpoint,
            dest_bucket=dest,
            concurrency=2,
            direct=True,
            fast_path=fast_path,
        )
        proxy.clear_faults()
        assert report.exit_code == 1 and report.copied_files == 2, report.errors
        assert report.source_deleted_files == 1
        copied = list_keys(s3, dest)
        assert "data/o0" in copied and "data/o3" in copied and "data/o1" not in copied
        every = copy_requests(proxy.requests, fast_only=False)
        assert len(every) == 4 + 2  # o2 twice more: the whole object is retried
        assert copy_requests(proxy.requests) == (every if fast_path else [])
        errors.append(report.errors)
    assert errors[0] == errors[1]
    # moto ignores x-amz-copy-source-if-match: the copy's ETag tells the object changed
    assert list(errors[0]) == ["data/o2"] and "differs from source" in errors[0]["data/o2"]


def test_cli_direct_no_fast_path_copies_through_botocore(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="data/one", Body=b"1")
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet", "--direct")
    done = run_cli(["data", *args, "--no-fast-path"])
    assert done.returncode == 0, done.stderr
    assert len(copy_requests(proxy.requests, fast_only=False)) == 1
    assert not copy_requests(proxy.requests)
    proxy.requests.clear()
    done = run_cli(["data", *args, "--ignore-checkpoints"])
    assert done.returncode == 0, done.stderr
    assert len(copy_requests(proxy.requests)) == 1
    assert s3.get_object(Bucket=buckets.dest, Key="data/one")["Body"].read() == b"1"


async def test_an_error_in_a_200_put_answer_is_raised_as_on_the_botocore_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any
) -> None:
    """S3 may answer 200 and then put an ``<Error>`` in the body; botocore raises it as a 500
    for every operation without a streamed output (PutObject and UploadPart included): the
    fast path must not take it for a success (an object marked done that is not there)."""
    body = b"0123456789"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    upload_id = s3.create_multipart_upload(Bucket=buckets.dest, Key="parts")["UploadId"]
    calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "put": lambda api: api.put_object(Bucket=buckets.dest, Key="p", Body=body, ContentMD5=md5),
        "part": lambda api: api.upload_part(
            Bucket=buckets.dest,
            Key="parts",
            UploadId=upload_id,
            PartNumber=1,
            Body=body,
            ContentMD5=md5,
        ),
    }
    async with both_paths(proxy.endpoint, buckets.dest) as (client, fast_s3):
        for name, call in calls.items():
            results = []
            for api in (client, fast_s3):
                proxy.add_rule(Rule("internal_in_200", method="PUT", times=1, retry_after=2.0))
                results.append(await outcome(call, api))
            proxy.clear_faults()
            assert results[0] == results[1], name
            assert results[1][:2] == ("InternalError", True), name
        # the streamed PUT answers through the same check
        proxy.add_rule(Rule("internal_in_200", method="PUT", times=1))

        async def chunks() -> Any:
            yield body

        with pytest.raises(Exception) as raised:
            await fast_s3.put_object_stream(
                {"Bucket": buckets.dest, "Key": "s", "ContentMD5": md5}, len(body), chunks()
            )
        assert classify(raised.value).code == "InternalError"
        assert fast_s3.enabled
    assert proxy.faults_injected() == {"internal_in_200": 5}


async def test_a_streamed_body_that_fails_raises_its_own_error_not_a_network_one(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """aiohttp reports a request body that raises as a connection failure; a staged file cut
    short (``_file_chunks``' IntegrityError) must be reported and retried as itself, not as
    "Could not connect to the endpoint URL". A local OSError stays a retryable object error
    (raised as it is, it would end the run). Nothing is stored, and the pool goes on."""
    body = os.urandom(10_000)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    params = {"Bucket": buckets.dest, "Key": "s", "ContentMD5": md5}

    async def failing(failure: Exception) -> AsyncIterator[bytes]:
        yield body[:4096]
        raise failure

    async with both_paths(s3_server.endpoint, buckets.dest) as (_, fast_s3):
        short = IntegrityError("the staged file ended at 4096 of 10000 bytes")
        with pytest.raises(IntegrityError) as raised:
            await fast_s3.put_object_stream(params, len(body), failing(short))
        assert raised.value is short and classify(raised.value).retryable
        gone = FileNotFoundError(2, "No such file or directory", "/stage/gone")
        with pytest.raises(Exception) as raised_os:
            await fast_s3.put_object_stream(params, len(body), failing(gone))
        assert classify(raised_os.value).retryable
        assert "Contents" not in s3.list_objects_v2(Bucket=buckets.dest)

        async def whole() -> AsyncIterator[bytes]:
            yield body

        answer = await fast_s3.put_object_stream(params, len(body), whole())
        assert answer is not None and answer["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert s3.get_object(Bucket=buckets.dest, Key="s")["Body"].read() == body


#: keys a listing must give back exactly: what encoding-type=url encodes ('+', ' ', '%',
#: control characters XML cannot carry) and what it need not
LISTED_KEYS = [
    *KEYS,
    "data/ctrl\x01\x1fchars",
    "data/a+plus and space",
    'data/<angle>&amp;"quote"',
    "data/trailing space ",
    "data/deep/er/still/x",
]


async def test_listing_pages_are_those_of_the_botocore_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any
) -> None:
    """Every page of ListObjectsV2, paged by MaxKeys, ContinuationToken, StartAfter and a
    Delimiter, has the same keys, sizes, ETags, prefixes and paging fields on both paths."""
    for i, key in enumerate(LISTED_KEYS):
        s3.put_object(Bucket=buckets.source, Key=key, Body=b"x" * i)
    asks: list[dict[str, Any]] = [
        {"Prefix": "data/", "MaxKeys": 3},
        {"Prefix": "data/", "StartAfter": "data/c"},
        {"Prefix": "data/", "Delimiter": "/"},
        {"Prefix": "data/sub dir/"},
        {"Prefix": "nothing-here/"},
    ]
    kept = ("Key", "Size", "ETag", "StorageClass")
    async with both_paths(proxy.endpoint, buckets.source) as (client, fast_s3):
        for ask in asks:
            pages: list[list[Any]] = []
            for api in (client, fast_s3):
                walked, params = [], dict(ask)
                while True:
                    page = await api.list_objects_v2(Bucket=buckets.source, **params)
                    contents = [{k: o[k] for k in kept if k in o} for o in page.get("Contents", ())]
                    fields = ("IsTruncated", "KeyCount", "Prefix", "StartAfter", "Delimiter")
                    walked.append(
                        [contents, page.get("CommonPrefixes"), *(page.get(f) for f in fields)]
                    )
                    if not page.get("IsTruncated"):
                        break
                    params = {**ask, "ContinuationToken": page["NextContinuationToken"]}
                pages.append(walked)
            assert pages[0] == pages[1], ask
        assert fast_s3.enabled
    assert pages[0][0][0] == []  # the last ask: nothing under that prefix
    lists = [r for r in proxy.requests if listing(r)]
    assert len(fast_all(lists, "GET")) * 2 == len(lists) >= 18  # half of them by each path


async def test_a_run_lists_through_the_fast_path(proxy: S3Proxy, buckets: Buckets, s3: Any) -> None:
    """S3Source lists as a run does: every key once, in order, sizes and ETags as stored."""
    for i, key in enumerate(LISTED_KEYS):
        s3.put_object(Bucket=buckets.source, Key=key, Body=b"x" * i)
    stored = {o["Key"]: o for o in s3.list_objects_v2(Bucket=buckets.source)["Contents"]}
    async with both_paths(proxy.endpoint, buckets.source) as (client, fast_s3):
        source = S3Source(client, buckets.source, RetryPolicy(2))
        source.fast = fast_s3
        items = [item async for page in source.list("data/", streams=4) for item in page]
        assert fast_s3.fast_requests >= 1 and fast_s3.enabled
    assert [item.key for item in items] == sorted(LISTED_KEYS)
    for item in items:
        assert (item.size, item.etag) == (stored[item.key]["Size"], stored[item.key]["ETag"])
    lists = [r for r in proxy.requests if listing(r)]
    assert lists and lists == [r for r in fast_all(proxy.requests, "GET") if listing(r)]


async def test_listing_failures_are_classified_as_on_the_botocore_path(
    proxy: S3Proxy, buckets: Buckets
) -> None:
    async def listed(api: Any, bucket: str) -> tuple[Any, ...]:
        try:
            page = await api.list_objects_v2(Bucket=bucket, Prefix="p/")
        except Exception as exc:
            error = classify(exc)
            return (error.code, error.retryable, retry_after(exc), is_throttle(exc))
        return ("ok", page["KeyCount"])

    results: dict[str, list[tuple[Any, ...]]] = {}
    missing = "no-such-bucket-here"
    async with both_paths(proxy.endpoint, missing) as (client, fast_s3):
        results["missing"] = [await listed(api, missing) for api in (client, fast_s3)]
    async with both_paths(proxy.endpoint, buckets.source) as (client, fast_s3):
        for fault in ("access_denied", "slowdown", "internal", "reset_before", None):
            results[str(fault)] = []
            for api in (client, fast_s3):
                if fault is not None:
                    proxy.add_rule(Rule(fault, times=1, retry_after=2.0))
                results[str(fault)].append(await listed(api, buckets.source))
                proxy.clear_faults()
        assert fast_s3.enabled and fast_s3.fast_requests >= 1
    for name, (botocore_path, fast_path) in results.items():
        assert botocore_path == fast_path, name
    assert results["missing"][1][:2] == ("NoSuchBucket", False)
    assert results["access_denied"][1][:2] == ("AccessDenied", False)
    assert results["slowdown"][1] == ("SlowDown", True, 2.0, True)
    assert results["internal"][1][:2] == ("InternalError", True)
    assert results["None"][1] == ("ok", 0)


async def test_multipart_uploads_start_and_abort_as_on_the_botocore_path(
    proxy: S3Proxy, buckets: Buckets, s3: Any
) -> None:
    """CreateMultipartUpload and AbortMultipartUpload (the start-up check's upload, which
    tells the destination's encryption): the same fields on both paths (the encryption the
    upload gets, a bucket's default named by S3 in the answer: ``kms_default``), the upload
    gone after its abort; the errors as botocore's; a KMS key id, a storage class and a
    checksum algorithm sent as botocore sends them."""
    proxy.add_rule(
        Rule("kms_default", method="POST", path=f"^/{buckets.source}/kms", query="uploads")
    )
    params = {"StorageClass": "STANDARD_IA", "ChecksumAlgorithm": "SHA256"}
    answers: list[dict[str, Any]] = []
    async with both_paths(proxy.endpoint, buckets.source) as (client, fast_s3):
        for api in (client, fast_s3):
            for key in ("plain key+é", "kms"):
                started = await api.create_multipart_upload(
                    Bucket=buckets.source, Key=key, **params
                )
                kept = ("Bucket", "Key", "ServerSideEncryption", "ChecksumAlgorithm")
                answers.append({k: started.get(k) for k in kept})
                assert started["UploadId"]
                await api.abort_multipart_upload(
                    Bucket=buckets.source, Key=key, UploadId=started["UploadId"]
                )
            gone = await outcome(
                lambda a: a.abort_multipart_upload(Bucket=buckets.source, Key="k", UploadId="none"),
                api,
            )
            answers.append({"abort of no upload": gone[:2]})
        assert fast_s3.enabled
    botocore_side, fast_side = answers[:3], answers[3:]
    assert fast_side == botocore_side
    assert botocore_side[1]["ServerSideEncryption"] == "aws:kms"
    assert botocore_side[0]["Key"] == "plain key+é"
    assert s3.list_multipart_uploads(Bucket=buckets.source).get("Uploads", []) == []
    sent = fast_all(proxy.requests, "POST")
    assert len(sent) == 2 and all(r.query == "uploads=" for r in sent), sent
    assert sent[0].headers.get("x-amz-storage-class") == "STANDARD_IA"
    assert sent[0].headers.get("x-amz-checksum-algorithm") == "SHA256"
    assert len(fast_all(proxy.requests, "DELETE")) == 3
