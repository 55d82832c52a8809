"""Resilience fixes found by a hostile tester: each test fails without its fix."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError
from rh_agents.resilience import (
    AdaptiveLimit,
    CircuitBreaker,
    RateLimit,
    RetryPolicy,
    retry_after_of,
)
from rh_agents.testing import ManualClock

pytestmark = pytest.mark.timeout(10)


class Item(BaseModel):
    n: int = 0


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.status_code = 429
        self.headers = headers


class _HTTPError(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("429")
        self.response = _Response(headers)


class _Hinted(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


@pytest.mark.parametrize("raw", ["Infinity", "inf", "-inf", "1e999", "nan", "-5", "soon"])
def test_a_retry_after_header_that_is_no_finite_wait_is_ignored(raw: str) -> None:
    assert retry_after_of(_HTTPError({"retry-after": raw})) is None
    assert retry_after_of(_HTTPError({"retry-after-ms": raw})) is None


@pytest.mark.parametrize(
    "raw",
    [float("inf"), float("nan"), -1.0, 10**400, True],
    ids=["inf", "nan", "-1", "huge", "bool"],
)
def test_a_retry_after_attribute_that_is_no_finite_wait_is_ignored(raw: Any) -> None:
    assert retry_after_of(_Hinted(raw)) is None


def test_finite_retry_after_hints_still_count() -> None:
    assert retry_after_of(_HTTPError({"retry-after": "2.5"})) == 2.5
    assert retry_after_of(_HTTPError({"retry-after": "0"})) == 0.0
    assert retry_after_of(_Hinted(3)) == 3.0
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after_of(_HTTPError({"retry-after": past})) == 0.0


async def test_an_infinite_retry_after_does_not_make_the_call_wait_forever() -> None:
    clock = ManualClock()
    state = ExecutionState(clock=clock)
    calls = 0

    async def refused(input: Item, context: str, state: ExecutionState) -> None:
        nonlocal calls
        calls += 1
        raise _HTTPError({"retry-after": "Infinity"})

    policy = RetryPolicy(max_attempts=2, initial_delay=1, max_delay=1, jitter=0)
    tool = Tool(name="svc", input_model=Item, handler=refused, retry=policy)
    result = await asyncio.wait_for(ExecutionEvent(actor=tool)(Item(), "", state), 5)
    assert not result.ok and calls == 2 and clock.sleeps == [1.0]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("make", "label", "value"),
    [
        (lambda v: RetryPolicy(initial_delay=v), "initial_delay", INF),
        (lambda v: RetryPolicy(initial_delay=v), "initial_delay", NAN),
        (lambda v: RetryPolicy(multiplier=v), "multiplier", INF),
        (lambda v: RetryPolicy(max_delay=v), "max_delay", INF),
        (lambda v: RetryPolicy(jitter=v), "jitter", INF),
        (lambda v: RetryPolicy(jitter=v), "jitter", NAN),
        (lambda v: RetryPolicy(deadline=v), "deadline", INF),
        (lambda v: RetryPolicy(respect_retry_after=v), "respect_retry_after", "no"),
        (lambda v: RetryPolicy(respect_retry_after=v), "respect_retry_after", None),
        (lambda v: CircuitBreaker(cooldown=v), "cooldown", NAN),
        (lambda v: CircuitBreaker(cooldown=v), "cooldown", INF),
        (lambda v: CircuitBreaker(failure_on=v), "failure_on", "x"),
        (lambda v: CircuitBreaker(failure_on=v), "failure_on", (3,)),
        (lambda v: CircuitBreaker(failure_on=v), "failure_on", [ValueError]),
        (lambda v: RateLimit(v), "calls", NAN),
        (lambda v: RateLimit(v), "calls", INF),
        (lambda v: RateLimit(1, v), "period", NAN),
        (lambda v: RateLimit(1, v), "period", INF),
        (lambda v: RateLimit(v), "calls", 1e-320),
        (lambda v: AdaptiveLimit(increase=v), "increase", True),
        (lambda v: AdaptiveLimit(increase=v), "increase", INF),
        (lambda v: AdaptiveLimit(decrease=v), "decrease", NAN),
        (lambda v: AdaptiveLimit(latency_tolerance=v), "latency_tolerance", INF),
        (lambda v: AdaptiveLimit(latency_tolerance=v), "latency_tolerance", NAN),
    ],
)
def test_policy_fields_refuse_nan_infinity_and_wrong_types(
    make: Any, label: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=label) as caught:
        make(value)
    assert repr(value) in str(caught.value)


def test_documented_none_and_single_exception_classes_are_still_accepted() -> None:
    assert RetryPolicy(deadline=None).deadline is None
    assert AdaptiveLimit(latency_tolerance=None).latency_tolerance is None
    assert CircuitBreaker(failure_on=ValueError).failure_on == (ValueError,)
    assert CircuitBreaker(failure_on=(ValueError, OSError)).failure_on == (ValueError, OSError)
    assert RetryPolicy(respect_retry_after=False).respect_retry_after is False
    assert RateLimit(0.5).calls == 0.5


@pytest.mark.parametrize("timeout", [True, "5"])
def test_an_event_timeout_that_is_no_number_of_seconds_is_refused(timeout: Any) -> None:
    tool = Tool(name="svc", input_model=Item, handler=_ok)
    with pytest.raises(ConfigurationError, match="timeout must be seconds > 0") as caught:
        ExecutionEvent(actor=tool, timeout=timeout)
    assert repr(timeout) in str(caught.value)
    assert ExecutionEvent(actor=tool, timeout=2).timeout == 2.0


async def _ok(input: Item, context: str, state: ExecutionState) -> int:
    return 1
