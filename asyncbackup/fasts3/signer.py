"""AWS Signature Version 4 for S3 requests, header-based, computed here instead of by botocore.

The same algorithm as botocore's ``S3SigV4Auth`` (checked request by request in the tests):
the canonical URI is the path as sent (S3 paths are not normalised and not encoded twice),
the query is sorted and RFC 3986-encoded, every header sent is signed but ``User-Agent`` and
the transport headers, and the payload hash is ``UNSIGNED-PAYLOAD``: uploads carry
``Content-MD5`` (or an ``x-amz-checksum-*`` header) that the server verifies, downloads are
checked against the size and the MD5 ETag. The signing key is derived once per day, region
and secret, and so are the hash states of its HMAC's padded keys (RFC 2104), so a request
costs one SHA-256 over a few hundred bytes and an HMAC without its key set-up (which was half
of the HMAC), and the timestamp is formatted once a second.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"
#: what botocore leaves out of the signature (SIGNED_HEADERS_BLACKLIST), plus the headers
#: the HTTP client sets itself after signing
UNSIGNED_HEADERS = frozenset(
    {"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id", "content-length"}
)


class FrozenCredentials(Protocol):
    """What ``botocore``'s ``ReadOnlyCredentials`` has, and ``Credentials`` below."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def token(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """A frozen set of credentials (``botocore``'s ``ReadOnlyCredentials`` has the same fields)."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never a secret in a log or a traceback
        return f"Credentials(access_key={self.access_key[:4]}..., secret_key=***)"


def amz_date(now: float | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


#: a text ``quote(..., safe="/~")`` gives back as it is: RFC 3986's unreserved characters
#: (``quote``'s always safe ones) and ``/``
UNRESERVED_PATH = re.compile(r"[A-Za-z0-9_.~/-]*")


def encode_key(key: str) -> str:
    """An object key as the URL path after the bucket: UTF-8, percent-encoded, ``/`` and ``~``
    kept (botocore's ``{Key+}`` rule); the result is sent and signed as it is."""
    if UNRESERVED_PATH.fullmatch(key):  # nothing to encode (most keys): quote() is 4x that
        return key
    return quote(key.encode("utf-8"), safe="/~")


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    """A canonical query string: each name and value RFC 3986-encoded, sorted by name then
    value. Used as the URL's query too, so what is signed is what is sent."""
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


#: HMAC's inner and outer pads (RFC 2104), as ``bytes.translate`` tables (as ``hmac.py``)
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_BLOCK = 64  # SHA-256's block size


def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """The SHA-256 states after HMAC-SHA256's inner and outer padded keys: the HMAC of a
    message is ``outer + sha256(inner + message)``, each state copied and fed on."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class SigV4Signer:
    """Signs requests to one region and service with whatever credentials each call passes."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._scope_tail = f"{region}/{service}/aws4_request"
        self._key_for: tuple[str, str] | None = None  # (secret, date) of the cached key
        self._key = b""
        self._inner, self._outer = _hmac_states(b"")  # the cached key's (``_hmac_states``)
        self._second = -1  # the second of ``_stamp``
        self._stamp = ""

    def _now(self) -> str:
        """``amz_date()``, made once a second (formatting it was an eighth of a signature)."""
        second = int(time.time())
        if second != self._second:
            self._stamp = amz_date(second)
            self._second = second
        return self._stamp

    def signing_key(self, secret: str, date: str) -> bytes:
        if self._key_for != (secret, date):
            k_date = _hmac(f"AWS4{secret}".encode(), date)
            k_region = _hmac(k_date, self.region)
            k_service = _hmac(k_region, self.service)
            self._key = _hmac(k_service, "aws4_request")
            self._inner, self._outer = _hmac_states(self._key)
            self._key_for = (secret, date)
        return self._key

    def sign(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        credentials: FrozenCredentials,
        *,
        timestamp: str | None = None,
        payload_hash: str = UNSIGNED_PAYLOAD,
    ) -> dict[str, str]:
        """The headers to send: ``headers`` (which must include ``host``) plus ``x-amz-date``,
        ``x-amz-content-sha256``, ``x-amz-security-token`` when there is a session token, and
        ``Authorization``. ``path`` and ``query`` are already encoded, exactly as sent."""
        stamp = timestamp or self._now()
        out = {name.lower(): value for name, value in headers.items()}
        out["x-amz-date"] = stamp
        out["x-amz-content-sha256"] = payload_hash
        if credentials.token:
            out["x-amz-security-token"] = credentials.token
        names = sorted([name for name in out if name not in UNSIGNED_HEADERS])
        canonical_headers = "".join([f"{name}:{' '.join(out[name].split())}\n" for name in names])
        signed_headers = ";".join(names)
        canonical_request = (
            f"{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
        )
        date = stamp[:8]
        scope = f"{date}/{self._scope_tail}"
        digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
        string_to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}"
        self.signing_key(credentials.secret_key, date)  # and its HMAC states
        inner = self._inner.copy()
        inner.update(string_to_sign.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        signature = outer.hexdigest()
        out["authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return out
