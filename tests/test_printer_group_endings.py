"""ParallelEventPrinter: lazy map() groups, a failed map() input, a cancelled group, a quorum.

Four bugs of the display: in plain ``progress`` output the members of a group whose size was
not known yet (a lazy ``map()`` input) got no line; a group stopped by its ``map()`` input's
error never said why it failed; a group cancelled by its caller (``task.cancel()``) counted
its unstarted members as finished and failed, where Ctrl-C says they never started; a group
that reached its ``quorum`` (which cancels the members left, no error) was shown as a partial
failure, each member it cancelled a failure (``✘ q#2 CANCELLED``).
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel
from rich.console import Console

from printer_records import (
    FrozenClock,
    group_completed,
    member_finished,
    member_started,
    plain_printer,
)
from rh_agents import ExecutionEvent, Tool
from rh_agents.bus_handlers import EventPrinter, ParallelEventPrinter
from rh_agents.bus_handlers.group_view import outcome_text, quorum_text
from rh_agents.bus_handlers.parallel_printer import ParallelMode
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy
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


# --- 4. a group that reached its quorum: a success, its cancelled members not needed ----


async def quorum_run(
    mode: ParallelMode,
    *,
    fails: int = 0,
    quorum: int = 2,
    fail_fast: bool = False,
    **options: object,
) -> tuple[str, str]:
    """A group of five members and ``quorum``: the first ``fails`` raise, the next ``quorum``
    succeed, the rest wait until cancelled. Returns what ``ParallelEventPrinter(mode)`` and
    ``EventPrinter`` printed."""
    printer, out = plain_printer(mode, slowest=0, **options)
    tree = io.StringIO()
    bus = EventBus()
    bus.subscribe(printer)
    bus.subscribe(EventPrinter(Console(file=tree, width=200, force_terminal=False)))
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)

    async def member(n: int) -> int:
        if n < fails:
            raise ValueError(f"bad {n}")
        if n < fails + quorum:
            return n
        await asyncio.Event().wait()  # until cancelled
        return n

    strategy = ErrorStrategy.FAIL_FAST if fail_fast else ErrorStrategy.FAIL_SLOW
    with printer:
        try:
            async with state.parallel(
                max_workers=5, name="q", quorum=quorum, error_strategy=strategy
            ) as group:
                for n in range(5):
                    group.add(lambda n=n: member(n))
        except ValueError:
            assert fail_fast
        await bus.drain()
    return out.getvalue(), tree.getvalue()


REACHED = (
    "✔ 📦 q: quorum of 2 reached · 2 of 5 finished · 2 ok · 0 failed · "
    "3 cancelled (not needed) · 0ms\n"
    '    └─ View details: execution_state.history.get_group("q")\n'
)


@pytest.mark.timeout(30)
async def test_a_reached_quorum_is_a_success_in_every_mode() -> None:
    realtime, tree = await quorum_run("realtime")
    assert realtime == (
        "▶ 📦 q started (max_workers=5)\n"
        "  [q#0] ✔ member done (0ms) [1/5]\n"
        "  [q#1] ✔ member done (0ms) [2/5]\n"
        "  [q#2] ○ member cancelled (0ms) [3/5]: not needed, quorum of 2 reached\n"
        "  [q#3] ○ member cancelled (0ms) [4/5]: not needed, quorum of 2 reached\n"
        "  [q#4] ○ member cancelled (0ms) [5/5]: not needed, quorum of 2 reached\n" + REACHED
    )
    progress, _ = await quorum_run("progress")
    assert progress == (
        "▶ 📦 q started (max_workers=5)\n"
        "  ✔ q#0 done (0ms) [1/5]\n"
        "  ✔ q#1 done (0ms) [2/5]\n"
        "  ○ q#2 cancelled (0ms) [3/5]: not needed, quorum of 2 reached\n"
        "  ○ q#3 cancelled (0ms) [4/5]: not needed, quorum of 2 reached\n"
        "  ○ q#4 cancelled (0ms) [5/5]: not needed, quorum of 2 reached\n" + REACHED
    )
    collapsed, _ = await quorum_run("collapsed")
    assert collapsed == REACHED
    assert tree == (
        "▶ 📦 q PARALLEL, max_workers=5\n"
        "  ○ member 2 cancelled: not needed, quorum of 2 reached\n"
        "  ○ member 3 cancelled: not needed, quorum of 2 reached\n"
        "  ○ member 4 cancelled: not needed, quorum of 2 reached\n"
        "✔ 📦 q QUORUM OF 2 REACHED: 2 of 5 finished · 2 ok · 0 failed · "
        "3 cancelled (not needed) · 0ms\n"
    )


@pytest.mark.timeout(30)
async def test_a_reached_quorum_still_lists_the_members_that_failed() -> None:
    # The first member fails, the next two succeed: the quorum is reached, the last two are
    # not needed; the failure is one, listed.
    progress, tree = await quorum_run("progress", fails=1)
    assert progress == (
        "▶ 📦 q started (max_workers=5)\n"
        "  ✘ q#0 FAILED (0ms) [1/5]: ValueError: bad 0\n"
        "  ✔ q#1 done (0ms) [2/5]\n"
        "  ✔ q#2 done (0ms) [3/5]\n"
        "  ○ q#3 cancelled (0ms) [4/5]: not needed, quorum of 2 reached\n"
        "  ○ q#4 cancelled (0ms) [5/5]: not needed, quorum of 2 reached\n"
        "✔ 📦 q: quorum of 2 reached · 3 of 5 finished · 2 ok · 1 failed · "
        "2 cancelled (not needed) · 0ms\n"
        "    ✘ q#0 FAILED: ValueError: bad 0\n"
        '    └─ View details: execution_state.history.get_group("q")\n'
    )
    assert tree.splitlines()[-1] == (
        "✔ 📦 q QUORUM OF 2 REACHED: 3 of 5 finished · 2 ok · 1 failed · "
        "2 cancelled (not needed) · 0ms"
    )


@pytest.mark.timeout(30)
async def test_a_quorum_not_reached_is_still_a_partial_failure() -> None:
    # Three of five fail: two successes never make a quorum of three.
    collapsed, tree = await quorum_run("collapsed", fails=3, quorum=3)
    assert collapsed == (
        "⚠ 📦 q: quorum of 3 not reached · 5 finished · 2 ok · 3 failed · 0ms\n"
        "    ✘ q#0 FAILED: ValueError: bad 0\n"
        "    ✘ q#1 FAILED: ValueError: bad 1\n"
        "    ✘ q#2 FAILED: ValueError: bad 2\n"
        '    └─ View details: execution_state.history.get_group("q")\n'
    )
    assert tree.splitlines()[-1] == (
        "⚠ 📦 q PARTIAL: quorum of 3 not reached · 5 finished · 2 ok · 3 failed · 0ms"
    )


@pytest.mark.timeout(30)
async def test_members_a_fail_fast_cancelled_stay_failures_in_a_group_with_a_quorum() -> None:
    collapsed, tree = await quorum_run("collapsed", fails=1, fail_fast=True)
    cancelled = "MemberCancelledError: member {} of group 'q' was cancelled: fail-fast after"
    assert collapsed == (
        "✘ 📦 q: quorum of 2 not reached · 5 finished · 0 ok · 5 failed (4 cancelled) · 0ms\n"
        "    ✘ q#0 FAILED: ValueError: bad 0\n"
        + "".join(
            f"    ✘ q#{n} CANCELLED: {cancelled.format(n)}\n"
            "      member 0 failed (ValueError: bad 0)\n"
            for n in range(1, 5)
        )
        + '    └─ View details: execution_state.history.get_group("q")\n'
    )
    assert "○" not in tree
    assert tree.splitlines()[-1] == (
        "✘ 📦 q FAILED: quorum of 2 not reached · 5 finished · 0 ok · 5 failed (4 cancelled) · 0ms"
    )


def quorum_records() -> list[BusEvent]:
    """A group of five with ``quorum=2``, all started: member 0 succeeds, member 1 fails,
    member 2 succeeds (the quorum), members 3 and 4 are cancelled."""
    cancelled = "MemberCancelledError: member {} of group 'q' was cancelled: quorum reached"
    return [
        GroupStarted(address="q", timestamp=0.0, name="q", total=5, max_workers=5, quorum=2),
        *(member_started(f"q[{n}]", n, at=0.0, group="q", total=5) for n in range(5)),
        member_finished("q[0]", 0, at=0.1, took=0.1, done=1, ok=1, total=5, group="q"),
        member_finished(
            "q[1]", 1, at=0.2, took=0.2, done=2, ok=1, total=5, group="q",
            status="failed", error="ValueError: boom",
        ),
        member_finished("q[2]", 2, at=0.3, took=0.3, done=3, ok=2, total=5, group="q"),
        *(
            member_finished(
                f"q[{n}]", n, at=0.3, took=0.3, done=n + 1, ok=2, total=5, group="q",
                status="cancelled", error=cancelled.format(n),
            )
            for n in (3, 4)
        ),
    ]  # fmt: skip


def quorum_end() -> GroupCompleted:
    """The end of ``quorum_records``' group: it reached its quorum."""
    return GroupCompleted(
        address="q", timestamp=0.3, name="q", status="partial", total=5, succeeded=2, failed=1,
        cancelled=2, skipped=0, timed_out=0, wall_time=0.3, quorum=2,
    )  # fmt: skip


