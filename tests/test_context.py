"""Addresses live in a contextvars context: concurrent tasks never corrupt each other's path."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.context import current_frame
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventCompleted, EventStarted

if TYPE_CHECKING:
    from conftest import Recorder


class Job(BaseModel):
    name: str
    yields: list[int] = []


async def step_handler(input: Job, context: str, state: ExecutionState) -> str:
    """Report the address seen before and after a few suspensions; they must agree."""
    before = current_frame(state).address
    for _ in range(2):
        await asyncio.sleep(0)
    after = current_frame(state).address
    assert before == after
    return before


step = Tool(name="step", input_model=Job, handler=step_handler)


async def test_two_concurrent_agents_keep_their_own_addresses(
    state: ExecutionState, recorder: Recorder
) -> None:
    # Force the interleaving A1, B1, A2, B2 through events, not timing.
    a1, b1, a2 = asyncio.Event(), asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def agent_a(input: Job, context: str, state: ExecutionState) -> list[str]:
        first = await ExecutionEvent(actor=step)(input, "", state)
        order.append(first.unwrap())
        a1.set()
        await b1.wait()
        second = await ExecutionEvent(actor=step)(input, "", state)
        order.append(second.unwrap())
        a2.set()
        return [first.unwrap(), second.unwrap()]

    async def agent_b(input: Job, context: str, state: ExecutionState) -> list[str]:
        await a1.wait()
        first = await ExecutionEvent(actor=step)(input, "", state)
        order.append(first.unwrap())
        b1.set()
        await a2.wait()
        second = await ExecutionEvent(actor=step)(input, "", state)
        order.append(second.unwrap())
        return [first.unwrap(), second.unwrap()]

    a = Agent(name="A", input_model=Job, handler=agent_a)
    b = Agent(name="B", input_model=Job, handler=agent_b)
    ra, rb = await asyncio.gather(
        ExecutionEvent(actor=a)(Job(name="a"), "", state),
        ExecutionEvent(actor=b)(Job(name="b"), "", state),
    )
    assert ra.unwrap() == ["A::step", "A::step#2"]
    assert rb.unwrap() == ["B::step", "B::step#2"]
    assert order == ["A::step", "B::step", "A::step#2", "B::step#2"]
    assert current_frame(state) is state.root_frame  # nothing leaked into the caller
    await state.event_bus.drain()
    started = [r.address for r in recorder.records if isinstance(r, EventStarted)]
    completed = [r.address for r in recorder.records if isinstance(r, EventCompleted)]
    assert sorted(started) == sorted(completed)
    assert set(started) == {"A", "B", "A::step", "A::step#2", "B::step", "B::step#2"}


async def _tree_run() -> tuple[list[str], list[tuple[str, str]]]:
    bus = EventBus()
    records: list[tuple[str, str]] = []
    bus.subscribe(lambda r: records.append((r.kind, r.address)))
    state = ExecutionState(event_bus=bus)

    async def reader(input: Job, context: str, state: ExecutionState) -> str:
        await ExecutionEvent(actor=step)(input, "", state)
        return (await ExecutionEvent(actor=step)(input, "", state)).unwrap()

    reader_actor = Agent(name="reader", input_model=Job, handler=reader)

    async def orchestrate(input: Job, context: str, state: ExecutionState) -> None:
        async with state.parallel(max_workers=2, name="docs") as p:
            for i in range(4):
                p.add(ExecutionEvent(actor=reader_actor)(Job(name=str(i)), "", state))
        await ExecutionEvent(actor=step)(input, "", state)

    orchestrator = Agent(name="Orchestrator", input_model=Job, handler=orchestrate)
    await asyncio.gather(
        ExecutionEvent(actor=orchestrator)(Job(name="x"), "", state),
        ExecutionEvent(actor=orchestrator)(Job(name="y"), "", state),
    )
    await bus.close()
    return sorted(state.history.addresses()), sorted(records)


async def test_addresses_are_identical_across_two_runs() -> None:
    first = await _tree_run()
    second = await _tree_run()
    assert first == second
    addresses = first[0]
    assert "Orchestrator::docs[3]::reader::step#2" in addresses
    assert "Orchestrator#2::docs[0]::reader::step" in addresses
    assert "Orchestrator#2::step" in addresses
    assert len(addresses) == 2 * (1 + 4 * 3 + 1)


async def test_group_members_carry_group_metadata_however_deep(
    state: ExecutionState, recorder: Recorder
) -> None:
    async def leaf(input: Job, context: str, state: ExecutionState) -> str:
        return current_frame(state).address

    leaf_tool = Tool(name="leaf", input_model=Job, handler=leaf)

    async def middle(input: Job, context: str, state: ExecutionState) -> str:
        return (await ExecutionEvent(actor=leaf_tool)(input, "", state)).unwrap()

    middle_agent = Agent(name="middle", input_model=Job, handler=middle)

    async def reader(input: Job, context: str, state: ExecutionState) -> str:
        inner = await ExecutionEvent(actor=middle_agent)(input, "", state)
        async with state.parallel(max_workers=2, name="parts") as p:
            p.add(ExecutionEvent(actor=leaf_tool)(input, "", state))
            p.add(ExecutionEvent(actor=leaf_tool)(input, "", state))
        return inner.unwrap()

    reader_agent = Agent(name="reader", input_model=Job, handler=reader)
    async with state.parallel(max_workers=3, name="docs") as p:
        for i in range(3):
            p.add(ExecutionEvent(actor=reader_agent)(Job(name=str(i)), "", state))
        results = await p.gather()

    assert [r.unwrap() for r in results] == [f"docs[{i}]::reader::middle::leaf" for i in range(3)]
    for i in range(3):
        deep = state.history[f"docs[{i}]::reader::middle::leaf"].event
        assert (deep.group_id, deep.parallel_index, deep.is_parallel) == ("docs", i, True)
        for j in range(2):
            nested = state.history[f"docs[{i}]::reader::parts[{j}]::leaf"].event
            assert nested.group_id == f"docs[{i}]::reader::parts"
            assert nested.parallel_index == j and nested.is_parallel
    await state.event_bus.drain()
    for record in recorder.records:
        if not isinstance(record, EventStarted | EventCompleted):
            continue
        assert record.is_parallel is True
        top = int(record.address.split("]", 1)[0].removeprefix("docs["))
        if "::parts[" in record.address:
            assert record.group_id == f"docs[{top}]::reader::parts"
        else:
            assert (record.group_id, record.parallel_index) == ("docs", top)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_any_interleaving_gives_each_task_its_own_numbering(plan: list[list[int]]) -> None:
    """Each worker makes len(calls) calls, suspending a drawn number of times in between."""

    async def worker(input: Job, context: str, state: ExecutionState) -> list[str]:
        seen = []
        for pauses in input.yields:
            for _ in range(pauses):
                await asyncio.sleep(0)
            seen.append((await ExecutionEvent(actor=step)(input, "", state)).unwrap())
        return seen

    actor = Agent(name="worker", input_model=Job, handler=worker)

    async def run() -> list[list[str]]:
        state = ExecutionState()
        results = await asyncio.gather(
            *(
                ExecutionEvent(actor=actor)(Job(name=str(i), yields=calls), "", state)
                for i, calls in enumerate(plan)
            )
        )
        return [r.unwrap() for r in results]

    seen = asyncio.run(run())
    for i, (calls, addresses) in enumerate(zip(plan, seen, strict=True)):
        root = "worker" if i == 0 else f"worker#{i + 1}"
        expected = [f"{root}::step"] + [f"{root}::step#{n}" for n in range(2, len(calls) + 1)]
        assert addresses == expected
