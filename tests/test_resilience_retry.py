"""Retries: attempts, waits, what retries, policy resolution, every add() form, slot lending."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from conftest import Recorder
from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import RetryPolicy as ParallelRetryPolicy
from rh_agents.core.records import EventRetrying, MemberStarted
from rh_agents.core.results import ResultStatus
from rh_agents.errors import (
    ActorDefinitionError,
    ConfigurationError,
    RateLimitedError,
    RetryPolicyError,
)
from rh_agents.resilience import RetryPolicy, retry_after_of
from rh_agents.testing import ManualClock


class Item(BaseModel):
    n: int = 0


class Flaky:
    """A handler failing ``failures`` times (with ``error``), then returning its call count."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ValueError("transient")
        self.calls = 0

    async def __call__(self, input: Item, context: str, state: Any) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


def flaky_tool(handler: Flaky, **options: Any) -> Tool:
    return Tool(name="flaky", input_model=Item, handler=handler, **options)


def make_state(
    clock: ManualClock, recorder: Recorder | None = None, **options: Any
) -> ExecutionState:
    bus = EventBus()
    if recorder is not None:
        bus.subscribe(recorder)
    return ExecutionState(event_bus=bus, clock=clock, **options)


def test_reexported_from_parallel_and_root() -> None:
    import rh_agents

    assert ParallelRetryPolicy is RetryPolicy is rh_agents.RetryPolicy


async def test_event_retries_transient_failures_with_exponential_waits(recorder: Recorder) -> None:
    clock = ManualClock()
    state = make_state(clock, recorder)
    handler = Flaky(failures=2)
    policy = RetryPolicy(max_attempts=4, initial_delay=1, multiplier=2, jitter=0)
    result = await ExecutionEvent(actor=flaky_tool(handler), retry=policy)(Item(), "", state)
    await state.event_bus.drain()
    assert result.ok and result.result == 3
    assert result.attempts == 3 and handler.calls == 3
    assert clock.sleeps == [1.0, 2.0]
    retries = [r for r in recorder.records if isinstance(r, EventRetrying)]
    assert [(r.attempt, r.delay, r.error_type) for r in retries] == [
        (1, 1.0, "ValueError"),
        (2, 2.0, "ValueError"),
    ]
    assert all(r.address == "flaky" for r in retries)


async def test_gives_up_after_max_attempts_and_reports_them() -> None:
    clock = ManualClock()
    state = make_state(clock)
    handler = Flaky(failures=10)
    policy = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0, max_delay=0.75)
    result = await ExecutionEvent(actor=flaky_tool(handler), retry=policy)(Item(), "", state)
    assert not result.ok and result.attempts == 3 and handler.calls == 3
    assert isinstance(result.exception, ValueError)
    assert clock.sleeps == [0.5, 0.75]  # capped by max_delay


async def test_configuration_errors_and_unlisted_errors_are_not_retried() -> None:
    clock = ManualClock()
    state = make_state(clock)
    bad = Flaky(failures=5, error=ConfigurationError("bad setting"))
    result = await ExecutionEvent(actor=flaky_tool(bad), retry=RetryPolicy())(Item(), "", state)
    assert not result.ok and bad.calls == 1
    other = Flaky(failures=5, error=KeyError("k"))
    only_timeouts = RetryPolicy(max_attempts=5, retry_on=(TimeoutError,))
    result = await ExecutionEvent(actor=flaky_tool(other), retry=only_timeouts)(Item(), "", state)
    assert not result.ok and other.calls == 1 and clock.sleeps == []


async def test_retry_after_hint_lengthens_the_wait() -> None:
    clock = ManualClock()
    state = make_state(clock)
    handler = Flaky(failures=1, error=RateLimitedError("429", retry_after=7.0))
    policy = RetryPolicy(max_attempts=2, initial_delay=1, jitter=0)
    result = await ExecutionEvent(actor=flaky_tool(handler), retry=policy)(Item(), "", state)
    assert result.ok and clock.sleeps == [7.0]