def test_the_live_view_counts_members_not_needed_apart_from_its_failures() -> None:
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    printer = ParallelEventPrinter(
        "progress", console=console, show_progress=False, clock=lambda: 0.0
    )
    for record in quorum_records()[:-1]:  # member 4 still running
        printer(record)
    screen = Console(file=io.StringIO(), width=100, color_system=None)
    screen.print(printer.render())
    assert screen.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "📦 q ━━━━━━━━━━━━━━━━━━━      4/5 80% 300ms 1 failed ○ 1 not needed",
        "  ⠿ #4 300ms",
        "  ✘ q#1 FAILED: ValueError: boom",
    ]
    printer(quorum_records()[-1])
    printer(quorum_end())
    printer.close()
    group = printer.parallel_groups["q"]
    assert (group.quorum, group.quorum_reached, group.not_needed) == (2, True, 2)
    assert (group.failed, group.cancelled) == (3, 2)  # every member that did not succeed
    # Every member that did not complete is among its issues; those not needed say so.
    assert [(issue.tag, issue.not_needed) for issue in group.issues] == [
        ("q#1", False),
        ("q#3", True),
        ("q#4", True),
    ]
    assert printer.summary().splitlines() == [
        "✔ 📦 q: quorum of 2 reached · 3 of 5 finished · 2 ok · 1 failed · "
        "2 cancelled (not needed) · 300ms · slowest q#2 300ms, q#1 200ms, q#0 100ms",
        "    ✘ q#1 FAILED: ValueError: boom",
        '    └─ View details: execution_state.history.get_group("q")',
    ]


