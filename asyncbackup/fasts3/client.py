"""ListObjectsV2, GetObject, PutObject, UploadPart, CopyObject, and CreateMultipartUpload and
AbortMultipartUpload (the start-up check's upload), straight over HTTP/1.1 (``http11.py``),
signed by ``signer.py``.

botocore spends about 1 ms of CPU on every request (events and hooks, serialisation, endpoint
rules, signing, parsing); for a 4 KiB object that is most of the work. ``FastS3`` does the two
hot requests of a staged backup, its multipart parts (which botocore SHA-256-signs over plain
http), the CopyObject of a direct (server-side) copy, the listing pages (the source's, and
the destination's for ``--skip-existing``) and the upload the start-up check starts and aborts:
one ``http11.Pool`` of keep-alive connections sized to the concurrency, a signing key derived
once a day, response headers (and CopyObject's result document) mapped to the fields botocore would
return, errors raised as the same ``ClientError`` (a CopyObject's 200 carrying an ``<Error>``
included) and connection failures as the same botocore exceptions, so ``retry.classify()`` and
the callers see no difference.

It takes the methods' botocore-style keyword arguments and hands every call it does not cover
to the aiobotocore client it was built from (another bucket, an unknown parameter, a checksum
it cannot compute, non-ASCII header values). If the server answers a fast-path request in a way
that hints at a difference between the two paths (a redirect to another region, a signature or
payload-hash complaint), the request is repeated by botocore and the bucket stays on botocore
for the rest of the run - unless botocore is answered the same error, which is then the
request's, not the fast path's (an SSE-C object's GET without its key), or the answer named
the bucket's region, which botocore followed: the fast path then signs for that region
(``learn_region``). Credentials are read
from the client on every request, so refreshed temporary credentials are used as soon as
botocore has them.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from email.utils import formatdate
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from botocore.parsers import ResponseParserError
from botocore.utils import parse_to_aware_datetime

from ..checksums import INLINE_LIMIT, checksum
from ..credprocess import CredentialProcessTimeout
from ..errors import ObjectError
from ..filerange import BufferBody
from . import http11
from .responses import (
    DOCUMENT_LIMIT,
    ERROR_BODY_LIMIT,
    client_error,
    copy_object_output,
    create_multipart_upload_output,
    list_objects_v2_output,
    parse_error,
    put_output,
    response_fields,
)
from .signer import (
    EMPTY_SHA256,
    UNRESERVED_PATH,
    UNSIGNED_PAYLOAD,
    FrozenCredentials,
    SigV4Signer,
    encode_query,
)
from .target import Target, learn_region, leave_to_botocore, probe_target

log = logging.getLogger("asyncbackup")

USER_AGENT = "asyncbackup-fast-path"
GET_PARAMS = frozenset({"Bucket", "Key", "Range", "IfMatch"})
#: PutObject parameters sent as one header each, as botocore names them
PUT_HEADERS: dict[str, str] = {
    "ContentMD5": "content-md5",
    "ContentType": "content-type",
    "ContentEncoding": "content-encoding",
    "CacheControl": "cache-control",
    "ContentDisposition": "content-disposition",
    "ContentLanguage": "content-language",
    "WebsiteRedirectLocation": "x-amz-website-redirect-location",
    "StorageClass": "x-amz-storage-class",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "Tagging": "x-amz-tagging",
}
PUT_SPECIAL = frozenset({"Bucket", "Key", "Body", "Metadata", "Expires", "ChecksumAlgorithm"})
#: checksum values computed by the caller (off the event loop), as botocore names them
CHECKSUM_VALUES: dict[str, str] = {
    "ChecksumCRC32": "x-amz-checksum-crc32",
    "ChecksumCRC32C": "x-amz-checksum-crc32c",
    "ChecksumSHA256": "x-amz-checksum-sha256",
}
#: CopyObject parameters sent as one header each: PutObject's (but Content-MD5: no body) and
#: the copy's own
COPY_HEADERS: dict[str, str] = {
    **{name: header for name, header in PUT_HEADERS.items() if name != "ContentMD5"},
    "MetadataDirective": "x-amz-metadata-directive",
    "TaggingDirective": "x-amz-tagging-directive",
    "CopySourceIfMatch": "x-amz-copy-source-if-match",
    "CopySourceIfNoneMatch": "x-amz-copy-source-if-none-match",
}
#: what botocore leaves unencoded in ``x-amz-copy-source`` (``SAFE_CHARS + '/'``)
_COPY_SOURCE_SAFE = "-._~/"
#: UploadPart parameters the fast path covers; the two of the query string
UPLOAD_PART_PARAMS = frozenset(
    {"Bucket", "Key", "UploadId", "PartNumber", "Body", "ContentMD5", "ChecksumAlgorithm"}
    | CHECKSUM_VALUES.keys()
)
_PART_QUERY = ("UploadId", "PartNumber")
_ABORT_PARAMS = frozenset({"Bucket", "Key", "UploadId"})
#: ListObjectsV2 parameters the fast path covers -> their query names (Bucket: in the path)
LIST_QUERY: dict[str, str] = {
    "Bucket": "",
    "Prefix": "prefix",
    "MaxKeys": "max-keys",
    "ContinuationToken": "continuation-token",
    "StartAfter": "start-after",
    "Delimiter": "delimiter",
}
#: answers that mean the server wants the request differently than the fast path sent it
_HAND_BACK_CODES = frozenset(
    {
        "PermanentRedirect",
        "TemporaryRedirect",
        "AuthorizationHeaderMalformed",
        # S3's redirect between an opt-in region (af-south-1...) and another, which botocore
        # follows (the bucket's region from a HEAD of it)
        "IllegalLocationConstraintException",
        "SignatureDoesNotMatch",
        "XAmzContentSHA256Mismatch",
        "InvalidRequest",
        "NotImplemented",
    }
)
_REDIRECTS = frozenset({301, 302, 307, 308})

#: headers every fast-path request carries, unsigned
_FIXED_HEADERS = {"user-agent": USER_AGENT, "accept-encoding": "identity"}


class _HandBack(Exception):
    """The server's answer says: do this request with botocore (``code``: the error it
    answered, None for a redirect; ``region``: the bucket's, when the answer names it)."""

    def __init__(self, reason: str, code: str | None = None, region: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.region = region


async def _payload_hash(body: bytes | bytearray) -> str:
    """The hex SHA-256 a payload is signed with: in a worker thread unless the body is small."""
    if len(body) <= INLINE_LIMIT:
        return hashlib.sha256(body).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())


