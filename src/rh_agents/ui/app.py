"""The viewer as an ASGI app (Starlette): the pages, the JSON API and the event streams.

::

    app = create_app("runs/state.db")             # serve it with uvicorn, or test it with httpx

Pages: ``/`` (the runs), ``/runs/{id}`` (a run: its tree, groups and metrics),
``/runs/{id}/timeline?group=G&zoom=2`` (a group's members as a Gantt chart). API:
``/api/runs``, ``/api/runs/{id}``, ``/api/runs/{id}/timeline?group=G`` (JSON) and
``/api/runs/{id}/events`` (server-sent events); ``docs/ui.md`` documents them.

Every route is a GET (HEAD too): nothing here changes a run or a store. The store is read
through ``StoreReader`` (read-only opening, off the event loop). Runs watched live in this
process (``LiveFeed``, registered in ``feeds``) are served from their feed, with what the
store holds of them underneath. Every response carries a ``Content-Security-Policy`` that
allows scripts from ``/static/`` only, and requests must name this machine as their host
(``allowed_hosts``), so a page elsewhere cannot reach the viewer through a name of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rh_agents.errors import ConfigurationError
from rh_agents.observability.timeline import Timeline
from rh_agents.recovery.opening import is_sqlite_path
from rh_agents.recovery.records import CheckpointRecord, RunInfo, RunStatus, latest_calls
from rh_agents.resilience.checks import check_number
from rh_agents.ui import pages
from rh_agents.ui.live import FeedSnapshot, LiveFeed, Node
from rh_agents.ui.model import (
    add_counts,
    build_tree,
    live_summary,
    parent_address,
    run_summary,
    stored_groups,
    stored_nodes,
)
from rh_agents.ui.store import StoreProblem, StoreReader, in_thread

__all__ = [
    "LOCAL_HOSTS",
    "MAX_NODES_PER_MESSAGE",
    "MIN_POLL_INTERVAL",
    "NOTHING_SEEN",
    "RUNS_LIMIT",
    "ViewerState",
    "check_intervals",
    "create_app",
    "timeline_json",
]

logger = logging.getLogger("rh_agents.ui")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
RUNS_LIMIT = 500  # runs listed at most (newest first)
MAX_NODES_PER_MESSAGE = 1000  # an event stream sends the rest in the next messages
HEARTBEAT = 15.0
# The shortest ``poll_interval``: each poll reads the store (in a thread) for every open
# stream, and 0 (or a negative number, or NaN) made the streams spin, a core at 100 %.
MIN_POLL_INTERVAL = 0.01
# The cursor of a client that has seen nothing yet. A stored run's cursor is the ``seq`` of
# the last checkpoint sent, and seq counts from 0: with 0 for "nothing seen" the checkpoint of
# seq 0 was never sent.
NOTHING_SEEN = -1

_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; "
    "form-action 'self'"
)
# The timeline page is the stand-alone page of observability.timeline_svg: inline styles,
# no script at all.
_TIMELINE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; "
    "base-uri 'none'; form-action 'none'"
)
_STATIC_TYPES = {"viewer.js": "text/javascript", "viewer.css": "text/css"}
_T = TypeVar("_T")


@dataclass
class ViewerState:
    """What the app serves: a store, the runs watched live in this process, and timings."""

    store: StoreReader
    feeds: dict[str, LiveFeed] = field(default_factory=dict)
    poll_interval: float = 1.0  # seconds between two reads of a store-backed run's progress
    push_interval: float = 0.25  # at most this often an event stream sends an update
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # Per live run: its feed, and its stored events that feed has not seen (``_unseen``).
    unseen: dict[str, tuple[LiveFeed, dict[str, str]]] = field(default_factory=dict)
    # The event streams of live runs open now (a token each), with their feeds; and an event
    # set as each one closes (``streams_ended``).
    streams: dict[object, LiveFeed] = field(default_factory=dict)
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def streams_ended(self) -> None:
        """Wait until the open event stream of every run that is over has sent its ``end``
        and closed. (The viewer stops after it, with a time limit: ``closing`` would end them
        before their last message.)"""
        while any(not feed.running for feed in self.streams.values()):
            self.stream_closed.clear()
            await self.stream_closed.wait()


# --- responses ------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _dumps(data: Any) -> str:
    text = json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"), default=str)
    # A lone surrogate (an error naming a file whose name is not UTF-8, as a JSON store keeps
    # it) cannot be sent as UTF-8, and failed the response: as a JSON escape it can. Only
    # strings hold one, so the escape always lands inside a JSON string.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# C code holds the GIL until it returns: the JSON encoder made the 20 MB of a run of 80,000
# members in one call, which held the event loop 0.35 s although it ran in another thread.
# A big answer is made in pieces of about this many items or characters, and the loop gets
# its turn between two pieces.
_PIECE = 1000
_PIECE_CHARS = 1 << 20
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _json_bytes(data: Any) -> bytes:
    """``data`` as ``_dumps`` makes it, encoded (UTF-8), made a piece at a time: a list of
    more than ``_PIECE`` items a slice of them at a time, the containers above it a value at
    a time. For answers made in a thread (see ``_PIECE``)."""
    return b"".join(
        piece.encode("utf-8", "backslashreplace") for piece in _json_pieces(_finite(data))
    )


def _json_pieces(value: Any) -> Iterator[str]:
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        opening = "{"
        for key, item in value.items():
            yield opening + _ENCODER.encode(key) + ":"
            yield from _json_pieces(item)
            opening = ","
        yield "{}" if opening == "{" else "}"
    elif isinstance(value, list) and len(value) > _PIECE:
        for start in range(0, len(value), _PIECE):
            text = _ENCODER.encode(value[start : start + _PIECE])
            yield ("[" if start == 0 else ",") + text[1:-1]
        yield "]"
    elif isinstance(value, list) and value:
        opening = "["
        for item in value:
            yield opening
            yield from _json_pieces(item)
            opening = ","
        yield "]"
    else:
        yield _ENCODER.encode(value)


def _json(data: Any, status: int = 200) -> Response:
    return Response(_dumps(data), status_code=status, media_type="application/json")


def _page_bytes(text: str) -> bytes:
    # Pages escape lone surrogates (as "?"); "replace" keeps one that slipped through (a page
    # built from another module's text) from failing the response with a 500. A megabyte at a
    # time: a page may be tens of them (see _PIECE).
    return b"".join(
        text[start : start + _PIECE_CHARS].encode("utf-8", "replace")
        for start in range(0, len(text), _PIECE_CHARS)
    )


def _html(text: str | bytes, status: int = 200, policy: str = _PAGE_POLICY) -> Response:
    """A page (``text``, or its UTF-8 encoding as ``_page_bytes`` makes it)."""
    body = text if isinstance(text, bytes) else _page_bytes(text)
    return HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": policy})


_TITLES = {400: "Not a run id", 404: "Not found", 503: "The store cannot be read"}
_HINTS = {
    503: "Nothing was changed: the viewer only reads. `rh-agents runs list --state PATH` "
    "reads the same store from the command line.",
}


def _problem(problem: StoreProblem, api: bool) -> Response:
    if api:
        return _json({"error": problem.message}, problem.status)
    title = _TITLES.get(problem.status, "Error")
    return _html(pages.error_page(title, problem.message, _HINTS.get(problem.status, "")),
                 problem.status)  # fmt: skip


class _SecurityHeaders:
    """Headers on every response: no sniffing, no referrer, framed only by itself, and the
    page policy (``Content-Security-Policy``) unless the route set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"SAMEORIGIN"),
                    (b"content-security-policy", _PAGE_POLICY.encode()),
                ]
                headers.extend((k, v) for k, v in extra if k not in names)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- reading runs ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    summary: Node
    nodes: list[Node]
    groups: list[Node]
    source: str
    cursor: int


