"""Render a ``Timeline`` as one self-contained HTML page of inline SVG Gantt charts.

No scripts and no external assets: the page opens offline and diffs cleanly. It reads top
down: a one-line overview, a legend of the states the page shows, the chart, then the metrics
table folded (``<details>``). Every chart row shares one time axis.

Each member is one ``<g class="member status-...">`` (with ``data-group-id`` and
``data-index``) holding a ``wait`` rect (queued for a worker), a ``run`` rect coloured by how it
ended, a ``retry`` diamond per retry inside it (its nested groups' included) and a note on the
right ("×2 retries", "1 failed inside", the error). A member that opened groups of its own is a
``<details class="member">``: its row is the ``<summary>``, its groups unfold below it. Hovering
shows the details (SVG ``<title>``). The document is well-formed XML, so tools can parse it::

    html = render_html(recorder.timeline())
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from rh_agents.core.parallel.metrics import ResourceUsage

if TYPE_CHECKING:
    from rh_agents.observability.timeline import MemberBar, Timeline, TimelineGroup

__all__ = ["COLOURS", "GROUP_STATUS_NOTES", "render_html", "text_width"]

# Colour per part of a bar; the run colour follows the member's status.
COLOURS = {
    "wait": "#f2c14e",
    "completed": "#3a9d5d",
    "failed": "#d64545",
    "timed_out": "#e07b39",
    "cancelled": "#9a9a9a",
    "skipped": "#c8c8c8",
    "running": "#4a7fd6",
    "retry": "#7b3fb5",
}

# Legend entries, in this order; only those the page shows are listed.
LEGEND = (
    ("wait", "waiting for a worker"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("timed_out", "timed out"),
    ("cancelled", "cancelled"),
    ("skipped", "skipped (never ran)"),
    ("running", "still running"),
    ("retry", "retry"),
)

# What a group's status means, for the statuses that need saying (shown when they occur).
GROUP_STATUS_NOTES = {
    "partial": "the group finished, but some of its members did not complete "
    "(they failed, timed out, were cancelled or skipped)",
    "failed": "the group's error strategy stopped it: members still waiting did not run",
    "timed_out": "the group ran out of time: members still running were stopped",
    "cancelled": "the group was cancelled",
    "running": "the group had not finished when this page was written",
    "stored": "rebuilt from checkpoints, which keep each member's outcome but not the group's",
}

NOT_DONE = ("failed", "timed_out")  # counted as failures on every level

MIN_CHART_WIDTH = 480
MAX_CHART_WIDTH = 900
PAGE_WIDTH = 1200  # the chart narrows (down to MIN_CHART_WIDTH) to fit labels and notes in this
INDENT = 16  # per nesting level, in the label column
TWISTY = 14  # room for the fold marker of a row that has nested groups
PAD = 8
AXIS_HEIGHT = 24
HEADER_HEIGHT = 22
FONT = 11  # px, rows and notes
GROUP_FONT = 12  # px, bold, group headers
MAX_LABEL = 48  # characters; longer labels end in "…" (the tooltip has them whole)
MAX_ERROR = 36

STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; margin: 0 0 6px; }
p { margin: 4px 0; font-size: 13px; }
p.overview { font-size: 14px; }
p.note { color: #555; }
.legend span { display: inline-block; margin-right: 14px; font-size: 13px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 5px;
            vertical-align: middle; }
.legend i.retry { width: 8px; height: 8px; margin: 0 7px 0 2px; transform: rotate(45deg); }
.chart { margin: 10px 0 0; }
.chart svg { display: block; }
svg.axis { position: sticky; top: 0; background: #fff; }
svg text { font-size: 11px; fill: #333; }
svg text.group { font-size: 12px; font-weight: bold; }
svg text.axis-caption, svg text.info { fill: #666; }
svg text.retries { fill: #7b3fb5; }
svg text.failures { fill: #b42323; }
div.group { margin-bottom: 6px; }
div.nested { background: #f5f6f8; }
div.nested div.group { margin-bottom: 0; }
details.member > summary { display: block; list-style: none; cursor: pointer; }
details.member > summary::-webkit-details-marker { display: none; }
details.member > summary:hover { background: #e9eef7; }
.twisty { fill: #555; transform-box: fill-box; transform-origin: center; }
details[open] > summary .twisty { transform: rotate(90deg); }
details.metrics { margin-top: 16px; }
details.metrics > summary { cursor: pointer; font-size: 14px; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; }
td.name, th.name { text-align: left; }
"""

