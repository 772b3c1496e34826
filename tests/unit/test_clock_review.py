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
