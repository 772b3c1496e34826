"""A loopback HTTP proxy between a client and the S3 server, for tests: records, injects faults.

It forwards every request to ``upstream`` and records what it saw (method, path, access key id,
``Range`` header, the fault it injected), so a test can tell which credentials reached which
endpoint and what the client did after a fault.

Faults come two ways, both driven by the test:

- ``rules``: a ``Rule`` matches requests (method, path regex, query substring) and applies its
  fault to the next ``times`` of them (or to all);
- ``rate``: each request (that ``random_filter`` accepts, when set) gets one of
  ``random_faults`` with probability ``rate``, drawn from a seeded RNG.

A fault is one of ``FAULTS``: canned S3 error answers (503 SlowDown, 500 InternalError, 429,
403 AccessDenied/InvalidAccessKeyId, ...), a connection reset before the request body is read
or after it was forwarded upstream, a response body cut short, flipped bytes in a response
body, another ETag in an answer, or added latency. ``regions`` puts buckets in regions of their
own: a request signed for another region is answered as S3 answers it (a redirect naming the
bucket's). ``run_proxy()`` serves it from a thread of its own, so it works under synchronous
tests that run the CLI as a subprocess as well as under async tests.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import io
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate

import aiohttp
from aiohttp import web
from yarl import URL

_CREDENTIAL = re.compile(r"Credential=([^/]+)/")
_SIGNING_REGION = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")
_START_AFTER = re.compile(r"(?<=[?&])start-after=[^&]*&?")
_START_AFTER_VALUE = re.compile(r"(?<=[?&]start-after=)[^&]*")
_PREFIX = re.compile(r"(?<=[?&])prefix=[^&]*&?")
_PART_NUMBER = re.compile(r"(?<=[?&])partNumber=[^&]*&?")
_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.DOTALL)
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>[^<]*</NextContinuationToken>")
_ETAG = re.compile(rb"<ETag>[^<]*</ETag>")
#: the request headers that name an ETag
_CONDITIONS = frozenset({"if-match", "if-none-match", "x-amz-copy-source-if-match"})
OTHER_ETAG = '"' + "0" * 32 + '"'  # what "other_etag" puts in an answer
_BUCKET_REGION = "x-amz-bucket-region"
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}

#: fault -> (HTTP status, S3 error code, message)
ERROR_ANSWERS: dict[str, tuple[int, str, str]] = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "throttle": (429, "TooManyRequests", "Too many requests, please slow down."),
    "access_denied": (403, "AccessDenied", "Access Denied"),
    "invalid_access_key": (
        403,
        "InvalidAccessKeyId",
        "The AWS Access Key Id you provided does not exist in our records.",
    ),
    "no_such_key": (404, "NoSuchKey", "The specified key does not exist."),
    # an UploadPart or CompleteMultipartUpload of an upload aborted meanwhile (a lifecycle
    # rule's AbortIncompleteMultipartUpload): moto answers 500 there, S3 this
    "no_such_upload": (
        404,
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload "
        "may have been aborted or completed.",
    ),
    "expired_token": (400, "ExpiredToken", "The provided token has expired."),
    "signature_mismatch": (
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided.",
    ),
    "invalid_object_state": (
        403,
        "InvalidObjectState",
        "The operation is not valid for the object's storage class",
    ),
    # S3-compatible servers that do not do a feature (HEAD ?partNumber=, say)
    "not_implemented": (
        501,
        "NotImplemented",
        "A header you provided implies functionality that is not implemented.",
    ),
    "invalid_argument": (400, "InvalidArgument", "Invalid argument."),
    # SSE-KMS with a key id the destination's KMS does not have
    "kms_not_found": (400, "KMS.NotFoundException", "Invalid keyId 'bad-key'"),
    # a GET of an object encrypted with SSE-C (a key of the customer's), made without the key
    "sse_c_key_missing": (
        400,
        "InvalidRequest",
        "The object was stored using a form of Server Side Encryption. The correct parameters "
        "must be provided to retrieve the object.",
    ),
    # a GET of an SSE-KMS object whose key is disabled, or pending deletion, as S3 answers
    "kms_disabled": (
        400,
        "KMS.DisabledException",
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab is disabled.",
    ),
    "kms_invalid_state": (
        400,
        "KMS.KMSInvalidStateException",
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab is "
        "pending deletion.",
    ),
    # a PUT without Content-MD5 or an x-amz-checksum-* header into a bucket whose Object Lock
    # configuration gives new objects a default retention period, as S3 refuses it
    "object_lock_needs_checksum": (
        400,
        "InvalidRequest",
        "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with "
        "Object Lock parameters",
    ),
    # S3 failing after it answered 200 (a copy): the error is in the body
    "internal_in_200": (200, "InternalError", "We encountered an internal error."),
}
#: faults that need no answer table: resets, a short or corrupted body (answer or request),
#: a body broken in its middle only ("malformed": its start and end intact), latency
STREAM_FAULTS = (
    "reset_before",
    "reset_after",
    "truncate",
    "corrupt",
    "malformed",
    "corrupt_request",
    "latency",
    # S3-compatible servers that list differently: StartAfter or Prefix ignored (the query
    # parameter dropped), a page's keys in reverse order, IsTruncated without
    # NextContinuationToken
    "ignore_start_after",
    "ignore_prefix",
    # and servers that answer a HEAD or GET ?partNumber= as if it were not there (the whole
    # object's length: MinIO before mid-2020, moto before 1.3.14, some gateways)
    "ignore_part_number",
    "reverse_keys",
    "no_continuation_token",
    # SeaweedFS, which stores keys as a tree of folders: StartAfter=a/b lists no key under
    # a/b/ (the folder named b is not after b), nor does a probe at a/b (moto is asked to
    # start after a/b/ and all that is in it instead)
    "start_after_skips_folder",
    # SeaweedFS again: a PUT of a key ending in "/" makes a folder, its body dropped, and
    # answers 200 with the body's MD5 as ETag (the empty object stored, the ETag a lie)
    "folder_key_drops_data",
    # and it folds "//" in a key into "/": a PUT of a//b makes a/b, a listing of a// lists
    # what is under a/ (moto is sent the keys and prefixes folded)
    "fold_double_slash",
    # a 200 with an empty body, the request not forwarded: a server that failed after its
    # status line (S3 sends a copy's 200 before the copy is made, its result after)
    "empty_200",
    # a load balancer's 408 Request Timeout (its idle close racing a request): no XML body,
    # the request not forwarded
    "bare_408",
    # a listing whose first object's <Size> is no number (a broken or hostile server)
    "bad_size",
    # the answer's first ETag replaced by another (an MD5-like one that no body here has)
    "other_etag",
    # a listing of SSE-KMS objects: every ETag looks like an MD5, and is none (each one
    # replaced by an MD5 of itself)
    "kms_etags",
    # a bucket of SSE-KMS objects as S3 serves it: each ETag (listed, a HEAD's or a GET's)
    # is opaque (an MD5 of the MD5), and conditions naming such an ETag hold (the proxy
    # hands moto the MD5 behind it: ``S3Proxy.opaque``)
    "kms_source",
    # a bucket whose default encryption is SSE-KMS, as S3 answers an upload there: with
    # x-amz-server-side-encryption: aws:kms (moto says it to a PutObject, not to a
    # CreateMultipartUpload)
    "kms_default",
    # a server that ignores the server-side encryption asked for: its answers carry no
    # x-amz-server-side-encryption header (S3 names the encryption it applied in each)
    "sse_ignored",
    # 403 RequestTimeTooSkewed as S3 answers it to a client whose clock is 20 minutes behind:
    # the request's x-amz-date as RequestTime, the server's time in the body and in Date
    "clock_skew",
)
FAULTS = (*ERROR_ANSWERS, *STREAM_FAULTS)
#: what a flaky network and a busy S3 do: every one of these is worth a retry
TRANSIENT_FAULTS = (
    "slowdown",
    "internal",
    "throttle",
    "reset_before",
    "reset_after",
    "truncate",
    "latency",
)
_BODY_FAULTS = ("truncate", "corrupt")  # only for GetObject answers with a body
_DRIP_PIECE = 256 * 1024
_UPSTREAM_LENGTH = "x-proxy-upstream-length"
_BUCKET_QUERIES = ("list-type", "uploads", "uploadId", "location", "versioning", "delete")


def is_object_get(request: web.Request) -> bool:
    """A GetObject: GET of ``/bucket/key`` without a bucket or multipart sub-resource."""
    if request.method != "GET":
        return False
    parts = request.path.lstrip("/").split("/", 1)
    if len(parts) < 2 or not parts[1]:
        return False
    return not any(name in request.query for name in _BUCKET_QUERIES)


@dataclass
class Rule:
    """Apply ``fault`` to matching requests: ``times`` of them, or all when ``times`` is None."""

    fault: str | None
    method: str | None = None
    path: str | None = None  # a regex searched in the decoded path (``/bucket/key``)
    query: str | None = None  # a substring of the raw query string (``uploadId``, ``uploads``)
    times: int | None = None
    delay: float = 0.0  # seconds to wait before answering (with fault "latency", or any)
    delay_after_forward: float = 0.0  # forward, let upstream act, then wait before answering
    retry_after: float | None = None  # a Retry-After header on error answers
    action: Callable[[], None] | None = None  # run in a thread before forwarding
    drip: float = 0.0  # seconds between the 256 KiB pieces of a successful answer's body
    # S3's idle timeout on a request's body (about 20 s there): a body that pauses longer is
    # answered 400 RequestTimeout, the connection closed, nothing forwarded
    body_idle: float = 0.0
    # only requests without this header (a bucket policy that denies s3:PutObject unless the
    # request carries it: x-amz-server-side-encryption, x-amz-acl...)
    unless_header: str | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {FAULTS}")

    def matches(self, request: web.Request) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and request.method != self.method:
            return False
        if self.path is not None and not re.search(self.path, request.path):
            return False
        if self.query is not None and self.query not in request.query_string:
            return False
        if self.unless_header is not None and self.unless_header in request.headers:
            return False
        return self.fault not in _BODY_FAULTS or is_object_get(request)


@dataclass
class Recorded:
    method: str
    path: str
    access_key: str | None
    query: str = ""
    range: str | None = None
    if_match: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    status: int | None = None
    started: float = 0.0
    finished: float = 0.0


def error_body(code: str, message: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>proxy</RequestId></Error>"
    ).encode()


_REQUEST_TIMEOUT = (
    400,
    "RequestTimeout",
    "Your socket connection to the server was not read from or written to within the "
    "timeout period. Idle connections will be closed.",
)


async def _read_unless_idle(request: web.Request, idle: float) -> bytes | None:
    """The request's body, or None when it paused for more than ``idle`` seconds."""
    pieces: list[bytes] = []
    while True:
        try:
            piece = await asyncio.wait_for(request.content.readany(), idle)
        except TimeoutError:
            return None
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)