@pytest.mark.timeout(30)
async def test_a_reached_quorum_on_a_terminal_ends_with_its_summary() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    printer = ParallelEventPrinter("progress", console=console, slowest=0)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)

    async def member(n: int) -> int:
        if n >= 2:
            await asyncio.Event().wait()  # until cancelled
        return n

    with printer:
        async with state.parallel(max_workers=5, name="q", quorum=2) as group:
            for n in range(5):
                group.add(lambda n=n: member(n))
        await bus.drain()
    text = out.getvalue()
    assert "✘" not in text and "failed (" not in text
    assert text.endswith(
        "✔ 📦 q: quorum of 2 reached · 2 of 5 finished · 2 ok · 0 failed · "
        "3 cancelled (not needed) · 0ms\n"
        '    └─ View details: execution_state.history.get_group("q")\n'
    )


@pytest.mark.parametrize("mode", ["realtime", "progress"])
def test_a_printer_that_saw_the_group_only_from_its_middle_settles_at_its_end(
    mode: ParallelMode,
) -> None:
    # Subscribed after the group opened: no GroupStarted, so no quorum known until its end.
    records = quorum_records()[6:]  # from member 0's end on
    printer, out = plain_printer(mode, slowest=0)
    for record in records:
        printer(record)
    printer(quorum_end())
    printer.close()
    assert out.getvalue().splitlines()[-3:] == [
        "✔ 📦 q: quorum of 2 reached · 3 of 5 finished · 2 ok · 1 failed · "
        "2 cancelled (not needed) · 300ms",
        "    ✘ q#1 FAILED: ValueError: boom",
        '    └─ View details: execution_state.history.get_group("q")',
    ]
    tree = io.StringIO()
    late = EventPrinter(Console(file=tree, width=200, force_terminal=False))
    for record in [*records, quorum_end()]:
        late(record)
    assert tree.getvalue().splitlines()[-1] == (
        "✔ 📦 q QUORUM OF 2 REACHED: 3 of 5 finished · 2 ok · 1 failed · "
        "2 cancelled (not needed) · 300ms"
    )


def test_members_not_needed_are_failures_if_the_group_ended_another_way() -> None:
    # The successes reached the quorum, but the group ended failed (its map() input raised
    # as it was closed): its cancelled members are counted and listed as failures.
    ended = GroupCompleted(
        address="q", timestamp=0.3, name="q", status="failed", total=5, succeeded=2, failed=1,
        cancelled=2, skipped=0, timed_out=0, wall_time=0.3, quorum=2,
        input_error="OSError: could not close the file",
    )  # fmt: skip
    assert not ended.quorum_reached
    printer, _ = plain_printer("collapsed", slowest=0)
    for record in [*quorum_records(), ended]:
        printer(record)
    assert printer.parallel_groups["q"].not_needed == 0
    cancelled = "CANCELLED: MemberCancelledError: member {} of group 'q' was cancelled: quorum"
    assert printer.summary().splitlines()[:5] == [
        "✘ 📦 q: quorum of 2 not reached · 5 finished · 2 ok · 3 failed (2 cancelled) · 300ms",
        "    ✘ q map() input FAILED: OSError: could not close the file",
        "    ✘ q#1 FAILED: ValueError: boom",
        f"    ✘ q#3 {cancelled.format(3)} reached",
        f"    ✘ q#4 {cancelled.format(4)} reached",
    ]


