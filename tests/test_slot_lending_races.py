"""Slot lending where waits overlap, end while a take-back is queued, or outlive their member.

Each test is a race a review of the per-member lending found. Timers order the steps: each
fires in the order of its deadline, however loaded the machine, and the margins are tens of
milliseconds. Every scenario is bounded by ``asyncio.wait_for``: a deadlock fails, it does
not hang the suite.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from parallel_support import Crowds
from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventStarted
from rh_agents.recovery import ActorCache
from rh_agents.resilience import RetryPolicy


class Item(BaseModel):
    n: int


async def test_a_siblings_cancelled_read_is_not_taken_back_by_the_opener() -> None:
    # The reader's cut-short wait left its slot owed on the group; the opener, leaving the
    # block, took it back on the reader's behalf (long after the reader ended), holding its
    # own slot: with one global slot, it waited for ever.
    state = ExecutionState(global_max_workers=1, watchdog=None)
    handed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def opener() -> str:
        await asyncio.sleep(0.01)  # the reader queues for the global slot first
        async with state.parallel(max_workers=1, name="G") as group:
            group.add(asyncio.sleep(0.2))
            handed.set_result(group)
            await group.gather()  # lends the opener's slot: the reader runs
        return "opener"

    async def reader() -> str:
        group = await handed
        try:
            async with asyncio.timeout(0.05):
                await group.gather()  # lends the reader's slot; cut short
        except TimeoutError:
            pass
        await asyncio.sleep(0.1)
        return "reader"

    async with state.parallel(max_workers=2, name="outer") as p:
        p.add(opener)
        p.add(reader)
        results = await asyncio.wait_for(p.gather(), 5)
    assert [r.result for r in results] == ["opener", "reader"]
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_two_joiners_of_one_member_lend_its_group_slot_once() -> None:
    # Each joiner released the member's one group slot: two other members ran under
    # max_workers=1, then the worker died of the accounting's assertion and the group
    # waited for it for ever, spinning.
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    started = asyncio.Event()
    crowds = Crowds()

    async def slow(item: Item, context: str, state: ExecutionState) -> int:
        started.set()
        await asyncio.sleep(0.2)
        return item.n

    event = ExecutionEvent(actor=Tool(name="slow", input_model=Item, handler=slow, cacheable=True))

    async def member() -> list[Any]:
        results = await asyncio.gather(event(Item(n=1), "", state), event(Item(n=1), "", state))
        return [r.result for r in results]

    starter = asyncio.create_task(event(Item(n=1), "", state))  # the call, started outside
    await started.wait()
    async with state.parallel(max_workers=1, name="g") as p:
        p.add(member, name="M")
        p.add(lambda: crowds.work("X", 0.05), name="X")
        p.add(lambda: crowds.work("Y", 0.05), name="Y")
        results = await asyncio.wait_for(p.gather(), 5)
    await starter
    assert [r.result for r in results] == [[1, 1], "X", "Y"]
    assert crowds.most == 1  # the member's slot, lent once, went to one member at a time
    assert state.internal_errors == []


async def test_two_tasks_of_one_member_taking_its_global_slot_back_take_one() -> None:
    # A read of a nested group and a join of a shared call, both ending while every slot
    # was held: each acquired a global slot for the member, which released one.
    state = ExecutionState(global_max_workers=2, cache=ActorCache(), watchdog=None)
    started, gate = asyncio.Event(), asyncio.Event()

    async def slow(item: Item, context: str, state: ExecutionState) -> int:
        started.set()
        await gate.wait()
        return item.n

    event = ExecutionEvent(actor=Tool(name="slow", input_model=Item, handler=slow, cacheable=True))

    async def starter() -> Any:
        return (await event(Item(n=1), "", state)).result

    async def member() -> list[Any]:
        await started.wait()

        async def read() -> None:
            async with state.parallel(max_workers=1, name="inner") as inner:
                inner.add(gate.wait())
                await inner.gather()

        async def join() -> Any:
            await asyncio.sleep(0.01)
            return (await event(Item(n=1), "", state)).result

        return await asyncio.gather(read(), join())

    async with state.parallel(max_workers=6, name="outer") as p:
        p.add(starter)
        p.add(member)
        await asyncio.sleep(0.05)
        p.add(asyncio.sleep(0.2))
        p.add(asyncio.sleep(0.25))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(p.gather(), 5)
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_wait_begun_while_the_last_one_takes_the_slot_back_lends_it() -> None:
    # The second read began while the first one's take-back was queued: it found no slot
    # to lend, the member then held the one global slot, and the second group's member
    # waited for it for ever.
    state = ExecutionState(global_max_workers=1, watchdog=None)

    async def member() -> str:
        await asyncio.sleep(0.01)
        async with (
            state.parallel(max_workers=1, name="G1") as g1,
            state.parallel(max_workers=1, name="G2") as g2,
        ):
            g1.add(asyncio.sleep(0.05))

            async def first() -> None:
                await g1.gather()  # lends; its take-back queues behind another member

            async def second() -> None:
                await asyncio.sleep(0.2)  # the take-back is queued by now
                g2.add(asyncio.sleep(0.01))
                await g2.gather()

            await asyncio.gather(first(), second())
        return "M"

    async with state.parallel(max_workers=5, name="outer") as p:
        p.add(member)
        p.add(asyncio.sleep(0.1))
        await asyncio.sleep(0.03)
        p.add(asyncio.sleep(0.25))
        results = await asyncio.wait_for(p.gather(), 5)
    assert results[0].result == "M"
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_take_back_cut_short_by_the_members_timeout_stays_owed() -> None:
    # The member's own timeout cut the take-back short: nothing was owed any more, and the
    # member, which caught its timeout, worked on without a global slot beside another.
    state = ExecutionState(global_max_workers=1, watchdog=None)
    crowds = Crowds()

    async def member() -> str:
        async with state.parallel(max_workers=1, name="G") as group:
            group.add(asyncio.sleep(0.05))
            try:
                async with asyncio.timeout(0.1):
                    await group.gather()  # lends; the take-back waits for the other member
            except TimeoutError:
                pass
        return await crowds.work("M", 0.2)

    async with state.parallel(max_workers=2, name="outer") as p:
        p.add(member, name="M")
        await asyncio.sleep(0.02)
        p.add(lambda: crowds.work("O", 0.3), name="O")
        results = await asyncio.wait_for(p.gather(), 5)
    assert [r.result for r in results] == ["M", "O"]
    assert crowds.most == 1
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_shared_call_joined_from_inside_the_members_shared_call_keeps_its_slot() -> None:
    # Inside a cached call the member started, two identical cached calls side by side: the
    # joiner did not see that the call it joined ran on its own member's slot, and lent it.
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    crowds = Crowds()

    async def inner_handler(item: Item, context: str, state: ExecutionState) -> int:
        await crowds.work("inner", 0.1)
        return item.n

    inner = ExecutionEvent(
        actor=Tool(name="inner", input_model=Item, handler=inner_handler, cacheable=True)
    )

    async def outer_handler(item: Item, context: str, state: ExecutionState) -> list[Any]:
        both = await asyncio.gather(inner(Item(n=7), "", state), inner(Item(n=7), "", state))
        return [r.result for r in both]

    outer = ExecutionEvent(
        actor=Tool(name="outer", input_model=Item, handler=outer_handler, cacheable=True)
    )

    async def member() -> Any:
        return (await outer(Item(n=1), "", state)).result

    async with state.parallel(max_workers=1, name="g") as p:
        p.add(member, name="M")
        p.add(lambda: crowds.work("X", 0.05), name="X")
        results = await asyncio.wait_for(p.gather(), 5)
    assert results[0].result == [7, 7]
    assert crowds.most == 1


async def test_a_retry_never_gives_a_call_the_address_of_one_still_running() -> None:
    # The retry numbered its calls afresh while the first attempt's slow call (left behind
    # by asyncio.gather) still ran: two live calls at "writer::ask#2", and the stray one's
    # result stored there.
    calls = {1: 0, 2: 0}

    async def ask_handler(item: Item, context: str, state: ExecutionState) -> str:
        calls[item.n] += 1
        made = calls[item.n]
        if item.n == 1:
            if made == 1:
                raise ConnectionError("503")  # the first attempt fails at once
            return "one"
        await asyncio.sleep(0.15 if made == 1 else 0.01)  # the first attempt's is slow
        return f"two (call {made})"

    ask = ExecutionEvent(actor=Tool(name="ask", input_model=Item, handler=ask_handler))

    async def writer_handler(item: Item, context: str, state: ExecutionState) -> list[Any]:
        async def get(n: int) -> Any:
            return (await ask(Item(n=n), "", state)).unwrap()

        return await asyncio.gather(get(1), get(2))

    writer = ExecutionEvent(
        actor=Agent(
            name="writer",
            input_model=Item,
            handler=writer_handler,
            retry=RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0),
        )
    )
    state = ExecutionState(watchdog=None)
    starts: list[str] = []
    state.event_bus.subscribe(
        lambda record: starts.append(record.address) if isinstance(record, EventStarted) else None,
        kinds=[EventStarted],
    )
    result = await asyncio.wait_for(writer(Item(n=0), "", state), 5)
    await asyncio.sleep(0.2)  # the stray call ends
    await state.event_bus.drain()
    assert result.result == ["one", "two (call 2)"]
    assert len(starts) == len(set(starts))  # no address given to two calls
    assert state.history["writer::ask#2"].result.result == "two (call 1)"


async def test_a_shared_call_backing_off_holds_the_slot_a_joiner_may_wait_behind() -> None:
    # The shared call's backoff lent its starter's group slot; the sibling let in waited on a
    # nested group whose member joined that same call, which, its backoff over, waited for
    # the slot the sibling held: a deadlock under max_workers=1.
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    tries: list[int] = []

    async def flaky(item: Item, context: str, state: ExecutionState) -> int:
        tries.append(item.n)
        await asyncio.sleep(0.01)
        if len(tries) == 1:
            raise ConnectionError("the first attempt fails")
        return item.n

    event = ExecutionEvent(
        actor=Tool(
            name="flaky",
            input_model=Item,
            handler=flaky,
            cacheable=True,
            retry=RetryPolicy(max_attempts=3, initial_delay=0.05, jitter=0),
        )
    )

    async def starter() -> Any:
        return (await event(Item(n=1), "", state)).result

    async def sibling() -> list[Any]:
        async with state.parallel(max_workers=1, name="inner") as inner:
            inner.add(lambda: event(Item(n=1), "", state))  # joins the call
            return [r.result for r in await inner.gather()]

    async with state.parallel(max_workers=1, name="outer") as p:
        p.add(starter, name="A")
        p.add(sibling, name="B")
        results = await asyncio.wait_for(p.gather(), 5)
    assert [r.result for r in results] == [1, [1]]
    assert tries == [1, 1]


async def _holding_the_global_slot(state: ExecutionState) -> list[Any]:
    """Another group, whose one member takes the global slot at 0.01 s and keeps it 0.4 s:
    a take-back of the global slot queues behind it."""
    async with state.parallel(max_workers=1, name="H") as p:
        await asyncio.sleep(0.01)
        p.add(asyncio.sleep(0.4, "D"))
        return [r.result for r in await p.gather()]


class _Shared:
    """A cached call that runs ``seconds`` once started (``started`` set), shared by every
    identical call meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.started = asyncio.Event()
        self.seconds = seconds

        async def slow(item: Item, context: str, state: ExecutionState) -> int:
            self.started.set()
            await asyncio.sleep(self.seconds)
            return item.n

        self.event = ExecutionEvent(
            actor=Tool(name="shared", input_model=Item, handler=slow, cacheable=True)
        )