class _Response:
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class _HTTPError(Exception):
    def __init__(self, response: _Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def test_retry_after_read_from_http_response_headers() -> None:
    assert retry_after_of(_HTTPError(_Response(429, {"Retry-After": "3"}))) == 3.0
    assert retry_after_of(_HTTPError(_Response(429, {"retry-after-ms": "250"}))) == 0.25
    assert retry_after_of(_HTTPError(_Response(503, {}))) is None
    assert retry_after_of(ValueError("no hint")) is None


async def test_total_deadline_stops_retrying() -> None:
    clock = ManualClock()
    state = make_state(clock)
    handler = Flaky(failures=10)
    policy = RetryPolicy(max_attempts=10, initial_delay=1, multiplier=2, jitter=0, deadline=2.5)
    result = await ExecutionEvent(actor=flaky_tool(handler), retry=policy)(Item(), "", state)
    # waits 1 (t=1), then a wait of 2 would end at t=3 > 2.5: stop after 2 attempts.
    assert not result.ok and handler.calls == 2 and clock.sleeps == [1.0]


async def test_result_predicate_asks_for_another_attempt() -> None:
    clock = ManualClock()
    state = make_state(clock)
    handler = Flaky(failures=0)
    policy = RetryPolicy(max_attempts=5, jitter=0, retry_if_result=lambda calls: calls < 3)
    result = await ExecutionEvent(actor=flaky_tool(handler), retry=policy)(Item(), "", state)
    assert result.ok and result.result == 3 and result.attempts == 3


async def test_nearest_policy_wins_event_actor_group_state() -> None:
    clock = ManualClock()
    state = make_state(clock, retry=RetryPolicy(max_attempts=5, jitter=0))
    fast = RetryPolicy(max_attempts=2, jitter=0)

    async def attempts_with(event_retry: Any, actor_retry: Any, group_retry: Any) -> int:
        handler = Flaky(failures=100)
        event = ExecutionEvent(actor=flaky_tool(handler, retry=actor_retry), retry=event_retry)
        if group_retry is None:
            await event(Item(), "", state)
        else:
            async with state.parallel(max_workers=2, retry=group_retry) as p:
                p.add(event(Item(), "", state))
        return handler.calls

    assert await attempts_with(None, None, None) == 5  # the state's
    assert await attempts_with(None, None, RetryPolicy(max_attempts=3, jitter=0)) == 3  # group
    assert await attempts_with(None, fast, RetryPolicy(max_attempts=3, jitter=0)) == 2  # actor
    assert await attempts_with(RetryPolicy(max_attempts=1), fast, None) == 1  # the event's


async def test_group_policy_applies_to_a_members_own_event_not_deeper_ones() -> None:
    clock = ManualClock()
    state = make_state(clock)
    inner_handler = Flaky(failures=100)
    inner = ExecutionEvent(actor=flaky_tool(inner_handler))

    async def outer_handler(input: Item, context: str, st: ExecutionState) -> int:
        result = await inner(input, context, st)
        return result.attempts

    outer = ExecutionEvent(actor=Tool(name="outer", input_model=Item, handler=outer_handler))
    async with state.parallel(max_workers=1, retry=RetryPolicy(max_attempts=3, jitter=0)) as p:
        p.add(outer(Item(), "", state))
        results = await p.gather()
    assert results[0].ok and results[0].result == 1  # the nested event ran once
    assert inner_handler.calls == 1


async def test_callable_member_is_called_again() -> None:
    clock = ManualClock()
    state = make_state(clock)
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("reset")
        return "done"

    async with state.parallel(max_workers=2, retry=RetryPolicy(max_attempts=3, jitter=0)) as p:
        p.add(work, name="w")
        results = await p.gather()
    assert results[0].ok and results[0].result == "done" and calls == 3
    assert results[0].attempts == 3 and results[0].name == "w"


async def test_callable_returning_an_event_call_is_retried_once_inside_the_event() -> None:
    clock = ManualClock()
    state = make_state(clock)
    handler = Flaky(failures=2)
    event = ExecutionEvent(actor=flaky_tool(handler))
    made = 0

    def factory() -> Any:
        nonlocal made
        made += 1
        return event(Item(), "", state)

    async with state.parallel(max_workers=2, retry=RetryPolicy(max_attempts=4, jitter=0)) as p:
        p.add(factory)
        results = await p.gather()
    assert results[0].ok and results[0].attempts == 3
    assert handler.calls == 3 and made == 1  # retried inside the event, not by re-calling


async def test_bare_coroutine_member_with_retries_is_rejected_but_event_call_is_not() -> None:
    clock = ManualClock()
    state = make_state(clock)

    async def plain() -> int:
        return 1

    handler = Flaky(failures=1)
    event = ExecutionEvent(actor=flaky_tool(handler))
    async with state.parallel(max_workers=2, retry=RetryPolicy(max_attempts=2, jitter=0)) as p:
        with pytest.raises(RetryPolicyError, match="bare coroutine"):
            p.add(plain())
        p.add(event(Item(), "", state))
        results = await p.gather()
    assert len(results) == 1 and results[0].ok and results[0].attempts == 2


class GatedClock(ManualClock):
    """Sleeps wait until the test opens the gate (so a backoff lasts until we say so)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await self.gate.wait()
        await super().sleep(seconds)


def fails_once(order: list[str] | None = None) -> Callable[[], Awaitable[str]]:
    """A member whose first attempt fails (a transient error) and whose next returns
    ``"first"``; each attempt noted in ``order`` as ``first#N``."""
    calls = 0

    async def first() -> str:
        nonlocal calls
        calls += 1
        if order is not None:
            order.append(f"first#{calls}")
        if calls == 1:
            raise ConnectionError("transient")
        return "first"

    return first


@pytest.mark.parametrize("global_limit", [None, 1])
async def test_backoff_holds_no_worker_slot(global_limit: int | None, recorder: Recorder) -> None:
    clock = GatedClock()
    state = make_state(clock, recorder, global_max_workers=global_limit)
    order: list[str] = []
    first = fails_once(order)

    async def second() -> str:
        order.append("second")
        clock.gate.set()  # only now may the backoff end: second ran during it
        return "second"

    async with state.parallel(max_workers=1, retry=RetryPolicy(max_attempts=2, jitter=0)) as p:
        p.add(first, name="first")
        p.add(second, name="second")
        results = await asyncio.wait_for(p.gather(), timeout=10)
    assert [r.result for r in results] == ["first", "second"]
    assert order == ["first#1", "second", "first#2"]
    assert p.statistics().concurrency_high_water == 1
    await state.event_bus.drain()
    # "first" waited (its backoff) and is announced once, however many attempts it took;
    # "second" never suspended, so only its finish was published.
    starts = [r.index for r in recorder.records if isinstance(r, MemberStarted)]
    assert starts == [0]


@pytest.mark.parametrize("global_limit", [None, 1])
async def test_a_member_in_its_backoff_is_not_counted_running(
    global_limit: int | None, recorder: Recorder
) -> None:
    # "running" is the members holding a worker: one in its backoff lent its slot (running
    # counted it with the member that took the slot: 2 with max_workers=1).
    clock = GatedClock()
    state = make_state(clock, recorder, global_max_workers=global_limit)
    seen: list[tuple[int, int, int, int]] = []
    first = fails_once()

    async def second() -> str:
        await clock.sleeping.wait()  # (first is in its backoff, its slot lent to us)
        metrics, stats = p.metrics(), p.statistics()
        seen.append((metrics.running, metrics.queued, stats.running, stats.queued))
        clock.gate.set()
        return "second"

    async with state.parallel(max_workers=1, retry=RetryPolicy(max_attempts=2, jitter=0)) as p:
        p.add(first, name="first")
        p.add(second, name="second")
        results = await asyncio.wait_for(p.gather(), timeout=10)
    assert [r.result for r in results] == ["first", "second"]
    assert seen == [(1, 0, 1, 0)]
    assert (p.statistics().running, p.metrics().running) == (0, 0)


def test_policy_validation_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
    with pytest.raises(ConfigurationError, match="retry_on"):
        RetryPolicy(retry_on=("ValueError",))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="deadline"):
        RetryPolicy(deadline=0)


