"""Multipart uploads a crash leaves behind: recorded in the checkpoint, aborted on the next run.

A multipart upload that is neither completed nor aborted keeps its parts (and their cost) at
the destination for ever. The sink records each one in the checkpoint's ``multipart_uploads``
section, keyed by destination key, *before* it can be lost:

- ``""`` (durably, before CreateMultipartUpload is sent): an upload of this key may exist;
- the upload id (durably, as soon as it is known);
- nothing once the upload is completed or aborted.

At the start of the next run ``abort_leftover_uploads()`` aborts every upload of a recorded key
(the recorded id, and whatever ListMultipartUploads shows for exactly that key, which covers a
CreateMultipartUpload whose answer was lost), so nothing leaks, a SIGKILL included.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

from botocore.exceptions import ClientError

from .errors import ObjectError
from .retry import RetryPolicy, error_code
from .s3client import S3Client

log = logging.getLogger("asyncbackup")

SECTION = "multipart_uploads"
PENDING = ""
_GONE = ("NoSuchUpload", "404")


class Notes(Protocol):
    """What the journal needs of the pipeline: its checkpoint notes."""

    def note(self, section: str, key: str, value: Any) -> None: ...

    async def note_durably(self, section: str, key: str, value: Any) -> None: ...


class UploadJournal:
    """The sink's record of multipart uploads in flight, kept in the checkpoint."""

    def __init__(self, notes: Notes) -> None:
        self.notes = notes

    async def starting(self, key: str) -> None:
        await self.notes.note_durably(SECTION, key, PENDING)

    async def started(self, key: str, upload_id: str) -> None:
        await self.notes.note_durably(SECTION, key, upload_id)

    def finished(self, key: str) -> None:
        self.notes.note(SECTION, key, None)


async def abort_upload(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Abort one upload; one that is already gone counts as aborted."""
    try:
        await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if error_code(exc) not in _GONE:
            raise


async def uploads_of_key(client: S3Client, bucket: str, key: str, retry: RetryPolicy) -> list[str]:
    """Ids of the multipart uploads in progress for exactly ``key``."""
    ids: list[str] = []
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        page: dict[str, Any] = await retry.call(
            functools.partial(client.list_multipart_uploads, **params)
        )
        ids.extend(u["UploadId"] for u in page.get("Uploads", ()) if u.get("Key") == key)
        if not page.get("IsTruncated"):
            return ids
        params["KeyMarker"] = page.get("NextKeyMarker", "")
        params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")


async def sweep_key(
    client: S3Client, bucket: str, key: str, retry: RetryPolicy, keep: str | None = None
) -> int:
    """Abort every upload in progress for ``key`` but ``keep``; return how many were aborted."""
    aborted = 0
    for upload_id in await uploads_of_key(client, bucket, key, retry):
        if upload_id != keep:
            await retry.call(functools.partial(abort_upload, client, bucket, key, upload_id))
            aborted += 1
    return aborted


async def abort_leftover_uploads(
    client: S3Client, bucket: str, recorded: dict[str, Any], retry: RetryPolicy
) -> dict[str, Any]:
    """Abort the uploads an earlier run recorded; return the entries that must be kept."""
    kept: dict[str, Any] = {}
    for key, upload_id in recorded.items():
        try:
            if isinstance(upload_id, str) and upload_id:
                await retry.call(functools.partial(abort_upload, client, bucket, key, upload_id))
            aborted = await sweep_key(client, bucket, key, retry)
        except ObjectError as exc:
            log.warning(
                "could not abort the multipart upload of %s left by an earlier run (%s); "
                "will try again on the next run",
                key,
                exc,
            )
            kept[key] = upload_id
            continue
        log.info(
            "aborted the multipart upload of %s left by an earlier run (%s, %d more found)",
            key,
            upload_id or "id not recorded",
            aborted,
        )
    return kept
