"""An object staged locally, and what its copy keeps of the source's answer."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stamps import STAMP

#: GetObject response fields that are copied to the destination as they are.
PRESERVED_FIELDS = (
    "ContentType",
    "ContentEncoding",
    "CacheControl",
    "ContentDisposition",
    "ContentLanguage",
    "Expires",
    "WebsiteRedirectLocation",
)
#: the ``Expires`` of a copy whose source's is no date: what such a date means, "already
#: expired" (RFC 9111, 5.3). Left out, the copy could be cached where its source never was.
ALREADY_EXPIRED = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(slots=True)
class FetchedObject:
    """An object staged locally, with what the upload needs to reproduce it."""

    key: str
    path: Path
    size: int
    md5: bytes
    etag: str
    metadata: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None  # small objects stay in memory too: no second read
    source_part_size: int | None = None  # the part size of a multipart source object
    digest_etag: bool = True  # the source's ETag is made of MD5s (see etag_is_digest)


def kept_fields(head: dict[str, Any]) -> dict[str, Any]:
    """What a copy keeps of its source's GetObject or HeadObject answer: ``PRESERVED_FIELDS``
    and user metadata (but ``stamps.STAMP``). An ``Expires`` that is no date (S3 keeps any
    text; botocore leaves the field out, the text in ``ExpiresString``) is
    ``ALREADY_EXPIRED``."""
    fields = {name: head[name] for name in PRESERVED_FIELDS if head.get(name)}
    if "Expires" not in fields and head.get("ExpiresString"):
        fields["Expires"] = ALREADY_EXPIRED
    # not the stamp of an earlier copy (a restore from a backup): a copy gets its own, or none
    metadata = {k: v for k, v in (head.get("Metadata") or {}).items() if k.lower() != STAMP}
    if metadata:
        fields["Metadata"] = metadata
    return fields
