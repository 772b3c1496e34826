"""S3 answers in the shapes botocore gives: response headers as GetObject/PutObject fields, and
error answers as ``botocore.exceptions.ClientError`` with the same ``response`` dict, so that
``retry.classify()`` and everything above it cannot tell which path a request took."""

from __future__ import annotations

import contextlib
import html
import http.client
import re
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

#: response header (lower case) -> field, for the headers that are plain strings
STRING_FIELDS: dict[str, str] = {
    "etag": "ETag",
    "content-type": "ContentType",
    "content-encoding": "ContentEncoding",
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-language": "ContentLanguage",
    "content-range": "ContentRange",
    "accept-ranges": "AcceptRanges",
    "x-amz-website-redirect-location": "WebsiteRedirectLocation",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-version-id": "VersionId",
    "x-amz-storage-class": "StorageClass",
    "x-amz-checksum-crc32": "ChecksumCRC32",
    "x-amz-checksum-crc32c": "ChecksumCRC32C",
    "x-amz-checksum-sha256": "ChecksumSHA256",
}
META_PREFIX = "x-amz-meta-"
#: a leaf element of the error document (no XML parser on what a server sends)
_LEAF = re.compile(r"<([A-Za-z][\w.-]*)>([^<]*)</\1>")
#: an error body longer than this is not S3's XML: read no more of it
ERROR_BODY_LIMIT = 64 * 1024


def response_fields(headers: Iterable[tuple[str, str]], status: int) -> dict[str, Any]:
    """GetObject/PutObject output fields from the response headers, as botocore names them."""
    out: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    lowered: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        lowered[lname] = value
        field = STRING_FIELDS.get(lname)
        if field is not None:
            out[field] = value
        elif lname.startswith(META_PREFIX):
            metadata[name[len(META_PREFIX) :]] = value  # botocore keeps the name as received
        elif lname == "content-length":
            out["ContentLength"] = int(value)
        elif lname == "expires":
            out["ExpiresString"] = value
            # As botocore: a timestamp, or left out when it does not parse. (LastModified is
            # not parsed at all: nothing here reads it, and dateutil costs more than the rest.)
            with contextlib.suppress(ValueError, RuntimeError):
                out["Expires"] = parse_timestamp(value)
    out["Metadata"] = metadata
    out["ResponseMetadata"] = response_metadata(lowered, status)
    return out


def response_metadata(headers: dict[str, str], status: int) -> dict[str, Any]:
    return {
        "RequestId": headers.get("x-amz-request-id", ""),
        "HostId": headers.get("x-amz-id-2", ""),
        "HTTPStatusCode": status,
        "HTTPHeaders": headers,
        "RetryAttempts": 0,
    }


def parse_error(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The ``ClientError.response`` botocore builds for an S3 error answer: ``Error.Code`` and
    ``Error.Message`` from the XML body, or the status code and its reason when there is no
    (parsable) body; ``ResponseMetadata`` with the status and the headers (lower case)."""
    lowered = {name.lower(): value for name, value in headers}
    error: dict[str, Any] = {}
    text = body.decode("utf-8", "replace")
    start = text.find("<Error>")
    if start >= 0:  # S3's error document is flat: <Error><Code>..</Code><Message>..</Message>
        for match in _LEAF.finditer(text, start):
            text_value = match.group(2)  # an empty element is None, as in botocore
            error.setdefault(match.group(1), html.unescape(text_value) if text_value else None)
    metadata = response_metadata(lowered, status)
    for name in ("RequestId", "HostId"):  # botocore takes them from the headers only
        error.pop(name, None)
    if not error.get("Code"):
        error = {"Code": str(status), "Message": http.client.responses.get(status, "")}
    return {"Error": error, "ResponseMetadata": metadata}


def client_error(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, operation: str
) -> ClientError:
    return ClientError(parse_error(status, headers, body), operation)