async def test_a_backoff_and_a_join_of_one_member_lend_its_group_slot_once() -> None:
    # The member's own task backed off (lending its slot) while a task of its own joined a
    # shared call (lending it again): two members ran under max_workers=1, and the slots'
    # accounting failed its assertion.
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    shared = _Shared(0.3)
    crowds = Crowds()
    tries: list[int] = []

    async def flaky(item: Item, context: str, state: ExecutionState) -> int:
        tries.append(item.n)
        if len(tries) == 1:
            raise ConnectionError("the first attempt fails")
        return 7

    retried = ExecutionEvent(
        actor=Tool(
            name="flaky",
            input_model=Item,
            handler=flaky,
            retry=RetryPolicy(max_attempts=3, initial_delay=0.2, jitter=0),
        )
    )

    async def member() -> list[Any]:
        joined = asyncio.create_task(shared.event(Item(n=1), "", state))
        await asyncio.sleep(0.01)
        after_retry = await retried(Item(n=2), "", state)
        return [(await joined).result, after_retry.result]

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await shared.started.wait()
    async with state.parallel(max_workers=1) as p:
        p.add(member)
        for name in "XYZW":
            p.add(lambda name=name: crowds.work(name, 0.05))
        results = await asyncio.wait_for(p.gather(), 5)
    await starter
    assert results[0].result == [1, 7]
    assert crowds.most == 1
    assert state.internal_errors == []


