"""``LiveFeed``: what the viewer knows of a run in progress.

A process that wants its run watched live has a feed follow its state (``serve(state)`` and
``Viewer.watch(state)`` do)::

    feed = LiveFeed("nightly", clock_now=state.clock.now)
    feed.follow(state)         # ... the run ...
    feed.finish()              # the run is over: what it logged is taken, the feed lets go

Following, the feed takes the run's calls and members from the state's ``RunWatch`` log
(``rh_agents.core.watch``: plain values appended by each call and member, no record built),
and from the bus only the few records of groups, retries and an interruption
(``FOLLOW_KINDS``). It takes the log as it is (``take``: a swap) and makes rows of it when a
reader asks (``sync``): a page all of it, a stream ``STREAM_BUDGET`` entries per update, so
that what watching costs the run is bounded per second, not per member. A feed can also be fed
every record by a bus subscription instead (``bus.subscribe(feed, kinds=LiveFeed.KINDS)``),
at the cost of a record built per call and member.

Either way it keeps what it needs in columns: one row per event or member address, in arrays
and lists that grow, and plain dict entries for the groups. Keeping a row allocates no object
the garbage collector tracks: a run of ten thousand members does not make every collection of
the run's own objects longer, which is what keeping records (or the run's objects) would cost.
Everything the pages and the event stream show (nodes, group counts, metrics, the timeline) is
worked out from the columns when a page or a stream asks, on the viewer's time rather than the
run's.

Readers (the viewer's pages and streams, on the same event loop) use ``changes_since(cursor)``
for what changed after a cursor, and ``wait(seconds)`` to sleep until the next change. A page
takes a ``snapshot()`` on the loop (copies of the columns) and works out its nodes and
timeline in a thread, off the run's loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import deque
from typing import TYPE_CHECKING, Any

from rh_agents.core.bus import Subscription
from rh_agents.core.events import DETAIL_CHARS, truncate
from rh_agents.core.parallel.metrics import Distribution
from rh_agents.core.records import (
    BusEvent,
    EventCompleted,
    EventFailed,
    EventReplayed,
    EventRetrying,
    EventStarted,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
    RunInterrupted,
)
from rh_agents.core.watch import CALL_ENDED, CALL_STARTED, MEMBER_FINISHED, RunWatch
from rh_agents.errors import ConfigurationError
from rh_agents.observability.timeline import Timeline, TimelineRecorder

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.history import ExecutionHistory

__all__ = ["DRAIN_EVERY", "MAX_CHANGES", "FeedSnapshot", "LiveFeed", "Node"]

# The change log is trimmed past this many entries (a reader left behind then starts over
# from a full snapshot: ``changes_since`` returns ``None``).
MAX_CHANGES = 500_000
# A feed that follows a state takes its log at least this often (seconds), read or not.
DRAIN_EVERY = 1.0
# While a stream waits for changes of a followed state, it looks this often (seconds).
LOOK_EVERY = 0.05
# An event stream makes rows of at most this many logged entries per update it sends.
STREAM_BUDGET = 2000
# Logged values a feed keeps before it makes rows of them, read or not (about 8 bytes each,
# plus the numbers they hold).
MAX_BACKLOG = 2_000_000
# Rows whose previews a feed that stops following makes per loop turn.
PREVIEW_CHUNK = 2000

Node = dict[str, Any]
"""A node as the API gives it: see ``rh_agents.ui.model``."""

_TIMEOUT_TYPES = ("TimeoutError", "ParallelTimeoutError")
_NAN = math.nan

# What a row holds, by the kind of its last record.
_STARTED, _COMPLETED, _FAILED, _CANCELLED, _MEMBER_STARTED, _MEMBER_FINISHED, _REPLAYED = range(
    1, 8
)
_EVENTS = (_STARTED, _COMPLETED, _FAILED, _CANCELLED, _REPLAYED)
_PREVIEWED = (_STARTED, _COMPLETED)  # the rows whose preview is made when shown
# Columns grow by this many rows at a time, filled with the defaults (a new row then only
# sets its address and group).
_CHUNK = 1024
_CHUNK_FLOATS = array("d", (0.0, _NAN, _NAN) * _CHUNK)
_CHUNK_INTS = array("l", (1, -1) * _CHUNK)
_CHUNK_STRINGS: list[str | None] = [None] * (6 * _CHUNK)
_CHUNK_ROWS: list[str | None] = [None] * _CHUNK


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


class _Rows:
    """Rows in columns, one per event or member address (see ``LiveFeed``), and what is
    worked out from them: a feed's own columns, which grow, or a snapshot's copies."""

    offset: float
    size: int
    retries: dict[str, int]
    _address: list[str | None]
    _group: list[str | None]
    _kind: bytearray
    _floats: array[float]
    _ints: array[int]
    _strings: list[str | None]

    def _preview(self, row: int) -> str | None:
        preview = self._strings[6 * row + 2]
        return preview or None

    def when(self, timestamp: float) -> float:
        return timestamp + self.offset

    def _status(self, row: int) -> str:
        kind = self._kind[row]
        if kind in (_COMPLETED, _REPLAYED):
            return "completed"
        if kind in (_STARTED, _MEMBER_STARTED):
            return "running"
        if kind == _CANCELLED:
            return "cancelled"
        if kind == _FAILED:
            return "timed_out" if self._strings[6 * row + 4] in _TIMEOUT_TYPES else "failed"
        return self._strings[6 * row + 1] or "running"  # a finished member: its own status

    def _node(self, row: int) -> Node:
        """The node of ``row`` (an event or a member)."""
        kind = self._kind[row]
        index = self._ints[2 * row + 1]
        timestamp = self._floats[3 * row]
        duration = _number(self._floats[3 * row + 1])
        node: Node = {
            "address": self._address[row],
            "group_id": self._group[row],
            "index": None if index < 0 else index,
            "retries": self.retries.get(self._address[row] or "", 0),
            "status": self._status(row),
            "attempts": self._ints[2 * row],
            "duration": duration,
            "error": self._strings[6 * row + 3],
            "order": timestamp - (duration or 0.0),
        }
        if kind in (_MEMBER_STARTED, _MEMBER_FINISHED):
            node.update(kind="member", name=self._strings[6 * row], actor=None)
            node["queue_wait"] = _number(self._floats[3 * row + 2])
            if kind == _MEMBER_STARTED:
                node["started"] = self.when(timestamp)
            else:
                node["finished"] = self.when(timestamp)
            return node
        node.update(
            kind="event",
            name=None,
            actor=self._strings[6 * row],
            actor_kind=self._strings[6 * row + 1],
        )
        if kind == _STARTED:
            node.update(started=self.when(timestamp), input=self._preview(row))
        else:
            node["finished"] = self.when(timestamp)
            if kind in (_COMPLETED, _REPLAYED):
                node.update(result=self._preview(row), source=self._strings[6 * row + 5])
            else:
                node["error_type"] = self._strings[6 * row + 4]
        return node

    def _members(self, group_id: str) -> list[int]:
        """The rows of ``group_id``'s members, in the order they were first seen."""
        groups, kinds = self._group, self._kind
        return [
            row
            for row in range(len(kinds))
            if groups[row] == group_id and kinds[row] in (_MEMBER_STARTED, _MEMBER_FINISHED)
        ]

    def _running_metrics(self, group_id: str) -> Node:
        """Queue waits and run times of the members finished so far."""
        runs: list[float] = []
        waits: list[float] = []
        for row in self._members(group_id):
            if self._kind[row] == _MEMBER_FINISHED:
                runs.append(self._floats[3 * row + 1])
                if not math.isnan(self._floats[3 * row + 2]):
                    waits.append(self._floats[3 * row + 2])
        return {
            "run_time": Distribution.of(runs).as_dict(),
            "queue_wait": Distribution.of(waits).as_dict(),
            "retries": sum(
                count
                for address, count in self.retries.items()
                if address.startswith(group_id + "[")
            ),
        }

    def _member_record(self, row: int) -> BusEvent:
        """A member's last record, rebuilt from its row (for ``TimelineRecorder``)."""
        group_id = self._group[row] or ""
        address = self._address[row] or ""
        attempts, index = self._ints[2 * row : 2 * row + 2]
        timestamp, duration, wait = self._floats[3 * row : 3 * row + 3]
        name, status, _, error, _, _ = self._strings[6 * row : 6 * row + 6]
        if self._kind[row] == _MEMBER_STARTED:
            return MemberStarted.of_member(
                group_id, index, address, name, timestamp, _number(wait) or 0.0, None
            )
        return MemberFinished.of_member(
            group_id, index, address, name, timestamp, status or "completed", duration, error,
            0, 0, None, attempts, _number(wait),
        )  # fmt: skip

    def _add_metrics(self, group: Node, completed: GroupCompleted | None) -> None:
        """``group``'s metrics: its own snapshot once it completed, else worked out from the
        members finished so far."""
        if completed is not None:
            snapshot = getattr(completed.metrics, "as_dict", None)
            group["metrics"] = snapshot() if callable(snapshot) else None
            group["metrics_source"] = "group"
        else:
            group["metrics"] = self._running_metrics(group["group_id"])
            group["metrics_source"] = "so far"

    def _timeline(
        self,
        started: list[GroupStarted],
        retries: list[EventRetrying],
        completed: list[GroupCompleted],
        group_id: str | None,
        title: str,
    ) -> Timeline:
        def inside(address: str) -> bool:
            return group_id is None or address == group_id or address.startswith(group_id + "[")

        recorder = TimelineRecorder()
        for record in started:
            if inside(record.address):
                recorder(record)
        for row, kind in enumerate(self._kind):
            if kind in (_MEMBER_STARTED, _MEMBER_FINISHED) and inside(self._group[row] or ""):
                recorder(self._member_record(row))
        for retry in retries:
            if retry.group_id is not None and inside(retry.group_id):
                recorder(retry)
        for done in completed:
            if inside(done.address):
                recorder(done)
        return recorder.timeline(title)


