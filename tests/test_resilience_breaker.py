"""Circuit breakers: the state machine on a manual clock, sharing by key, bus records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from conftest import Recorder
from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import CircuitStateChanged
from rh_agents.errors import CircuitOpenError, ConfigurationError
from rh_agents.resilience import CircuitBreaker, RetryPolicy
from rh_agents.resilience.breaker import Circuit
from rh_agents.testing import ManualClock


class Item(BaseModel):
    n: int = 0


class Switch:
    """A handler that fails while ``failing`` is set; counts its calls."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0
        self.release: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, input: Item, context: str, state: Any) -> int:
        self.calls += 1
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        if self.failing:
            raise ConnectionError("down")
        return input.n


def make(recorder: Recorder | None = None, **breaker: Any) -> tuple[ExecutionState, ManualClock]:
    clock = ManualClock()
    bus = EventBus()
    if recorder is not None:
        bus.subscribe(recorder)
    return ExecutionState(event_bus=bus, clock=clock), clock


async def test_opens_after_consecutive_failures_and_refuses_without_calling(
    recorder: Recorder,
) -> None:
    state, _ = make(recorder)
    handler = Switch()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10)
    event = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=handler, circuit_breaker=breaker)
    )
    for _ in range(3):
        assert not (await event(Item(), "", state)).ok
    assert state.breakers["svc"].state == "open" and handler.calls == 3
    refused = await event(Item(), "", state)
    assert not refused.ok and isinstance(refused.exception, CircuitOpenError)
    assert refused.exception.retry_after == pytest.approx(10)
    assert handler.calls == 3  # the handler was not called
    await state.event_bus.drain()
    changes = [r for r in recorder.records if isinstance(r, CircuitStateChanged)]
    assert [(c.key, c.old_state, c.new_state, c.failures) for c in changes] == [
        ("svc", "closed", "open", 3)
    ]


async def test_success_resets_the_consecutive_count() -> None:
    state, _ = make()
    handler = Switch()
    event = ExecutionEvent(
        actor=Tool(
            name="svc",
            input_model=Item,
            handler=handler,
            circuit_breaker=CircuitBreaker(failure_threshold=2),
        )
    )
    for failing in (True, False, True, False, True):
        handler.failing = failing
        await event(Item(), "", state)
    assert state.breakers["svc"].state == "closed"


async def test_half_open_lets_probes_through_then_closes_or_reopens(recorder: Recorder) -> None:
    state, clock = make(recorder)
    handler = Switch()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, half_open_max_calls=1)
    event = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=handler, circuit_breaker=breaker)
    )
    await event(Item(), "", state)  # opens
    clock.advance(5)
    # Probe fails: open again for another cool-down.
    assert not (await event(Item(), "", state)).ok and handler.calls == 2
    assert state.breakers["svc"].state == "open"
    refused = await event(Item(), "", state)
    assert isinstance(refused.exception, CircuitOpenError) and handler.calls == 2
    clock.advance(5)
    # Two concurrent calls in half-open: one probe goes through, the other is refused.
    handler.failing = False
    handler.release = asyncio.Event()
    handler.entered.clear()
    probe = asyncio.ensure_future(event(Item(n=1), "", state))
    await handler.entered.wait()
    assert state.breakers["svc"].state == "half_open"
    second = await event(Item(n=2), "", state)
    assert isinstance(second.exception, CircuitOpenError) and handler.calls == 3
    handler.release.set()
    assert (await probe).ok
    assert state.breakers["svc"].state == "closed"
    await state.event_bus.drain()
    moves = [
        (c.old_state, c.new_state) for c in recorder.records if isinstance(c, CircuitStateChanged)
    ]
    assert moves == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_shared_by_key_across_groups_and_set_at_group_level() -> None:
    state, _ = make()
    handler = Switch()
    event = ExecutionEvent(actor=Tool(name="svc", input_model=Item, handler=handler))
    breaker = CircuitBreaker(failure_threshold=2, cooldown=60)
    async with state.parallel(max_workers=1, circuit_breaker=breaker, name="a") as p:
        for _ in range(2):
            p.add(event(Item(), "", state))
    async with state.parallel(max_workers=1, circuit_breaker=breaker, name="b") as p:
        for _ in range(3):
            p.add(event(Item(), "", state))
        results = await p.gather()
    assert handler.calls == 2  # group b never reached the service
    assert all(isinstance(r.exception, CircuitOpenError) for r in results)
    assert list(state.breakers) == ["svc"]