async def _not_ready(value: Any, wanted: Any = "ready") -> bool:
    return bool(value != wanted)


async def _not_ready_stream(value: Any) -> Any:
    yield value


class _AsyncJudge:
    async def __call__(self, value: Any) -> bool:
        return False

    async def judge(self, value: Any) -> bool:
        return False


class _Judge:
    def __call__(self, value: Any) -> bool:
        return False


ASYNC_PREDICATES: dict[str, Any] = {
    "async def": _not_ready,
    "partial of an async def": functools.partial(_not_ready, wanted="done"),
    "partial of a partial": functools.partial(functools.partial(_not_ready), wanted="done"),
    "async method": _AsyncJudge().judge,
    "async __call__": _AsyncJudge(),
    "partial of an async __call__": functools.partial(_AsyncJudge()),
    "async generator": _not_ready_stream,
}


@pytest.mark.parametrize("predicate", ASYNC_PREDICATES.values(), ids=list(ASYNC_PREDICATES))
def test_an_async_result_predicate_is_refused_when_the_policy_is_made(predicate: Any) -> None:
    # Called and never awaited, its coroutine would be true for every result (every call run
    # max_attempts times) and never awaited.
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(retry_if_result=predicate)
    message = str(info.value)
    assert "RetryPolicy.retry_if_result must be a plain function" in message
    assert "async" in message and "not awaited" in message


