"""Resilience policies where they meet the group's own features.

A member timeout is a timeout of the call it cancels (the circuit breaker and the adaptive
limit see it); the rate limits of a group and of the state both hold; a member waiting for a
rate-limit token lends its global slot; a retried member reports its own attempts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy
from rh_agents.core.records import CircuitStateChanged, EventFailed
from rh_agents.core.results import ResultStatus
from rh_agents.errors import CircuitOpenError
from rh_agents.resilience import AdaptiveLimit, CircuitBreaker, RateLimit, RetryPolicy
from rh_agents.testing import ManualClock


class Item(BaseModel):
    n: int = 0


def quiet_state(**options: Any) -> ExecutionState:
    return ExecutionState(clock=ManualClock(), watchdog=None, **options)


async def hang() -> None:
    await asyncio.Event().wait()


# --- member timeouts seen by the circuit breaker and the adaptive limit ----------------------


async def test_member_timeouts_open_the_groups_circuit() -> None:
    state = quiet_state()
    calls = 0

    async def stuck() -> None:
        nonlocal calls
        calls += 1
        await hang()

    breaker = CircuitBreaker(failure_threshold=2, cooldown=60)
    async with state.parallel(max_workers=1, member_timeout=0.02, circuit_breaker=breaker) as p:
        for _ in range(4):
            p.add(stuck)
        results = await p.gather()
    # Two calls timed out; then the circuit was open and the handler was not called again.
    assert [r.status for r in results[:2]] == [ResultStatus.TIMED_OUT] * 2
    assert all(isinstance(r.exception, CircuitOpenError) for r in results[2:])
    assert calls == 2
    assert state.breakers["group:parallel"].state.value == "open"


async def test_member_timeouts_open_an_actors_circuit() -> None:
    bus = EventBus()
    changes: list[CircuitStateChanged] = []
    bus.subscribe(lambda r: changes.append(r) if isinstance(r, CircuitStateChanged) else None)
    state = ExecutionState(event_bus=bus, clock=ManualClock(), watchdog=None)
    calls = 0

    async def handler(input: Item, context: str, state: Any) -> int:
        nonlocal calls
        calls += 1
        await hang()
        return input.n

    tool = Tool(
        name="slow",
        input_model=Item,
        handler=handler,
        circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=60),
    )
    event = ExecutionEvent(actor=tool)
    async with state.parallel(max_workers=1, member_timeout=0.02) as p:
        for n in range(3):
            p.add(event(Item(n=n), "", state))
        results = await p.gather()
    assert results[0].status is ResultStatus.TIMED_OUT
    assert all(isinstance(r.exception, CircuitOpenError) for r in results[1:])
    assert calls == 1
    assert [(c.key, c.old_state, c.new_state) for c in changes] == [("slow", "closed", "open")]


async def test_a_stop_is_not_a_failure_of_the_circuit() -> None:
    state = quiet_state()
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        await hang()

    async def fails() -> None:
        await started.wait()
        raise ValueError("bad")

    breaker = CircuitBreaker(failure_threshold=1, cooldown=60, key="svc")
    with pytest.raises(ValueError):
        async with state.parallel(
            max_workers=2,
            member_timeout=30,
            circuit_breaker=breaker,
            error_strategy=ErrorStrategy.FAIL_FAST,
        ) as p:
            p.add(stuck)
            p.add(fails)
            await p.gather()
    assert p.statistics().cancelled == 1
    # Only the real failure counted (threshold 1: it opened the circuit); the cancelled call
    # was not judged, so the count is one, not two.
    assert state.breakers["svc"].failures == 1


async def test_a_call_cut_short_by_its_member_timeout_is_recorded_as_a_timeout() -> None:
    # Its own record says what its member's result and its breaker say: it timed out (a
    # failure); a call a stop cancels stays cancelled.
    bus = EventBus()
    ended: list[EventFailed] = []
    bus.subscribe(ended.append, kinds=[EventFailed])
    state = ExecutionState(event_bus=bus, clock=ManualClock(), watchdog=None)
    started = asyncio.Event()

    async def stuck(input: Item, context: str, state: Any) -> int:
        started.set()
        await hang()
        return input.n

    async def outer(input: Item, context: str, state: Any) -> int:
        result = await inner(input, "", state)  # nested: cut short by the same timeout
        return input.n if result.ok else -1

    async def fails() -> None:
        await started.wait()
        raise ValueError("bad")

    inner = ExecutionEvent(actor=Tool(name="stuck", input_model=Item, handler=stuck))
    nesting = ExecutionEvent(actor=Tool(name="outer", input_model=Item, handler=outer))
    async with state.parallel(max_workers=2, name="t", member_timeout=0.02) as p:
        p.add(inner(Item(n=0), "", state))
        p.add(nesting(Item(n=1), "", state), timeout=0.05)
    assert [r.status for r in await p.gather()] == [ResultStatus.TIMED_OUT] * 2
    started.clear()
    with pytest.raises(ValueError):
        async with state.parallel(
            max_workers=2, name="s", member_timeout=30, error_strategy=ErrorStrategy.FAIL_FAST
        ) as q:
            q.add(inner(Item(n=2), "", state))
            q.add(fails)
    await bus.drain()
    assert sorted((r.address, r.cancelled, r.error_type) for r in ended) == [
        ("s[0]::stuck", True, "CancelledError"),
        ("t[0]::stuck", False, "ParallelTimeoutError"),
        ("t[1]::outer", False, "ParallelTimeoutError"),
        ("t[1]::outer::stuck", False, "ParallelTimeoutError"),
    ]
    errors = {r.address: r.error for r in ended}
    assert errors["s[0]::stuck"] == "cancelled"
    assert errors["t[0]::stuck"] == (
        "ParallelTimeoutError: tool 'stuck' at t[0]::stuck was cut short by its member's timeout"
    )


async def test_member_timeouts_cut_the_adaptive_limit() -> None:
    state = quiet_state()
    limit = AdaptiveLimit(1, 16, initial=8)

    async with state.parallel(max_workers=limit, member_timeout=0.02) as p:
        for _ in range(8):
            p.add(hang)
        results = await p.gather()
    assert all(r.status is ResultStatus.TIMED_OUT for r in results)
    assert limit.current < 8


# --- rate limits of the group and the state, together ----------------------------------------


async def test_a_groups_rate_limit_does_not_lift_the_states() -> None:
    state = quiet_state(rate_limit=RateLimit(1, 60))
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1

    async with state.parallel(max_workers=3, rate_limit=RateLimit(100, 1), timeout=0.2) as p:
        for _ in range(3):
            p.add(call)
        results = await p.gather()
    # The run's bucket holds one call a minute: one call ran, the others waited for it.
    assert calls == 1
    assert [r.status for r in results].count(ResultStatus.COMPLETED) == 1


async def test_a_bucket_named_by_the_group_and_the_state_is_taken_once() -> None:
    shared = RateLimit(2, 60, key="api")
    state = quiet_state(rate_limit=shared)
    async with state.parallel(max_workers=2, rate_limit=RateLimit(2, 60, key="api")) as p:
        p.add(lambda: asyncio.sleep(0))
        p.add(lambda: asyncio.sleep(0))
        results = await asyncio.wait_for(p.gather(), 5)
    assert all(r.ok for r in results)
    assert len(state.rate_limiters) == 1


async def test_a_member_waiting_for_a_token_lends_its_global_slot() -> None:
    state = quiet_state(global_max_workers=1)
    first_done = asyncio.Event()

    async def first() -> None:
        first_done.set()

    async def limited_group() -> None:
        async with state.parallel(max_workers=2, rate_limit=RateLimit(1, 60)) as p:
            p.add(first)
            p.add(first)  # waits a minute for its token
            await p.gather()

    limited = asyncio.create_task(limited_group())
    try:
        await first_done.wait()

        async def other() -> int:
            return 7

        async with state.parallel(max_workers=1) as q:
            q.add(other)
            results = await asyncio.wait_for(q.gather(), 5)
        assert results[0].result == 7
        assert state.global_slots is not None and state.global_slots.in_use == 0
    finally:
        limited.cancel()
        await asyncio.gather(limited, return_exceptions=True)
    assert state.global_slots.in_use == 0


# --- attempts of a retried member that returns a call's result --------------------------------


async def test_a_retried_member_returning_a_calls_result_reports_its_own_attempts() -> None:
    state = quiet_state()

    async def double(input: Item, context: str, state: Any) -> int:
        return input.n * 2

    event = ExecutionEvent(actor=Tool(name="double", input_model=Item, handler=double))
    made: list[Any] = []

    async def member() -> Any:
        result = await event(Item(n=len(made) + 1), "", state)
        made.append(result)
        if len(made) < 3:
            raise ConnectionError("try again")
        return result

    async with state.parallel(
        max_workers=1, retry=RetryPolicy(max_attempts=3, initial_delay=0)
    ) as p:
        p.add(member)
        (result,) = await p.gather()
    assert result.ok and result.result == 6
    assert result.attempts == 3
    # The call's own result (in the history) still says it took one attempt.
    assert made[-1].attempts == 1 and made[-1] is not result


async def test_an_event_member_timed_out_in_its_second_attempt_reports_two() -> None:
    state = quiet_state()
    calls = 0

    async def handler(input: Item, context: str, state: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first")
        await hang()
        return 0

    event = ExecutionEvent(actor=Tool(name="flaky", input_model=Item, handler=handler))
    async with state.parallel(
        member_timeout=0.05, retry=RetryPolicy(max_attempts=3, initial_delay=0)
    ) as p:
        p.add(event(Item(), "", state))
        (result,) = await p.gather()
    assert result.status is ResultStatus.TIMED_OUT
    assert calls == 2 and result.attempts == 2


async def test_a_callable_member_failing_after_its_call_retried_reports_its_own_attempts() -> None:
    # The member is run once; the event it calls retried twice inside it. The member's
    # result said 3 attempts (its call's).
    state = quiet_state()
    calls = 0

    async def handler(input: Item, context: str, state: Any) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("again")
        return 1

    event = ExecutionEvent(
        actor=Tool(
            name="flaky",
            input_model=Item,
            handler=handler,
            retry=RetryPolicy(max_attempts=3, initial_delay=0),
        )
    )

    async def member() -> None:
        await event(Item(), "", state)
        raise ValueError("the member's own failure")

    async with state.parallel(max_workers=1, member_timeout=5) as p:
        p.add(member)
        (result,) = await p.gather()
    assert calls == 3
    assert result.status is ResultStatus.FAILED and result.attempts == 1


async def test_a_plain_function_member_raising_as_it_is_called_is_retried_like_any() -> None:
    # p.add(fn) with a group retry: a function that raised as it was called (before making
    # its awaitable) failed its first attempt, and was not retried (it was by a process
    # executor); a later attempt raising so was. Each attempt calls it again.
    state = quiet_state()
    calls = 0

    def flaky() -> Any:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"refused {calls}")
        return asyncio.sleep(0, "done")

    async with state.parallel(retry=RetryPolicy(max_attempts=3, initial_delay=0)) as p:
        p.add(flaky)
    (result,) = await p.gather()
    assert calls == 3
    assert result.ok and result.result == "done" and result.attempts == 3


async def test_a_function_member_returning_no_awaitable_is_not_retried() -> None:
    # That is a mistake in the program (InvalidMemberError), not a failed attempt.
    state = quiet_state()
    calls = 0

    def not_async() -> int:
        nonlocal calls
        calls += 1
        return 42

    async with state.parallel(retry=RetryPolicy(max_attempts=3, initial_delay=0)) as p:
        p.add(not_async)
    (result,) = await p.gather()
    assert calls == 1
    assert result.status is ResultStatus.FAILED and "not an awaitable" in (result.error or "")
