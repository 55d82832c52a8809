"""An event call is a value: it says what it calls, and asyncio takes it as a coroutine."""

from __future__ import annotations

import asyncio
import gc

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.event_call import EventCall
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]


class Doc(BaseModel):
    text: str


calls: list[str] = []


async def shout(doc: Doc, context: str, state: ExecutionState) -> str:
    calls.append(doc.text)
    await asyncio.sleep(0)
    return doc.text.upper() + context


shout_tool = Tool(name="shout", description="upper-cases", input_model=Doc, handler=shout)
event = ExecutionEvent(actor=shout_tool)


async def test_a_call_exposes_what_it_calls_and_runs_only_when_awaited() -> None:
    state = ExecutionState()
    calls.clear()
    call = event(Doc(text="a"), "!", state)
    assert isinstance(call, EventCall)
    assert (call.event, call.input, call.context, call.state) == (event, Doc(text="a"), "!", state)
    assert not call.started and calls == []
    result = await call
    assert result.result == "A!" and call.started and calls == ["a"]
    with pytest.raises(RuntimeError, match="already awaited"):
        await call


async def test_asyncio_takes_a_call_as_a_coroutine() -> None:
    state = ExecutionState()
    call = event(Doc(text="t"), "", state)
    assert asyncio.iscoroutine(call)
    task = asyncio.create_task(call)
    assert (await task).result == "T"
    gathered = await asyncio.gather(
        event(Doc(text="g"), "", state), event(Doc(text="h"), "", state)
    )
    assert [r.result for r in gathered] == ["G", "H"]
    waited = await asyncio.wait_for(event(Doc(text="w"), "", state), timeout=5)
    assert waited.result == "W"


async def test_a_task_of_a_call_can_be_cancelled() -> None:
    state = ExecutionState()

    async def hang(doc: Doc, context: str, state: ExecutionState) -> str:
        await asyncio.Event().wait()
        return ""

    hanging = ExecutionEvent(actor=Tool(name="hang", description="", input_model=Doc, handler=hang))
    task = asyncio.create_task(hanging(Doc(text="x"), "", state))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_dropped_call_warns_like_a_coroutine_and_a_closed_one_does_not() -> None:
    state = ExecutionState()
    closed = event(Doc(text="c"), "", state)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.send(None)
    del closed
    with pytest.warns(RuntimeWarning, match="'shout' was never awaited"):
        event(Doc(text="d"), "", state)
        gc.collect()


async def test_a_group_reads_the_call_and_closes_what_never_started() -> None:
    state = ExecutionState()
    calls.clear()
    with pytest.raises(KeyError):
        async with state.parallel(max_workers=1) as p:
            p.add(event(Doc(text="1"), "", state))
            p.add(event(Doc(text="2"), "", state))  # never starts: closed, no warning
            raise KeyError("leave")
    assert calls == []
