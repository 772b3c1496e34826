"""The command line's signal handling (``cli._interruptible``): the grace period that
follows a first SIGINT ends with the run."""

from __future__ import annotations

import asyncio
import os
import signal
from types import SimpleNamespace
from typing import cast

import pytest

from asyncbackup import cli
from asyncbackup.report import BackupReport


async def test_a_run_that_stops_within_the_grace_period_is_not_cancelled_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGINT starts a grace period, after which the run is cancelled. A run that stopped
    in time returned, and the command went on (its summary, its report) in the same task:
    the timer still fired and cancelled whatever the task awaited then."""
    monkeypatch.setattr(cli, "GRACE_SECONDS", 0.05)

    async def start(stop: asyncio.Event) -> BackupReport:
        os.kill(os.getpid(), signal.SIGINT)  # to the loop's handler, which sets stop
        await stop.wait()
        return cast(BackupReport, SimpleNamespace(status="stopped"))

    assert await cli._interruptible(start) is None  # stopped by the signal
    await asyncio.sleep(0.2)  # past the grace period: still running, not cancelled
