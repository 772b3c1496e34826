"""Direct copy: the destination copies each object from the source, server-side.

For when one set of credentials can read the source and write the destination on the same
S3 service (``--direct``): no byte passes through this machine. A single-part object is one
CopyObject (metadata copied; its ETag, the MD5, must come back unchanged), and so is an empty
multipart one (no byte range can name its bytes); any other multipart object is rebuilt with
UploadPartCopy in its own part layout, so the copy's ETag equals the source's and is checked
(the layout is read from the first part; a source whose parts are not all that size is copied
in its true part sizes, a HEAD each: at once where no uniform layout fits the first part's
length, else again after a copy in that layout). Before any multipart copy is completed, its
parts must be of the listed version, as a server may ignore the parts' if-match: a copy made
of two versions is never completed, even where its ETag would tell. The parts' ETags (their
ranges' MD5s) making the listed ETag show it; else (parts of our size, SSE-KMS) the source
must still have its listed ETag (a HEAD with If-Match). A failed multipart copy is
aborted, shielded from cancellation. CopyObject goes through the fast path (``fasts3``) when
the destination bucket has one; multipart stays on botocore.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from typing import Any

from ..checksums import multipart_etag
from ..config import S3_MAX_PART_SIZE, S3_MAX_PARTS
from ..encryption import AppliedCheck
from ..errors import IntegrityError, ObjectError
from ..etags import (
    OPAQUE_ETAG_SSE,
    answered_etag,
    clean_etag,
    etag_is_digest,
    etag_is_md5,
    multipart_parts,
)
from ..fasts3 import FastS3
from ..fetched import kept_fields
from ..pipeline import WorkItem, primary_error
from ..retry import ACCESS_DENIED, RetryPolicy, kms_refusal
from ..s3client import S3Client
from ..sources.layout import FirstPartProbe
from ..stamps import stamped
from ..tags import TAGGING, read_tags, tag_count
from ..uploads import UploadJournal, tracked_upload

_COPY_OBJECT_LIMIT = S3_MAX_PART_SIZE  # CopyObject copies at most 5 GiB
#: what a copy refused by the source object's KMS key needs (``kms_refusal``)
_KMS_COPY = (
    "the source object is encrypted with the KMS key {key}: its copy needs kms:Decrypt on "
    "that key, besides s3:GetObject on the source and s3:PutObject on the destination"
)


class ServerSideCopier:
    def __init__(
        self,
        client: S3Client,
        *,
        source_bucket: str,
        dest_bucket: str,
        retry: RetryPolicy,
        dest_key: Callable[[str], str],
        part_size_for: Callable[[int], int],
        part_concurrency: int,
        extra_params: dict[str, str] | None = None,
        copy_tags: bool = False,
        readable: bool = True,
        stamp: bool = False,
    ) -> None:
        self.client = client
        self.source_bucket = source_bucket
        self.dest_bucket = dest_bucket
        self.retry = retry
        self.dest_key = dest_key
        self.part_size_for = part_size_for
        self.part_concurrency = part_concurrency
        self.extra_params = dict(extra_params or {})
        self.copy_tags = copy_tags  # --copy-tags
        #: a copy whose ETag will not be its source's carries the source's (--skip-existing:
        #: ``stamps.py``): a CopyObject then writes the source's metadata (a HEAD) with it, as
        #: COPY cannot add one
        self.stamp = stamp
        #: the destination's ETags are no MD5s: SSE-KMS, asked (--sse) or the bucket's own
        self.opaque_etags = self.extra_params.get("ServerSideEncryption") in OPAQUE_ETAG_SSE
        #: the encryption --sse asked for, as the answers (or else the copies' HEADs, unless
        #: not ``readable``: --dest-write-only) say
        self.encryption = AppliedCheck(
            self.extra_params, client=client, bucket=dest_bucket, retry=retry, readable=readable
        )
        self.fast: FastS3 | None = None  # CopyObject without botocore (the destination's bucket)
        #: where multipart copies in flight are recorded for a crash (set by the caller)
        self.journal: UploadJournal | None = None
        self.first_part = FirstPartProbe(client, source_bucket, retry)
        #: a copy of this run showed an SSE-KMS source (``_copy_object``): single-part
        #: copies are stamped from the start where a HEAD shows one (with ``stamp``)
        self.source_opaque = False

    async def copy(self, item: WorkItem) -> int:
        """Copy ``item`` server-side; return its size once the destination has it whole."""
        if item.size > S3_MAX_PART_SIZE * S3_MAX_PARTS:  # its parts, planned, would be a list
            raise ObjectError(  # of 10^10 sizes for a listed Size of 10^20
                "EntityTooLarge",
                f"listed at {item.size:,} bytes, more than a multipart copy can make "
                f"({S3_MAX_PARTS:,} parts of {S3_MAX_PART_SIZE:,} bytes)",
            )
        parts = multipart_parts(item.etag)
        try:
            # An empty object is one CopyObject, multipart or not: no range can name its bytes.
            if item.size > 0 and (parts is not None or item.size > _COPY_OBJECT_LIMIT):
                await self._copy_parts(item, parts)
            else:
                await self._copy_object(item)
        except ObjectError as exc:
            if exc.code not in ACCESS_DENIED:
                raise
            try:
                head: dict[str, Any] | None = await self._head_source(item)
            except ObjectError:
                head = None
            refusal = kms_refusal(exc, head, _KMS_COPY)
            if refusal is exc:
                raise
            raise refusal from exc
        return item.size

    def _source(self, item: WorkItem) -> dict[str, str]:
        return {"Bucket": self.source_bucket, "Key": item.key}

    async def _copy_object(self, item: WorkItem) -> None:
        head: dict[str, Any] | None = None  # the source's, where asked
        stamp = False  # the copy carries the listed ETag (``stamps.py``)
        if self.stamp and item.etag and (self.opaque_etags or self.source_opaque):
            head = await self._head_source(item)
            stamp = self.opaque_etags or not etag_is_digest(head)
        response = await self._copy_once(item, head if stamp else None)
        etag = answered_etag(response.get("CopyObjectResult", {}).get("ETag"), "CopyObject")
        comparable = etag and etag_is_md5(item.etag, response) and etag_is_md5(etag, response)
        if not comparable or clean_etag(etag) == clean_etag(item.etag):
            return
        # The answer tells the copy's encryption, not the source's: an SSE-KMS source's ETag
        # is no MD5 (the listing does not say so), which only the source's HEAD tells.
        head = head or await self._head_source(item)
        if etag_is_digest(head):
            raise IntegrityError(f"copy ETag {etag} differs from source {item.etag}")
        if self.stamp and not stamp:  # (``comparable``: the listed ETag is an MD5's form)
            # An SSE-KMS source: its copy's ETag will never be its ETag, so --skip-existing
            # would copy it again at every run, unless the copy says which version it is
            # of. Made again, stamped; the source bucket's other objects likely are SSE-KMS
            # too (its default encryption): from now on a HEAD of each tells before its copy.
            self.source_opaque = True
            await self._copy_once(item, head)

    async def _copy_once(self, item: WorkItem, head: dict[str, Any] | None) -> dict[str, Any]:
        """One CopyObject of ``item`` (retried), its answer; with the source's ``head``,
        written with its metadata and the listed ETag stamped."""
        params: dict[str, Any] = {
            "Bucket": self.dest_bucket,
            "Key": self.dest_key(item.key),
            "CopySource": self._source(item),
            "MetadataDirective": "COPY",
            **self.extra_params,
        }
        if self.copy_tags:  # S3's default; said, for servers whose default is not
            params["TaggingDirective"] = "COPY"
        unstamped: dict[str, Any] | None = None  # the copy's parameters but the stamp
        if item.etag:
            params["CopySourceIfMatch"] = item.etag  # the version that was listed, or an error
            if head is not None:  # the listed version's fields, stamped
                fields = kept_fields(head)
                unstamped = {**params, **fields, "MetadataDirective": "REPLACE"}
                del unstamped["CopySourceIfMatch"]
                params.update(stamped(fields, item.etag))
                params["MetadataDirective"] = "REPLACE"
        copy_object = self.fast.copy_object if self.fast is not None else self.client.copy_object
        response: dict[str, Any] = await self.retry.call(functools.partial(copy_object, **params))
        await self.encryption.confirm(response, params["Key"])
        if unstamped is not None:
            # No ETag tells which version was copied, and a server may ignore the if-match:
            # the stamp stays only if the source is still the listed version; else the copy
            # (of whichever version) is written again without it, never skipped by it.
            try:
                await self._source_unchanged(item)
            except ObjectError:
                await self.retry.call(functools.partial(copy_object, **unstamped))
                raise
        return response

    async def _layout(self, item: WorkItem, parts: int | None) -> tuple[list[int], bool]:
        """The source's part sizes (True: the ETag will match): uniform where the first part
        says so, else its true sizes when no uniform layout fits the first part's length
        (6, 5 and 1 MiB); ours where the server does not tell."""
        if parts == 1:
            return [item.size], True
        if parts is not None:
            head = await self.first_part.head(item.key)
            size = int(head.get("ContentLength", 0)) if head is not None else 0
            if (
                size > 0
                and (parts - 1) * size < item.size <= parts * size <= S3_MAX_PART_SIZE * parts
            ):
                return _even_parts(item.size, size), True
            if size > 0:  # parts not all of one size: a HEAD each tells
                sizes = await self.first_part.sizes(item.key, parts, item.size)
                if sizes is not None and sum(sizes) == item.size and all(sizes):
                    return sizes, True
        return _even_parts(item.size, self.part_size_for(item.size)), False

    async def _copy_parts(self, item: WorkItem, parts: int | None) -> None:
        sizes, same_layout = await self._layout(item, parts)
        head = await self._head_source(item)
        source_opaque = not etag_is_digest(head)
        opaque = self.opaque_etags
        create = self._create_params(item, head, stamp=opaque or source_opaque or not same_layout)
        if self.copy_tags and tag_count(head):  # UploadPartCopy copies no tags: they are set
            read = functools.partial(
                read_tags, self.client, self.source_bucket, item.key, head.get("VersionId")
            )
            create[TAGGING] = await self.retry.call(read)
        # A server may ignore the parts' if-match, and a copy made of two versions must never
        # be completed: its parts must show the listed version, or the source must still be
        # it (a HEAD) before it is.
        # Where the ETags can be compared, the copy's must then be the source's too; not in
        # parts of our size, nor with SSE-KMS (an SSE-KMS source's ETag is no MD5s' either).
        unchecked = not same_layout or opaque or source_opaque
        etag, encrypted = await self._copy_in(item, create, sizes)
        if unchecked or encrypted or etag == clean_etag(item.etag):
            return
        mismatch = IntegrityError(f"copy ETag {etag} differs from source {item.etag}")
        # S3 asks only that no part but the last is under 5 MiB: parts of 5, 6 and 1 MiB look
        # like 5, 5 and 2 from the first part. Their true sizes (a HEAD each) tell; the copy
        # is made again in them, and must then have the source's ETag.
        true_sizes = await self.first_part.sizes(item.key, parts, item.size) if parts else None
        if true_sizes is None or true_sizes == sizes or sum(true_sizes) != item.size:
            raise mismatch
        etag, encrypted = await self._copy_in(item, create, true_sizes)
        if not encrypted and etag != clean_etag(item.etag):
            raise IntegrityError(f"copy ETag {etag} differs from source {item.etag}")

    async def _source_unchanged(self, item: WorkItem) -> None:
        """Raise PreconditionFailed unless the source still has the listed ETag: then every
        part copied until now is of that version, on a server that ignores the parts'
        ``x-amz-copy-source-if-match`` too (one HEAD with If-Match)."""
        if not item.etag:
            return
        try:
            etag = str((await self._head_source(item, IfMatch=item.etag))["ETag"])
        except ObjectError as exc:
            if exc.code not in ("412", "PreconditionFailed"):
                raise
            etag = ""
        if clean_etag(etag) != clean_etag(item.etag):  # a 412, or a server ignoring If-Match
            raise ObjectError(
                "PreconditionFailed",
                f"the source changed during its copy (its ETag is no longer {item.etag}); "
                "run again to copy the new version",
            )

    async def _head_source(self, item: WorkItem, **conditions: str) -> dict[str, Any]:
        """The source's HEAD (with ``conditions``: ``IfMatch``). A 200 without its ETag (a
        server failing after its status line) says nothing, none of the metadata the copy
        takes from it either: an ``IntegrityError``, and the HEAD is tried again."""

        async def head_object() -> dict[str, Any]:
            head: dict[str, Any] = await self.client.head_object(
                Bucket=self.source_bucket, Key=item.key, **conditions
            )
            answered_etag(head.get("ETag"), f"the HEAD of {item.key}")
            return head

        return await self.retry.call(head_object)

    def _create_params(
        self, item: WorkItem, head: dict[str, Any], *, stamp: bool
    ) -> dict[str, Any]:
        """CreateMultipartUpload's parameters for the copy of ``item``: the source's headers
        and metadata (from ``head``, the source's HEAD); with ``stamp`` (the copy's ETag will
        not be the source's) and ``self.stamp``, the listed ETag, the version the copy is
        checked to be of."""
        fields = kept_fields(head)
        return {
            "Bucket": self.dest_bucket,
            "Key": self.dest_key(item.key),
            **(stamped(fields, item.etag) if stamp and self.stamp else fields),
            **self.extra_params,
        }

    async def _copy_in(
        self, item: WorkItem, create: dict[str, Any], sizes: list[int]
    ) -> tuple[str, bool]:
        """Copy ``item`` by UploadPartCopy in parts of ``sizes`` into the upload ``create``
        makes, completed only if its parts are of the listed version (their ETags make the
        listed one, or the source still has it); the copy's ETag, and whether its encryption
        makes that ETag no MD5."""
        key = create["Key"]
        starts = [0, *itertools.accumulate(sizes[:-1])]  # each part's first byte
        async with tracked_upload(
            self.client, self.retry, self.journal, create, what="multipart copy"
        ) as upload_id:
            done: list[dict[str, Any]] = [{} for _ in sizes]
            numbers = iter(range(len(sizes)))

            async def part_worker() -> None:
                for index in numbers:
                    first = starts[index]
                    last = first + sizes[index] - 1
                    answer = await self.retry.call(
                        functools.partial(
                            self.client.upload_part_copy,
                            Bucket=self.dest_bucket,
                            Key=key,
                            UploadId=upload_id,
                            PartNumber=index + 1,
                            CopySource=self._source(item),
                            CopySourceRange=f"bytes={first}-{last}",
                            CopySourceIfMatch=item.etag,
                        )
                    )
                    done[index] = {
                        "PartNumber": index + 1,
                        "ETag": answered_etag(
                            answer.get("CopyPartResult", {}).get("ETag"),
                            f"UploadPartCopy of part {index + 1}",
                        ),
                    }

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.part_concurrency, len(sizes))):
                        tg.create_task(part_worker())
            except BaseExceptionGroup as group:  # the part's own error: the object's, not a group
                raise primary_error(group) from None
            if not _parts_make(done, item.etag):
                await self._source_unchanged(item)
            response = await self.retry.call(
                functools.partial(
                    self.client.complete_multipart_upload,
                    Bucket=self.dest_bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                )
            )
            # in the block: an answer without the ETag aborts the upload
            etag = clean_etag(answered_etag(response.get("ETag"), "CompleteMultipartUpload"))
            await self.encryption.confirm(response, key)
        return etag, response.get("ServerSideEncryption") in OPAQUE_ETAG_SSE


def _parts_make(parts: list[dict[str, Any]], etag: str) -> bool:
    """Whether the copied parts' ETags (each its byte range's MD5) make ``etag``, the listed
    version's: then the bytes copied are that version's, whatever a server did with the parts'
    if-match. Not with an SSE-KMS copy or source (no MD5s), nor in parts of our size."""
    try:
        md5s = [bytes.fromhex(clean_etag(part["ETag"])) for part in parts]
    except ValueError:
        return False
    return all(len(md5) == 16 for md5 in md5s) and multipart_etag(md5s) == clean_etag(etag)


def _even_parts(size: int, part_size: int) -> list[int]:
    """``size`` bytes cut in parts of ``part_size``, the last one shorter (one part of 0
    bytes for an empty object)."""
    count = max(1, -(-size // part_size))
    return [min(part_size, size - index * part_size) for index in range(count)]
