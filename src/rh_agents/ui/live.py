"""``LiveFeed``: what the viewer knows of a run in progress, kept from the run's bus records.

A process that wants its run watched live subscribes one feed to the run's bus (``serve(state)``
and ``Viewer.watch(state)`` do)::

    feed = LiveFeed("nightly")
    bus.subscribe(feed, kinds=LiveFeed.KINDS)

The feed is built to cost the run as little as a subscriber can: it takes its records in
batches (``handle_batch``) and keeps each one as it came, by address, with no conversion and no
allocation of its own beyond a dict entry and a list slot. Everything the pages and the event
stream show (nodes, group counts, metrics, the timeline) is worked out from those records when a
page or a stream asks, on the viewer's time rather than the run's.

Readers (the viewer's pages and streams, on the same event loop) use ``changes_since(cursor)``
for what changed after a cursor, and ``wait(timeout)`` to sleep until the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from rh_agents.core.parallel.metrics import Distribution
from rh_agents.core.records import (
    BusEvent,
    EventCompleted,
    EventFailed,
    EventRetrying,
    EventStarted,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
)
from rh_agents.observability.timeline import Timeline, TimelineRecorder

__all__ = ["MAX_CHANGES", "LiveFeed", "Node"]

# The change log is trimmed past this many entries (a reader left behind then starts over
# from a full snapshot: ``changes_since`` returns ``None``).
MAX_CHANGES = 500_000

Node = dict[str, Any]
"""A node as the API gives it: see ``rh_agents.ui.model``."""

_TIMEOUT_TYPES = ("TimeoutError", "ParallelTimeoutError")


class LiveFeed:
    """The records of one run, kept for the viewer; see the module docstring.

    ``run_id`` names the run in the viewer; ``clock_now`` is the run's clock (record timestamps
    are on it), used once to turn them into wall-clock times.
    """

    KINDS: tuple[type[BusEvent], ...] = (
        EventStarted,
        EventCompleted,
        EventFailed,
        EventRetrying,
        GroupStarted,
        GroupCompleted,
        MemberStarted,
        MemberFinished,
    )

    def __init__(self, run_id: str, *, clock_now: Any = time.perf_counter) -> None:
        self.run_id = run_id
        self.created = time.time()
        # Wall-clock seconds = record timestamp + offset.
        self.offset = self.created - float(clock_now())
        self.nodes: dict[str, BusEvent] = {}  # the latest record of each event and member
        self.started: dict[str, GroupStarted] = {}
        self.completed: dict[str, GroupCompleted] = {}
        self.progress: dict[str, MemberFinished] = {}  # each group's latest finished member
        self.retries: dict[str, int] = {}  # retries announced, by event address
        self.timeline_records: list[BusEvent] = []  # what TimelineRecorder takes, in order
        self.changes: list[str] = []  # addresses (events, members, groups) as they changed
        self.base = 0  # the position of changes[0] in the whole log (it is trimmed)
        self.records = 0
        self.last_record = self.created
        self.status: str | None = None  # final status, once the run is known to be over
        self.finished: float | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._counts: tuple[int, dict[str, int], int] | None = None

    # --- the subscriber (the run's hot path) --------------------------------------------------

    def __call__(self, record: BusEvent) -> None:
        self.handle_batch(deque((record,)))

    def handle_batch(self, queue: deque[BusEvent]) -> None:
        """Keep every record of ``queue`` (popped from the left, as the bus asks)."""
        nodes, changes, timeline = self.nodes, self.changes, self.timeline_records
        pop = queue.popleft
        count = 0
        while queue:
            record = pop()
            count += 1
            cls = type(record)
            address = record.address
            if cls is MemberFinished:
                nodes[address] = record
                self.progress[record.group_id] = record  # type: ignore[index,assignment]
                timeline.append(record)
            elif cls is EventCompleted or cls is EventStarted or cls is EventFailed:
                nodes[address] = record
            elif cls is MemberStarted:
                nodes[address] = record
                timeline.append(record)
            elif cls is EventRetrying:
                self.retries[address] = self.retries.get(address, 0) + 1
                timeline.append(record)
            elif cls is GroupStarted:
                self.started[address] = record  # type: ignore[assignment]
                timeline.append(record)
            elif cls is GroupCompleted:
                self.completed[address] = record  # type: ignore[assignment]
                timeline.append(record)
            else:
                continue
            changes.append(address)
        if count:
            self.records += count
            self.last_record = time.time()
            if len(changes) > MAX_CHANGES:
                drop = len(changes) // 2
                del changes[:drop]
                self.base += drop
            self._wake()

    # --- the run's end ------------------------------------------------------------------------

    def finish(self, status: str = "completed") -> None:
        """The run is over (``completed``, ``failed`` or ``interrupted``): streams end."""
        if self.status is None:
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
        """Return after the next batch of records (or the run's end), or after ``seconds``."""
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._waiter), seconds)
        except TimeoutError:
            pass

    @property
    def cursor(self) -> int:
        """The position after the last change; pass it to ``changes_since`` later."""
        return self.base + len(self.changes)

    def changes_since(self, cursor: int) -> list[str] | None:
        """Addresses changed after ``cursor`` (each once, in the order of their last change),
        or ``None`` when the log no longer reaches back that far (start over)."""
        if cursor < self.base:
            return None
        recent = self.changes[cursor - self.base :]
        seen: dict[str, None] = {}
        for address in reversed(recent):
            if address not in seen:
                seen[address] = None
        return list(reversed(seen))

    # --- what the viewer shows ----------------------------------------------------------------

    def when(self, timestamp: float) -> float:
        return timestamp + self.offset

    def node(self, address: str) -> Node | None:
        """The node at ``address`` (an event or a member), or ``None``."""
        record = self.nodes.get(address)
        if record is None:
            return None
        node: Node = {
            "address": address,
            "group_id": record.group_id,
            "index": record.parallel_index,
            "retries": self.retries.get(address, 0),
            "order": record.timestamp,
        }
        if isinstance(record, MemberFinished | MemberStarted):
            node.update(kind="member", name=record.name, actor=None)
            if isinstance(record, MemberStarted):
                node.update(status="running", started=self.when(record.timestamp))
                node.update(queue_wait=record.queue_wait)
            else:
                node.update(
                    status=record.status,
                    duration=record.execution_time,
                    attempts=record.attempts,
                    error=record.error,
                    queue_wait=record.queue_wait,
                    finished=self.when(record.timestamp),
                )
            return node
        node.update(kind="event", name=None)
        if isinstance(record, EventStarted):
            node.update(
                actor=record.actor,
                actor_kind=record.actor_kind,
                status="running",
                started=self.when(record.timestamp),
                input=record.detail or None,
            )
        elif isinstance(record, EventCompleted):
            node.update(
                actor=record.actor,
                actor_kind=record.actor_kind,
                status="completed",
                duration=record.execution_time,
                attempts=record.attempts,
                result=record.detail or None,
                source=record.source,
                finished=self.when(record.timestamp),
            )
            node["order"] = record.timestamp - record.execution_time
        elif isinstance(record, EventFailed):
            status = _failed_status(record)
            node.update(
                actor=record.actor,
                actor_kind=record.actor_kind,
                status=status,
                duration=record.execution_time,
                attempts=record.attempts,
                error=record.error,
                error_type=record.error_type,
                finished=self.when(record.timestamp),
            )
            node["order"] = record.timestamp - record.execution_time
        return node

    def event_counts(self) -> tuple[dict[str, int], int]:
        """Finished events by status, and the number still running (kept until the next
        batch of records: a stream asks for them at every update)."""
        cached = self._counts
        if cached is not None and cached[0] == self.records:
            return cached[1], cached[2]
        counts: dict[str, int] = {}
        running = 0
        for record in list(self.nodes.values()):
            cls = type(record)
            if cls is EventCompleted:
                status = "completed"
            elif cls is EventStarted:
                running += 1
                continue
            elif cls is EventFailed:
                status = _failed_status(record)  # type: ignore[arg-type]
            else:
                continue
            counts[status] = counts.get(status, 0) + 1
        self._counts = (self.records, counts, running)
        return counts, running

    def all_nodes(self) -> list[Node]:
        return [node for address in list(self.nodes) if (node := self.node(address)) is not None]

    def group_ids(self) -> list[str]:
        ids = dict.fromkeys(self.started)
        ids.update(dict.fromkeys(self.progress))
        return list(ids)

    def group(self, group_id: str, *, metrics: bool = True) -> Node | None:
        """A group's counts and status; ``metrics``: also its metrics snapshot (the group's
        own when it completed, else worked out from the members finished so far)."""
        started = self.started.get(group_id)
        completed = self.completed.get(group_id)
        last = self.progress.get(group_id)
        if started is None and last is None:
            return None
        name = started.name if started is not None else group_id.rsplit("::", 1)[-1]
        group: Node = {
            "group_id": group_id,
            "name": name,
            "parent_group_id": started.parent_group_id if started is not None else None,
            "max_workers": started.max_workers if started is not None else None,
            "started": self.when(started.timestamp) if started is not None else None,
            "order": started.timestamp if started is not None else 0.0,
        }
        if completed is not None:
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
                snapshot = completed.metrics
                group["metrics"] = _metrics_dict(snapshot) if snapshot is not None else None
                group["metrics_source"] = "group"
            return group
        total = last.total if last is not None else started.total if started is not None else 0
        group.update(
            status="running",
            total=total,
            done=last.done if last is not None else 0,
            succeeded=last.succeeded if last is not None else 0,
            failed=last.failed if last is not None else 0,
        )
        if metrics:
            group["metrics"] = self._running_metrics(group_id)
            group["metrics_source"] = "so far"
        return group

    def groups(self, *, metrics: bool = True) -> list[Node]:
        return [g for gid in self.group_ids() if (g := self.group(gid, metrics=metrics))]

    def _running_metrics(self, group_id: str) -> Node:
        """Queue waits and run times of the members finished so far."""
        runs: list[float] = []
        waits: list[float] = []
        for record in self.timeline_records:
            if type(record) is MemberFinished and record.group_id == group_id:
                runs.append(record.execution_time)
                if record.queue_wait is not None:
                    waits.append(record.queue_wait)
        return {
            "run_time": Distribution.of(runs).as_dict(),
            "queue_wait": Distribution.of(waits).as_dict(),
            "retries": sum(
                count
                for address, count in self.retries.items()
                if address.startswith(group_id + "[")
            ),
        }

    def timeline(self, group_id: str | None = None, *, title: str = "") -> Timeline:
        """The run's timeline (``TimelineRecorder`` fed the records it takes), or only
        ``group_id`` and the groups nested in its members."""
        recorder = TimelineRecorder()
        records: Iterable[BusEvent] = self.timeline_records
        if group_id is not None:
            inside = group_id + "["
            records = (
                r
                for r in self.timeline_records
                if r.address == group_id
                or r.address.startswith(inside)
                or (r.group_id is not None and (r.group_id == group_id))
            )
        for record in records:
            recorder(record)
        return recorder.timeline(title)


def _metrics_dict(metrics: Any) -> Node | None:
    as_dict = getattr(metrics, "as_dict", None)
    return as_dict() if callable(as_dict) else None


def _failed_status(record: EventFailed) -> str:
    if record.cancelled:
        return "cancelled"
    return "timed_out" if record.error_type in _TIMEOUT_TYPES else "failed"
