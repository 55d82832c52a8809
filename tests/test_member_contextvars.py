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

from parallel_support import until
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
    async with asyncio.timeout(5), state.parallel(max_workers=1, timeout=0.05) as p:
        request_id.set("mine")
        p.add(waits)
        results = await p.gather()
    assert results[0].status.value == "timed_out"  # the group's own timeout ended it
    assert started.is_set() and cleaned == ["mine"]  # its cleanup ran in its own values


async def test_members_that_set_a_variable_without_waiting_all_run_on_few_workers() -> None:
    # decimal sets its own context variable on first use: on 3.12+ (eager workers) the
    # group hung once a worker retired for it; and each member then took a worker of its own.
    from decimal import Decimal

    async def third(i: int) -> str:
        return str(Decimal(i) / 3)

    state = make_state()
    tasks: set[asyncio.Task[Any]] = set()

    async def counted(i: int) -> str:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        return await third(i)

    async with state.parallel(max_workers=4) as p:
        for i in range(40):
            p.add(lambda i=i: counted(i))
        results = await asyncio.wait_for(p.gather(), 5)
    assert [r.result for r in results] == [str(Decimal(i) / 3) for i in range(40)]
    assert len(tasks) <= 4


class Ambiguous:
    """A value whose == cannot say (an array's): comparing contexts must not need it."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value of an array is ambiguous")

    __hash__ = object.__hash__


async def test_values_whose_equality_fails_neither_break_add_nor_the_workers() -> None:
    holder: contextvars.ContextVar[Any] = contextvars.ContextVar("holder", default=None)

    async def sets() -> str:
        holder.set(Ambiguous())
        return "set"

    async def reads() -> bool:
        await asyncio.sleep(0)
        return isinstance(holder.get(), Ambiguous)

    state = make_state()
    async with state.parallel(max_workers=1) as p:
        holder.set(Ambiguous())
        p.add(sets)
        holder.set(Ambiguous())
        p.add(reads)
        results = await asyncio.wait_for(p.gather(), 5)
    assert [r.result for r in results] == ["set", True]
    assert state.internal_errors == []


async def test_a_callable_member_calls_its_function_with_the_values_of_its_add() -> None:
    async def work(seen: str | None) -> tuple[str | None, str | None]:
        await asyncio.sleep(0)
        return seen, request_id.get()

    state = make_state()
    async with state.parallel(max_workers=1) as p:
        request_id.set("m1")
        p.add(lambda: work(request_id.get()))
        (result,) = await p.gather()
    assert result.result == ("m1", "m1")


async def test_a_member_with_its_own_values_counts_its_timeout_for_the_breaker() -> None:
    from rh_agents.resilience import CircuitBreaker

    state = make_state()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60, key="svc")
    async with state.parallel(max_workers=1, member_timeout=0.02, circuit_breaker=breaker) as p:
        request_id.set("mine")
        p.add(lambda: asyncio.sleep(30))
        (result,) = await p.gather()
    assert result.status.value == "timed_out"
    assert state.breakers["svc"].state.value == "open"


async def test_a_member_added_by_another_member_does_not_take_its_deadline() -> None:
    # B, added from inside A (which had a timeout), inherited A's deadline: a stop of B
    # after A timed out was judged as a timeout (a breaker failure).
    from rh_agents.resilience import CircuitBreaker

    state = make_state()
    breaker = CircuitBreaker(failure_threshold=5, cooldown=60, key="svc")
    b_started = asyncio.Event()

    async def b() -> None:
        b_started.set()
        await asyncio.Event().wait()

    async with state.parallel(max_workers=2, circuit_breaker=breaker) as p:

        async def a() -> None:
            p.add(b)
            await asyncio.Event().wait()

        p.add(a, timeout=0.02)
        await b_started.wait()
        await until(lambda: p.statistics().timed_out == 1)
        p.cancel()
        results = await p.gather()
    assert [r.status.value for r in results] == ["timed_out", "cancelled"]
    assert state.breakers["svc"].failures == 1  # A's timeout only


async def test_execute_parallel_with_dependencies_runs_members_with_the_calls_values() -> None:
    async def read() -> str | None:
        return request_id.get()

    state = make_state()
    async with state.parallel(max_workers=2) as p:
        request_id.set("X")
        results = await p.execute_parallel([read(), read()], dependencies={1: [0]})
    assert [r.result for r in results] == ["X", "X"]


class Ready:
    """A legal awaitable whose __await__ gives a plain iterator (no send, no throw)."""

    def __await__(self) -> Any:
        return iter(())


async def test_an_awaitable_with_a_plain_iterator_runs_under_its_own_values_too() -> None:
    state = make_state()
    async with state.parallel(max_workers=1) as p:
        p.add(Ready())
        request_id.set("X")
        p.add(Ready())
        results = await p.gather()
    assert [r.status.value for r in results] == ["completed", "completed"]


@pytest.mark.parametrize("lazy", ["plain", "async"])
async def test_map_reads_its_input_and_calls_its_function_in_the_blocks_values(lazy: str) -> None:
    # Once a member had set a variable on a worker, map()'s function and its input ran in
    # that worker's context: they saw the member's value.
    seen_by_fn: list[str | None] = []
    seen_by_input: list[str | None] = []

    async def member(i: int) -> int:
        request_id.set(f"m{i}")
        return i

    def fn(i: int) -> Any:
        seen_by_fn.append(request_id.get())
        return member(i)

    async def items() -> Any:
        for i in range(4):
            seen_by_input.append(request_id.get())
            yield i

    state = make_state()
    async with state.parallel(max_workers=1) as p:
        p.map(fn, range(4) if lazy == "plain" else items())
        results = await p.gather()
    assert [r.result for r in results] == [0, 1, 2, 3]
    assert seen_by_fn == [None] * 4
    assert seen_by_input == ([None] * 4 if lazy == "async" else [])
    assert request_id.get() is None


class Reads:
    """An awaitable whose __await__ does work of its own (reads the variable there)."""

    def __await__(self) -> Any:
        seen = request_id.get()

        async def rest() -> tuple[str | None, str | None]:
            return seen, request_id.get()

        return rest().__await__()


async def test_an_awaitables_own_await_runs_with_the_values_of_its_add() -> None:
    state = make_state()
    async with state.parallel(max_workers=1) as p:
        request_id.set("m0")
        p.add(Reads())
        (result,) = await p.gather()
    assert result.result == ("m0", "m0")


async def test_map_input_keeps_the_values_it_set_itself_from_one_item_to_the_next() -> None:
    seen: list[str | None] = []

    async def items() -> Any:
        request_id.set("bound-by-input")
        for i in range(3):
            seen.append(request_id.get())
            yield i

    async def member(i: int) -> str | None:
        return request_id.get()

    state = make_state()
    async with state.parallel(max_workers=1) as p:
        p.map(member, items())
        results = await p.gather()
    assert seen == ["bound-by-input"] * 3
    assert [r.result for r in results] == [None] * 3  # a member never sees the input's


async def test_a_subscriber_delivered_between_members_leaks_nothing_into_them() -> None:
    from rh_agents.core.bus import EventBus

    bus = EventBus()
    bus.subscribe(lambda record: request_id.set(record.address))  # a value of its own
    state = ExecutionState(event_bus=bus, watchdog=None)

    async def member() -> str | None:
        return request_id.get()

    async with state.parallel(max_workers=1, name="g") as p:
        for _ in range(400):  # (records are delivered every 128 members in one turn)
            p.add(member)
        results = await p.gather()
    await bus.drain()
    assert [r.result for r in results] == [None] * 400
    assert request_id.get() is None