async def test_a_join_outliving_its_member_gives_no_slot_back_twice() -> None:
    # A task the member left behind still waited for a shared call, the member's slot lent:
    # the worker released the slot again as the member ended (two members at once under
    # max_workers=1, and the accounting's assertion failed).
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    shared = _Shared(0.1)
    crowds = Crowds()
    left_behind: list[asyncio.Task[Any]] = []

    async def member() -> str:
        left_behind.append(asyncio.create_task(shared.event(Item(n=1), "", state)))
        await asyncio.sleep(0.01)
        return "M"

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await shared.started.wait()
    async with state.parallel(max_workers=1, name="g") as p:
        p.add(member, name="M")
        for i in range(8):
            p.add(lambda i=i: crowds.work(f"X{i}", 0.04), name=f"X{i}")
        results = await asyncio.wait_for(p.gather(), 5)
    await asyncio.gather(starter, *left_behind)
    assert [r.result for r in results] == ["M", *(f"X{i}" for i in range(8))]
    assert crowds.most == 1
    assert p._pool.slots.in_use == 0 and state.internal_errors == []


async def test_a_join_ending_during_a_nested_wait_leaves_the_global_slot_to_the_wait() -> None:
    # The join took the global slot back while the member still waited on its nested group,
    # whose member then waited for that slot for ever (global_max_workers=1).
    state = ExecutionState(global_max_workers=1, cache=ActorCache(), watchdog=None)
    shared = _Shared(0.1)

    async def member() -> list[Any]:
        joined = asyncio.create_task(shared.event(Item(n=1), "", state))
        await asyncio.sleep(0.01)
        async with state.parallel(max_workers=1, name="inner") as inner:
            inner.add(asyncio.sleep(0.2, "n1"))
            inner.add(asyncio.sleep(0.01, "n2"))
            nested = [r.result for r in await inner.gather()]
        return [(await joined).result, nested]

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await shared.started.wait()
    async with state.parallel(max_workers=1, name="outer") as p:
        p.add(member)
        (result,) = await asyncio.wait_for(p.gather(), 5)
    await starter
    assert result.result == [1, ["n1", "n2"]]
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_nested_wait_ending_before_a_join_takes_the_slots_back_in_order() -> None:
    # The nested wait took the global slot back while the join still lent the group slot;
    # the join then waited for the group slot (held by a member waiting for the global one):
    # each held what the other needed.
    state = ExecutionState(global_max_workers=1, cache=ActorCache(), watchdog=None)
    shared = _Shared(0.3)

    async def member() -> list[Any]:
        async def read() -> list[Any]:
            async with state.parallel(max_workers=1, name="inner") as inner:
                inner.add(asyncio.sleep(0.05, "n"))
                return [r.result for r in await inner.gather()]

        async def join() -> Any:
            await asyncio.sleep(0.01)
            return (await shared.event(Item(n=1), "", state)).result

        return list(await asyncio.gather(read(), join()))

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await shared.started.wait()
    async with state.parallel(max_workers=1, name="outer") as p:
        p.add(member, name="M")
        p.add(asyncio.sleep(0.05, "X"), name="X")
        p.add(asyncio.sleep(0.05, "Y"), name="Y")
        results = await asyncio.wait_for(p.gather(), 5)
    await starter
    assert [r.result for r in results] == [[["n"], 1], "X", "Y"]
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_global_take_back_completing_while_a_join_lends_gives_the_slot_out_again() -> None:
    # The member's wait queued to take its global slot back; meanwhile a task of its own
    # joined a shared call, lending the group slot. The take-back completed, so the member
    # held the global slot without its group slot, and the join's end then waited for the
    # group slot (held by a member waiting for the global one): a deadlock.
    state = ExecutionState(global_max_workers=1, cache=ActorCache(), watchdog=None)
    shared = _Shared(1.0)

    async def member() -> Any:
        async def join() -> Any:
            await asyncio.sleep(0.2)
            return (await shared.event(Item(n=1), "", state)).result

        side = asyncio.create_task(join())
        async with state.parallel(max_workers=1, name="N") as nested:
            nested.add(asyncio.sleep(0.1, "n"))
            await nested.gather()  # its take-back queues behind the other group's member
        return await side

    async def group() -> list[Any]:
        async with state.parallel(max_workers=1, name="G") as p:
            p.add(member)
            await asyncio.sleep(0.05)
            p.add(asyncio.sleep(0, "B"))
            return [r.result for r in await p.gather()]

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(asyncio.gather(group(), _holding_the_global_slot(state)), 5) == [
        [1, "B"],
        ["D"],
    ]
    await starter
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_wait_inside_the_members_own_shared_call_counts_as_the_members() -> None:
    # A nested wait inside the cached call the member started was counted on the call's
    # slot, unseen by the member's join, which took the global slot back while the call's
    # nested group still needed it (global_max_workers=1).
    state = ExecutionState(global_max_workers=1, cache=ActorCache(), watchdog=None)
    shared = _Shared(0.1)

    async def nested_handler(item: Item, context: str, state: ExecutionState) -> list[Any]:
        async with state.parallel(max_workers=1, name="N") as nested:
            nested.add(asyncio.sleep(0.15, "N1"))
            nested.add(asyncio.sleep(0.05, "N2"))
            return [r.result for r in await nested.gather()]

    own = ExecutionEvent(
        actor=Tool(name="own", input_model=Item, handler=nested_handler, cacheable=True)
    )

    async def member() -> list[Any]:
        async def join() -> Any:
            await asyncio.sleep(0.02)
            return (await shared.event(Item(n=1), "", state)).result

        side = asyncio.create_task(join())
        mine = (await own(Item(n=2), "", state)).result
        return [await side, mine]

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await asyncio.sleep(0)
    async with state.parallel(max_workers=1, name="O") as p:
        p.add(member)
        (result,) = await asyncio.wait_for(p.gather(), 5)
    await starter
    assert result.result == [1, ["N1", "N2"]]
    assert state.global_slots is not None and state.global_slots.in_use == 0


