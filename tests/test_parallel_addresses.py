"""Addresses are deterministic; groups publish their lifecycle on the bus."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from conftest import Recorder
from parallel_support import Doc, echo_tool, steps
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import GroupCompleted, GroupStarted, MemberFinished, MemberStarted

pytestmark = pytest.mark.asyncio


Tree = tuple[dict[str, str], list[str], list[str]]


async def run_tree(seed: int, done_order: list[int]) -> Tree:
    """Two groups at the root, one nested, events everywhere; random completion order."""
    rng = random.Random(seed)
    state = ExecutionState()
    event = ExecutionEvent(actor=echo_tool)
    member_addresses: list[str] = []
    group_ids: list[str] = []

    async def member(i: int) -> str:
        await steps(rng.randint(0, 6))
        result = await event(Doc(text=f"t{i}"), "", state)
        done_order.append(i)
        if i == 1:
            async with state.parallel(max_workers=2) as inner:
                group_ids.append(inner.group_id)
                inner.add(event(Doc(text="n0"), "", state))
                inner.add(event(Doc(text="n1"), "", state))
                for r in await inner.gather():
                    member_addresses.append(r.address or "")
        return result.result or ""

    for _ in range(2):
        async with state.parallel(max_workers=3) as p:
            group_ids.append(p.group_id)
            for i in range(4):
                p.add(member(i))
            for r in await p.gather():
                member_addresses.append(r.address or "")
    history = {entry.address: entry.result.result for entry in state.history}
    return history, sorted(member_addresses), sorted(group_ids)


async def test_addresses_identical_across_runs_with_different_completion_orders() -> None:
    orders: tuple[list[int], list[int]] = ([], [])
    first = await run_tree(1, orders[0])
    second = await run_tree(2, orders[1])
    assert orders[0] != orders[1]  # the runs really finished in different orders
    assert first == second
    history, members, groups = first
    assert groups == ["parallel", "parallel#2", "parallel#2[1]::parallel", "parallel[1]::parallel"]
    assert "parallel[3]::echo" in history and "parallel#2[0]::echo" in history
    assert "parallel[1]::parallel[0]::echo" in history
    assert "parallel[1]::parallel[1]::echo" in members


async def test_member_address_and_named_group() -> None:
    state = ExecutionState()
    event = ExecutionEvent(actor=echo_tool)

    async def plain() -> int:
        return 1

    async with state.parallel(name="docs") as p:
        p.add(plain())
        p.add(event(Doc(text="x"), "", state))
    results = await p.gather()
    assert [r.address for r in results] == ["docs[0]", "docs[1]::echo"]
    bound = state.history["docs[1]::echo"].event
    assert (bound.group_id, bound.parallel_index, bound.is_parallel) == ("docs", 1, True)


async def test_group_lifecycle_records(
    state: ExecutionState, bus: EventBus, recorder: Recorder
) -> None:
    async def ok() -> int:
        await asyncio.sleep(0)  # suspends: its start is published
        return 1

    async def bad() -> None:
        await asyncio.sleep(0)
        raise ValueError("x")

    async def instant() -> int:
        return 1  # never suspends: only its finish is published

    async with state.parallel(max_workers=2, name="life") as p:
        p.add(ok())
        p.add(bad())
        p.add(ok())
        p.add(instant())
    await bus.drain()
    group_records = [r for r in recorder.records if r.address.startswith("life")]
    assert isinstance(group_records[0], GroupStarted)
    assert isinstance(group_records[-1], GroupCompleted)
    started = [r for r in group_records if isinstance(r, MemberStarted)]
    finished = [r for r in group_records if isinstance(r, MemberFinished)]
    assert sorted(r.index for r in started) == [0, 1, 2]
    for r in started:  # each start comes before its own finish
        position = group_records.index(r)
        assert all(group_records.index(f) > position for f in finished if f.index == r.index)
    last = next(f for f in finished if f.index == 3)
    assert last.status == "completed" and last.queue_wait >= 0
    assert [r.done for r in finished] == [1, 2, 3, 4]
    assert finished[-1].succeeded == 3 and finished[-1].failed == 1 and finished[-1].total == 4
    done = group_records[-1]
    assert isinstance(done, GroupCompleted)
    assert (done.total, done.succeeded, done.failed, done.status) == (4, 3, 1, "partial")
    for r in started:
        assert r.address == f"life[{r.index}]" and r.group_id == "life" and r.is_parallel


async def test_a_member_is_announced_before_its_own_records(
    state: ExecutionState, bus: EventBus, recorder: Recorder
) -> None:
    # The echo event finishes without suspending, yet it publishes records of its own: the
    # member's start must come first, so every consumer sees member, then event.
    event = ExecutionEvent(actor=echo_tool)
    async with state.parallel(name="ann") as p:
        p.add(event(Doc(text="x"), "", state))
    await bus.drain()
    kinds = [r.kind for r in recorder.records if r.address.startswith("ann[0]")]
    assert kinds[0] == "group.member_started"
    assert kinds[-1] == "group.member_finished"
    assert "event.started" in kinds[1:-1]


async def test_records_built_field_by_field_have_every_field(
    state: ExecutionState, bus: EventBus, recorder: Recorder
) -> None:
    # The hot-path records skip their dataclass __init__: a field added to the class but not
    # to its builder would be an unset slot. Every field of every record must read back.
    import dataclasses

    event = ExecutionEvent(actor=echo_tool)

    async def waits() -> int:
        await asyncio.sleep(0)
        return 1

    async with state.parallel(name="fields") as p:
        p.add(event(Doc(text="x"), "", state))
        p.add(event(Doc(text="fail"), "", state))
        p.add(waits())
    await bus.drain()
    kinds = set()
    for record in recorder.records:
        kinds.add(type(record).__name__)
        for f in dataclasses.fields(record):
            getattr(record, f.name)  # raises AttributeError on an unset slot
    assert {
        "EventStarted",
        "EventCompleted",
        "EventFailed",
        "MemberStarted",
        "MemberFinished",
    } <= kinds


async def test_a_replayed_calls_record_has_every_field(tmp_path: Path) -> None:
    import dataclasses

    from rh_agents.core.records import EventReplayed
    from rh_agents.recovery import Recovery

    event = ExecutionEvent(actor=echo_tool)
    store = tmp_path / "state.db"
    async with ExecutionState(run_id="fields", recovery=Recovery(store)) as first:
        await event(Doc(text="x"), "", first)
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    async with ExecutionState.resume("fields", backend=store, event_bus=bus) as again:
        await event(Doc(text="x"), "", again)
    (replayed,) = [r for r in recorder.records if isinstance(r, EventReplayed)]
    for f in dataclasses.fields(replayed):
        getattr(replayed, f.name)  # raises AttributeError on an unset slot
    assert (replayed.address, replayed.actor, replayed.attempts) == ("echo", "echo", 1)
