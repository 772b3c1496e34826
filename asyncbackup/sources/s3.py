"""The S3 source: stream the listing page by page, fetch one object into staging.

A download is checked as it arrives: its length against the object's size and, where the ETag
is an MD5 (a single-part upload without SSE-KMS or SSE-C), its MD5 against the ETag. A body cut
short is resumed with a ranged GET pinned to the same version by ``If-Match``, not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..bandwidth import TokenBucket
from ..checksums import (
    ALGORITHMS,
    INLINE_LIMIT,
    Hasher,
    file_md5,
    staged_checksum,
    whole_object_digest,
)
from ..config import ChecksumMode
from ..errors import IntegrityError, ObjectError
from ..etags import answered_etag, clean_etag, etag_is_digest, etag_is_md5, multipart_parts
from ..fasts3 import FastS3
from ..fetched import FetchedObject, kept_fields
from ..listing import RangeLister
from ..localio import LocalIO, open_for_writing, remove_temporary
from ..partfeed import ByteBudget, PartFeed
from ..pipeline import WorkItem, primary_error
from ..retry import ACCESS_DENIED, MISSING_CODES, RetryPolicy, kms_refusal
from ..s3client import S3Client
from ..staging import Staging, raise_if_unusable
from ..tags import TAGGING, read_tags, tag_count
from .layout import FirstPartProbe
from .receivers import (
    CHUNK,
    FileReceiver,
    MemoryReceiver,
    PartReceiver,
    Receiver,
    StreamReceiver,
    staged_multipart_etag,
)

log = logging.getLogger("asyncbackup")

#: what a GET refused by the object's KMS key needs (``kms_refusal``)
_KMS_READ = (
    "the object is encrypted with the KMS key {key}: reading it needs kms:Decrypt on that key, "
    "besides s3:GetObject; grant it in the key's policy, then run again"
)

IN_MEMORY_LIMIT = 1024 * 1024
#: S3's additional checksums, in the order one is chosen to check a download whose ETag is
#: no MD5 (CRC64NVME: what S3 gives every object uploaded without one since 2025)
_ADDITIONAL_CHECKSUMS = ("CRC64NVME", "CRC32", "CRC32C", "SHA256", "SHA1")


def _local_error(exc: OSError, *, retryable: bool = True) -> ObjectError:
    return ObjectError("LocalIOError", f"{exc.strerror} ({exc.filename})", retryable=retryable)


def _metadata(head: dict[str, Any]) -> dict[str, Any]:
    """What the copy is written with: ``kept_fields`` and, read with --copy-tags
    (``S3Source.copy_tags``), the tags."""
    metadata = kept_fields(head)
    if head.get(TAGGING):
        metadata[TAGGING] = head[TAGGING]
    return metadata


def _fetched(
    item: WorkItem, head: dict[str, Any], path: Path, size: int, md5: bytes
) -> FetchedObject:
    """The object as its GET's first answer describes it."""
    etag = str(head.get("ETag", item.etag))
    fetched = FetchedObject(item.key, path, size, md5, etag, _metadata(head))
    fetched.digest_etag = etag_is_digest(head)
    return fetched


@contextlib.asynccontextmanager
async def _temporary(staging: Staging) -> AsyncIterator[Path]:
    """A temporary file's path in staging, removed if the block fails; a local I/O failure
    becomes a retryable ``LocalIOError``, or stops the run when no object could be staged
    (``raise_if_unusable``: a full disk, a read-only file system, the folder removed)."""
    tmp = staging.temp_path()
    try:
        yield tmp
    except OSError as exc:
        await remove_temporary(tmp)
        raise_if_unusable(exc, staging.base)
        raise _local_error(exc) from exc
    except BaseException:
        await remove_temporary(tmp)
        raise


