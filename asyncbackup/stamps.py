"""The source's ETag, stamped on each copy ``--skip-existing`` makes, and read back.

``--skip-existing`` knows a copy by its size and ETag, but some copies' ETags can never be
their source's: a destination encrypting with SSE-KMS (a bucket's default encryption too)
gives each copy an ETag that is no MD5, and a source of one part copied in parts above
``--multipart-threshold`` gets a multipart ETag. Such copies were made again at every run.
Each copy an incremental run makes carries the ETag of the source version it was made of, as
user metadata (``x-amz-meta-asyncbackup-source-etag``); a later run reads it with one HEAD,
only for a copy of the source's size whose ETag is not the source's, and takes the copy for
unchanged when it names the source's current ETag (``incremental.mark_unchanged``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from .errors import ObjectError
from .etags import clean_etag
from .retry import ACCESS_DENIED, RetryPolicy

log = logging.getLogger(__name__)

#: the user metadata key (S3 keeps user metadata keys in lower case)
STAMP = "asyncbackup-source-etag"
#: S3: "the user-defined metadata is limited to 2 KB in size", keys and values in UTF-8
_METADATA_LIMIT = 2048


def stamped(fields: dict[str, Any], etag: str) -> dict[str, Any]:
    """``fields`` (what a copy is written with: ``fetched.kept_fields``) with ``etag`` stamped
    in its metadata, in place of any stamp the source itself carries; ``fields`` as they are
    when there is no ETag, or when the stamp would take the metadata over S3's limit (a copy
    S3 would refuse: written unstamped, it is compared as before)."""
    etag = clean_etag(etag)
    if not etag:
        return fields
    metadata = {k: v for k, v in fields.get("Metadata", {}).items() if k.lower() != STAMP}
    size = sum(len(k.encode()) + len(str(v).encode()) for k, v in metadata.items())
    if size + len(STAMP) + len(etag) > _METADATA_LIMIT:
        return fields
    metadata[STAMP] = etag
    return {**fields, "Metadata": metadata}


class StampReader:
    """The stamps of a destination bucket's objects, one HEAD each."""

    def __init__(self, client: Any, bucket: str, retry: RetryPolicy) -> None:
        self.client = client
        self.bucket = bucket
        self.retry = retry
        #: the credentials may list the destination but not read it: no more HEADs
        self.refused = False
        #: a HEAD answered: a refusal after it is the object's own (a policy on its key)
        self.answered = False

    async def stamp(self, key: str) -> str | None:
        """The source ETag the copy under ``key`` was made of, or None: no stamp, the
        object gone, a HEAD that failed (the object is then compared as without stamps).
        Refused before any HEAD was answered, the credentials may not read the destination:
        no more HEADs, one warning; refused after, the refusal is that object's."""
        if self.refused:
            return None
        head = functools.partial(self.client.head_object, Bucket=self.bucket, Key=key)
        try:
            answer: dict[str, Any] = await self.retry.call(head)
        except ObjectError as exc:
            if exc.code in ACCESS_DENIED and not self.answered and not self.refused:
                self.refused = True  # said once: the first HEADs run at once
                log.warning(
                    "--skip-existing cannot read the destination's copies (%s): a copy whose "
                    "ETag is not its source's is copied again; s3:GetObject on the destination "
                    "lets it read the source ETag each copy carries",
                    exc,
                )
            return None
        self.answered = True
        value = (answer.get("Metadata") or {}).get(STAMP)
        return clean_etag(value) if isinstance(value, str) else None