@pytest.mark.parametrize(
    "predicate",
    [lambda value: value is None, bool, functools.partial(max, 0), _Judge(), _Judge().__call__],
)
def test_a_plain_result_predicate_is_taken(predicate: Any) -> None:
    assert RetryPolicy(retry_if_result=predicate).retry_if_result is predicate


async def test_a_plain_predicate_returning_a_coroutine_fails_the_call_with_a_clear_error() -> None:
    # (lambda value: is_not_ready(value)) cannot be told from a plain function when the
    # policy is made; its coroutine was true for every result, each call made max_attempts
    # times and the coroutines never awaited.
    clock = ManualClock()
    state = make_state(clock)
    handler = Flaky(failures=0)
    policy = RetryPolicy(max_attempts=5, jitter=0, retry_if_result=lambda v: _not_ready(v))
    result = await ExecutionEvent(actor=flaky_tool(handler), retry=policy)(Item(), "", state)
    assert handler.calls == 1
    assert result.status is ResultStatus.FAILED
    assert isinstance(result.exception, ConfigurationError)
    assert "retry_if_result returned coroutine, an awaitable" in (result.error or "")


def test_a_result_predicate_that_cannot_be_called_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"retry_if_result must be callable, got 3"):
        RetryPolicy(retry_if_result=3)  # type: ignore[arg-type]


def test_a_non_policy_value_is_a_clear_error_where_it_is_given() -> None:
    # Refused as it is given (the event, the actor, the state, the group, the member), not
    # when a call first needs it.
    with pytest.raises(ConfigurationError, match=r"retry must be a RetryPolicy.*got 3"):
        ExecutionEvent(actor=flaky_tool(Flaky(0)), retry=3)
    with pytest.raises(ActorDefinitionError, match="circuit_breaker must be a CircuitBreaker"):
        Tool(name="t", input_model=Item, handler=_noop, circuit_breaker="open")
    with pytest.raises(ConfigurationError, match="retry must be a RetryPolicy"):
        ExecutionState(retry=3)  # type: ignore[arg-type]


async def _one() -> int:
    return 1


async def _noop(input: Item, context: str, state: ExecutionState) -> None:
    return None


async def test_a_member_retry_that_is_not_a_policy_is_refused_by_add() -> None:
    state = make_state(ManualClock())
    async with asyncio.timeout(5), state.parallel() as p:
        with pytest.raises(ConfigurationError, match=r"retry must be a RetryPolicy.*got 5"):
            p.add(_one, retry=5)  # type: ignore[arg-type]
    assert p.total == 0


@given(
    initial=st.floats(0, 5),
    multiplier=st.floats(1, 4),
    max_delay=st.floats(0, 60),
    jitter=st.floats(0, 2),
    attempt=st.integers(1, 30),
)
def test_backoff_stays_within_bounds(
    initial: float, multiplier: float, max_delay: float, jitter: float, attempt: int
) -> None:
    policy = RetryPolicy(
        initial_delay=initial, multiplier=multiplier, max_delay=max_delay, jitter=jitter
    )
    base = min(initial * multiplier ** (attempt - 1), max_delay)
    delay = policy.backoff(attempt)
    # The jitter comes on top of the cap (callers that all reached it must not retry at once).
    assert 0 <= delay <= max_delay + jitter + 1e-9
    assert base - 1e-9 <= delay <= base + jitter + 1e-9