async def _list_runs(vs: ViewerState) -> tuple[list[Node], str | None]:
    problem = None
    summaries: dict[str, Node] = {}
    infos: dict[str, RunInfo] = {}
    try:
        # The readable runs, and what could not be read said beside them: one damaged run
        # file hid every run (as `rh-agents runs list` does not).
        listed, unreadable = await vs.store.list_readable_runs()
        listed = listed[:RUNS_LIMIT]
        counts, uncounted = await vs.store.readable_counts(listed)
        for info in listed:
            infos[info.run_id] = info
            summaries[info.run_id] = run_summary(info, counts=counts.get(info.run_id, {}))
        problem = _unreadable(vs, unreadable, uncounted)
    except StoreProblem as exc:
        problem = exc.message
    for run_id, feed in list(vs.feeds.items()):
        same = _same_run(feed, infos.get(run_id))
        unseen = await _unseen(vs, feed, same)
        feed.sync()  # (its counts include what the run logged so far)
        summaries[run_id] = live_summary(feed, same, stored=unseen)
    runs = sorted(summaries.values(), key=_newest_first, reverse=True)
    return runs, problem


def _newest_first(run: Node) -> float:
    # A damaged store's NaN start would make the order depend on where it happens to be: a
    # start that is no number goes last.
    created = run["created"]
    return created if isinstance(created, int | float) and not math.isnan(created) else -math.inf


_PROBLEMS_SHOWN = 5  # unreadable runs named in the runs list's sentence; the rest counted


