"""ParallelEventPrinter: a huge error, nested group starts, held-back frames, unsafe names.

Four bugs of the display: one long error message blocked the event loop for seconds (its
summary line was wrapped in quadratic time); each nested group start forced a redraw past
``refresh_per_second``; an update held back by that limit was never drawn (and plain output
wrote no progress line, nor its batched lines, while no record came); the per-member "done"
lines of plain ``progress`` wrote names with their control characters and line breaks.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable, Iterable

import pytest
from rich.console import Console, RenderableType
from rich.containers import Lines
from rich.text import Text

from printer_records import group_completed, member_finished, member_started, plain_printer
from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.bus_handlers.parallel_printer import ParallelMode
from rh_agents.bus_handlers.wrapping import wrap
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent, GroupStarted
from rh_agents.core.safe_text import ERROR_CHARS, clipped

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Every control character but the newline ending each line (tabs included: none is printed).
# Control codes, and the bidirectional overrides that show a line reversed ("Trojan Source").
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MODES: list[ParallelMode] = ["realtime", "progress", "collapsed", "smart"]


class FrozenClock:
    """Every reading is 0: durations print as 0ms, so a real run prints the same every time."""

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


async def eventually(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    """Wait for ``condition()`` (something a loop timer does), polling every 10 ms."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not true after {seconds}s")


def written(out: io.StringIO, text: str) -> Callable[[], bool]:
    """Whether ``text`` was written to ``out`` yet."""
    return lambda: text in out.getvalue()


# --- 1. one huge error ------------------------------------------------------------------


def test_clipped_keeps_an_error_up_to_the_limit_and_counts_what_it_leaves_out() -> None:
    assert clipped("x" * ERROR_CHARS) == "x" * ERROR_CHARS
    assert clipped("x" * (ERROR_CHARS + 1)) == "x" * ERROR_CHARS + " … (1 more character)"
    assert clipped("abcdef", 2) == "ab … (4 more characters)"


def test_wrapping_a_long_text_copies_it_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each line used to be a slice of the rich Text, and a slice copies the whole text: a
    # 128 KB error took 4 s to wrap. Counted in characters copied, not in seconds.
    copied = 0
    divide = Text.divide

    def counting_divide(self: Text, offsets: Iterable[int]) -> Lines:
        nonlocal copied
        copied += len(self.plain)
        return divide(self, offsets)

    monkeypatch.setattr(Text, "divide", counting_divide)
    text = Text("ab " * 20_000, style="red")
    text.stylize("bold", 3, 9)  # "ab ab" of the second line
    lines = wrap(text, 10, hang=2)
    assert copied <= 2 * len(text.plain)
    # Three words a line, the others indented: 20,000 words, none lost.
    assert [line.plain for line in lines] == ["ab ab ab", *["  ab ab ab"] * 6665, "  ab ab"]
    assert [(span.start, span.end, span.style) for span in lines[0].spans] == [
        (0, 8, "red"),
        (3, 8, "bold"),
    ]
    assert all(
        [(span.start, span.end, span.style) for span in line.spans] == [(2, 10, "red")]
        for line in lines[1:-1]
    )


@pytest.mark.parametrize("mode", MODES)
async def test_a_huge_error_is_shown_clipped_and_kept_whole(mode: ParallelMode) -> None:
    message = "upstream said: " + "<div class=err>Bad gateway</div> " * 3800  # 125 KB
    printer, out = plain_printer(mode)
    bus = EventBus()
    bus.subscribe(printer)

    async def call_service() -> None:
        raise RuntimeError(message)

    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)
    with printer:
        async with state, state.parallel(name="calls") as group:
            group.add(call_service)
    error = printer.parallel_groups["calls"].issues[0].error
    assert error == f"RuntimeError: {message}"  # the group keeps the whole error
    marker = f" … ({len(error) - ERROR_CHARS} more characters)"
    text = out.getvalue()
    # Shown on the member's line (not in collapsed) and in the summary, each clipped.
    assert text.count(marker) == (1 if mode in ("collapsed", "smart") else 2)
    assert len(text) < 3 * (ERROR_CHARS + 300)
    summary = text[text.index("⚠ 📦 calls:") :].splitlines()
    assert summary[1].startswith("    ✘ calls#0 FAILED: RuntimeError: upstream said: <div")
    assert all(len(line) <= 100 for line in summary[:-1])  # wrapped to the console's width
    assert summary[-2].endswith(marker)


