"""The viewer's pages, rendered on the server: they read without scripts.

Every value that comes from a run (ids, actor names, addresses, errors, results) goes through
``esc`` on its way into the page, in text and in attributes alike; links to a run quote its id
(``run_href``). The pages load one script and one style sheet from ``/static/`` and hold no
inline script, so the ``Content-Security-Policy`` the app sends (``script-src 'self'``) would
stop an injected script even if a value were ever let through unescaped.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from rh_agents.core.safe_text import local_time
from rh_agents.observability.timeline import Timeline
from rh_agents.observability.timeline_svg import MAX_CHART_WIDTH, render_html
from rh_agents.ui.model import TreeItem

__all__ = [
    "MEMBER_LIMIT",
    "STATUSES",
    "ZOOMS",
    "RunPage",
    "counts_text",
    "error_page",
    "esc",
    "format_duration",
    "format_time",
    "group_counts_text",
    "group_status_text",
    "metrics_text",
    "run_href",
    "run_page",
    "runs_page",
    "timeline_page",
]

# Members listed per group on a run's page, and failed ones after those at most as many again;
# ``?members=all`` lifts it.
MEMBER_LIMIT = 200
ZOOMS = (1, 2, 4, 8, 16)
ERROR_CHARS = 300
# The tooltip holds the error in full up to this many characters: a 10 MB error would
# otherwise make the page (and the browser's DOM) 10 MB for one attribute.
ERROR_TITLE_CHARS = 10_000

# Control characters (C0 but tab and line breaks, and DEL), and lone surrogates (which cannot
# be sent as UTF-8: a JSON store keeps them, say in an error naming a file whose name is not
# UTF-8): shown as "?". The C1 controls and the bidirectional embeddings, overrides and
# isolates: shown as U+FFFD, as ``core.safe_text.printable`` shows them in a terminal (a name
# holding U+202E showed the rest of its line reversed: what the page showed was not what ran).
# static/viewer.js shows the API's strings the same way (its ``shown``).
_CONTROL = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHOWN = {
    code: "?"
    for code in (*range(0x20), 0x7F, *range(0xD800, 0xE000))
    if code not in (0x09, 0x0A, 0x0D)
}
_UNSEEN = (*range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_SHOWN.update(dict.fromkeys(_UNSEEN, "\ufffd"))
_NOT_CLASS = re.compile(r"[^A-Za-z0-9_-]")


def esc(value: object) -> str:
    """``value`` as HTML text or attribute value: escaped, control characters and lone
    surrogates shown as "?", C1 controls and bidirectional controls as U+FFFD."""
    text = str(value)
    if _CONTROL.search(text) is not None:
        text = text.translate(_SHOWN)
    return html.escape(text, quote=True)


def _cls(status: object) -> str:
    return _NOT_CLASS.sub("_", str(status)) or "unknown"


def run_href(run_id: str, tail: str = "") -> str:
    return "/runs/" + quote(run_id, safe="") + tail


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def format_time(timestamp: float | None) -> str:
    """Local time; "?" for a timestamp that is no time (a damaged store's NaN or 1e20)."""
    if timestamp is None:
        return ""
    return local_time(timestamp)


def counts_text(counts: Mapping[str, int], running: int = 0) -> str:
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (s != "completed", s))]
    if running:
        parts.append(f"{running} running")
    return " · ".join(parts) if parts else "no events yet"


def metrics_text(group: Mapping[str, Any]) -> str:
    """A group's metrics snapshot in one line."""
    metrics = group.get("metrics")
    if not metrics:
        return ""
    parts = []
    run = metrics.get("run_time") or {}
    if run.get("count"):
        parts.append(
            f"run p50 {format_duration(run['p50'])} · p95 {format_duration(run['p95'])} · "
            f"max {format_duration(run['max'])}"
        )
    wait = metrics.get("queue_wait") or {}
    if wait.get("count"):
        parts.append(
            f"wait p50 {format_duration(wait['p50'])} · p95 {format_duration(wait['p95'])}"
        )
    if metrics.get("wall_time") is not None:
        parts.append(f"wall {format_duration(metrics['wall_time'])}")
    if metrics.get("concurrency_high_water") is not None:
        parts.append(
            f"peak {metrics['concurrency_high_water']} of {metrics.get('max_workers')} workers"
        )
    if metrics.get("throughput"):
        parts.append(f"{metrics['throughput']:.1f} members/s")
    if metrics.get("efficiency") is not None:
        parts.append(f"efficiency {metrics['efficiency']:.0%}")
    retries = metrics.get("retries") or 0
    if retries:
        parts.append(f"{retries} {'retry' if retries == 1 else 'retries'}")
    source = group.get("metrics_source")
    text = " · ".join(parts) if parts else "no member finished yet"
    if source == "checkpoints":
        text += " (from checkpoints: durations only, no queue waits)"
    elif source == "so far":
        text = "so far: " + text
    return text


