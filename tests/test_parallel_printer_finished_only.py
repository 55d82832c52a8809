"""ParallelEventPrinter: members with no MemberStarted, the slowest-member floor, time text.

A member that finishes without ever waiting publishes only ``MemberFinished``; every mode must
count it, show its failure and (live) never list it as running.
"""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from printer_records import group_completed, member_finished, member_started
from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.bus_handlers.group_view import GroupView, seconds
from rh_agents.bus_handlers.parallel_printer import ParallelMode
from rh_agents.core.records import (
    BusEvent,
    GroupStarted,
)

GROUP = "jobs"
SUMMARY = (
    "⚠ 📦 jobs: 2 of 3 finished · 1 ok · 1 failed · 1.50s · slowest jobs#1 500ms, jobs#0 250ms\n"
    "    ✘ jobs#1 FAILED: ValueError: boom\n"
    '    └─ View details: execution_state.history.get_group("jobs")\n'
)


def _finished(index: int, name: str, status: str, took: float, done: int, ok: int) -> BusEvent:
    return member_finished(
        f"{GROUP}[{index}]",
        index,
        at=1.0 + index,
        took=took,
        done=done,
        ok=ok,
        total=3,
        status=status,
        error=None if status == "completed" else "ValueError: boom",
        group=GROUP,
        name=name,
    )


def records(*, complete: bool = True) -> list[BusEvent]:
    """Two members that never announced a start (one fails), one that waited and still runs."""
    run: list[BusEvent] = [
        GroupStarted(address=GROUP, timestamp=0.0, name="jobs", total=0, max_workers=2),
        member_started(f"{GROUP}[2]", 2, at=0.5, group=GROUP, name="c", total=3),
        _finished(0, "a", "completed", 0.25, done=1, ok=1),
        _finished(1, "b", "failed", 0.5, done=2, ok=1),
    ]
    if complete:
        run.append(
            group_completed(
                GROUP, at=1.5, name="jobs", status="partial", total=3, ok=1, failed=1, wall=1.5
            )
        )
    return run


def plain(mode: ParallelMode) -> str:
    out = io.StringIO()
    printer = ParallelEventPrinter(
        mode, console=Console(file=out, width=100, force_terminal=False), clock=lambda: 0.0
    )
    for record in records():
        printer(record)
    printer.close()
    return out.getvalue()


def test_realtime_prints_members_that_never_started() -> None:
    assert plain("realtime") == (
        "▶ 📦 jobs started (max_workers=2)\n"
        "  [jobs#2] ▶ member c started\n"
        "  [jobs#0] ✔ member a done (250ms) [1/3]\n"
        "  [jobs#1] ✘ member b FAILED (500ms) [2/3]: ValueError: boom\n" + SUMMARY
    )


def test_progress_prints_members_that_never_started() -> None:
    assert plain("progress") == (
        "▶ 📦 jobs started (max_workers=2)\n"
        "  ✔ jobs#0 a done (250ms) [1/3]\n"
        "  ✘ jobs#1 b FAILED (500ms) [2/3]: ValueError: boom\n" + SUMMARY
    )


def test_collapsed_and_smart_count_members_that_never_started() -> None:
    assert plain("collapsed") == SUMMARY
    assert plain("smart") == SUMMARY  # not a terminal: collapsed


BAR = "📦 jobs ━━━━━━━━━━━━━━━━         2/3 66% 2.00s 1 failed"


@pytest.mark.parametrize(
    ("mode", "members_listed"), [("progress", True), ("smart", True), ("collapsed", False)]
)
def test_live_view_counts_them_and_lists_only_the_member_that_waited(
    mode: ParallelMode, members_listed: bool
) -> None:
    printer = ParallelEventPrinter(
        mode,
        console=Console(file=io.StringIO(), width=100, force_terminal=True),
        clock=lambda: 0.0,
    )
    try:
        for record in records(complete=False):
            printer(record)
        assert list(printer.groups[GROUP].running) == [2]  # no phantom entry for #0 or #1
        view = io.StringIO()
        Console(file=view, width=100, force_terminal=False).print(printer.render())
    finally:
        printer.close()
    lines = [line.rstrip() for line in view.getvalue().splitlines()]
    if members_listed:
        assert lines == [BAR, "  ⠿ #2 c 1.50s", "  ✘ jobs#1 FAILED: ValueError: boom"]
    else:
        assert lines == [BAR]


def test_live_view_finishing_a_member_removes_it_from_the_running_list() -> None:
    printer = ParallelEventPrinter(
        "progress",
        console=Console(file=io.StringIO(), width=100, force_terminal=True),
        clock=lambda: 0.0,
    )
    try:
        for record in records(complete=False):
            printer(record)
        printer(_finished(2, "c", "completed", 1.0, done=3, ok=2))
        assert printer.groups[GROUP].running == {}
        assert printer.groups[GROUP].done == 3
    finally:
        printer.close()


def _view() -> GroupView:
    return GroupView(GROUP, "jobs", "jobs", None, None, 0, None, 0.0, 0.0)


@given(st.lists(st.floats(min_value=0, max_value=1e6), max_size=40), st.integers(0, 5))
def test_slowest_floor_keeps_exactly_the_slowest_members(durations: list[float], keep: int) -> None:
    view = _view()
    for index, took in enumerate(durations):
        if not took <= view.slowest_floor:  # what the printer checks before note_duration
            view.note_duration(index, took, keep)
    kept = sorted(view.slowest, reverse=True)
    assert [took for took, _ in kept] == sorted(durations, reverse=True)[:keep]
    for took, index in kept:
        assert durations[index] == took


def test_slowest_floor_is_infinite_when_nothing_is_kept() -> None:
    view = _view()
    view.note_duration(0, 5.0, 0)
    assert view.slowest == [] and view.slowest_floor == math.inf


@given(st.floats(min_value=0, max_value=1, exclude_max=True, allow_subnormal=True))
def test_millisecond_text_is_the_formatted_value(value: float) -> None:
    assert seconds(value) == f"{value * 1000:.0f}ms"


def test_millisecond_text_rounds_ties_to_even() -> None:
    assert [seconds(v) for v in (0.0005, 0.0015, 0.0025, 0.0, -0.0001)] == [
        f"{v * 1000:.0f}ms" for v in (0.0005, 0.0015, 0.0025, 0.0, -0.0001)
    ]
    assert seconds(0.9999999999) == "1000ms"
    assert seconds(1.0) == "1.00s"
