"""ParallelEventPrinter: lazy map() groups, a failed map() input, a cancelled group.

Three bugs of the display: in plain ``progress`` output the members of a group whose size was
not known yet (a lazy ``map()`` input) got no line; a group stopped by its ``map()`` input's
error never said why it failed; a group cancelled by its caller (``task.cancel()``) counted
its unstarted members as finished and failed, where Ctrl-C says they never started.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator

import pytest
from rich.console import Console

from printer_records import FrozenClock, group_completed, member_finished, plain_printer
from rh_agents.bus_handlers import EventPrinter
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent, GroupCompleted, GroupStarted, MemberFinished

# --- 1. a lazy map() input: one line per finished member --------------------------------


def lazy_group(size: int, known_after: int) -> list[BusEvent]:
    """A group of ``size`` members from a lazy input, whose size is known (the input ran out)
    from the ``known_after``-th finished member on; member 1 fails."""
    records: list[BusEvent] = [
        GroupStarted(address="lines", timestamp=0.0, name="lines", total=0, max_workers=2)
    ]
    for index in range(size):
        done = index + 1
        failed = index >= 1
        records.append(
            member_finished(
                f"lines[{index}]",
                index,
                at=0.01 * done,
                took=0.01,
                done=done,
                ok=done - failed,
                total=size if done >= known_after else None,
                status="failed" if index == 1 else "completed",
                error="ValueError: one" if index == 1 else None,
                group="lines",
            )
        )
    records.append(
        group_completed(
            "lines", at=0.01 * size, name="lines", status="partial", total=size,
            ok=size - 1, failed=1, wall=0.01 * size,
        )
    )  # fmt: skip
    return records


def test_members_finished_before_a_lazy_input_ran_out_each_get_a_line() -> None:
    printer, out = plain_printer("progress", slowest=1)
    for record in lazy_group(4, known_after=4):
        printer(record)
    printer.close()
    assert out.getvalue().splitlines()[:6] == [
        "▶ 📦 lines started (max_workers=2)",
        "  ✔ lines#0 done (10ms) [1 finished]",
        "  ✘ lines#1 FAILED (10ms) [2 finished]: ValueError: one",
        "  ✔ lines#2 done (10ms) [3 finished]",
        "  ✔ lines#3 done (10ms) [4/4]",
        "⚠ 📦 lines: 4 finished · 3 ok · 1 failed · 40ms · slowest lines#0 10ms",
    ]


def test_a_lazy_group_is_listed_until_more_than_smart_threshold_members_finished() -> None:
    # Six members, three at most listed: lines while no more than three have finished and the
    # size is unknown; none once the size (6) says the group is a big one. Failures always.
    printer, out = plain_printer("progress", smart_threshold=3, slowest=0)
    for record in lazy_group(6, known_after=5):
        printer(record)
    printer.close()
    assert out.getvalue().splitlines()[:5] == [
        "▶ 📦 lines started (max_workers=2)",
        "  ✔ lines#0 done (10ms) [1 finished]",
        "  ✘ lines#1 FAILED (10ms) [2 finished]: ValueError: one",
        "  ✔ lines#2 done (10ms) [3 finished]",
        "⚠ 📦 lines: 6 finished · 5 ok · 1 failed · 60ms",
    ]


@pytest.mark.timeout(30)
async def test_a_real_lazy_map_group_prints_every_member() -> None:
    async def items() -> AsyncIterator[int]:
        for n in range(5):
            await asyncio.sleep(0)  # an input that waits between items
            yield n

    async def work(n: int) -> int:
        await asyncio.sleep(0)
        if n == 3:
            raise ValueError("three")
        return n

    printer, out = plain_printer("progress")
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)
    with printer:
        async with state.parallel(max_workers=2, name="lines") as group:
            group.map(work, items())
        await bus.drain()
    member = re.compile(r"  [✔✘] lines#(\d) (?:done|FAILED) \(0ms\) \[(?:\d finished|\d/5)\]")
    shown = [found for line in out.getvalue().splitlines() if (found := member.match(line))]
    # Every member has its line, in whatever order they finished (two workers).
    assert sorted(int(found[1]) for found in shown) == [0, 1, 2, 3, 4]
    assert "  ✘ lines#3 FAILED (0ms) [" in out.getvalue()


# --- 2. a failed map() input: the group's summary says so -------------------------------


async def failing_input(*, on_close: bool = False) -> AsyncIterator[int]:
    """Two items, then an OSError (or, ``on_close``, three items and an error from its
    ``finally``)."""
    try:
        for n in range(3):
            await asyncio.sleep(0)
            if n == 2 and not on_close:
                raise OSError("disk read failed at line 2")
            yield n
    finally:
        if on_close:
            raise OSError("could not close the file")


async def echo(n: int) -> int:
    return n


@pytest.mark.timeout(30)
@pytest.mark.parametrize("on_close", [False, True])
async def test_a_group_stopped_by_its_map_input_says_why_in_its_summary(on_close: bool) -> None:
    printer, out = plain_printer("collapsed", slowest=0)
    completed: list[GroupCompleted] = []
    bus = EventBus()
    bus.subscribe(printer)
    bus.subscribe(completed.append, kinds=[GroupCompleted])
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)
    error = (
        "OSError: could not close the file" if on_close else "OSError: disk read failed at line 2"
    )
    with printer:
        with pytest.raises(OSError):
            async with state.parallel(max_workers=2, name="lines") as group:
                group.map(echo, failing_input(on_close=on_close))
        await bus.drain()
    [record] = completed
    assert (record.status, record.input_error) == ("failed", error)
    finished = 3 if on_close else 2
    assert out.getvalue() == (
        f"✘ 📦 lines: {finished} finished · {finished} ok · 0 failed · 0ms\n"
        f"    ✘ lines map() input FAILED: {error}\n"
        '    └─ View details: execution_state.history.get_group("lines")\n'
    )


def test_a_failed_map_input_is_shown_by_every_printer_and_not_in_the_members_issues() -> None:
    records: list[BusEvent] = [
        GroupStarted(address="lines", timestamp=0.0, name="lines", total=0, max_workers=2),
        member_finished("lines[0]", 0, at=0.1, took=0.1, done=1, ok=1, total=None, group="lines"),
        GroupCompleted(
            address="lines", timestamp=0.2, name="lines", status="failed", total=1,
            succeeded=1, failed=0, cancelled=0, skipped=0, timed_out=0, wall_time=0.2,
            input_error="OSError: disk read failed",
        ),
    ]  # fmt: skip
    realtime, out = plain_printer("realtime", show_summary=False)
    for record in records:
        realtime(record)
    realtime.close()
    assert out.getvalue().splitlines()[-2:] == [
        "✘ 📦 lines FAILED: 1 finished · 1 ok · 0 failed · 200ms",
        "  ✘ lines map() input FAILED: OSError: disk read failed",
    ]
    assert realtime.parallel_groups["lines"].issues == ()  # its members all completed
    assert "    ✘ lines map() input FAILED: OSError: disk read failed" in realtime.summary()
    tree = io.StringIO()
    printer = EventPrinter(Console(file=tree, width=100, force_terminal=False))
    for record in records:
        printer(record)
    assert tree.getvalue().splitlines()[-2:] == [
        "✘ 📦 lines FAILED: 1 finished · 1 ok · 0 failed · 200ms",
        "  ✘ map() input FAILED OSError: disk read failed",
    ]


# --- 3. a group cancelled by its caller: told as Ctrl-C tells it ------------------------


@pytest.mark.timeout(30)
async def test_a_group_cancelled_by_task_cancel_counts_what_never_started() -> None:
    # Four members, two workers: the first fails at once, the next two are running when the
    # task is cancelled, the last never started.
    printer, out = plain_printer("collapsed", slowest=0)
    tree = io.StringIO()
    bus = EventBus()
    bus.subscribe(printer)
    bus.subscribe(EventPrinter(Console(file=tree, width=200, force_terminal=False)))
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)
    running: list[int] = []
    both_running = asyncio.Event()

    async def boom() -> None:
        raise ValueError("boom")

    async def wait(n: int) -> None:
        running.append(n)
        if len(running) == 2:
            both_running.set()
        await asyncio.Event().wait()  # until cancelled

    async def job() -> None:
        async with state.parallel(max_workers=2, name="docs") as group:
            group.add(boom)
            for n in range(3):
                group.add(lambda n=n: wait(n))

    with printer:
        task = asyncio.create_task(job())
        await both_running.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await bus.drain()
    assert out.getvalue() == (
        "⏹ 📦 docs: cancelled · 1 of 4 finished · 0 ok · 1 failed · 2 cancelled · "
        "1 never started · 0ms\n"
        "    ✘ docs#0 FAILED: ValueError: boom\n"
        '    └─ View details: execution_state.history.get_group("docs")\n'
    )
    # The group's view still has every member that did not complete.
    assert [issue.status for issue in printer.parallel_groups["docs"].issues] == [
        "failed",
        "cancelled",
        "cancelled",
        "cancelled",
    ]
    assert tree.getvalue().splitlines()[-1] == (
        "⏹ 📦 docs CANCELLED: 1 of 4 finished · 0 ok · 1 failed · 2 cancelled · "
        "1 never started · 0ms"
    )


def test_a_cancelled_nested_group_in_realtime_and_merged_siblings() -> None:
    # realtime: a nested group's own line says it was cancelled, with what never started.
    def nested(address: str, index: int, status: str) -> list[BusEvent]:
        cancelled = status == "cancelled"
        return [
            GroupStarted(
                address=address, timestamp=0.0, group_id="docs", parallel_index=index,
                is_parallel=True, name="steps", total=2, max_workers=1, parent_group_id="docs",
            ),
            member_finished(
                f"{address}[0]", 0, at=0.1, took=0.1, done=1, ok=1, total=2, group=address
            ),
            MemberFinished(
                address=f"{address}[1]", timestamp=0.2, group_id=address, parallel_index=1,
                is_parallel=True, name=None, index=1, status=status, execution_time=0.0,
                error="MemberCancelledError: the group was cancelled" if cancelled else None,
                done=2, succeeded=1 if cancelled else 2, failed=1 if cancelled else 0, total=2,
                queue_wait=None if cancelled else 0.1,
            ),
            group_completed(
                address, at=0.2, name="steps", status=status if cancelled else "completed",
                total=2, ok=1 if cancelled else 2, cancelled=1 if cancelled else 0, wall=0.2,
                within=("docs", index),
            ),
        ]  # fmt: skip

    records: list[BusEvent] = [
        GroupStarted(address="docs", timestamp=0.0, name="docs", total=2, max_workers=2),
        *nested("docs[0]::steps", 0, "cancelled"),
        *nested("docs[1]::steps", 1, "completed"),
        member_finished("docs[0]", 0, at=0.3, took=0.3, done=1, ok=1, total=2, group="docs"),
        member_finished("docs[1]", 1, at=0.3, took=0.3, done=2, ok=2, total=2, group="docs"),
        group_completed("docs", at=0.3, name="docs", status="completed", total=2, ok=2, wall=0.3),
    ]
    printer, out = plain_printer("realtime", slowest=0)
    for record in records:
        printer(record)
    printer.close()
    lines = out.getvalue().splitlines()
    assert (
        "  [docs#0] ⏹ 📦 steps: cancelled · 1 of 2 finished · 1 ok · 0 failed · 0 cancelled · "
        "1 never started · 200ms"
    ) in lines
    # Merged with a sibling that completed, the line is no cancelled one: its cancelled
    # member is a failure like any other, listed.
    assert lines[-3:-1] == [
        "  ✘ 📦 steps ×2: 4 finished · 3 ok · 1 failed (1 cancelled) · max 200ms",
        "      ✘ docs#0/steps#1 CANCELLED: MemberCancelledError: the group was cancelled",
    ]