def test_jitter_still_spreads_waits_that_reached_the_cap() -> None:
    # min(exponential + jitter, max_delay) made every capped wait exactly max_delay.
    policy = RetryPolicy(max_attempts=10, initial_delay=1, multiplier=2, max_delay=4, jitter=1)
    waits = {policy.backoff(6) for _ in range(20)}
    assert len(waits) > 1 and all(4 <= w <= 5 for w in waits)


async def test_each_call_gets_fresh_retry_state() -> None:
    clock = ManualClock()
    state = make_state(clock)
    policy = RetryPolicy(max_attempts=3, jitter=0, initial_delay=1)
    handlers = [Flaky(failures=2) for _ in range(4)]
    events = [ExecutionEvent(actor=flaky_tool(h), retry=policy) for h in handlers]
    results = await asyncio.gather(*(e(Item(), "", state) for e in events))
    assert all(r.ok and r.attempts == 3 for r in results)
    assert [h.calls for h in handlers] == [3, 3, 3, 3]


@pytest.mark.parametrize("outer_retry", [None, 2])
async def test_a_call_reports_its_own_attempts_not_a_nested_calls(outer_retry: int | None) -> None:
    """The inner call gives up after 3 attempts; the outer handler re-raises its exception."""
    state = ExecutionState(clock=ManualClock())
    inner = Tool(
        name="inner",
        description="always fails",
        input_model=Item,
        handler=Flaky(failures=99),
        retry=RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0),
    )

    async def outer_handler(input: Item, context: str, state: ExecutionState) -> int:
        result = await ExecutionEvent(actor=inner)(input, context, state)
        assert result.attempts == 3
        assert result.exception is not None
        raise result.exception

    outer = Tool(
        name="outer",
        description="re-raises the inner failure",
        input_model=Item,
        handler=outer_handler,
        retry=RetryPolicy(max_attempts=outer_retry, initial_delay=0.1, jitter=0)
        if outer_retry
        else None,
    )
    result = await ExecutionEvent(actor=outer)(Item(), "", state)
    assert not result.ok
    assert result.attempts == (outer_retry or 1)

    async with state.parallel(name="g") as p:
        p.add(ExecutionEvent(actor=outer)(Item(), "", state))
        p.add(lambda: ExecutionEvent(actor=outer)(Item(), "", state))
    assert [r.attempts for r in await p.gather()] == [outer_retry or 1] * 2


async def test_a_reply_of_the_wrong_shape_is_retried_like_any_failure() -> None:
    # The output was validated after the retry loop: a malformed structured reply (the
    # typical case for a retry with an LLM) failed the call at once, whatever the policy.
    from rh_agents.core.actors import LLM
    from rh_agents.errors import ActorOutputError

    class Score(BaseModel):
        score: int

    replies = iter([{"score": "high"}, {"score": 7}])

    async def answer(input: Item, context: str, state: ExecutionState) -> Any:
        return next(replies)

    llm = LLM(name="judge", input_model=Item, output_model=Score, handler=answer)
    state = make_state(ManualClock())
    retry = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0, retry_on=(ActorOutputError,))
    result = await ExecutionEvent(actor=llm, retry=retry)(Item(), "", state)
    assert result.ok and result.result == Score(score=7) and result.attempts == 2


async def test_a_retried_event_timeout_is_named_in_each_retry_record(recorder: Recorder) -> None:
    # The bare TimeoutError of the event's deadline said nothing in the retry records; each
    # now says what the call's result says. A TimeoutError the handler raises itself stays.
    bus = EventBus()
    bus.subscribe(recorder)
    state = ExecutionState(event_bus=bus)
    calls = 0

    async def slow_then_quick(input: Item, context: str, state: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # past the deadline
        if calls == 2:
            raise TimeoutError("the service said: try later")
        return calls

    event = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=slow_then_quick),
        timeout=0.05,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0),
    )
    result = await event(Item(), "", state)
    await bus.drain()
    assert result.ok and result.result == 3
    retries = [r for r in recorder.records if isinstance(r, EventRetrying)]
    assert [(r.error_type, r.error) for r in retries] == [
        ("ParallelTimeoutError", "ParallelTimeoutError: tool 'svc' at svc timed out after 0.05s; "
         "raise the event's timeout or make the call faster"),
        ("TimeoutError", "TimeoutError: the service said: try later"),
    ]  # fmt: skip