# Characters XML 1.0 does not allow (a run's error text may hold anything), and lone
# surrogates, which UTF-8 cannot encode (an error naming a file whose name is not UTF-8, as
# os.fsdecode makes it and a JSON store keeps it): writing the page failed on them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# The C1 controls and the bidirectional embeddings, overrides and isolates: shown as U+FFFD,
# as ``core.safe_text.printable`` shows them (a name holding U+202E showed the rest of its
# line reversed: what the chart said was not what ran).
_UNSAFE = re.compile("[\x80-\x9f\u202a-\u202e\u2066-\u2069]")
_NARROW = frozenset(" !'(),./:;I[]`fijlrt{|}")
# Times beyond this (about 31 million years, in seconds) are damaged data, not a run's: the
# span between two such times overflows, and the chart shows them as unknown.
_MAX_TIME = 1e15


def _esc(text: str) -> str:
    """Text or attribute value: escaped, what XML or UTF-8 cannot hold shown as "?", and C1
    and bidirectional controls as U+FFFD."""
    return escape(_UNSAFE.sub("\ufffd", _NOT_XML.sub("?", text)), {'"': "&quot;"})


def _cls(status: str) -> str:
    """A status as a CSS class name (statuses are plain words; anything else is made one)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", status) or "unknown"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """A generous estimate of ``text``'s width in px at font ``size``, for any sans font.

    Errs wide (every common sans is narrower), so a column sized by it never clips its text.
    """
    em = 0.0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        if unicodedata.east_asian_width(ch) in "WF":
            em += 1.1
        elif ch in "mwMW@%…×":
            em += 1.0
        elif ch.isupper() or ch.isdigit() or ch in "#&":
            em += 0.75
        elif ch in _NARROW:
            em += 0.4
        else:
            em += 0.64
    return em * size * (1.12 if bold else 1.0)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


# --- the tree and what happened inside it ---------------------------------------------------


@dataclass(slots=True)
class _Note:
    """A member's or group's note at the right of its row: text parts with a class each."""

    parts: list[tuple[str, str]] = field(default_factory=list)  # (css class, text)
    retry_marker: bool = False

    def text(self) -> str:
        return " · ".join(text for _, text in self.parts)

    def width(self) -> float:
        if not self.parts:
            return 0.0
        return (12 if self.retry_marker else 0) + text_width(self.text(), FONT)


class _Tree:
    """Groups by parent member, and retries and failures counted on every level.

    Groups are told apart by identity (``id``), not by address: a retried member's nested
    group, opened again at the same address, is a group of its own.
    """

    def __init__(self, timeline: Timeline) -> None:
        self.timed = timeline.timed
        groups = timeline.groups
        links = timeline._links()
        self.roots = [g for i, g in enumerate(groups) if i not in links]
        self.children: dict[tuple[int, int], list[TimelineGroup]] = {}
        self.parent: dict[int, TimelineGroup] = {}
        for i, (at, index) in sorted(links.items()):
            parent = groups[at]
            self.children.setdefault((id(parent), index), []).append(groups[i])
            self.parent[id(groups[i])] = parent
        self._retries: dict[tuple[int, int], int] = {}
        self._failures: dict[tuple[int, int], int] = {}
        self._retry_times: dict[tuple[int, int], list[float]] = {}

    def nested(self, group: TimelineGroup, bar: MemberBar) -> list[TimelineGroup]:
        return self.children.get((id(group), bar.index), [])

    def walk(self) -> Iterator[tuple[TimelineGroup, int]]:
        """Every group reachable from the roots, depth first, with its depth."""
        stack = [(g, 0) for g in reversed(self.roots)]
        seen: set[int] = set()
        while stack:
            group, depth = stack.pop()
            if id(group) in seen:
                continue
            seen.add(id(group))
            yield group, depth
            for bar in reversed(group.bars()):
                stack.extend((g, depth + 1) for g in reversed(self.nested(group, bar)))

    def own_retries(self, bar: MemberBar) -> int:
        # Live: every retry published an EventRetrying. Stored: only the attempt count is
        # known (and a member's count may be a nested call's, handed up with its error).
        return len(bar.retries) if self.timed else max(bar.attempts - 1, 0)

    def retries(self, group: TimelineGroup, bar: MemberBar, depth: int = 0) -> int:
        """Retries inside the member: its own and its nested groups' members'."""
        key = (id(group), bar.index)
        if key not in self._retries:
            self._retries[key] = 0  # guards against a cycle of bad parent links
            inside = sum(
                self.retries(g, b, depth + 1) for g in self.nested(group, bar) for b in g.bars()
            )
            own = self.own_retries(bar)
            self._retries[key] = own + inside if self.timed else max(own, inside)
        return self._retries[key]

    def failures_inside(self, group: TimelineGroup, bar: MemberBar) -> int:
        """Members that failed or timed out in the member's nested groups, at any depth."""
        key = (id(group), bar.index)
        if key not in self._failures:
            self._failures[key] = 0
            self._failures[key] = sum(
                (b.status in NOT_DONE) + self.failures_inside(g, b)
                for g in self.nested(group, bar)
                for b in g.bars()
            )
        return self._failures[key]

    def retry_times(self, group: TimelineGroup, bar: MemberBar) -> list[float]:
        """When each retry inside the member happened (live timelines only)."""
        key = (id(group), bar.index)
        if key not in self._retry_times:
            self._retry_times[key] = []
            times = list(bar.retries)
            for g in self.nested(group, bar):
                for b in g.bars():
                    times.extend(self.retry_times(g, b))
            self._retry_times[key] = sorted(times)
        return self._retry_times[key]

    def group_retries(self, group: TimelineGroup) -> int:
        return sum(self.retries(group, bar) for bar in group.bars())

    def group_failures(self, group: TimelineGroup) -> int:
        return sum(
            (bar.status in NOT_DONE) + self.failures_inside(group, bar) for bar in group.bars()
        )


