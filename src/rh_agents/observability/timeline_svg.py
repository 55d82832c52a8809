"""Render a ``Timeline`` as one self-contained HTML page with an inline SVG Gantt chart.

No scripts and no external assets: the page opens offline and diffs cleanly. Each member is
one ``<g class="member status-...">`` row holding a ``wait`` rect (queued for a worker), a
``run`` rect coloured by how it ended and a ``retry`` tick per retry; hovering shows the
details (SVG ``<title>``). The document is well-formed XML, so tools can parse the chart::

    html = render_html(recorder.timeline())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from rh_agents.observability.timeline import MemberBar, Timeline, TimelineGroup

__all__ = ["COLOURS", "render_html"]

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

LABEL_WIDTH = 220
CHART_WIDTH = 900
RIGHT_PAD = 20
HEADER = 28
AXIS = 26

STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; }
td.name, th.name { text-align: left; }
svg text { font-size: 11px; fill: #333; }
svg text.group { font-size: 13px; font-weight: bold; }
.legend span { display: inline-block; margin-right: 14px; font-size: 13px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            vertical-align: middle; }
"""


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


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
    return start, end if end > start else start + 1e-3


def _row_height(count: int) -> int:
    return 14 if count <= 200 else 6 if count <= 1000 else 3


def _tooltip(bar: MemberBar, origin: float, timed: bool) -> str:
    parts = [f"{bar.label}: {bar.status}"]
    if timed and bar.enqueued is not None and bar.started is not None:
        parts.append(f"waited {_fmt(bar.started - bar.enqueued)}")
    if bar.started is not None and bar.finished is not None:
        parts.append(f"ran {_fmt(bar.finished - bar.started)}")
    if timed and bar.started is not None:
        parts.append(f"started at +{_fmt(bar.started - origin)}")
    if bar.attempts > 1:
        parts.append(f"{bar.attempts} attempts")
    if bar.error:
        parts.append(bar.error)
    return "; ".join(parts)


def _member_svg(
    bar: MemberBar,
    y: float,
    height: int,
    x_of: Callable[[float], float],
    origin: float,
    timed: bool,
    end: float,
) -> list[str]:
    status = bar.status
    out = [f'<g class="member status-{escape(status)}" data-index="{bar.index}">']
    out.append(f"<title>{escape(_tooltip(bar, origin, timed))}</title>")
    if height >= 6:
        out.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + height - 3:.1f}" text-anchor="end">'
            f"{escape(bar.label[:34])}</text>"
        )
    top = y + 1
    h = max(1, height - 2)
    if bar.enqueued is not None and bar.started is not None and bar.started > bar.enqueued:
        x0, x1 = x_of(bar.enqueued), x_of(bar.started)
        out.append(
            f'<rect class="wait" x="{x0:.2f}" y="{top:.1f}" width="{max(x1 - x0, 0.5):.2f}" '
            f'height="{h}" fill="{COLOURS["wait"]}"/>'
        )
    if bar.started is not None:
        finish = bar.finished if bar.finished is not None else end
        x0, x1 = x_of(bar.started), x_of(finish)
        colour = COLOURS.get(status, COLOURS["running"])
        out.append(
            f'<rect class="run {escape(status)}" x="{x0:.2f}" y="{top:.1f}" '
            f'width="{max(x1 - x0, 0.8):.2f}" height="{h}" fill="{colour}"/>'
        )
    elif bar.finished is not None:  # never ran: a small marker where it was given up
        x = x_of(bar.finished)
        colour = COLOURS.get(status, COLOURS["skipped"])
        out.append(
            f'<rect class="run {escape(status)}" x="{x - 1:.2f}" y="{top:.1f}" width="2" '
            f'height="{h}" fill="{colour}"/>'
        )
    for when in bar.retries:
        x = x_of(when)
        out.append(
            f'<line class="retry" x1="{x:.2f}" x2="{x:.2f}" y1="{y:.1f}" y2="{y + height:.1f}" '
            f'stroke="{COLOURS["retry"]}" stroke-width="2"/>'
        )
    out.append("</g>")
    return out


