"""Context variables and members: each member runs as a task of its own would.

A member sees the context variables as they were when it was added (the block's, usually),
never a value another member set, and never changes the block's: what ``asyncio.gather`` and
``TaskGroup.create_task`` give, though the group runs members on shared worker tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.resilience import RetryPolicy


class Empty(BaseModel):
    pass


request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def make_state() -> ExecutionState:
    return ExecutionState(watchdog=None)


@pytest.mark.parametrize("suspend", [False, True])
async def test_a_value_one_member_sets_never_reaches_another(suspend: bool) -> None:
    async def handle(i: int) -> str | None:
        seen = request_id.get()
        request_id.set(f"req-{i}")  # e.g. a logging library binding the request id
        if suspend:
            await asyncio.sleep(0)
        return seen

    state = make_state()
    async with state.parallel(max_workers=1) as p:
        for i in range(4):
            p.add(lambda i=i: handle(i))
        results = await p.gather()
    assert [r.result for r in results] == [None] * 4
    assert request_id.get() is None  # nor the block's


@pytest.mark.parametrize(
    "form",
    ["coroutine", "callable", "named", "with_options", "event"],
)
async def test_a_member_sees_the_values_of_its_add(form: str) -> None:
    async def read() -> str | None:
        await asyncio.sleep(0)
        return request_id.get()

    async def handler(input: Empty, context: str, state: Any) -> str | None:
        return await read()

    event = ExecutionEvent(actor=Tool(name="read", input_model=Empty, handler=handler))
    state = make_state()

    def add(p: Any, k: int) -> None:
        if form == "coroutine":
            p.add(read())
        elif form == "callable":
            p.add(read)
        elif form == "named":
            p.add(f"m{k}", read())
        elif form == "with_options":
            p.add(read, timeout=5, priority=k)
        else:
            p.add(event(Empty(), "", state))

    async with state.parallel(max_workers=2) as p:
        add(p, 0)
        token = request_id.set("set-before-the-second")
        add(p, 1)
        request_id.reset(token)
        add(p, 2)
        results = await p.gather()
    values = [r.result for r in results]
    assert values == [None, "set-before-the-second", None]
    assert all(r.ok for r in results)


async def test_members_added_from_another_task_see_that_tasks_values() -> None:
    async def read() -> str | None:
        return request_id.get()

    state = make_state()
    async with state.parallel(max_workers=2) as p:

        async def producer() -> None:
            request_id.set("producer")
            p.add(read)
            p.add(read)

        await asyncio.create_task(producer())
        p.add(read)
        results = await p.gather()
    assert [r.result for r in results] == ["producer", "producer", None]


async def test_a_member_with_its_own_values_keeps_its_address_retries_and_nested_groups() -> None:
    calls = 0

    async def flaky() -> tuple[str | None, list[Any]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("once")
        async with state.parallel(max_workers=1, name="inner") as inner:
            inner.add(asyncio.sleep(0, request_id.get()))
            nested = await inner.gather()
        return request_id.get(), [(r.result, r.address) for r in nested]

    state = make_state()
    async with state.parallel(
        max_workers=1, name="outer", retry=RetryPolicy(max_attempts=2, initial_delay=0)
    ) as p:
        request_id.set("mine")
        p.add(flaky)
        (result,) = await p.gather()
    assert result.ok, result.error
    assert result.attempts == 2
    assert result.result == ("mine", [("mine", "outer[0]::inner[0]")])
    assert result.address == "outer[0]"


async def test_a_member_with_its_own_values_is_cancelled_cleanly() -> None:
    started = asyncio.Event()
    cleaned: list[str | None] = []

    async def waits() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(request_id.get())

    state = make_state()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            async with state.parallel(max_workers=1, timeout=0.05) as p:
                request_id.set("mine")
                p.add(waits)
                results = await p.gather()
                assert results[0].status.value == "timed_out"
                raise TimeoutError  # (the group's own timeout ended it: checked above)
    assert started.is_set() and cleaned == ["mine"]
