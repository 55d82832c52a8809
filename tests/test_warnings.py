"""Warnings that help: each fires when it should, names what it is about and what to do, is
published on the bus as a ``RunWarning``, and never fires on a clean run (the demo, the
examples). The suite turns every ``RHAgentsWarning`` into an error (pyproject's
filterwarnings), so a warning no test expects fails the test that caused it."""

from __future__ import annotations

import asyncio
import gc
import io
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console

from rh_agents import (
    EventBus,
    ExecutionEvent,
    ExecutionState,
    ParallelEventPrinter,
    Tool,
    Watchdog,
)
from rh_agents.core.records import BusEvent, RunWarning
from rh_agents.core.watchdog import open_window
from rh_agents.errors import (
    CoroutineResultWarning,
    LoopBlockedWarning,
    OversizedGroupWarning,
    RHAgentsWarning,
    SequentialGroupWarning,
    UnawaitedCallWarning,
    UnusedGroupWarning,
)

ROOT = Path(__file__).resolve().parent.parent


def watched() -> tuple[ExecutionState, list[RunWarning]]:
    """A state whose bus keeps the RunWarning records it gets."""
    bus = EventBus()
    seen: list[RunWarning] = []

    def keep(record: BusEvent) -> None:
        if isinstance(record, RunWarning):
            seen.append(record)

    bus.subscribe(keep, kinds=[RunWarning])
    return ExecutionState(event_bus=bus), seen


async def blocks(seconds: float) -> str:
    time.sleep(seconds)  # noqa: ASYNC251  (a blocking call in an async member: the mistake)
    return "done"


