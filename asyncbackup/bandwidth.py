"""A bandwidth limit shared by every worker: a token bucket in virtual time (GCRA).

Each ``consume(n)`` reserves its slot before it waits, so concurrent callers are served in
order and the long-run rate never exceeds ``rate`` bytes per second; up to ``burst`` seconds
of unused allowance may be spent at once. Clock and sleep are injectable for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


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
