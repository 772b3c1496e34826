"""The S3 source: stream the listing page by page, fetch one object into staging.

A download is checked as it arrives: its length against the object's size and, where the ETag
is an MD5 (a single-part upload without SSE-KMS or SSE-C), its MD5 against the ETag. A body cut
short is resumed with a ranged GET pinned to the same version by ``If-Match``, not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from ..bandwidth import TokenBucket
from ..checksums import (
    ALGORITHMS,
    INLINE_LIMIT,
    Digests,
    Hasher,
    RunningDigests,
    file_md5,
    multipart_etag,
    staged_checksum,
    whole_object_digest,
)
from ..config import ChecksumMode
from ..errors import IntegrityError, ObjectError
from ..fasts3 import FastS3
from ..listing import RangeLister
from ..localio import LocalIO, open_for_writing, remove_temporary
from ..partfeed import ByteBudget, PartFeed, StagedPart
from ..pipeline import WorkItem, for_each_bounded, primary_error
from ..retry import RetryPolicy, error_code
from ..s3client import S3Client
from ..staging import Staging, raise_if_unusable
from ..tags import TAGGING, read_tags, tag_count

log = logging.getLogger("asyncbackup")

CHUNK = 1024 * 1024
IN_MEMORY_LIMIT = 1024 * 1024
#: server-side encryption whose objects' ETags are not their MD5s
OPAQUE_ETAG_SSE = ("aws:kms", "aws:kms:dsse")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")
#: S3's additional checksums, in the order one is chosen to check a download whose ETag is
#: no MD5 (CRC64NVME: what S3 gives every object uploaded without one since 2025)
_ADDITIONAL_CHECKSUMS = ("CRC64NVME", "CRC32", "CRC32C", "SHA256", "SHA1")
#: how a server that does not do ``HEAD ?partNumber=`` answers it. The error of a HEAD has no
#: body, so botocore names it by its status: "400" here is a 400 the server gave no other name.
_PART_NUMBER_REFUSALS = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest", "400"})

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


#: the codes of an object that is not there (a HEAD's error has no body: its status)
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _local_error(exc: OSError, *, retryable: bool = True) -> ObjectError:
    return ObjectError("LocalIOError", f"{exc.strerror} ({exc.filename})", retryable=retryable)


def kept_fields(head: dict[str, Any]) -> dict[str, Any]:
    """What a copy keeps of its source's GetObject or HeadObject answer: ``PRESERVED_FIELDS``
    and user metadata. An ``Expires`` that is no date (S3 keeps any text; botocore leaves the
    field out, the text in ``ExpiresString``) is ``ALREADY_EXPIRED``."""
    fields = {name: head[name] for name in PRESERVED_FIELDS if head.get(name)}
    if "Expires" not in fields and head.get("ExpiresString"):
        fields["Expires"] = ALREADY_EXPIRED
    if head.get("Metadata"):
        fields["Metadata"] = dict(head["Metadata"])
    return fields


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
    """The part count of a multipart ETag (``"<md5>-N"``), or None."""
    match = _MULTIPART_ETAG.match(clean_etag(etag))
    return int(match.group(1)) if match else None


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


def _write_hashed(out: BinaryIO, digest: Any, chunk: bytes) -> None:
    """Write a chunk and add it to the MD5, in one worker-thread call (hashlib lets go of the
    GIL, so 1.5 ms of hashing per MiB runs beside the event loop instead of on it)."""
    out.write(chunk)
    digest.update(chunk)


def _write_part(out: BinaryIO, data: bytearray, whole: Any, hasher: Hasher) -> Digests:
    """Write one part, add it to the whole object's MD5 (if kept) and return the part's
    digests (its MD5, the checksum its upload carries), in one worker-thread call."""
    out.write(data)
    if whole is not None:
        whole.update(data)
    return hasher(data)


def _write_spilled(
    out: BinaryIO, data: memoryview, whole: Any, part: RunningDigests, end: bool
) -> None:
    """Write a piece of a part too large for memory and hash it (the whole object's MD5, if
    kept, and the part's digests); at the part's end, flush the file for its upload to read,
    in one worker-thread call."""
    out.write(data)
    if whole is not None:
        whole.update(data)
    part.update(data)
    if end:
        out.flush()


def _staged_multipart_etag(out: BinaryIO, path: Path, sizes: Sequence[int]) -> str:
    """The multipart ETag of the file ``out`` is writing to ``path``, cut in parts of
    ``sizes`` (blocking: one worker-thread call)."""
    out.flush()
    md5s: list[bytes] = []
    with path.open("rb") as handle:
        for size in sizes:
            digest = hashlib.md5(usedforsecurity=False)
            left = size
            while left and (block := handle.read(min(left, 8 * CHUNK))):
                digest.update(block)
                left -= len(block)
            if left:
                raise IntegrityError(f"the staged file ended {left} bytes short of its parts")
            md5s.append(digest.digest())
    return multipart_etag(md5s)


class _Receiver:
    """Where the bytes of a download go, in order, resumed or not."""

    digest: Any  # the MD5 of the whole object, or None where it is not computed
    #: False where the destination checks the bytes against the source's MD5 instead
    checks_md5 = True

    def start(self, head: dict[str, Any]) -> None:
        """The first response's fields, before its first chunk."""

    async def add(self, chunk: bytes) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """The download is complete."""

    def rewind(self, written: int) -> int:
        """A download attempt failed after ``written`` bytes came: where the next one starts
        (what is kept of them), for a ranged GET."""
        return written


class _MemoryReceiver(_Receiver):
    """Chunks of a small object kept in memory (staged in one write once verified)."""

    def __init__(self) -> None:
        self.digest = hashlib.md5(usedforsecurity=False)
        self.chunks: list[bytes] = []

    async def add(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.chunks.append(chunk)


class _FileReceiver(_Receiver):
    """Chunks of a large object written to a temporary file as they arrive."""

    def __init__(self, out: BinaryIO) -> None:
        self.digest = hashlib.md5(usedforsecurity=False)
        self.out = out

    async def add(self, chunk: bytes) -> None:
        await asyncio.to_thread(_write_hashed, self.out, self.digest, chunk)


class _PartReceiver(_Receiver):
    """A large object cut into the parts of its upload as it arrives: each part is filled in
    a buffer of its exact size (reserved in the budget first), written to the temporary file
    and hashed (``hasher``) in one worker-thread call, then handed to the upload as it is, no
    copy, while the download goes on (``PartFeed``).

    A part larger than the whole budget is never in memory: its chunks are written to the
    file and hashed as they come, and the part is handed over as a ``StagedPart``, which its
    upload reads from the file (checked by the destination against the digests of the bytes
    that came)."""

    def __init__(
        self,
        out: BinaryIO,
        path: Path,
        part_size: int,
        budget: ByteBudget,
        whole: bool,
        hasher: Hasher,
    ) -> None:
        self.out = out
        self.path = path
        self.part_size = part_size
        self.budget = budget
        self.hasher = hasher
        self.digest = hashlib.md5(usedforsecurity=False) if whole else None
        self.part_md5s: list[bytes] = []  # b"" each where the hasher computes no MD5
        self.size = 0
        self.buffer: bytearray | None = None
        self.filled = 0
        self.feed: PartFeed | None = None
        self.started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        #: the part being written straight to the file, when parts are too large for memory
        self.spilled: RunningDigests | None = None
        self.length = 0  # its length

    def start(self, head: dict[str, Any]) -> None:
        if head.get("ContentLength") is None:
            raise IntegrityError("the GET answer has no Content-Length to cut parts by")
        self.size = int(head["ContentLength"])
        count = max(1, -(-self.size // self.part_size))
        self.feed = PartFeed(count, self.part_size, self.budget)
        self.started.set_result(head)

    async def add(self, chunk: bytes) -> None:
        assert self.feed is not None, "start() comes first"
        if not self.feed.in_memory:
            await self._spill(chunk)
            return
        view = memoryview(chunk)
        while view:
            if self.buffer is None:
                await self._next_buffer()
            buffer = self.buffer
            assert buffer is not None
            taken = min(len(view), len(buffer) - self.filled)
            buffer[self.filled : self.filled + taken] = view[:taken]
            self.filled += taken
            view = view[taken:]
            full = self.filled == len(buffer)
            # No reference to a part outlives its hand-over: a part uploaded out of order
            # releases its bytes in the budget, and the next part may be allocated while this
            # frame waits for it - a third part in memory where the budget counts two.
            del buffer
            if full:
                await self._emit()

    async def finish(self) -> None:
        if self.buffer is not None or self.spilled is not None:  # ended before its length
            raise IntegrityError(f"the download ended within part {len(self.part_md5s) + 1}")
        if not self.part_md5s:  # an empty object is one empty part
            await self._next_buffer()
            await self._emit()

    def rewind(self, written: int) -> int:
        """The part being filled is dropped, and its bytes in the budget given back: the
        next attempt starts at its beginning. A download waiting to try again (for a slot of
        the limiter, which throttling may have cut to one) held them, while the one holding
        the slot waited for them in the budget: both waited for good. A part written
        straight to the file holds nothing: the next attempt goes on where this one ended."""
        assert self.feed is not None, "start() comes first"
        if not self.feed.in_memory:
            return written
        if self.buffer is not None:
            assert self.feed is not None
            self.buffer = None
            self.filled = 0
            self.feed.release()
        return len(self.part_md5s) * self.part_size

    def _next_length(self) -> int:
        """The length of the next part."""
        offset = len(self.part_md5s) * self.part_size
        if offset >= self.size and self.size:
            raise IntegrityError(f"the download is longer than the {self.size} bytes announced")
        return min(self.part_size, self.size - offset)

    async def _next_buffer(self) -> None:
        assert self.feed is not None, "start() comes first"
        length = self._next_length()
        await self.feed.reserve()
        self.buffer = bytearray(length)
        self.filled = 0

    async def _spill(self, chunk: bytes) -> None:
        """``chunk`` written to the file and hashed, part by part, in a worker thread."""
        assert self.feed is not None, "start() comes first"
        view = memoryview(chunk)
        while view:
            if self.spilled is None:
                self.length = self._next_length()
                self.spilled, self.filled = self.hasher.running(), 0
            taken = min(len(view), self.length - self.filled)
            end = self.filled + taken == self.length
            await asyncio.to_thread(
                _write_spilled, self.out, view[:taken], self.digest, self.spilled, end
            )
            self.filled += taken
            view = view[taken:]
            if end:
                index = len(self.part_md5s)
                digests = self.spilled.digests()
                self.spilled = None
                part = StagedPart(self.path, index * self.part_size, self.length)
                self.feed.give(index, part, digests)
                self.part_md5s.append(digests.md5)

    async def _emit(self) -> None:
        """Write the full buffer, then hand it to the upload (the only reference left)."""
        assert self.feed is not None and self.buffer is not None, "start() comes first"
        data, self.buffer = self.buffer, None
        digests = await asyncio.to_thread(_write_part, self.out, data, self.digest, self.hasher)
        self.feed.give(len(self.part_md5s), data, digests)
        self.part_md5s.append(digests.md5)

    def multipart_etag(self) -> str:
        assert self.hasher.md5, "the parts' MD5s were computed"
        return multipart_etag(self.part_md5s)


class _StreamReceiver(_Receiver):
    """A single-part object written to the temporary file and, as it arrives, handed to the
    one PUT that streams it to the destination (``chunks()``). The bytes waiting for that PUT
    are reserved in the budget; file writes are batched to at least ``CHUNK`` bytes a thread
    call. Nothing is hashed here: the PUT carries the source's MD5 as Content-MD5, and the
    destination refuses a stream that does not match it. ``detach()`` stops the hand-over
    (the PUT failed, or cannot be made): the download then only goes on to the file."""

    digest = None
    checks_md5 = False

    def __init__(self, out: BinaryIO, budget: ByteBudget) -> None:
        self.out = out
        self.budget = budget
        self.size = 0
        self.received = 0
        self.streaming = True
        self.reserved = 0  # bytes received for the PUT, not yet sent by it
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.pending: list[bytes] = []  # for the next file write
        self.pending_bytes = 0
        self.started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def start(self, head: dict[str, Any]) -> None:
        if head.get("ContentLength") is None:
            raise IntegrityError("the GET answer has no Content-Length to stream by")
        self.size = int(head["ContentLength"])
        self.started.set_result(head)

    async def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            raise IntegrityError(f"the download is longer than the {self.size} bytes announced")
        if self.streaming:
            await self.budget.acquire(len(chunk))
            if self.streaming:
                self.reserved += len(chunk)
                self.queue.put_nowait(chunk)
            else:  # detached while waiting for the budget
                self.budget.release(len(chunk))
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.pending_bytes >= CHUNK:
            await self._write()

    async def finish(self) -> None:
        await self._write()

    async def _write(self) -> None:
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        if pending:
            await asyncio.to_thread(self.out.writelines, pending)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body of the PUT: every byte of the object, in order, as it arrives."""
        sent = 0
        while sent < self.size:
            chunk = await self.queue.get()
            yield chunk
            sent += len(chunk)
            if self.streaming:
                self.reserved -= len(chunk)
                self.budget.release(len(chunk))

    def detach(self) -> None:
        """No more hand-over to the PUT; give back every byte reserved for it."""
        if self.streaming:
            self.streaming = False
            if self.reserved:
                self.budget.release(self.reserved)
            self.reserved = 0
            self.queue = asyncio.Queue()


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

    def list(self, prefix: str, *, streams: int = 1) -> AsyncIterator[Sequence[WorkItem]]:
        """Pages of ListObjectsV2 under ``prefix``, as they arrive: in key order with one
        stream, in up to ``streams`` streams over key ranges when one cannot keep up
        (``listing.py``). Through the fast path, when ``fast`` is set."""

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

        return RangeLister(list_page, prefix, streams=streams).pages()

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

    async def fetch(self, item: WorkItem, staging: Staging) -> FetchedObject:
        """Download ``item``, verify it, and stage it under its key's path."""
        if item.size <= IN_MEMORY_LIMIT:
            return await self._fetch_small(item, staging)
        async with _temporary(staging) as tmp:
            async with open_for_writing(tmp) as out:
                fetched = await self._download(item, _FileReceiver(out), tmp)
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
        receiver: _PartReceiver | None = None
        try:
            async with _temporary(staging) as tmp:
                async with open_for_writing(tmp) as out:
                    receiver = _PartReceiver(
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
        receiver: _StreamReceiver | None = None
        try:
            async with _temporary(staging) as tmp:
                async with open_for_writing(tmp) as out:
                    receiver = _StreamReceiver(out, budget)
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
        receiver: _StreamReceiver,
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
        receiver: _PartReceiver,
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
        etag = await asyncio.to_thread(_staged_multipart_etag, out, tmp, sizes)
        if etag != clean_etag(fetched.etag):
            raise mismatch

    async def _check_other_layout(
        self, key: str, fetched: FetchedObject, receiver: _PartReceiver, tmp: Path, etag: str
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
        true_etag = await asyncio.to_thread(_staged_multipart_etag, receiver.out, tmp, sizes)
        if true_etag != clean_etag(fetched.etag):
            raise mismatch
        log.debug("%s: its source parts are not all the size of the first", key)

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
        receiver = _MemoryReceiver()
        fetched = await self._download(item, receiver, None)
        fetched.data = b"".join(receiver.chunks)
        await self._check_opaque(fetched, None, None, fetched.data)
        try:
            fetched.path = await self.local.run(staging.store, item.key, fetched.data)
        except OSError as exc:  # a full disk is already a StagingFullError, not an OSError
            raise _local_error(exc) from exc
        return fetched

    async def _first_answer(
        self, item: WorkItem, response: dict[str, Any], *, small: bool
    ) -> dict[str, Any]:
        """The object as the first answer to its GET describes it (its body left out), once
        that answer is one to copy from, with its tags read (``--copy-tags``)."""
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
        if small and int(response.get("ContentLength", 0)) > IN_MEMORY_LIMIT:
            raise ObjectError(
                "ObjectChanged",
                f"the object grew from {item.size} bytes since it was listed; "
                "run again to copy it as listed now",
            )
        first = {name: value for name, value in response.items() if name != "Body"}
        if self.copy_tags and tag_count(first):
            first[TAGGING] = await read_tags(
                self.client, self.bucket, item.key, first.get("VersionId")
            )
        return first

    async def _download(
        self, item: WorkItem, receiver: _Receiver, tmp: Path | None
    ) -> FetchedObject:
        head: dict[str, Any] = {}
        written = 0
        small = isinstance(receiver, _MemoryReceiver)
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
                    first = await self._first_answer(item, response, small=small)
                except BaseException:
                    async with response["Body"]:  # released unread
                        pass
                    raise
                head.update(first)
                receiver.start(head)
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
        if parts is None or size <= 0:
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


#: how many ``HEAD ?partNumber=`` of one object are in flight at once (``sizes``)
_LAYOUT_PROBES = 8


class _Refused(Exception):
    """The server refuses ``HEAD ?partNumber=``."""


def refuses_part_number(exc: ClientError) -> bool:
    """Whether ``exc`` is a server saying it does not do ``HEAD ?partNumber=`` (a 501, or a
    400 without another name), not a failure of the request as such (throttling, a 5xx worth
    a retry, AccessDenied, NoSuchKey)."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 501 or error_code(exc) in _PART_NUMBER_REFUSALS


class FirstPartProbe:
    """``HEAD ?partNumber=1`` of a bucket's multipart objects: the first part's length tells
    an object's layout.

    ``head`` answers None when the server refuses the partNumber parameter (some S3-compatible
    servers do): the layout is then unknown, as it is for a non-uniform one, and the object is
    copied in parts of our size, checked as any such copy is (a staged one by its length and
    the MD5 of every part at the destination), but not against the source's multipart ETag.
    Logged once.
    """

    def __init__(self, client: S3Client, bucket: str, retry: RetryPolicy) -> None:
        self.client = client
        self.bucket = bucket
        self.retry = retry
        self.refused = 0  # objects whose HEAD ?partNumber=1 the server refused

    async def head(self, key: str, number: int = 1) -> dict[str, Any] | None:
        async def attempt() -> dict[str, Any] | None:
            try:
                # No If-Match: some servers answer with the part's ETag. A change in between
                # shows up as an ETag mismatch of the copy, which is retried.
                answer: dict[str, Any] = await self.client.head_object(
                    Bucket=self.bucket, Key=key, PartNumber=number
                )
            except ClientError as exc:
                if not refuses_part_number(exc):
                    raise
                if not await self._unreadable(key, exc):
                    self._refused(error_code(exc))
                return None
            # without its headers it tells no layout; taken for a refusal, it would leave the
            # download unchecked against the source's ETag
            answered_etag(answer.get("ETag"), f"HEAD ?partNumber={number} of {key}")
            return answer

        return await self.retry.call(attempt)

    async def sizes(self, key: str, parts: int, total: int) -> list[int] | None:
        """The length of each of an object's ``parts`` (a ``HEAD ?partNumber=`` each, a few
        at a time) of ``total`` bytes in all, or None when the server refuses them, or
        ignores them: every part answered with the whole object's length (MinIO did until
        mid-2020), which would fail every copy checked against them."""
        sizes = [0] * parts

        async def probe(index: int) -> None:
            head = await self.head(key, index + 1)
            if head is None:
                raise _Refused
            sizes[index] = int(head.get("ContentLength", 0))

        try:
            await for_each_bounded(range(parts), _LAYOUT_PROBES, probe)
        except _Refused:
            return None
        if parts > 1 and total > 0 and all(size == total for size in sizes):
            self._refused("its answers are the whole object's")
            return None
        return sizes

    async def _unreadable(self, key: str, refusal: ClientError) -> bool:
        """Whether ``refusal`` (a 400 without a name: a HEAD's error has no body) is the
        object's, not the partNumber parameter's: S3 answers any HEAD of an SSE-C object made
        without its key so. A plain HEAD answered the same tells; the object then fails on its
        own GET, and the bucket is not taken for one that refuses part-number HEADs (which
        would leave every later multipart object unchecked against its ETag)."""
        status = refusal.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status != 400:
            return False
        try:
            await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 400:
                return True
            raise
        return False

    def _refused(self, why: str) -> None:
        self.refused += 1
        if self.refused == 1:  # the server answers every object the same way
            log.warning(
                "bucket %s refuses HEAD ?partNumber=1 (%s): multipart objects are copied in "
                "parts of --part-size, so the copies' ETags differ from the source's",
                self.bucket,
                why,
            )