def _svg(timeline: Timeline) -> str:
    timed = timeline.timed
    origin, end = _bounds(timeline)
    if not timed:
        origin = 0.0
    span = end - origin
    scale = CHART_WIDTH / span

    def x_of(t: float) -> float:
        return LABEL_WIDTH + (t - origin) * scale

    rows: list[str] = []
    y = float(AXIS)
    for group in timeline.groups:
        bars = group.bars()
        height = _row_height(len(bars))
        rows.append(
            f'<g class="group" data-group-id={quoteattr(group.group_id)}>'
            f'<text class="group" x="4" y="{y + 18:.1f}">'
            f"{escape(group.group_id)} ({len(bars)} members, {escape(group.status)})</text>"
        )
        if timed and group.started is not None and group.finished is not None:
            x0, x1 = x_of(group.started), x_of(group.finished)
            rows.append(
                f'<rect class="group-span" x="{x0:.2f}" y="{y + 22:.1f}" '
                f'width="{max(x1 - x0, 0.5):.2f}" height="3" fill="#888"/>'
            )
        y += HEADER
        for bar in bars:
            rows.extend(_member_svg(bar, y, height, x_of, origin, timed, end))
            y += height
        rows.append("</g>")
        y += 8
    total_height = int(y) + 4
    width = LABEL_WIDTH + CHART_WIDTH + RIGHT_PAD
    axis = [
        f'<line x1="{LABEL_WIDTH}" x2="{LABEL_WIDTH + CHART_WIDTH}" y1="18" y2="18" stroke="#444"/>'
    ]
    for i in range(6):
        t = span * i / 5
        x = LABEL_WIDTH + CHART_WIDTH * i / 5
        axis.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="14" y2="{total_height}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="11" text-anchor="middle">+{escape(_fmt(t))}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height}" '
        f'viewBox="0 0 {width} {total_height}" role="img">'
        + "".join(axis)
        + "".join(rows)
        + "</svg>"
    )


def _metrics_table(groups: list[TimelineGroup]) -> str:
    rows = [
        '<table><tr><th class="name">group</th><th>members</th><th>ok</th><th>failed</th>'
        "<th>wait p50</th><th>wait p95</th><th>run p50</th><th>run p95</th><th>run max</th>"
        "<th>wall</th><th>peak workers</th><th>efficiency</th></tr>"
    ]
    for group in groups:
        m = group.metrics
        if m is None or not hasattr(m, "queue_wait"):
            continue
        rows.append(
            f'<tr><td class="name">{escape(group.group_id)}</td><td>{m.total}</td>'
            f"<td>{m.succeeded}</td><td>{m.failed + m.timed_out}</td>"
            f"<td>{_fmt(m.queue_wait.p50)}</td><td>{_fmt(m.queue_wait.p95)}</td>"
            f"<td>{_fmt(m.run_time.p50)}</td><td>{_fmt(m.run_time.p95)}</td>"
            f"<td>{_fmt(m.run_time.max)}</td><td>{_fmt(m.wall_time)}</td>"
            f"<td>{m.concurrency_high_water} / {m.max_workers}</td>"
            f"<td>{m.efficiency:.0%}</td></tr>"
        )
    if len(rows) == 1:
        return ""
    return "".join(rows) + "</table>"


def render_html(timeline: Timeline) -> str:
    """The whole page: title, legend, metrics table (when known) and the chart."""
    legend = "".join(
        f'<span><i style="background:{COLOURS[key]}"></i>{label}</span>'
        for key, label in (
            ("wait", "waiting for a worker"),
            ("completed", "ran, completed"),
            ("failed", "failed"),
            ("timed_out", "timed out"),
            ("cancelled", "cancelled"),
            ("skipped", "skipped"),
            ("retry", "retry"),
        )
    )
    note = (
        ""
        if timeline.timed
        else "<p>Built from stored checkpoints, which keep durations but not start times: "
        "every bar starts at zero and queue waits are not shown.</p>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
        f"<title>{escape(timeline.title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(timeline.title)}</h1>{note}"
        f'<p class="legend">{legend}</p>'
        f"{_metrics_table(timeline.groups)}"
        f"{_svg(timeline)}"
        "</body></html>\n"
    )
