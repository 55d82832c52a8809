"""Limits: per-group and global workers, nesting without deadlock, dependencies, priorities,
and lazy map() input pulled only as workers free up."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from parallel_support import Doc, Gauge, assert_no_leftover_tasks, echo_tool, own_tasks, steps
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ResultStatus
from rh_agents.errors import MemberSkippedError

pytestmark = pytest.mark.asyncio


async def test_group_max_workers_is_respected() -> None:
    state = ExecutionState()
    gauge = Gauge()

    async def work(i: int) -> int:
        gauge.enter()
        await steps(3 + i % 4)
        gauge.exit()
        return i

    async with state.parallel(max_workers=3) as p:
        for i in range(20):
            p.add(work(i))
    assert [r.result for r in await p.gather()] == list(range(20))
    assert gauge.total_high == 3
    assert p.statistics().concurrency_high_water == 3


async def test_global_limit_over_several_groups() -> None:
    state = ExecutionState(global_max_workers=2)
    gauge = Gauge()

    async def work(group: str) -> None:
        gauge.enter(group)
        await steps(4)
        gauge.exit(group)

    async def run_group(name: str) -> None:
        async with state.parallel(max_workers=3, name=name) as p:
            for _ in range(6):
                p.add(work(name))

    await asyncio.gather(run_group("a"), run_group("b"), run_group("c"))
    assert gauge.total_high == 2
    assert state.global_slots is not None and state.global_slots.in_use == 0


@pytest.mark.parametrize("global_limit", [1, 2])
@pytest.mark.parametrize("use_stream", [False, True])
async def test_nested_groups_depth_three_never_deadlock(
    global_limit: int, use_stream: bool
) -> None:
    state = ExecutionState(global_max_workers=global_limit)
    gauge = Gauge()
    before = own_tasks()

    async def leaf(i: int) -> int:
        gauge.enter()
        await steps(2)
        gauge.exit()
        return i

    async def collect(p: Any) -> list[Any]:
        if use_stream:
            return [r async for r in p.stream()]
        return list(await p.gather())

    async def middle(i: int) -> int:
        async with state.parallel(max_workers=2, name="mid") as p:
            for j in range(3):
                p.add(leaf(j))
            results = await collect(p)
        return sum(r.result for r in results) + i

    async def top(i: int) -> int:
        async with state.parallel(max_workers=2, name="inner") as p:
            for j in range(2):
                p.add(middle(j))
            results = await collect(p)
        return sum(r.result for r in results)

    async with asyncio.timeout(10):  # a deadlock fails here instead of hanging
        async with state.parallel(max_workers=3, name="outer") as p:
            for i in range(3):
                p.add(top(i))
            results = await p.gather()
    assert [r.result for r in results] == [7, 7, 7]  # (0+1+2)+0 + (0+1+2)+1
    assert gauge.total_high <= global_limit
    assert state.global_slots is not None and state.global_slots.in_use == 0
    assert_no_leftover_tasks(before)


async def test_dependencies_run_after_and_failures_skip() -> None:
    state = ExecutionState()
    order: list[str] = []

    async def step(name: str, fail: bool = False) -> str:
        order.append(name)
        await steps(1)
        if fail:
            raise RuntimeError(f"{name} broke")
        return name

    async with state.parallel(max_workers=4) as p:
        p.add("fetch", step("fetch"))
        p.add("parse", step("parse"), after="fetch")
        p.add("bad", step("bad", fail=True))
        p.add("index", step("index"), after=["parse", "bad"])
        p.add("report", step("report"), after=["index"])
        results = await p.gather_dict()
    assert order.index("parse") > order.index("fetch")
    assert "index" not in order and "report" not in order
    assert results["index"].status is ResultStatus.SKIPPED
    assert isinstance(results["index"].exception, MemberSkippedError)
    assert "'bad'" in (results["index"].error or "")
    assert results["report"].status is ResultStatus.SKIPPED
    assert "'index'" in (results["report"].error or "")


async def test_dependency_on_already_failed_member_skips_at_once() -> None:
    state = ExecutionState()

    async def bad() -> None:
        raise ValueError("no")

    async with state.parallel() as p:
        p.add("a", bad())
        await steps(3)
        assert p.statistics().failed == 1
        p.add("b", bad(), after="a")
    assert (await p.gather_dict())["b"].status is ResultStatus.SKIPPED


async def test_priorities_start_higher_first_when_contended() -> None:
    state = ExecutionState()
    started: list[str] = []

    async def job(name: str) -> None:
        started.append(name)
        await steps(1)

    async with state.parallel(max_workers=1) as p:
        p.add(job("low"), priority=0)
        p.add(job("high"), priority=10)
        p.add(job("mid"), priority=5)
        p.add(job("low2"), priority=0)
    assert started == ["high", "mid", "low", "low2"]


async def test_priorities_with_global_limit() -> None:
    state = ExecutionState(global_max_workers=1)
    started: list[str] = []

    async def job(name: str) -> None:
        started.append(name)
        await steps(1)

    async with state.parallel(max_workers=1) as p:
        for i in range(3):
            p.add(job(f"p{i}"), priority=i)
    assert started == ["p2", "p1", "p0"]


class PullCounter:
    """A generator that records how many items are pulled but not yet finished."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0
        self.finished = 0
        self.max_in_flight = 0
        self.closed = False

    def items(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                self.pulled += 1
                self.max_in_flight = max(self.max_in_flight, self.pulled - self.finished)
                yield i
        finally:
            self.closed = True

    async def aitems(self) -> AsyncIterator[int]:
        try:
            for i in range(self.n):
                await asyncio.sleep(0)
                self.pulled += 1
                self.max_in_flight = max(self.max_in_flight, self.pulled - self.finished)
                yield i
        finally:
            self.closed = True

    async def work(self, item: int) -> int:
        await steps(1 + item % 3)
        self.finished += 1
        return item * 2


@pytest.mark.parametrize("is_async", [False, True])
async def test_map_pulls_lazily(is_async: bool) -> None:
    state = ExecutionState()
    counter = PullCounter(50)
    before = own_tasks()
    async with state.parallel(max_workers=4) as p:
        p.map(counter.work, counter.aitems() if is_async else counter.items())
        seen = [r async for r in p.stream()]
    assert counter.max_in_flight <= 4
    assert counter.pulled == 50 and counter.finished == 50
    assert sorted(r.result for r in seen) == [i * 2 for i in range(50)]
    assert [r.result for r in await p.gather()] == [i * 2 for i in range(50)]
    assert_no_leftover_tasks(before)


async def test_map_stopped_early_closes_the_input() -> None:
    state = ExecutionState()
    counter = PullCounter(1000)

    async def work(item: int) -> int:
        if item == 5:
            raise ValueError("stop here")
        await steps(1)
        return item

    with pytest.raises(ValueError, match="stop here"):
        async with state.parallel(max_workers=2, error_strategy="fail_fast") as p:
            p.map(work, counter.items())
    assert counter.closed
    assert counter.pulled <= 8


async def test_map_input_error_is_raised() -> None:
    state = ExecutionState()

    def broken() -> Iterator[int]:
        yield 1
        raise OSError("input went away")

    async def work(item: int) -> int:
        return item

    with pytest.raises(OSError, match="input went away"):
        async with state.parallel(max_workers=2) as p:
            p.map(work, broken())
    assert state.internal_errors == []


async def test_map_with_an_event_runs_each_item_at_its_index() -> None:

    state = ExecutionState()
    async with state.parallel(max_workers=2, name="m") as p:
        p.map(ExecutionEvent(actor=echo_tool), (Doc(text=t) for t in ["a", "b", "c"]))
    results = await p.gather()
    assert [(r.result, r.address) for r in results] == [
        ("A", "m[0]::echo"),
        ("B", "m[1]::echo"),
        ("C", "m[2]::echo"),
    ]


async def test_group_timeout_while_members_wait_for_the_global_slot() -> None:
    state = ExecutionState(global_max_workers=1)
    before = own_tasks()
    holding = asyncio.Event()

    async def hold() -> None:
        holding.set()
        await asyncio.Event().wait()

    async def quick() -> int:
        return 1

    async with state.parallel(name="holder") as a:
        a.add(hold())
        await holding.wait()
        async with state.parallel(name="starved", timeout=0.02) as b:
            b.add(quick())
            b.add(quick())
        assert [r.status for r in await b.gather()] == [ResultStatus.TIMED_OUT] * 2
        assert state.global_slots is not None
        assert (state.global_slots.in_use, state.global_slots.waiting) == (1, 0)
        a.cancel()
    assert state.global_slots.in_use == 0
    assert_no_leftover_tasks(before)


async def test_a_member_can_lend_its_worker_while_it_only_waits() -> None:
    from rh_agents.core.context import current_frame

    state = ExecutionState()
    b_ran = asyncio.Event()
    gauge = Gauge()

    async def lender() -> str:
        gauge.enter()
        slot = current_frame(state).slot
        gauge.exit()
        slot.lend()  # e.g. a retry backoff: no work, so no worker held
        await b_ran.wait()
        await slot.reclaim()
        gauge.enter()
        await steps(2)
        gauge.exit()
        return "a"

    async def other() -> str:
        gauge.enter()
        await steps(2)
        gauge.exit()
        b_ran.set()
        return "b"

    async with asyncio.timeout(10), state.parallel(max_workers=1) as p:
        p.add(lender())
        p.add(other())
        p.add(other())
    assert [r.result for r in await p.gather()] == ["a", "b", "b"]
    assert gauge.total_high == 1
    pool = p._pool.statistics()
    assert (pool.slots_in_use, pool.waiting_for_slot) == (0, 0)


async def test_exception_in_block_body_cancels_and_closes() -> None:
    state = ExecutionState()
    before = own_tasks()
    started = asyncio.Event()

    async def runs() -> None:
        started.set()
        await asyncio.Event().wait()

    async def never() -> None:
        raise AssertionError("must not run")

    running, waiting = runs(), never()
    with pytest.raises(KeyError):
        async with state.parallel(max_workers=1) as p:
            p.add(running)
            p.add(waiting)
            await started.wait()
            raise KeyError("body failed")
    assert [r.status for r in await p.gather()] == [ResultStatus.CANCELLED] * 2
    assert inspect.getcoroutinestate(waiting) == inspect.CORO_CLOSED
    assert_no_leftover_tasks(before)