async def test_callable_members_use_the_group_key_and_retries_wait_for_half_open() -> None:
    state, _ = make()
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("down")
        return "up"

    breaker = CircuitBreaker(failure_threshold=2, cooldown=30, key="backend")
    retry = RetryPolicy(max_attempts=4, initial_delay=1, jitter=0)
    async with state.parallel(max_workers=1, circuit_breaker=breaker, retry=retry) as p:
        p.add(work)
        results = await p.gather()
    # Fails twice (opens), the third attempt is refused and waits the cool-down it was
    # told (Retry-After), then the half-open probe succeeds.
    assert results[0].ok and results[0].result == "up" and calls == 3
    assert state.breakers["backend"].state == "closed"


async def test_configuration_errors_do_not_count_as_failures() -> None:
    state, _ = make()

    async def misconfigured(input: Item, context: str, st: Any) -> int:
        raise ConfigurationError("bad model name")

    event = ExecutionEvent(
        actor=Tool(
            name="svc",
            input_model=Item,
            handler=misconfigured,
            circuit_breaker=CircuitBreaker(failure_threshold=1),
        )
    )
    for _ in range(3):
        result = await event(Item(), "", state)
        assert isinstance(result.exception, ConfigurationError)
    assert state.breakers["svc"].state == "closed"


def test_cancelled_probe_frees_its_place() -> None:
    clock = ManualClock()
    circuit = Circuit("k", CircuitBreaker(failure_threshold=1, cooldown=1), clock)
    circuit.acquire()
    circuit.release(ConnectionError())
    clock.advance(1)
    circuit.acquire()  # the probe
    with pytest.raises(CircuitOpenError):
        circuit.acquire()
    circuit.release(None, finished=False)  # cancelled: no verdict
    assert circuit.state == "half_open"
    circuit.acquire()  # a new probe may go


def test_validation() -> None:
    with pytest.raises(ConfigurationError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ConfigurationError, match="cooldown"):
        CircuitBreaker(cooldown=-1)
    with pytest.raises(ConfigurationError, match="half_open_max_calls"):
        CircuitBreaker(half_open_max_calls=0)


async def test_state_level_breaker_applies_when_nothing_nearer_does() -> None:
    clock = ManualClock()
    state = ExecutionState(clock=clock, circuit_breaker=CircuitBreaker(failure_threshold=1))
    handler = Switch()
    event = ExecutionEvent(actor=Tool(name="svc", input_model=Item, handler=handler))
    await event(Item(), "", state)
    refused = await event(Item(), "", state)
    assert isinstance(refused.exception, CircuitOpenError) and handler.calls == 1
    # A nearer policy wins: this event's own breaker is a separate, closed circuit.
    own = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=handler),
        circuit_breaker=CircuitBreaker(failure_threshold=5, key="own"),
    )
    assert not isinstance((await own(Item(), "", state)).exception, CircuitOpenError)
    assert state.breakers["own"].state == "closed" and handler.calls == 2


def test_a_call_let_through_before_the_circuit_opened_does_not_close_it() -> None:
    # A slow call admitted while closed, succeeding after two fast failures opened the
    # circuit, closed it again in the middle of its cool-down.
    clock = ManualClock()
    circuit = Circuit("k", CircuitBreaker(failure_threshold=2, cooldown=5), clock)
    for _ in range(3):
        circuit.acquire()  # the slow one first, then two that fail fast
    circuit.release(ConnectionError())
    circuit.release(ConnectionError())
    assert circuit.state == "open"
    circuit.release(None)  # the slow one succeeds, late
    assert circuit.state == "open"
    with pytest.raises(CircuitOpenError):
        circuit.acquire()
    clock.advance(5)
    circuit.acquire()  # the probe decides
    circuit.release(None)
    assert circuit.state == "closed"


