"""What holds when a group's block is left: finished results are never lost to a timeout, and
synchronous subscribers (the printer) have every record of the group already."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console

from conftest import Recorder
from parallel_support import until, value
from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy
from rh_agents.core.records import GroupCompleted
from rh_agents.core.results import ResultStatus
from rh_agents.errors import ParallelTimeoutError

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]


async def hang() -> None:
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("strategy", "threshold"),
    [(ErrorStrategy.FAIL_FAST, None), (ErrorStrategy.FAIL_THRESHOLD, 2)],
)
async def test_a_timed_out_group_raises_with_every_result(
    strategy: ErrorStrategy, threshold: int | None
) -> None:
    state = ExecutionState()
    with pytest.raises(ParallelTimeoutError) as caught:
        async with state.parallel(
            max_workers=2, timeout=0.05, error_strategy=strategy, failure_threshold=threshold
        ) as p:
            p.add(value("done"))
            p.add(hang())
            p.add(hang())  # never started: the two slots are taken
    results = caught.value.results
    assert [r.status for r in results] == [
        ResultStatus.COMPLETED,
        ResultStatus.TIMED_OUT,
        ResultStatus.TIMED_OUT,
    ]
    assert results[0].result == "done"
    assert [r.index for r in results] == [0, 1, 2]
    assert "in this error's .results" in str(caught.value)


async def test_a_member_timeout_error_has_no_group_results() -> None:
    state = ExecutionState()
    async with state.parallel(member_timeout=0.01) as p:
        p.add(hang())
    (result,) = await p.gather()
    assert isinstance(result.exception, ParallelTimeoutError)
    assert result.exception.results == []


@pytest.mark.parametrize("leave", ["normally", "by_error", "by_parallel_execute"])
async def test_subscribers_have_every_record_when_the_block_is_left(leave: str) -> None:
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    state = ExecutionState(event_bus=bus)
    if leave == "normally":
        async with state.parallel(name="docs") as p:
            for i in range(3):
                p.add(value(i))
    elif leave == "by_error":
        with pytest.raises(KeyError):
            async with state.parallel(name="docs") as p:
                p.add(hang())
                await asyncio.sleep(0)
                raise KeyError("stop")
    else:
        await state.parallel_execute([value(i) for i in range(3)], name="docs")
    # No await since the block was left: the records are there already.
    completed = [r for r in recorder.records if isinstance(r, GroupCompleted)]
    assert [r.name for r in completed] == ["docs"]
    await bus.close()


async def test_the_printers_last_lines_come_before_the_programs_next_print() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    bus = EventBus()
    bus.subscribe(ParallelEventPrinter(console=console, parallel_mode="progress"))
    state = ExecutionState(event_bus=bus, watchdog=None)  # (no resource line in the summary)
    async with state.parallel(name="docs") as p:
        p.add(value(1))
    console.print("next line of the program")
    lines = out.getvalue().splitlines()
    # The group's summary (printed on its GroupCompleted record) comes before the next line.
    assert lines[-1] == "next line of the program"
    assert lines[-3].startswith("✔ 📦 docs: 1 finished · 1 ok")
    assert lines[-2].endswith('View details: execution_state.history.get_group("docs")')


async def test_workers_cancelled_by_someone_else_cancel_their_group() -> None:
    # A shutdown handler cancelling every task but its own: the group is cancelled with its
    # workers, no worker is started in place of one cancelled, and the members still
    # waiting are closed (their coroutines never run: no "never awaited" warning).
    started: list[int] = []
    two_running = asyncio.Event()

    async def member(i: int) -> int:
        started.append(i)
        if len(started) == 2:
            two_running.set()
        await asyncio.Event().wait()
        return i

    state = ExecutionState()
    me = asyncio.current_task()
    async with state.parallel(max_workers=2) as p:
        for i in range(6):
            p.add(member(i))
        await two_running.wait()
        workers = [task for task in asyncio.all_tasks() if task is not me]
        assert len(workers) == 2
        for task in workers:
            task.cancel()
        results = await p.gather()
    assert started == [0, 1]
    assert [r.status for r in results] == [ResultStatus.CANCELLED] * 6
    assert asyncio.all_tasks() == {me}
    assert p.group.status.value == "cancelled"
    await state.close()


async def test_a_stream_dropped_as_asyncio_run_ends_leaves_no_task_nor_coroutine_behind() -> None:
    # The stream of a group, broken out of at the end of main(): asyncio.run cancels the
    # workers as it shuts down. Nothing is left for the garbage collector to complain of.
    program = textwrap.dedent(
        """
        import asyncio
        from rh_agents import ExecutionState

        async def fn(i):
            await asyncio.sleep(0.02 * (i % 5))
            return i

        async def main():
            state = ExecutionState()
            group = state.parallel(batch_mode="as_completed", max_workers=4)
            results = await group.execute_parallel([fn(i) for i in range(50)])
            async for r in results:
                if r.result == 0:
                    break
            return r.index

        print(asyncio.run(main()))
        """
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-X", "dev", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    for noise in ("never awaited", "destroyed but it is pending", "internal error", "Traceback"):
        assert noise not in done.stderr, done.stderr


async def test_a_cancel_request_a_member_swallowed_does_not_cancel_its_group() -> None:
    # A member that was cancelled and swallowed it (3.11's TaskGroup leaves such a request
    # behind after a late child failure) leaves its worker's task.cancelling() at 1 with no
    # cancellation pending: that worker ending normally is not a cancellation of the group.
    release = asyncio.Event()

    async def swallows_a_cancel() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # (and no uncancel(): the request stays counted)
        return "swallowed"

    async def waits() -> str:
        await release.wait()
        return "waited"

    state = ExecutionState()
    async with state.parallel(max_workers=2) as p:
        p.add(waits())
        p.add(swallows_a_cancel())
        # The second worker ends after its one member, while the first still waits.
        await until(lambda: len(p._pool.workers) == 1)
        release.set()
    assert [r.result for r in await p.gather()] == ["waited", "swallowed"]
    assert p.group.status.value == "completed"
    await state.close()
