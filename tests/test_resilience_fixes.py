"""Resilience fixes found by a hostile tester: each test fails without its fix."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from aiolimiter import AsyncLimiter
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import CircuitStateChanged
from rh_agents.errors import CircuitOpenError, ConfigurationError, RateLimitedError
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


# --- a retry deadline is checked again right before an attempt starts --------------------


async def test_no_retry_starts_after_the_deadline_when_the_lent_slot_comes_back_late() -> None:
    clock = ManualClock()
    state = ExecutionState(clock=clock)
    starts: list[float] = []

    async def flaky(input: Item, context: str, state: ExecutionState) -> None:
        starts.append(state.clock.now())
        raise ConnectionError("down")

    async def slow(input: Item, context: str, state: ExecutionState) -> int:
        await state.clock.sleep(10)  # holds the one worker slot past the deadline
        return 1

    policy = RetryPolicy(max_attempts=3, initial_delay=1, jitter=0, deadline=2)
    first = ExecutionEvent(actor=Tool(name="a", input_model=Item, handler=flaky, retry=policy))
    second = ExecutionEvent(actor=Tool(name="b", input_model=Item, handler=slow))
    async with state.parallel(max_workers=1) as p:
        p.add(first(Item(), "", state))
        p.add(second(Item(), "", state))
    failed, done = await p.gather()
    # The backoff (1 s) ended before the deadline (2 s), but the slot it lent came back at
    # t=11: the retry would have started after the deadline, so the call gave up instead.
    assert starts == [0.0]
    assert not failed.ok and failed.attempts == 1 and "ConnectionError" in (failed.error or "")
    assert done.ok


async def test_no_retry_starts_after_the_deadline_when_its_token_comes_late() -> None:
    # The bucket runs on the event loop's time (not an injected clock): one call per 0.2 s,
    # so the retry's token comes 0.2 s after the first attempt's, past the 0.05 s deadline.
    state = ExecutionState(rate_limit=RateLimit(1, 0.2))
    calls = 0

    async def flaky(input: Item, context: str, state: ExecutionState) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    policy = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0, deadline=0.05)
    tool = Tool(name="svc", input_model=Item, handler=flaky, retry=policy)
    result = await ExecutionEvent(actor=tool)(Item(), "", state)
    assert calls == 1 and not result.ok and result.attempts == 1
    assert isinstance(result.exception, ConnectionError)


# --- an open circuit refuses at once, taking no rate-limit token ---------------------------


async def _down(input: Item, context: str, state: ExecutionState) -> None:
    raise ConnectionError("provider down")


async def test_an_open_circuits_refusals_take_no_token_and_do_not_wait() -> None:
    clock = ManualClock()
    # Two tokens a minute: the call that opens the circuit takes one; five refusals waiting
    # for tokens would take the other and then wait half a minute each.
    state = ExecutionState(clock=clock, rate_limit=RateLimit(2, 60, key="provider"))
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    event = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=_down, circuit_breaker=breaker)
    )
    await event(Item(), "", state)
    assert state.breakers["svc"].state == "open"
    calls = [event(Item(), "", state) for _ in range(5)]
    refusals = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert all(isinstance(r.exception, CircuitOpenError) for r in refusals)
    bucket = state.rate_limiters.limiter(RateLimit(2, 60, key="provider"), "state")
    assert bucket.has_capacity()  # the second token is still there


async def test_a_probe_cancelled_while_waiting_for_a_token_gives_its_place_back() -> None:
    clock = ManualClock()
    bus = EventBus()
    asked = asyncio.Event()

    def on_change(record: Any) -> None:
        if record.new_state == "half_open":
            asked.set()  # the probe got its place; it now waits for a token

    bus.subscribe(on_change, kinds=[CircuitStateChanged])
    state = ExecutionState(event_bus=bus, clock=clock, rate_limit=RateLimit(1, 60))
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5)
    event = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=_down, circuit_breaker=breaker)
    )
    await event(Item(), "", state)  # takes the only token, opens the circuit
    clock.advance(5)
    probe = asyncio.ensure_future(event(Item(), "", state))
    await asyncio.wait_for(asked.wait(), 5)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    circuit = state.breakers["svc"]
    assert circuit.state == "half_open"
    assert circuit.acquire() is None  # the place is free again: another probe may go
    circuit.release(None, finished=False, epoch=circuit.epoch)


async def test_a_call_let_through_asks_again_if_the_circuit_opened_while_it_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    # One token per 0.2 s of the loop's time: the second member, let through by the closed
    # circuit, waits for its token while the first member's failure opens the circuit.
    state = ExecutionState(clock=clock, rate_limit=RateLimit(1, 0.2))
    waiting = asyncio.Event()
    acquire = AsyncLimiter.acquire

    async def acquire_noting_waits(self: AsyncLimiter, amount: float = 1) -> None:
        if not self.has_capacity(amount):
            waiting.set()
        await acquire(self, amount)

    monkeypatch.setattr(AsyncLimiter, "acquire", acquire_noting_waits)
    calls = 0

    async def down(input: Item, context: str, state: ExecutionState) -> None:
        nonlocal calls
        calls += 1
        await waiting.wait()  # the other member is waiting for its token now
        raise ConnectionError("provider down")

    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    event = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=down, circuit_breaker=breaker)
    )
    async with state.parallel(max_workers=2) as p:
        p.add(event(Item(), "", state))
        p.add(event(Item(), "", state))
    first, second = await p.gather()
    assert calls == 1
    assert isinstance(first.exception, ConnectionError)
    assert isinstance(second.exception, CircuitOpenError)


# --- one key, one limit; a group's own bucket ends with the group --------------------------


async def _one() -> int:
    return 1


async def test_a_group_cannot_lift_the_states_limit_by_naming_its_key_with_more_calls() -> None:
    state = ExecutionState(rate_limit=RateLimit(1, 1.0, key="openai"))
    with pytest.raises(ConfigurationError, match="'openai'") as caught:
        state.parallel(max_workers=10, rate_limit=RateLimit(100, 1.0, key="openai"))
    message = str(caught.value)
    assert "RateLimit(1, 1.0)" in message and "RateLimit(100, 1.0)" in message
    # The same settings are the same limit: fine, and taken once.
    async with state.parallel(rate_limit=RateLimit(1, 1.0, key="openai")) as p:
        p.add(_one)
    assert len(state.rate_limiters) == 1


async def test_two_groups_naming_one_key_with_different_limits_are_refused() -> None:
    state = ExecutionState()
    first = state.parallel(rate_limit=RateLimit(5, 1.0, key="shared"))
    second = state.parallel(rate_limit=RateLimit(50, 1.0, key="shared"))  # nothing claimed yet
    async with first as p:
        p.add(_one)
    with pytest.raises(ConfigurationError, match="'shared'"):
        async with second:
            pass
    with pytest.raises(ConfigurationError, match="'shared'"):  # refused as it is made now
        state.parallel(rate_limit=RateLimit(5, 2.0, key="shared"))


async def test_a_groups_own_bucket_is_dropped_when_the_group_ends() -> None:
    state = ExecutionState(rate_limit=RateLimit(100, 1.0, key="provider"))
    for _ in range(20):
        async with state.parallel(max_workers=2, rate_limit=RateLimit(1000, 1.0)) as p:
            p.add(_one)
            p.add(_one)
        assert await p.gather()
    assert len(state.rate_limiters) == 1  # only the shared bucket, kept by its key


def test_a_keyed_bucket_serves_one_loop_after_another_and_carries_its_level_over() -> None:
    # 100 calls an hour: the level drains by about one call in 36 s, so within this test's
    # timeout it stays above 5 after six calls. RuntimeWarning is an error here (pyproject):
    # aiolimiter warns when one AsyncLimiter is used on a second loop.
    limit = RateLimit(100, 3600, key="svc")
    state = ExecutionState(rate_limit=limit)
    buckets: list[AsyncLimiter] = []

    async def run() -> list[str]:
        async with state.parallel(max_workers=3, name="g") as p:
            for _ in range(3):
                p.add(_one)
        results = await p.gather()
        bucket = state.rate_limiters.limiter(limit, "state")
        assert bucket is state.rate_limiters.limiter(limit, "state")  # one per loop, not call
        buckets.append(bucket)
        return [r.status.value for r in results]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert asyncio.run(run()) == ["completed"] * 3
        assert asyncio.run(run()) == ["completed"] * 3
    first, second = buckets
    assert first is not second
    assert len(state.rate_limiters) == 1  # one key, one bucket

    async def capacity() -> tuple[bool, bool]:
        bucket = state.rate_limiters.limiter(limit, "state")
        return bucket.has_capacity(94), bucket.has_capacity(95)

    # The third loop's bucket starts with the six calls of the first two (not a fresh burst).
    assert asyncio.run(capacity()) == (True, False)


# --- a shared adaptive limit grows for every group using it ----------------------------------


async def test_a_shared_adaptive_limit_that_grows_lets_every_group_start_more() -> None:
    state = ExecutionState(clock=ManualClock())
    limit = AdaptiveLimit(1, 8)
    running_b = 0
    b_running, all_b_running, release_b = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_b() -> None:
        nonlocal running_b
        running_b += 1
        b_running.set()
        if running_b == 3:
            all_b_running.set()
        await release_b.wait()

    async def fast_a() -> int:
        return 1

    async def group_b() -> None:
        async with state.parallel(max_workers=limit, name="b") as p:
            for _ in range(3):
                p.add(slow_b)

    b = asyncio.ensure_future(group_b())
    try:
        await asyncio.wait_for(b_running.wait(), 5)  # b's first member holds b's one slot
        assert running_b == 1
        async with state.parallel(max_workers=limit, name="a") as p:
            for _ in range(5):
                p.add(fast_a)  # each success grows the shared limit
        assert limit.current > 3
        # b was told too: its waiting members start without one of its own ending first.
        await asyncio.wait_for(all_b_running.wait(), 5)
    finally:
        release_b.set()
        await b
    assert not limit._listeners  # both groups ended: the limit keeps neither


# --- one cut per round trip, on a coarse clock too ------------------------------------------


def test_signals_at_the_cuts_own_clock_reading_do_not_cut_again() -> None:
    limit = AdaptiveLimit(1, 16, initial=8)
    cuts = [limit.on_overload(started=0.0, now=0.0, level=8) for _ in range(8)]
    assert cuts == [True] + [False] * 7  # the first still cuts
    assert limit.decreases == 1 and limit.current == 4
    assert limit.on_overload(started=1.0, now=1.0, level=4)  # a later round trip cuts


async def test_a_burst_of_429s_on_a_manual_clock_cuts_once() -> None:
    state = ExecutionState(clock=ManualClock())
    limit = AdaptiveLimit(1, 16, initial=8)
    started = 0
    all_started = asyncio.Event()

    async def refused() -> None:
        nonlocal started
        started += 1
        if started == 8:
            all_started.set()
        await all_started.wait()
        raise RateLimitedError("429")

    async with state.parallel(max_workers=limit) as p:
        for _ in range(8):
            p.add(refused)
    assert limit.decreases == 1 and limit.current == 4


# --- documented: a state-wide retry policy reaches both levels ----------------------------


@pytest.mark.parametrize(("group_attempts", "handler_calls"), [(None, 9), (1, 3)])
async def test_a_state_wide_retry_retries_a_callable_member_and_the_calls_it_makes(
    group_attempts: int | None, handler_calls: int
) -> None:
    state = ExecutionState(clock=ManualClock(), retry=RetryPolicy(max_attempts=3, jitter=0))
    calls = 0

    async def down(input: Item, context: str, state: ExecutionState) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    event = ExecutionEvent(actor=Tool(name="svc", input_model=Item, handler=down))

    async def member() -> Any:
        return await event(Item(), "", state)

    own = {} if group_attempts is None else {"retry": RetryPolicy(max_attempts=group_attempts)}
    async with state.parallel(max_workers=1, **own) as p:
        p.add(member)
    (result,) = await p.gather()
    assert not result.ok and calls == handler_calls
