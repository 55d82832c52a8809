"""ParallelEventPrinter: exact text per mode, nested groups, failures, live view, no escapes."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console

import printer_records
from parallel_support import until
from printer_records import (
    FrozenClock,
    group_completed,
    member_finished,
    member_started,
    run_records,
)
from rh_agents import ParallelEventPrinter as TopLevelExport
from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.bus_handlers.parallel_printer import ParallelMode
from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import (
    EventFailed,
    GroupStarted,
)
from rh_agents.errors import ConfigurationError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_printer(
    mode: ParallelMode, *, width: int = 200, **options: object
) -> tuple[ParallelEventPrinter, io.StringIO]:
    """A plain-text printer wide enough for every line to stay whole (the wrapping of long
    lines has tests of its own)."""
    return printer_records.plain_printer(mode, width=width, **options)


def feed(mode: ParallelMode, **options: object) -> str:
    printer, out = plain_printer(mode, **options)
    for record in run_records():
        printer(record)
    printer.close()
    return out.getvalue()


SUMMARY = """\
  ⚠ 📦 docs: 3 finished · 1 ok · 2 failed (1 timed out, 1 cancelled) · 2.50s · slowest docs#1 2.00s, docs#0 1.20s, docs#2 500ms
      ✘ docs#1 TIMED_OUT: ParallelTimeoutError: member 1 of group 'Orch::docs' timed out after 2.0s
      ✘ docs#2 CANCELLED: MemberCancelledError: group stopped
    ⚠ 📦 steps: 2 finished · 1 ok · 1 failed · 1 retried · 1.00s · slowest docs#1/steps#0 800ms, docs#1/steps#1 100ms
        ✘ docs#1/steps#1 FAILED: ValueError: no words
      └─ View details: execution_state.history.get_group("Orch::docs")
"""  # noqa: E501


def test_exported_from_the_package() -> None:
    assert TopLevelExport is ParallelEventPrinter


def test_realtime_tags_every_line_with_group_and_index() -> None:
    expected = (
        """\