class FeedSnapshot(_Rows):
    """A ``LiveFeed`` as it was (``LiveFeed.snapshot``): copies of its columns, its groups
    (counts, without metrics) and its group and retry records. Nothing else holds the copies
    and the records do not change once published, so ``nodes``, ``groups`` and ``timeline``
    may run in another thread while the feed goes on changing on the loop."""

    def __init__(self, feed: LiveFeed, groups: list[Node], completed: list[GroupCompleted]) -> None:
        size = self.size = feed.size
        self.offset = feed.offset
        self.retries = dict(feed.retries)
        self._address = feed._address[:size]
        self._group = feed._group[:size]
        self._kind = feed._kind[:size]
        self._floats = feed._floats[: 3 * size]
        self._ints = feed._ints[: 2 * size]
        self._strings = feed._strings[: 6 * size]
        self._groups = groups
        self._started = list(feed.started.values())
        self._completed = completed
        self._retry_records = list(feed.retry_records)

    def nodes(self) -> list[Node]:
        """Every node, in the order first seen (as ``LiveFeed.all_nodes``)."""
        return [self._node(row) for row in range(self.size)]

    def groups(self) -> list[Node]:
        """The groups with their metrics (as ``LiveFeed.groups``)."""
        completed = {record.address: record for record in self._completed}
        out = []
        for group in self._groups:
            group = dict(group)
            self._add_metrics(group, completed.get(group["group_id"]))
            out.append(group)
        return out

    def timeline(self, group_id: str | None = None, *, title: str = "") -> Timeline:
        """As ``LiveFeed.timeline``."""
        return self._timeline(self._started, self._retry_records, self._completed, group_id, title)


