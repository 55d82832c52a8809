"""The terminal view of running groups that ``ParallelEventPrinter`` hands to ``rich.live``.

One row per running outermost group: its name, a ``rich`` progress bar, ``done/total``,
percent, elapsed time, failures and retries; beneath it (when ``members`` says so) the running
members, each with its own nested group, and the last few failures::

    Live(render_live(roots, now=latest, members=lambda root: True)).start()
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rh_agents.bus_handlers.group_view import GroupView, bar, issue_line, percent, seconds

__all__ = ["elapsed", "render_live"]


def elapsed(view: GroupView, now: float) -> float:
    """Wall time of a finished group; time since it started (on the run's clock) otherwise."""
    if view.wall_time is not None:
        return view.wall_time
    return max(0.0, now - view.started_at)


def render_live(
    roots: Sequence[GroupView],
    *,
    now: float,
    members: Callable[[GroupView], bool],
    max_members: int = 8,
    nested: bool = True,
    indent: int = 2,
) -> RenderableType:
    """Rows for every unfinished group in ``roots`` (``now``: the latest record's timestamp)."""
    rows: list[RenderableType] = []
    for root in roots:
        if not root.finished:
            _render_group(root, rows, now, members(root), max_members, nested, indent)
    return Group(*rows)


def _render_group(
    view: GroupView,
    rows: list[RenderableType],
    now: float,
    members: bool,
    max_members: int,
    nested: bool,
    indent: int,
) -> None:
    pad = " " * (indent * view.level)
    total = view.known_total()
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        Text(f"{pad}📦 {view.tag if view.parent is None else view.name}", style="bold cyan"),
        ProgressBar(total=float(total or 1), completed=float(view.done), width=24)
        if total
        else Text(bar(0, None, 24), style="dim"),
        Text(
            f"{view.done} finished {seconds(elapsed(view, now))}"
            if total is None  # members still being added: no total, no percent yet
            else f"{view.done}/{total} {percent(view.done, total)} {seconds(elapsed(view, now))}"
        ),
        Text(f"{view.failed} failed", style="red" if view.failed else "dim"),
        Text(f"↻ {view.retried}" if view.retried else "", style="yellow"),
    )
    rows.append(grid)
    if not members:
        return
    inner = " " * (indent * (view.level + 1))
    shown = 0
    children = {child.parent_index: child for child in view.children if not child.finished}
    running = view.running
    # Only the first ``max_members`` indexes are drawn: no sort of a big pool per redraw.
    first = (
        sorted(running) if len(running) <= max_members else heapq.nsmallest(max_members, running)
    )
    for index in first:
        member = running[index]
        shown += 1
        label = f" {member.name}" if member.name else ""
        rows.append(
            Text(f"{inner}⠿ #{index}{label} {seconds(now - member.timestamp)}", style="dim")
        )
        child = children.get(index)
        if child is not None and nested:
            _render_group(child, rows, now, False, max_members, nested, indent)
    hidden = len(running) - shown
    if hidden > 0:
        rows.append(Text(f"{inner}… {hidden} more running", style="dim"))
    for issue in view.sorted_issues()[:3]:
        rows.append(Text(issue_line(issue, inner), style="red"))
