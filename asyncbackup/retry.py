"""Backoff and pacing: which failures are worth another try, how long to wait, how hard to push.

- ``classify()`` turns a botocore / aiohttp / OS failure into an ``ObjectError`` whose
  ``retryable`` flag says whether another attempt can help.
- ``Backoff`` is exponential backoff with full jitter and a cap, honouring ``Retry-After``.
- ``AdaptiveLimiter`` is an AIMD concurrency limit: throttling halves it, successes grow it
  back one step at a time.

Clock and randomness are injectable, so tests need no sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import email.utils
import logging
import random
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    RefreshWithMFAUnsupportedError,
    ResponseStreamingError,
    SSOError,
    TokenRetrievalError,
)
from botocore.parsers import ResponseParserError

from .credprocess import CredentialProcessTimeout, MfaCodeUnavailable, failed_profile
from .errors import FatalRunError, ObjectError
from .etags import OPAQUE_ETAG_SSE
from .loglimit import FirstFew

log = logging.getLogger("asyncbackup")

THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestThrottled",
        "ProvisionedThroughputExceededException",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "BadDigest",
        "XAmzContentSHA256Mismatch",
        "IncompleteBody",
        "OperationAborted",
        "500",
        "502",
        "503",
        "504",
    }
)
#: the credentials themselves refused (not one object's permissions)
CREDENTIALS_REFUSED = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "AllAccessDisabled",
    }
)
#: a request refused by the permissions on what it names (the code, or a bare HEAD's status)
ACCESS_DENIED = frozenset({"AccessDenied", "403"})
#: the codes of an object that is not there (a HEAD's error has no body: its status)
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
#: this machine's clock too far from the server's: every request is refused, whatever its
#: object, until the clock is set right (retried per request all the same: a request held up
#: after it was signed passes once signed again)
CLOCK_SKEWED = "RequestTimeTooSkewed"
#: temporary credentials that could not be refreshed (the credential process, SSO, STS or the
#: instance's metadata failing): every later request would fail the same way
NOT_REFRESHED = "CredentialsNotRefreshed"
FATAL_CODES = CREDENTIALS_REFUSED | {"NoSuchBucket", CLOCK_SKEWED, NOT_REFRESHED}
#: An object in an archive tier (S3 Glacier Flexible Retrieval, Deep Archive, the archive
#: tiers of Intelligent-Tiering) not restored: GET answers the first, CopyObject the second.
ARCHIVED_CODES = frozenset({"InvalidObjectState", "ObjectNotInActiveTierError"})
_ARCHIVED_ADVICE = (
    " (the object is archived: restore it, e.g. `aws s3api restore-object`, and run again "
    "to copy it, or skip it with `asyncbackup checkpoint mark --done CHECKPOINT KEY`)"
)

#: S3's answer to a GET, CopyObject or UploadPartCopy of an object encrypted with SSE-C (a key
#: of its owner's, which S3 does not keep) made without that key: 400 InvalidRequest, this
#: message; a HEAD's is a 400 without a body (``sse_c_unreadable``)
SSE_C_MESSAGE = "stored using a form of Server Side Encryption"
SSE_C_ADVICE = (
    " (the object is encrypted with SSE-C, a key of its owner's that S3 does not keep, and "
    "asyncbackup has no way to give that key: copy it by other means, or skip it with "
    "`asyncbackup checkpoint mark --done CHECKPOINT KEY`)"
)


def sse_c_unreadable() -> ObjectError:
    """The error of an object whose HEADs (with ``partNumber`` and without) S3 answered 400
    without a body: what it answers for an SSE-C object asked without its key."""
    return ObjectError(
        "InvalidRequest",
        "its HEAD was answered 400 Bad Request, as S3 answers for an object stored with "
        "Server Side Encryption and asked without its key" + SSE_C_ADVICE,
    )


def kms_refusal(error: ObjectError, head: dict[str, Any] | None, what: str) -> ObjectError:
    """``error``, S3's bare "Access Denied" to a GET or copy of an object, naming the object's
    KMS key when ``head``, its HEAD (which needs no kms:Decrypt), shows one: the refusal is
    then most likely the key's, which the bare answer does not say. ``what``: which object
    and what its reading needs. ``error`` itself for any other object, or no HEAD."""
    if head is None or head.get("ServerSideEncryption") not in OPAQUE_ETAG_SSE:
        return error
    key_id = head.get("SSEKMSKeyId") or "of the object"
    return ObjectError(error.code, f"{error.message} ({what.format(key=key_id)})")


def _instant(text: object) -> datetime.datetime | None:
    """A time as S3 writes it in an error: ISO 8601 (``ServerTime``), the ``x-amz-date`` form
    (``RequestTime``) or an HTTP date; None when it is none of them."""
    if not isinstance(text, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    with contextlib.suppress(ValueError):
        moment = datetime.datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
    return http_date(text)


def http_date(text: str) -> datetime.datetime | None:
    """An HTTP date (RFC 9110: ``Date``, ``Retry-After``...), in UTC when it names no zone
    (asctime's form, ``-0000``): an HTTP date is GMT, not this machine's time. None when it
    is no date."""
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _clock_advice(error: dict[str, Any]) -> str:
    """What to do about ``RequestTimeTooSkewed``: this machine's clock is wrong, by how much
    (the server's ``ServerTime`` against the ``RequestTime`` we signed), which no retry and
    no other setting mends."""
    server, sent = _instant(error.get("ServerTime")), _instant(error.get("RequestTime"))
    gap = "off"
    if server is not None and sent is not None:
        seconds = (server - sent).total_seconds()
        way = "behind" if seconds > 0 else "ahead of"
        gap = f"{abs(seconds) / 60:.0f} min {way} the server's ({error['ServerTime']})"
    return (
        f"; this machine's clock is {gap}, and S3 refuses requests signed more than 15 min "
        "from its time: set the clock right (e.g. `timedatectl set-ntp true`), then run again"
    )


def needs_checksum(exc: ObjectError) -> bool:
    """Whether ``exc`` is a destination's refusal of an upload that carried no checksum: a
    bucket with Object Lock (a default retention) takes no PUT without ``Content-MD5`` or an
    ``x-amz-checksum-*`` header (S3: 400 ``InvalidRequest``; moto names it)."""
    if exc.code == "MissingUploadObjectWithObjectLockHeaders":
        return True
    return exc.code == "InvalidRequest" and "Object Lock" in exc.message


def raise_if_fatal(exc: ObjectError, key: str, advice: str | Mapping[str, str]) -> None:
    """Stop the run (``FatalRunError``) on a failure every other object would meet too: this
    machine's clock (its message says what to do), refused credentials or a missing bucket
    (then ``advice``), an upload without a checksum refused by an Object Lock bucket (then
    ``--checksum none`` is the cause), rather than one error per object. ``advice`` may be
    given by side (``ObjectError.side``), with ``""`` for a failure of neither or unknown."""
    if exc.code == CLOCK_SKEWED:
        raise FatalRunError(f"stopping on {key!r}: {exc}") from exc
    if needs_checksum(exc):
        raise FatalRunError(
            f"stopping: the destination refused an upload without a checksum ({exc}, on "
            f"{key!r}): a bucket with Object Lock takes none; run without --checksum none "
            "(md5, crc32, crc32c or sha256), then run again to resume"
        ) from exc
    if exc.code in FATAL_CODES:
        if not isinstance(advice, str):  # by the side that sent the request, where known
            advice = advice.get(exc.side or "", advice[""])
        raise FatalRunError(
            f"stopping: {exc} (on {key!r}); {advice}, then run again to resume"
        ) from exc


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or _status(exc) or "Unknown")


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def retry_after(exc: BaseException) -> float | None:
    """Seconds from a ``Retry-After`` header, when the failure carried one."""
    if not isinstance(exc, ClientError):
        return None
    headers: dict[str, Any] = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def is_throttle(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        return error_code(exc) in THROTTLE_CODES or _status(exc) in (429, 503)
    return isinstance(exc, ObjectError) and exc.code in THROTTLE_CODES


def classify(exc: BaseException) -> ObjectError:
    """The checkpoint-ready form of a failure, flagged retryable or not."""
    if isinstance(exc, ObjectError):
        return exc
    if isinstance(exc, ClientError) and exc.operation_name in CREDENTIAL_OPERATIONS:
        # the refresh of the credentials refused (by STS, SSO), not the request to S3:
        # retried like a request, then the run stops
        return ObjectError(
            NOT_REFRESHED,
            f"cannot refresh the credentials: {exc.operation_name} was refused "
            f"({error_code(exc)}: {exc.response.get('Error', {}).get('Message') or ''})",
            retryable=True,
        )
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message") or code)
        status = _status(exc) or 0
        retryable = code in THROTTLE_CODES or code in TRANSIENT_CODES or status >= 500
        # 429, and a 408 Request Timeout without an S3 body (a load balancer's idle close
        # racing the request): worth repeating, by their status alone
        retryable = retryable or status in (408, 429)
        if code in ARCHIVED_CODES:
            message += _ARCHIVED_ADVICE
        if code == "InvalidRequest" and SSE_C_MESSAGE in message:
            message += SSE_C_ADVICE
        if code == CLOCK_SKEWED:
            message = message.rstrip(".") + _clock_advice(exc.response.get("Error", {}))
        return ObjectError(code, message, retryable=retryable)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ObjectError("NoCredentials", "no usable credentials", retryable=False)
    if isinstance(exc, CREDENTIAL_ERRORS):
        # retried like a request (a provider's blip passes), then the run stops; a process
        # that did not answer in minutes is not asked again, nor a role that needs an MFA code
        # (again, or with none to be had)
        retryable = not isinstance(
            exc, (CredentialProcessTimeout, RefreshWithMFAUnsupportedError, MfaCodeUnavailable)
        )
        return ObjectError(
            NOT_REFRESHED,
            f"cannot refresh the credentials: {credentials_failure(exc)}",
            retryable=retryable,
        )
    if isinstance(exc, RuntimeError) and str(exc).startswith(STILL_EXPIRED):
        return ObjectError(
            NOT_REFRESHED,
            "cannot refresh the credentials: their provider (the profile's "
            "credential_process, its SSO cache...) gave credentials that had expired already; "
            "check this machine's clock and the provider",
            retryable=True,
        )
    if isinstance(exc, _TRANSIENT_TYPES) or _aiohttp_error(exc):
        return ObjectError(type(exc).__name__, _one_line(exc), retryable=True)
    if isinstance(exc, BotoCoreError):
        return ObjectError(type(exc).__name__, _one_line(exc), retryable=False)
    raise exc


_TRANSIENT_TYPES = (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    ResponseParserError,  # an answer garbled on the way: ask again
    asyncio.TimeoutError,
    ConnectionError,
)


#: the codes of failures of the servers or the network, not of one object (``is_outage``)
_OUTAGE_CODES = THROTTLE_CODES | {
    "InternalError",
    "ServiceUnavailable",
    "429",
    "500",
    "502",
    "503",
    "504",
    *(kind.__name__ for kind in _TRANSIENT_TYPES if kind is not ResponseParserError),
    "TimeoutError",
    "ConnectionResetError",
    "ConnectionRefusedError",
    "ConnectionAbortedError",
    "BrokenPipeError",
    # aiohttp's (GitHub's client, aiobotocore's), by name: it may not be imported
    "ClientConnectionError",
    "ClientConnectorError",
    "ClientConnectionResetError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "ServerConnectionError",
    "ConnectionTimeoutError",
    "SocketTimeoutError",
}


#: our multipart upload gone from under the copy (a lifecycle rule's
#: AbortIncompleteMultipartUpload, another run's sweep of the key): no request of it can
#: succeed again, but the object, started again with a new upload, can
UPLOAD_GONE = "NoSuchUpload"


def worth_another_copy(error: ObjectError) -> bool:
    """Whether an object (an artifact) whose copy failed with ``error``, after its requests'
    retries, is worth copying again whole: a retryable failure, or its upload gone."""
    return error.retryable or error.code == UPLOAD_GONE


def is_outage(error: ObjectError) -> bool:
    """Whether ``error`` (after all its retries) is one of the servers or the network -
    throttling, 5xx, timeouts, connections refused or dropped - rather than of its object."""
    return error.retryable and error.code in _OUTAGE_CODES


def _aiohttp_error(exc: BaseException) -> bool:
    """An aiohttp failure (GitHub's client, aiobotocore's): without aiohttp imported - a run
    whose requests all took the fast path - there can be none, and it is not imported."""
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


#: the requests botocore makes to refresh temporary credentials (STS, SSO): their errors are
#: the credentials', not the S3 request's that needed them
CREDENTIAL_OPERATIONS = frozenset(
    {
        "AssumeRole",
        "AssumeRoleWithWebIdentity",
        "AssumeRoleWithSAML",
        "GetRoleCredentials",
        "CreateToken",
    }
)
#: what botocore (and aiobotocore) raise, as a bare RuntimeError, when a refresh gave
#: credentials that had expired already
STILL_EXPIRED = "Credentials were refreshed, but the refreshed credentials are still expired"
#: botocore's errors of credentials that could not be fetched (``credentials_failure``)
CREDENTIAL_ERRORS = (
    CredentialRetrievalError,
    SSOError,
    TokenRetrievalError,
    RefreshWithMFAUnsupportedError,
)


def credentials_failure(exc: BotoCoreError, profile: str | None = None) -> str:
    """What to say of credentials that could not be fetched: what botocore says, except what
    a credential process printed on its standard error (a process that fails may print what
    it was given or got: a key, a token), which is not repeated. An SSO profile with no valid
    token (never signed in on this machine, the session over) says how to sign in, naming
    the SSO profile: the one the failure came from, else ``profile`` when known; a failed
    credential process names its profile when known (the one the failure came from)."""
    provider = str(getattr(exc, "kwargs", {}).get("provider", ""))
    if isinstance(exc, SSOError) or (isinstance(exc, TokenRetrievalError) and provider == "sso"):
        return (
            f"{_one_line(exc).rstrip('.')}; sign in with: aws sso login --profile "
            f"{failed_profile(exc) or profile or 'PROFILE'}"
        )
    owner = failed_profile(exc)
    process = (
        f"the credential_process of profile {owner!r}"
        if owner
        else "the profile's credential_process"
    )
    if isinstance(exc, CredentialProcessTimeout):
        detail = _one_line(exc).replace("the profile's credential_process", process, 1)
    elif isinstance(exc, RefreshWithMFAUnsupportedError):
        detail = (
            "the profile's role (with mfa_serial) cannot be assumed again without a new MFA "
            "code; give the profile a longer duration_seconds (up to the role's maximum "
            "session duration) for a run this long"
        )
    elif provider == "custom-process":
        detail = (
            f"{process} failed (its output is not repeated here: it "
            "may hold secrets; run the command by hand to see why)"
        )
    else:
        detail = _one_line(exc)
    return detail


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**attempt))``."""

    base: float = 0.2
    cap: float = 20.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, hint: float | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(attempt, 30)))
        delay = self.rng.uniform(0.0, ceiling)
        if hint is not None:
            delay = max(delay, min(hint, self.cap * 3))
        return delay