▶ 🤖 Orch STARTED
  ▶ 📦 docs started (max_workers=2)
    [docs#0] ▶ member started
    [docs#1] ▶ member started
    [docs#0] ▶ 🤖 reader STARTED
      [docs#1] ▶ 📦 steps started (max_workers=2)
        [docs#1/steps#0] ▶ member summary started
        [docs#1/steps#0] ↻ llm retry 1 in 250ms: RateLimitError: 429 slow down
        [docs#1/steps#0] ✔ member summary done (800ms) [1/2]
        [docs#1/steps#1] ▶ member keywords started
        [docs#1/steps#1] ✘ member keywords FAILED (100ms) [2/2]: ValueError: no words
      [docs#1] ⚠ 📦 steps PARTIAL: 2 finished · 1 ok · 1 failed · 1.00s
    [docs#0] ✔ 🤖 reader COMPLETED (1.20s)
    [docs#0] ✔ member done (1.20s) [1/3]
⚡ circuit llm: closed → open (5 failures)
    [docs#1] ✘ member TIMED_OUT (2.00s) [2/3]: ParallelTimeoutError: member 1 of group 'Orch::docs' timed out after 2.0s
    [docs#2] ▶ member last started
    [docs#2] ✘ member last CANCELLED (500ms) [3/3]: MemberCancelledError: group stopped
"""  # noqa: E501
        + SUMMARY
        + "✔ 🤖 Orch COMPLETED (2.60s)\n"
    )
    assert feed("realtime") == expected


def test_progress_shows_members_beneath_the_group_and_problems_at_once() -> None:
    expected = (
        """\
▶ 🤖 Orch STARTED
  ▶ 📦 docs started (max_workers=2)
        [docs#1/steps#0] ↻ llm retry 1 in 250ms: RateLimitError: 429 slow down
        ✘ docs#1/steps#1 keywords FAILED (100ms) [2/2]: ValueError: no words
    ✔ docs#0 done (1.20s) [1/3]
⚡ circuit llm: closed → open (5 failures)
    ✘ docs#1 TIMED_OUT (2.00s) [2/3]: ParallelTimeoutError: member 1 of group 'Orch::docs' timed out after 2.0s
    ✘ docs#2 last CANCELLED (500ms) [3/3]: MemberCancelledError: group stopped
"""  # noqa: E501
        + SUMMARY
        + "✔ 🤖 Orch COMPLETED (2.60s)\n"
    )
    assert feed("progress") == expected


@pytest.mark.parametrize("mode", ["collapsed", "smart"])
def test_collapsed_is_one_line_per_group_with_every_failure(mode: ParallelMode) -> None:
    expected = (
        "▶ 🤖 Orch STARTED\n⚡ circuit llm: closed → open (5 failures)\n"
        + SUMMARY
        + "✔ 🤖 Orch COMPLETED (2.60s)\n"
    )
    assert feed(mode) == expected


FOLDED_SUMMARY = """\
  ⚠ 📦 docs: 3 finished · 1 ok · 2 failed (1 timed out, 1 cancelled) · 1 failed in nested groups · 1 retried · 2.50s · slowest docs#1 2.00s, docs#0 1.20s, docs#2 500ms
      ✘ docs#1 TIMED_OUT: ParallelTimeoutError: member 1 of group 'Orch::docs' timed out after 2.0s
      ✘ docs#1/steps#1 FAILED: ValueError: no words
      ✘ docs#2 CANCELLED: MemberCancelledError: group stopped
      └─ View details: execution_state.history.get_group("Orch::docs")
"""  # noqa: E501


def test_collapse_parallel_folds_nested_groups_but_keeps_their_failures() -> None:
    # The nested group's line is gone; its failure is listed and counted apart from the
    # group's own, and its retry is counted.
    out = feed("collapsed", collapse_parallel=True)
    assert out == (
        "▶ 🤖 Orch STARTED\n⚡ circuit llm: closed → open (5 failures)\n"
        + FOLDED_SUMMARY
        + "✔ 🤖 Orch COMPLETED (2.60s)\n"
    )
    realtime = feed("realtime", collapse_parallel=True)
    assert "member summary started" not in realtime  # nested members fold away ...
    assert "[docs#1/steps#1] ✘ member keywords FAILED" in realtime  # ... their failures do not
    assert realtime.endswith(FOLDED_SUMMARY + "✔ 🤖 Orch COMPLETED (2.60s)\n")
    # Without the summary, realtime ends a group with one line: it counts them too.
    bare = feed("realtime", collapse_parallel=True, show_summary=False)
    assert (
        "  ⚠ 📦 docs PARTIAL: 3 finished · 1 ok · 2 failed (1 timed out, 1 cancelled) · "
        "1 failed in nested groups · 2.50s\n"
    ) in bare
    unfolded = feed("realtime", show_summary=False)
    assert (
        "  ⚠ 📦 docs PARTIAL: 3 finished · 1 ok · 2 failed (1 timed out, 1 cancelled) · 2.50s\n"
    ) in unfolded


async def _nested_failures(printer: Callable[..., None]) -> None:
    """A group of two members that succeed, each after a nested group with one failure."""
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)  # exact text

    async def ok() -> int:
        return 1

    async def bad() -> int:
        raise ValueError("boom")

    async def member() -> int:
        async with state.parallel(max_workers=1, name="steps") as steps:
            steps.add(ok())
            steps.add(bad())
        return 1

    async with state.parallel(max_workers=1, name="docs") as group:
        group.add(member())
        group.add(member())
    await bus.close()


async def test_a_folded_summary_counts_the_nested_failures_it_lists() -> None:
    printer, out = plain_printer("collapsed", collapse_parallel=True)
    await _nested_failures(printer)
    printer.close()
    assert out.getvalue() == (
        "⚠ 📦 docs: 2 finished · 2 ok · 0 failed · 2 failed in nested groups · 0ms · "
        "slowest docs#0 0ms, docs#1 0ms\n"
        "    ✘ docs#0/steps#1 FAILED: ValueError: boom\n"
        "    ✘ docs#1/steps#1 FAILED: ValueError: boom\n"
        '    └─ View details: execution_state.history.get_group("docs")\n'
    )
    # Unfolded, the same failures are counted on the nested groups' own line.
    printer, out = plain_printer("collapsed")
    await _nested_failures(printer)
    printer.close()
    assert out.getvalue() == (
        "✔ 📦 docs: 2 finished · 2 ok · 0 failed · 0ms · slowest docs#0 0ms, docs#1 0ms\n"
        "  ⚠ 📦 steps ×2: 4 finished · 2 ok · 2 failed · max 0ms · slowest docs#0/steps#0 "
        "0ms, docs#0/steps#1 0ms, docs#1/steps#0 0ms\n"
        "      ✘ docs#0/steps#1 FAILED: ValueError: boom\n"
        "      ✘ docs#1/steps#1 FAILED: ValueError: boom\n"
        '    └─ View details: execution_state.history.get_group("docs")\n'
    )


def test_without_details_realtime_hides_actor_events_inside_members() -> None:
    out = feed("realtime", show_parallel_details=False)
    assert "reader STARTED" not in out
    assert "▶ 🤖 Orch STARTED" in out  # outside any group: always shown


def test_summary_method_and_close_print_the_tree_once() -> None:
    printer, out = plain_printer("collapsed")
    for record in run_records():
        printer(record)
    assert printer.summary() + "\n" == SUMMARY
    before = out.getvalue()
    printer.close()
    printer.close()
    assert out.getvalue() == before  # already summarized on the outermost GroupCompleted


def test_close_summarizes_a_group_that_never_completed() -> None:
    printer, out = plain_printer("collapsed")
    for record in run_records()[:4]:
        printer(record)
    assert "📦 docs" not in out.getvalue()
    printer.close()
    assert "✘ 📦 docs: 0 of 3 finished · 0 ok · 0 failed · 0ms\n" in out.getvalue()


def test_total_comes_from_member_records_not_from_what_started() -> None:
    printer, _ = plain_printer("progress")
    records = run_records()
    printer(records[1])  # GroupStarted: total 0 (members not added yet)
    assert printer.groups["Orch::docs"].known_total() is None
    printer(records[2])  # the first member to start already knows there are 3
    assert printer.groups["Orch::docs"].known_total() == 3


def test_plain_progress_lines_are_rate_limited_by_the_injected_clock() -> None:
    now = [0.0]
    printer, out = plain_printer("collapsed", clock=lambda: now[0], progress_interval=5.0)
    printer(GroupStarted(address="g", timestamp=0.0, name="g", total=0, max_workers=4))
    for i in range(10):
        now[0] = i * 1.0  # one member per second
        printer(
            member_finished(
                f"g[{i}]", i, at=i * 1.0, took=0.5, done=i + 1, ok=i + 1, total=10, group="g"
            )
        )
    lines = out.getvalue().splitlines()
    assert lines == [
        "📦 g [6/10] ████████████░░░░░░░░ 60% · 5.00s · 0 failed",
    ]


def live_view_of_the_run_so_far(**options: Any) -> list[str]:
    """The live view's lines once the first ten records of the run are in (at 0.9 s)."""
    printer = ParallelEventPrinter(
        "progress",
        console=Console(file=io.StringIO(), width=100, force_terminal=True),
        clock=lambda: 0.0,
        **options,
    )
    try:
        for record in run_records()[:10]:
            printer(record)
        view = io.StringIO()
        Console(file=view, width=100, force_terminal=False).print(printer.render())
    finally:
        printer.close()
    return [line.rstrip() for line in view.getvalue().splitlines()]


def test_live_view_draws_bars_members_and_nested_groups() -> None:
    assert live_view_of_the_run_so_far() == [
        "  📦 docs                          0/3 0% 900ms 0 failed",
        "    ⠿ #0 900ms",
        "    ⠿ #1 900ms",
        "      📦 steps ━━━━━━━━━━━━             1/2 50% 800ms 0 failed ↻ 1",
    ]


@pytest.mark.parametrize(("threshold", "members_shown"), [(50, True), (2, False)])
def test_smart_picks_members_or_one_bar_by_group_size(threshold: int, members_shown: bool) -> None:
    printer = ParallelEventPrinter(
        "smart",
        console=Console(file=io.StringIO(), width=100, force_terminal=True),
        clock=lambda: 0.0,
        smart_threshold=threshold,
    )
    try:
        for record in run_records()[:4]:
            printer(record)
        view = io.StringIO()
        Console(file=view, width=100, force_terminal=False).print(printer.render())
    finally:
        printer.close()
    assert ("⠿ #0" in view.getvalue()) is members_shown
    assert "📦 docs" in view.getvalue()


def test_terminal_output_ends_with_the_summary_and_leaves_no_thread() -> None:
    threads = threading.active_count()
    out = io.StringIO()
    printer = ParallelEventPrinter(
        "progress", console=Console(file=out, width=200, force_terminal=True), clock=lambda: 0.0
    )
    for record in run_records():
        printer(record)
        assert threading.active_count() == threads  # no refresh thread, ever
    printer.close()
    assert printer._live is None
    text = ANSI.sub("", out.getvalue())
    assert text.endswith(SUMMARY + "✔ 🤖 Orch COMPLETED (2.60s)\n")
    assert "\x1b[" in out.getvalue()  # a terminal does get styles and cursor moves


def test_refresh_rate_is_bounded() -> None:
    now = [0.0]
    printer = ParallelEventPrinter(
        "progress",
        console=Console(file=io.StringIO(), width=100, force_terminal=True),
        clock=lambda: now[0],
        refresh_per_second=4,
    )
    renders = 0
    original = printer.render

    def counting_render() -> object:
        nonlocal renders
        renders += 1
        return original()

    printer.render = counting_render  # type: ignore[method-assign]
    try:
        printer(GroupStarted(address="g", timestamp=0.0, name="g", total=0, max_workers=4))
        for i in range(100):  # 100 records within one second of the clock
            now[0] = i / 100
            printer(member_started(f"g[{i}]", i, at=now[0], group="g", total=100))
    finally:
        printer.close()
    # 100 records over 0.99s at 4 redraws a second: at 0 (GroupStarted), 0.25, 0.5 and 0.75.
    assert renders == 4


async def _real_group(printer: Callable[..., None]) -> None:
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)  # exact text

    async def ok() -> int:
        return 1

    async def bad() -> int:
        raise ValueError("boom")

    async with state.parallel(max_workers=1, name="jobs") as group:
        group.add("a", ok())
        group.add("b", bad())
        group.add("c", ok())
    await bus.close()


async def test_a_real_group_prints_exactly() -> None:
    printer, out = plain_printer("progress")
    await _real_group(printer)
    printer.close()
    assert out.getvalue() == (
        "▶ 📦 jobs started (max_workers=1)\n"
        "  ✔ jobs#0 a done (0ms) [1/3]\n"
        "  ✘ jobs#1 b FAILED (0ms) [2/3]: ValueError: boom\n"
        "  ✔ jobs#2 c done (0ms) [3/3]\n"
        "⚠ 📦 jobs: 3 finished · 2 ok · 1 failed · 0ms · slowest jobs#0 0ms, jobs#1 0ms, "
        "jobs#2 0ms\n"
        "    ✘ jobs#1 FAILED: ValueError: boom\n"
        '    └─ View details: execution_state.history.get_group("jobs")\n'
    )


@pytest.mark.parametrize("mode", ["realtime", "progress", "collapsed", "smart"])
async def test_non_terminal_output_has_no_escape_codes(mode: ParallelMode) -> None:
    printer, out = plain_printer(mode, progress_interval=1e-9, clock=iter(range(10**6)).__next__)
    await _real_group(printer)
    for record in run_records():
        printer(record)
    printer.close()
    text = out.getvalue()
    assert "jobs" in text and "docs" in text
    assert "\x1b" not in text and "\r" not in text


def test_group_completed_for_a_group_never_seen_to_start_is_summarized() -> None:
    # (A printer subscribed after the group opened: its end is still shown.)
    printer, out = plain_printer("collapsed")
    printer(
        group_completed(
            "never-started", at=0.0, name="x", status="completed", total=1, ok=1, wall=0.0
        )
    )
    printer.close()
    assert out.getvalue().startswith("✔ 📦 x: 1 finished · 1 ok · 0 failed · 0ms\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"parallel_mode": "fancy"}, "parallel_mode must be one of"),
        ({"refresh_per_second": 0}, "refresh_per_second must be a number > 0"),
        ({"progress_interval": -1}, "progress_interval must be a number > 0"),
        ({"progress_interval": "5"}, "progress_interval must be a number > 0, got '5'"),
        ({"smart_threshold": -1}, "smart_threshold must be an int >= 0"),
        ({"indent": "2"}, "indent must be an int >= 0, got '2'"),
        ({"max_members_shown": "3"}, "max_members_shown must be an int >= 0"),
        ({"clock": 5}, "clock must be a function"),
        ({"console": "stdout"}, "console must be a rich Console, got str"),
        ({"console": None, "file": 5}, "file must be a text stream with write"),
        ({"collapse_parallel": "no"}, "collapse_parallel must be True or False, got 'no'"),
        ({"show_summary": None}, "show_summary must be True or False, got None"),
        ({"show_progress": 1}, "show_progress must be True or False"),
        ({"show_parallel_details": "yes"}, "show_parallel_details must be True or False"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    options.setdefault("console", Console(file=io.StringIO()))
    with pytest.raises(ConfigurationError, match=message):
        ParallelEventPrinter(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"file": 5}, "file must be a text stream"),
        ({"console": "stdout"}, "console must be a rich Console"),
        ({"indent": -1}, "indent must be an int >= 0"),
        ({"show_details": "no"}, "show_details must be True or False"),
    ],
)
def test_the_event_printer_names_bad_options_too(options: dict[str, object], message: str) -> None:
    from rh_agents.bus_handlers import EventPrinter

    with pytest.raises(ConfigurationError, match=message):
        EventPrinter(**options)  # type: ignore[arg-type]


def test_live_view_caps_the_members_it_lists_and_can_fold_nested_groups() -> None:
    assert live_view_of_the_run_so_far(max_members_shown=1, collapse_parallel=True) == [
        "  📦 docs                          0/3 0% 900ms 0 failed",
        "    ⠿ #0 900ms",
        "    … 1 more running",
    ]


def test_failed_and_cancelled_events_outside_groups_are_shown() -> None:
    printer, out = plain_printer("collapsed")
    printer(
        EventFailed(
            address="Orch",
            timestamp=1.0,
            actor="Orch",
            actor_kind="agent",
            execution_time=1.5,
            error="ValueError: bad input",
            error_type="ValueError",
        )
    )
    printer(
        EventFailed(
            address="Orch::tool",
            timestamp=1.0,
            actor="tool",
            actor_kind="tool",
            execution_time=0.01,
            error="CancelledError",
            error_type="CancelledError",
            cancelled=True,
        )
    )
    printer.close()
    assert out.getvalue() == (
        "✘ 🤖 Orch FAILED (1.50s): ValueError: bad input\n"
        "  ✘ 🔧 tool CANCELLED (10ms): CancelledError\n"
    )


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_that_goes_away_stops_the_output_not_the_run() -> None:
    console = Console(file=_ClosedPipe(), width=100, force_terminal=False)
    printer = ParallelEventPrinter("realtime", console=console)
    for record in run_records():
        printer(record)  # must not raise, although every write would fail
    printer.close()


def test_plain_progress_of_a_big_group_prints_progress_and_failures_not_every_member() -> None:
    # Above smart_threshold members, one line per member would flood a log: the group shows
    # its progress every progress_interval seconds, its failures at once, then the summary.
    now = [0.0]
    printer, out = plain_printer(
        "progress", clock=lambda: now[0], progress_interval=5.0, smart_threshold=4, slowest=1
    )
    printer(GroupStarted(address="g", timestamp=0.0, name="g", total=0, max_workers=4))
    for i in range(10):
        now[0] = i * 1.0
        failed = i == 7
        printer(
            member_finished(
                f"g[{i}]", i, at=i * 1.0, took=0.5, done=i + 1, ok=i + (0 if i >= 7 else 1),
                total=10, status="failed" if failed else "completed",
                error="ValueError: bad" if failed else None, group="g",
            )
        )  # fmt: skip
    printer(
        group_completed(
            "g", at=10.0, name="g", status="partial", total=10, ok=9, failed=1, wall=10.0
        )
    )
    printer.close()
    assert out.getvalue().splitlines() == [
        "▶ 📦 g started (max_workers=4)",
        "📦 g [6/10] ████████████░░░░░░░░ 60% · 5.00s · 0 failed",
        "  ✘ g#7 FAILED (500ms) [8/10]: ValueError: bad",
        "⚠ 📦 g: 10 finished · 9 ok · 1 failed · 10.00s · slowest g#0 500ms",
        "    ✘ g#7 FAILED: ValueError: bad",
        '    └─ View details: execution_state.history.get_group("g")',
    ]
    # At or under the threshold, every member still gets its line.
    printer, out = plain_printer("progress", smart_threshold=10)
    printer(GroupStarted(address="s", timestamp=0.0, name="s", total=0, max_workers=2))
    for i in range(2):
        printer(
            member_finished(
                f"s[{i}]", i, at=0.0, took=0.0, done=i + 1, ok=i + 1, total=2, group="s"
            )
        )
    printer.close()
    assert "  ✔ s#0 done (0ms) [1/2]" in out.getvalue().splitlines()


@pytest.mark.parametrize("mode", ["realtime", "progress", "collapsed", "smart"])
def test_records_in_batches_print_exactly_what_single_records_print(mode: ParallelMode) -> None:
    from collections import deque

    single, single_out = plain_printer(mode)
    for record in run_records():
        single(record)
    single.close()
    batched, batched_out = plain_printer(mode)
    records = run_records()
    for start in range(0, len(records), 3):  # batches of three, as a bus may hand them over
        queue = deque(records[start : start + 3])
        batched.handle_batch(queue)
        assert not queue  # every record taken
    batched.close()
    assert batched_out.getvalue() == single_out.getvalue()


async def test_the_bus_hands_the_printer_its_records_in_batches() -> None:
    printer, out = plain_printer("collapsed")
    bus = EventBus()
    subscription = bus.subscribe(printer)
    assert subscription._batch is not None  # fed through handle_batch
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)  # exact text

    async def fails() -> None:
        raise ValueError("nope")

    async def fine() -> int:
        return 1

    async with state.parallel(max_workers=2, name="b") as p:
        p.add(fine())
        p.add(fails())
    await bus.drain()
    printer.close()
    assert out.getvalue() == (
        "⚠ 📦 b: 2 finished · 1 ok · 1 failed · 0ms · slowest b#0 0ms, b#1 0ms\n"
        "    ✘ b#1 FAILED: ValueError: nope\n"
        '    └─ View details: execution_state.history.get_group("b")\n'
    )


class Doc(BaseModel):
    text: str


async def test_a_tagged_call_shows_its_tag_and_its_actor() -> None:
    printer, out = plain_printer("realtime", show_summary=False)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)  # exact text

    async def count(input: Doc, context: str, state: ExecutionState) -> int:
        if input.text == "bad":
            raise ValueError("cannot count")
        return len(input.text.split())

    counter = Tool(name="count", input_model=Doc, handler=count)
    tally = ExecutionEvent(actor=counter, tag="tally")
    await tally(Doc(text="a"), "", state)
    async with state.parallel(max_workers=1, name="docs") as p:
        p.add(tally(Doc(text="a b"), "", state))
        p.add(ExecutionEvent(actor=counter)(Doc(text="a b"), "", state))
        p.add(tally(Doc(text="bad"), "", state))
    await bus.close()
    printer.close()
    assert out.getvalue() == (
        "▶ 🔧 tally (count) STARTED\n"
        "✔ 🔧 tally (count) COMPLETED (0ms)\n"
        "▶ 📦 docs started (max_workers=1)\n"
        "  [docs#0] ▶ member started\n"
        "  [docs#0] ▶ 🔧 tally (count) STARTED\n"
        "  [docs#0] ✔ 🔧 tally (count) COMPLETED (0ms)\n"
        "  [docs#0] ✔ member done (0ms) [1/3]\n"
        "  [docs#1] ▶ member started\n"
        "  [docs#1] ▶ 🔧 count STARTED\n"
        "  [docs#1] ✔ 🔧 count COMPLETED (0ms)\n"
        "  [docs#1] ✔ member done (0ms) [2/3]\n"
        "  [docs#2] ▶ member started\n"
        "  [docs#2] ▶ 🔧 tally (count) STARTED\n"
        "  [docs#2] ✘ 🔧 tally (count) FAILED (0ms): ValueError: cannot count\n"
        "  [docs#2] ✘ member FAILED (0ms) [3/3]: ValueError: cannot count\n"
        "⚠ 📦 docs PARTIAL: 3 finished · 2 ok · 1 failed · 0ms\n"
    )


def _live_lines(printer: ParallelEventPrinter, width: int = 100) -> list[str]:
    view = io.StringIO()
    Console(file=view, width=width, force_terminal=False).print(printer.render())
    return [line.rstrip() for line in view.getvalue().splitlines()]


def test_a_group_whose_size_is_not_known_yet_shows_what_finished_not_a_question_mark() -> None:
    # A nested group has just started: its members are still being added, so no total yet.
    printer = ParallelEventPrinter(
        "progress",
        console=Console(file=io.StringIO(), width=100, force_terminal=True),
        clock=lambda: 0.0,
    )
    try:
        for record in run_records()[:6]:  # up to the nested group's GroupStarted
            printer(record)
        lines = _live_lines(printer)
    finally:
        printer.close()
    assert lines[-1] == "      📦 steps ░░░░░░░░░░░░░░░░░░░░░░░░ 0 finished 0ms 0 failed"
    assert not any("?" in line for line in lines)
    # Plain output's progress line, for a group that never says how big it is (a lazy map).
    now = [0.0]
    printer, out = plain_printer("collapsed", clock=lambda: now[0], progress_interval=1.0)
    printer(GroupStarted(address="g", timestamp=0.0, name="g", total=0, max_workers=4))
    now[0] = 2.0
    printer(member_finished("g[0]", 0, at=2.0, took=0.5, done=1, ok=1, total=None, group="g"))
    assert out.getvalue() == "📦 g [1 finished] · 2.00s · 0 failed\n"
    printer, out = plain_printer("realtime")
    printer(GroupStarted(address="g", timestamp=0.0, name="g", total=0, max_workers=4))
    printer(member_finished("g[0]", 0, at=2.0, took=0.5, done=1, ok=1, total=None, group="g"))
    assert out.getvalue().splitlines()[-1] == "  [g#0] ✔ member done (500ms) [1 finished]"


def test_failures_are_listed_in_index_order_whatever_order_they_failed_in() -> None:
    terminal = ParallelEventPrinter(
        "progress",
        console=Console(file=io.StringIO(), width=100, force_terminal=True),
        clock=lambda: 0.0,
    )
    plain, out = plain_printer("collapsed")
    records = [
        GroupStarted(address="g", timestamp=0.0, name="g", total=0, max_workers=4),
        *(
            member_finished(
                f"g[{i}]", i, at=float(n), took=0.1, done=n + 1, ok=0, total=4, group="g",
                status="failed", error=f"ValueError: {i}",
            )
            for n, i in enumerate((3, 0, 2))
        ),
    ]  # fmt: skip
    try:
        for record in records:
            terminal(record)
            plain(record)
        assert _live_lines(terminal)[1:] == [
            "  ✘ g#0 FAILED: ValueError: 0",
            "  ✘ g#2 FAILED: ValueError: 2",
            "  ✘ g#3 FAILED: ValueError: 3",
        ]
    finally:
        terminal.close()
    plain.close()
    assert out.getvalue().splitlines()[1:] == [
        "    ✘ g#0 FAILED: ValueError: 0",
        "    ✘ g#2 FAILED: ValueError: 2",
        "    ✘ g#3 FAILED: ValueError: 3",
        '    └─ View details: execution_state.history.get_group("g")',
    ]


NARROW_SUMMARY = """\
  ⚠ 📦 docs: 3 finished · 1 ok ·
      2 failed (1 timed out, 1
      cancelled) · 2.50s ·
      slowest docs#1 2.00s, docs#0
      1.20s, docs#2 500ms
      ✘ docs#1 TIMED_OUT:
        ParallelTimeoutError: member 1
        of group 'Orch::docs' timed out
        after 2.0s
      ✘ docs#2 CANCELLED:
        MemberCancelledError: group
        stopped
    ⚠ 📦 steps: 2 finished · 1 ok ·
        1 failed · 1 retried · 1.00s ·
        slowest docs#1/steps#0 800ms,
        docs#1/steps#1 100ms
        ✘ docs#1/steps#1 FAILED:
          ValueError: no words
      └─ View details: execution_state.history.get_group("Orch::docs")
"""


def test_summary_lines_wrap_between_words_to_the_console_width() -> None:
    # A group's line goes on under its failures; a failure's under its text.
    assert feed_narrow(force_terminal=False) == (
        "▶ 🤖 Orch STARTED\n⚡ circuit llm: closed → open (5 failures)\n"
        + NARROW_SUMMARY
        + "✔ 🤖 Orch COMPLETED (2.60s)\n"
    )
    # A terminal gets the same lines, styled: the colour of a line carries over to its rest.
    styled = feed_narrow(force_terminal=True)
    assert ANSI.sub("", styled).endswith(NARROW_SUMMARY + "✔ 🤖 Orch COMPLETED (2.60s)\n")
    assert "\x1b[33m1 failed · 1 retried · 1.00s ·\x1b[0m" in styled


def feed_narrow(*, force_terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=40, height=20, force_terminal=force_terminal)
    printer = ParallelEventPrinter("collapsed", console=console, clock=lambda: 0.0)
    for record in run_records():
        printer(record)
    printer.close()
    return out.getvalue()


def _crowded(height: int, width: int = 40) -> list[str]:
    """The live view of a group of ten members: seven run, three failed (7, 2, 5 in turn)."""
    printer = ParallelEventPrinter(
        "progress",
        console=Console(file=io.StringIO(), width=width, height=height, force_terminal=True),
        clock=lambda: 0.0,
    )
    error = "ValueError: member {} could not parse its input"
    records = [
        GroupStarted(address="g", timestamp=0.0, name="g", total=0, max_workers=8),
        *(member_started(f"g[{i}]", i, at=0.0, group="g", total=10) for i in range(10)),
        *(
            member_finished(
                f"g[{i}]", i, at=1.0, took=1.0, done=n + 1, ok=0, total=10, group="g",
                status="failed", error=error.format(i),
            )
            for n, i in enumerate((7, 2, 5))
        ),
    ]  # fmt: skip
    try:
        for record in records:
            printer(record)
        return _live_lines(printer, width)
    finally:
        printer.close()


def test_a_short_terminal_crops_the_running_members_before_the_failures() -> None:
    bar = "📦 g ━━━         3/10 30% 1.00s 3 failed"
    failures = [
        "  ✘ g#2 FAILED: ValueError: member 2 co…",
        "  ✘ g#5 FAILED: ValueError: member 5 co…",
        "  ✘ g#7 FAILED: ValueError: member 7 co…",
    ]
    running = [f"  ⠿ #{i} 1.00s" for i in (0, 1, 3, 4, 6, 8, 9)]
    assert _crowded(height=24) == [bar, *running, *failures]
    assert _crowded(height=6) == [bar, "  ⠿ #0 1.00s", "  … 6 more running", *failures]
    assert _crowded(height=4) == [bar, *failures]
    assert _crowded(height=3) == [bar, failures[0], "  … 2 more failed (listed at the end)"]


def test_a_narrow_terminal_narrows_the_bar_before_the_text() -> None:
    assert _crowded(height=24, width=40)[0] == "📦 g ━━━         3/10 30% 1.00s 3 failed"
    assert _crowded(height=24, width=30)[0] == "📦 g 3/10 30% 1.00s 3 failed"


async def test_a_callable_members_own_retry_sits_with_its_member_lines() -> None:
    # Its address is the member's own (no call under it), so the line was drawn at column 0
    # while every other line of that member was indented under its group.
    from rh_agents import RetryPolicy

    printer, out = plain_printer("realtime")
    bus = EventBus()
    bus.subscribe(printer)
    tries = {"n": 0}

    async def flaky() -> int:
        tries["n"] += 1
        if tries["n"] < 2:
            raise ValueError("flaky")
        return 1

    retry = RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0)
    state = ExecutionState(event_bus=bus, clock=FrozenClock())
    async with state, state.parallel(max_workers=1, name="docs", retry=retry) as p:
        p.add(flaky, name="fl")
    printer.close()
    lines = [line for line in out.getvalue().splitlines() if "[docs#0]" in line]
    assert lines and {line[: len(line) - len(line.lstrip())] for line in lines} == {"  "}
    assert any("↻ docs[0] retry 1" in line for line in lines)


async def test_a_multi_line_error_and_a_name_with_a_newline_stay_on_their_lines() -> None:
    # Continuation lines of a multi-line error (pydantic's ValidationError) started at column
    # 0, like a group's lines; a name with a newline made a line with no tag.
    printer, out = plain_printer("progress")
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)

    async def bad() -> int:
        raise ValueError("1 validation error for Reply\nscore\n  Field required")

    async with state.parallel(max_workers=1, name="jobs") as group:
        group.add("two\nlines", bad())
    await bus.close()
    printer.close()
    assert out.getvalue() == (
        "▶ 📦 jobs started (max_workers=1)\n"
        "  ✘ jobs#0 two ⏎ lines FAILED (0ms) [1/1]: ValueError: 1 validation error for Reply ⏎ "
        "score ⏎ Field required\n"
        "⚠ 📦 jobs: 1 finished · 0 ok · 1 failed · 0ms · slowest jobs#0 0ms\n"
        "    ✘ jobs#0 FAILED: ValueError: 1 validation error for Reply ⏎ score ⏎ Field required\n"
        '    └─ View details: execution_state.history.get_group("jobs")\n'
    )


async def test_the_live_view_keeps_one_line_per_row_for_multi_line_errors() -> None:
    console = Console(file=io.StringIO(), width=80, height=6, force_terminal=True)
    printer = ParallelEventPrinter("progress", console=console, clock=lambda: 0.0)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus, watchdog=None)
    release = asyncio.Event()

    async def bad() -> int:
        raise ValueError("line one\nline two\nline three")

    async with state.parallel(max_workers=8, name="jobs") as group:
        for _ in range(3):
            group.add(bad())
        for _ in range(5):
            group.add(release.wait())
        await until(lambda: group.statistics().failed == 3)
        await bus.drain()
        lines = console.render_lines(printer.render(), console.options, pad=False)
        release.set()
    await bus.close()
    printer.close()
    assert len(lines) <= 6
    text = ["".join(segment.text for segment in line) for line in lines]
    assert sum("FAILED: ValueError: line one ⏎ line two ⏎ line three" in t for t in text) >= 1
    assert all(t.startswith(("📦", "  ")) for t in text)


async def test_a_summary_asked_for_mid_run_marks_the_running_group_as_running() -> None:
    bus = EventBus()
    printer = ParallelEventPrinter("progress", console=Console(file=io.StringIO(), width=100))
    bus.subscribe(printer)
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def member(i: int) -> int:
        if i == 0:
            finished.set()
            raise ValueError("the first one failed")
        await gate.wait()
        return i

    state = ExecutionState(event_bus=bus)
    async with state.parallel(max_workers=3, name="g") as p:
        for i in range(3):
            p.add(member(i))
        await finished.wait()
        await bus.drain()
        mid = printer.summary()
        gate.set()
    await state.close()
    assert mid.splitlines()[0].startswith("▶ 📦 g: 1 of 3 finished · 0 ok · 1 failed"), mid
    assert printer.summary().splitlines()[0].startswith("⚠ 📦 g: 3 finished · 2 ok · 1 failed")


async def test_a_printer_subscribed_after_a_group_opened_shows_it_whole() -> None:
    # A display attached to a run already going (a UI joining a running job): the group it
    # never saw start is shown all the same, with its failures and its end, and the groups
    # its members open afterwards sit under it, not beside it as outermost groups.
    bus = EventBus()
    printer = ParallelEventPrinter("collapsed", console=Console(file=io.StringIO(), width=100))
    state = ExecutionState(event_bus=bus)
    started = asyncio.Event()
    gate = asyncio.Event()

    async def member(i: int) -> None:
        started.set()
        await gate.wait()
        async with state.parallel(name="steps") as steps:
            steps.add(asyncio.sleep(0))
        if i == 1:
            raise ValueError("doc 1 failed")

    async with state.parallel(max_workers=3, name="docs") as p:
        for i in range(3):
            p.add(member(i))
        await started.wait()
        bus.subscribe(printer)
        gate.set()
    await state.close()
    printer.close()
    summary = printer.summary()
    assert summary.splitlines()[0].startswith("⚠ 📦 docs: 3 finished · 2 ok · 1 failed"), summary
    assert "✘ docs#1 FAILED: ValueError: doc 1 failed" in summary
    nested = {key: view.parent_id for key, view in printer.parallel_groups.items() if key != "docs"}
    assert nested == {f"docs[{i}]::steps": "docs" for i in range(3)}
    assert printer.parallel_groups["docs"].status == "partial"


async def test_a_late_printer_nests_groups_opened_inside_a_members_calls() -> None:
    # The usual shape: a member is an agent's call, whose handler opens the nested group
    # ("docs[0]::agent::steps"): it still sits under "docs", member 0.
    from rh_agents.core.actors import Agent

    class Item(BaseModel):
        i: int

    bus = EventBus()
    printer = ParallelEventPrinter("collapsed", console=Console(file=io.StringIO(), width=120))
    state = ExecutionState(event_bus=bus)
    started = asyncio.Event()
    gate = asyncio.Event()

    async def fan_out(item: Item, context: str, state: ExecutionState) -> int:
        async def step() -> None:
            started.set()
            await gate.wait()

        async with state.parallel(name="steps") as steps:
            steps.add(step())
        return item.i

    agent = ExecutionEvent(actor=Agent(name="agent", input_model=Item, handler=fan_out))
    async with state.parallel(max_workers=2, name="docs") as p:
        for i in range(2):
            p.add(agent(Item(i=i), "", state))
        await started.wait()
        bus.subscribe(printer)
        gate.set()
    await state.close()
    printer.close()
    views = printer.parallel_groups
    seen = {key: (v.name, v.parent_id, v.parent_index) for key, v in views.items()}
    assert seen == {
        "docs": ("docs", None, None),
        "docs[0]::agent::steps": ("steps", "docs", 0),
        "docs[1]::agent::steps": ("steps", "docs", 1),
    }
