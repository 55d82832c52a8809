"""The watchdog's thread stays out of the loop's way: the loop measures itself with a beat,
the thread only reads when the next beat is due, and one loop held for ever does not keep
the thread from watching the others."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from rh_agents import ExecutionState, ParallelExecutionManager, Watchdog
from rh_agents.core import watchdog
from rh_agents.errors import LoopBlockedWarning, UnusedGroupWarning

WATCHDOG_THREAD = "rh_agents watchdog"


def recording(calls: list[str], read: Callable[..., Any]) -> Callable[..., Any]:
    def record(*args: Any) -> Any:
        calls.append(threading.current_thread().name)
        return read(*args)

    return record


async def test_a_free_loop_is_measured_by_its_own_beat_and_the_thread_reads_no_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each file the thread reads is a system call that hands the GIL over to it and back:
    # the loop pays for it. While the loop is free, the thread must read none.
    waits: list[str] = []
    samples: list[str] = []
    monkeypatch.setattr(watchdog, "_waited", recording(waits, watchdog._waited))
    monkeypatch.setattr(watchdog, "read_sample", recording(samples, watchdog.read_sample))
    state = ExecutionState()
    async with state.parallel(name="free") as p:
        p.add(asyncio.sleep(0.3))
    usage = p.resource_usage()
    assert usage is not None
    assert usage.loop_lag.count >= 5  # a beat every 25 ms, give or take
    assert usage.loop_lag.max < 0.1
    assert usage.samples >= 2  # memory and files, read by the beat every 50 ms
    here = threading.current_thread().name
    assert waits and samples
    assert set(waits) == {here} and set(samples) == {here}


def _on_a_stopped_loop(loop: asyncio.AbstractEventLoop, step: Any) -> Any:
    """Run ``step()`` on ``loop`` from another thread and return what it returned; the loop
    is stopped again afterwards (not closed)."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(loop.run_until_complete(step())))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and box
    return box[0]


async def test_a_loop_stopped_in_the_middle_of_a_group_does_not_hide_a_block_elsewhere() -> None:
    # Loop A stops with a group entered (its beat overdue for ever: to the thread, a held
    # loop it follows). The thread must still find the block on this loop.
    other = asyncio.new_event_loop()
    try:
        stranded = ExecutionState(watchdog=Watchdog(block_threshold=5))

        async def enter() -> ParallelExecutionManager[Any]:
            group = stranded.parallel(name="stranded")
            await group.__aenter__()
            return group

        group = _on_a_stopped_loop(other, enter)
        await asyncio.sleep(0.1)  # the thread has followed the stranded loop a while

        def blocks() -> None:
            time.sleep(0.3)

        async def member() -> None:
            blocks()

        state = ExecutionState(watchdog=Watchdog(block_threshold=0.1))
        with pytest.warns(LoopBlockedWarning, match=r"member here\[0\] held the event loop"):
            async with state.parallel(name="here") as p:
                p.add(member())

        async def leave() -> None:
            await group.__aexit__(None, None, None)

        _on_a_stopped_loop(other, leave)
    finally:
        other.close()


async def test_a_hold_before_a_group_opened_is_not_charged_to_it() -> None:
    # The first group's beat is still pending when the loop is held outside any group (a
    # synchronous set-up step, say); the next group opens after the hold: neither its lag
    # nor its members' holds include it.
    state = ExecutionState(watchdog=Watchdog(block_threshold=0.1))
    async with state.parallel(name="first") as first:
        first.add(asyncio.sleep(0))
    time.sleep(0.3)  # noqa: ASYNC251

    async def member() -> None:
        time.sleep(0.06)  # noqa: ASYNC251  (a hold under the threshold)
        await asyncio.sleep(0.1)

    async with state.parallel(name="second") as second:  # (a LoopBlockedWarning fails)
        second.add(member())
    usage = second.resource_usage()
    assert usage is not None and usage.loop_lag.count >= 2
    assert usage.loop_lag.max < 0.2


