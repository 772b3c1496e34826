"""The S3 source: stream the listing page by page, fetch one object into staging.

A download is checked as it arrives: its length against the object's size and, where the ETag
is an MD5 (a single-part upload without SSE-KMS or SSE-C), its MD5 against the ETag. A body cut
short is resumed with a ranged GET pinned to the same version by ``If-Match``, not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiofiles
import aiofiles.threadpool

from ..bandwidth import TokenBucket
from ..errors import IntegrityError, ObjectError
from ..fasts3 import FastS3
from ..pipeline import WorkItem
from ..retry import RetryPolicy
from ..s3client import S3Client
from ..staging import Staging, raise_if_disk_full

CHUNK = 1024 * 1024
IN_MEMORY_LIMIT = 1024 * 1024
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")

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


def clean_etag(etag: str) -> str:
    return etag.strip().strip('"').lower()


def multipart_parts(etag: str) -> int | None:
    """The part count of a multipart ETag (``"<md5>-N"``), or None."""
    match = _MULTIPART_ETAG.match(clean_etag(etag))
    return int(match.group(1)) if match else None


def etag_is_md5(etag: str, response: dict[str, Any]) -> bool:
    encrypted = response.get("ServerSideEncryption") == "aws:kms" or response.get(
        "SSECustomerAlgorithm"
    )
    return bool(_MD5_ETAG.match(clean_etag(etag))) and not encrypted


def _close_if_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


@contextlib.asynccontextmanager
async def _open_for_writing(path: Path) -> AsyncIterator[Any]:
    """``aiofiles.open(path, "wb")``, minus its leak: cancelled while the open runs in its
    thread, aiofiles drops the file that thread goes on to open (unclosed). Here it is closed."""
    opening: asyncio.Future[BinaryIO] = asyncio.ensure_future(asyncio.to_thread(open, path, "wb"))
    try:
        raw = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_if_opened)
        raise
    out = aiofiles.threadpool.wrap(raw, loop=asyncio.get_running_loop())
    try:
        yield out
    finally:
        await out.close()


class S3Source:
    def __init__(
        self,
        client: S3Client,
        bucket: str,
        retry: RetryPolicy,
        *,
        bandwidth: TokenBucket | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.retry = retry
        self.bandwidth = bandwidth
        #: GetObject of objects up to IN_MEMORY_LIMIT over aiohttp (set by the caller)
        self.fast: FastS3 | None = None

    async def list(self, prefix: str) -> AsyncIterator[Sequence[WorkItem]]:
        """Pages of ListObjectsV2 under ``prefix``, as they arrive."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            page: dict[str, Any] = await self.retry.call(
                functools.partial(self.client.list_objects_v2, **params)
            )
            yield [
                WorkItem(key=o["Key"], size=int(o.get("Size", 0)), etag=o.get("ETag", ""))
                for o in page.get("Contents", ())
            ]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def fetch(self, item: WorkItem, staging: Staging) -> FetchedObject:
        """Download ``item`` to a temporary file, verify it, and move it to its staged path."""
        tmp = staging.temp_path()
        try:
            fetched = await self._download(item, tmp)
            fetched.path = await asyncio.to_thread(staging.commit, tmp, item.key)
        except OSError as exc:  # a full disk is already a StagingFullError, not an OSError
            await asyncio.to_thread(tmp.unlink, True)
            raise ObjectError(
                "LocalIOError", f"{exc.strerror} ({exc.filename})", retryable=True
            ) from exc
        except BaseException:
            await asyncio.to_thread(tmp.unlink, True)
            raise
        return fetched

    async def _download(self, item: WorkItem, tmp: Path) -> FetchedObject:
        digest = hashlib.md5(usedforsecurity=False)
        head: dict[str, Any] = {}
        chunks: list[bytes] | None = [] if item.size <= IN_MEMORY_LIMIT else None
        written = 0
        get_object = self.client.get_object
        if self.fast is not None and item.size <= IN_MEMORY_LIMIT:
            get_object = self.fast.get_object
        try:
            async with _open_for_writing(tmp) as out:

                async def attempt() -> None:
                    nonlocal written
                    params: dict[str, Any] = {"Bucket": self.bucket, "Key": item.key}
                    if head:  # a resume: the rest of the same version
                        params["Range"] = f"bytes={written}-"
                        params["IfMatch"] = head["ETag"]
                    response = await get_object(**params)
                    if not head:
                        head.update(response)
                        head.pop("Body", None)
                    body = response["Body"]
                    async with body:  # always release the connection, read or not
                        while chunk := await body.read(CHUNK):
                            if self.bandwidth is not None:
                                await self.bandwidth.consume(len(chunk))
                            await out.write(chunk)
                            digest.update(chunk)
                            if chunks is not None:
                                chunks.append(chunk)
                            written += len(chunk)

                await self.retry.call(attempt)
        except OSError as exc:
            raise_if_disk_full(exc, tmp.parent)
            raise ObjectError("LocalIOError", f"{exc.strerror} ({exc.filename})") from exc
        except ObjectError as exc:
            if exc.code == "PreconditionFailed":
                raise ObjectError(
                    "ObjectChanged", "the object was replaced during the download", retryable=True
                ) from exc
            raise
        size = int(head.get("ContentLength", written))
        if written != size:
            raise IntegrityError(f"downloaded {written} bytes, expected {size}")
        etag = str(head.get("ETag", item.etag))
        md5 = digest.digest()
        if etag_is_md5(etag, head) and md5.hex() != clean_etag(etag):
            raise IntegrityError(f"MD5 {md5.hex()} of the download differs from ETag {etag}")
        metadata = {name: head[name] for name in PRESERVED_FIELDS if head.get(name)}
        if head.get("Metadata"):
            metadata["Metadata"] = dict(head["Metadata"])
        data = b"".join(chunks) if chunks is not None else None
        fetched = FetchedObject(item.key, tmp, written, md5, etag, metadata, data)
        fetched.source_part_size = await self._part_size(item.key, etag, written)
        return fetched

    async def _part_size(self, key: str, etag: str, size: int) -> int | None:
        """The source's part size, so the copy can have the same layout and the same ETag."""
        parts = multipart_parts(etag)
        if parts is None:
            return None
        if parts == 1:
            return size
        head = await self.retry.call(
            # No If-Match: some servers answer with the part's ETag. A change in between
            # shows up as an ETag mismatch of the copy, which is retried.
            functools.partial(self.client.head_object, Bucket=self.bucket, Key=key, PartNumber=1)
        )
        part_size = int(head.get("ContentLength", 0))
        # Only a uniform layout reproduces the ETag: N-1 full parts and a shorter last one.
        if part_size <= 0 or not (parts - 1) * part_size < size <= parts * part_size:
            return None
        return part_size