def group_counts_text(group: Mapping[str, Any]) -> str:
    """``"5 of 5 done · 4 ok · 1 failed"``; for a group that reached its quorum, ``"quorum of
    2 reached · 5 of 5 done · 2 ok · 3 cancelled (not needed)"``; for one that ended without
    reaching it (and without every member ok), ``"quorum of 3 not reached · ..."``."""
    total = group.get("total")
    done = group.get("done", 0)
    known = group.get("total_known", True)
    parts = [f"{done} of {'' if known else 'at least '}{total} done" if total else f"{done} done"]
    reached = bool(group.get("quorum_reached"))
    quorum = group.get("quorum")
    if reached:
        parts.insert(0, f"quorum of {quorum} reached")
    elif quorum is not None and group.get("status") in ("partial", "failed", "timed_out"):
        parts.insert(0, f"quorum of {quorum} not reached")
    succeeded, failed = group.get("succeeded", 0), group.get("failed", 0)
    parts.append(f"{succeeded} ok")
    if failed:
        parts.append(f"{failed} failed")
    for key in ("cancelled", "skipped", "missing"):
        if group.get(key):
            label = "no checkpoint" if key == "missing" else key
            if key == "cancelled" and reached:
                label = "cancelled (not needed)"
            parts.append(f"{group[key]} {label}")
    return " · ".join(parts)


def group_status_text(group: Mapping[str, Any]) -> str:
    """What a group's status badge says: its status, or ``"quorum reached"`` (styled as a
    success) for a group that reached its quorum, whose status stays ``partial``."""
    if group.get("quorum_reached"):
        return "quorum reached"
    return str(group.get("status") or "running")


# --- page frame -----------------------------------------------------------------------------


def _page(title: str, body: str, *, kind: str, data: Mapping[str, object] | None = None) -> str:
    attributes = "".join(f' data-{name}="{esc(value)}"' for name, value in (data or {}).items())
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/viewer.css">'
        '<script src="/static/viewer.js" defer></script></head>'
        f'<body data-page="{kind}"{attributes}>'
        '<header class="top"><a class="home" href="/">rh_agents runs</a></header>'
        f"<main>{body}</main></body></html>\n"
    )


def error_page(title: str, message: str, hint: str = "") -> str:
    body = f'<h1>{esc(title)}</h1><p class="problem">{esc(message)}</p>'
    if hint:
        body += f'<p class="hint">{esc(hint)}</p>'
    body += '<p><a href="/">Back to the runs</a></p>'
    return _page(title, body, kind="error")


# --- the runs list --------------------------------------------------------------------------

STATUSES = ("running", "completed", "failed", "interrupted")