def _unreadable(vs: ViewerState, unreadable: list[str], uncounted: list[str]) -> str | None:
    """One sentence for the runs list: the runs not listed (JSON run files, or SQLite run
    rows, that cannot be read) and the runs whose events could not be counted, each with its
    reason (the first few: a folder of damaged files would make a page of errors)."""
    parts = []
    if unreadable:
        what = "run(s)" if is_sqlite_path(vs.store.path) else "run file(s)"
        parts.append(
            f"{len(unreadable)} {what} in {vs.store.path} cannot be read and are not "
            "listed: " + _some(unreadable)
        )
    if uncounted:
        parts.append(
            f"the events of {len(uncounted)} run(s) cannot be read (not counted): "
            + _some(uncounted)
        )
    return "; ".join(parts) if parts else None


def _some(problems: list[str]) -> str:
    shown = "; ".join(problems[:_PROBLEMS_SHOWN])
    more = len(problems) - _PROBLEMS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _same_run(feed: LiveFeed, info: RunInfo | None) -> RunInfo | None:
    """``info`` if it is the stored side of the run ``feed`` watches, else ``None``: a run of
    the same id that ended before the feed began is an earlier run (the watched one, resumed,
    would be running again in the store), and its status and events are not this run's."""
    if info is None or info.status is RunStatus.RUNNING or info.updated >= feed.created:
        return info
    return None


async def _same_stored_run(vs: ViewerState, feed: LiveFeed) -> RunInfo | None:
    """The store's side of the run ``feed`` watches (``_same_run``), if it has one."""
    if not vs.store.exists():
        return None
    try:
        return _same_run(feed, await vs.store.get_run(feed.run_id))
    except StoreProblem:
        return None


async def _unseen(
    vs: ViewerState, feed: LiveFeed, info: RunInfo | None
) -> Mapping[str, str] | None:
    """The statuses of the checkpointed events of ``feed``'s run that the feed has not seen,
    by address (``info``: the store's side of the run; ``None``: it has none): a resumed run
    replays a call whole, and the calls made under it, its groups' members among them, are
    only in the store. ``live_summary`` counts them with the feed's.

    Read once per feed (the run's pages, which read its checkpoints anyway, refresh it): the
    feed sees every event its run finishes, so what only the store holds is an earlier run's,
    and that only shrinks as the run replays or runs again what it held."""
    if info is None:
        return None
    known = vs.unseen.get(feed.run_id)
    if known is not None and known[0] is feed:
        return known[1]
    try:
        _, records = await vs.store.read_run(feed.run_id)
    except StoreProblem:
        return None
    rows = feed.rows
    latest = latest_calls(records.values())
    unseen = {a: r.status for a, r in latest.items() if a not in rows}
    vs.unseen[feed.run_id] = (feed, unseen)
    return unseen


def _filtered(runs: list[Node], query: str, status: str) -> list[Node]:
    needle = query.strip().lower()
    return [
        run
        for run in runs
        if (not status or run["status"] == status)
        and (not needle or needle in run["run_id"].lower() or needle in run["status"])
    ]


async def _read_run(vs: ViewerState, run_id: str) -> _Run:
    run_id = vs.store.check_run_id(run_id)
    feed = vs.feeds.get(run_id)
    if feed is None:
        found, records = await vs.store.read_run(run_id)
        # In a thread, as the reading was: a stored run of a hundred thousand calls takes
        # seconds to turn into nodes, and the viewer may share its loop with a run (serve()).
        return await asyncio.to_thread(_stored_run, found, records)
    # Live: what the store holds (a resumed run's replayed events) under what the feed saw.
    feed.sync()  # (all the run logged so far; the stream goes on from here)
    cursor = feed.cursor
    stored: dict[str, CheckpointRecord] = {}
    info: RunInfo | None = None
    read = False
    try:
        if vs.store.exists():
            info = _same_run(feed, await vs.store.get_run(run_id))
            if info is not None:
                info, stored = await vs.store.read_run(run_id)
                read = True
    except StoreProblem as exc:
        logger.warning("run %s: the store cannot be read (%s); showing the live run", run_id, exc)
    # The snapshot, on the loop (the feed changes there): copies of the feed's columns, which
    # nothing else holds. Its nodes, and their merging with the store's, are made in a thread.
    snapshot = feed.snapshot()
    summary = live_summary(feed, info)  # (the feed's counts: the stored ones join them there)
    run, unseen = await asyncio.to_thread(_live_run, summary, snapshot, stored, cursor)
    if read:
        vs.unseen[run_id] = (feed, unseen)
    return run


