"""A cache hit inside a group takes no worker slot: it never waits behind slow members."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery.cache import ActorCache


class Question(BaseModel):
    text: str


def make_state(**options: object) -> tuple[ExecutionState, list[str]]:
    calls: list[str] = []

    async def answer(input: Question, context: str, state: ExecutionState) -> str:
        calls.append(input.text)
        return input.text.upper()

    tool = Tool(name="answer", input_model=Question, handler=answer, cacheable=True)
    state = ExecutionState(cache=ActorCache(), **options)  # type: ignore[arg-type]
    state.store["event"] = ExecutionEvent(actor=tool)
    return state, calls


@pytest.mark.parametrize("options", [{}, {"global_max_workers": 1}])
async def test_a_hit_completes_while_every_worker_is_busy(options: dict[str, object]) -> None:
    state, calls = make_state(**options)
    event = state.store["event"]
    assert (await event(Question(text="q"), "", state)).result == "Q"  # fills the cache
    release = asyncio.Event()
    order: list[str] = []

    async def slow() -> str:
        await release.wait()
        order.append("slow")
        return "slow"

    async with asyncio.timeout(5), state.parallel(max_workers=1) as p:
        p.add(slow, name="slow")  # takes the only worker (and the only global slot)
        p.add("hit", event(Question(text="q"), "", state))
        async for result in p.stream():
            order.append(result.name or "")
            if result.name == "hit":
                assert not release.is_set()  # the slow member still holds the worker
                release.set()
    assert order == ["hit", "slow", "slow"]
    assert calls == ["q"]  # the handler ran once, for the first call
    assert p.statistics().concurrency_high_water == 1


async def test_a_miss_waits_for_a_worker_as_usual() -> None:
    state, calls = make_state()
    event = state.store["event"]
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "slow"

    async with asyncio.timeout(5), state.parallel(max_workers=1) as p:
        p.add(slow)
        p.add(event(Question(text="new"), "", state))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert calls == []  # no cached answer: it waits behind the slow member
        release.set()
        results = await p.gather()
    assert [r.result for r in results] == ["slow", "NEW"]


async def test_stopping_the_group_finishes_queued_hits_cleanly() -> None:
    state, _ = make_state()
    event = state.store["event"]
    await event(Question(text="q"), "", state)

    async with asyncio.timeout(5), state.parallel(max_workers=1) as p:
        for i in range(5):
            p.add(f"hit{i}", event(Question(text="q"), "", state))
        p.cancel()  # before the cache lane ran: every hit ends cancelled, nothing left open
    results = await p.gather()
    if asyncio.get_running_loop().get_task_factory() is None:
        assert all(r.status.value == "cancelled" for r in results)
    else:  # (an eager task factory runs the lane inside each add: every hit is answered)
        assert all(r.status.value == "completed" for r in results)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_hit_that_waited_on_a_dependency_still_takes_the_cache_lane() -> None:
    # Released by its dependency, a hit was queued for a worker: it waited behind slow members.
    state, calls = make_state()
    event = state.store["event"]
    await event(Question(text="q"), "", state)  # fills the cache
    release = asyncio.Event()
    order: list[str] = []

    async def slow() -> str:
        await release.wait()
        return "slow"

    async with asyncio.timeout(5), state.parallel(max_workers=1) as p:
        p.add("first", asyncio.sleep(0, "first"))
        p.add(slow, name="slow")
        p.add("hit", event(Question(text="q"), "", state), after="first")
        async for result in p.stream():
            order.append(result.name or "")
            if result.name == "hit":
                assert not release.is_set()  # the slow member still holds the worker
                release.set()
    assert order == ["first", "hit", "slow"]
    assert calls == ["q"]


async def test_a_member_joining_a_shared_call_gets_its_slot_back_before_new_members() -> None:
    # Members 0 and 1 make the same cacheable call: 1 joins 0's call and lends its slot,
    # which member 2 takes. When the call ends, member 0's worker would give its freed slot
    # to member 3, and member 1, its value in hand, would wait for a whole member to run
    # (its timeout could end it first). It gets the slot back first now.
    from parallel_support import until

    gates = {"shared": asyncio.Event(), "long": asyncio.Event()}

    async def answer(input: Question, context: str, state: ExecutionState) -> str:
        await gates["shared" if input.text == "q" else "long"].wait()
        return input.text.upper()

    event = ExecutionEvent(
        actor=Tool(name="answer", input_model=Question, handler=answer, cacheable=True)
    )
    state = ExecutionState(cache=ActorCache())
    async with asyncio.timeout(5), state.parallel(max_workers=2) as p:
        p.add(event(Question(text="q"), "", state))  # starts the call
        p.add(event(Question(text="q"), "", state))  # joins it
        p.add(event(Question(text="long 2"), "", state))
        p.add(event(Question(text="long 3"), "", state))
        await until(lambda: p.statistics().running == 2)  # 0 and 2 (1 lent its slot)
        gates["shared"].set()
        await until(lambda: p.statistics().done == 2)  # 0 and 1, while 2 still runs
        assert [r is not None for r in p._tally.results] == [True, True, False, False]
        gates["long"].set()
    results = await p.gather()
    assert [(r.result, r.source) for r in results] == [
        ("Q", "run"),
        ("Q", "cache"),
        ("LONG 2", "run"),
        ("LONG 3", "run"),
    ]
    await state.close()
