"""The hand-over of one object's parts from its download to its multipart upload."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .checksums import Digests
from .errors import IntegrityError


@dataclass(frozen=True, slots=True)
class StagedPart:
    """A part too large for the memory budget, handed over as where it is in the staged
    file (``length`` bytes from ``offset``), to be read from there as its upload goes out."""

    path: Path
    offset: int
    length: int


#: a part handed over: its bytes in memory, or where they are in the staged file
PartData = bytes | bytearray | StagedPart


def part_length(data: PartData) -> int:
    return data.length if isinstance(data, StagedPart) else len(data)


class ByteBudget:
    """How many bytes of multipart parts may be held in memory at once, across all objects.

    Counted in bytes, not parts: a source copied in its own layout may have 50 MiB parts where
    the configured part size is 8 MiB. A part larger than the whole budget is never held in
    memory (``StagedPart``); asked for anyway, it would take all of it.
    Waiters are served in order, so a large part is not starved by a stream of small ones.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def fits(self, size: int) -> bool:
        """Whether ``size`` bytes may be held in memory at all: a larger part or object goes
        through its staged file instead (``StagedPart``)."""
        return size <= self.limit

    def _cost(self, size: int) -> int:
        return min(max(size, 1), self.limit)

    async def acquire(self, size: int) -> None:
        cost = self._cost(size)
        if not self._waiters and self.free >= cost:
            self.free -= cost
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((cost, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.free += cost  # granted as it was cancelled: give it back
            else:  # a _wake() may have dropped it already (it was done: cancelled)
                with contextlib.suppress(ValueError):
                    self._waiters.remove((cost, granted))
            self._wake()
            raise

    def release(self, size: int) -> None:
        self.free += self._cost(size)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            cost, granted = self._waiters.popleft()
            if not granted.done():
                self.free -= cost
                granted.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        await self.acquire(size)
        try:
            yield
        finally:
            self.release(size)


class PartFeed:
    """Parts of one object handed from its download to its multipart upload as they arrive.

    The download ``reserve``s the bytes of a part in ``budget`` before it fills it and the
    upload ``release``s them once the part is at the destination, so the bytes held in memory
    stay bounded across all objects; ``close`` gives back whatever a failure left reserved.
    Parts larger than the whole budget are never in memory (``in_memory`` False): they are
    handed over as ``StagedPart``s, and reserve nothing.
    ``verified`` is resolved by the download once the whole object checked out: the upload
    is completed only then.
    """

    def __init__(self, count: int, part_size: int, budget: ByteBudget) -> None:
        loop = asyncio.get_running_loop()
        self.part_size = part_size
        self.budget = budget
        self.in_memory = budget.fits(part_size)
        self.held = 0
        self.count = count
        # a part's bytes are dropped as soon as the upload takes them
        self.parts: dict[int, asyncio.Future[tuple[PartData, Digests]]] = {
            index: loop.create_future() for index in range(count)
        }
        self.verified: asyncio.Future[None] = loop.create_future()

    async def reserve(self) -> None:
        if self.in_memory:
            await self.budget.acquire(self.part_size)
            self.held += 1

    def release(self) -> None:
        if self.in_memory:
            self.held -= 1
            self.budget.release(self.part_size)

    def close(self) -> None:
        while self.held:
            self.release()
        for part in self.parts.values():
            part.cancel()  # a no-op for those already resolved
        self.verified.cancel()

    async def take(self, index: int) -> tuple[PartData, Digests]:
        part = await self.parts[index]
        del self.parts[index]
        return part

    def give(self, index: int, data: PartData, digests: Digests) -> None:
        if index >= self.count:
            raise IntegrityError("the download is longer than its part layout")
        part = self.parts[index]
        if part.cancelled():
            # Its uploader was cancelled while it waited (a sibling part failed, and the
            # upload is failing): nobody takes it, and the upload's failure is what stops
            # the download. Its bytes stay counted until ``close``.
            return
        part.set_result((data, digests))