def _live_run(
    summary: Node, snapshot: FeedSnapshot, stored: dict[str, CheckpointRecord], cursor: int
) -> tuple[_Run, dict[str, str]]:
    """A live run's page: the feed's ``snapshot`` over what the store holds of the run, and
    the statuses of the stored events the feed has not seen (see ``_unseen``)."""
    nodes = stored_nodes(stored.values())
    seen = set()
    for node in snapshot.nodes():  # what the feed knows wins; the store fills in the rest
        seen.add(node["address"])
        below = nodes.get(node["address"], {})
        nodes[node["address"]] = {**below, **{k: v for k, v in node.items() if v is not None}}
    latest = latest_calls(stored.values())
    unseen = {a: r.status for a, r in latest.items() if a not in seen}
    counts = add_counts(summary["counts"], unseen.values())
    summary = {**summary, "counts": counts, "events": sum(counts.values())}
    # The feed has every group its run opened (a watch begun mid-run sees the open ones too):
    # a group only the store holds is an earlier run's, replayed inside a call or not reached
    # again yet, and it is shown as it ended there (completed, or partial), never running.
    groups = stored_groups(stored.values(), RunStatus.COMPLETED.value)
    groups.update((group["group_id"], group) for group in snapshot.groups())
    return _Run(summary, list(nodes.values()), list(groups.values()), "live", cursor), unseen


def _stored_run(found: RunInfo, records: dict[str, CheckpointRecord]) -> _Run:
    nodes = stored_nodes(records.values())
    groups = stored_groups(records.values(), found.status.value)
    cursor = max((r.seq for r in records.values()), default=NOTHING_SEEN)
    return _Run(run_summary(found, records), list(nodes.values()), list(groups.values()),
                "store", cursor)  # fmt: skip


async def _render(make: Callable[[], _T]) -> _T:
    """``make()`` (a page, a JSON text), in a thread: a run of 100,000 members takes seconds
    to render, and the viewer may share its event loop with a run (``serve()``). What it
    reads is the request's own: a stored run's records, or what was made of a live run's
    snapshot (``LiveFeed.snapshot``: copies, taken on the loop)."""
    return await asyncio.to_thread(make)


def _with_parents(nodes: Iterable[Node]) -> list[Node]:
    return [{**node, "parent": parent_address(node["address"], node["kind"])} for node in nodes]


def _groups_with_parents(groups: Iterable[Node]) -> list[Node]:
    return [{**group, "parent": parent_address(group["group_id"], "group")} for group in groups]


# --- pages ----------------------------------------------------------------------------------


def _vs(request: Request) -> ViewerState:
    state: ViewerState = request.app.state.viewer
    return state


async def _runs_page(request: Request) -> Response:
    vs = _vs(request)
    runs, problem = await _list_runs(vs)
    query = request.query_params.get("q", "")
    status = request.query_params.get("status", "")
    note = None
    if problem is None and not vs.store.exists() and not vs.feeds:
        note = (
            f"No state store at {vs.store.path} yet: no run has been saved there. Runs are "
            "saved by ExecutionState(recovery=Recovery(...)); `rh-agents ui --state PATH` "
            "reads another store."
        )
    elif problem is None and not runs:
        note = f"No runs yet in {vs.store.path}."
    body = pages.runs_page(
        _filtered(runs, query, status),
        store=str(vs.store.path),
        query=query,
        status=status,
        problem=problem,
        note=note,
    )
    return _html(body, 503 if problem is not None and not runs else 200)


async def _run_page(request: Request) -> Response:
    vs = _vs(request)
    try:
        run = await _read_run(vs, request.path_params["run_id"])
    except StoreProblem as exc:
        return _problem(exc, api=False)
    all_members = request.query_params.get("members") == "all"

    def render() -> bytes:
        page = pages.RunPage(
            summary=run.summary,
            tree=build_tree(run.nodes, run.groups),
            source=run.source,
            cursor=run.cursor,
            store=str(vs.store.path),
            all_members=all_members,
        )
        return _page_bytes(pages.run_page(page))

    return _html(await _render(render))


async def _timeline(request: Request) -> tuple[Timeline, str, str | None, bool]:
    vs = _vs(request)
    run_id = vs.store.check_run_id(request.path_params["run_id"])
    group = request.query_params.get("group") or None
    title = f"run {run_id}" + (f": {group}" if group else "")
    feed = vs.feeds.get(run_id)
    if feed is not None:
        # The snapshot on the loop; the timeline made of it in a thread.
        snapshot, running = feed.snapshot(previews=False), feed.running
        timeline = await asyncio.to_thread(snapshot.timeline, group, title=title)
        return timeline, run_id, group, running
    info, records = await vs.store.read_run(run_id)
    chosen: Iterable[CheckpointRecord] = records.values()
    if group is not None:
        inside = group + "["
        chosen = [
            r
            for r in records.values()
            if r.group_id is not None and (r.group_id == group or r.group_id.startswith(inside))
        ]
    timeline = await asyncio.to_thread(Timeline.from_checkpoints, chosen, title=title)
    return timeline, run_id, group, info.status is RunStatus.RUNNING


