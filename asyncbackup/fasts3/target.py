"""Where and how the fast path sends a bucket's object requests: learnt from botocore itself.

Addressing (path-style on custom endpoints and IPs, virtual-hosted on AWS, dotted bucket names,
FIPS, dual-stack, the us-east-1 legacy host...) and the signing region are decided by the
endpoint rules of the aiobotocore client. Rather than re-implement them, ``probe_target()`` lets
the client prepare one GetObject of a probe key and stops it in ``before-sign``, before
anything is sent: the URL it built gives the bucket's base, its signing context the region.
A bucket the server says is in another region (a redirect botocore followed) is probed again
with that region, as botocore's redirector resolves its requests then (``learn_region``).
Anything the fast path does not do the same way (another signature version, a proxy, client
certificates, a query on a plain GetObject) leaves the bucket to botocore.
"""

from __future__ import annotations

import inspect
import itertools
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.httpsession import get_cert_path

from .signer import encode_key

#: a key with every character class that needs care in a URL: spaces, '+', '~', '%', '//',
#: non-ASCII; the probe checks that botocore encodes it exactly as ``encode_key`` does
PROBE_KEY = "asyncbackup-probe/a b+c~d%e//ü€/"
_SIGNATURE_VERSIONS = frozenset({"s3v4", "v4"})
_probe_ids = itertools.count()


class _Captured(Exception):
    """Raised from the ``before-sign`` handler: the probe request is never signed or sent."""


@dataclass(frozen=True, slots=True)
class Target:
    """One bucket's object URLs: ``origin + path_prefix + encode_key(key)``."""

    origin: str  # scheme://netloc
    host: str  # the Host header, as botocore signs it
    path_prefix: str  # "/bucket/" (path-style) or "/" (virtual-hosted)
    bucket_path: str  # the bucket's own path (ListObjectsV2): "/bucket" or "/"
    region: str
    service: str
    ssl: ssl.SSLContext | None  # None: plain http

    def path(self, key: str) -> str:
        return self.path_prefix + encode_key(key)


