"""ExecutionHistory: entries by address, and a group's entries by member index."""

from __future__ import annotations

from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState


class Item(BaseModel):
    n: int


async def double(input: Item, context: str, state: ExecutionState) -> int:
    return input.n * 2


twice = Tool(name="twice", input_model=Item, handler=double)


async def test_get_group_orders_by_member_index_including_nested_entries(
    state: ExecutionState,
) -> None:
    async def fan(input: Item, context: str, state: ExecutionState) -> int:
        async with state.parallel(max_workers=2, name="inner") as p:
            p.add(ExecutionEvent(actor=twice)(input, "", state))
            p.add(ExecutionEvent(actor=twice)(input, "", state))
        return input.n

    fan_agent = Agent(name="fan", input_model=Item, handler=fan)
    async with state.parallel(max_workers=4, name="outer") as p:
        for n in range(12):
            p.add(ExecutionEvent(actor=fan_agent)(Item(n=n), "", state))
    entries = state.history.get_group("outer")
    assert len(entries) == 12 * 3
    member_order = [e.address.split("]", 1)[0] for e in entries]
    assert member_order == [f"outer[{n}" for n in range(12) for _ in range(3)]
    assert [e.address for e in entries[:3]] == [
        "outer[0]::fan",
        "outer[0]::fan::inner[0]::twice",
        "outer[0]::fan::inner[1]::twice",
    ]
    nested = state.history.get_group("outer[11]::fan::inner")
    assert [e.result.result for e in nested] == [22, 22]
    assert state.history.get_group("out") == []


async def test_history_is_iterable_and_sized(state: ExecutionState) -> None:
    await ExecutionEvent(actor=twice)(Item(n=1), "", state)
    await ExecutionEvent(actor=twice)(Item(n=2), "", state)
    assert len(state.history) == 2
    assert [e.result.result for e in state.history] == [2, 4]
    assert "twice#2" in state.history
    assert state.history.get("twice#3") is None
