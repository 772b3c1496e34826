from __future__ import annotations

import asyncio
import random

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from asyncbackup.errors import IntegrityError, ObjectError
from asyncbackup.retry import (
    AdaptiveLimiter,
    Backoff,
    RetryPolicy,
    classify,
    is_outage,
    retry_after,
)


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        },
        "GetObject",
    )


def test_classification() -> None:
    assert classify(client_error("SlowDown", 503)).retryable
    assert classify(client_error("InternalError", 500)).retryable
    assert classify(EndpointConnectionError(endpoint_url="http://x")).retryable
    denied = classify(client_error("AccessDenied", 403))
    assert not denied.retryable
    assert str(denied) == "AccessDenied: AccessDenied happened"
    assert not classify(client_error("NoSuchKey", 404)).retryable


def test_an_outage_is_the_servers_or_the_networks_not_an_objects() -> None:
    """What stops a run when it fails object after object (``api.Outage``)."""
    for exc in (
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("TooManyRequests", 429),
        client_error("502", 502),
        EndpointConnectionError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
        ConnectionResetError(104, "reset"),
    ):
        assert is_outage(classify(exc)), exc
    for error in (
        classify(client_error("AccessDenied", 403)),
        classify(client_error("BadDigest", 400)),
        classify(client_error("RequestTimeout", 400)),
        IntegrityError("MD5 differs"),
        ObjectError("ObjectChanged", "replaced", retryable=True),
    ):
        assert not is_outage(error), error


def test_retry_after_is_read() -> None:
    assert retry_after(client_error("SlowDown", 503, {"retry-after": "7"})) == 7.0
    assert retry_after(client_error("SlowDown", 503)) is None


def test_backoff_is_full_jitter_capped_and_honours_hints() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [backoff.delay(attempt) for attempt in range(1, 12) for _ in range(50)]
    assert min(delays) >= 0.0
    assert max(delays) <= 8.0
    assert max(delays) > 4.0  # it does grow towards the cap
    assert backoff.delay(1, hint=5.0) >= 5.0


async def test_policy_retries_transient_then_succeeds() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise client_error("InternalError", 500)
        return "ok"

    policy = RetryPolicy(max_attempts=5, sleep=fake_sleep)
    assert await policy.call(flaky) == "ok"
    assert calls == 3 and len(slept) == 2 and policy.retries == 2


async def test_policy_does_not_retry_permanent_errors() -> None:
    calls = 0

    async def denied() -> None:
        nonlocal calls
        calls += 1
        raise client_error("AccessDenied", 403)

    async def no_sleep(seconds: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(ObjectError, match="AccessDenied"):
        await RetryPolicy(max_attempts=5, sleep=no_sleep).call(denied)
    assert calls == 1


async def test_policy_gives_up_after_max_attempts() -> None:
    async def always() -> None:
        raise client_error("SlowDown", 503)

    async def no_wait(seconds: float) -> None:
        pass

    with pytest.raises(ObjectError, match="SlowDown"):
        await RetryPolicy(max_attempts=4, sleep=no_wait).call(always)


def test_limiter_is_aimd() -> None:
    now = [0.0]
    limiter = AdaptiveLimiter(16, cooldown=1.0, clock=lambda: now[0])
    limiter.throttled()
    assert limiter.limit == 8
    limiter.throttled()  # within the cooldown: one burst counts once
    assert limiter.limit == 8
    now[0] = 2.0
    limiter.throttled()
    assert limiter.limit == 4
    for _ in range(4):
        limiter.succeeded()
    assert limiter.limit == 5  # additive increase
    for _ in range(200):
        limiter.succeeded()
    assert limiter.limit == 16  # recovers fully, never beyond the maximum


async def test_a_cancelled_request_gives_its_slot_back() -> None:
    """A request cancelled in flight (its copy failed on the other side) or failing with an
    error classify() re-raises must not keep its limiter slot: two such leaks on a limit of 2
    used to block every later request for good."""
    import asyncio

    limiter = AdaptiveLimiter(2)
    policy = RetryPolicy(3, limiter=limiter, sleep=lambda _: asyncio.sleep(0))
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(3600)

    for _ in range(2):
        started.clear()
        task = asyncio.ensure_future(policy.call(hang))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def broken() -> None:
        raise ValueError("a bug, not a transfer error")

    assert limiter.in_flight == 0
    with pytest.raises(ValueError):
        await asyncio.wait_for(policy.call(broken), 1)
    assert limiter.in_flight == 0

    async def ok() -> str:
        return "done"

    assert await asyncio.wait_for(policy.call(ok), 1) == "done"


async def test_waiters_are_woken_in_turn_and_a_cancelled_one_passes_its_turn_on() -> None:
    import asyncio

    limiter = AdaptiveLimiter(1)
    await limiter.acquire()
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release()  # wakes the first waiter...
    first.cancel()  # ...which is cancelled before it runs: the second gets the slot
    await asyncio.wait_for(second, 1)
    assert limiter.in_flight == 1


async def test_once_is_one_attempt_without_a_slot_that_reports_a_throttle() -> None:
    limiter = AdaptiveLimiter(8, cooldown=0.0)
    policy = RetryPolicy(5, limiter=limiter)
    for _ in range(8):
        await limiter.acquire()  # every slot taken: once() must not wait for one
    calls = 0

    async def throttled() -> None:
        nonlocal calls
        calls += 1
        raise client_error("SlowDown", 503)

    with pytest.raises(ObjectError) as caught:
        await asyncio.wait_for(policy.once(throttled), 5)
    assert calls == 1  # never repeated
    assert caught.value.code == "SlowDown" and caught.value.retryable
    assert limiter.limit == 4  # halved for the requests that take slots
    assert limiter.in_flight == 8  # none taken, none given back

    async def fine() -> str:
        return "ok"

    assert await asyncio.wait_for(policy.once(fine), 5) == "ok"
    assert limiter.in_flight == 8


@pytest.mark.parametrize(
    ("times", "said"),
    [
        (
            {"RequestTime": "20261128T060000Z", "ServerTime": "2026-11-28T05:30:00Z"},
            "30 min ahead of",
        ),
        (
            {"RequestTime": "Sat, 28 Nov 2026 06:00:00 GMT", "ServerTime": "2026-11-28T06:20:00Z"},
            "20 min behind",
        ),
        ({}, "clock is off,"),
        ({"RequestTime": "soon", "ServerTime": "2026-11-28T06:20:00Z"}, "clock is off,"),
    ],
)
def test_request_time_too_skewed_says_how_far_the_clock_is_off(
    times: dict[str, str], said: str
) -> None:
    error = {"Code": "RequestTimeTooSkewed", "Message": "too large.", **times}
    response = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}
    classified = classify(ClientError(response, "GetObject"))
    assert classified.retryable  # a request held up after its signing passes signed again
    assert said in classified.message, classified.message
    assert "set the clock right" in classified.message
