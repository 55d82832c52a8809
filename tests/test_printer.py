"""EventPrinter: exact lines, indentation by depth, plain text off a terminal."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from printer_records import group_completed, member_finished, member_started
from rh_agents.bus_handlers import EventPrinter
from rh_agents.core.actors import Agent, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import (
    BusEvent,
    CircuitStateChanged,
    EventCompleted,
    EventFailed,
    EventRetrying,
    EventStarted,
    GroupStarted,
)
from rh_agents.core.safe_text import markup_escape
from rh_agents.testing import ManualClock


@pytest.fixture(autouse=True)
def _no_color_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    # Consoles read these at construction; the tests pin the terminal decision themselves.
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM"):
        monkeypatch.delenv(name, raising=False)


def printer(*, terminal: bool = False, **options: bool) -> tuple[EventPrinter, StringIO]:
    out = StringIO()
    colors = "truecolor" if terminal else "auto"
    console = Console(file=out, width=100, force_terminal=terminal, color_system=colors)
    return EventPrinter(console, **options), out


def lines(records: list[BusEvent], **options: bool) -> list[str]:
    p, out = printer(**options)
    for r in records:
        p(r)
    return out.getvalue().splitlines()


def started(address: str, kind: str = "tool", detail: str = "") -> EventStarted:
    return EventStarted(address=address, timestamp=0.0, actor="x", actor_kind=kind, detail=detail)


def test_started_completed_failed_lines() -> None:
    records: list[BusEvent] = [
        started("Orchestrator", "agent", '{"topic":"ai"}'),
        started("Orchestrator::summarizer", "llm", "text"),
        EventCompleted(
            address="Orchestrator::summarizer",
            timestamp=1.0,
            actor="summarizer",
            actor_kind="llm",
            execution_time=0.0123,
            detail="short",
        ),
        EventFailed(
            address="Orchestrator::search",
            timestamp=1.0,
            actor="search",
            actor_kind="tool",
            execution_time=1.5,
            error="RuntimeError: boom",
            error_type="RuntimeError",
        ),
        EventFailed(
            address="Orchestrator",
            timestamp=2.0,
            actor="Orchestrator",
            actor_kind="agent",
            execution_time=2.0,
            error="cancelled",
            error_type="CancelledError",
            cancelled=True,
        ),
    ]
    assert lines(records) == [
        '▶ 🤖 Orchestrator STARTED {"topic":"ai"}',
        "  ▶ 🧠 Orchestrator::summarizer STARTED text",
        "  ✔ 🧠 Orchestrator::summarizer COMPLETED (12ms) → short",
        "  ✘ 🔧 Orchestrator::search FAILED (1.50s) RuntimeError: boom",
        "✘ 🤖 Orchestrator CANCELLED (2.00s) cancelled",
    ]


def test_details_can_be_hidden_and_sources_are_shown() -> None:
    replayed = EventCompleted(
        address="a::b::c",
        timestamp=0.0,
        actor="c",
        actor_kind="actor",
        execution_time=0.0,
        detail="42",
        source="replay",
    )
    assert lines([started("a::b::c", "tool", "in"), replayed], show_details=False) == [
        "    ▶ 🔧 a::b::c STARTED",
        "    ✔ ⚙ a::b::c COMPLETED (0ms) (replay)",
    ]
    assert lines([replayed]) == ["    ✔ ⚙ a::b::c COMPLETED (0ms) (replay) → 42"]


def test_indent_width_is_configurable() -> None:
    assert lines([started("a::b", "tool")], indent=4) == ["    ▶ 🔧 a::b STARTED"]


def test_group_lines() -> None:
    records: list[BusEvent] = [
        GroupStarted(address="Orch::docs", timestamp=0.0, name="docs", total=0, max_workers=3),
        member_started("Orch::docs[0]", 0, at=0.0),
        member_finished("Orch::docs[0]", 0, at=0.1, took=0.1, done=1, ok=1, total=3),
        member_finished(
            "Orch::docs[2]", 2, at=0.2, took=0.2, done=2, ok=1, total=3,
            status="timed_out", error="ParallelTimeoutError: too slow", name="third",
        ),
        group_completed(
            "Orch::docs", at=0.3, name="docs", status="partial", total=3, ok=1, failed=1,
            timed_out=1, wall=0.25,
        ),
        group_completed(
            "steps", at=0.3, name="steps", status="completed", total=2, ok=2, wall=1.25
        ),
    ]  # fmt: skip
    assert lines(records) == [
        "  ▶ 📦 docs PARALLEL, max_workers=3",
        "    ✘ member third TIMED_OUT ParallelTimeoutError: too slow",
        "  ⚠ 📦 docs PARTIAL: 3 finished · 1 ok · 2 failed (1 timed out) · 250ms",
        "✔ 📦 steps COMPLETED: 2 finished · 2 ok · 0 failed · 1.25s",
    ]


def test_retry_and_circuit_lines() -> None:
    records: list[BusEvent] = [
        EventRetrying(
            address="a::llm",
            timestamp=0.0,
            attempt=2,
            delay=0.5,
            error="TimeoutError: slow",
            error_type="TimeoutError",
        ),
        CircuitStateChanged(
            address="", timestamp=0.0, key="api", old_state="closed", new_state="open", failures=5
        ),
    ]
    assert lines(records) == [
        "  ↻ a::llm RETRY 2 in 500ms: TimeoutError: slow",
        "⚡ circuit api: closed → open",
    ]


def test_user_text_is_never_read_as_markup_or_emoji_codes() -> None:
    failing_member = member_finished(
        "g[0]", 0, at=0.0, took=0.0, done=1, ok=0, total=1,
        status="failed", error="ValueError: [/red] broke", name="[bold]x[/bold]",
    )  # fmt: skip
    assert lines([started("t", "tool", "see :smile: and [red]this[/red] \\"), failing_member]) == [
        "▶ 🔧 t STARTED see :smile: and [red]this[/red] \\",
        "  ✘ member [bold]x[/bold] FAILED ValueError: [/red] broke",
    ]


class Doc(BaseModel):
    text: str


async def _run_tree(bus: EventBus) -> None:
    async def leaf(input: Doc, context: str, state: ExecutionState) -> str:
        return input.text.upper()

    leaf_tool = Tool(name="upper", input_model=Doc, handler=leaf)

    async def root(input: Doc, context: str, state: ExecutionState) -> list[str]:
        async with state.parallel(max_workers=2, name="parts") as p:
            for word in input.text.split():
                p.add(ExecutionEvent(actor=leaf_tool)(Doc(text=word), "", state))
            results = await p.gather()
        return [r.unwrap() for r in results]

    state = ExecutionState(event_bus=bus)
    agent = Agent(name="Root", input_model=Doc, handler=root)
    result = await ExecutionEvent(actor=agent)(Doc(text="a b"), "", state)
    assert result.unwrap() == ["A", "B"]
    await state.close()


async def test_a_run_off_a_terminal_is_plain_text() -> None:
    p, out = printer(terminal=False)
    bus = EventBus()
    bus.subscribe(p)
    await _run_tree(bus)
    text = out.getvalue()
    assert "\x1b" not in text
    shown = text.splitlines()
    assert shown[0] == '▶ 🤖 Root STARTED {"text":"a b"}'
    assert shown[1] == "  ▶ 📦 parts PARALLEL, max_workers=2"
    assert '    ▶ 🔧 Root::parts[0]::upper STARTED {"text":"a"}' in shown
    assert shown[-2].startswith("  ✔ 📦 parts COMPLETED: 2 finished · 2 ok · 0 failed · ")
    assert shown[-1].startswith("✔ 🤖 Root COMPLETED (")
    assert shown[-1].endswith(") → ['A', 'B']")


async def test_a_run_on_a_terminal_is_styled_with_the_same_text() -> None:
    styled, styled_out = printer(terminal=True)
    plain, plain_out = printer(terminal=False)
    bus = EventBus()
    bus.subscribe(styled)
    bus.subscribe(plain)
    await _run_tree(bus)
    assert "\x1b[" in styled_out.getvalue()
    stripped = Text.from_ansi(styled_out.getvalue()).plain
    timing_free = [line.split(" (")[0] for line in plain_out.getvalue().splitlines()]
    assert [line.split(" (")[0] for line in stripped.splitlines()] == timing_free


def test_default_printer_writes_plain_text_to_a_file() -> None:
    out = StringIO()
    EventPrinter(file=out)(started("a", "agent", "x"))
    assert out.getvalue() == "▶ 🤖 a STARTED x\n"


async def _run_tagged(bus: EventBus) -> None:
    """``Outer`` calls ``count`` as ``tally``, plainly, then as ``tally`` again (which fails)."""

    async def count(input: Doc, context: str, state: ExecutionState) -> int:
        if input.text == "bad":
            raise ValueError("cannot count")
        return len(input.text.split())

    counter = Tool(name="count", input_model=Doc, handler=count)
    tally = ExecutionEvent(actor=counter, tag="tally")

    async def outer(input: Doc, context: str, state: ExecutionState) -> None:
        await tally(input, "", state)
        await ExecutionEvent(actor=counter)(input, "", state)
        await tally(Doc(text="bad"), "", state)

    state = ExecutionState(event_bus=bus, clock=ManualClock())
    await ExecutionEvent(actor=Agent(name="Outer", input_model=Doc, handler=outer))(
        Doc(text="a b"), "", state
    )
    await state.close()


async def test_a_tagged_call_shows_its_tag_and_its_actor() -> None:
    p, out = printer()
    bus = EventBus()
    bus.subscribe(p)
    await _run_tagged(bus)
    assert out.getvalue().splitlines() == [
        '▶ 🤖 Outer STARTED {"text":"a b"}',
        '  ▶ 🔧 Outer::tally (count) STARTED {"text":"a b"}',
        "  ✔ 🔧 Outer::tally (count) COMPLETED (0ms) → 2",
        '  ▶ 🔧 Outer::count STARTED {"text":"a b"}',
        "  ✔ 🔧 Outer::count COMPLETED (0ms) → 2",
        '  ▶ 🔧 Outer::tally#2 (count) STARTED {"text":"bad"}',
        "  ✘ 🔧 Outer::tally#2 (count) FAILED (0ms) ValueError: cannot count",
        "✔ 🤖 Outer COMPLETED (0ms) → None",
    ]


def test_a_tag_equal_to_the_actor_name_adds_nothing() -> None:
    record = EventStarted(address="x", timestamp=0.0, actor="x", actor_kind="tool", tag="x")
    assert lines([record]) == ["▶ 🔧 x STARTED"]


@given(
    text=st.text(alphabet="\\[]ab/#@ ", max_size=10),
    template=st.sampled_from(["[red]{}[/red]{} tail", "{}[dim]x[/dim]{}", "{}{}"]),
)
def test_markup_escape_renders_any_text_exactly_whatever_follows(text: str, template: str) -> None:
    # rich's own escape lost the backslash of "\[" and let text ending in "\" or "[/" reach
    # into the tag after it.
    markup = template.format(markup_escape(text), markup_escape(text))
    expected = re.sub(r"\[/?(red|dim)\]", "", template).format(text, text)
    assert Text.from_markup(markup).plain == expected


def test_backslashes_in_names_and_errors_print_as_written() -> None:
    error = r"ValueError: cannot compile \[\d+\]"
    out = lines(
        [
            member_finished(
                "g[0]",
                0,
                at=0.0,
                took=0.0,
                done=1,
                ok=0,
                total=1,
                status="failed",
                error=error,
                group="g",
                name="C:\\data\\",
            )
        ]
    )
    assert out == [f"  ✘ member C:\\data\\ FAILED {error}"]


def test_text_from_the_run_stays_on_its_line_and_is_clipped() -> None:
    # An error (or a name) with a line break must not draw a line of its own: here one that
    # would pass for the group's own "COMPLETED" line. A long one takes bounded room.
    forged = "timeout\n✔ 📦 docs COMPLETED: 2 finished · 2 ok · 0 failed · 1ms"
    records: list[BusEvent] = [
        member_finished(
            "docs[0]", 0, at=1.0, took=0.5, done=1, ok=0, total=2, status="failed",
            error=f"RuntimeError: {forged}", group="docs", name="fetch\n✔ forged",
        ),
        member_finished(
            "docs[1]", 1, at=1.0, took=0.5, done=2, ok=0, total=2, status="failed",
            error="RuntimeError: " + "x" * 5000, group="docs",
        ),
    ]  # fmt: skip
    out = lines(records)
    assert len(out) == 2
    assert out[0] == (
        "  ✘ member fetch ⏎ ✔ forged FAILED RuntimeError: timeout ⏎ ✔ 📦 docs COMPLETED: "
        "2 finished · 2 ok · 0 failed · 1ms"
    )
    assert out[1].endswith("x … (4014 more characters)")
    assert len(out[1]) < 1100
