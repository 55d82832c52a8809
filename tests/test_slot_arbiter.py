"""The slot arbiter: one queue per limit, and no slot idle while anyone waits for it.

Unit tests of ``SlotArbiter`` itself, then the group-level defects it fixes: a retry backoff
under a worker limit (the member that lends its slot and the one that wants it back used to
wait on two queues, and a free slot sat idle), and a group stopped while a member waits to
take its slot back.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from pydantic import BaseModel

from conftest import Recorder
from parallel_support import Gauge, assert_no_leftover_tasks, own_tasks, steps, until
from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy, RetryPolicy, SlotArbiter
from rh_agents.core.records import EventRetrying, MemberFinished
from rh_agents.core.results import ResultStatus
from rh_agents.errors import ConfigurationError
from rh_agents.observability.timeline import TimelineRecorder
from rh_agents.testing import ManualClock

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]


class Level:
    """A limit that moves, like an ``AdaptiveLimit``."""

    def __init__(self, current: int) -> None:
        self.current = current


def check_liveness(arbiter: SlotArbiter) -> None:
    """The rule the arbiter enforces: nobody waits while a slot is free."""
    assert arbiter.waiting == 0 or arbiter.in_use >= arbiter.limit


async def test_a_released_slot_goes_to_the_oldest_waiter_without_being_free() -> None:
    arbiter = SlotArbiter(1)
    await arbiter.acquire()
    order: list[str] = []

    async def wants(name: str) -> None:
        await arbiter.acquire()
        order.append(name)

    first = asyncio.create_task(wants("first"))
    second = asyncio.create_task(wants("second"))
    await steps(2)
    assert (arbiter.in_use, arbiter.waiting) == (1, 2)
    check_liveness(arbiter)
    arbiter.release()
    # Handed over: still one in use, and a newcomer cannot overtake the second waiter.
    assert arbiter.in_use == 1 and not arbiter.try_acquire()
    await first
    arbiter.release()
    await second
    assert order == ["first", "second"]
    arbiter.release()
    assert (arbiter.in_use, arbiter.waiting) == (0, 0)


async def test_on_free_is_called_only_when_no_task_waits() -> None:
    freed: list[int] = []
    arbiter = SlotArbiter(1, on_free=lambda: freed.append(arbiter.in_use))
    await arbiter.acquire()
    waiter = asyncio.create_task(arbiter.acquire())
    await steps(1)
    arbiter.release()  # goes to the waiter: nothing freed
    await waiter
    assert freed == []
    arbiter.release()
    assert freed == [0]


async def test_a_waiter_cancelled_after_release_skipped_it_leaves_no_error() -> None:
    # The waiter's future is cancelled, then a release pops and skips it before the waiting
    # task resumes: the task's cleanup must not fail looking for it in the queue.
    arbiter = SlotArbiter(1)
    await arbiter.acquire()
    waiter = asyncio.create_task(arbiter.acquire())
    await steps(1)
    waiter.cancel()
    arbiter.release()  # skips the cancelled waiter: the slot is free now
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (arbiter.in_use, arbiter.waiting) == (0, 0)


async def test_a_slot_handed_to_a_task_cancelled_meanwhile_is_passed_on() -> None:
    arbiter = SlotArbiter(1)
    await arbiter.acquire()
    doomed = asyncio.create_task(arbiter.acquire())
    patient = asyncio.create_task(arbiter.acquire())
    await steps(1)
    arbiter.release()  # handed to `doomed` ...
    doomed.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await patient  # the slot went on to the next waiter
    assert (arbiter.in_use, arbiter.waiting) == (1, 0)


async def test_count_if_cancelled_keeps_a_workers_count_balanced() -> None:
    arbiter = SlotArbiter(1)
    await arbiter.acquire()
    reclaimer = asyncio.create_task(arbiter.acquire(count_if_cancelled=True))
    await steps(1)
    reclaimer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reclaimer
    # Counted although never handed over: the worker's exit releases it.
    assert (arbiter.in_use, arbiter.waiting) == (2, 0)
    arbiter.release()
    arbiter.release()
    assert arbiter.in_use == 0


async def test_a_grown_limit_serves_waiters_then_ready_work() -> None:
    level = Level(1)
    freed: list[str] = []
    arbiter = SlotArbiter(level, on_free=lambda: freed.append("ready"))
    await arbiter.acquire()
    waiter = asyncio.create_task(arbiter.acquire())
    await steps(1)
    level.current = 3
    arbiter.limit_changed()
    await waiter
    assert arbiter.in_use == 2 and freed == ["ready"]  # the third slot: for ready members
    # A shrunk limit retires released slots instead of handing them on.
    level.current = 1
    other = asyncio.create_task(arbiter.acquire())
    await steps(1)
    arbiter.release()
    assert (arbiter.in_use, arbiter.waiting) == (1, 1)
    check_liveness(arbiter)
    arbiter.release()
    await other
    arbiter.release()
    assert arbiter.in_use == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
async def test_a_bad_limit_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="worker limit"):
        SlotArbiter(bad)


# --- groups: retries, limits and stops together -----------------------------------------------


@pytest.mark.parametrize("form", ["callable", "member_retry", "global_limit"])
async def test_a_retry_backoff_under_a_worker_limit_never_deadlocks(form: str) -> None:
    """The first flaky-API workload: an attempt lasts longer than the backoff.

    Member 0 fails and lends its slot; member 1 takes it and is still working when member
    0's backoff ends, so 0 waits to take a slot back. Then 1 fails and lends the slot: it
    must go to 0, which waits for it (it used to sit idle while both waited, forever).
    """
    state = ExecutionState(
        global_max_workers=1 if form == "global_limit" else None, clock=ManualClock()
    )
    calls: dict[int, int] = {}
    zero_waits = asyncio.Event()

    async def flaky(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        if i == 1 and calls[i] == 1:
            await zero_waits.wait()  # still working when member 0 wants its slot back
        if calls[i] == 1:
            raise ConnectionError(f"member {i} lost its connection")
        return i

    policy = RetryPolicy(max_attempts=2, initial_delay=0.001, jitter=0)
    group_retry = None if form == "member_retry" else policy
    member_retry = policy if form == "member_retry" else None
    async with state.parallel(max_workers=1, retry=group_retry) as p:
        p.add(lambda: flaky(0), retry=member_retry)
        p.add(lambda: flaky(1), retry=member_retry)
        await until(
            lambda: p._pool.statistics().waiting_for_slot == 1
        )  # member 0 waits to take a slot back
        zero_waits.set()
        results = await p.gather()
    assert calls == {0: 2, 1: 2}
    assert [(r.result, r.attempts) for r in results] == [(0, 2), (1, 2)]
    assert p.metrics().retries == 2
    assert state.internal_errors == []


async def test_many_flaky_members_under_small_limits_all_finish() -> None:
    state = ExecutionState(global_max_workers=2, clock=ManualClock())
    gauge = Gauge()
    calls: dict[int, int] = {}

    async def flaky(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        gauge.enter()
        await steps(1 + i % 3)
        gauge.exit()
        if calls[i] <= i % 3:
            raise ConnectionError("try again")
        return i

    retry = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0)

    async def group(offset: int) -> list[Any]:
        async with state.parallel(max_workers=2, retry=retry) as p:
            for i in range(offset, offset + 12):
                p.add(lambda i=i: flaky(i))
        return [(r.result, r.attempts) for r in await p.gather()]

    first, second = await asyncio.gather(group(0), group(12))
    assert first + second == [(i, i % 3 + 1) for i in range(24)]
    assert gauge.total_high <= 2
    assert state.internal_errors == []


@pytest.mark.parametrize("stop", ["timeout", "cancel", "fail_fast"])
async def test_a_group_stopped_while_a_member_waits_for_its_slot(stop: str) -> None:
    """The waiting member ends as the stop says (never FAILED by an internal error)."""
    state = ExecutionState(clock=ManualClock())
    before = own_tasks()
    zero_waits = asyncio.Event()

    async def fails_first() -> str:
        raise ConnectionError("try again")

    async def holds_the_slot() -> str:
        await zero_waits.wait()
        if stop == "fail_fast":
            raise ValueError("broken")  # FAIL_FAST stops the group here
        await asyncio.Event().wait()  # never finishes: holds the only slot
        return "never"

    strategy = ErrorStrategy.FAIL_FAST if stop == "fail_fast" else ErrorStrategy.FAIL_SLOW
    retry = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0)
    p = state.parallel(
        max_workers=1,
        timeout=0.05 if stop == "timeout" else None,
        retry=retry,
        error_strategy=strategy,
    )
    raised: BaseException | None = None
    try:
        async with p:
            p.add(fails_first, priority=2)
            p.add(holds_the_slot, priority=1, retry=RetryPolicy(max_attempts=1))
            await until(
                lambda: p._pool.statistics().waiting_for_slot == 1
            )  # member 0 is back from its backoff
            zero_waits.set()
            if stop == "cancel":
                p.cancel()
    except ValueError as exc:  # FAIL_FAST re-raises the failure
        raised = exc
    assert (raised is not None) == (stop == "fail_fast")
    waiting = p._tally.results[0]
    assert waiting is not None
    expected = ResultStatus.TIMED_OUT if stop == "timeout" else ResultStatus.CANCELLED
    assert waiting.status is expected, waiting.error
    assert waiting.attempts == 1
    assert state.internal_errors == []
    pool = p._pool.statistics()
    assert (pool.slots_in_use, pool.waiting_for_slot) == (0, 0)
    assert_no_leftover_tasks(before)


@pytest.mark.parametrize("member_form", ["callable", "event"])
async def test_attempts_agree_in_results_metrics_records_printer_and_timeline(
    member_form: str,
) -> None:
    """Member i fails its first i attempts (at most 3 are allowed): every view agrees."""

    class Item(BaseModel):
        i: int

    calls: dict[int, int] = {}

    async def flaky(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        await asyncio.sleep(0)
        if calls[i] <= i:
            raise ConnectionError(f"attempt {calls[i]} of member {i}")
        return i

    async def handler(item: Item, context: str, state: ExecutionState) -> int:
        return await flaky(item.i)

    retry = RetryPolicy(max_attempts=3, initial_delay=0.25, jitter=0)
    tool = Tool(
        name="flaky",
        description="fails its first i attempts",
        input_model=Item,
        handler=handler,
        retry=retry,
    )
    recorder, timeline = Recorder(), TimelineRecorder()
    printer_out = io.StringIO()
    printer = ParallelEventPrinter(parallel_mode="progress", file=printer_out)
    bus = EventBus()
    for subscriber in (recorder, timeline, printer):
        bus.subscribe(subscriber)
    state = ExecutionState(event_bus=bus, clock=ManualClock())
    event = ExecutionEvent(actor=tool)
    async with state.parallel(max_workers=2, name="g", retry=retry) as p:
        for i in range(5):
            if member_form == "callable":
                p.add(lambda i=i: flaky(i))
            else:
                p.add(event(Item(i=i), "", state))
    results = await p.gather()
    await bus.close()
    expected = [min(i + 1, 3) for i in range(5)]
    assert [r.attempts for r in results] == expected
    assert [r.ok for r in results] == [True, True, True, False, False]
    assert calls == dict(enumerate(expected))
    finished = sorted(
        (r for r in recorder.records if isinstance(r, MemberFinished)),
        key=lambda r: r.parallel_index or 0,
    )
    assert [r.attempts for r in finished] == expected
    retried = sum(n - 1 for n in expected)
    assert p.metrics().retries == retried
    assert sum(isinstance(r, EventRetrying) for r in recorder.records) == retried
    (group,) = timeline.timeline().groups
    assert [bar.attempts for bar in group.bars()] == expected
    assert sum(len(bar.retries) for bar in group.bars()) == retried
    assert f"{retried} retried" in printer_out.getvalue()


@pytest.mark.parametrize("limits", ["group", "global"])
async def test_identical_cached_calls_with_retries_under_one_slot_never_deadlock(
    limits: str,
) -> None:
    """The first call fails once and backs off; the others join it while it waits.

    A joiner holding the only slot while it waited for the shared call left that call, back
    from its backoff, waiting for the slot forever. Joiners now lend their slots.
    """
    from rh_agents.recovery import ActorCache, MemoryCacheStore

    class Key(BaseModel):
        x: int

    calls: list[int] = []

    async def double(key: Key, context: str, state: ExecutionState) -> int:
        calls.append(key.x)
        await asyncio.sleep(0)
        if len(calls) == 1:
            raise ConnectionError("flaky")
        return key.x * 2

    tool = Tool(
        name="double",
        description="doubles, failing its first call",
        input_model=Key,
        handler=double,
        cacheable=True,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0),
    )
    state = ExecutionState(
        cache=ActorCache(MemoryCacheStore()),
        clock=ManualClock(),
        global_max_workers=1 if limits == "global" else None,
    )
    event = ExecutionEvent(actor=tool)
    async with state.parallel(max_workers=1 if limits == "group" else 4) as p:
        for _ in range(5):
            p.add(event(Key(x=3), "", state))
    results = await p.gather()
    assert [r.result for r in results] == [6] * 5
    assert calls == [3, 3]  # one call, retried once; every other caller shared it
    assert [r.source for r in results] == ["run"] + ["cache"] * 4
    pool = p._pool.statistics()
    assert (pool.slots_in_use, pool.waiting_for_slot) == (0, 0)
    assert state.internal_errors == []
