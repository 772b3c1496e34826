"""Where the bytes of a download go as they arrive: memory, a staged file, the parts of an
upload running beside the download, or the body of one streamed PUT."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..checksums import Digests, Hasher, RunningDigests, multipart_etag
from ..config import S3_MAX_PARTS
from ..errors import IntegrityError, ObjectError
from ..partfeed import ByteBudget, PartFeed, StagedPart

CHUNK = 1024 * 1024


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


def staged_multipart_etag(out: BinaryIO, path: Path, sizes: Sequence[int]) -> str:
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


class Receiver:
    """Where the bytes of a download go, in order, resumed or not."""

    digest: Any  # the MD5 of the whole object, or None where it is not computed
    #: False where the destination checks the bytes against the source's MD5 instead
    checks_md5 = True

    def refuse_early(self, response: dict[str, Any]) -> None:
        """Raise if the first response announces what this receiver cannot take, before
        anything else is asked about the object (its tags)."""

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


class MemoryReceiver(Receiver):
    """Chunks of a small object kept in memory (staged in one write once verified)."""

    def __init__(self, limit: int) -> None:
        self.digest = hashlib.md5(usedforsecurity=False)
        self.chunks: list[bytes] = []
        #: held no further: an answer announcing more is refused by its Content-Length, one
        #: without it (chunked) by this, however long it goes on
        self.limit = limit
        self.size = 0

    def refuse_early(self, response: dict[str, Any]) -> None:
        if int(response.get("ContentLength", 0)) > self.limit:
            raise self._grew()

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise self._grew()
        self.digest.update(chunk)
        self.chunks.append(chunk)

    def _grew(self) -> ObjectError:
        return ObjectError(
            "ObjectChanged",
            f"the object grew past {self.limit:,} bytes since it was listed; "
            "run again to copy it as listed now",
        )


class FileReceiver(Receiver):
    """Chunks of a large object written to a temporary file as they arrive."""

    def __init__(self, out: BinaryIO) -> None:
        self.digest = hashlib.md5(usedforsecurity=False)
        self.out = out

    async def add(self, chunk: bytes) -> None:
        await asyncio.to_thread(_write_hashed, self.out, self.digest, chunk)


class PartReceiver(Receiver):
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
        if count > S3_MAX_PARTS:  # the feed holds a future per part: 2^62 bytes, 10^11 of them
            raise ObjectError(
                "ObjectChanged",
                f"the GET announces {self.size:,} bytes, more than the {S3_MAX_PARTS:,} parts "
                f"of {self.part_size:,} bytes its upload was planned in for its listed size "
                "can take; run again to copy it as listed now",
            )
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


class StreamReceiver(Receiver):
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