async def test_a_member_ending_while_its_join_takes_the_slot_back_releases_nothing_twice() -> None:
    # The join's account was dropped before its take-back completed: the member ended
    # meanwhile and its worker released the slot the join had lent (two at once).
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    shared = _Shared(0.15)
    crowds = Crowds()
    tries: list[int] = []
    left_behind: list[asyncio.Task[Any]] = []

    async def flaky(item: Item, context: str, state: ExecutionState) -> str:
        tries.append(item.n)
        if len(tries) == 1:
            raise ConnectionError("the first attempt fails")
        return await crowds.work("X", 0.1)

    retried = ExecutionEvent(
        actor=Tool(
            name="flaky",
            input_model=Item,
            handler=flaky,
            retry=RetryPolicy(max_attempts=2, initial_delay=0.05, jitter=0),
        )
    )

    async def member() -> str:
        async def join() -> Any:
            await asyncio.sleep(0.01)
            return (await shared.event(Item(n=1), "", state)).result

        left_behind.append(asyncio.create_task(join()))
        await asyncio.sleep(0.2)  # only waits, then ends with the join still taking back
        return "A"

    async def other() -> Any:
        return (await retried(Item(n=3), "", state)).result

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await asyncio.sleep(0)
    async with state.parallel(max_workers=1, name="G") as p:
        p.add(member, name="A")
        p.add(other, name="X")
        p.add(lambda: crowds.work("B", 0.4), name="B")
        results = await asyncio.wait_for(p.gather(), 5)
    await asyncio.gather(starter, *left_behind)
    assert [r.result for r in results] == ["A", "X", "B"]
    assert crowds.most == 1
    assert p._pool.slots.in_use == 0 and state.internal_errors == []