def _member_note(tree: _Tree, group: TimelineGroup, bar: MemberBar) -> _Note:
    note = _Note()
    retries = tree.retries(group, bar)
    if retries:
        note.retry_marker = True
        note.parts.append(("retries", f"×{_plural(retries, 'retry', 'retries')}"))
    inside = tree.failures_inside(group, bar)
    if inside:
        note.parts.append(("failures", f"{inside} failed inside"))
    if bar.status in NOT_DONE and bar.error and not inside:
        # (A failure inside shows its error on its own row, where it happened.)
        note.parts.append(("failures", _clip(bar.error, MAX_ERROR)))
    elif bar.status in ("skipped", "cancelled"):
        note.parts.append(("info", bar.status))
    return note


def _group_note(tree: _Tree, group: TimelineGroup) -> _Note:
    bars = group.bars()
    note = _Note([("info", _plural(len(bars), "member", "members"))])
    status = group.status
    if group.quorum_reached:
        # It did what was asked: the members it cancelled then were not needed (no failures).
        spared = sum(bar.status == "cancelled" for bar in bars)
        note.parts.append(("info", f"quorum of {group.quorum} reached"))
        missed = sum(bar.status not in ("completed", "cancelled") for bar in bars)
        if missed:
            note.parts.append(("failures", f"{missed} did not complete"))
        if spared:
            note.parts.append(("info", f"{spared} cancelled, not needed"))
    elif status == "partial":
        missed = sum(bar.status != "completed" for bar in bars)
        note.parts.append(("failures", f"partial: {missed} did not complete"))
    elif status in ("failed", "timed_out", "cancelled"):
        note.parts.append(("failures", status))
    elif status == "running":
        note.parts.append(("info", "still running"))
    retries = tree.group_retries(group)
    if retries:
        note.retry_marker = True
        note.parts.append(("retries", f"×{_plural(retries, 'retry', 'retries')}"))
    return note