def host_header(url: str) -> str:
    """The Host header botocore signs: the host, and the port when it is not the default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _ssl_for(scheme: str, http_session: Any) -> ssl.SSLContext | str | None:
    """The TLS aiobotocore uses for this client (None: plain http), or a reason the fast path
    cannot do the same."""
    if scheme != "https":
        return None
    if getattr(http_session, "_cert_file", None):
        return "a client certificate is configured"
    verify = getattr(http_session, "_verify", True)
    if verify is False:  # TLS without checking the certificate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # The CA bundle botocore trusts (AWS_CA_BUNDLE, verify=, else certifi's) and only that:
    # not the system's store on top, which would accept certificates botocore refuses.
    context = ssl.create_default_context(cafile=get_cert_path(verify) or None)
    # And chains checked as botocore's (urllib3's) context checks them, whatever the Python:
    # 3.13 adds VERIFY_X509_STRICT (refusing, say, a private CA whose basicConstraints are
    # not marked critical, which botocore takes) and VERIFY_X509_PARTIAL_CHAIN (taking a
    # chain that ends at an intermediate in the bundle, which botocore refuses).
    context.verify_flags &= ~(ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN)
    return context


async def prepared_get(client: Any, bucket: str, key: str) -> dict[str, Any]:
    """What botocore would send for a GetObject of ``key`` - URL, signature version, signing
    region and name - without sending it: the request is stopped in ``before-sign``."""
    encoded = encode_key(key)
    return await _prepared(
        client,
        "GetObject",
        {"Bucket": bucket, "Key": key},
        lambda url: url.split("?", 1)[0].endswith(encoded),
    )


async def prepared_listing(client: Any, bucket: str) -> dict[str, Any]:
    """What botocore would send for a ListObjectsV2 of ``bucket``, stopped as in
    ``prepared_get``."""
    token = f"asyncbackup-probe-{next(_probe_ids)}"
    return await _prepared(
        client,
        "ListObjectsV2",
        {"Bucket": bucket, "Prefix": token, "MaxKeys": 1},
        lambda url: f"prefix={token}" in url,
    )


_METHODS = {"GetObject": "get_object", "ListObjectsV2": "list_objects_v2"}


async def _prepared(
    client: Any, operation: str, params: dict[str, Any], ours: Callable[[str], bool]
) -> dict[str, Any]:
    captured: dict[str, Any] = {}

    def capture(request: Any, signing_name: str, signature_version: Any, **_: Any) -> None:
        if not ours(str(request.url)):
            return  # another request of this client: not ours
        signing = request.context.get("signing") or {}
        captured.update(
            url=str(request.url),
            version=signature_version,
            region=signing.get("region") or client.meta.region_name,
            service=signing.get("signing_name") or signing_name,
        )
        raise _Captured

    event = f"before-sign.s3.{operation}"
    unique_id = f"asyncbackup-fast-path-probe-{next(_probe_ids)}"
    client.meta.events.register(event, capture, unique_id=unique_id)
    try:
        # an aiobotocore client's method returns a coroutine; a botocore client's (our
        # LazyClient's control half, through ``meta``) runs at once: the handler raises
        prepare = getattr(client, "control", client)
        pending = getattr(prepare, _METHODS[operation])(**params)
        if inspect.isawaitable(pending):
            await pending
    except _Captured:
        pass
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)
    return captured


#: client -> bucket -> its probe's answer: a run opens several fast paths to one bucket (its
#: check, the listing's, the copies'), and the answer depends on nothing else
_probed: weakref.WeakKeyDictionary[Any, dict[str, Target | str]] = weakref.WeakKeyDictionary()


#: client -> bucket -> the region the server said the bucket is in, in an answer botocore's
#: redirector followed: the probe's client never sends a request, so it never learns it itself
_regions: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


async def learn_region(client: Any, bucket: str, region: str) -> Target | str:
    """The fast path's target for ``bucket``, in ``region`` (the server's redirect said so,
    and botocore followed it), or why there is none. Asked of botocore again, with the region
    its redirector then resolves the bucket's requests with (the ``AWS::Region`` of the
    endpoint rules): AWS's host for that region, the signing region. Learnt once: a second
    region named for the bucket leaves it to botocore."""
    regions = _regions.get(client)
    if regions is None:
        regions = _regions[client] = {}

        def redirected(builtins: dict[str, Any], params: dict[str, Any], **_: Any) -> None:
            learnt = regions.get(params.get("Bucket", ""))
            if learnt is not None:
                builtins["AWS::Region"] = learnt

        client.meta.events.register(
            "before-endpoint-resolution.s3",
            redirected,
            unique_id=f"asyncbackup-fast-path-region-{next(_probe_ids)}",
        )
    probed = _probed.setdefault(client, {})
    current = probed.get(bucket)
    if isinstance(current, str):  # left to botocore meanwhile (``leave_to_botocore``)
        return current
    known = regions.setdefault(bucket, region)
    if known != region:
        return f"the server named two regions for the bucket ({known}, {region})"
    if current is None or current.region != region:
        probed[bucket] = await _probe(client, bucket)
    return probed[bucket]


def leave_to_botocore(client: Any, bucket: str, reason: str) -> None:
    """The bucket's requests go through botocore for the rest of the run: a fast path opened
    to it from now on is none (a run opens its listing's and copies' after the start-up
    check, whose fast path may have met the answer that said so)."""
    _probed.setdefault(client, {})[bucket] = reason


async def probe_target(client: Any, bucket: str) -> Target | str:
    """The fast path's target for ``bucket`` on ``client``, or why there is none; asked of
    botocore once per client and bucket."""
    known = _probed.setdefault(client, {})
    if bucket not in known:
        known[bucket] = await _probe(client, bucket)
    return known[bucket]


async def _probe(client: Any, bucket: str) -> Target | str:
    try:
        captured = await prepared_get(client, bucket, PROBE_KEY)
    except Exception as exc:  # botocore refused before signing: it will say why again later
        return f"botocore could not prepare a request ({type(exc).__name__})"
    if not captured:
        return "botocore sent the probe request unsigned"
    url: str = captured["url"]
    if captured["version"] not in _SIGNATURE_VERSIONS or captured["service"] != "s3":
        return f"signature {captured['version']} for {captured['service']} is not SigV4 for s3"
    parts = urlsplit(url)
    encoded = encode_key(PROBE_KEY)
    if parts.query or parts.fragment or not parts.path.endswith(encoded):
        return "botocore builds object URLs differently for this bucket"
    http_session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    proxy_config = getattr(http_session, "_proxy_config", None)
    if proxy_config is not None and proxy_config.proxy_url_for(url):
        return "a proxy is configured"
    tls = _ssl_for(parts.scheme, http_session)
    if isinstance(tls, str):
        return tls
    origin = f"{parts.scheme}://{parts.netloc}"
    # The bucket's own URL (ListObjectsV2) as botocore builds it too: it is not always the
    # object prefix less its '/' (a virtual-hosted endpoint "https://host/base/" lists at
    # "/base/", objects at "/base/KEY").
    try:
        listing = urlsplit(str((await prepared_listing(client, bucket)).get("url", "")))
    except Exception as exc:
        return f"botocore could not prepare a listing ({type(exc).__name__})"
    if f"{listing.scheme}://{listing.netloc}" != origin:
        return "botocore lists this bucket at another address than its objects"
    return Target(
        origin=origin,
        host=host_header(url),
        path_prefix=parts.path[: -len(encoded)],
        bucket_path=listing.path or "/",
        region=str(captured["region"]),
        service="s3",
        ssl=tls,
    )