def runs_page(
    runs: Sequence[Mapping[str, Any]],
    *,
    store: str,
    query: str = "",
    status: str = "",
    problem: str | None = None,
    note: str | None = None,
) -> str:
    options = '<option value="">any status</option>' + "".join(
        f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>' for s in STATUSES
    )
    form = (
        '<form class="filter" method="get" action="/">'
        f'<input type="search" name="q" id="filter" value="{esc(query)}" '
        'placeholder="filter: run id or status" autocomplete="off">'
        f'<select name="status" id="status-filter">{options}</select>'
        '<button type="submit">Filter</button></form>'
    )
    rows = "".join(_run_row(run) for run in runs)
    body = [
        "<h1>Runs</h1>",
        f'<p class="store">Store: <code>{esc(store)}</code></p>',
    ]
    if problem is not None:
        body.append(f'<p class="problem" id="problem">{esc(problem)}</p>')
    if note is not None:
        body.append(f'<p class="note" id="note">{esc(note)}</p>')
    body.append(form)
    body.append(
        '<table class="runs" id="runs"><thead><tr><th>run</th><th>status</th><th>started</th>'
        "<th>duration</th><th>events</th><th>outcomes</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    empty = "" if runs else " shown"
    body.append(f'<p class="empty{empty}" id="empty">No run matches.</p>')
    return _page("rh_agents runs", "".join(body), kind="runs", data={"store": store})


def _run_row(run: Mapping[str, Any]) -> str:
    run_id, status = run["run_id"], run["status"]
    live = ' <span class="live">live</span>' if run.get("live") else ""
    return (
        f'<tr data-run-id="{esc(run_id)}" data-status="{esc(status)}">'
        f'<td class="id"><a href="{esc(run_href(run_id))}">{esc(run_id)}</a>{live}</td>'
        f'<td><span class="status s-{_cls(status)}">{esc(status)}</span></td>'
        f'<td class="when">{esc(format_time(run.get("created")))}</td>'
        f'<td class="duration">{esc(format_duration(run.get("duration")))}</td>'
        f'<td class="events">{run.get("events", 0)}</td>'
        f'<td class="counts">{esc(counts_text(run.get("counts") or {}, run.get("running", 0)))}'
        "</td></tr>"
    )


# --- a run ----------------------------------------------------------------------------------


@dataclass(slots=True)
class RunPage:
    """What a run's page shows: its summary, tree, where it came from and how far it got."""

    summary: Mapping[str, Any]
    tree: list[TreeItem]
    source: str  # "live" (this process's feed) or "store"
    cursor: int
    store: str
    all_members: bool = False


def run_page(page: RunPage) -> str:
    run = page.summary
    run_id, status = str(run["run_id"]), str(run["status"])
    live = (
        "Live: this page follows the run as its events happen (it runs in this process)."
        if page.source == "live"
        else "This page follows the run as its checkpoints land in the store."
    )
    header = [
        f'<h1>Run <span class="run-id">{esc(run_id)}</span> '
        f'<span class="status s-{_cls(status)}" id="run-status">{esc(status)}</span></h1>',
        f'<p class="summary">Started <span id="run-started">{esc(format_time(run["created"]))}'
        f'</span> · <span id="run-duration">{esc(format_duration(run["duration"]))}</span> · '
        f'<span id="run-events">{run.get("events", 0)}</span> events: '
        f'<span id="run-counts">{esc(counts_text(run["counts"], run.get("running", 0)))}'
        "</span></p>",
        f'<p class="follow{" shown" if status == "running" else ""}" id="follow">{esc(live)} '
        '<span id="follow-state"></span></p>',
    ]
    if status not in ("completed", "running") and run.get("resume_command"):
        header.append(
            f'<p class="hint">Resume it with <code>{esc(run["resume_command"])}</code></p>'
        )
    items = _items(page.tree, page)
    if not page.tree:
        items = '<li class="none">No event of this run has finished yet.</li>'
    body = "".join(header) + f'<ul class="tree" id="tree">{items}</ul>'
    data = {
        "run-id": run_id,
        "source": page.source,
        "cursor": page.cursor,
        "status": status,
        "member-limit": 0 if page.all_members else MEMBER_LIMIT,
    }
    return _page(f"run {run_id}", body, kind="run", data=data)


def _row(item: TreeItem) -> str:
    node = item.node or {}
    status = item.status
    parts = [f'<span class="name">{esc(item.label)}</span>']
    actor = node.get("actor")
    if item.kind == "member" and actor:
        parts.append(f'<span class="actor">{esc(actor)}</span>')
    if status is None:
        parts.append('<span class="status s-unknown">no checkpoint</span>')
    else:
        parts.append(f'<span class="status s-{_cls(status)}">{esc(status)}</span>')
    attempts = node.get("attempts") or 1
    parts.append(f'<span class="attempts">{f"{attempts} attempts" if attempts > 1 else ""}</span>')
    parts.append(f'<span class="duration">{esc(format_duration(node.get("duration")))}</span>')
    error = node.get("error")
    short = _cut(error, ERROR_CHARS)
    title = f' title="{esc(_cut(error, ERROR_TITLE_CHARS))}"' if error else ""
    parts.append(f'<span class="error"{title}>{esc(short or "")}</span>')
    result = node.get("result")
    title = f' title="{esc(result)}"' if result else ""
    parts.append(f'<span class="result"{title}>{esc(result) if result else ""}</span>')
    return "".join(parts)


def _cut(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "…"


def _group_row(item: TreeItem) -> str:
    group = item.group or {}
    status = group_status_text(group)
    total, done = group.get("total") or 0, group.get("done") or 0
    return (
        f'<span class="name">{esc(item.label)}</span><span class="kind">group</span>'
        f'<span class="status s-{_cls(status)}">{esc(status)}</span>'
        f'<span class="counts">{esc(group_counts_text(group))}</span>'
        f'<progress max="{max(total, done, 1)}" value="{done}"></progress>'
    )


def _items(items: Sequence[TreeItem], page: RunPage) -> str:
    """The tree's ``<li>`` elements, rendered with a stack rather than by recursion: an
    address may nest thousands of levels deep, past Python's recursion limit."""
    out: list[str] = []
    # Each entry is an item still to open (with its depth) or the closing text of one opened.
    stack: list[tuple[TreeItem, int] | str] = [(item, 0) for item in reversed(items)]
    while stack:
        entry = stack.pop()
        if isinstance(entry, str):
            out.append(entry)
            continue
        item, depth = entry
        opening, children, closing = _item_parts(item, page, depth)
        out.append(opening)
        stack.append(closing)
        stack.extend((child, depth + 1) for child in reversed(children))
    return "".join(out)


def _item_parts(item: TreeItem, page: RunPage, depth: int) -> tuple[str, list[TreeItem], str]:
    """One item's ``<li>``: the HTML before its children, the children, the HTML after."""
    status = item.status or "unknown"
    head = (
        f'<li class="item {item.kind} s-{_cls(status)}" data-address="{esc(item.address)}" '
        f'data-kind="{item.kind}">'
    )
    children = item.sorted_children()
    if item.kind == "group":
        summary = _group_row(item)
        metrics = metrics_text(item.group or {})
        timeline_href = run_href(
            str(page.summary["run_id"]), "/timeline?" + urlencode({"group": item.address})
        )
        body = (
            f'<p class="metrics">{esc(metrics)}</p>'
            f'<div class="timeline"><a class="open-timeline" href="{esc(timeline_href)}">'
            "Timeline of its members</a>"
            f'<iframe loading="lazy" src="{esc(timeline_href)}" '
            f'title="Timeline of {esc(item.address)}"></iframe></div>'
        )
        shown = _members_shown(children, page.all_members)
        hidden = len(children) - len(shown)
        more = ""
        if hidden:
            href = run_href(str(page.summary["run_id"]), "?members=all")
            more = (
                f'<li class="more">{hidden} more members not listed '
                f'(<a href="{esc(href)}">list every member</a>)</li>'
            )
        opening = (
            f'{head}<details class="group"><summary class="row">{summary}</summary>'
            f'<div class="body">{body}<ul class="children">'
        )
        return opening, shown, f"{more}</ul></div></details></li>"
    opened = " open" if depth == 0 else ""
    opening = (
        f'{head}<details{opened}><summary class="row">{_row(item)}</summary><ul class="children">'
    )
    return opening, children, "</ul></details></li>"


def _members_shown(children: list[TreeItem], everything: bool) -> list[TreeItem]:
    if everything or len(children) <= MEMBER_LIMIT:
        return children
    first = children[:MEMBER_LIMIT]
    # The failed ones after those, as many at most: a group of 100,000 members half of which
    # failed made a page of 50 MB, which froze the browser (and the server while it rendered).
    failed = [c for c in children[MEMBER_LIMIT:] if c.status not in ("completed", None)]
    return first + failed[:MEMBER_LIMIT]


# --- a timeline -----------------------------------------------------------------------------


def timeline_page(
    timeline: Timeline, *, run_id: str, group: str | None, zoom: int, live: bool
) -> str:
    """The timeline page of ``render_html`` (the same page ``rh-agents runs timeline``
    writes), with zoom links above it (server-side: a wider chart, the same text)."""
    width = None if zoom <= 1 else MAX_CHART_WIDTH * zoom
    page = render_html(timeline, chart_width=width)

    def href(level: int) -> str:
        query = {"group": group} if group is not None else {}
        if level > 1:
            query["zoom"] = str(level)
        return run_href(run_id, "/timeline" + ("?" + urlencode(query) if query else ""))

    links = []
    for level in ZOOMS:
        if level == zoom:
            links.append(f'<strong class="zoom-level">{level}×</strong>')
        else:
            links.append(f'<a class="zoom-level" href="{esc(href(level))}">{level}×</a>')
    smaller = max((z for z in ZOOMS if z < zoom), default=None)
    larger = min((z for z in ZOOMS if z > zoom), default=None)
    nav = ['<nav class="zoom" style="font:13px system-ui,sans-serif;margin:0 0 8px">Zoom: ']
    if smaller is not None:
        nav.append(f'<a id="zoom-out" href="{esc(href(smaller))}">−</a> ')
    nav.append(" ".join(links))
    if larger is not None:
        nav.append(f' <a id="zoom-in" href="{esc(href(larger))}">+</a>')
    nav.append(
        f' · <a href="{esc(run_href(run_id))}" target="_top">the run</a>'
        + (" · still running: the run's page reloads this view as it goes" if live else "")
        + "</nav>"
    )
    return page.replace("<body>", "<body>" + "".join(nav), 1)
