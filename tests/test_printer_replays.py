"""A resumed run's replayed members are marked as replayed in every printer mode, counted
apart in the summary, and their stored times are not taken for this run's."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from recovery_support import Squarer, run_group
from rh_agents import EventBus, EventPrinter, ExecutionState, ParallelEventPrinter
from rh_agents.bus_handlers.group_view import GroupView
from rh_agents.recovery import Recovery


async def _stored_run(db: Path, fail: set[int]) -> None:
    """A first run of six members where ``fail`` fail, then each completed one's stored
    time set to 5 s, so that a display taking stored times for this run's would show it."""
    squarer = Squarer(fail=fail)
    async with ExecutionState(run_id="r", recovery=Recovery(db)) as state:
        await run_group(state, squarer, 6)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE checkpoints SET execution_time = 5.0 WHERE status = 'completed'")
    conn.commit()
    conn.close()


async def _resume(db: Path, subscriber: object) -> None:
    bus = EventBus()
    bus.subscribe(subscriber)
    recovery = Recovery(db, resume="auto")
    async with ExecutionState(run_id="r", recovery=recovery, event_bus=bus) as state:
        await run_group(state, Squarer(), 6)


@pytest.mark.parametrize("mode", ["realtime", "progress", "collapsed", "live"])
async def test_replayed_members_are_marked_and_counted_apart(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "state.db"
    await _stored_run(db, fail={1, 4})
    out = io.StringIO()
    terminal = mode == "live"
    console = Console(file=out, width=120, force_terminal=terminal, color_system=None)
    printer = ParallelEventPrinter(
        "progress" if terminal else mode,  # type: ignore[arg-type]
        console=console,
    )
    seen: list[GroupView] = []
    with printer:
        await _resume(db, printer)
        seen.extend(printer.roots)
    text = out.getvalue()
    assert "📦 members: 6 finished · 6 ok (4 replayed) · 0 failed" in text
    assert "5.00s" not in text  # the stored times are not this run's: never the slowest
    assert seen[0].replayed == 4
    if mode == "progress":
        lines = [line.strip() for line in text.splitlines() if "replayed [" in line]
        assert [line.split(" [")[0] for line in lines] == [
            f"↺ members#{i} replayed" for i in (0, 2, 3, 5)
        ]
        assert all(line.endswith("/6]") for line in lines)
    if mode == "realtime":
        assert text.count("] ↺ member replayed [") == 4
        assert text.count("↺ 🔧 square replayed (stored result)") == 4


async def test_the_tree_printer_marks_them_too(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    await _stored_run(db, fail={1})
    out = io.StringIO()
    await _resume(db, EventPrinter(console=Console(file=out, width=200)))
    text = out.getvalue()
    assert text.count("REPLAYED (stored result)") == 5
    assert "↺ 🔧 members[0]::square REPLAYED (stored result)" in text
    assert "📦 members COMPLETED: 6 finished · 6 ok (5 replayed) · 0 failed" in text