def _http_date(value: Any) -> str:
    """A timestamp header as botocore writes it: RFC 822, GMT, whole seconds."""
    moment = parse_to_aware_datetime(value)
    return formatdate(calendar.timegm(moment.utctimetuple()), usegmt=True)


def _object_header(
    name: str, value: Any, table: Mapping[str, str], headers: dict[str, str]
) -> bool:
    """Add the header(s) of a parameter that PutObject and CopyObject both send as headers
    (one of ``table``, ``Metadata``, ``Expires``); False for any other parameter."""
    header = table.get(name)
    if header is not None:
        headers[header] = str(value)
    elif name == "Metadata":
        for meta_name, meta_value in dict(value).items():
            headers[f"x-amz-meta-{meta_name}"] = str(meta_value)
    elif name == "Expires":
        headers["expires"] = _http_date(value)
    else:
        return False
    return True


def _all_ascii(headers: Mapping[str, str]) -> bool:
    """Whether the fast path may send ``headers``: botocore refuses or encodes the others
    (non-ASCII), or fails on them (a line break, which would end the header early)."""
    return all(
        value.isascii() and name.isascii() and "\r" not in value and "\n" not in value
        for name, value in headers.items()
    )


def put_headers(params: Mapping[str, Any], *, streamed: bool = False) -> dict[str, str] | None:
    """The headers of a PutObject with ``params`` (``Body`` must be bytes; absent when the
    body is ``streamed``, with no checksum computed from it), or None when the fast path does
    not cover one of them."""
    headers: dict[str, str] = {}
    for name, value in params.items():
        if _object_header(name, value, PUT_HEADERS, headers):
            continue
        if name in CHECKSUM_VALUES:
            headers[CHECKSUM_VALUES[name]] = str(value)
        elif name == "ChecksumAlgorithm":
            algorithm = str(value).upper()
            if f"Checksum{algorithm}" not in params:  # not given: computed here, on the loop
                computed = None if streamed else checksum(algorithm, params["Body"])
                if computed is None:  # no body to compute it from, or CRC32C: botocore's
                    return None
                headers[f"x-amz-checksum-{algorithm.lower()}"] = computed
            headers["x-amz-sdk-checksum-algorithm"] = algorithm
        elif name not in PUT_SPECIAL:
            return None
    if not streamed and not isinstance(params.get("Body"), bytes | bytearray):
        return None
    return headers if _all_ascii(headers) else None


