"""ExecutionState outside parallel groups: defaults, hooks, lifetime."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.clock import Clock, SystemClock
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent


class Ping(BaseModel):
    n: int


async def pong(input: Ping, context: str, state: ExecutionState) -> str:
    state.store[f"seen{input.n}"] = context
    return f"pong {input.n}"


ponger = Tool(name="pong", input_model=Ping, handler=pong)


class StepClock:
    """A fake clock: every reading is one second after the previous one."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        self.t += 1.0
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def test_defaults() -> None:
    state = ExecutionState()
    assert isinstance(state.event_bus, EventBus)
    assert isinstance(state.clock, SystemClock) and isinstance(state.clock, Clock)
    assert state.global_max_workers is None
    assert state.root_frame.address == "" and state.root_frame.state is state
    assert ExecutionState(global_max_workers=3).global_max_workers == 3


async def test_context_reaches_the_handler_and_the_store_is_shared() -> None:
    state = ExecutionState()
    await ExecutionEvent(actor=ponger)(Ping(n=1), "ctx", state)
    assert state.store == {"seen1": "ctx"}


async def test_injected_clock_times_the_call() -> None:
    state = ExecutionState(clock=StepClock())
    result = await ExecutionEvent(actor=ponger)(Ping(n=1), "", state)
    assert result.execution_time == 1.0  # one reading before, one after


async def test_on_event_finished_hook_sees_every_call() -> None:
    seen: list[tuple[str, bool]] = []

    class Recording(ExecutionState):
        async def on_event_finished(self, address, actor, validated, result):  # type: ignore[no-untyped-def]
            seen.append((address, result.ok))

    state = Recording()
    await ExecutionEvent(actor=ponger)(Ping(n=1), "", state)
    await ExecutionEvent(actor=ponger)({"n": "x"}, "", state)
    assert seen == [("pong", True), ("pong#2", False)]


async def test_async_with_closes_the_bus_after_delivering_everything() -> None:
    bus = EventBus()
    got: list[BusEvent] = []

    async def slow(record: BusEvent) -> None:
        await asyncio.sleep(0)
        got.append(record)

    bus.subscribe(slow)
    async with ExecutionState(event_bus=bus) as state:
        await ExecutionEvent(actor=ponger)(Ping(n=1), "", state)
    assert [r.kind for r in got] == ["event.started", "event.completed"]
    assert [r async for r in bus.stream()] == []  # closed


def test_event_hooks_are_skipped_only_when_nothing_would_run() -> None:
    assert not ExecutionState().has_event_hooks

    class Hooked(ExecutionState):
        def recovered_result(self, address, actor, input=None):  # type: ignore[no-untyped-def]
            return None

    assert Hooked().has_event_hooks  # a subclass's own hook always runs
