"""One long-lived S3 client per credential set, and the checks that a bucket is usable."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import Any, Protocol

import aioboto3
from aiobotocore.config import AioConfig
from botocore import handlers
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ProfileNotFound,
)
from botocore.loaders import Loader, create_loader
from botocore.utils import get_environ_proxies

from .errors import ConfigError, ObjectError, StoreUnavailableError
from .fasts3.responses import read_timestamp
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
        session = aioboto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        flag = "--source-profile" if role == "source" else "--dest-profile"
        raise ConfigError(
            f"{role} profile {profile!r} is not in the AWS config or credentials files; "
            f"check {flag}, AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE"
        ) from None
    _read_timestamps_cheaply(session)
    _share_data_loader(session)
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
    _cache_endpoint_resolution(client)
    _check_200_errors_cheaply(client)
    return client


def _read_timestamps_cheaply(session: Any) -> None:
    """Parse timestamps with ``read_timestamp`` instead of dateutil: the same datetimes, 60
    times cheaper (a listing has a LastModified per object: 50 ms of CPU per 2,000 objects,
    25 s per million). The parser factory is the session's own: only our clients see it."""
    core = getattr(session, "_session", None)  # aioboto3.Session wraps an AioSession
    factory = core.get_component("response_parser_factory") if core is not None else None
    if factory is not None:
        factory.set_parser_defaults(timestamp_parser=read_timestamp)


@functools.cache
def _shared_loader() -> Loader:
    return create_loader()


def _share_data_loader(session: Any) -> None:
    """One botocore data loader for all our clients: each session otherwise reads and decodes
    S3's service model and endpoint rules again (70 ms of CPU for a second client). Only with
    the default data path: an ``AWS_DATA_PATH`` or ``data_path`` keeps the session's own."""
    core = getattr(session, "_session", None)  # aioboto3.Session wraps an AioSession
    if core is not None and not core.get_config_variable("data_path"):
        core.register_component("data_loader", _shared_loader())


# S3's endpoint rule set declares Key, Prefix and CopySource as parameters but no rule reads
# them; botocore caches endpoint resolution on all parameters, so with a new key on every
# request the cache never hits and the whole rule tree is evaluated each time (17% of the
# event loop's CPU on small objects). botocore drops them itself from boto/botocore#3692 on;
# until aiobotocore allows that release, drop them here - only when the rule set in use
# indeed never references them.
_UNUSED_ENDPOINT_PARAMS = ("Key", "Prefix", "CopySource")


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("ref"), str):
            yield node["ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


@functools.cache
def _droppable_endpoint_params() -> tuple[str, ...]:
    try:
        ruleset = _shared_loader().load_service_model("s3", "endpoint-rule-set-1")
    except Exception:  # no rule set to check against: leave botocore as it is
        return ()
    referenced = set(_refs(ruleset.get("rules", [])))
    return tuple(name for name in _UNUSED_ENDPOINT_PARAMS if name not in referenced)


def _cache_endpoint_resolution(client: S3Client) -> None:
    provider = getattr(getattr(client, "_ruleset_resolver", None), "_provider", None)
    resolve = getattr(provider, "resolve_endpoint", None)
    droppable = _droppable_endpoint_params()
    if provider is None or resolve is None or not droppable:
        return

    def resolve_endpoint(**params: Any) -> Any:
        for name in droppable:
            params.pop(name, None)
        return resolve(**params)

    provider.resolve_endpoint = resolve_endpoint


#: the start of an XML document: declaration, whitespace, the root element's name
_XML_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>\s*)?<([A-Za-z_][\w.-]*)")


def _handle_200_error(operation_model: Any, response_dict: Any, **kwargs: Any) -> None:
    """botocore's check of every S3 answer for an error sent with status 200 (an ``<Error>``
    document, or a body that is not XML at all because it was cut short), without parsing the
    whole body a second time for it: a body that starts with another root element and ends
    with its closing tag is not one. Anything else gets botocore's own check. botocore's
    ElementTree pass was a fifth of a listing's CPU (1,000 keys a page, then parsed again by
    the response parser, which still raises on anything malformed in between)."""
    body = response_dict.get("body") if response_dict else None
    if response_dict and response_dict.get("status_code") == 200 and isinstance(body, bytes):
        root = _XML_ROOT.match(body)
        name = root.group(1) if root else b"Error"
        if name != b"Error" and body.rstrip().endswith(b"</" + name + b">"):
            return
    handlers._handle_200_error(operation_model, response_dict, **kwargs)


def _check_200_errors_cheaply(client: S3Client) -> None:
    events = client.meta.events
    events.unregister("before-parse.s3.*", handlers._handle_200_error)
    events.register_first("before-parse.s3.*", _handle_200_error)


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