def _group_tooltip(group: TimelineGroup, timed: bool) -> str:
    parts = [f"{group.group_id}: {_plural(len(group.members), 'member', 'members')}"]
    if group.max_workers:
        parts.append(f"max_workers={group.max_workers}")
    if group.status != "stored":
        parts.append(group.status)
    if group.quorum_reached:
        parts.append(f"quorum of {group.quorum} reached")
    if timed and group.started is not None and group.finished is not None:
        parts.append(f"open for {_fmt(group.finished - group.started)}")
    return "; ".join(parts)


def _member_tooltip(
    tree: _Tree, group: TimelineGroup, bar: MemberBar, origin: float, timed: bool
) -> str:
    parts = [f"{group.group_id} {bar.label}: {bar.status}"]
    if timed and bar.enqueued is not None and bar.started is not None:
        parts.append(f"waited {_fmt(bar.started - bar.enqueued)}")
    if bar.started is not None and bar.finished is not None:
        parts.append(f"ran {_fmt(bar.finished - bar.started)}")
    if timed and bar.started is not None:
        parts.append(f"started at +{_fmt(bar.started - origin)}")
    if bar.attempts > 1:
        parts.append(f"{bar.attempts} attempts")
    retries = tree.retries(group, bar)
    if retries:
        parts.append(_plural(retries, "retry", "retries") + " inside")
    inside = tree.failures_inside(group, bar)
    if inside:
        parts.append(f"{inside} failed inside")
    nested = tree.nested(group, bar)
    if nested:
        parts.append(f"click to show {_plural(len(nested), 'nested group', 'nested groups')}")
    if bar.error:
        parts.append(bar.error)
    return "; ".join(parts)


# --- layout ---------------------------------------------------------------------------------


def _bounds(timeline: Timeline) -> tuple[float, float]:
    points: list[float] = []
    for group in timeline.groups:
        for value in (group.started, group.finished):
            if value is not None:
                points.append(value)
        for bar in group.members.values():
            for value in (bar.enqueued, bar.started, bar.finished):
                if value is not None:
                    points.append(value)
    if not points:
        return 0.0, 1.0
    start, end = min(points), max(points)
    if not timeline.timed:
        start = 0.0
    return start, end if end > start else start + 1e-3


def _row_height(count: int) -> int:
    return 18 if count <= 60 else 14 if count <= 200 else 6 if count <= 1000 else 3


def _ticks(span: float) -> list[float]:
    """Round tick values from 0 to ``span`` (steps of 1, 2 or 5 times a power of ten)."""
    raw = span / 6
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    count = int(span / step + 1e-9)
    return [i * step for i in range(count + 1)]