async def test_a_wait_begun_while_a_join_takes_the_global_slot_back_lends_it() -> None:
    # A nested read began while a join's take-back of the global slot was queued: it found
    # nothing to lend, and the take-back then kept the slot for the whole nested wait.
    state = ExecutionState(global_max_workers=1, cache=ActorCache(), watchdog=None)
    shared = _Shared(0.1)

    async def member() -> list[Any]:
        async def read() -> list[Any]:
            await asyncio.sleep(0.2)
            async with state.parallel(max_workers=1, name="N") as nested:
                nested.add(asyncio.sleep(0.05, "n"))
                return [r.result for r in await nested.gather()]

        reader = asyncio.create_task(read())
        joined = (await shared.event(Item(n=1), "", state)).result
        return [joined, await reader]

    async def group() -> list[Any]:
        async with state.parallel(max_workers=1, name="G") as p:
            p.add(member)
            return [r.result for r in await p.gather()]

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await asyncio.sleep(0)
    outcome = await asyncio.wait_for(asyncio.gather(group(), _holding_the_global_slot(state)), 5)
    assert outcome == [[[1, ["n"]]], ["D"]]
    await starter
    assert state.global_slots is not None and state.global_slots.in_use == 0


def _retried_once(delay: float) -> ExecutionEvent[Any]:
    """An event whose first call fails and whose retry comes ``delay`` seconds later."""
    tries: list[int] = []

    async def flaky(item: Item, context: str, state: ExecutionState) -> int:
        tries.append(item.n)
        if len(tries) == 1:
            raise ConnectionError("the first attempt fails")
        return item.n

    return ExecutionEvent(
        actor=Tool(
            name="flaky",
            input_model=Item,
            handler=flaky,
            retry=RetryPolicy(max_attempts=2, initial_delay=delay, jitter=0),
        )
    )