def test_bad_input_of_a_nested_call_is_not_a_failure_of_the_dependency() -> None:
    from rh_agents.errors import ActorInputError

    assert not CircuitBreaker().counts(ActorInputError("bad input"))
    assert CircuitBreaker().counts(ConnectionError("down"))


def test_a_straggler_ending_while_a_probe_is_out_neither_closes_nor_fails_the_circuit() -> None:
    # A call let through while closed, ending during the half-open probe, closed the circuit
    # (by succeeding) or counted as the failed probe and freed the real probe's place.
    clock = ManualClock()
    circuit = Circuit("k", CircuitBreaker(failure_threshold=1, cooldown=10), clock)
    circuit.acquire()
    straggler = circuit.epoch  # a slow call, let through while closed
    circuit.acquire()
    failing = circuit.epoch
    circuit.release(ConnectionError("down"), epoch=failing)
    assert circuit.state.value == "open"
    clock.advance(11)
    circuit.acquire()  # the probe
    probe = circuit.epoch
    assert circuit.state.value == "half_open"
    for outcome in (None, ConnectionError("late")):
        assert circuit.release(outcome, epoch=straggler) is None
        assert circuit.state.value == "half_open"
        with pytest.raises(CircuitOpenError):
            circuit.acquire()  # the probe's place is still taken
    assert circuit.release(None, epoch=probe) == ("half_open", "closed", 0)


def test_an_open_circuit_reads_half_open_once_its_cooldown_has_passed() -> None:
    clock = ManualClock()
    circuit = Circuit("k", CircuitBreaker(failure_threshold=1, cooldown=10), clock)
    circuit.acquire()
    circuit.release(ConnectionError("down"), epoch=circuit.epoch)
    clock.advance(9.5)
    assert circuit.state.value == "open"
    clock.advance(1)
    assert circuit.state.value == "half_open"  # before any call asks
    assert circuit.acquire() == ("open", "half_open", 1)


class _Abort(BaseException):
    """Not an Exception: what KeyboardInterrupt or a test framework's failure is."""


async def test_a_probe_that_raised_a_base_exception_frees_its_place() -> None:
    # The probe's place was released only for an Exception or a cancellation: after a
    # KeyboardInterrupt-like exit every later call was refused, half-open for ever.
    state, clock = make()
    mode = ["fail"]

    async def handler(input: Item, context: str, state: ExecutionState) -> int:
        if mode[0] == "fail":
            raise ConnectionError("down")
        if mode[0] == "abort":
            raise _Abort("stop")
        return input.n

    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, half_open_max_calls=1)
    event = ExecutionEvent(
        actor=Tool(name="svc", input_model=Item, handler=handler, circuit_breaker=breaker)
    )
    await event(Item(), "", state)  # opens
    clock.advance(5)
    mode[0] = "abort"
    with pytest.raises(_Abort):
        await event(Item(), "", state)  # the probe: not judged, but its place is free again
    mode[0] = "ok"
    result = await event(Item(n=7), "", state)
    assert result.ok and result.result == 7
    assert state.breakers["svc"].state == "closed"


def test_an_error_outside_failure_on_neither_counts_nor_resets_the_count() -> None:
    circuit = Circuit(
        "k", CircuitBreaker(failure_threshold=3, failure_on=(ConnectionError,)), ManualClock()
    )
    for error in (ConnectionError(), ConnectionError(), ValueError(), ConnectionError()):
        circuit.acquire()
        circuit.release(error)
    assert circuit.state == "open"


async def test_a_later_breaker_with_other_settings_shares_the_first_ones_circuit() -> None:
    state, _ = make()
    handler = Switch()
    tool = Tool(name="svc", input_model=Item, handler=handler)
    first = ExecutionEvent(actor=tool, circuit_breaker=CircuitBreaker(failure_threshold=1))
    later = ExecutionEvent(actor=tool, circuit_breaker=CircuitBreaker(failure_threshold=9))
    await first(Item(), "", state)
    refused = await later(Item(), "", state)
    assert isinstance(refused.exception, CircuitOpenError) and handler.calls == 1
    assert state.breakers["svc"].policy.failure_threshold == 1
