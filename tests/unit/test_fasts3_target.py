"""The fast path's URLs are botocore's, byte for byte: path-style on custom endpoints,
virtual-hosted on AWS, keys encoded once with '/' kept. Nothing here is sent: botocore's
request is stopped in ``before-sign``, where the probe reads it."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import certifi
import pytest
from botocore.httpsession import get_cert_path

from asyncbackup.fasts3 import open_fast_s3
from asyncbackup.fasts3.signer import encode_key
from asyncbackup.fasts3.target import (
    Target,
    host_header,
    learn_region,
    leave_to_botocore,
    prepared_get,
    probe_target,
)
from tests.helpers import open_test_client
from tests.unit.test_fasts3_signer import KEYS

CASES = [
    # endpoint, region, bucket, expected origin, expected prefix
    ("http://127.0.0.1:9000", "us-east-1", "bucket-1", "http://127.0.0.1:9000", "/bucket-1/"),
    ("http://localhost:8333", "us-east-1", "my.bucket", "http://localhost:8333", "/my.bucket/"),
    (None, "eu-west-1", "bucket-1", "https://bucket-1.s3.eu-west-1.amazonaws.com", "/"),
    (None, "us-east-1", "bucket-1", "https://bucket-1.s3.amazonaws.com", "/"),
    (
        None,
        "eu-west-1",
        "my.dotted.bucket",
        "https://s3.eu-west-1.amazonaws.com",
        "/my.dotted.bucket/",
    ),
]


async def open_target(
    stack: contextlib.AsyncExitStack, endpoint: str | None, region: str, bucket: str
) -> tuple[object, Target | str]:
    client = await open_test_client(stack, endpoint, region)
    return client, await probe_target(client, bucket)


@pytest.mark.parametrize(("endpoint", "region", "bucket", "origin", "prefix"), CASES)
async def test_object_and_listing_urls_equal_botocore(
    endpoint: str | None, region: str, bucket: str, origin: str, prefix: str, aws_env: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        client, target = await open_target(stack, endpoint, region, bucket)
        assert isinstance(target, Target), target
        assert (target.origin, target.path_prefix, target.region) == (origin, prefix, region)
        assert target.host == origin.split("://", 1)[1]
        for key in KEYS:
            prepared = await prepared_get(client, bucket, key)
            assert prepared["url"] == target.origin + target.path(key), key
            assert prepared["region"] == target.region
        assert target.origin + target.bucket_path == listing_url(client, bucket)


@pytest.mark.parametrize("base", ["/base", "/base/"])
async def test_virtual_hosted_endpoint_with_a_path_lists_where_botocore_does(
    base: str, aws_env: Path
) -> None:
    # The object prefix is "/base/" either way; the listing is at "/base" or "/base/", as
    # the endpoint is written: read from botocore, not derived from the object prefix.
    (aws_env / "config").write_text(
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = virtual\n"
    )
    async with contextlib.AsyncExitStack() as stack:
        client, target = await open_target(
            stack, f"http://s3.example.test:9000{base}", "us-east-1", "bucket-1"
        )
        assert isinstance(target, Target), target
        assert (target.origin, target.path_prefix) == (
            "http://bucket-1.s3.example.test:9000",
            "/base/",
        )
        assert target.bucket_path == base
        assert target.origin + target.bucket_path == listing_url(client, "bucket-1")


class _Stop(Exception):
    pass


def listing_url(client: object, bucket: str) -> str:
    """The URL (without its query) botocore would send a ListObjectsV2 of ``bucket`` to."""
    control = getattr(client, "control", client)  # LazyClient: its botocore half
    seen: list[str] = []

    def capture(request: object, **_: object) -> None:
        seen.append(str(getattr(request, "url", "")).split("?", 1)[0])
        raise _Stop

    events = control.meta.events  # type: ignore[attr-defined]
    events.register("before-sign.s3.ListObjectsV2", capture, unique_id="test-listing-url")
    try:
        with pytest.raises(_Stop):
            control.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    finally:
        events.unregister("before-sign.s3.ListObjectsV2", unique_id="test-listing-url")
    return seen[0]


async def test_a_proxy_leaves_the_bucket_to_botocore(
    aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with contextlib.AsyncExitStack() as stack:
        _, target = await open_target(stack, "http://10.255.255.1:9000", "us-east-1", "b")
    assert target == "a proxy is configured"


def test_host_header_drops_default_ports() -> None:
    assert host_header("http://h:80/x") == "h"
    assert host_header("https://h:443/x") == "h"
    assert host_header("https://h:80/x") == "h:80"
    assert host_header("http://[::1]:9000/x") == "[::1]:9000"
    assert encode_key("x") == "x"


async def test_tls_trusts_the_ca_bundle_botocore_trusts_and_no_other(
    aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``AWS_CA_BUNDLE`` (or ``verify=``) botocore trusts that bundle only, not the
    system's store: a certificate from any other CA is refused, and so it is here."""
    pem = Path(certifi.where()).read_text()
    first = pem[pem.index("-----BEGIN CERTIFICATE-----") :]
    first = first[: first.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    bundle = tmp_path / "private-ca.pem"
    bundle.write_text(first + "\n")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    async with contextlib.AsyncExitStack() as stack:
        client, target = await open_target(stack, "https://127.0.0.1:9443", "us-east-1", "b")
        assert isinstance(target, Target), target
        assert isinstance(target.ssl, ssl.SSLContext)
        assert client._endpoint.http_session._verify == str(bundle)  # type: ignore[attr-defined]
        trusted = target.ssl.get_ca_certs(binary_form=True)
        assert trusted == [ssl.PEM_cert_to_DER_cert(first)]
        assert target.ssl.verify_mode == ssl.CERT_REQUIRED and target.ssl.check_hostname
    monkeypatch.delenv("AWS_CA_BUNDLE")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # botocore honours it too
    async with contextlib.AsyncExitStack() as stack:  # no bundle: botocore's own (certifi's)
        client, target = await open_target(stack, "https://127.0.0.1:9443", "us-east-1", "b")
        assert isinstance(target, Target) and isinstance(target.ssl, ssl.SSLContext)
        verify = client._endpoint.http_session._verify  # type: ignore[attr-defined]
        assert get_cert_path(verify) == certifi.where()
        expected = ssl.create_default_context(cafile=certifi.where())
        assert target.ssl.get_ca_certs(binary_form=True) == expected.get_ca_certs(True)


async def test_a_bucket_is_probed_once_per_client(aws_env: Path) -> None:
    # A run opens several fast paths to one bucket (its check, the listing's, the copies'):
    # botocore prepares the probe requests for the first only.
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, "http://127.0.0.1:9000")
        first = await probe_target(client, "bucket-1")
        assert await probe_target(client, "bucket-1") is first
        other = await probe_target(client, "bucket-2")
        assert isinstance(other, Target) and other.path_prefix == "/bucket-2/"
        again = await probe_target(
            await open_test_client(stack, "http://127.0.0.1:9000"), "bucket-1"
        )
        assert again is not first and again == first  # another client asks again


