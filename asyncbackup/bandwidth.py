"""A bandwidth limit shared by every worker: a token bucket in virtual time (GCRA).

Each ``consume(n)`` reserves its slot before it waits, so concurrent callers are served in
order and the long-run rate never exceeds ``rate`` bytes per second; up to ``burst`` seconds
of unused allowance may be spent at once. Clock and sleep are injectable for tests.

A body streamed through the limit goes out in ``paced()`` pieces of at most what the burst
allows, not in the pieces it is read in: each ``consume()`` waits for the allowance of the
pieces before it, and a 1 MiB piece at 50 KB/s (or at 1 MB/s shared by 32 workers) paused a
request's body for 20 s, after which S3 drops it (400 RequestTimeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

#: the pieces ``paced()`` cuts a body into: what the burst allows, within these bounds
_MIN_PIECE = 1024
_MAX_PIECE = 64 * 1024


class TokenBucket:
    def __init__(
        self,
        rate: float,
        *,
        burst: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tat = clock()  # the theoretical time at which the allowance used so far runs out

    async def consume(self, amount: int) -> None:
        """Wait until ``amount`` bytes may go."""
        if amount <= 0:
            return
        now = self._clock()
        start = max(self._tat, now - self.burst)
        self._tat = start + amount / self.rate
        wait = start - now
        if wait > 0:
            await self._sleep(wait)

    @property
    def piece(self) -> int:
        """The largest piece ``paced()`` lets go at once."""
        return max(_MIN_PIECE, min(_MAX_PIECE, int(self.rate * self.burst)))

    async def paced(self, data: bytes) -> AsyncIterator[bytes]:
        """``data`` in pieces of at most ``piece`` bytes, each once it may go: a stream of
        them never pauses for longer than its share of a piece takes at the rate."""
        piece = self.piece
        if len(data) <= piece:
            await self.consume(len(data))
            yield data
            return
        for start in range(0, len(data), piece):
            chunk = data[start : start + piece]
            await self.consume(len(chunk))
            yield chunk
