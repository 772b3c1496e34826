"""Our SigV4 signer against botocore's own ``S3SigV4Auth``, request by request.

botocore signs first (with its own clock); ours then signs the same request with the
``X-Amz-Date`` botocore chose, and the two ``Authorization`` headers must be identical. The
URLs are those the fast path sends (``Target.path``), which ``test_fasts3_target`` proves equal
to botocore's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.handlers import handle_copy_source_param

from asyncbackup.fasts3.client import copy_headers, copy_source
from asyncbackup.fasts3.signer import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    Credentials,
    SigV4Signer,
    encode_key,
    encode_query,
)
from asyncbackup.fasts3.target import Target, host_header, probe_target
from tests.helpers import open_test_client

KEYS = [
    "plain.txt",
    "dir/sub dir/file with spaces.bin",
    "a+b=c&d.txt",
    "tilde~name",
    "100%/done%20already%2Fencoded",
    "double//slash/",
    "/leading-slash",
    "unicode/ünïcødé/日本語/emoji-🙂",
    "odd/..//./segments/..",
    "quotes'\"<>#?[]{}|\\^`",
    "tab\tand,comma;semicolon:colon@at!bang$dollar*star(paren)",
]
ENDPOINTS = [
    ("http://127.0.0.1:9000", "/bucket-1/"),
    ("http://localhost", "/bucket-1/"),
    ("https://bucket-1.s3.eu-west-1.amazonaws.com", "/"),
    ("https://s3.amazonaws.com:443", "/my.dotted.bucket/"),
]
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def botocore_sign(
    method: str,
    url: str,
    headers: dict[str, str],
    credentials: BotoCredentials,
    region: str,
    body: bytes,
    *,
    unsigned_payload: bool,
) -> AWSRequest:
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    if unsigned_payload:  # what botocore does on https with a checksum header, made explicit
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return request


def ours_sign(
    method: str,
    url: str,
    headers: dict[str, str],
    credentials: Credentials,
    region: str,
    timestamp: str,
    payload_hash: str,
) -> dict[str, str]:
    path_query = url.split("://", 1)[1].partition("/")[2]
    path, _, query = ("/" + path_query).partition("?")
    return SigV4Signer(region).sign(
        method,
        path,
        query,
        {"host": host_header(url), **headers},
        credentials,
        timestamp=timestamp,
        payload_hash=payload_hash,
    )


def assert_same_signature(
    method: str,
    url: str,
    headers: dict[str, str],
    *,
    body: bytes = b"",
    token: str | None = None,
    region: str = "us-east-1",
    unsigned_payload: bool = True,
) -> dict[str, str]:
    boto = botocore_sign(
        method,
        url,
        headers,
        BotoCredentials("AKIDEXAMPLE", SECRET, token),
        region,
        body,
        unsigned_payload=unsigned_payload,
    )
    payload = UNSIGNED_PAYLOAD if unsigned_payload else hashlib.sha256(body).hexdigest()
    ours = ours_sign(
        method,
        url,
        headers,
        Credentials("AKIDEXAMPLE", SECRET, token),
        region,
        boto.headers["X-Amz-Date"],
        payload,
    )
    assert ours["authorization"] == boto.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == boto.headers["X-Amz-Content-SHA256"] == payload
    assert ours.get("x-amz-security-token") == boto.headers.get("X-Amz-Security-Token")
    return ours


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(("origin", "prefix"), ENDPOINTS)
def test_get_signature_equals_botocore(key: str, origin: str, prefix: str) -> None:
    url = origin + prefix + encode_key(key)
    ours = assert_same_signature("GET", url, {}, unsigned_payload=False)
    assert ours["x-amz-content-sha256"] == EMPTY_SHA256


@pytest.mark.parametrize("key", KEYS)
def test_put_signature_with_headers_and_session_token(key: str) -> None:
    body = b"hello world" * 10
    headers = {
        "Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww==",
        "Content-Type": "text/plain; charset=utf-8",
        "Cache-Control": "max-age=60,   public",  # runs of spaces are folded when signed
        "Content-Disposition": 'attachment; filename="a b.txt"',
        "Expires": "Tue, 01 Jan 2030 00:00:00 GMT",
        "x-amz-meta-Owner": "  someone  ",
        "x-amz-meta-empty": "",
        "x-amz-storage-class": "STANDARD_IA",
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "alias/backup",
    }
    url = "http://127.0.0.1:9000/bucket-1/" + encode_key(key)
    ours = assert_same_signature("PUT", url, headers, body=body, token="FQoGZXIvYXdzE//token+/=")
    assert "x-amz-security-token" in ours["authorization"]


def test_put_signature_with_signed_payload_and_checksum_header() -> None:
    body = b"\x00\x01 binary body"
    headers = {"x-amz-checksum-crc32": "DUoRhQ==", "x-amz-sdk-checksum-algorithm": "CRC32"}
    url = "https://bucket-1.s3.eu-west-1.amazonaws.com/" + encode_key("k e y")
    assert_same_signature(
        "PUT", url, headers, body=body, region="eu-west-1", unsigned_payload=False
    )
    assert_same_signature("PUT", url, headers, body=body, region="eu-west-1")


@pytest.mark.parametrize(
    "params",
    [
        [("partNumber", "1")],
        [("versionId", "3/L4kqtJl40Nr8X8gdRQBpUMLUo+=")],
        [("prefix", "a b/ü"), ("list-type", "2"), ("delimiter", "/"), ("a", "")],
        [("x", "2"), ("x", "1"), ("X", "0")],
    ],
)
def test_query_strings_equal_botocore(params: list[tuple[str, str]]) -> None:
    url = "http://127.0.0.1:9000/bucket-1/" + encode_key("k+1") + "?" + encode_query(params)
    assert_same_signature("GET", url, {"Range": "bytes=10-"}, unsigned_payload=False)


def test_upload_part_signature_equals_botocore() -> None:
    """UploadPart as the fast path sends it: the part and the upload id in the query,
    Content-MD5, unsigned payload (and signed, when there is no checksum header)."""
    body = b"part data" * 1000
    query = encode_query([("uploadId", "VXBsb2FkIElE.for_6-9a~Mx+/x=="), ("partNumber", "10000")])
    url = "http://127.0.0.1:9000/bucket-1/" + encode_key("dir/big file.bin") + "?" + query
    assert_same_signature("PUT", url, {"Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww=="}, body=body)
    assert_same_signature("PUT", url, {}, body=body, unsigned_payload=False)


def test_user_agent_and_content_length_are_not_signed() -> None:
    signed = SigV4Signer("us-east-1").sign(
        "PUT",
        "/b/k",
        "",
        {"host": "h", "User-Agent": "x", "Content-Length": "3"},
        Credentials("AK", "SK"),
        timestamp="20300101T000000Z",
    )
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in signed["authorization"]
    assert signed["user-agent"] == "x"  # still sent


def test_signing_key_is_cached_per_secret_and_day() -> None:
    signer = SigV4Signer("eu-west-1")
    one = signer.signing_key("secret", "20300101")
    assert signer.signing_key("secret", "20300101") is one
    assert signer.signing_key("secret", "20300102") != one
    assert signer.signing_key("other", "20300102") != signer.signing_key("secret", "20300102")


def test_credentials_repr_hides_the_secret() -> None:
    text = repr(Credentials("AKIAABCDEFGH", "very-secret-value", "session-token"))
    assert "very-secret-value" not in text and "session-token" not in text


def test_key_encoding_keeps_slashes_and_encodes_once() -> None:
    assert encode_key("a b/c+d~e%20f//ü") == "a%20b/c%2Bd~e%2520f//%C3%BC"
    encoded: Any = encode_key("%2F")
    assert encoded == "%252F"


def _keys_to_encode() -> list[str]:
    """Every ASCII character alone and inside a plain key, a sample of the others, and
    random keys made of them (what ``encode_key`` and ``copy_source`` take as given)."""
    rng = random.Random(4)
    chars = [chr(c) for c in range(128)]
    chars += [chr(rng.randrange(128, 0x110000)) for _ in range(2_000)]
    chars = [c for c in chars if not 0xD800 <= ord(c) < 0xE000] + ["\udc80"]  # a lone one
    keys = ["", "/", "small/d000/000001-4096.bin", "a-b_c.d~e/f", "A" * 1024]
    keys += chars + [f"dir/{c}name" for c in chars]
    alphabet = [*"abcXYZ019-_.~/", *chars[:128], "\u00fc", "\u20ac", "\U0001f600"]
    keys += ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(20_000)]
    return keys


def test_keys_with_nothing_to_encode_are_sent_as_they_are() -> None:
    """``encode_key`` and ``copy_source`` skip ``quote()`` for a text it would give back as
    it is: the same text for every key as ``quote()`` of its UTF-8 (an error where that
    fails, a lone surrogate), and most keys are taken as they are."""
    as_they_are = 0
    for key in _keys_to_encode():
        try:
            expected: str | type[Exception] = quote(key.encode("utf-8"), safe="/~")
        except UnicodeEncodeError:
            expected = UnicodeEncodeError
        try:
            ours: str | type[Exception] = encode_key(key)
        except UnicodeEncodeError:
            ours = UnicodeEncodeError
        assert ours == expected, repr(key)
        as_they_are += ours == key
        try:
            expected = quote(f"bucket-1/{key}".encode(), safe="-._~/")
        except UnicodeEncodeError:
            expected = UnicodeEncodeError
        try:
            ours = copy_source({"Bucket": "bucket-1", "Key": key}) or ""
        except UnicodeEncodeError:
            ours = UnicodeEncodeError
        assert ours == expected, repr(key)
    assert as_they_are > 100


#: CopyObject parameters as the direct copier sends them, and some it may send one day
COPY_CASES: list[dict[str, Any]] = [
    {"MetadataDirective": "COPY", "CopySourceIfMatch": '"9b2cf535f27731c974343645a3985328"'},
    {
        "MetadataDirective": "COPY",
        "CopySourceIfMatch": '"0f343b0931126a20f133d67c2b018a3b-3"',
        "StorageClass": "STANDARD_IA",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/backup key",
    },
    {
        "MetadataDirective": "REPLACE",
        "ContentType": "text/plain; charset=utf-8",
        "CacheControl": "max-age=60,   public",
        "Metadata": {"Owner": "  someone  ", "empty": ""},
        "Expires": "2030-01-01T00:00:00Z",
        "CopySourceIfNoneMatch": "*",
        "TaggingDirective": "COPY",
    },
]
#: what botocore adds to every request, that the fast path does not send
BOTOCORE_ONLY = frozenset(
    {"user-agent", "amz-sdk-invocation-id", "amz-sdk-request", "content-length", "expect"}
)


class _Captured(Exception):
    pass


async def botocore_copy_request(client: Any, params: dict[str, Any]) -> Any:
    """The request botocore's CopyObject would send with ``params``, signed, but not sent."""
    captured: list[Any] = []

    def capture(request: Any, **_: Any) -> None:
        captured.append(request)
        raise _Captured

    client.meta.events.register("before-send.s3.CopyObject", capture, unique_id="capture-copy")
    try:
        with pytest.raises(_Captured):
            await client.copy_object(**params)
    finally:
        client.meta.events.unregister("before-send.s3.CopyObject", unique_id="capture-copy")
    return captured[0]


