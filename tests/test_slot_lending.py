"""Who may lend a member's slots while it waits, and when they come back.

A backoff, a rate-limit wait and a wait on a nested group lend the member's slots so that
others run meanwhile; none of them may let more members work at once than the limits allow.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from parallel_support import Crowds
from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.resilience import RetryPolicy


class Item(BaseModel):
    n: int


@pytest.mark.parametrize("global_limit", [None, 1])
async def test_calls_a_member_runs_side_by_side_back_off_holding_its_slot(
    global_limit: int | None,
) -> None:
    # Two event calls of one member, both backing off at once, each lent "the member's slot":
    # the group slot was given back twice, and two other members ran beside the member.
    state = ExecutionState(global_max_workers=global_limit, watchdog=None)
    crowds = Crowds()
    calls: dict[int, int] = {}

    async def flaky(input: Item, context: str, state: Any) -> int:
        calls[input.n] = calls.get(input.n, 0) + 1
        await crowds.work(f"call{input.n}")
        if calls[input.n] == 1:
            raise ConnectionError("once")
        return input.n

    event = ExecutionEvent(
        actor=Tool(
            name="flaky",
            input_model=Item,
            handler=flaky,
            retry=RetryPolicy(max_attempts=2, initial_delay=0.02, jitter=0),
        )
    )

    async def member() -> list[Any]:
        both = await asyncio.gather(event(Item(n=1), "", state), event(Item(n=2), "", state))
        return [r.result for r in both]

    async with state.parallel(max_workers=1) as p:
        p.add(member, name="M")
        for k in range(3):
            p.add(lambda k=k: crowds.work(f"J{k}", 0.01), name=f"J{k}")
        results = await p.gather()
    assert [r.result for r in results] == [[1, 2], "J0", "J1", "J2"]
    # Only the member's own two calls ever ran together.
    assert all(set(crowd) <= {"call1", "call2"} for crowd in crowds.overlapping), crowds.overlapping
    assert p.statistics().concurrency_high_water == 1


async def test_a_member_that_caught_a_timeout_on_its_nested_group_works_with_its_slot() -> None:
    # The wait on the nested group lent the member's global slot and was cancelled by the
    # member's own timeout; the member caught it and worked on without any global slot.
    state = ExecutionState(global_max_workers=1, watchdog=None)
    crowds = Crowds()

    async def member() -> str:
        async with state.parallel(max_workers=1, name="inner") as inner:
            inner.add(asyncio.sleep(30))
            try:
                async with asyncio.timeout(0.02):
                    await inner.gather()
            except TimeoutError:
                pass  # the nested member is cancelled as the block is left
        return await crowds.work("M", 0.05)

    async def other() -> str:
        return await crowds.work("N", 0.05)

    async with state.parallel(max_workers=2) as p:
        p.add(member, name="M")
        p.add(other, name="N")
        results = await p.gather()
    assert [r.result for r in results] == ["M", "N"]
    assert crowds.most == 1
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_second_wait_after_a_cancelled_one_takes_the_slot_back_after_it() -> None:
    state = ExecutionState(global_max_workers=1, watchdog=None)
    release = asyncio.Event()

    async def member() -> int:
        async with state.parallel(max_workers=1, name="inner") as inner:
            inner.add("slow", release.wait())
            try:
                async with asyncio.timeout(0.02):
                    await inner.gather()
            except TimeoutError:
                pass
            release.set()
            results = await inner.gather()  # waits lent again, and takes the slot back
            assert state.global_slots is not None
            held = state.global_slots.in_use
        return held + len(results)

    async with state.parallel(max_workers=1) as p:
        p.add(member)
        (result,) = await asyncio.wait_for(p.gather(), 5)
    assert result.ok, result.error
    assert result.result == 2  # its own slot held again, and one result
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_stopped_member_waiting_for_a_token_does_not_wait_for_a_global_slot() -> None:
    # Stopped while it waited for a rate-limit token (its global slot lent), the member
    # waited for another group's member to free a global slot before it could end.
    from rh_agents.resilience import RateLimit

    state = ExecutionState(global_max_workers=1, watchdog=None)
    release = asyncio.Event()
    holding = asyncio.Event()
    first_done = asyncio.Event()

    async def hold() -> None:
        holding.set()
        await release.wait()

    async def quick() -> None:
        first_done.set()

    async def limited() -> str:
        async with state.parallel(max_workers=1, rate_limit=RateLimit(1, 60), timeout=0.1) as a:
            a.add(quick)  # takes the one token
            a.add(lambda: asyncio.sleep(0))  # waits a minute for its token
            results = await a.gather()
        return ",".join(r.status.value for r in results)

    waiting = asyncio.create_task(limited())
    await first_done.wait()
    async with state.parallel(max_workers=1, name="holder") as b:
        b.add(hold)
        await holding.wait()  # the holder took the global slot the waiting member lent
        statuses = await asyncio.wait_for(waiting, 5)  # ends by its timeout, not the holder
        assert not release.is_set()
        release.set()
    assert statuses == "completed,timed_out"
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_timeout_around_a_nested_block_gives_the_global_slot_back_after() -> None:
    state = ExecutionState(global_max_workers=1, watchdog=None)
    crowds = Crowds()

    async def member() -> str:
        try:
            async with asyncio.timeout(0.02):
                async with state.parallel(max_workers=1, name="inner") as inner:
                    inner.add(asyncio.sleep(30))
                    await inner.gather()
        except TimeoutError:
            pass
        return await crowds.work("M", 0.05)

    async with state.parallel(max_workers=2) as p:
        p.add(member, name="M")
        p.add(lambda: crowds.work("N", 0.05), name="N")
        results = await p.gather()
    assert [r.result for r in results] == ["M", "N"]
    assert crowds.most == 1


@pytest.mark.parametrize("who", ["joiner", "starter"])
async def test_a_member_sharing_a_cached_call_ends_by_its_timeout_not_a_global_slot(
    who: str,
) -> None:
    # A member that timed out while the cache's shared call had its slots lent waited for
    # another group's member to free a global slot before it could end.
    from parallel_support import until
    from rh_agents.recovery import ActorCache

    release = asyncio.Event()
    holding = asyncio.Event()
    calls = 0

    async def slow(input: Item, context: str, state: Any) -> int:
        nonlocal calls
        calls += 1
        if who == "starter" and calls == 1:
            raise ConnectionError("once")  # the shared call backs off, lending the slots
        await release.wait()
        return input.n

    limit = 2 if who == "joiner" else 1
    state = ExecutionState(global_max_workers=limit, cache=ActorCache(), watchdog=None)
    event = ExecutionEvent(
        actor=Tool(
            name="slow",
            input_model=Item,
            handler=slow,
            cacheable=True,
            retry=RetryPolicy(max_attempts=2, initial_delay=0.5, jitter=0),
        )
    )

    async def hold() -> None:
        holding.set()
        await release.wait()

    async with (
        state.parallel(max_workers=1, name="holder") as holder,
        state.parallel(max_workers=2, name="calls") as p,
    ):
        if who == "joiner":
            p.add(event(Item(n=1), "", state))  # the starter
            p.add(event(Item(n=1), "", state), timeout=0.1)  # joins, lends, times out
            # Both started, the joiner's slot lent (not counted running) as it waits.
            await until(
                lambda: calls == 1 and (p.statistics().running, p.statistics().queued) == (1, 0)
            )
        else:
            p.add(event(Item(n=1), "", state), timeout=0.1)  # starts, backs off, lends
            await until(lambda: calls == 1)
        holder.add(hold)  # takes the global slot the waiting member lent
        stream = p.as_completed()
        await holding.wait()
        first = await asyncio.wait_for(stream.__anext__(), 5)
        assert first.status.value == "timed_out"
        assert not release.is_set()  # it ended while the holder still held its slot
        release.set()
    assert state.global_slots is not None and state.global_slots.in_use == 0
    await state.close()


async def test_a_group_read_from_a_sibling_lends_the_readers_slot_and_leaks_none() -> None:
    # One member opens a group and hands it to a sibling, which reads it. The wait is the
    # sibling's: it lent the opener's global slot while the opener worked, and (a third
    # member taking the slot meanwhile) took it back for the opener once the opener had
    # ended: a slot held for good by nobody. (Timers order the steps: each fires in the
    # order of its deadline, however loaded the machine.)
    state = ExecutionState(global_max_workers=2, watchdog=None)
    slots = state.global_slots
    assert slots is not None
    handed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def opener() -> str:
        await asyncio.sleep(0.01)  # the reader waits for the group first
        async with state.parallel(max_workers=1, name="opened") as inner:
            inner.add(asyncio.sleep(0.05, result="nested"))  # on the slot the reader lends
            handed.set_result(inner)
            await asyncio.sleep(0.2)  # works, not reading its group
        return "opener"

    async def reader() -> list[Any]:
        inner = await handed
        return [r.result async for r in inner.stream()]

    async with state.parallel(max_workers=3, name="outer") as p:
        p.add(opener)
        p.add(reader)
        await asyncio.sleep(0.03)
        p.add(asyncio.sleep(0.3, result="third"))  # takes the slot the nested member frees
        results = await asyncio.wait_for(p.gather(), 5)
    assert [r.result for r in results] == ["opener", ["nested"], "third"]
    assert slots.in_use == 0


async def test_one_member_reading_two_nested_groups_at_once_lends_its_slot_once() -> None:
    # asyncio.gather of two nested reads: the first lent the slot, the second found it lent
    # and lent nothing, and the first took it back while the second group still needed it.
    state = ExecutionState(global_max_workers=1, watchdog=None)
    second_may_end = asyncio.Event()

    async def leaf(tag: str, gate: asyncio.Event | None = None) -> str:
        if gate is not None:
            await gate.wait()
        return tag

    async def member() -> list[Any]:
        async with (
            state.parallel(max_workers=2, name="g1") as g1,
            state.parallel(max_workers=2, name="g2") as g2,
        ):
            g1.add(leaf("a"))
            for i in range(3):
                g2.add(leaf(f"b{i}", second_may_end))

            async def first_then_release() -> list[Any]:
                results = await g1.gather()
                second_may_end.set()
                return results

            r1, r2 = await asyncio.gather(first_then_release(), g2.gather())
        return [r.result for r in r1 + r2]

    async with state.parallel(max_workers=2, name="outer") as p:
        p.add(member)
        (result,) = await asyncio.wait_for(p.gather(), 5)
    assert result.ok, result.error
    assert result.result == ["a", "b0", "b1", "b2"]
    assert state.global_slots is not None and state.global_slots.in_use == 0


@pytest.mark.parametrize("option", ["timeout", "member_timeout"])
async def test_a_member_stopped_while_leaving_its_nested_block_ends_at_once(option: str) -> None:
    # Leaving the block gathers, lending the member's global slot; its timeout fires then.
    # It waited to take the slot back from an unrelated group before it could end.
    state = ExecutionState(global_max_workers=2, watchdog=None)
    other_holds_both = asyncio.Event()
    release_other = asyncio.Event()

    async def member() -> None:
        await other_holds_both.wait()
        async with state.parallel(name="nested") as nested:
            nested.add(asyncio.sleep(30))
        # (leaving the block without reading it)

    async def other_group() -> None:
        async with state.parallel(max_workers=2, name="other") as other:
            other.add(release_other.wait())
            other.add(release_other.wait())
            await asyncio.sleep(0)
            other_holds_both.set()

    settings: dict[str, Any] = {option: 0.05}
    async with state.parallel(name="A", **settings) as a:
        a.add(member)
        await asyncio.sleep(0)
        holder = asyncio.create_task(other_group())
        results = await asyncio.wait_for(a.gather(), 5)  # not held up by the other group
    assert [r.status.value for r in results] == ["timed_out"]
    assert not release_other.is_set()
    release_other.set()
    await asyncio.wait_for(holder, 5)
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_two_identical_cached_calls_of_one_member_keep_its_one_slot() -> None:
    # The second call joins the first, which runs on the member's slot: the joiner lent
    # that slot, and another member ran beside the call (max_workers=1 exceeded).
    from rh_agents.recovery import ActorCache

    gate = asyncio.Event()
    entered = asyncio.Event()
    second_started: list[bool] = []

    async def slow(item: Item, context: str, state: ExecutionState) -> int:
        entered.set()
        await gate.wait()
        return item.n

    ev = ExecutionEvent(actor=Tool(name="slow", input_model=Item, handler=slow, cacheable=True))
    state = ExecutionState(cache=ActorCache(), watchdog=None)

    async def first() -> list[Any]:
        results = await asyncio.gather(ev(Item(n=1), "", state), ev(Item(n=1), "", state))
        return [r.result for r in results]

    async def second() -> None:
        second_started.append(True)

    async with state.parallel(max_workers=1) as p:
        p.add(first)
        p.add(second)
        await entered.wait()
        for _ in range(20):
            await asyncio.sleep(0)
        assert second_started == []  # the member's one slot is still in use
        gate.set()
        results = await asyncio.wait_for(p.gather(), 5)
    assert results[0].result == [1, 1] and second_started == [True]


async def test_a_cached_call_backing_off_beside_other_work_keeps_the_members_slot() -> None:
    # A cached call made from a task of the member's own (asyncio.gather beside other work)
    # backed off lending the member's slot: another member ran while the sibling worked.
    from rh_agents.recovery import ActorCache

    attempts: list[int] = []
    sibling_working = asyncio.Event()
    sibling_may_end = asyncio.Event()
    second_started: list[bool] = []

    retried = asyncio.Event()

    async def flaky(item: Item, context: str, state: ExecutionState) -> int:
        attempts.append(item.n)
        if len(attempts) == 1:
            raise ConnectionError("the first attempt fails")
        retried.set()
        return item.n

    ev = ExecutionEvent(
        actor=Tool(
            name="flaky",
            input_model=Item,
            handler=flaky,
            cacheable=True,
            retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0),
        )
    )
    state = ExecutionState(cache=ActorCache(), watchdog=None)

    async def sibling() -> None:
        sibling_working.set()
        await sibling_may_end.wait()

    async def first() -> None:
        await asyncio.gather(ev(Item(n=1), "", state), sibling())

    async def second() -> None:
        second_started.append(True)

    async with state.parallel(max_workers=1) as p:
        p.add(first)
        p.add(second)
        await sibling_working.wait()
        await retried.wait()  # the backoff is over: the call was retried
        assert second_started == []  # the sibling works: the member's slot stayed in use
        sibling_may_end.set()
        await asyncio.wait_for(p.gather(), 5)
    assert second_started == [True]
