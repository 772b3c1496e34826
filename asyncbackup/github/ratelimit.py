"""GitHub's rate limits: one gate every API request passes before it is sent.

- Primary limit: every answer carries ``x-ratelimit-remaining`` and ``x-ratelimit-reset``
  (epoch seconds). When the budget is spent, every request waits for the reset instead of
  failing. The reset is a time on GitHub's clock, so the wait is measured from the answer's
  ``Date`` (GitHub's clock too), not from ours: a local clock minutes ahead would otherwise
  send requests into the limit again and again, one minutes behind would wait that much longer.
- Secondary limits: a 403 or 429 saying so. ``retry-after`` is honoured; without it the wait is
  at least 60 s and doubles while the limit keeps answering (GitHub's documented advice).

The clocks and ``sleep`` are injectable, so tests wait for an hour in no time. Pauses are
measured on a steady clock: NTP setting the wall clock back during one does not stretch it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping

from ..retry import http_date

log = logging.getLogger("asyncbackup")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

SECONDARY_MIN_WAIT = 60.0
SECONDARY_MAX_WAIT = 900.0
#: A reset further away than this is clock skew, not a real limit.
PRIMARY_MAX_WAIT = 3600.0 + 60.0
#: Seconds added after ``x-ratelimit-reset``, so the first request lands after the reset.
RESET_MARGIN = 1.0


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # "inf", "nan": no number of seconds


def _server_time(headers: Mapping[str, str]) -> float | None:
    """The answer's ``Date`` header in epoch seconds, or None."""
    value = headers.get("date")
    if not value:
        return None
    moment = http_date(value)
    return moment.timestamp() if moment is not None else None


class RateGate:
    """Shared by every request of a run: pauses them all while GitHub asks us to wait."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        steady: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``clock`` is the wall clock, in epoch seconds (``time.time``): what GitHub's times
        are compared with, through the answers' ``Date``. ``steady`` measures the pauses
        (``time.monotonic``), so that a wall clock set back (NTP) does not stretch one; by
        default the clock given, when one is (a test's: one clock that moves as it sleeps)."""
        self.clock = clock or time.time
        self.steady = steady or clock or time.monotonic
        self.sleep = sleep
        self.waits: list[tuple[str, float]] = []  # (reason, seconds): for reports and tests
        self._resume_at = float("-inf")  # on ``steady``: no pause yet
        self._strikes = 0
        self.skew = 0.0  # GitHub's clock minus ours, from the last answer with a Date

    async def wait_turn(self) -> None:
        """Return once no limit holds requests back."""
        while (delay := self._resume_at - self.steady()) > 0:
            await self.sleep(delay)

    def _pause(self, reason: str, seconds: float) -> None:
        resume = self.steady() + seconds
        if resume > self._resume_at:
            self._resume_at = resume
            self.waits.append((reason, seconds))
            log.warning("GitHub %s: pausing API requests for %.0fs", reason, seconds)

    def observe(self, status: int, headers: Mapping[str, str], message: str) -> bool:
        """Take note of one answer; True when it was a rate limit and must be sent again."""
        server_time = _server_time(headers)
        if server_time is not None:
            self.skew = server_time - self.clock()
        remaining = _number(headers, "x-ratelimit-remaining")
        reset = _number(headers, "x-ratelimit-reset")
        primary_spent = remaining is not None and remaining <= 0 and reset is not None
        if status in (403, 429):
            # Requests sent together are refused together: while a pause holds, a refusal is
            # the same strike (the limit persisting is a refusal once the pause is over).
            strike = self._resume_at <= self.steady()
            retry_after = _number(headers, "retry-after")
            if retry_after is not None:
                self._strikes += strike
                # further away than an hour is no real limit either (a primary one's reset
                # is capped there too): 10^9 s would pause every request for good
                wait = min(max(retry_after, 1.0), PRIMARY_MAX_WAIT)
                self._pause("secondary rate limit (retry-after)", wait)
                return True
            if primary_spent:
                assert reset is not None
                self._pause_until_reset(reset)
                return True
            if status == 429 or "rate limit" in message.lower() or "abuse" in message.lower():
                if strike:
                    wait = min(SECONDARY_MAX_WAIT, SECONDARY_MIN_WAIT * 2**self._strikes)
                    self._strikes += 1
                    self._pause("secondary rate limit", wait)
                return True
            return False
        if status < 400:
            self._strikes = 0
        if primary_spent:
            assert reset is not None
            self._pause_until_reset(reset)  # the next request would be refused: wait first
        return False

    def _pause_until_reset(self, reset: float) -> None:
        github_now = self.clock() + self.skew
        wait = min(max(reset - github_now, 0.0) + RESET_MARGIN, PRIMARY_MAX_WAIT)
        self._pause("primary rate limit (waiting for x-ratelimit-reset)", wait)