# --- 2. nested group starts and the refresh limit ----------------------------------------


def test_nested_group_starts_are_drawn_within_the_refresh_limit() -> None:
    # Each nested group start forced a frame: 400 members opening one drew 400 frames.
    now = [0.0]
    printer = ParallelEventPrinter(
        "progress",
        console=Console(file=io.StringIO(), width=100, height=30, force_terminal=True),
        clock=lambda: now[0],
        refresh_per_second=4,
    )
    renders = 0
    render = printer.render

    def counting_render() -> RenderableType:
        nonlocal renders
        renders += 1
        return render()

    printer.render = counting_render  # type: ignore[method-assign]
    try:
        printer(GroupStarted(address="docs", timestamp=0.0, name="docs", total=0, max_workers=9))
        for i in range(100):  # 100 members over 0.99 s, each opening a group of its own
            now[0] = i / 100
            printer(member_started(f"docs[{i}]", i, at=now[0], group="docs", total=100))
            printer(
                GroupStarted(
                    address=f"docs[{i}]::steps",
                    timestamp=now[0],
                    group_id="docs",
                    parallel_index=i,
                    is_parallel=True,
                    name="steps",
                    total=1,
                    max_workers=1,
                    parent_group_id="docs",
                )
            )
    finally:
        printer.close()
    # At 4 redraws a second: at 0 (the group's start), 0.25, 0.5 and 0.75.
    assert renders == 4


# --- 3. what the rate limit holds back is drawn later -------------------------------------


@pytest.mark.parametrize("mode", ["progress", "smart"])
async def test_a_frame_held_back_by_the_rate_limit_is_drawn_when_the_interval_passed(
    mode: ParallelMode,
) -> None:
    # The members start right after the group's first frame, within the rate limit; no
    # record comes for as long as they run (a slow LLM call), and that frame, with none
    # running, stayed on the screen. The clock never moves: only the loop timer can draw.
    out = io.StringIO()
    printer = ParallelEventPrinter(
        mode,
        console=Console(file=out, width=100, height=30, force_terminal=True),
        clock=lambda: 0.0,
        refresh_per_second=20,
    )
    bus = EventBus()
    bus.subscribe(printer)
    release = asyncio.Event()
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)
    with printer:
        async with state.parallel(max_workers=5, name="docs") as group:
            for n in range(5):
                group.add(release.wait, name=f"doc{n}")
            try:
                await eventually(lambda: "⠿ #4 doc4" in ANSI.sub("", out.getvalue()))
            finally:
                release.set()
        await bus.close()
    frame = ANSI.sub("", out.getvalue())
    assert all(f"⠿ #{n} doc{n}" in frame for n in range(5))


async def test_plain_output_writes_a_progress_line_every_interval_with_no_record() -> None:
    # The progress line came only with a record: none between two members' ends, however long.
    printer, out = plain_printer("progress", progress_interval=0.05)
    bus = EventBus()
    bus.subscribe(printer)
    release = asyncio.Event()
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)

    def progress_lines() -> list[str]:
        return [line for line in out.getvalue().splitlines() if line.startswith("📦 jobs [")]

    with printer:
        async with state.parallel(max_workers=3, name="jobs") as group:
            for _ in range(3):
                group.add(release.wait)
            try:
                await eventually(lambda: len(progress_lines()) >= 2)
            finally:
                release.set()
        await bus.close()
    # The clocks stand still: the timer's intervals are the time that went by.
    assert progress_lines()[:2] == [
        "📦 jobs [0/3] ░░░░░░░░░░░░░░░░░░░░ 0% · 50ms · 0 failed",
        "📦 jobs [0/3] ░░░░░░░░░░░░░░░░░░░░ 0% · 100ms · 0 failed",
    ]


