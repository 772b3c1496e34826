"""Clocks and time zones on a user's machine: GitHub's rate-limit wait, whatever ``TZ`` is."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from asyncbackup.github.ratelimit import RateGate
from tests.github_server import FakeClock

GITHUB_NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.fixture(params=["America/New_York", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "date",
    [
        "Tue Nov 14 22:13:20 2023",  # asctime, an HTTP-date every recipient must accept
        "Tue, 14 Nov 2023 22:13:20 -0000",
    ],
)
def test_the_wait_for_the_reset_does_not_depend_on_the_time_zone(
    local_zone: str, date: str
) -> None:
    """An HTTP date without a zone is GMT (RFC 9110); it was read as local time, so the wait
    was off by the zone's offset: New York's machine took GitHub's clock for 5 hours ahead and
    did not wait at all (every request refused, once a second, for the rest of the hour),
    Kolkata's waited the whole hour cap instead of two minutes."""
    clock = FakeClock(now=GITHUB_NOW)
    gate = RateGate(clock=clock, sleep=clock.sleep)
    headers = {
        "date": date,
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(GITHUB_NOW + 120)),
    }
    assert gate.observe(403, headers, "API rate limit exceeded") is True
    assert gate.waits == [("primary rate limit (waiting for x-ratelimit-reset)", 121.0)], local_zone


class _Clocks:
    """A wall clock that NTP steps back 20 minutes during the first sleep, and a steady one."""

    def __init__(self) -> None:
        self.wall = GITHUB_NOW
        self.steady = 5000.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.steady += seconds
        self.wall += seconds - (1200.0 if len(self.sleeps) == 1 else 0.0)


async def test_a_wall_clock_stepped_back_does_not_stretch_a_rate_limit_pause() -> None:
    """A pause was measured on the wall clock: the VM whose clock NTP set back 20 minutes
    during a two-minute wait for the reset waited 22 (sleeps [121, 1200])."""
    clocks = _Clocks()
    gate = RateGate(clock=lambda: clocks.wall, steady=lambda: clocks.steady, sleep=clocks.sleep)
    headers = {
        "date": "Tue, 14 Nov 2023 22:13:20 GMT",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(GITHUB_NOW + 120)),
    }
    assert gate.observe(403, headers, "API rate limit exceeded") is True
    await gate.wait_turn()
    assert clocks.sleeps == [121.0]