def _tick_label(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if step < 1:
        return f"+{value * 1000:.0f} ms"
    return f"+{value:g} s"


@dataclass(slots=True)
class _Layout:
    origin: float
    end: float
    label_width: float
    chart_width: float
    note_width: float
    ticks: list[float]

    @property
    def width(self) -> int:
        return math.ceil(self.label_width + self.chart_width + PAD + self.note_width + PAD)

    @property
    def note_x(self) -> float:
        return self.label_width + self.chart_width + PAD

    def x(self, t: float) -> float:
        return self.label_width + (t - self.origin) * self.chart_width / (self.end - self.origin)

    def grid(self, height: float) -> str:
        return "".join(
            f'<line class="grid" x1="{self.x(self.origin + t):.1f}" '
            f'x2="{self.x(self.origin + t):.1f}" y1="0" y2="{height:.1f}" stroke="#e6e6e6"/>'
            for t in self.ticks
        )


def _label_indent(depth: int) -> float:
    return 6 + depth * INDENT + TWISTY


# --- the page -------------------------------------------------------------------------------


class _Page:
    def __init__(self, timeline: Timeline, chart_width: float | None = None) -> None:
        self.timeline = timeline
        self.timed = timeline.timed
        self.tree = _Tree(timeline)
        self.shown: set[str] = set()  # legend keys the page draws
        self.group_statuses: set[str] = set()
        self.layout = self._layout(chart_width)

    def _layout(self, chart_width: float | None = None) -> _Layout:
        origin, end = _bounds(self.timeline)
        label, note = 90.0, 40.0
        caption = "duration" if not self.timed else "time since start"
        label = max(label, 6 + text_width(caption, FONT))
        for group, depth in self.tree.walk():
            head = self._group_label(group, depth)
            label = max(label, _label_indent(depth) + text_width(head, GROUP_FONT, bold=True))
            note = max(note, _group_note(self.tree, group).width())
            labels = _row_height(len(group.members)) >= 14
            for bar in group.bars():
                if labels:
                    width = text_width(_clip(bar.label, MAX_LABEL), FONT)
                    label = max(label, _label_indent(depth + 1) + width)
                note = max(note, _member_note(self.tree, group, bar).width())
        label, note = math.ceil(label + PAD), math.ceil(note + PAD)
        chart = max(MIN_CHART_WIDTH, min(MAX_CHART_WIDTH, PAGE_WIDTH - label - note - 2 * PAD))
        if chart_width is not None:  # a zoomed chart: wider bars, the same text
            chart = max(MIN_CHART_WIDTH, math.ceil(chart_width))
        return _Layout(origin, end, label, chart, note, _ticks(end - origin))

    def _group_label(self, group: TimelineGroup, depth: int) -> str:
        # An outermost group by its address; a nested one by its name (its member is above it).
        return _clip(group.group_id if depth == 0 else group.name, MAX_LABEL)

    # --- rows

    def _note_svg(self, note: _Note, y: float, height: float) -> str:
        if not note.parts:
            return ""
        x = self.layout.note_x
        out = []
        if note.retry_marker:
            out.append(self._diamond(x + 5, y + height / 2, 4.5, "retry-note"))
            x += 12
        spans = []
        for i, (cls, text) in enumerate(note.parts):
            sep = " · " if i else ""
            spans.append(f'<tspan class="{cls}">{_esc(sep + text)}</tspan>')
        out.append(f'<text class="note" x="{x:.1f}" y="{y + height / 2 + 4:.1f}">')
        out.append("".join(spans) + "</text>")
        return "".join(out)

    def _diamond(self, x: float, y: float, r: float, cls: str = "retry") -> str:
        self.shown.add("retry")
        return (
            f'<path class="{cls}" d="M{x:.2f},{y - r:.2f} L{x + r:.2f},{y:.2f} '
            f'L{x:.2f},{y + r:.2f} L{x - r:.2f},{y:.2f} Z" fill="{COLOURS["retry"]}" '
            f'stroke="#fff" stroke-width="1"/>'
        )

    def _header_svg(self, group: TimelineGroup, depth: int) -> str:
        layout, height = self.layout, HEADER_HEIGHT
        self.group_statuses.add(group.status)
        out = [layout.grid(height)]
        out.append(
            f'<text class="group" x="{_label_indent(depth) - TWISTY:.1f}" y="15">'
            f"<title>{_esc(_group_tooltip(group, self.timed))}</title>"
            f"{_esc(self._group_label(group, depth))}</text>"
        )
        if self.timed and group.started is not None and group.finished is not None:
            x0, x1 = layout.x(group.started), layout.x(group.finished)
            out.append(
                f'<rect class="group-span" x="{x0:.2f}" y="{height - 6}" '
                f'width="{max(x1 - x0, 0.5):.2f}" height="3" fill="#888"/>'
            )
        out.append(self._note_svg(_group_note(self.tree, group), 2, height - 4))
        return self._svg("group-head", height, "".join(out))

    def _member_svg(
        self, group: TimelineGroup, bar: MemberBar, y: float, height: int, depth: int
    ) -> str:
        layout, tree, status = self.layout, self.tree, bar.status
        nested = tree.nested(group, bar)
        out = [
            f'<g class="member status-{_cls(status)}" data-group-id="{_esc(group.group_id)}" '
            f'data-index="{bar.index}">'
        ]
        tooltip = _member_tooltip(tree, group, bar, layout.origin, self.timed)
        out.append(f"<title>{_esc(tooltip)}</title>")
        # A transparent backdrop: the whole row shows the tooltip (and opens, if it folds).
        out.append(
            f'<rect class="hit" x="0" y="{y:.1f}" width="{layout.width}" height="{height}" '
            'fill="#fff" fill-opacity="0"/>'
        )
        indent = _label_indent(depth + 1)
        if nested:
            mid, x = y + height / 2, indent - TWISTY + 1
            out.append(
                f'<path class="twisty" d="M{x:.1f},{mid - 4:.1f} L{x + 6:.1f},{mid:.1f} '
                f'L{x:.1f},{mid + 4:.1f} Z"/>'
            )
        if height >= 14:
            out.append(
                f'<text class="label" x="{indent:.1f}" y="{y + height / 2 + 4:.1f}">'
                f"{_esc(_clip(bar.label, MAX_LABEL))}</text>"
            )
        top, h = y + 2, max(1, height - 4)
        if bar.enqueued is not None and bar.started is not None and bar.started > bar.enqueued:
            x0, x1 = layout.x(bar.enqueued), layout.x(bar.started)
            self.shown.add("wait")
            out.append(
                f'<rect class="wait" x="{x0:.2f}" y="{top:.1f}" width="{max(x1 - x0, 0.5):.2f}" '
                f'height="{h}" fill="{COLOURS["wait"]}"/>'
            )
        colour_key = status if status in COLOURS else "running"
        if bar.started is not None:
            finish = bar.finished if bar.finished is not None else layout.end
            x0, x1 = layout.x(bar.started), layout.x(finish)
            self.shown.add(colour_key)
            out.append(
                f'<rect class="run {_cls(status)}" x="{x0:.2f}" y="{top:.1f}" '
                f'width="{max(x1 - x0, 0.8):.2f}" height="{h}" fill="{COLOURS[colour_key]}"/>'
            )
        elif bar.finished is not None:  # never ran: a small marker where it was given up
            x = layout.x(bar.finished)
            colour_key = status if status in COLOURS else "skipped"
            self.shown.add(colour_key)
            out.append(
                f'<rect class="run {_cls(status)}" x="{x - 1.5:.2f}" y="{top:.1f}" width="3" '
                f'height="{h}" fill="{COLOURS[colour_key]}"/>'
            )
        if self.timed:
            radius = max(2.5, min(5.0, height / 2 - 1))
            for when in tree.retry_times(group, bar):
                if _time(when) is not None:  # a retry at no time is counted, not drawn
                    out.append(self._diamond(layout.x(when), y + height / 2, radius))
        if height >= 14:
            out.append(self._note_svg(_member_note(tree, group, bar), y, height))
        out.append("</g>")
        return "".join(out)

    def _svg(self, cls: str, height: float, body: str) -> str:
        width = self.layout.width
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{width}" '
            f'height="{height:.0f}" viewBox="0 0 {width} {height:.0f}">{body}</svg>'
        )

    def _group_block(self, group: TimelineGroup, depth: int, seen: set[int]) -> str:
        seen.add(id(group))
        bars = group.bars()
        height = _row_height(len(bars))
        out = [
            f'<div class="group" data-group-id="{_esc(group.group_id)}" data-depth="{depth}">',
            self._header_svg(group, depth),
        ]
        run: list[MemberBar] = []  # members without nested groups share one SVG

        def flush() -> None:
            if run:
                rows = "".join(
                    self._member_svg(group, bar, i * height, height, depth)
                    for i, bar in enumerate(run)
                )
                total = len(run) * height
                out.append(self._svg("rows", total, self.layout.grid(total) + rows))
                run.clear()

        for bar in bars:
            nested = [g for g in self.tree.nested(group, bar) if id(g) not in seen]
            if not nested:
                run.append(bar)
                continue
            flush()
            row = self._member_svg(group, bar, 0, height, depth)
            out.append(
                f'<details class="member" data-index="{bar.index}"><summary>'
                + self._svg("rows", height, self.layout.grid(height) + row)
                + '</summary><div class="nested">'
                + "".join(self._group_block(g, depth + 1, seen) for g in nested)
                + "</div></details>"
            )
        flush()
        out.append("</div>")
        return "".join(out)

    def _axis(self) -> str:
        layout = self.layout
        width, step = layout.width, (layout.ticks[1] if len(layout.ticks) > 1 else 1.0)
        caption = "time since start" if self.timed else "duration"
        out = [
            f'<text class="axis-caption" x="6" y="13">{caption}</text>',
            f'<line x1="{layout.label_width:.1f}" x2="{layout.x(layout.end):.1f}" '
            f'y1="{AXIS_HEIGHT - 3.5}" y2="{AXIS_HEIGHT - 3.5}" stroke="#444"/>',
        ]
        for t in layout.ticks:
            x = layout.x(layout.origin + t)
            label = _tick_label(t, step)
            half = text_width(label, FONT) / 2
            # Nothing left of the bars (the labels' column), nothing past the right edge.
            anchor = "start" if t == 0 else "end" if x + half > width - 2 else "middle"
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS_HEIGHT - 8}" y2="{AXIS_HEIGHT}" '
                f'stroke="#444"/><text x="{x:.1f}" y="13" text-anchor="{anchor}">{label}</text>'
            )
        return self._svg("axis", AXIS_HEIGHT, "".join(out))

    def chart(self) -> str:
        seen: set[int] = set()
        blocks = "".join(self._group_block(group, 0, seen) for group in self.tree.roots)
        width = self.layout.width
        return f'<div class="chart" style="width:{width}px">{self._axis()}{blocks}</div>'

    def legend(self) -> str:
        spans = []
        for key, label in LEGEND:
            if key in self.shown:
                cls = ' class="retry"' if key == "retry" else ""
                spans.append(
                    f'<span data-key="{key}"><i{cls} style="background:{COLOURS[key]}"></i>'
                    f"{label}</span>"
                )
        return f'<p class="legend">{"".join(spans)}</p>' if spans else ""

    def overview(self) -> str:
        tree = self.tree
        roots = tree.roots
        top = [bar for g in roots for bar in g.bars()]
        parts = [
            f"{_plural(len(roots), 'group', 'groups')} of {_plural(len(top), 'member', 'members')}"
        ]
        failed = sum(bar.status in NOT_DONE for bar in top)
        if failed:
            parts.append(f"{failed} failed")
        skipped = sum(bar.status in ("skipped", "cancelled") for bar in top)
        if skipped:
            parts.append(f"{skipped} skipped or cancelled")
        retries = sum(tree.group_retries(g) for g in roots)
        if retries:
            parts.append(_plural(retries, "retry", "retries") + " in all")
        text = ", ".join(parts)
        if self.timed and self.timeline.groups:
            text += f"; {_fmt(self.layout.end - self.layout.origin)} from first start to last end"
        lines = [_esc(text + ".")]
        usage = ResourceUsage.merge(getattr(g.metrics, "resources", None) for g in roots)
        if usage is not None and usage.describe():
            # The run's figures: over its outermost groups (nested ones ran inside them).
            lines.append(_esc(f"While it ran: {usage.describe()}."))
        nested = [g for g, depth in tree.walk() if depth > 0]
        if nested:
            inside = sum(len(g.members) for g in nested)
            failures = sum(bar.status in NOT_DONE for g in nested for bar in g.bars())
            lines.append(
                _esc(
                    f"{_plural(len(nested), 'nested group', 'nested groups')} "
                    f"({_plural(inside, 'member', 'members')}"
                    + (f", {failures} failed" if failures else "")
                    + ") are folded under the member that opened them: click a row marked ▸."
                )
            )
        return f'<p class="overview">{"<br/>".join(lines)}</p>'

    def status_note(self) -> str:
        notes = [
            f"<strong>{_esc(status)}</strong>: {GROUP_STATUS_NOTES[status]}"
            for status in GROUP_STATUS_NOTES
            if status in self.group_statuses
        ]
        return f'<p class="note">Group status: {"; ".join(notes)}.</p>' if notes else ""

    def metrics_table(self) -> str:
        header = (
            '<tr><th class="name">group</th><th>members</th><th>ok</th><th>failed</th>'
            "<th>wait p50</th><th>wait p95</th><th>run p50</th><th>run p95</th>"
            "<th>run max</th><th>wall</th><th>peak workers</th><th>efficiency</th>"
            "<th>peak memory</th><th>open files</th><th>loop lag p95</th><th>loop lag max</th>"
            "</tr>"
        )
        rows = []
        for group, depth in self.tree.walk():
            m = group.metrics
            name = group.group_id
            if depth:  # under its parent's row: the part of its address below the parent
                name = "…" + name[len(self.tree.parent[id(group)].group_id) :]
            if m is None or not hasattr(m, "queue_wait"):
                continue
            pad = f' style="padding-left:{8 + depth * INDENT}px"' if depth else ""
            rows.append(
                f'<tr><td class="name"{pad}>{_esc(name)}</td><td>{m.total}</td>'
                f"<td>{m.succeeded}</td><td>{m.failed + m.timed_out}</td>"
                f"<td>{_fmt(m.queue_wait.p50)}</td><td>{_fmt(m.queue_wait.p95)}</td>"
                f"<td>{_fmt(m.run_time.p50)}</td><td>{_fmt(m.run_time.p95)}</td>"
                f"<td>{_fmt(m.run_time.max)}</td><td>{_fmt(m.wall_time)}</td>"
                f"<td>{m.concurrency_high_water} / {m.max_workers}</td>"
                f"<td>{m.efficiency:.0%}</td>{_resource_cells(getattr(m, 'resources', None))}</tr>"
            )
        if not rows:
            return ""
        return (
            '<details class="metrics"><summary>Metrics per group '
            f"({_plural(len(rows), 'group', 'groups')})</summary>"
            f"<table>{header}{''.join(rows)}</table></details>"
        )