def test_group_records_without_a_quorum_still_load() -> None:
    # Records made before the quorum fields (or by hand) have none: no quorum, not reached.
    started = GroupStarted(address="q", timestamp=0.0, name="q", total=5, max_workers=5)
    ended = GroupCompleted(
        address="q", timestamp=0.3, name="q", status="partial", total=5, succeeded=2, failed=0,
        cancelled=3, skipped=0, timed_out=0, wall_time=0.3,
    )  # fmt: skip
    assert (started.quorum, ended.quorum, ended.quorum_reached) == (None, None, False)
    assert GroupCompleted(**{**ended.__getstate__()[1], "quorum": 2}).quorum_reached


@pytest.mark.timeout(30)
async def test_calls_a_reached_quorum_cancelled_are_not_needed_in_both_printers() -> None:
    class Page(BaseModel):
        n: int

    waiting: list[int] = []
    both_wait = asyncio.Event()

    async def fetch(input: Page, context: str, state: ExecutionState) -> int:
        if input.n < 2:
            await both_wait.wait()  # members 0 and 1 succeed once 2 and 3 are running
            return input.n
        waiting.append(input.n)
        if len(waiting) == 2:
            both_wait.set()
        await asyncio.Event().wait()  # until cancelled
        return input.n

    printer, out = plain_printer("realtime", slowest=0)
    tree = io.StringIO()
    bus = EventBus()
    bus.subscribe(printer)
    bus.subscribe(EventPrinter(Console(file=tree, width=200, force_terminal=False)))
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)
    event = ExecutionEvent(actor=Tool(name="fetch", input_model=Page, handler=fetch))
    with printer:
        async with state.parallel(max_workers=4, name="q", quorum=2) as group:
            for n in range(4):
                group.add(event(Page(n=n), "", state))
        await bus.drain()
    lines = out.getvalue().splitlines()
    assert [line for line in lines if "q#3" in line] == [
        "  [q#3] ▶ member started",
        "  [q#3] ▶ 🔧 fetch STARTED",
        "  [q#3] ○ 🔧 fetch cancelled (0ms): not needed, quorum of 2 reached",
        "  [q#3] ○ member cancelled (0ms) [4/4]: not needed, quorum of 2 reached",
    ]
    assert not any("✘" in line for line in lines)
    assert [line for line in tree.getvalue().splitlines() if "q[3]" in line or "3 " in line] == [
        '  ▶ 🔧 q[3]::fetch STARTED {"n":3}',
        "  ○ 🔧 q[3]::fetch cancelled (0ms) not needed, quorum of 2 reached",
        "  ○ member 3 cancelled: not needed, quorum of 2 reached",
    ]


def test_a_progress_line_counts_members_not_needed_apart() -> None:
    now = [0.0]
    printer, out = plain_printer("collapsed", clock=lambda: now[0], progress_interval=5.0)
    *before, last = quorum_records()
    for record in before:
        printer(record)
    now[0] = 10.0  # the next record is after the progress interval: a progress line
    printer(last)
    assert out.getvalue() == (
        "📦 q [5/5] ████████████████████ 100% · 300ms · 1 failed · "
        "2 not needed (quorum of 2 reached)\n"
    )


def test_the_quorum_texts() -> None:
    assert outcome_text(5, 5, 2, 3, 0, 3, 0, not_needed=3) == (
        "2 of 5 finished · 2 ok · 0 failed · 3 cancelled (not needed)"
    )
    assert outcome_text(5, 5, 2, 3, 0, 3) == "5 finished · 2 ok · 3 failed (3 cancelled)"
    assert quorum_text(None, 0, 1, {"partial"}) == ""
    assert quorum_text(2, 1, 1, {"completed"}) == "quorum of 2 reached"
    # Same-named groups merged in the summary (steps ×3): how many reached it.
    assert quorum_text(2, 2, 3, {"completed", "partial"}) == "quorum of 2 reached in 2 of 3"
    assert quorum_text(3, 0, 1, {"partial"}) == "quorum of 3 not reached"
    # Every member succeeded, fewer than the quorum: nothing to say.
    assert quorum_text(9, 0, 1, {"completed"}) == ""