async def _timeline_page(request: Request) -> Response:
    try:
        timeline, run_id, group, live = await _timeline(request)
    except StoreProblem as exc:
        return _problem(exc, api=False)
    try:
        zoom = int(request.query_params.get("zoom", "1"))
    except ValueError:
        zoom = 1
    zoom = min(pages.ZOOMS, key=lambda level: abs(level - zoom))
    body = await _render(
        lambda: _page_bytes(
            pages.timeline_page(timeline, run_id=run_id, group=group, zoom=zoom, live=live)
        )
    )
    return _html(body, policy=_TIMELINE_POLICY)


# --- the API --------------------------------------------------------------------------------


async def _api_runs(request: Request) -> Response:
    vs = _vs(request)
    runs, problem = await _list_runs(vs)
    query = request.query_params
    runs = _filtered(runs, query.get("q", ""), query.get("status", ""))
    data = {
        "store": str(vs.store.path),
        "store_exists": vs.store.exists(),
        "error": problem,
        "runs": runs,
    }
    return _json(data, 503 if problem is not None and not runs else 200)


async def _api_run(request: Request) -> Response:
    vs = _vs(request)
    try:
        run = await _read_run(vs, request.path_params["run_id"])
    except StoreProblem as exc:
        return _problem(exc, api=True)

    def render() -> bytes:
        return _json_bytes(
            {
                "run": run.summary,
                "source": run.source,
                "cursor": run.cursor,
                "nodes": _with_parents(sorted(run.nodes, key=lambda n: n["order"])),
                "groups": _groups_with_parents(sorted(run.groups, key=lambda g: g["order"])),
            }
        )

    return Response(await _render(render), media_type="application/json")


def timeline_json(timeline: Timeline) -> Node:
    """A ``Timeline`` as JSON (the data the timeline pages draw)."""
    groups = []
    for group in timeline.groups:
        metrics = getattr(group.metrics, "as_dict", None)
        groups.append(
            {
                "group_id": group.group_id,
                "name": group.name,
                "status": group.status,
                "started": group.started,
                "finished": group.finished,
                "max_workers": group.max_workers,
                "parent_group_id": group.parent_group_id,
                "parent_index": group.parent_index,
                "quorum": group.quorum,
                "quorum_reached": group.quorum_reached,
                "metrics": metrics() if callable(metrics) else None,
                "members": [
                    {
                        "index": bar.index,
                        "name": bar.name,
                        "enqueued": bar.enqueued,
                        "started": bar.started,
                        "finished": bar.finished,
                        "status": bar.status,
                        "error": bar.error,
                        "attempts": bar.attempts,
                        "retries": list(bar.retries),
                    }
                    for bar in group.bars()
                ],
            }
        )
    return {"title": timeline.title, "timed": timeline.timed, "groups": groups}


async def _api_timeline(request: Request) -> Response:
    try:
        timeline, _, _, live = await _timeline(request)
    except StoreProblem as exc:
        return _problem(exc, api=True)
    body = await _render(lambda: _json_bytes({**timeline_json(timeline), "live": live}))
    return Response(body, media_type="application/json")


# --- event streams --------------------------------------------------------------------------


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {_dumps(data)}\n\n"


