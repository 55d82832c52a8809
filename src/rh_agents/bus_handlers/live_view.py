"""The terminal view of running groups that ``ParallelEventPrinter`` hands to ``rich.live``.

One row per running outermost group: its name, a ``rich`` progress bar, ``finished/total``,
percent, elapsed time, failures, members not needed (cancelled once the group reached its
quorum: no failures), retries and replayed members; beneath it (when ``members``
says so) the running members, each with its own nested group, and the group's failures in
member order. Given the terminal's height, the view fits in it, giving up running members
before failures::

    Live(render_live(roots, now=latest, members=lambda root: True, height=24)).start()
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rh_agents.bus_handlers.group_view import GroupView, bar, issue_line, percent, seconds
from rh_agents.core.safe_text import one_line

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
    height: int | None = None,
    width: int | None = None,
) -> RenderableType:
    """Rows for every unfinished group in ``roots`` (``now``: the latest record's timestamp).

    Every row is one line, cut with ``…`` if wider than ``width`` (the terminal's columns; a
    bar narrows first). With ``height`` (the terminal's lines) the rows fit in it: the groups'
    bars first, then their failures, and the running members in what is left, so a short
    terminal loses the progress rows, not the failures. Failures that do not fit are counted
    (``… 4 more failed``); the summary lists them all.
    """
    blocks = [
        _block(root, now, members(root), max_members, nested, indent, width)
        for root in roots
        if not root.finished
    ]
    room = None if height is None else max(0, height - len(blocks))
    failures: list[list[RenderableType]] = []
    for block in blocks:
        failures.append(_fit(block.issues, room, block.more_failed))
        room = None if room is None else room - len(failures[-1])
    progress: list[list[RenderableType]] = []
    for block in blocks:
        progress.append(_fit_progress(block, room))
        room = None if room is None else room - len(progress[-1])
    rows: list[RenderableType] = []
    for block, shown_progress, shown_failures in zip(blocks, progress, failures, strict=True):
        rows.append(block.header)
        rows.extend(shown_progress)
        rows.extend(shown_failures)
    return Group(*rows)


class _Block:
    """One outermost group's rows: its bar, the rows of its running members (and of their
    nested groups) and its failures, before they are fitted to the terminal's height."""

    __slots__ = ("header", "inner", "issues", "members", "progress", "running")

    def __init__(self, header: RenderableType, inner: str, running: int) -> None:
        self.header = header
        self.inner = inner
        self.running = running
        # (row, whether it is a member's row) for the running members and their nested groups.
        self.progress: list[tuple[RenderableType, bool]] = []
        self.issues: list[RenderableType] = []

    def more_running(self, hidden: int) -> Text:
        return _row(f"{self.inner}… {hidden} more running", "dim")

    def more_failed(self, hidden: int) -> Text:
        return _row(f"{self.inner}… {hidden} more failed (listed at the end)", "red")


def _row(text: str, style: str) -> Text:
    return Text(one_line(text), style=style, no_wrap=True, overflow="ellipsis")


def _fit(
    rows: list[RenderableType], room: int | None, more: Callable[[int], RenderableType]
) -> list[RenderableType]:
    """``rows`` if they fit in ``room`` lines, else the first ones and ``more(left out)``."""
    if room is None or len(rows) <= room:
        return rows
    if room <= 0:
        return []
    return [*rows[: room - 1], more(len(rows) - (room - 1))]


def _fit_progress(block: _Block, room: int | None) -> list[RenderableType]:
    """The member rows that fit in ``room`` lines, and a line counting the members left out."""
    rows = block.progress
    listed = sum(1 for _, is_member in rows if is_member)
    full = [row for row, _ in rows]
    if listed < block.running:
        full.append(block.more_running(block.running - listed))
    if room is None or len(full) <= room:
        return full
    if room <= 0:
        return []
    kept = rows[: room - 1]
    shown = sum(1 for _, is_member in kept if is_member)
    return [*(row for row, _ in kept), block.more_running(block.running - shown)]


def _block(
    view: GroupView,
    now: float,
    members: bool,
    max_members: int,
    nested: bool,
    indent: int,
    width: int | None,
) -> _Block:
    block = _Block(_header(view, now, indent, width), " " * (indent * (view.level + 1)), 0)
    if not members:
        return block
    block.running = len(view.running)
    _member_rows(view, block.progress, now, max_members, nested, indent, width)
    block.issues = [_row(issue_line(issue, block.inner), "red") for issue in view.failures()]
    return block


_BAR = 24  # the bar's width when the terminal has room for it
_MIN_BAR = 4  # narrower than this, no bar at all


def _header(view: GroupView, now: float, indent: int, width: int | None) -> RenderableType:
    """The group's row: name, bar, counts, failures, retries; the bar gives way to the text
    when the terminal is narrow."""
    pad = " " * (indent * view.level)
    total = view.known_total()
    texts = [
        Text(
            one_line(f"{pad}📦 {view.tag if view.parent is None else view.name}"),
            style="bold cyan",
        ),
        Text(
            f"{view.done} finished {seconds(elapsed(view, now))}"
            if total is None  # members still being added: no total, no percent yet
            else f"{view.done}/{total} {percent(view.done, total)} {seconds(elapsed(view, now))}"
        ),
    ]
    failed = view.failed - view.not_needed  # (members a reached quorum cancelled: no failures)
    texts.append(Text(f"{failed} failed", style="red" if failed else "dim"))
    if view.not_needed:
        texts.append(Text(f"○ {view.not_needed} not needed", style="dim"))
    if view.retried:
        texts.append(Text(f"↻ {view.retried}", style="yellow"))
    if view.replayed:
        texts.append(Text(f"↺ {view.replayed} replayed", style="magenta"))
    bar_width = _BAR
    if width is not None:  # one space between two cells
        bar_width = min(_BAR, width - sum(cell_len(t.plain) + 1 for t in texts))
    cells: list[RenderableType] = [texts[0]]
    if bar_width >= _MIN_BAR:
        cells.append(
            ProgressBar(total=float(total), completed=float(view.done), width=bar_width)
            if total
            else Text(bar(0, None, bar_width), style="dim")
        )
    cells.extend(texts[1:])
    grid = Table.grid(padding=(0, 1))
    for _ in cells:
        grid.add_column(no_wrap=True, overflow="ellipsis")
    grid.add_row(*cells)
    return grid


def _member_rows(
    view: GroupView,
    rows: list[tuple[RenderableType, bool]],
    now: float,
    max_members: int,
    nested: bool,
    indent: int,
    width: int | None,
) -> None:
    """The first ``max_members`` running members of ``view``, each with its nested group."""
    inner = " " * (indent * (view.level + 1))
    children = {child.parent_index: child for child in view.children if not child.finished}
    running = view.running
    # Only the first ``max_members`` indexes are drawn: no sort of a big pool per redraw.
    first = (
        sorted(running) if len(running) <= max_members else heapq.nsmallest(max_members, running)
    )
    for index in first:
        member = running[index]
        label = f" {member.name}" if member.name else ""
        rows.append(
            (_row(f"{inner}⠿ #{index}{label} {seconds(now - member.timestamp)}", "dim"), True)
        )
        child = children.get(index)
        if child is not None and nested:
            rows.append((_header(child, now, indent, width), False))