@pytest.mark.parametrize(
    ("endpoint", "region", "bucket"),
    [("http://127.0.0.1:9000", "us-east-1", "bucket-1"), (None, "eu-west-1", "bucket-1")],
)
async def test_copy_object_headers_and_signature_equal_botocore(
    endpoint: str | None, region: str, bucket: str, aws_env: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        # the aiobotocore client itself: its requests are the ones compared
        client = await (await open_test_client(stack, endpoint, region)).aio()
        target = await probe_target(client, bucket)
        assert isinstance(target, Target), target
        frozen = await client._get_credentials().get_frozen_credentials()
        credentials = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        for index, key in enumerate(KEYS):
            extra = COPY_CASES[index % len(COPY_CASES)]
            source: dict[str, str] = {"Bucket": "source.bucket-2", "Key": KEYS[-1 - index]}
            if index == 3:
                source["VersionId"] = "3/L4kqtJl40Nr8X8gdRQBpUMLUo+="
            params = {"Bucket": bucket, "Key": key, "CopySource": source, **extra}
            ours = copy_headers(params)
            assert ours is not None, params
            request = await botocore_copy_request(client, params)
            assert request.method == "PUT" and request.body in (b"", None)
            url = target.origin + target.path(key)
            assert request.url == url
            theirs = {
                k.lower(): v.decode() if isinstance(v, bytes) else v
                for k, v in request.headers.items()
            }
            assert theirs.pop("host", target.host) == target.host
            for name in ("authorization", "x-amz-date", "x-amz-content-sha256"):
                theirs.pop(name)
            sent = {k: v for k, v in theirs.items() if k not in BOTOCORE_ONLY}
            assert sent == {k.lower(): v for k, v in ours.items()}, key
            # The payload botocore signs (an empty body's hash, https or not) is ours too.
            assert request.headers["X-Amz-Content-SHA256"] in (EMPTY_SHA256, EMPTY_SHA256.encode())
            # Our signer on our headers, against botocore's signer on the same request.
            boto = botocore_sign(
                "PUT",
                url,
                ours,
                BotoCredentials(frozen.access_key, frozen.secret_key, frozen.token),
                target.region,
                b"",
                unsigned_payload=False,
            )
            signed = SigV4Signer(target.region).sign(
                "PUT",
                target.path(key),
                "",
                {"host": target.host, **ours},
                credentials,
                timestamp=boto.headers["X-Amz-Date"],
                payload_hash=EMPTY_SHA256,
            )
            assert signed["authorization"] == boto.headers["Authorization"], key


@pytest.mark.parametrize("key", KEYS)
def test_copy_source_is_encoded_as_botocore_encodes_it(key: str) -> None:
    for source in (
        {"Bucket": "bucket-1", "Key": key},
        {"Bucket": "my.dotted.bucket", "Key": key, "VersionId": "v+1/="},
    ):
        params: dict[str, Any] = {"CopySource": dict(source)}
        handle_copy_source_param(params)
        assert copy_source(source) == params["CopySource"]


def test_what_copy_object_leaves_to_botocore() -> None:
    base: dict[str, Any] = {"Bucket": "b", "Key": "k", "CopySource": {"Bucket": "s", "Key": "k"}}
    assert copy_headers(base) == {"x-amz-copy-source": "s/k"}
    assert copy_headers({"Bucket": "b", "Key": "k"}) is None  # no source: botocore says so
    assert copy_headers({**base, "CopySource": "s/k"}) is None  # a string: botocore parses it
    arn = "arn:aws:s3:us-east-1:123456789012:accesspoint/ap"
    assert copy_headers({**base, "CopySource": {"Bucket": arn, "Key": "k"}}) is None
    assert copy_headers({**base, "CopySource": {"Bucket": "s", "Key": "k", "SSE": 1}}) is None
    assert copy_headers({**base, "ACL": "private"}) is None
    assert copy_headers({**base, "ContentMD5": "x"}) is None  # not a CopyObject parameter
    assert copy_headers({**base, "Metadata": {"a": "é"}}) is None
    assert copy_headers({**base, "CopySourceSSECustomerKey": "k"}) is None