def carries_checksum(params: Mapping[str, Any]) -> bool:
    """Whether a PUT's ``params`` give a checksum value the server checks the body against
    (what lets a streamed body go unsigned)."""
    return bool({"ContentMD5", *CHECKSUM_VALUES} & params.keys())


def _check_streamed(params: Mapping[str, Any]) -> None:
    """A streamed PUT's ``params``: no ``Body``, and a checksum value (``carries_checksum``)."""
    if "Body" in params or not carries_checksum(params):
        raise ValueError("a streamed PUT carries the checksum values of its body, not the body")


def _query(params: Mapping[str, Any]) -> str:
    """The query string of an UploadPart with ``params``."""
    return encode_query(
        (("partNumber", str(int(params["PartNumber"]))), ("uploadId", str(params["UploadId"])))
    )


def copy_source(source: Any) -> str | None:
    """The ``x-amz-copy-source`` header of a ``CopySource`` dict, encoded as botocore's
    ``handle_copy_source_param`` encodes it (``bucket/key`` percent-encoded as UTF-8, ``/``
    kept, ``?versionId=`` appended as it is), or None for what the fast path leaves to botocore:
    a string, an access point or other ARN, anything but Bucket, Key and VersionId."""
    if not isinstance(source, Mapping) or not set(source) <= {"Bucket", "Key", "VersionId"}:
        return None
    bucket, key, version = source.get("Bucket"), source.get("Key"), source.get("VersionId")
    if not isinstance(bucket, str) or not isinstance(key, str) or bucket.startswith("arn:"):
        return None
    header = f"{bucket}/{key}"
    if not UNRESERVED_PATH.fullmatch(header):  # else quote() would give it back as it is
        header = quote(header.encode(), safe=_COPY_SOURCE_SAFE)
    if version is not None:
        header += f"?versionId={version}"
    return header


def copy_headers(params: Mapping[str, Any]) -> dict[str, str] | None:
    """The headers of a CopyObject with ``params``, or None when the fast path does not cover
    one of them."""
    headers: dict[str, str] = {}
    for name, value in params.items():
        if _object_header(name, value, COPY_HEADERS, headers):
            continue
        if name == "CopySource":
            source = copy_source(value)
            if source is None:
                return None
            headers["x-amz-copy-source"] = source
        elif name not in ("Bucket", "Key"):
            return None
    if "x-amz-copy-source" not in headers:
        return None
    return headers if _all_ascii(headers) else None


def upload_headers(params: Mapping[str, Any]) -> dict[str, str] | None:
    """The headers of a CreateMultipartUpload with ``params`` (PutObject's, but a body's
    checksum: only its algorithm is named), or None when the fast path does not cover one."""
    headers: dict[str, str] = {}
    for name, value in params.items():
        if name == "ContentMD5":
            return None
        if _object_header(name, value, PUT_HEADERS, headers):
            continue
        if name == "ChecksumAlgorithm":
            headers["x-amz-checksum-algorithm"] = str(value)  # as given, as botocore sends it
        elif name not in ("Bucket", "Key"):
            return None
    return headers if _all_ascii(headers) else None


def _connection_error(exc: http11.HTTPError, url: str) -> BaseException:
    """The botocore exception aiobotocore raises for the same failure of its aiohttp."""
    error: BaseException
    if isinstance(exc, http11.TLSError):
        error = SSLError(endpoint_url=url, error=exc)
    elif isinstance(exc, http11.Disconnected | http11.BadResponse):
        error = ConnectionClosedError(endpoint_url=url, error=exc)
    elif isinstance(exc, http11.ConnectTimeout):
        error = ConnectTimeoutError(endpoint_url=url, error=exc)
    elif isinstance(exc, http11.ReadTimeout):
        error = ReadTimeoutError(endpoint_url=url, error=exc)
    else:  # ConnectError, BodyError
        error = EndpointConnectionError(endpoint_url=url, error=exc)
    return error