#: how far ahead of the client's clock the server's is, for the "clock_skew" fault
CLOCK_SKEW_SECONDS = 20 * 60


def _clock_skew_answer(request: web.Request) -> web.Response:
    sent = request.headers.get("x-amz-date", "")
    try:
        signed: float = calendar.timegm(time.strptime(sent, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        signed = time.time() - CLOCK_SKEW_SECONDS
    server = signed + CLOCK_SKEW_SECONDS
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>RequestTimeTooSkewed</Code>'
        "<Message>The difference between the request time and the current time is too large."
        f"</Message><RequestTime>{sent}</RequestTime>"
        f"<ServerTime>{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(server))}</ServerTime>"
        "<MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds>"
        "<RequestId>proxy</RequestId></Error>"
    )
    headers = {"Content-Type": "application/xml", "Date": formatdate(server, usegmt=True)}
    return web.Response(status=403, body=body.encode(), headers=headers)


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST, as a crashed server or a middlebox does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass
class S3Proxy:
    upstream: str
    requests: list[Recorded] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    rate: float = 0.0
    random_faults: tuple[str, ...] = TRANSIENT_FAULTS
    random_filter: Callable[[web.Request], bool] | None = None
    seed: int = 0
    latency: float = 0.0  # added to every request
    # bucket -> the region it is in: a request signed for another one is answered as S3
    # answers it (``wrong_region``: "redirect", "malformed" or "opt_in")
    regions: dict[str, str] = field(default_factory=dict)
    wrong_region: str = "redirect"
    fault_latency: float = 0.5  # what the "latency" fault adds
    in_flight: int = 0
    max_in_flight: int = 0
    #: the opaque ETags "kms_source" answered, and the MD5 each stands for (quoted)
    opaque: dict[str, str] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test-facing helpers (thread-safe) ---------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self.rules.clear()
            self.rate = 0.0
            self.latency = 0.0

    def set_random_faults(self, rate: float, *, seed: int, faults: tuple[str, ...] = ()) -> None:
        with self._lock:
            self.rate = rate
            self._rng.seed(seed)
            if faults:
                self.random_faults = faults

    def seen(self, *, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [
            r
            for r in list(self.requests)
            if (method is None or r.method == method) and (path is None or re.search(path, r.path))
        ]

    def faults_injected(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in list(self.requests):
            if record.fault:
                counts[record.fault] = counts.get(record.fault, 0) + 1
        return counts

    # -- serving ---------------------------------------------------------------------------

    async def start(self) -> S3Proxy:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=0)
        )
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False: a body with Content-Encoding: gzip is forwarded as it came.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, auto_decompress=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _choose(self, request: web.Request) -> tuple[str | None, Rule | None]:
        with self._lock:
            for rule in self.rules:
                if rule.matches(request):
                    rule.hits += 1
                    return rule.fault, rule
            eligible = self.random_filter is None or self.random_filter(request)
            if self.rate and eligible and self._rng.random() < self.rate:
                fault = self._rng.choice(self.random_faults)
                if fault in _BODY_FAULTS and not is_object_get(request):
                    fault = "internal"
                return fault, None
        return None, None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = _CREDENTIAL.search(request.headers.get("Authorization", ""))
        record = Recorded(
            request.method,
            request.path,
            match.group(1) if match else None,
            query=request.query_string,
            range=request.headers.get("Range"),
            if_match=request.headers.get("If-Match"),
            headers={k.lower(): v for k, v in request.headers.items()},
            started=time.monotonic(),
        )
        self.requests.append(record)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._answer(request, record)
            record.status = response.status
            return response
        finally:
            self.in_flight -= 1
            record.finished = time.monotonic()

    async def _answer(self, request: web.Request, record: Recorded) -> web.StreamResponse:
        misdirected = self._wrong_region(request)
        if misdirected is not None:
            record.fault = "wrong_region"
            await request.read()
            return misdirected
        fault, rule = self._choose(request)
        record.fault = fault
        delay = self.latency + (rule.delay if rule else 0.0)
        if fault == "latency" and rule is None:
            delay += self.fault_latency
        if delay:
            await asyncio.sleep(delay)
        if fault in ERROR_ANSWERS:
            status, code, message = ERROR_ANSWERS[fault]
            headers = {"Content-Type": "application/xml"}
            if rule is not None and rule.retry_after is not None:
                headers["Retry-After"] = str(rule.retry_after)
            await request.read()
            return web.Response(
                status=status, body=error_body(code, message, request.path), headers=headers
            )
        if fault == "clock_skew":
            await request.read()
            return _clock_skew_answer(request)
        if fault == "reset_before":
            _reset(request)
            return web.Response(status=500)
        if fault == "empty_200":
            await request.read()
            return web.Response(status=200)
        if fault == "bare_408":
            await request.read()
            return web.Response(status=408, headers={"Connection": "close"})
        body: bytes | None = None
        if rule is not None and rule.body_idle:
            body = await _read_unless_idle(request, rule.body_idle)
            if body is None:
                status, code, message = _REQUEST_TIMEOUT
                answer = web.Response(
                    status=status,
                    body=error_body(code, message, request.path),
                    headers={"Content-Type": "application/xml", "Connection": "close"},
                )
                answer.force_close()
                return answer
        if rule is not None and rule.action is not None:
            await asyncio.to_thread(rule.action)
        dropped = {
            "ignore_start_after": _START_AFTER,
            "ignore_prefix": _PREFIX,
            "ignore_part_number": _PART_NUMBER,
        }.get(fault or "")
        rewrite = {"start_after_skips_folder": _past_folder, "fold_double_slash": _folded}.get(
            fault or ""
        )
        sent_md5 = None
        if fault == "folder_key_drops_data":
            sent_md5 = hashlib.md5(await request.read()).hexdigest()
            body = b""
        status, payload, out_headers = await self._forward(
            request, fault == "corrupt_request", drop=dropped, rewrite=rewrite, body=body
        )
        if sent_md5 is not None and status == 200:
            out_headers = {k: v for k, v in out_headers.items() if k.lower() != "etag"}
            out_headers["ETag"] = f'"{sent_md5}"'
        if fault == "sse_ignored":
            out_headers = {
                k: v
                for k, v in out_headers.items()
                if not k.lower().startswith("x-amz-server-side-encryption")
            }
        if fault == "kms_default" and status < 300:
            out_headers["x-amz-server-side-encryption"] = "aws:kms"
        upstream_length = out_headers.pop(_UPSTREAM_LENGTH, None)
        region = self.regions.get(request.path.lstrip("/").split("/", 1)[0])
        if region is not None:  # the bucket's region, not the one moto made it in
            out_headers = {k: v for k, v in out_headers.items() if k.lower() != _BUCKET_REGION}
            out_headers[_BUCKET_REGION] = region
        if rule is not None and rule.delay_after_forward:
            await asyncio.sleep(rule.delay_after_forward)
        if fault == "reset_after":
            _reset(request)
            return web.Response(status=500)
        if fault == "corrupt" and payload and status < 300:
            flipped = bytearray(payload)
            for index in range(0, len(flipped), max(1, len(flipped) // 4)):
                flipped[index] ^= 0xFF
            payload = bytes(flipped)
        if fault == "malformed" and len(payload) > 4 and status < 300:
            middle = len(payload) // 2
            payload = payload[:middle] + b"<<" + payload[middle + 2 :]
        if fault == "reverse_keys" and status < 300:
            contents = _CONTENTS.findall(payload)
            pieces = _CONTENTS.split(payload)
            payload = pieces[0] + b"".join(
                c + p for c, p in zip(contents[::-1], pieces[1:], strict=True)
            )
        if fault == "other_etag" and status < 300:
            payload = _ETAG.sub(f"<ETag>{OTHER_ETAG}</ETag>".encode(), payload, count=1)
        if fault == "kms_source" and status < 300:
            payload = _ETAG.sub(
                lambda m: b"<ETag>" + self._opaque(m.group(0)[6:-7]) + b"</ETag>", payload
            )
            for name in [k for k in out_headers if k.lower() == "etag"]:
                out_headers[name] = self._opaque(out_headers[name].encode()).decode()
        if fault == "kms_etags" and status < 300:  # each ETag an MD5 of itself: opaque
            payload = _ETAG.sub(
                lambda m: b'<ETag>"' + hashlib.md5(m.group(0)).hexdigest().encode() + b'"</ETag>',
                payload,
            )
        if fault == "bad_size" and status < 300:
            payload = re.sub(rb"<Size>[^<]*</Size>", b"<Size>abc</Size>", payload, count=1)
        if fault == "no_continuation_token" and status < 300:
            payload = _NEXT_TOKEN.sub(b"", payload)
        if fault == "truncate" and len(payload) > 1 and status < 300:
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            transport = request.transport
            if transport is not None:
                transport.close()  # FIN after the bytes sent: the body ends early
            return response
        if rule is not None and rule.drip and status < 300:
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = len(payload)
            await response.prepare(request)
            for start in range(0, len(payload), _DRIP_PIECE):
                if start:
                    await asyncio.sleep(rule.drip)
                await response.write(payload[start : start + _DRIP_PIECE])
            await response.write_eof()
            return response
        if request.method == "HEAD":  # no body, but the object's length, as upstream said
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = int(upstream_length or 0)
            await response.prepare(request)
            return response
        return web.Response(status=status, body=payload, headers=out_headers)

    def _wrong_region(self, request: web.Request) -> web.Response | None:
        """S3's answer to a request signed for another region than its bucket's (None for
        any other request): 301 PermanentRedirect, or 400 AuthorizationHeaderMalformed naming
        the region, both with ``x-amz-bucket-region``; a HEAD's without a body. "opt_in" is
        the answer across an opt-in region (af-south-1...): 400
        IllegalLocationConstraintException, the region in its message only (a HEAD's has the
        header, as every HEAD of a bucket)."""
        bucket = request.path.lstrip("/").split("/", 1)[0]
        region = self.regions.get(bucket)
        signed = _SIGNING_REGION.search(request.headers.get("Authorization", ""))
        if region is None or (signed is not None and signed.group(1) == region):
            return None
        headers = {"x-amz-bucket-region": region, "Content-Type": "application/xml"}
        if self.wrong_region == "redirect":
            status, code = 301, "PermanentRedirect"
            detail = (
                "<Message>The bucket you are attempting to access must be addressed using the "
                f"specified endpoint.</Message><Endpoint>{bucket}.s3.{region}.amazonaws.com"
                f"</Endpoint><Bucket>{bucket}</Bucket>"
            )
        elif self.wrong_region == "opt_in":
            status, code = 400, "IllegalLocationConstraintException"
            detail = (
                f"<Message>The {region} location constraint is incompatible for the region "
                "specific endpoint this request was sent to.</Message>"
            )
            if request.method != "HEAD":
                del headers["x-amz-bucket-region"]
        else:
            status, code = 400, "AuthorizationHeaderMalformed"
            wrong = signed.group(1) if signed else ""
            detail = (
                f"<Message>The authorization header is malformed; the region '{wrong}' is "
                f"wrong; expecting '{region}'</Message><Region>{region}</Region>"
            )
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        body = f"<Error><Code>{code}</Code>{detail}<RequestId>proxy</RequestId></Error>"
        return web.Response(status=status, body=body.encode(), headers=headers)

    def _opaque(self, etag: bytes) -> bytes:
        """The opaque ETag "kms_source" answers for ``etag`` (a quoted MD5, or XML's
        ``&quot;MD5&quot;``), remembered for the conditions that name it."""
        real = etag.replace(b"&quot;", b'"').decode()
        opaque = '"' + hashlib.md5(real.encode()).hexdigest() + '"'
        self.opaque[opaque] = real
        return opaque.encode() if b"&quot;" not in etag else opaque.replace('"', "&quot;").encode()

    async def _forward(
        self,
        request: web.Request,
        corrupt: bool = False,
        *,
        drop: re.Pattern[str] | None = None,
        rewrite: Callable[[str], str] | None = None,  # of the raw path and query
        body: bytes | None = None,  # already read
    ) -> tuple[int, bytes, dict[str, str]]:
        if body is None:
            body = await request.read()
        if corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        for name, value in headers.items():  # a condition on an opaque ETag: on its MD5
            if name.lower() in _CONDITIONS and value in self.opaque:
                headers[name] = self.opaque[value]
        assert self._session is not None
        # raw_path and encoded=True: keys with "..", "//" or "%" reach the server as sent.
        raw_path = request.raw_path
        if drop is not None:  # a query parameter the server would ignore
            raw_path = drop.sub("", raw_path)
        if rewrite is not None:
            raw_path = rewrite(raw_path)
        url = URL(self.upstream + raw_path, encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=io.BytesIO(body), allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
            }
            if "Content-Length" in upstream.headers:
                out_headers[_UPSTREAM_LENGTH] = upstream.headers["Content-Length"]
            return upstream.status, payload, out_headers


def _past_folder(raw_path: str) -> str:
    """``start-after=a/b`` made ``a/b/`` followed by the last code point: after everything
    in the folder ``a/b/`` too, as SeaweedFS lists it."""
    return _START_AFTER_VALUE.sub(lambda m: m.group(0) + "%2F%F4%8F%BF%BF", raw_path)


def _folded(raw_path: str) -> str:
    """The object key in the path, or the listing's prefix, with every "//" made "/"."""
    path, mark, query = raw_path.partition("?")
    bucket, slash, key = path.lstrip("/").partition("/")
    while "//" in key:
        key = key.replace("//", "/")
    while "%2F%2F" in query:
        query = query.replace("%2F%2F", "%2F")
    return f"/{bucket}{slash}{key}{mark}{query}"


@contextlib.contextmanager
def run_proxy(upstream: str, **options: object) -> Iterator[S3Proxy]:
    """Serve an ``S3Proxy`` from a thread with its own event loop for the ``with`` block."""
    proxy = S3Proxy(upstream, **options)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(proxy.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(proxy.close())
        loop.close()

    thread = threading.Thread(target=serve, name="s3-proxy", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the proxy did not start")
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