async def test_a_bucket_in_another_region_is_targeted_where_botocore_redirects_it(
    aws_env: Path,
) -> None:
    # After S3 named the bucket's region (a redirect botocore followed), the fast path's
    # target is the one botocore's redirector resolves: that region's host, signed for it.
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, None, "us-east-1")
        first = await probe_target(client, "bucket-1")
        assert isinstance(first, Target) and first.region == "us-east-1"
        learnt = await learn_region(client, "bucket-1", "eu-west-1")
        assert isinstance(learnt, Target), learnt
        assert (learnt.origin, learnt.region) == (
            "https://bucket-1.s3.eu-west-1.amazonaws.com",
            "eu-west-1",
        )
        assert await probe_target(client, "bucket-1") is learnt  # the next fast paths' too
        prepared = await prepared_get(client, "bucket-1", "k")
        assert (prepared["url"], prepared["region"]) == (learnt.origin + "/k", "eu-west-1")
        other = await probe_target(client, "bucket-2")  # other buckets keep the client's
        assert isinstance(other, Target) and other.region == "us-east-1"
        # a second region named for the bucket: botocore's from then on
        assert isinstance(await learn_region(client, "bucket-1", "ap-south-1"), str)


async def test_a_fast_path_moves_to_the_host_of_the_bucket_s_region(aws_env: Path) -> None:
    # A fast path that meets the redirect itself (the copies' of a --dest-write-only
    # destination, whose start-up check is botocore's upload): on AWS the bucket's region has
    # another host, and the fast path goes on there, not over to botocore for the run.
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, None, "us-east-1")
        fast = await open_fast_s3(
            stack, client, "bucket-1", connections=3, connect_timeout=2, read_timeout=4
        )
        assert fast is not None and fast.pool.host == "bucket-1.s3.amazonaws.com"
        assert await fast._retarget("eu-west-1")
        assert fast.enabled
        assert (fast.pool.host, fast.pool.port, fast.pool.limit) == (
            "bucket-1.s3.eu-west-1.amazonaws.com",
            443,
            3,
        )
        assert (fast.pool.connect_timeout, fast.pool.read_timeout) == (2, 4)
        assert fast.signer.region == fast.target.region == "eu-west-1"
        assert fast.target.host == "bucket-1.s3.eu-west-1.amazonaws.com"


async def test_a_bucket_left_to_botocore_is_not_taken_back_by_a_region_learnt_later(
    aws_env: Path,
) -> None:
    # One fast path handed the bucket back (a signature complaint, say); another, opened
    # before, then meets a region redirect: the bucket stays on botocore.
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, "http://127.0.0.1:9000", "us-east-1")
        assert isinstance(await probe_target(client, "bucket-1"), Target)
        leave_to_botocore(client, "bucket-1", "handed back earlier (SignatureDoesNotMatch)")
        learnt = await learn_region(client, "bucket-1", "eu-west-1")
        assert learnt == "handed back earlier (SignatureDoesNotMatch)"
        assert await probe_target(client, "bucket-1") == learnt