async def _read_at_most(response: http11.Response, limit: int) -> bytes:
    """The body of ``response``, or its first ``limit`` bytes when it is longer."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:  # one read may return part of the document
        chunk = await response.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class FastBody:
    """A GetObject body: ``async with`` releases the connection, ``read(n)`` streams; failures
    mid-body become botocore's ``ResponseStreamingError`` / ``ReadTimeoutError``."""

    __slots__ = ("_response", "_url")

    def __init__(self, response: http11.Response, url: str) -> None:
        self._response = response
        self._url = url

    async def __aenter__(self) -> FastBody:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._response.release()  # back to the pool if read to the end, closed otherwise

    async def read(self, amt: int = -1) -> bytes:
        try:
            return await self._response.read(amt)
        except http11.ReadTimeout as exc:
            raise ReadTimeoutError(endpoint_url=self._url, error=exc) from exc
        except http11.HTTPError as exc:
            raise ResponseStreamingError(error=exc) from exc


class FastS3:
    """The fast path for one bucket of one aiobotocore client (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        target: Target,
        pool: http11.Pool,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.target = target
        self.pool = pool
        self._stack = stack  # what the pool lives in (and another one, for another address)
        self.signer = SigV4Signer(target.region, target.service)
        #: headers each request carries (``x-amz-request-payer``: the client's, signed)
        self.headers: dict[str, str] = dict(getattr(client, "request_headers", None) or {})
        self.enabled = True
        self.fast_requests = 0  # answered by the fast path (for tests and the curious)
        # one refresh of the credentials in a thread at a time (``_credentials``)
        self._refreshing = asyncio.Lock()
        self._refresh_failures = 0
        self._refresh_failure: BaseException | None = None
        # the credentials object last read from the client, and its kind (``_credentials``)
        self._source: Any = None
        self._source_async = False
        self._source_refreshes = False

    def _hand_back(self, reason: str) -> None:
        if self.enabled:
            self.enabled = False
            leave_to_botocore(self.client, self.bucket, f"handed back earlier ({reason})")
            log.warning(
                "fast path off for bucket %s (%s); its requests go through botocore",
                self.bucket,
                reason,
            )

    async def _credentials(self) -> FrozenCredentials:
        source = self.client._get_credentials()
        if source is None:
            raise NoCredentialsError()
        if source is not self._source:  # its kind, looked at once per credentials object
            self._source = source
            self._source_async = inspect.iscoroutinefunction(source.get_frozen_credentials)
            self._source_refreshes = hasattr(source, "refresh_needed")
        if self._source_async:  # aiobotocore's
            frozen: FrozenCredentials = await source.get_frozen_credentials()
            return frozen
        # botocore's (our LazyClient's): a refresh due asks STS or a process, off the loop
        if not self._source_refreshes or not source.refresh_needed():
            return source.get_frozen_credentials()  # type: ignore[no-any-return]
        return await self._refresh(source)

    async def _refresh(self, source: Any) -> FrozenCredentials:
        """The credentials of ``source``, refreshed in a thread, one refresh at a time. Each
        request used to start its own thread, and those that came during a refresh queued
        on botocore's lock: a refresh that hangs (a credential process) held every request,
        and a failed one was started again by each thread in turn, after the run had
        stopped too (its exit waiting for all of them). While a refresh is under way, a
        request whose credentials are still good for minutes (botocore's advisory period)
        goes on with them; one that needs new ones waits for it, and gets its error when it
        fails, rather than starting another (nor does any later request, after a credential
        process that did not answer at all)."""
        mandatory = getattr(source, "_mandatory_refresh_timeout", 600)
        frozen = getattr(source, "_frozen_credentials", None)
        if (
            self._refreshing.locked()
            and frozen is not None
            and not source.refresh_needed(mandatory)
        ):
            return frozen  # type: ignore[no-any-return]
        if isinstance(self._refresh_failure, CredentialProcessTimeout):
            raise self._refresh_failure  # not started again: the run stops on it
        failures = self._refresh_failures
        async with self._refreshing:
            if self._refresh_failures != failures and self._refresh_failure is not None:
                raise self._refresh_failure  # the refresh this request waited for failed
            if not source.refresh_needed():  # done while this request waited
                return source.get_frozen_credentials()  # type: ignore[no-any-return]
            try:
                return await asyncio.to_thread(source.get_frozen_credentials)
            except Exception as exc:
                self._refresh_failures += 1
                self._refresh_failure = exc
                raise

    async def _send(
        self,
        method: str,
        key: str,
        headers: dict[str, str],
        body: bytes | bytearray | AsyncIterator[bytes] | None,
        payload_hash: str,
        *,
        query: str = "",
        path: str | None = None,
    ) -> tuple[http11.Response, str, str]:
        """Sign and send one request; return the answer, the URL and the region signed for.
        A body given as an iterator goes with the ``content-length`` that ``headers`` must
        carry (never chunked). The engine's own error from such a body (a staged file cut
        short) is raised as itself, to be reported and retried as itself; any other failure
        of the body is a connection error, as aiobotocore makes it. ``path`` (already
        encoded) replaces the key's: the bucket's."""
        credentials = await self._credentials()
        # where, signed how and through which pool: all three change together once the
        # bucket's region is learnt (``_retarget``), so read at once
        where, signer, pool = self.target, self.signer, self.pool
        path = where.path(key) if path is None else path
        target = path + (f"?{query}" if query else "")
        url = where.origin + target
        signed = signer.sign(
            method,
            path,
            query,
            {"host": where.host, **self.headers, **headers},
            credentials,
            payload_hash=payload_hash,
        )
        signed.update(_FIXED_HEADERS)
        try:
            response = await pool.request(method, target, signed, body)
        except http11.HTTPError as exc:
            if isinstance(exc, http11.BodyError) and isinstance(exc.__cause__, ObjectError):
                raise exc.__cause__ from None  # the body failed, not the connection
            raise _connection_error(exc, url) from exc
        return response, url, signer.region

    async def _raise_error(self, response: http11.Response, url: str, operation: str) -> None:
        """Read an error answer and raise it as botocore would (or hand the request back)."""
        try:
            body = await _read_at_most(response, ERROR_BODY_LIMIT)
        except http11.HTTPError as exc:
            raise _connection_error(exc, url) from exc
        finally:
            response.release()
        headers = response.headers
        error = parse_error(response.status, headers, body)
        # the bucket's region, where botocore's redirector reads it: this header, else the
        # error's <Region> (AuthorizationHeaderMalformed)
        region = error["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region")
        region = region or error["Error"].get("Region")
        if response.status in _REDIRECTS:
            raise _HandBack(f"HTTP {response.status} redirect", region=region)
        code = error["Error"]["Code"]
        if code in _HAND_BACK_CODES:
            raise _HandBack(f"the server answered {code}", code, region)
        raise client_error(response.status, headers, body, operation)

    async def get_object(self, **params: Any) -> dict[str, Any]:
        """GetObject: the fields botocore returns, ``Body`` a ``FastBody`` to read and close."""
        if not self.enabled or params.get("Bucket") != self.bucket or not set(params) <= GET_PARAMS:
            return await self._botocore("get_object", params)
        headers: dict[str, str] = {}
        if params.get("Range"):
            headers["range"] = str(params["Range"])
        if params.get("IfMatch"):
            headers["if-match"] = str(params["IfMatch"])
        response, url, signed = await self._send("GET", params["Key"], headers, None, EMPTY_SHA256)
        if response.status >= 300:
            try:
                await self._raise_error(response, url, "GetObject")
            except _HandBack as exc:
                return await self._instead("get_object", params, exc, signed)
        out = response_fields(response.headers, response.status)
        out["Body"] = FastBody(response, url)
        self.fast_requests += 1
        return out

    async def put_object(self, **params: Any) -> dict[str, Any]:
        """PutObject of a body in memory; the response fields botocore returns."""
        headers = put_headers(params) if self.enabled else None
        return await self._put_body("put_object", "PutObject", params, headers)

    async def put_object_stream(
        self, params: dict[str, Any], size: int, chunks: AsyncIterator[bytes]
    ) -> dict[str, Any] | None:
        """PutObject of ``size`` bytes read from ``chunks`` as the request goes out, so an
        object can go on while it is still being downloaded. ``params`` are PutObject's
        without ``Body``, and must carry the checksum values of the stream (``ContentMD5``,
        ``Checksum<ALGORITHM>``): the server checks the whole stream against them, which is
        what lets the body go ``UNSIGNED-PAYLOAD`` unread. Returns the
        response fields botocore returns, or None when this request cannot be streamed here
        (a parameter the fast path does not cover, another bucket, the fast path off) or the
        server asked for botocore (then the fast path is off for the bucket, as for any
        request): a stream cannot be sent again, so the caller sends the object another way.
        ``chunks`` is not consumed at all when None is returned before sending."""
        _check_streamed(params)
        headers = put_headers(params, streamed=True) if self.enabled else None
        return await self._put_stream("PutObject", params, headers, size, chunks)

    async def upload_part_stream(
        self, params: dict[str, Any], size: int, chunks: AsyncIterator[bytes]
    ) -> dict[str, Any] | None:
        """UploadPart of ``size`` bytes read from ``chunks`` as the request goes out (a part
        read from the staged file), as ``put_object_stream``: ``params`` are UploadPart's
        without ``Body``, with the checksum values the server checks the stream against
        (``ContentMD5``, ``Checksum<ALGORITHM>``); None when it cannot be sent here."""
        _check_streamed(params)
        if not self.enabled or not set(params) <= UPLOAD_PART_PARAMS:
            return None
        fields = {k: v for k, v in params.items() if k not in _PART_QUERY}
        headers = put_headers(fields, streamed=True)
        return await self._put_stream("UploadPart", params, headers, size, chunks, _query(params))

    async def _put_stream(
        self,
        operation: str,
        params: dict[str, Any],
        headers: dict[str, str] | None,
        size: int,
        chunks: AsyncIterator[bytes],
        query: str = "",
    ) -> dict[str, Any] | None:
        """A PUT of ``chunks`` with ``headers`` (their checksums let it go unsigned), or None
        where the fast path does not send it (see ``put_object_stream``)."""
        if headers is None or params.get("Bucket") != self.bucket:
            return None
        headers["content-length"] = str(size)
        response, url, signed = await self._send(
            "PUT", params["Key"], headers, chunks, UNSIGNED_PAYLOAD, query=query
        )
        try:
            return await self._put_answer(response, url, operation)
        except _HandBack as exc:  # a stream cannot be sent again: the caller sends it
            # another way; when the answer named the bucket's region, through this fast path
            # still, whose botocore then confirms it (``_instead``) before it is learnt
            if exc.region in (None, signed):
                self._hand_back(str(exc))
            return None

    async def copy_object(self, **params: Any) -> dict[str, Any]:
        """CopyObject into this bucket: the output botocore returns, ``CopyObjectResult``
        included; a 200 answer carrying an ``<Error>`` raises it, as botocore does."""
        headers = copy_headers(params) if self.enabled else None
        if headers is None or params.get("Bucket") != self.bucket:
            return await self._botocore("copy_object", params)
        # No body: its (empty) payload is signed, as botocore signs it.
        response, url, signed = await self._send("PUT", params["Key"], headers, None, EMPTY_SHA256)
        try:
            return await self._document(response, url, "CopyObject", copy_object_output)
        except _HandBack as exc:
            return await self._instead("copy_object", params, exc, signed)

    async def create_multipart_upload(self, **params: Any) -> dict[str, Any]:
        """CreateMultipartUpload in this bucket: the output botocore returns (``UploadId``,
        and the encryption the upload gets: ``ServerSideEncryption``...)."""
        headers = upload_headers(params) if self.enabled else None
        if headers is None or params.get("Bucket") != self.bucket:
            return await self._botocore("create_multipart_upload", params)
        query = encode_query((("uploads", ""),))
        response, url, signed = await self._send(
            "POST", params["Key"], headers, None, EMPTY_SHA256, query=query
        )
        try:
            return await self._document(
                response, url, "CreateMultipartUpload", create_multipart_upload_output
            )
        except _HandBack as exc:
            return await self._instead("create_multipart_upload", params, exc, signed)

    async def abort_multipart_upload(self, **params: Any) -> dict[str, Any]:
        """AbortMultipartUpload in this bucket: the output botocore returns."""
        if not self.enabled or params.get("Bucket") != self.bucket or set(params) != _ABORT_PARAMS:
            return await self._botocore("abort_multipart_upload", params)
        query = encode_query((("uploadId", str(params["UploadId"])),))
        response, url, signed = await self._send(
            "DELETE", params["Key"], {}, None, EMPTY_SHA256, query=query
        )

        def output(headers: list[tuple[str, str]], status: int, body: bytes) -> dict[str, Any]:
            return {
                "ResponseMetadata": put_output(headers, status, body, "AbortMultipartUpload")[
                    "ResponseMetadata"
                ]
            }

        try:
            return await self._document(response, url, "AbortMultipartUpload", output)
        except _HandBack as exc:
            return await self._instead("abort_multipart_upload", params, exc, signed)

    async def list_objects_v2(self, **params: Any) -> dict[str, Any]:
        """One page of ListObjectsV2 of this bucket, asked with ``encoding-type=url`` and
        decoded as botocore does it; the fields are ``list_objects_v2_output``'s (each object
        with ``Key``, ``Size``, ``ETag`` and ``StorageClass``). About a third of botocore's
        CPU for a page of 1,000 objects."""
        if (
            not self.enabled
            or params.get("Bucket") != self.bucket
            or not set(params) <= LIST_QUERY.keys()
        ):
            return await self._botocore("list_objects_v2", params)
        query = encode_query(
            [
                ("list-type", "2"),
                ("encoding-type", "url"),
                *(
                    (LIST_QUERY[name], str(value))
                    for name, value in params.items()
                    if name != "Bucket"
                ),
            ]
        )
        path = self.target.bucket_path
        response, url, signed = await self._send(
            "GET", "", {}, None, EMPTY_SHA256, query=query, path=path
        )
        try:
            return await self._document(response, url, "ListObjectsV2", list_objects_v2_output)
        except _HandBack as exc:
            return await self._instead("list_objects_v2", params, exc, signed)

    async def _document(
        self,
        response: http11.Response,
        url: str,
        operation: str,
        output: Callable[[list[tuple[str, str]], int, bytes], dict[str, Any]],
    ) -> dict[str, Any]:
        """The output of an answer with an XML document, made by ``output``; an error raised
        as botocore raises it (a 200 carrying one included); ``_HandBack`` when the server
        asked for botocore."""
        if response.status >= 300:
            await self._raise_error(response, url, operation)
        try:
            body = await _read_at_most(response, DOCUMENT_LIMIT + 1)
        except http11.HTTPError as exc:
            raise _connection_error(exc, url) from exc
        finally:
            response.release()
        if len(body) > DOCUMENT_LIMIT:  # read no further: its parse would take ten times more
            raise ObjectError(
                "InvalidResponse",
                f"the server's answer to {operation} goes on past {DOCUMENT_LIMIT:,} bytes; "
                "no S3 answer is that long (a page of 1,000 keys is a few MB)",
            )
        try:
            out = output(response.headers, response.status, body)
        except ValueError as exc:  # a field no S3 sends (a listed <Size> of "abc"), as botocore
            raise ResponseParserError(f"the server's answer to {operation}: {exc}") from exc
        except ClientError as exc:  # an error in a 200: one that may ask for botocore
            code = exc.response["Error"].get("Code")
            if code in _HAND_BACK_CODES:
                raise _HandBack(f"the server answered {code}", code) from exc
            raise
        self.fast_requests += 1
        return out

    async def upload_part(self, **params: Any) -> dict[str, Any]:
        """UploadPart of a body in memory: the response fields botocore returns (``ETag``,
        ``Checksum*``). Over plain http botocore SHA-256-signs every part's payload on the
        event loop (16 ms per 8 MiB); here a part with a checksum header goes
        ``UNSIGNED-PAYLOAD``, as botocore sends it over https."""
        if not self.enabled or not set(params) <= UPLOAD_PART_PARAMS:
            return await self._botocore("upload_part", params)
        headers = put_headers({k: v for k, v in params.items() if k not in _PART_QUERY})
        return await self._put_body("upload_part", "UploadPart", params, headers, _query(params))

    async def _put_body(
        self,
        method: str,
        operation: str,
        params: dict[str, Any],
        headers: dict[str, str] | None,
        query: str = "",
    ) -> dict[str, Any]:
        """A PUT of the body in memory ``params["Body"]`` with ``headers``, or botocore's
        ``method`` when they are None (not covered) or the bucket is another one."""
        if headers is None or params.get("Bucket") != self.bucket:
            return await self._botocore(method, params)
        body = params["Body"]  # bytes or bytearray (put_headers checked), sent as it is
        checked = "content-md5" in headers or any(h.startswith("x-amz-checksum-") for h in headers)
        # Without a checksum header the payload's SHA-256 is signed instead, as botocore does.
        payload = UNSIGNED_PAYLOAD if checked else await _payload_hash(body)
        response, url, signed = await self._send(
            "PUT", params["Key"], headers, body, payload, query=query
        )
        try:
            return await self._put_answer(response, url, operation)
        except _HandBack as exc:
            return await self._instead(method, params, exc, signed)

    async def _put_answer(
        self, response: http11.Response, url: str, operation: str
    ) -> dict[str, Any]:
        """The fields botocore returns for a PUT's answer; an error raised as botocore
        raises it; ``_HandBack`` when the server asked for botocore."""

        def output(headers: list[tuple[str, str]], status: int, body: bytes) -> dict[str, Any]:
            return put_output(headers, status, body, operation)

        return await self._document(response, url, operation, output)

    async def _instead(
        self, method: str, params: dict[str, Any], handed: _HandBack, signed: str
    ) -> dict[str, Any]:
        """``method`` by botocore, for a request the server answered with ``handed``; the
        bucket then stays on botocore, unless botocore is answered the same error: the server
        refused the request, not the way the fast path made it (a GET of an object encrypted
        with SSE-C, made without its key, is InvalidRequest whoever asks), and the error is the
        request's."""
        try:
            result = await self._botocore(method, params)
        except ClientError as exc:
            if handed.code is None or exc.response.get("Error", {}).get("Code") != handed.code:
                self._hand_back(str(handed))
            raise
        # the bucket in another region than the request was signed for: sign for its own
        if handed.region in (None, signed) or not await self._retarget(handed.region):
            self._hand_back(str(handed))
        return result

    async def _retarget(self, region: str) -> bool:
        """The bucket is in ``region``, another than the one signed for: the server said so
        and botocore followed it there (its redirect). Where botocore sends that region's
        requests is asked of it again (``learn_region``), and this fast path sends them there
        from now on, signed for the region: at another address (AWS's host for the region)
        through a pool of its own. False: the bucket stays on botocore."""
        target = await learn_region(self.client, self.bucket, region)
        if not isinstance(target, Target) or target.region != region:
            return False
        if target == self.target or not self.enabled:  # another request, sent before
            return True  # the first one learnt the region
        before = self.target.region
        moved = target.origin != self.target.origin
        if moved:  # the old pool's requests end there; it is closed with the stack
            old = self.pool
            self.pool = _pool_for(target, old.limit, old.connect_timeout, old.read_timeout)
        self.target = target
        self.signer = SigV4Signer(target.region, target.service)
        if moved:
            await self._stack.enter_async_context(self.pool)
        log.info(
            "bucket %s is in region %s, not %s: its requests are signed for %s from now on "
            "(region = %s in its profile, without --region, saves the redirect)",
            self.bucket,
            region,
            before,
            region,
            region,
        )
        return True

    async def _botocore(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = params.get("Body")
        if isinstance(body, bytearray | memoryview):  # read as it goes: no copy (BufferBody)
            with BufferBody(body) as readable:
                result: dict[str, Any] = await getattr(self.client, method)(
                    **{**params, "Body": readable}
                )
                return result
        result = await getattr(self.client, method)(**params)
        return result


async def open_fast_s3(
    stack: contextlib.AsyncExitStack,
    client: Any,
    bucket: str,
    *,
    connections: int,
    connect_timeout: float,
    read_timeout: float,
) -> FastS3 | None:
    """A ``FastS3`` for ``bucket`` living as long as ``stack``, or None (with the reason logged
    at debug level) when the bucket's requests need something only botocore does."""
    target = await probe_target(client, bucket)
    if isinstance(target, str):
        log.debug("fast path off for bucket %s: %s", bucket, target)
        return None
    pool = _pool_for(target, connections, connect_timeout, read_timeout)
    await stack.enter_async_context(pool)
    return FastS3(client, bucket, target, pool, stack)


def _pool_for(
    target: Target, connections: int, connect_timeout: float | None, read_timeout: float | None
) -> http11.Pool:
    origin = urlsplit(target.origin)
    return http11.Pool(
        origin.hostname or "",
        origin.port or (443 if target.ssl else 80),
        tls=target.ssl,
        limit=connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