async def test_a_beat_that_fails_is_logged_and_the_loop_goes_on_beating(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failures = [1]
    add_lag = watchdog.Window.add_lag

    def fails_once(window: watchdog.Window, seconds: float) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("a bug in a beat")
        add_lag(window, seconds)

    monkeypatch.setattr(watchdog.Window, "add_lag", fails_once)
    state = ExecutionState()
    async with state.parallel(name="first") as first:
        first.add(asyncio.sleep(0.2))
    assert not failures  # the first beat failed...
    assert "the watchdog's beat failed" in caplog.text
    usage = first.resource_usage()
    assert usage is not None and usage.loop_lag.count >= 3  # ...and the beats went on
    async with state.parallel(name="second") as second:
        second.add(asyncio.sleep(0.1))
    usage = second.resource_usage()
    assert usage is not None and usage.loop_lag.count >= 2


def test_a_loop_closed_with_its_beat_pending_is_collected() -> None:
    # The last group ends less than a beat before the loop closes: the pending beat must not
    # keep the loop (nor what the block's context held) alive.
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    states: list[weakref.ref[ExecutionState]] = []

    async def main() -> None:
        state = ExecutionState()
        states.append(weakref.ref(state))
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with state.parallel(name="last") as p:
            p.add(asyncio.sleep(0.01))

    for _ in range(3):
        asyncio.run(main())
    gc.collect()
    assert [ref() for ref in loops] == [None] * 3
    assert [ref() for ref in states] == [None] * 3


def test_a_loop_closed_with_a_group_left_open_is_no_longer_watched() -> None:
    async def member(running: asyncio.Event) -> None:
        running.set()
        await asyncio.sleep(100)

    async def left_open(state: ExecutionState, running: asyncio.Event) -> None:
        async with state.parallel(name="left") as p:
            p.add(member(running))

    async def main() -> None:
        state = ExecutionState()
        running = asyncio.Event()
        asyncio.get_running_loop().create_task(left_open(state, running))
        await running.wait()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        monitor = watchdog._WATCHDOG.monitor(loop)
        assert monitor.windows and monitor.active
    finally:
        # (The group left open says so as it is collected with its task.)
        with pytest.warns(UnusedGroupWarning, match="group 'left'"):
            loop.close()
            gc.collect()
    deadline = time.monotonic() + 5
    while monitor.active and time.monotonic() < deadline:
        time.sleep(watchdog.BEAT_EVERY)  # the thread's next cycle lets it go
    assert not monitor.active


async def test_a_member_opening_a_nested_group_in_the_middle_of_a_hold_is_still_seen() -> None:
    # One hold of the loop by one member, 180 ms: 90 before it opens a nested group (which
    # does not suspend), 90 in that group's block. Each half is under the threshold; the
    # hold is not, and opening the group must not cut it in two.
    state = ExecutionState(watchdog=Watchdog(block_threshold=0.1))

    async def member() -> None:
        await asyncio.sleep(0.06)
        time.sleep(0.09)  # noqa: ASYNC251
        async with state.parallel(name="inner") as inner:
            time.sleep(0.09)  # noqa: ASYNC251
            inner.add(asyncio.sleep(0))

    with pytest.warns(LoopBlockedWarning, match=r"member outer\[0\] held the event loop"):
        async with state.parallel(name="outer") as p:
            p.add(member())


async def test_a_thread_that_keeps_the_gil_is_not_blamed_on_a_member() -> None:
    # Another thread sorts two million numbers: a C loop that keeps the GIL for about a
    # second, taken from the loop's thread in the middle of a member's (short) work. The
    # loop cannot run meanwhile, but the member did not hold it: no LoopBlockedWarning (any
    # warning fails the test).
    numbers = list(range(2_000_000))
    random.Random(1).shuffle(numbers)
    sorter = threading.Thread(target=sorted, args=(numbers,))
    state = ExecutionState(watchdog=Watchdog(block_threshold=0.1))

    async def member() -> None:
        await asyncio.sleep(0.05)
        sorter.start()
        end = time.perf_counter() + 0.03
        while time.perf_counter() < end:  # Python code: the sorter takes the GIL in here
            pass
        await asyncio.sleep(0.05)

    try:
        async with state.parallel(name="gil") as p:
            p.add(member())
    finally:
        sorter.join()
    usage = p.resource_usage()
    assert usage is not None and usage.loop_lag.max > 0.3  # the loop was held all the same


async def test_a_loop_busy_with_many_short_steps_in_one_turn_blames_no_member() -> None:
    # Two thousand members, each a few short steps: a turn of the loop runs them all (about
    # 0.15 s), so the beat is late, though no member held the loop for more than 0.1 ms.
    # A member seen at one look is not credited the turn (a warning would fail the test).
    state = ExecutionState(watchdog=Watchdog(block_threshold=0.1))

    def work() -> None:
        end = time.perf_counter() + 0.00007
        while time.perf_counter() < end:
            pass

    async def member() -> None:
        for _ in range(3):
            work()
            await asyncio.sleep(0)

    async with state.parallel(name="busy", max_workers=2000) as p:
        for _ in range(2000):
            p.add(member())
    usage = p.resource_usage()
    assert usage is not None and usage.loop_lag.max > 0.1  # the beat was late all the same