async def _pause(vs: ViewerState, seconds: float, feed: LiveFeed | None = None) -> None:
    """Sleep ``seconds`` (for a feed: until its next batch, at most that long); return early
    when the viewer closes."""
    closing = asyncio.ensure_future(vs.closing.wait())
    waiting = asyncio.ensure_future(feed.wait(seconds) if feed else asyncio.sleep(seconds))
    try:
        await asyncio.wait((closing, waiting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Both are ours: cancel the one still waiting and see both end before returning.
        for task in (closing, waiting):
            task.cancel()
        await asyncio.gather(closing, waiting, return_exceptions=True)


class _Stopping(Exception):
    """The viewer closed while a stream waited for a read (``_until_closing``)."""


async def _until_closing(vs: ViewerState, awaitable: Awaitable[_T]) -> _T:
    """What ``awaitable`` gives, or ``_Stopping`` as soon as the viewer closes, whichever
    comes first. A read or a thread's work waited for is dropped then (a thread goes on to its
    end by itself): a stream waiting for a read of a big store (seconds), or of a locked one
    (up to SQLite's busy timeout), held the server's stop past its grace period, and uvicorn
    then cancelled it with tracebacks."""
    work = asyncio.ensure_future(awaitable)
    closing = asyncio.ensure_future(vs.closing.wait())
    try:
        await asyncio.wait((work, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Both are ours: cancel the one still waiting and see both end before going on.
        for task in (closing, work):
            if not task.done():
                task.cancel()
        await asyncio.gather(closing, work, return_exceptions=True)
    if work.cancelled():
        raise _Stopping
    return work.result()


def _cursor(request: Request) -> int:
    """Where the stream starts: the ``Last-Event-ID`` a reconnecting browser sends (it is
    newer than the ``cursor`` of the URL, which an ``EventSource`` reuses as it was when the
    page loaded), else ``?cursor=``, else ``NOTHING_SEEN``. Garbage counts as absent; a number
    below ``NOTHING_SEEN`` is ``NOTHING_SEEN``."""
    for raw in (request.headers.get("last-event-id"), request.query_params.get("cursor")):
        try:
            return max(int(raw or ""), NOTHING_SEEN)
        except ValueError:
            continue
    return NOTHING_SEEN


async def _check_store(vs: ViewerState, feed: LiveFeed) -> RunInfo | None:
    """A watched run that checkpoints is over when its store says so (the program may go on
    without saying ``Viewer.finish``). Gives the store's side of the run (``_same_run``)."""
    info = await _same_stored_run(vs, feed)
    if info is not None and info.status is not RunStatus.RUNNING:
        feed.finish(info.status.value)
    return info


async def _feed_stream(vs: ViewerState, feed: LiveFeed, cursor: int) -> AsyncIterator[str]:
    """Updates of a live run: the run's summary, the groups that changed (counts, and their
    metrics at most once a second) and the nodes that changed, at most
    ``MAX_NODES_PER_MESSAGE`` at a time (the rest follow), at most every ``push_interval``."""
    yield "retry: 2000\n\n"
    # A feed's cursor is a position in its log, and position 0 is nothing seen yet.
    cursor = max(cursor, 0)
    # The stored events the feed has not seen, counted in the run's summary (``_unseen``):
    # until the store holds this run, looked for again as the store is checked. (The reads
    # of the store end the stream when the viewer closes meanwhile: ``_until_closing``.)

    async def stored_unseen() -> Mapping[str, str] | None:
        return await _unseen(vs, feed, await _same_stored_run(vs, feed))

    try:
        unseen = await _until_closing(vs, stored_unseen())
    except _Stopping:
        return
    pending: dict[str, None] = {}
    first = True
    loop = asyncio.get_running_loop()
    next_check = last_sent = loop.time()
    metrics_at: dict[str, float] = {}
    while not vs.closing.is_set():
        changed = feed.changes_since(cursor)
        # Start over when the feed's log no longer reaches back, or when the cursor is ahead
        # of the feed: it was another feed's (the program restarted), and what the page
        # holds is not this run's.
        if changed is None or cursor > feed.cursor:
            yield _sse("reset", {"reason": "too far behind"}, feed.cursor)
            return
        cursor = feed.cursor
        touched: dict[str, None] = {}
        completed, rows = feed.completed, feed.rows
        for address in changed:
            if feed.is_group(address):
                touched[address] = None
            if address in rows:
                pending.pop(address, None)
                pending[address] = None
                group_id = feed.group_of(address)
                if group_id is not None:
                    touched[group_id] = None
        batch = list(pending)[:MAX_NODES_PER_MESSAGE]
        for address in batch:
            del pending[address]
        if batch or touched or first:
            now = loop.time()
            groups = []
            for gid in touched:
                # Metrics so far cost a pass over the group's members: once a second at most.
                metrics = gid in completed or now - metrics_at.get(gid, -math.inf) >= 1.0
                group = feed.group(gid, metrics=metrics)
                if group is not None:
                    groups.append(group)
                    if metrics:
                        metrics_at[gid] = now
            data = {
                "run": live_summary(feed, stored=unseen),
                "groups": _groups_with_parents(groups),
                "nodes": _with_parents(n for a in batch if (n := feed.node(a)) is not None),
                "pending": len(pending),
            }
            yield _sse("update", data, cursor)
            first = False
            last_sent = loop.time()
        if feed.running and vs.store.exists() and loop.time() >= next_check:
            next_check = loop.time() + vs.poll_interval
            try:
                info = await _until_closing(vs, _check_store(vs, feed))
                if unseen is None:
                    unseen = await _until_closing(vs, _unseen(vs, feed, info))
            except _Stopping:
                return
        if not feed.running and not pending and feed.changes_since(cursor) == []:
            yield _sse("end", {"run": live_summary(feed, stored=unseen)}, cursor)
            return
        if pending:
            await _pause(vs, vs.push_interval)
            continue
        checking = feed.running and vs.store.exists()
        await _pause(vs, vs.poll_interval if checking else HEARTBEAT, feed)
        if vs.closing.is_set():
            return
        if feed.cursor == cursor and not feed.behind and feed.running:
            if loop.time() - last_sent >= HEARTBEAT:
                last_sent = loop.time()
                yield ": ping\n\n"
            continue
        if feed.running:  # (a run that is over logs nothing more: its end goes at once)
            await _pause(vs, vs.push_interval)  # let a burst of records gather into one update


class _FeedResponse(StreamingResponse):
    """A live run's event stream, in ``ViewerState.streams`` while it is open (until its
    ``end`` is sent, or its client left)."""

    def __init__(self, vs: ViewerState, feed: LiveFeed, cursor: int, headers: dict[str, str]):
        super().__init__(
            _feed_stream(vs, feed, cursor), media_type="text/event-stream", headers=headers
        )
        self._vs = vs
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = object()
        self._vs.streams[token] = self._feed
        try:
            await super().__call__(scope, receive, send)
        finally:
            del self._vs.streams[token]
            self._vs.stream_closed.set()


@dataclass(slots=True)
class _StoredUpdate:
    """What a stored run's stream sends when its checkpoints moved (``_stored_update``)."""

    seen: tuple[float, int, str]  # the run's (updated, checkpoints, status) it was made of
    summary: Node
    groups: list[Node]  # the groups of the new checkpoints, with their parents
    nodes: list[Node]  # the new checkpoints' nodes, in order
    cursor: int
    over: bool


def _stored_update(
    store: StoreReader, run_id: str, cursor: int, stop: Callable[[], bool]
) -> _StoredUpdate | None:
    """In a thread: the run read from ``store``, and what changed since ``cursor`` made of it
    (``None`` if ``stop()`` says the viewer closed meanwhile). A run of 100,000 checkpoints
    takes seconds to read and turn into nodes: on the event loop, that stalled every other
    request (a watched run's page, its stream) that long."""
    info, records = store.read_run_sync(run_id)
    if stop():
        return None
    fresh = [r for r in records.values() if r.seq > cursor]
    touched = {r.group_id for r in fresh if r.group_id is not None}
    groups = stored_groups(
        (r for r in records.values() if r.group_id in touched), info.status.value
    )
    nodes = sorted(stored_nodes(fresh).values(), key=lambda n: n["order"])
    return _StoredUpdate(
        seen=(info.updated, info.checkpoints, info.status.value),
        summary=run_summary(info, records),
        groups=_groups_with_parents(groups.values()),
        nodes=nodes,
        cursor=max((r.seq for r in records.values()), default=cursor),
        over=info.status is not RunStatus.RUNNING,
    )


def _update_message(update: _StoredUpdate, start: int) -> str:
    """In a thread: the ``update`` message of ``update``'s nodes from ``start`` (at most
    ``MAX_NODES_PER_MESSAGE`` of them; the groups go with the first)."""
    data = {
        "run": update.summary,
        "groups": update.groups if start == 0 else [],
        "nodes": _with_parents(update.nodes[start : start + MAX_NODES_PER_MESSAGE]),
        "pending": max(len(update.nodes) - start - MAX_NODES_PER_MESSAGE, 0),
    }
    return _sse("update", data, update.cursor)


async def _store_stream(vs: ViewerState, run_id: str, cursor: int) -> AsyncIterator[str]:
    """Updates of a run read from the store, as its checkpoints land (a read of the run's
    metadata every ``poll_interval``; its checkpoints only when that moved).

    The reading, the nodes and each message's JSON are made in threads (``_stored_update``,
    ``_update_message``): the event loop stays free for other requests. The stream ends as
    soon as the viewer closes, even while a read is under way (``_until_closing``)."""
    yield "retry: 2000\n\n"
    seen: tuple[float, int, str] | None = None
    quiet = 0.0
    try:
        while not vs.closing.is_set():
            try:
                info = await _until_closing(vs, vs.store.get_run(run_id))
                if info is None:
                    yield _sse("problem", {"error": f"run {run_id!r} is no longer in the store"})
                    return
                if (info.updated, info.checkpoints, info.status.value) != seen:
                    update = await _until_closing(
                        vs, in_thread(_stored_update, vs.store, run_id, cursor, vs.closing.is_set)
                    )
                    if update is None:
                        return  # (the viewer closed)
                    seen, cursor = update.seen, update.cursor
                    for start in range(0, max(len(update.nodes), 1), MAX_NODES_PER_MESSAGE):
                        message = await asyncio.to_thread(_update_message, update, start)
                        if vs.closing.is_set():
                            return
                        yield message
                    quiet = 0.0
                    if update.over:
                        yield _sse("end", {"run": update.summary}, cursor)
                        return
            except StoreProblem as exc:
                yield _sse("problem", {"error": exc.message})
            await _pause(vs, vs.poll_interval)
            quiet += vs.poll_interval
            if quiet >= HEARTBEAT:
                quiet = 0.0
                yield ": ping\n\n"
    except _Stopping:
        return


async def _api_events(request: Request) -> Response:
    vs = _vs(request)
    try:
        run_id = vs.store.check_run_id(request.path_params["run_id"])
        feed = vs.feeds.get(run_id)
        if feed is None and await vs.store.get_run(run_id) is None:
            raise StoreProblem(f"no run {run_id!r} in {vs.store.path}", status=404)
    except StoreProblem as exc:
        return _problem(exc, api=True)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        # The headers only: a stream started for a HEAD would run (and hold the connection,
        # whose next request then never gets an answer) until its run ends.
        return Response(media_type="text/event-stream", headers=headers)
    cursor = _cursor(request)
    if feed is not None:
        return _FeedResponse(vs, feed, cursor, headers)
    stream = _store_stream(vs, run_id, cursor)
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


# --- static files ---------------------------------------------------------------------------


def _static_files() -> dict[str, bytes]:
    folder = resources.files("rh_agents.ui").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _STATIC_TYPES}


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    files: Mapping[str, bytes] = request.app.state.static
    if name not in files:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        files[name], media_type=_STATIC_TYPES[name], headers={"Cache-Control": "no-cache"}
    )


_ROUTES_HINT = (
    "the runs list is at /, a run's page at /runs/RUN_ID (its timeline at "
    "/runs/RUN_ID/timeline), the JSON API under /api/runs (see docs/ui.md)"
)


async def _not_found(request: Request, exc: Exception) -> Response:
    """No route matched: a run id that cannot be one (a ``/`` in it) gets the rule, as any
    other invalid id does (400); anything else, where the pages are (404)."""
    path = request.url.path
    api = path.startswith("/api/")
    for prefix in ("/api/runs/", "/runs/"):
        if path.startswith(prefix):
            run_id = path[len(prefix) :].removesuffix("/events").removesuffix("/timeline")
            try:
                _vs(request).store.check_run_id(run_id)
            except StoreProblem as problem:
                return _problem(problem, api)
    return _problem(StoreProblem(f"no page at {path}: {_ROUTES_HINT}", status=404), api)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("viewer: %s %s failed", request.method, request.url.path, exc_info=exc)
    if request.url.path.startswith("/api/"):
        return _json({"error": f"the viewer failed: {type(exc).__name__}: {exc}"}, 500)
    message = f"The viewer failed on this page: {type(exc).__name__}: {exc}"
    return _html(pages.error_page("Viewer error", message), 500)


def check_intervals(poll_interval: Any, push_interval: Any) -> tuple[float, float]:
    """``(poll_interval, push_interval)`` as floats, or a ``ConfigurationError`` (a
    ``ValueError``) naming the one that is out of range: ``poll_interval`` a finite number of
    seconds >= ``MIN_POLL_INTERVAL``, ``push_interval`` a finite number >= 0 (0: every change
    sent at once). A bool, a string, NaN or an infinity is refused."""
    poll = check_number(
        "the viewer's poll_interval",
        poll_interval,
        minimum=MIN_POLL_INTERVAL,
        hint=" (seconds between two reads of a run's progress from the store; default 1.0)",
    )
    push = check_number(
        "the viewer's push_interval",
        push_interval,
        minimum=0.0,
        hint=" (seconds an event stream waits at least between two updates; default 0.25)",
    )
    return poll, push


def create_app(
    store: StoreReader | str | Any = None,
    *,
    feeds: dict[str, LiveFeed] | None = None,
    poll_interval: float = 1.0,
    push_interval: float = 0.25,
    allowed_hosts: Iterable[str] | None = LOCAL_HOSTS,
) -> Starlette:
    """The viewer app over ``store`` (a path, ``None`` for the default store, or a
    ``StoreReader``), with the runs of ``feeds`` watched live.

    ``allowed_hosts``: the ``Host`` names a request may use (``None``: any; the default
    is this machine's loopback names, which ``rh-agents ui`` widens to the ``--host`` given).
    ``poll_interval`` and ``push_interval``: see ``check_intervals`` (a ``ConfigurationError``
    here when out of range).
    """
    poll_interval, push_interval = check_intervals(poll_interval, push_interval)
    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    viewer = ViewerState(reader, feeds if feeds is not None else {}, poll_interval, push_interval)
    routes = [
        Route("/", _runs_page),
        Route("/runs/{run_id}", _run_page),
        Route("/runs/{run_id}/timeline", _timeline_page),
        Route("/api/runs", _api_runs),
        Route("/api/runs/{run_id}", _api_run),
        Route("/api/runs/{run_id}/events", _api_events),
        Route("/api/runs/{run_id}/timeline", _api_timeline),
        Route("/static/{name}", _static),
    ]
    middleware = [Middleware(_SecurityHeaders)]
    if allowed_hosts is not None:
        # One name alone is one name, not its letters (every request would be refused).
        hosts: list[Any] = (
            [allowed_hosts]
            if isinstance(allowed_hosts, str)
            else list(allowed_hosts)
            if isinstance(allowed_hosts, Iterable)
            else [None]
        )
        if not all(isinstance(host, str) and host for host in hosts):
            raise ConfigurationError(
                f"allowed_hosts takes host names ('localhost', '*.example.org') or None for "
                f"any, got {allowed_hosts!r:.80}"
            )
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: _not_found, Exception: _server_error},
    )
    app.state.viewer = viewer
    app.state.static = _static_files()
    return app
