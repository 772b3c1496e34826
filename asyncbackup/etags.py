"""What an S3 ETag tells of its object: an MD5, the MD5 of its parts' MD5s and their count, or
nothing (SSE-KMS, DSSE-KMS, SSE-C)."""

from __future__ import annotations

import re
from typing import Any

from .config import S3_MAX_PARTS
from .errors import IntegrityError

#: server-side encryption whose objects' ETags are not their MD5s
OPAQUE_ETAG_SSE = ("aws:kms", "aws:kms:dsse")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-([1-9]\d{0,4})$")


def answered_etag(etag: Any, what: str) -> str:
    """The ETag a 200 answer carries (every S3 answer about an object or an upload has one).
    A 200 without it - a server or a middlebox that failed after its status line, or, for a
    copy, one whose outcome S3 puts in the body - confirms nothing: an ``IntegrityError``,
    and the request (or the object) is tried again."""
    if not etag:
        raise IntegrityError(f"{what} answered 200 without its ETag")
    return str(etag)


def clean_etag(etag: str) -> str:
    return etag.strip().strip('"').lower()


def multipart_parts(etag: str) -> int | None:
    """The part count of a multipart ETag (``"<md5>-N"``), or None. A count S3 never makes
    (0, past 10,000) is no multipart ETag: the object's layout, checked from it, was a list
    of that many sizes and a HEAD of each (``<md5>-1000000000`` from a broken or hostile
    server: 8 GB), and a count of thousands of digits an int() that raised."""
    match = _MULTIPART_ETAG.match(clean_etag(etag))
    if match is None:
        return None
    count = int(match.group(1))
    return count if count <= S3_MAX_PARTS else None


def is_md5_etag(etag: str) -> bool:
    """Whether ``etag`` looks like a single-part upload's MD5 (SSE-KMS and SSE-C ETags look
    the same: only the GET's headers tell, see ``etag_is_md5``)."""
    return bool(_MD5_ETAG.match(clean_etag(etag)))


def etag_is_digest(response: dict[str, Any]) -> bool:
    """Whether the object's ETag is made of MD5s (of the object, or of its parts): not with
    SSE-KMS, DSSE-KMS or SSE-C, whose ETags are opaque."""
    kms = response.get("ServerSideEncryption") in OPAQUE_ETAG_SSE
    return not kms and not response.get("SSECustomerAlgorithm")


def etag_is_md5(etag: str, response: dict[str, Any]) -> bool:
    return is_md5_etag(etag) and etag_is_digest(response)
