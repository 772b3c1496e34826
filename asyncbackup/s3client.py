"""One long-lived S3 client per credential set, and the checks that a bucket is usable."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ProfileNotFound,
)
from botocore.utils import get_environ_proxies

from .botocore_setup import Session, tune_client, tune_session
from .errors import ConfigError, ObjectError, StoreUnavailableError
from .retry import RetryPolicy

S3Client = Any  # aiobotocore builds the client class at run time; there is no static type


async def open_client(
    stack: contextlib.AsyncExitStack,
    *,
    role: str,
    profile: str | None,
    endpoint_url: str | None,
    region: str | None,
    max_pool_connections: int,
    connect_timeout: float,
    read_timeout: float,
) -> S3Client:
    """An S3 client for ``role`` ("source" or "destination") living as long as ``stack``.

    Credentials and ``endpoint_url`` come from the standard chain and the profile; retries
    are ours (``retry.py``), so botocore's own are switched off. Checksums are declared by
    the sink (``--checksum``), not by botocore's newer default, which some S3-compatible
    servers reject.
    """
    try:
        session = Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        flag = "--source-profile" if role == "source" else "--dest-profile"
        raise ConfigError(
            f"{role} profile {profile!r} is not in the AWS config or credentials files; "
            f"check {flag}, AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE"
        ) from None
    tune_session(session)
    config = AioConfig(
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    kwargs: dict[str, Any] = {"config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        if _plain_http(endpoint_url):
            kwargs["verify"] = False
    try:
        client = await stack.enter_async_context(session.client("s3", **kwargs))
    except (ValueError, BotoCoreError) as exc:
        raise ConfigError(f"cannot create the {role} S3 client: {exc}") from None
    tune_client(client)
    return client


def client_endpoint(client: S3Client) -> str | None:
    """The endpoint ``client`` sends to, however it was given: a flag, ``AWS_ENDPOINT_URL``
    (``_S3``), the profile's ``endpoint_url``, or AWS's own for the region."""
    url = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return url if isinstance(url, str) and url else None


async def check_bucket(
    client: S3Client, bucket: str, *, role: str, write: bool, attempts: int = 4
) -> None:
    """Fail fast, with one clear line, when ``bucket`` cannot be used.

    Transient answers (5xx, SlowDown, a reset, an endpoint that does not answer yet) are
    retried a few times first, like every other request: a blip must not fail the run.
    """
    flag = "--source-profile" if role == "source" else "--dest-profile"

    async def probe() -> None:
        if write:
            await client.head_bucket(Bucket=bucket)
        else:
            await client.list_objects_v2(Bucket=bucket, MaxKeys=1)

    try:
        await RetryPolicy(attempts).call(probe)
    except ObjectError as exc:
        code = exc.code
        if code in ("404", "NoSuchBucket"):
            raise StoreUnavailableError(
                f"{role} bucket {bucket!r} does not exist; check the bucket name and endpoint"
            ) from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise StoreUnavailableError(
                f"access to {role} bucket {bucket!r} was refused ({code}); check the "
                f"credentials of {flag} and the bucket policy"
            ) from None
        if code == "NoCredentials":
            raise StoreUnavailableError(
                f"no credentials for the {role}; set {flag} or the AWS_* variables"
            ) from None
        if isinstance(exc.__cause__, ClientError):
            raise StoreUnavailableError(f"{role} bucket {bucket!r} is not usable: {code}") from None
        raise StoreUnavailableError(
            f"cannot reach the {role} endpoint ({code}); check the endpoint URL and the network"
        ) from None


class DestinationSettings(Protocol):
    """What opening the destination needs, in every kind of backup."""

    @property
    def dest_bucket(self) -> str: ...
    @property
    def dest_profile(self) -> str | None: ...
    @property
    def effective_dest_endpoint(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def part_concurrency(self) -> int: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...


async def open_destination(
    stack: contextlib.AsyncExitStack, settings: DestinationSettings
) -> S3Client:
    """The destination client, its bucket checked writable, or one clear error."""
    client = await open_client(
        stack,
        role="destination",
        profile=settings.dest_profile,
        endpoint_url=settings.effective_dest_endpoint,
        region=settings.region,
        max_pool_connections=settings.concurrency * settings.part_concurrency + 8,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )
    await check_bucket(client, settings.dest_bucket, role="destination", write=True)
    return client


def _plain_http(endpoint_url: str) -> bool:
    """An ``http://`` endpoint reached without a proxy: no TLS anywhere on the way, so the
    client need not build a TLS context (loading the CA bundle: 17 ms of CPU per client,
    before the first request). An https endpoint, or any proxy, keeps verification on."""
    return endpoint_url.lower().startswith("http://") and not get_environ_proxies(endpoint_url)