async def test_a_lender_beginning_and_ending_during_a_take_back_starts_no_second_one() -> None:
    # A backoff of the member's own task began and ended while a join's take-back waited:
    # both took the slot back, and the member's task waited for a second slot for ever.
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    shared = _Shared(0.1)
    crowds = Crowds()
    retried = _retried_once(0.1)

    async def member() -> list[Any]:
        side = asyncio.create_task(shared.event(Item(n=1), "", state))
        await asyncio.sleep(0.2)  # the join's take-back queues behind X meanwhile
        await retried(Item(n=2), "", state)
        return ["M", (await side).result]

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await shared.started.wait()
    async with state.parallel(max_workers=1, name="g") as p:
        p.add(member, name="M")
        p.add(lambda: crowds.work("X", 0.5), name="X")
        results = await asyncio.wait_for(p.gather(), 5)
    await starter
    assert [r.result for r in results] == [["M", 1], "X"]
    assert p._pool.slots.in_use == 0


async def test_a_take_back_cut_short_by_a_stop_counts_the_slot_once() -> None:
    # The member's timeout fired during its take-back while a task of its own had begun a
    # join: the slot was counted twice, and the last member never ran.
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    shared = _Shared(0.5)
    crowds = Crowds()
    retried = _retried_once(0.1)
    left_behind: list[asyncio.Task[Any]] = []

    async def member() -> str:
        async def join() -> Any:
            await asyncio.sleep(0.15)
            return (await shared.event(Item(n=1), "", state)).result

        left_behind.append(asyncio.create_task(join()))
        await retried(Item(n=2), "", state)  # its take-back queues behind X
        return "M"

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await shared.started.wait()
    async with state.parallel(max_workers=1, name="g") as p:
        p.add(member, timeout=0.3)
        p.add(lambda: crowds.work("X", 0.6))
        p.add(lambda: crowds.work("Y", 0.05))
        results = await asyncio.wait_for(p.gather(), 5)
    await asyncio.gather(starter, *left_behind)
    assert [r.status.value for r in results] == ["timed_out", "completed", "completed"]
    assert p._pool.slots.in_use == 0


async def test_a_left_behind_join_cut_short_after_its_member_ended_leaks_nothing() -> None:
    # The member ended while its left-behind join waited to take the slot back; the join's
    # own timeout then cut that take-back short, and the slot it was counted stayed taken.
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    shared = _Shared(0.1)
    crowds = Crowds()
    left_behind: list[asyncio.Task[Any]] = []

    async def member() -> str:
        async def join() -> Any:
            try:
                async with asyncio.timeout(0.3):
                    return (await shared.event(Item(n=1), "", state)).result
            except TimeoutError:
                return "timed out"

        left_behind.append(asyncio.create_task(join()))
        await asyncio.sleep(0.15)  # ends while the join's take-back waits behind X
        return "M"

    starter = asyncio.create_task(shared.event(Item(n=1), "", state))
    await shared.started.wait()
    async with state.parallel(max_workers=1, name="g") as p:
        p.add(member)
        p.add(lambda: crowds.work("X", 0.6))
        p.add(lambda: crowds.work("Y", 0.05))
        results = await asyncio.wait_for(p.gather(), 5)
    await asyncio.gather(starter, *left_behind)
    assert [r.result for r in results] == ["M", "X", "Y"]
    assert p._pool.slots.in_use == 0
