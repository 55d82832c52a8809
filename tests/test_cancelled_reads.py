"""What a read cancelled while it waits does to its group, and what a `break` does not.

A cancelled wait (a task awaiting ``gather()`` or stepping a stream, a timeout around it,
caught or not) cancels the group, whatever task it runs in; leaving a stream loop by
``break`` does not. Other readers end normally with the cancelled results.
"""

from __future__ import annotations

import asyncio

from parallel_support import until
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ResultStatus


async def hang() -> None:
    await asyncio.Event().wait()


async def test_cancelling_a_reader_in_another_task_cancels_the_group_and_other_readers_end() -> (
    None
):
    state = ExecutionState(watchdog=None)
    async with state.parallel(max_workers=4) as p:
        p.add("quick", asyncio.sleep(0, "q"))
        for _ in range(3):
            p.add(hang)

        async def read() -> list[ResultStatus]:
            return [r.status async for r in p.as_completed()]

        first = asyncio.create_task(read())
        second = asyncio.create_task(read())
        await until(lambda: p.statistics().succeeded == 1)
        first.cancel()
        statuses = await asyncio.wait_for(second, 5)
        assert first.cancelled()
    assert statuses.count(ResultStatus.COMPLETED) == 1
    assert statuses.count(ResultStatus.CANCELLED) == 3
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_caught_timeout_around_gather_cancels_the_group() -> None:
    state = ExecutionState(watchdog=None)
    async with state.parallel() as p:
        p.add(hang)
        p.add("done", asyncio.sleep(0, 1))
        try:
            await asyncio.wait_for(p.gather(), 0.02)
        except TimeoutError:
            pass
    # The block is left at once, with the stop's results (not after the hanging member).
    assert [r.status for r in await p.gather()] == [ResultStatus.CANCELLED, ResultStatus.COMPLETED]


async def test_leaving_a_stream_loop_by_break_leaves_the_others_running() -> None:
    state = ExecutionState(watchdog=None)
    release = asyncio.Event()
    async with state.parallel() as p:
        p.add("first", asyncio.sleep(0, 1))
        p.add("later", release.wait())
        async for result in p.stream():
            assert result.name == "first"
            break
        assert p.status.value == "running"
        release.set()
    assert [r.status for r in await p.gather()] == [ResultStatus.COMPLETED] * 2