def _resource_cells(usage: Any) -> str:
    """The resource columns of a group's row (blank when nothing was measured)."""
    if usage is None:
        return "<td></td>" * 4
    peak = "" if usage.rss_peak is None else f"{usage.rss_peak / 2**20:.0f} MiB"
    growth = usage.rss_growth
    if peak and growth is not None:
        peak += f" ({'+' if growth >= 0 else ''}{growth / 2**20:.0f})"
    files = "" if usage.fds_peak is None else str(usage.fds_peak)
    lag = usage.loop_lag
    p95, worst = (_fmt(lag.p95), _fmt(lag.max)) if lag.count else ("", "")
    return f"<td>{peak}</td><td>{files}</td><td>{p95}</td><td>{worst}</td>"


def _time(value: float | None) -> float | None:
    """``value`` if it is a time the chart can place, else ``None`` (unknown)."""
    if value is None or not -_MAX_TIME < value < _MAX_TIME:  # (NaN fails both)
        return None
    return value


def _usable(timeline: Timeline) -> Timeline:
    """``timeline`` with every time the chart cannot place (infinite, NaN, or so far out that
    differences overflow) as unknown: one such time made the page an ``OverflowError``. The
    timeline itself is not changed; without such a time it is returned as it is."""

    def bad(value: float | None) -> bool:
        return value is not None and _time(value) is None

    if not any(
        bad(group.started)
        or bad(group.finished)
        or any(bad(b.enqueued) or bad(b.started) or bad(b.finished) for b in group.members.values())
        for group in timeline.groups
    ):
        return timeline
    # Copies made with dataclasses.replace: this module must not import the timeline's
    # (which imports this one to render).
    groups = [
        dataclasses.replace(
            group,
            started=_time(group.started),
            finished=_time(group.finished),
            members={
                index: dataclasses.replace(
                    bar,
                    enqueued=_time(bar.enqueued),
                    started=_time(bar.started),
                    finished=_time(bar.finished),
                    retries=list(bar.retries),  # (drawn only where finite; counted all the same)
                )
                for index, bar in group.members.items()
            },
        )
        for group in timeline.groups
    ]
    return dataclasses.replace(timeline, groups=groups)


def render_html(timeline: Timeline, *, chart_width: float | None = None) -> str:
    """The whole page: title, overview, legend, the chart, then the metrics table (folded).

    ``chart_width``: the bars' width in px (at least ``MIN_CHART_WIDTH``), for a zoomed view;
    by default the chart fits ``PAGE_WIDTH``. A time that is no time (infinite, NaN) is shown
    as unknown."""
    timeline = _usable(timeline)
    page = _Page(timeline, chart_width)
    chart = page.chart()  # first: it decides what the legend and the notes list
    stored = (
        ""
        if timeline.timed
        else '<p class="note">Built from stored checkpoints, which keep durations but not start '
        "times: every bar starts at zero and queue waits are not shown.</p>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
        f"<title>{_esc(timeline.title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_esc(timeline.title)}</h1>"
        f"{page.overview()}{stored}{page.legend()}{page.status_note()}"
        f"{chart}{page.metrics_table()}"
        "</body></html>\n"
    )