class AdaptiveLimiter:
    """An AIMD limit on requests in flight.

    ``throttled()`` halves the limit (at most once per ``cooldown`` seconds, so one burst of
    SlowDown answers counts once); every ``limit`` successes raise it by one, up to ``maximum``.
    """

    def __init__(
        self,
        maximum: int,
        *,
        cooldown: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.cooldown = cooldown
        self._clock = clock
        self._in_flight = 0
        self._successes = 0
        self._last_decrease = float("-inf")
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.decreases = 0

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self) -> None:
        while self._in_flight >= self.limit:
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(woken)
            try:
                await woken
            except asyncio.CancelledError:
                self._wake()  # a wake-up this waiter got passes on to the next one
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(woken)
        self._in_flight += 1

    def release(self) -> None:
        """Give a slot back. Synchronous, so that it also runs while a task is cancelled:
        a slot that is never given back would stall every later request for good."""
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self._in_flight
        for woken in self._waiters:
            if free <= 0:
                break
            if not woken.done():
                woken.set_result(None)
                free -= 1

    def succeeded(self) -> None:
        self._successes += 1
        if self.limit < self.maximum and self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            self._wake()

    def throttled(self) -> None:
        now = self._now()
        if now - self._last_decrease < self.cooldown:
            return
        self._last_decrease = now
        self._successes = 0
        self.limit = max(1, self.limit // 2)
        self.decreases += 1


Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


@dataclass(slots=True)
class RetryPolicy:
    """How many attempts a request gets and how long to wait between them."""

    max_attempts: int = 8
    backoff: Backoff = field(default_factory=Backoff)
    limiter: AdaptiveLimiter | None = None
    sleep: Sleep = asyncio.sleep
    retries: int = 0
    #: whose credentials its requests are sent with (``"source"``, ``"destination"``): named
    #: on the errors it raises, so that a fatal one says which credentials to check
    side: str | None = None

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until it succeeds, fails for good, or runs out of attempts."""
        attempt = 0
        while True:
            held = self.limiter  # the slot this attempt holds, until given back
            if held is not None:
                await held.acquire()
            try:
                result = await operation()
            except Exception as exc:
                if held is not None:
                    held.release()  # not held through the backoff
                    held = None
                    if is_throttle(exc) and self.limiter is not None:
                        self.limiter.throttled()
                error = self._classify(exc)
                attempt += 1
                if not error.retryable or attempt >= self.max_attempts:
                    raise error from exc
                self.retries += 1
                await self.sleep(self.backoff.delay(attempt, retry_after(exc)))
                continue
            finally:
                if held is not None:  # done, cancelled, or an error classify() re-raises
                    held.release()
            if self.limiter is not None:
                self.limiter.succeeded()
            return result

    async def once(self, operation: Callable[[], Awaitable[T]]) -> T:
        """One attempt of a request that cannot be repeated as it is (a streamed body); its
        failure comes out classified, for the caller to decide what to do instead.

        It takes no limiter slot. Its body waits for a download, and that download may wait
        for memory that only other requests give back: holding a slot meanwhile could stall
        them all once throttling has cut the limit to a few slots. A throttle still lowers
        the limit for the requests that take slots."""
        try:
            return await operation()
        except Exception as exc:
            if self.limiter is not None and is_throttle(exc):
                self.limiter.throttled()
            raise self._classify(exc) from exc

    def _classify(self, exc: Exception) -> ObjectError:
        error = classify(exc)
        if error.side is None:  # an inner policy's (the other side's) stands
            error.side = self.side
        return error


class RetryLog:
    """The whole-object (or artifact) retries of a run: the first ten are warnings, the rest
    debug records (``FirstFew``). A source failing every object (an outage) would otherwise
    log two warnings an object; the failures themselves are in the summary, grouped by
    code."""

    def __init__(self) -> None:
        self.lines = FirstFew(
            logging.WARNING,
            "more objects are being retried: further retries are logged at debug level (--debug)",
        )

    def retrying(self, key: str, exc: ObjectError) -> None:
        log.log(self.lines.level(), "retrying %s after %s", key, exc)