class S3Source:
    def __init__(
        self,
        client: S3Client,
        bucket: str,
        retry: RetryPolicy,
        *,
        bandwidth: TokenBucket | None = None,
        copy_tags: bool = False,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.retry = retry
        self.bandwidth = bandwidth
        #: read each tagged object's tags, for its copy (``--copy-tags``)
        self.copy_tags = copy_tags
        #: GetObject without botocore (set by the caller)
        self.fast: FastS3 | None = None
        #: how small objects are staged (and removed): inline while the disk is fast
        self.local = LocalIO()
        self.first_part = FirstPartProbe(client, bucket, retry)

    def list(
        self,
        prefix: str,
        *,
        streams: int = 1,
        skip_classes: frozenset[str] = frozenset(),
        left_out: list[int] | None = None,
    ) -> AsyncIterator[Sequence[WorkItem]]:
        """Pages of ListObjectsV2 under ``prefix``, as they arrive: in key order with one
        stream, in up to ``streams`` streams over key ranges when one cannot keep up
        (``listing.py``); without the objects of the storage classes ``skip_classes``
        (counted in ``left_out``: objects, bytes). Through the fast path, when ``fast`` is
        set."""

        list_objects = (
            self.client.list_objects_v2 if self.fast is None else self.fast.list_objects_v2
        )

        async def request(params: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = await list_objects(Bucket=self.bucket, Prefix=prefix, **params)
            if "IsTruncated" not in answer:
                # S3 always says whether a page is the last: a 200 without it (without a
                # body at all: a server that failed after its status line) is no page, and
                # taken for the last one it would end the listing there, the job "complete".
                raise ObjectError(
                    "InternalError", "ListObjectsV2 answered 200 without a page", retryable=True
                )
            return answer

        async def list_page(params: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = await self.retry.call(functools.partial(request, params))
            return answer

        return RangeLister(
            list_page, prefix, streams=streams, skip_classes=skip_classes, left_out=left_out
        ).pages()

    async def deleted(self, key: str) -> bool:
        """Whether ``key`` is no longer in the bucket: its HEAD answers 404. (S3 answers 403
        instead to credentials that may not list the bucket; these listed it.) Any other
        answer, or a failure of the HEAD, is not taken for a deletion."""
        head = functools.partial(self.client.head_object, Bucket=self.bucket, Key=key)
        try:
            await self.retry.call(head)
        except ObjectError as exc:
            return exc.code in MISSING_CODES
        return False

    async def _head_or_none(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD, or None when it fails too."""
        head = functools.partial(self.client.head_object, Bucket=self.bucket, Key=key)
        try:
            answer: dict[str, Any] = await self.retry.call(head)
        except ObjectError:
            return None
        return answer

    async def fetch(self, item: WorkItem, staging: Staging) -> FetchedObject:
        """Download ``item``, verify it, and stage it under its key's path."""
        if item.size <= IN_MEMORY_LIMIT:
            return await self._fetch_small(item, staging)
        async with _temporary(staging) as tmp:
            async with open_for_writing(tmp) as out:
                fetched = await self._download(item, FileReceiver(out), tmp)
                # a multipart source put in one PUT: no part layout checked it on the way
                await self._check_true_layout(item.key, fetched, out, tmp)
                await self._check_opaque(fetched, out, tmp)
            fetched.path = await asyncio.to_thread(staging.commit, tmp, item.key)
        return fetched

    async def fetch_streamed(
        self,
        item: WorkItem,
        staging: Staging,
        *,
        part_size: int,
        source_part_size: int | None,
        budget: ByteBudget,
        upload: Callable[[FetchedObject, PartFeed], Coroutine[Any, Any, None]],
        checksum: ChecksumMode = "md5",
    ) -> FetchedObject:
        """Download ``item`` to staging while ``upload`` sends it in parts of ``part_size``,
        each as soon as it is on disk: the download and the upload of one object overlap.

        The upload is completed only once the whole download checked out: its size, and its
        MD5 against the ETag (the whole object's, or that of the parts when the layout is the
        source's). Any failure on either side stops both, and the upload is aborted.
        Each part is handed over with the digests its upload with ``--checksum checksum``
        needs, computed as it is written.
        """
        # The parts' MD5s: sent (md5), or to check the ETags the destination answers, or
        # the source's multipart ETag (same layout). With --checksum none and another
        # layout nothing would read them.
        part_md5s = checksum != "none" or source_part_size == part_size
        hasher = Hasher(md5=part_md5s, algorithm=ALGORITHMS.get(checksum))
        receiver: PartReceiver | None = None
        try:
            async with _temporary(staging) as tmp:
                async with open_for_writing(tmp) as out:
                    receiver = PartReceiver(
                        out, tmp, part_size, budget, multipart_parts(item.etag) is None, hasher
                    )
                    fetched = await self._download_and_upload(
                        item, receiver, tmp, part_size, source_part_size, upload
                    )
                fetched.source_part_size = source_part_size
                fetched.path = await asyncio.to_thread(staging.commit, tmp, item.key)
        finally:
            if receiver is not None and receiver.feed is not None:
                receiver.feed.close()
        return fetched

    async def fetch_and_put(
        self,
        item: WorkItem,
        staging: Staging,
        *,
        budget: ByteBudget,
        upload: Callable[[FetchedObject, AsyncIterator[bytes]], Coroutine[Any, Any, bool]],
    ) -> tuple[FetchedObject, bool]:
        """Download ``item`` to staging while ``upload`` streams it to the destination in one
        PUT, with the source's ETag (its MD5) as the PUT's Content-MD5.

        Returns the staged object and whether ``upload`` put it. False when the GET's answer
        shows an ETag that is not the object's MD5 (SSE-KMS, SSE-C, an object replaced by a
        multipart one), or when the PUT failed in a way a retry could mend (a stream cannot be
        sent twice): the download then went on to the staged file alone, which is checked
        against the source's MD5 when that is known (``md5``, else empty); the caller puts
        the staged file.
        """
        receiver: StreamReceiver | None = None
        try:
            async with _temporary(staging) as tmp:
                async with open_for_writing(tmp) as out:
                    receiver = StreamReceiver(out, budget)
                    fetched, uploaded = await self._download_and_stream(item, receiver, tmp, upload)
                    await self._check_opaque(fetched, out, tmp)
                if not uploaded and fetched.md5:  # no PUT checked these bytes: we do
                    md5 = await asyncio.to_thread(file_md5, tmp, fetched.size)
                    if md5 != fetched.md5:
                        raise IntegrityError(
                            f"MD5 {md5.hex()} of the download differs from ETag {fetched.etag}"
                        )
                fetched.path = await asyncio.to_thread(staging.commit, tmp, item.key)
        finally:
            if receiver is not None:
                receiver.detach()
        return fetched, uploaded

    async def _download_and_stream(
        self,
        item: WorkItem,
        receiver: StreamReceiver,
        tmp: Path,
        upload: Callable[[FetchedObject, AsyncIterator[bytes]], Coroutine[Any, Any, bool]],
    ) -> tuple[FetchedObject, bool]:
        async def stream(described: FetchedObject) -> bool:
            uploaded = await upload(described, receiver.chunks())
            if not uploaded:
                receiver.detach()
            return uploaded

        try:
            async with asyncio.TaskGroup() as tg:
                download = tg.create_task(self._download(item, receiver, tmp))
                head = await receiver.started
                # As ``_fetched``: an answer without an ETag is checked against the listed
                # one, not taken for an object whose MD5 nobody knows (then never checked).
                etag = str(head.get("ETag", item.etag))
                md5 = bytes.fromhex(clean_etag(etag)) if etag_is_md5(etag, head) else b""
                uploading = None
                if md5:
                    described = _fetched(item, head, tmp, receiver.size, md5)
                    uploading = tg.create_task(stream(described))
                else:
                    receiver.detach()
                fetched = await download
                uploaded = await uploading if uploading is not None else False
        except BaseExceptionGroup as group:
            raise primary_error(group) from None
        fetched.md5 = md5
        return fetched, uploaded

    async def _download_and_upload(
        self,
        item: WorkItem,
        receiver: PartReceiver,
        tmp: Path,
        part_size: int,
        source_part_size: int | None,
        upload: Callable[[FetchedObject, PartFeed], Coroutine[Any, Any, None]],
    ) -> FetchedObject:
        """The download into ``receiver`` and, from its first answer on, ``upload``."""
        try:
            async with asyncio.TaskGroup() as tg:
                download = tg.create_task(self._download(item, receiver, tmp))
                head = await receiver.started
                described = _fetched(item, head, tmp, int(head["ContentLength"]), b"")
                described.source_part_size = source_part_size
                assert receiver.feed is not None
                uploading = tg.create_task(upload(described, receiver.feed))
                fetched = await download
                same_layout = source_part_size == part_size
                if multipart_parts(fetched.etag) and same_layout and fetched.digest_etag:
                    etag = receiver.multipart_etag()
                    if etag != clean_etag(fetched.etag):
                        await self._check_other_layout(item.key, fetched, receiver, tmp, etag)
                        # good in the source's true layout, not in the one the copy has: the
                        # copy's ETag differs from the source's (read by the upload once
                        # ``verified``)
                        described.source_part_size = None
                elif not same_layout:  # parts of our size: they tell nothing of the source's
                    await self._check_true_layout(item.key, fetched, receiver.out, tmp)
                layout = source_part_size if same_layout else None
                await self._check_opaque(fetched, receiver.out, tmp, part_size=layout)
                receiver.feed.verified.set_result(None)
                await uploading
        except BaseExceptionGroup as group:
            raise primary_error(group) from None
        return fetched

    async def _check_true_layout(
        self, key: str, fetched: FetchedObject, out: BinaryIO, tmp: Path
    ) -> None:
        """Check the download of a multipart source whose parts it was not cut in (none, or
        parts of our size: the first part's length fits no uniform layout, say 6, 5 and
        1 MiB) against the source's ETag in its true part sizes (``HEAD ?partNumber=``
        each), read back from the staged file ``out`` is writing to ``tmp``. Unchecked only
        where the server refuses those HEADs (logged once) or the ETag is no MD5s'."""
        parts = multipart_parts(fetched.etag)
        if parts is None or not fetched.digest_etag or self.first_part.refused:
            return
        sizes = await self.first_part.sizes(key, parts, fetched.size)
        if sizes is None:
            return
        mismatch = IntegrityError(
            f"the download does not make ETag {fetched.etag} in the source's {parts} parts"
        )
        if sum(sizes) != fetched.size:
            raise mismatch
        etag = await asyncio.to_thread(staged_multipart_etag, out, tmp, sizes)
        if etag != clean_etag(fetched.etag):
            raise mismatch

    async def _check_other_layout(
        self, key: str, fetched: FetchedObject, receiver: PartReceiver, tmp: Path, etag: str
    ) -> None:
        """A download whose parts' MD5s do not make the source's multipart ETag in the layout
        its first part suggested. S3 only asks that no part but the last is under 5 MiB, so
        the source's parts may differ in size (5, 6 and 1 MiB look like 5, 5 and 2 MiB from
        the first part): their true sizes (``HEAD ?partNumber=`` each) tell. The download is
        good only if it makes the source's ETag in them; otherwise it is an
        ``IntegrityError`` as before."""
        mismatch = IntegrityError(
            f"MD5 of the downloaded parts {etag} differs from ETag {fetched.etag}"
        )
        parts = multipart_parts(fetched.etag)
        assert parts is not None, "a multipart ETag"
        sizes = await self.first_part.sizes(key, parts, fetched.size)
        assumed = [receiver.part_size] * (parts - 1)
        assumed.append(fetched.size - sum(assumed))
        if sizes is None or sum(sizes) != fetched.size or sizes == assumed:
            raise mismatch
        true_etag = await asyncio.to_thread(staged_multipart_etag, receiver.out, tmp, sizes)
        if true_etag != clean_etag(fetched.etag):
            raise mismatch
        log.debug("%s: its source parts are not all the size of the first", key)
        self.first_part.uneven.add(key)

    async def _check_opaque(
        self,
        fetched: FetchedObject,
        out: BinaryIO | None,
        tmp: Path | None,
        data: bytes | None = None,
        *,
        part_size: int | None = None,
    ) -> None:
        """Check the download of an object whose ETag is no MD5 (SSE-KMS, DSSE-KMS: SSE-C
        objects are not served without their key) against the additional checksum S3 keeps
        of it: one HEAD with ``x-amz-checksum-mode``, pinned to the downloaded version, and
        the checksum computed over ``data`` or the staged file - the whole object's, or a
        composite one in the source's parts (uniform of ``part_size`` where the download was
        cut in them, else their sizes asked with ``HEAD ?partNumber=``). Where the object has
        none this installation can compute (CRC32C or CRC64NVME without ``awscrt``; a
        composite one of parts the server does not tell), it stays checked by its length
        alone (logged at debug level)."""
        if fetched.digest_etag:
            return
        head = functools.partial(
            self.client.head_object,
            Bucket=self.bucket,
            Key=fetched.key,
            IfMatch=fetched.etag,
            ChecksumMode="ENABLED",
        )
        try:
            answer: dict[str, Any] = await self.retry.call(head)
        except ObjectError as exc:
            if exc.code in ("412", "PreconditionFailed"):
                raise ObjectError(
                    "ObjectChanged", "the object was replaced during the download", retryable=True
                ) from exc
            raise
        composite = answer.get("ChecksumType") == "COMPOSITE"
        for algorithm in _ADDITIONAL_CHECKSUMS:
            expected = str(answer.get(f"Checksum{algorithm}") or "")
            if not expected or whole_object_digest(algorithm) is None:
                continue
            expected, _, suffix = expected.partition("-")  # S3's composite: VALUE-N
            if not (composite or suffix):
                found = await self._staged_checksum(algorithm, out, tmp, data, None)
            else:
                # in the layout the first part suggested; where that is not the source's
                # (5, 6 and 1 MiB look like 5, 5 and 2), in its parts' true sizes
                layouts = (part_size, None) if part_size is not None else (None,)
                for layout in layouts:
                    parts = await self._part_sizes(fetched, layout)
                    if parts is None or (suffix and suffix != str(len(parts))):
                        found = None
                        continue
                    found = await self._staged_checksum(algorithm, out, tmp, data, parts)
                    if found == expected:
                        break
                if found is None:  # no layout tells: another checksum, or none
                    continue
            if found != expected:
                what = f"composite {algorithm}" if composite or suffix else algorithm
                raise IntegrityError(
                    f"{what} {found} of the download differs from the source's {expected}"
                )
            return
        log.debug(
            "%s: its ETag is no MD5 and it has no checksum to check it by: checked by its "
            "length only",
            fetched.key,
        )

    async def _staged_checksum(
        self,
        algorithm: str,
        out: BinaryIO | None,
        tmp: Path | None,
        data: bytes | None,
        parts: Sequence[int] | None,
    ) -> str | None:
        """``staged_checksum`` of the download, in a worker thread unless it is small."""
        if data is not None and len(data) <= INLINE_LIMIT:
            return staged_checksum(algorithm, None, Path(), data, parts)
        assert data is not None or tmp is not None, "the download is somewhere"
        return await asyncio.to_thread(staged_checksum, algorithm, out, tmp or Path(), data, parts)

    async def _part_sizes(
        self, fetched: FetchedObject, part_size: int | None
    ) -> Sequence[int] | None:
        """The sizes of the parts ``fetched`` was uploaded in (its ETag says how many): of
        ``part_size`` but the last where known, else asked (None: the server does not tell)."""
        count = multipart_parts(fetched.etag)
        if count is None or self.first_part.refused:
            return None
        if part_size is not None:
            sizes = [part_size] * (count - 1)
            sizes.append(fetched.size - sum(sizes))
            return sizes if sizes[-1] > 0 or count == 1 else None
        return await self.first_part.sizes(fetched.key, count, fetched.size)

    async def _fetch_small(self, item: WorkItem, staging: Staging) -> FetchedObject:
        """A small object: received in memory, verified, then staged by one file operation
        (open, write, close, rename), on the event loop while the disk is fast (``localio``)."""
        receiver = MemoryReceiver(IN_MEMORY_LIMIT)
        fetched = await self._download(item, receiver, None)
        fetched.data = b"".join(receiver.chunks)
        await self._check_opaque(fetched, None, None, fetched.data)
        try:
            fetched.path = await self.local.run(staging.store, item.key, fetched.data)
        except OSError as exc:  # a full disk is already a StagingFullError, not an OSError
            raise _local_error(exc) from exc
        return fetched

    async def _first_answer(
        self, item: WorkItem, response: dict[str, Any], receiver: Receiver
    ) -> dict[str, Any]:
        """The object as the first answer to its GET describes it (its body left out), once
        that answer is one to copy from (and one ``receiver`` can take), with its tags read
        (``--copy-tags``)."""
        # without its ETag, no download: even its empty body would pass for an empty object's
        etag = answered_etag(response.get("ETag"), f"the GET of {item.key}")
        if item.etag and not multipart_parts(item.etag) and multipart_parts(etag):
            # Listed as a single-part object, a multipart one now: its bytes can be checked
            # only in its own part layout, which was not probed - copied, they would be
            # copied unchecked.
            raise ObjectError(
                "ObjectChanged",
                "the object was replaced by a multipart upload since it was listed; run again "
                "to copy it as listed now",
            )
        receiver.refuse_early(response)
        first = {name: value for name, value in response.items() if name != "Body"}
        if self.copy_tags and tag_count(first):
            first[TAGGING] = await read_tags(
                self.client, self.bucket, item.key, first.get("VersionId")
            )
        return first

    async def _download(
        self, item: WorkItem, receiver: Receiver, tmp: Path | None
    ) -> FetchedObject:
        head: dict[str, Any] = {}
        written = 0
        get_object = self.client.get_object if self.fast is None else self.fast.get_object

        async def attempt() -> None:
            nonlocal written
            params: dict[str, Any] = {"Bucket": self.bucket, "Key": item.key}
            if head:  # a resume: the rest of the same version
                params["Range"] = f"bytes={written}-"
                params["IfMatch"] = head["ETag"]
            response = await get_object(**params)
            if not head:
                try:
                    head.update(await self._first_answer(item, response, receiver))
                    receiver.start(head)  # may refuse the answer too (its length)
                except BaseException:
                    head.clear()  # a next attempt starts over, not a resume
                    async with response["Body"]:  # released unread
                        pass
                    raise
            body = response["Body"]
            async with body:  # always release the connection, read or not
                try:
                    while chunk := await body.read(CHUNK):
                        if self.bandwidth is not None:
                            await self.bandwidth.consume(len(chunk))
                        await receiver.add(chunk)
                        written += len(chunk)
                except BaseException:
                    written = receiver.rewind(written)
                    raise

        try:
            await self.retry.call(attempt)
            await receiver.finish()
        except OSError as exc:
            if tmp is not None:
                raise_if_unusable(exc, tmp.parent)
            raise _local_error(exc, retryable=False) from exc
        except ObjectError as exc:
            if exc.code == "PreconditionFailed":
                raise ObjectError(
                    "ObjectChanged", "the object was replaced during the download", retryable=True
                ) from exc
            if exc.code in ACCESS_DENIED and not head:
                refusal = kms_refusal(exc, await self._head_or_none(item.key), _KMS_READ)
                if refusal is not exc:
                    raise refusal from exc
            raise
        size = int(head.get("ContentLength", written))
        if written != size:
            raise IntegrityError(f"downloaded {written} bytes, expected {size}")
        md5 = receiver.digest.digest() if receiver.digest is not None else b""
        fetched = _fetched(item, head, tmp or Path(), written, md5)
        if receiver.checks_md5 and etag_is_md5(fetched.etag, head):
            if receiver.digest is None:  # listed as a multipart object, now a single-part one
                raise ObjectError(
                    "ObjectChanged", "the object was replaced after it was listed", retryable=True
                )
            if md5.hex() != clean_etag(fetched.etag):
                raise IntegrityError(
                    f"MD5 {md5.hex()} of the download differs from ETag {fetched.etag}"
                )
        return fetched

    async def part_size(self, key: str, etag: str, size: int) -> int | None:
        """The source's part size, so the copy can have the same layout and the same ETag."""
        parts = multipart_parts(etag)
        if parts is None or size <= 0 or key in self.first_part.uneven:
            return None
        if parts == 1:
            return size
        head = await self.first_part.head(key)
        if head is None:
            return None
        part_size = int(head.get("ContentLength", 0))
        # Only a uniform layout reproduces the ETag: N-1 full parts and a shorter last one.
        if part_size <= 0 or not (parts - 1) * part_size < size <= parts * part_size:
            return None
        return part_size