async def awaits(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


# --- LoopBlockedWarning -------------------------------------------------------------------


async def test_a_member_that_blocks_the_loop_is_named_with_what_to_do() -> None:
    state, seen = watched()
    with pytest.warns(LoopBlockedWarning) as caught:
        async with state.parallel(name="docs") as p:
            p.add(awaits(0.05))
            p.add(blocks(0.3))
    [warning] = caught.list
    text = str(warning.message)
    assert text.startswith("member docs[1] held the event loop for ")
    assert "without awaiting (the threshold is 100 ms)" in text
    assert "await asyncio.to_thread(fn, *args)" in text
    assert warning.filename == __file__  # it points at the user's line: the async with
    held = int(text.split("for ", 1)[1].split(" ms", 1)[0])
    assert 250 <= held <= 400
    await state.event_bus.drain()
    [record] = seen
    assert (record.category, record.address, record.group_id, record.parallel_index) == (
        "LoopBlockedWarning",
        "docs[1]",
        "docs",
        1,
    )
    assert "asyncio.to_thread" in record.hint
    assert [r.ok for r in await p.gather()] == [True, True]  # the run went on


async def test_a_member_blocking_inside_a_nested_group_is_named_by_its_own_address() -> None:
    state, _ = watched()

    async def agent() -> None:
        async with state.parallel(name="steps") as inner:
            inner.add(awaits(0.01))
            inner.add(blocks(0.25))

    with pytest.warns(LoopBlockedWarning, match=r"member outer\[0\]::steps\[1\] held"):
        async with state.parallel(name="outer") as p:
            p.add(agent())


async def test_the_threshold_is_the_watchdogs_and_awaiting_members_never_warn() -> None:
    bus = EventBus()
    state = ExecutionState(event_bus=bus, watchdog=Watchdog(block_threshold=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RHAgentsWarning)
        async with state.parallel(name="short") as p:
            p.add(blocks(0.2))  # under this state's threshold
        async with state.parallel(name="waits") as p:
            for _ in range(5):
                p.add(awaits(0.3))  # long, but awaiting
        off = ExecutionState(watchdog=None)
        async with off.parallel(name="off") as p:
            p.add(blocks(0.3))
    assert p.resource_usage() is None  # nothing watched it


async def test_a_watchdog_is_checked_when_made() -> None:
    from rh_agents.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="block_threshold must be seconds > 0"):
        Watchdog(block_threshold=0)
    with pytest.raises(ConfigurationError, match="watchdog must be a Watchdog"):
        ExecutionState(watchdog=0.1)  # type: ignore[arg-type]


def test_a_loop_on_virtual_time_is_not_watched() -> None:
    class VirtualLoop(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 0.0

    async def open_one() -> Any:
        state = ExecutionState()
        async with state.parallel() as p:
            return open_window(p, Watchdog())

    loop = VirtualLoop()
    try:
        assert loop.run_until_complete(open_one()) is None
    finally:
        loop.close()


# --- SequentialGroupWarning ----------------------------------------------------------------


async def test_members_that_never_await_run_one_at_a_time_and_the_group_says_so() -> None:
    state, seen = watched()
    with pytest.warns(SequentialGroupWarning) as caught:
        async with state.parallel(max_workers=5, name="cpu") as p:
            for _ in range(25):
                p.add(blocks(0.03))  # each under the block threshold; 0.75 s in all
    [warning] = caught.list
    assert str(warning.message).startswith("the 25 members of group 'cpu' held the event loop")
    assert "with max_workers=5 they still ran one at a time" in str(warning.message)
    assert "asyncio.to_thread" in str(warning.message)
    await state.event_bus.drain()
    assert [(r.category, r.address) for r in seen] == [("SequentialGroupWarning", "cpu")]


async def test_one_worker_or_awaiting_members_give_no_sequential_warning() -> None:
    state = ExecutionState()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RHAgentsWarning)
        async with state.parallel(max_workers=1, name="serial") as p:
            for _ in range(20):
                p.add(blocks(0.03))  # one at a time, as asked
        async with state.parallel(max_workers=5, name="io") as p:
            for _ in range(20):
                p.add(awaits(0.03))


# --- UnusedGroupWarning --------------------------------------------------------------------


async def test_a_group_made_and_never_run() -> None:
    state, seen = watched()
    group = state.parallel(max_workers=3, name="docs")
    with pytest.warns(UnusedGroupWarning, match="named 'docs' was made and never run") as caught:
        del group
        gc.collect()
    assert "async with state.parallel(...) as p:" in str(caught.list[0].message)
    await asyncio.sleep(0)  # the record is published from the loop's next turn
    await state.event_bus.drain()
    assert [(r.category, r.address) for r in seen] == [("UnusedGroupWarning", "docs")]


async def test_a_group_entered_by_hand_and_never_gathered() -> None:
    state = ExecutionState()
    group = state.parallel(name="forgotten")
    await group.__aenter__()
    group.add(awaits(0))
    group.add(awaits(0))
    await asyncio.sleep(0.01)  # they ran; nobody gathered, nobody left the group
    with pytest.warns(UnusedGroupWarning, match="given 2 members but never gathered nor left"):
        del group
        gc.collect()


async def test_a_refused_group_is_not_reported_again() -> None:
    from rh_agents.errors import GroupClosedError

    state = ExecutionState()
    group = state.parallel()
    coro = awaits(0)
    with pytest.raises(GroupClosedError):
        group.add(coro)  # told now
    with warnings.catch_warnings():
        warnings.simplefilter("error", RHAgentsWarning)
        del group
        gc.collect()


# --- UnawaitedCallWarning ------------------------------------------------------------------


class Doc(BaseModel):
    text: str


async def summarize(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text[:5]


async def test_an_event_call_made_and_never_awaited() -> None:
    state, seen = watched()
    event = ExecutionEvent(actor=Tool(name="summarize", input_model=Doc, handler=summarize))
    with pytest.warns(UnawaitedCallWarning, match="a call of 'summarize' was never awaited"):
        event(Doc(text="hello world"), "", state)  # made, then dropped
        gc.collect()
    assert issubclass(UnawaitedCallWarning, RuntimeWarning)  # as a coroutine's would be
    await asyncio.sleep(0)
    await state.event_bus.drain()
    assert [(r.category, r.address) for r in seen] == [("UnawaitedCallWarning", "summarize")]


# --- OversizedGroupWarning -----------------------------------------------------------------


async def test_max_workers_far_above_the_members() -> None:
    state, seen = watched()
    with pytest.warns(OversizedGroupWarning, match=r"ran 3 members with max_workers=100"):
        async with state.parallel(max_workers=100, name="few") as p:
            for _ in range(3):
                p.add(awaits(0))
    await state.event_bus.drain()
    assert [r.address for r in seen] == ["few"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RHAgentsWarning)
        async with state.parallel(max_workers=40, name="small") as p:
            p.add(awaits(0))  # under 50: no warning
        async with state.parallel(max_workers=100, name="enough") as p:
            for _ in range(10):
                p.add(awaits(0))  # not ten times as many
        async with state.parallel(max_workers="auto", name="adaptive") as p:
            p.add(awaits(0))


# --- CoroutineResultWarning ----------------------------------------------------------------


async def test_a_member_that_returns_a_coroutine_instead_of_awaiting_it() -> None:
    state, seen = watched()

    async def forgot_await() -> Any:
        return awaits(0)  # should be: return await awaits(0)

    with pytest.warns(CoroutineResultWarning, match=r"member results\[1\] returned coroutine"):
        async with state.parallel(name="results") as p:
            p.add(awaits(0))
            p.add(forgot_await())
    results = await p.gather()
    results[1].result.close()  # (the coroutine that never ran)
    assert "return await fn(...)" in (seen[0].hint if seen else "")


# --- the printers show them ----------------------------------------------------------------


async def test_the_printers_show_a_warning_where_it_happens() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("progress", console=Console(file=out, width=300))
    bus = EventBus()
    bus.subscribe(printer)
    # A block eight times the threshold: the watchdog's thread, which has to be scheduled
    # to see it, keeps a wide margin on a loaded machine.
    state = ExecutionState(event_bus=bus, watchdog=Watchdog(block_threshold=0.05))
    with pytest.warns(LoopBlockedWarning):
        async with state.parallel(name="docs") as p:
            p.add(blocks(0.4))
            p.add(awaits(0.45))  # the group goes on after the block
    await bus.drain()
    printer.close()
    lines = out.getvalue().splitlines()
    warned = [line for line in lines if line.startswith("⚠ member docs[0] held the event loop")]
    assert warned and "asyncio.to_thread" in warned[0]
    # Before the group's end: it was shown when it was seen.
    assert lines.index(warned[0]) < next(i for i, line in enumerate(lines) if "📦 docs:" in line)


# --- clean runs ----------------------------------------------------------------------------


async def test_the_demo_runs_without_a_warning() -> None:
    from rh_agents.demo import run_demo

    with warnings.catch_warnings():
        warnings.simplefilter("error", RHAgentsWarning)
        await run_demo(
            console=Console(file=io.StringIO(), width=100),
            documents=12,
            latency=0.1,
            save=False,
        )


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_every_example_runs_without_a_warning(name: str) -> None:
    script = (
        "import runpy, sys, warnings\n"
        "from rh_agents.errors import RHAgentsWarning\n"
        "warnings.simplefilter('error', RHAgentsWarning)\n"
        "sys.argv = [sys.argv[1]]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr


def test_warnings_are_ours_and_runtime_warnings() -> None:
    for category in (
        LoopBlockedWarning,
        SequentialGroupWarning,
        UnusedGroupWarning,
        UnawaitedCallWarning,
        OversizedGroupWarning,
        CoroutineResultWarning,
    ):
        assert issubclass(category, RHAgentsWarning)
        assert issubclass(category, RuntimeWarning)
        assert category.__doc__


async def test_a_group_opened_again_and_again_warns_once_per_place() -> None:
    # Each group's own number ("docs#37") was in the text: Python showed the warning for
    # every group, and kept one __warningregistry__ entry per group for ever (a service
    # opening the group per request grew without bound). The bus keeps the exact address.
    records: list[RunWarning] = []
    bus = EventBus()
    bus.subscribe(lambda r: records.append(r) if isinstance(r, RunWarning) else None)
    state = ExecutionState(event_bus=bus, watchdog=None)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")  # Python's own: once per text and line
        for _ in range(30):
            async with state.parallel(max_workers=60, name="docs") as p:
                p.add(asyncio.sleep(0))
    oversized = [w for w in shown if issubclass(w.category, OversizedGroupWarning)]
    assert len(oversized) == 1
    assert "group 'docs' ran 1 member" in str(oversized[0].message)
    assert [r.address for r in records][:3] == ["docs", "docs#2", "docs#3"]
    assert len(records) == 30


def test_a_stream_kept_unfinished_past_its_loop_is_named_as_a_stream() -> None:
    # It read "was given 5 members but never gathered nor left: its results were never
    # read", though one was read: the warning is about a stream neither finished nor closed.
    kept: list[Any] = []

    async def work(i: int) -> int:
        await asyncio.sleep(0.01 * i)
        return i

    async def main() -> None:
        state = ExecutionState(watchdog=None)
        group = state.parallel(batch_mode="stream")
        stream = await group.execute_parallel([work(i) for i in range(5)])
        async for _ in stream:
            break
        kept.append(stream)

    asyncio.run(main())
    with pytest.warns(UnusedGroupWarning, match="neither read to its end nor closed"):
        kept.clear()
        gc.collect()