async def test_plain_output_writes_a_batched_line_when_no_record_follows_it() -> None:
    # A member's "done" line waits for the next write (at most 0.2 s after the last one); with
    # no record after it, it waited until the group ended.
    now = [0.0]
    printer, out = plain_printer("progress", clock=lambda: now[0])
    bus = EventBus()
    bus.subscribe(printer)
    first, second, last = asyncio.Event(), asyncio.Event(), asyncio.Event()
    state = ExecutionState(event_bus=bus, clock=FrozenClock(), watchdog=None)
    with printer:
        async with state.parallel(max_workers=3, name="jobs") as group:
            for event in (first, second, last):
                group.add(event.wait)
            try:
                await bus.drain()
                for n, event in enumerate((first, second)):
                    now[0] = 0.1 * (n + 1)  # each line comes within 0.2 s of the last write
                    event.set()
                    await eventually(written(out, f"  ✔ jobs#{n} done (0ms) [{n + 1}/3]\n"))
            finally:
                for event in (first, second, last):
                    event.set()
        await bus.close()


# --- 4. names and errors are made safe on every path ---------------------------------------

GROUP = "docs\x1b(0"


def unsafe_run() -> list[BusEvent]:
    """A group named with a control code, members with a clear-screen code, a line break (a
    Unicode line separator), markup and a right-to-left override in their names, and one
    error with colour codes and a line break."""
    names = ["\x1b[2Jwipe", "two\u2028lines", "[bold]x[/bold]", "b\u202ead"]
    records: list[BusEvent] = [
        GroupStarted(address=GROUP, timestamp=0.0, name=GROUP, total=4, max_workers=4)
    ]
    for index, name in enumerate(names):
        records.append(member_started(f"{GROUP}[{index}]", index, at=0.0, group=GROUP, name=name))
    for index, name in enumerate(names):
        failed = index == 3
        records.append(
            member_finished(
                f"{GROUP}[{index}]",
                index,
                at=0.001,
                took=0.001,
                done=index + 1,
                ok=min(index + 1, 3),
                total=4,
                status="failed" if failed else "completed",
                error="ValueError: \x1b[31mred\nagain" if failed else None,
                group=GROUP,
                name=name,
            )
        )
    records.append(
        group_completed(
            GROUP, at=0.002, name=GROUP, status="partial", total=4, ok=3, failed=1, wall=0.002
        )
    )
    return records


def test_plain_progress_done_lines_show_names_safely() -> None:
    printer, out = plain_printer("progress", width=200)
    for record in unsafe_run():
        printer(record)
    printer.close()
    assert out.getvalue().splitlines()[:5] == [
        "▶ 📦 docs␛(0 started (max_workers=4)",
        "  ✔ docs␛(0#0 ␛[2Jwipe done (1ms) [1/4]",
        "  ✔ docs␛(0#1 two ⏎ lines done (1ms) [2/4]",
        "  ✔ docs␛(0#2 [bold]x[/bold] done (1ms) [3/4]",
        "  ✘ docs␛(0#3 b\ufffdad FAILED (1ms) [4/4]: ValueError: ␛[31mred ⏎ again",
    ]


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_no_path_prints_a_control_code_or_a_line_break_from_a_name(
    mode: ParallelMode, terminal: bool
) -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter(
        mode,
        console=Console(file=out, width=200, height=30, force_terminal=terminal),
        clock=lambda: 0.0,
    )
    live: list[str] = []
    for record in unsafe_run():
        printer(record)
        if terminal and mode != "realtime" and not live and len(printer.groups[GROUP].running) == 4:
            view = io.StringIO()
            Console(file=view, width=200, force_terminal=False).print(printer.render())
            live = view.getvalue().splitlines()
    printer.close()
    # Without the terminal's own styles and cursor moves (rich's Live goes back with "\r").
    text = ANSI.sub("", out.getvalue()).replace("\r", "")
    if terminal and mode in ("progress", "smart"):
        assert "  ⠿ #0 ␛[2Jwipe 0ms" in live and "  ⠿ #1 two ⏎ lines 0ms" in live
    shown = [*text.splitlines(), *live]
    assert all(CONTROL.search(line) is None for line in shown)
    assert all(not line.startswith(("lines", "again")) for line in shown)
    assert "ValueError: ␛[31mred ⏎ again" in text
    # summary() is text to print too.
    summary = printer.summary()
    assert CONTROL.search(summary) is None
    assert "✘ docs␛(0#3 FAILED: ValueError: ␛[31mred ⏎ again" in summary