class LiveFeed(_Rows):
    """The records of one run, kept for the viewer; see the module docstring.

    ``run_id`` names the run in the viewer; ``clock_now`` is the run's clock (record timestamps
    are on it), used once to turn them into wall-clock times.
    """

    KINDS: tuple[type[BusEvent], ...] = (
        EventStarted,
        EventCompleted,
        EventFailed,
        EventReplayed,
        EventRetrying,
        GroupStarted,
        GroupCompleted,
        MemberStarted,
        MemberFinished,
        RunInterrupted,
    )

    # What a feed that follows a state (``follow``) takes from its bus: the few records of
    # groups and retries. Calls and members come from the state's ``RunWatch`` log.
    FOLLOW_KINDS: tuple[type[BusEvent], ...] = (
        GroupStarted,
        GroupCompleted,
        EventRetrying,
        RunInterrupted,
    )

    def __init__(self, run_id: str, *, clock_now: Any = time.perf_counter) -> None:
        self.run_id = run_id
        self.created = time.time()
        # Wall-clock seconds = record timestamp + offset.
        self.offset = self.created - float(clock_now())
        # One row per event or member address: its last record, in columns. Several fields
        # share a column, a row taking a fixed number of slots in it: floats (timestamp,
        # execution time, queue wait: nan when unknown), ints (attempts, parallel index: -1
        # when none) and strings (actor or member name, actor kind or member status, detail,
        # error, error type, source).
        self.rows: dict[str, int] = {}
        self.size = 0  # rows in use (the columns hold room for more)
        self._capacity = 0
        self._address: list[str | None] = []
        self._group: list[str | None] = []
        self._kind = bytearray()
        self._floats = array("d")
        self._ints = array("l")
        self._strings: list[str | None] = []
        # Groups: their records (a few per group) and each one's latest counts.
        self.started: dict[str, GroupStarted] = {}
        self.completed: dict[str, GroupCompleted] = {}
        # Each group's latest finished member, for its counts (one record kept per group).
        self.progress: dict[str, MemberFinished] = {}
        self.retries: dict[str, int] = {}  # retries announced, by event address
        self.retry_records: list[EventRetrying] = []  # (rare) for the timeline's diamonds
        self.changes: list[str] = []  # addresses (events, members, groups) as they changed
        self.base = 0  # the position of changes[0] in the whole log (it is trimmed)
        self.records = 0
        self.last_record = self.created
        self.status: str | None = None  # final status, once the run is known to be over
        self.finished: float | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._counts: tuple[int, dict[str, int], int] | None = None
        # Following a state (``follow``): its watch, the bus subscription, the drain timer,
        # and each open group's counts as last read (kept for the moment between the group's
        # end and its GroupCompleted record).
        self._watch: RunWatch | None = None
        self._followed: ExecutionState | None = None
        self._subscription: Subscription | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._counts_seen: dict[str, tuple[int, int, int | None]] = {}
        # A followed run's previews, made when shown: the inputs of its running calls (by
        # row), and its history (results), kept until the feed stops following.
        self._inputs: dict[int, tuple[Any, int]] = {}
        self._history: ExecutionHistory | None = None
        self._chars: dict[int, int] = {}  # a call's own detail_chars, where not the default
        self._previews_from = 0  # (unfollow makes the previews left, a chunk at a time)
        # Logs handed over and not made rows of yet: [log, inputs, position, inputs used].
        self._backlog: deque[list[Any]] = deque()
        self._backlog_size = 0  # their entries' values not taken yet (at most MAX_BACKLOG)

    # --- the subscriber (the run's hot path) --------------------------------------------------

    def __call__(self, record: BusEvent) -> None:
        self.handle_batch(deque((record,)))

    def _grow(self) -> None:
        self._address.extend(_CHUNK_ROWS)
        self._group.extend(_CHUNK_ROWS)
        self._kind.extend(bytes(_CHUNK))
        self._floats.extend(_CHUNK_FLOATS)
        self._ints.extend(_CHUNK_INTS)
        self._strings.extend(_CHUNK_STRINGS)
        self._capacity += _CHUNK

    def _new_row(self, address: str, group_id: str | None, index: int | None) -> int:
        row = self.size
        if row == self._capacity:
            self._grow()
        self.size = row + 1
        self.rows[address] = row
        self._address[row] = address
        self._group[row] = group_id
        if index is not None:
            self._ints[2 * row + 1] = index
        return row

    def handle_batch(self, queue: deque[BusEvent]) -> None:
        """Keep what the viewer needs of every record of ``queue`` (popped from the left, as
        the bus asks)."""
        changes, rows, kinds, progress = self.changes, self.rows, self._kind, self.progress
        floats, ints, strings = self._floats, self._ints, self._strings
        pop = queue.popleft
        count = 0
        while queue:
            record = pop()
            count += 1
            cls = type(record)
            address = record.address
            if cls is MemberFinished:
                finished: MemberFinished = record  # type: ignore[assignment]
                row = rows.get(address)
                if row is None:
                    row = self._new_row(address, record.group_id, record.parallel_index)
                kinds[row] = _MEMBER_FINISHED
                f, s = 3 * row, 6 * row
                wait = finished.queue_wait
                floats[f] = finished.timestamp
                floats[f + 1] = finished.execution_time
                floats[f + 2] = _NAN if wait is None else wait
                ints[2 * row] = finished.attempts
                strings[s] = finished.name
                strings[s + 1] = finished.status
                strings[s + 3] = finished.error
                progress[finished.group_id] = finished  # type: ignore[index]
            elif cls is EventCompleted:
                done: EventCompleted = record  # type: ignore[assignment]
                row = rows.get(address)
                if row is None:
                    row = self._new_row(address, record.group_id, record.parallel_index)
                kinds[row] = _COMPLETED
                f, s = 3 * row, 6 * row
                floats[f] = done.timestamp
                floats[f + 1] = done.execution_time
                ints[2 * row] = done.attempts
                strings[s] = done.actor
                strings[s + 1] = done.actor_kind
                strings[s + 2] = done.detail
                strings[s + 5] = done.source
            elif cls is EventStarted:
                begun: EventStarted = record  # type: ignore[assignment]
                row = rows.get(address)
                if row is None:
                    row = self._new_row(address, record.group_id, record.parallel_index)
                kinds[row] = _STARTED
                s = 6 * row
                floats[3 * row] = begun.timestamp
                strings[s] = begun.actor
                strings[s + 1] = begun.actor_kind
                strings[s + 2] = begun.detail
            elif cls is EventFailed:
                failed: EventFailed = record  # type: ignore[assignment]
                row = rows.get(address)
                if row is None:
                    row = self._new_row(address, record.group_id, record.parallel_index)
                kinds[row] = _CANCELLED if failed.cancelled else _FAILED
                f, s = 3 * row, 6 * row
                floats[f] = failed.timestamp
                floats[f + 1] = failed.execution_time
                ints[2 * row] = failed.attempts
                strings[s] = failed.actor
                strings[s + 1] = failed.actor_kind
                strings[s + 3] = failed.error
                strings[s + 4] = failed.error_type
            elif cls is MemberStarted:
                member: MemberStarted = record  # type: ignore[assignment]
                row = rows.get(address)
                if row is None:
                    row = self._new_row(address, record.group_id, record.parallel_index)
                kinds[row] = _MEMBER_STARTED
                floats[3 * row] = member.timestamp
                floats[3 * row + 2] = member.queue_wait
                strings[6 * row] = member.name
                strings[6 * row + 1] = "running"
            elif cls is EventReplayed:
                replayed: EventReplayed = record  # type: ignore[assignment]
                row = rows.get(address)
                if row is None:
                    row = self._new_row(address, record.group_id, record.parallel_index)
                kinds[row] = _REPLAYED
                f, s = 3 * row, 6 * row
                floats[f] = replayed.timestamp
                floats[f + 1] = replayed.execution_time
                ints[2 * row] = replayed.attempts
                strings[s] = replayed.actor
                strings[s + 1] = replayed.actor_kind
                strings[s + 5] = "replay"
            elif cls is RunInterrupted:
                self.finish("interrupted")
            elif cls is EventRetrying:
                self.retries[address] = self.retries.get(address, 0) + 1
                self.retry_records.append(record)  # type: ignore[arg-type]
            elif cls is GroupStarted:
                self.started[address] = record  # type: ignore[assignment]
            elif cls is GroupCompleted:
                self.completed[address] = record  # type: ignore[assignment]
            else:
                continue
            changes.append(address)
        self._changed(count)

    # --- following a state: its watch log, read on the viewer's time ------------------------

    def follow(self, state: ExecutionState) -> None:
        """Watch ``state``'s run: its group and retry records from the bus, its calls and
        members from the state's ``RunWatch`` log (no record built per call or member), read
        whenever a page or a stream asks, and at least every ``DRAIN_EVERY`` seconds."""
        if self._followed is not None:
            raise ConfigurationError(f"the feed of run {self.run_id!r} already follows a state")
        if self.status is not None:
            raise ConfigurationError(
                f"the feed of run {self.run_id!r} is finished ({self.status}); follow a new "
                "run with a new LiveFeed (Viewer.watch(state) makes one)"
            )
        watch = RunWatch.of(state)
        watch.readers.append(self.take)
        self._watch = watch
        self._followed = state
        self._history = state.history
        self._subscription = state.event_bus.subscribe(self, kinds=self.FOLLOW_KINDS)
        self._schedule_drain()

    def unfollow(self) -> None:
        """Stop following the state (what it logged so far is taken first)."""
        watch, state = self._watch, self._followed
        if watch is None or state is None:
            return
        self.sync()
        watch.detach(self.take, state)
        if self._take_on_group in watch.on_group:
            watch.on_group.remove(self._take_on_group)
        self._inputs.clear()
        # The previews not made yet are made now (the feed keeps strings, not the run's
        # results), a chunk per loop turn: a run of 100,000 calls would hold the loop for a
        # good part of a second otherwise.
        self._previews_from = 0
        self._make_previews()
        self._watch = None
        self._followed = None
        if self._subscription is not None:
            state.event_bus.unsubscribe(self._subscription)
            self._subscription = None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _make_previews(self) -> None:
        """Make the previews of completed calls from ``_previews_from`` on, ``PREVIEW_CHUNK``
        rows per loop turn (all at once outside a loop); then let go of the history."""
        if self._followed is not None:
            # Followed again meanwhile: the history is the new run's; this chain stops (the
            # next unfollow makes what is left).
            return
        kinds, strings, size = self._kind, self._strings, self.size
        row = self._previews_from
        end = size
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            end = min(size, row + PREVIEW_CHUNK)
        while row < end:
            if kinds[row] == _COMPLETED and strings[6 * row + 2] is None:
                self._preview(row)
            row += 1
        self._previews_from = row
        if row < size and loop is not None:
            loop.call_soon(self._make_previews)
            return
        self._history = None
        self._chars.clear()

    def _schedule_drain(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Followed from outside a loop: the timer starts on the run's loop, as its next
            # group opens (pages and streams take the log whenever they read, meanwhile).
            if self._watch is not None:
                self._watch.on_group.append(self._take_on_group)
            return
        self._drain_timer = loop.call_later(DRAIN_EVERY, self._drain_tick)

    def _take_on_group(self) -> None:
        if self._watch is not None and self._drain_timer is None:
            self._schedule_drain()

    def _drain_tick(self) -> None:
        # The log's entries hold the inputs of calls and pile up: taken regularly, even with
        # no page open, into the backlog (plain values; MAX_BACKLOG bounds it).
        self._drain_timer = None
        if self._watch is not None:
            self._watch.drain()
            self._schedule_drain()

    def sync(self, budget: int | None = None) -> None:
        """Take what the followed state logged (at most ``budget`` entries of it; ``None``:
        all), and the members its open groups run now. A no-op for a feed fed by records.

        Pages take everything; an event stream takes ``STREAM_BUDGET`` entries at a time (it
        sends at most ``MAX_NODES_PER_MESSAGE`` nodes per update anyway), so that what a
        watched run costs its event loop is bounded per second, not per member: the rest
        waits in ``_backlog``, as the plain values it was logged as.
        """
        watch = self._watch
        if watch is not None:
            watch.drain()  # (into _backlog: take)
        if self._backlog:
            self._materialize(budget)
        if watch is None:
            return
        changes, rows, floats, strings = self.changes, self.rows, self._floats, self._strings
        before = len(changes)
        for group_id, member in watch.running_members():
            address = member.address or f"{group_id}[{member.index}]"
            if address in rows:
                continue
            started = member.started
            if started is None:
                continue
            row = self._new_row(address, group_id, member.index)
            self._kind[row] = _MEMBER_STARTED
            floats[3 * row] = started
            floats[3 * row + 2] = started - member.enqueued
            strings[6 * row] = member.name
            strings[6 * row + 1] = "running"
            changes.append(address)
        for group_id in watch.groups:
            counts = watch.progress(group_id)
            if counts is not None and counts != self._counts_seen.get(group_id):
                self._counts_seen[group_id] = counts
                changes.append(group_id)
        if len(changes) != before:
            self._changed(len(changes) - before)

    @property
    def behind(self) -> bool:
        """Whether the followed state logged entries this feed has not taken yet."""
        return bool(self._backlog) or (self._watch is not None and bool(self._watch.log))

    def take(self, log: list[Any], inputs: list[Any]) -> None:
        """The followed state's ``RunWatch`` hands over what it logged (``log``, in order,
        with the inputs of the calls it starts; see ``rh_agents.core.watch``): kept as it is,
        in ``_backlog``, until a reader asks (``sync``)."""
        self._backlog.append([log, inputs, 0, 0])
        self.last_record = time.time()
        self._backlog_size += len(log)
        if self._backlog_size > MAX_BACKLOG:
            # Nobody reads as fast as the run logs: make rows of the excess (rows take less
            # room than the log's values, and hold no input). An entry is 8 to 14 values.
            self._materialize((self._backlog_size - MAX_BACKLOG // 2) // 8 + 1)

    def _materialize(self, budget: int | None) -> None:
        """Make rows of the backlog's entries, oldest first: all of them, or ``budget``."""
        backlog = self._backlog
        while backlog and (budget is None or budget > 0):
            segment = backlog[0]
            log, inputs, at, used = segment
            at, used, count = self._rows_of(log, inputs, at, used, budget)
            self._backlog_size -= at - segment[2]
            if budget is not None:
                budget -= count
            if at >= len(log):
                backlog.popleft()
            else:
                segment[2], segment[3] = at, used

    def _rows_of(
        self, log: list[Any], inputs: list[Any], at: int, used: int, budget: int | None
    ) -> tuple[int, int, int]:
        """Make rows of ``log``'s entries from position ``at`` (``used``: the inputs taken so
        far), at most ``budget`` entries; gives the position and inputs reached, and the
        entries taken.

        Every member and call of the run passes here, so it does the least it can: the rows'
        fields, and the inputs of calls that are running. The previews (a running call's
        input, a completed call's result) are made when a node is shown (``_preview``).
        """
        changes, rows, kinds = self.changes, self.rows, self._kind
        floats, ints, strings = self._floats, self._ints, self._strings
        addresses, groups = self._address, self._group
        waiting = self._inputs
        end, count = len(log), 0
        limit = end if budget is None else budget
        while at < end and count < limit:
            what = log[at]
            count += 1
            address = log[at + 1]
            row = rows.get(address)
            if row is None:  # a new row (as _new_row, inline: once per member and call)
                row = self.size
                if row == self._capacity:
                    self._grow()
                self.size = row + 1
                rows[address] = row
                addresses[row] = address
                groups[row] = log[at + 2]
                index = log[at + 3]
                if index is not None:
                    ints[2 * row + 1] = index
            f, s = 3 * row, 6 * row
            if what == MEMBER_FINISHED:
                # address, group_id, index, name, started, enqueued, execution_time,
                # attempts, status, error, ended
                kinds[row] = _MEMBER_FINISHED
                started = log[at + 5]
                took = log[at + 7]
                if started is None:  # never ran
                    floats[f] = log[at + 11]
                    floats[f + 2] = _NAN
                else:
                    floats[f] = started + took
                    floats[f + 2] = started - log[at + 6]
                floats[f + 1] = took
                ints[2 * row] = log[at + 8]
                strings[s] = log[at + 4]
                strings[s + 1] = log[at + 9]
                strings[s + 3] = log[at + 10]
                at += 12
            elif what == CALL_ENDED:
                # address, group_id, index, actor, actor_kind, timestamp, execution_time,
                # attempts, status, error, error_type, source, detail_chars
                if waiting and row in waiting:
                    del waiting[row]
                floats[f] = log[at + 6]
                floats[f + 1] = log[at + 7]
                ints[2 * row] = log[at + 8]
                strings[s] = log[at + 4]
                strings[s + 1] = log[at + 5]
                status = log[at + 9]
                source = log[at + 12]
                if source == "replayed":  # announced as a replay (EventReplayed)
                    kinds[row] = _REPLAYED
                    strings[s + 5] = "replay"
                elif status == "completed":
                    kinds[row] = _COMPLETED
                    strings[s + 2] = None  # (its result's preview: made when shown)
                    if log[at + 13] != DETAIL_CHARS:
                        self._chars[row] = log[at + 13]
                    strings[s + 5] = source
                else:
                    kinds[row] = _CANCELLED if status == "cancelled" else _FAILED
                    error_type = log[at + 11]
                    if status == "timed_out" and error_type not in _TIMEOUT_TYPES:
                        error_type = "TimeoutError"
                    strings[s + 3] = log[at + 10]
                    strings[s + 4] = error_type
                at += 14
            elif what == CALL_STARTED:
                # address, group_id, index, actor, actor_kind, timestamp, detail_chars
                kinds[row] = _STARTED
                floats[f] = log[at + 6]
                strings[s] = log[at + 4]
                strings[s + 1] = log[at + 5]
                strings[s + 2] = None
                waiting[row] = (inputs[used], log[at + 7])
                used += 1
                at += 8
            else:
                raise ValueError(f"a RunWatch log entry of unknown kind {what!r} at {at}")
            changes.append(address)
        self._changed(count)
        return at, used, count

    def _preview(self, row: int) -> str | None:
        """A followed call's preview, made on first need: a running call's input, a
        completed call's result (from the state's history)."""
        strings = self._strings
        preview = strings[6 * row + 2]
        if preview is not None:
            return preview or None
        kind = self._kind[row]
        if kind == _STARTED:
            waiting = self._inputs.get(row)
            if waiting is None:
                return None
            preview = truncate(*waiting)
        elif kind == _COMPLETED and self._history is not None:
            call = self._history.get(self._address[row] or "")
            if call is None:
                return None
            preview = truncate(call.result.result, self._chars.get(row, DETAIL_CHARS))
        else:
            return None
        strings[6 * row + 2] = preview
        return preview or None

    def _changed(self, count: int) -> None:
        """``count`` more records or entries were taken: trim the change log, wake readers."""
        if count:
            self.records += count
            self.last_record = time.time()
            changes = self.changes
            if len(changes) > MAX_CHANGES:
                drop = len(changes) // 2
                del changes[:drop]
                self.base += drop
            self._wake()

    # --- the run's end ------------------------------------------------------------------------

    def finish(self, status: str = "completed") -> None:
        """The run is over (``completed``, ``failed`` or ``interrupted``): streams end."""
        if self.status is None:
            self.unfollow()  # (what the run logged before its end is taken first)
            self.status = status
            self.finished = time.time()
            self._wake()

    @property
    def running(self) -> bool:
        return self.status is None

    # --- readers ------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, seconds: float) -> None:
        """Return after the next change (or the run's end), or after ``seconds``. (A feed
        following a state looks every ``LOOK_EVERY`` seconds whether the state logged
        anything: ``behind``.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        cursor = self.cursor
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if self._waiter is None or self._waiter.done():
                self._waiter = loop.create_future()
            step = remaining if self._watch is None else min(remaining, LOOK_EVERY)
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), step)
            except TimeoutError:
                pass
            self.sync(0)  # (members started and counts moved: nothing logs those)
            if self.cursor != cursor or self.status is not None or self.behind:
                return

    @property
    def cursor(self) -> int:
        """The position after the last change taken; pass it to ``changes_since`` later."""
        return self.base + len(self.changes)

    def changes_since(self, cursor: int) -> list[str] | None:
        """Addresses changed after ``cursor`` (each once, in the order of their last change),
        or ``None`` when the log no longer reaches back that far (start over). A followed
        state's log is taken first, ``STREAM_BUDGET`` entries of it at most."""
        self.sync(STREAM_BUDGET)
        if cursor < self.base:
            return None
        recent = self.changes[cursor - self.base :]
        seen: dict[str, None] = {}
        for address in reversed(recent):
            if address not in seen:
                seen[address] = None
        return list(reversed(seen))

    # --- what the viewer shows ----------------------------------------------------------------

    def node(self, address: str) -> Node | None:
        """The node at ``address`` (an event or a member), or ``None``."""
        row = self.rows.get(address)
        return None if row is None else self._node(row)

    def is_group(self, address: str) -> bool:
        return address in self.started or address in self.completed or address in self._counts_seen

    def group_of(self, address: str) -> str | None:
        row = self.rows.get(address)
        return None if row is None else self._group[row]

    def event_counts(self) -> tuple[dict[str, int], int]:
        """Finished events by status, and the number still running (kept until the next
        batch of records: a stream asks for them at every update)."""
        cached = self._counts
        if cached is not None and cached[0] == self.records:
            return cached[1], cached[2]
        counts: dict[str, int] = {}
        running = 0
        for row, kind in enumerate(self._kind):
            if kind not in _EVENTS:
                continue
            if kind == _STARTED:
                running += 1
                continue
            status = self._status(row)
            counts[status] = counts.get(status, 0) + 1
        self._counts = (self.records, counts, running)
        return counts, running

    def all_nodes(self) -> list[Node]:
        """Every node, in the order first seen (all the followed state logged, taken first)."""
        return self.snapshot().nodes()

    def group_ids(self) -> list[str]:
        self.sync()
        ids = dict.fromkeys(self.started)
        ids.update(dict.fromkeys(self.progress))
        ids.update(dict.fromkeys(self._counts_seen))
        ids.update(dict.fromkeys(self.completed))
        return list(ids)

    def group(self, group_id: str, *, metrics: bool = True) -> Node | None:
        """A group's counts and status; ``metrics``: also its metrics snapshot (the group's
        own when it completed, else worked out from the members finished so far)."""
        started = self.started.get(group_id)
        completed = self.completed.get(group_id)
        counts = self.progress.get(group_id)
        if (
            started is None
            and counts is None
            and completed is None
            and group_id not in self._counts_seen
        ):
            return None
        if started is not None:
            name = started.name
        elif completed is not None:
            name = completed.name
        else:
            name = group_id.rsplit("::", 1)[-1]
        group: Node = {
            "group_id": group_id,
            "name": name,
            "parent_group_id": started.parent_group_id if started is not None else None,
            "max_workers": started.max_workers if started is not None else None,
            "started": self.when(started.timestamp) if started is not None else None,
            "order": started.timestamp if started is not None else 0.0,
        }
        quorum = started.quorum if started is not None else None
        if completed is not None and completed.quorum is not None:
            quorum = completed.quorum
        if quorum is not None:
            group["quorum"] = quorum
        if completed is not None:
            if completed.quorum_reached:
                # It did what was asked: the members it then cancelled were not needed.
                group["quorum_reached"] = True
            group.update(
                status=completed.status,
                total=completed.total,
                done=completed.total,
                succeeded=completed.succeeded,
                failed=completed.failed + completed.timed_out,
                cancelled=completed.cancelled,
                skipped=completed.skipped,
                wall_time=completed.wall_time,
                finished=self.when(completed.timestamp),
            )
            if metrics:
                self._add_metrics(group, completed)
            return group
        seen = self._counts_seen.get(group_id)
        if self._watch is not None and (now := self._watch.progress(group_id)) is not None:
            seen = now
        if seen is not None:  # (a followed state's group: its tally, read now or last)
            done, succeeded, total = seen
            failed = done - succeeded
        elif counts is not None:
            done, succeeded, failed, total = (
                counts.done, counts.succeeded, counts.failed, counts.total
            )  # fmt: skip
        else:
            done, succeeded, failed, total = 0, 0, 0, None
        if total is None:
            if seen is not None or counts is not None:
                # A map() whose input is still being read: its size is not known yet.
                group["total_known"] = False
            total = max(done, started.total if started is not None else 0)
        group.update(status="running", total=total, done=done, succeeded=succeeded, failed=failed)
        if metrics:
            self._add_metrics(group, None)
        return group

    def groups(self, *, metrics: bool = True) -> list[Node]:
        return [g for gid in self.group_ids() if (g := self.group(gid, metrics=metrics))]

    def timeline(self, group_id: str | None = None, *, title: str = "") -> Timeline:
        """The run's timeline (``TimelineRecorder`` fed the group and member records), or
        only ``group_id`` and the groups nested in its members."""
        return self.snapshot(previews=False).timeline(group_id, title=title)

    def snapshot(self, *, previews: bool = True) -> FeedSnapshot:
        """What the feed knows now (all the followed state logged, taken first), as copies
        that nothing else holds: a ``FeedSnapshot``, whose nodes, groups and timeline can be
        worked out in another thread while the run goes on. Taking it costs copies of the
        columns (memory copies, a few milliseconds for 100,000 rows), and ``previews``: the
        previews of the calls not made yet (they read the run's inputs and results, which
        only the loop may), for the snapshot's nodes (a timeline needs none)."""
        groups = self.groups(metrics=False)  # (takes what the followed state logged)
        if previews:
            kinds, strings = self._kind, self._strings
            for row in range(self.size):
                if kinds[row] in _PREVIEWED and strings[6 * row + 2] is None:
                    self._preview(row)
        completed = list(self.completed.values())
        for record in completed:
            _ = record.metrics  # (made now, on the loop: it reads the group)
        return FeedSnapshot(self, groups, completed)
