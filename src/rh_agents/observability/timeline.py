"""A timeline of a run: when each group member waited, ran, retried and how it ended.

Collect it live with a bus subscriber, then write a self-contained HTML page (inline SVG, no
scripts, no external assets)::

    recorder = TimelineRecorder()
    bus.subscribe(recorder)
    ...                                   # run
    await bus.drain()
    recorder.timeline().write_html("run.html")

or build it from a stored run (``Timeline.from_checkpoints``): checkpoints keep each event's
duration, status and attempts but not when it started, so that page shows durations only.

A group opened inside a member of another group (an agent's own fan-out) is *nested* under that
member: ``Timeline.roots()`` gives the outermost groups and ``Timeline.nested(group_id, index)``
the groups a member opened. The page folds nested groups under their member's row.

An address can name more than one group: a member retried by its group opens its nested groups
again, at the same addresses. Each opening is a group of its own in ``Timeline.groups`` (the
first attempt's, with its failures, is kept beside the second's), in the order they started.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rh_agents.core.records import (
    BusEvent,
    EventRetrying,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
)
from rh_agents.recovery.records import latest_calls

__all__ = ["DEFAULT_TITLE", "MemberBar", "Timeline", "TimelineGroup", "TimelineRecorder"]

DEFAULT_TITLE = "rh_agents run timeline"


@dataclass(slots=True)
class MemberBar:
    """One member: queued at ``enqueued``, ran from ``started`` to ``finished`` (seconds on the
    run's clock). ``started`` is ``None`` for a member that never ran (skipped, or cancelled
    while it waited); ``enqueued`` is ``None`` when the wait is unknown."""

    index: int
    name: str | None = None
    enqueued: float | None = None
    started: float | None = None
    finished: float | None = None
    status: str = "running"
    error: str | None = None
    attempts: int = 1
    retries: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"[{self.index}]" + (f" {self.name}" if self.name else "")


@dataclass(slots=True)
class TimelineGroup:
    """One group and its members in index order. ``parent_group_id`` and ``parent_index`` name
    the member it was opened in (``None`` for an outermost group, or when not known: then the
    page works it out from the group's address)."""

    group_id: str
    name: str
    started: float | None = None
    finished: float | None = None
    max_workers: int | None = None
    status: str = "running"
    metrics: Any = None
    members: dict[int, MemberBar] = field(default_factory=dict)
    parent_group_id: str | None = None
    parent_index: int | None = None
    # The group's ``quorum=`` (``None`` without one), and whether it ended by reaching it (its
    # status stays ``partial``; the members it then cancelled were not needed).
    quorum: int | None = None
    quorum_reached: bool = False

    def bars(self) -> list[MemberBar]:
        return [self.members[i] for i in sorted(self.members)]

    def member(self, index: int) -> MemberBar:
        bar = self.members.get(index)
        if bar is None:
            bar = self.members[index] = MemberBar(index)
        return bar


@dataclass(slots=True)
class Timeline:
    """Every group of a run, in the order they started (a group reopened at the same address,
    by a retried member, once per opening). ``timed`` is false when start times are unknown (a
    timeline rebuilt from checkpoints): bars then show durations only."""

    groups: list[TimelineGroup] = field(default_factory=list)
    timed: bool = True
    title: str = DEFAULT_TITLE

    def _links(self) -> dict[int, tuple[int, int]]:
        """Each nested group's member, by position in ``groups``: ``i -> (j, index)`` for the
        group ``groups[i]`` opened inside member ``index`` of ``groups[j]``.

        Taken from the group's record when it says, otherwise from its address: a group opened
        inside member ``i`` of group ``G`` has an address starting with ``G[i]::`` (the innermost
        such ``G`` is its parent). Of the groups at the parent's address (one per opening), the
        parent is the last one to start before this group, or else the first. A parent that is
        not in this timeline makes a root, and so does the group at which a chain of parents
        comes back on itself (links that form a cycle, as only bad data can: its groups were
        reachable from no root, and left out).
        """
        groups = self.groups
        first: dict[str, int] = {}
        for i, group in enumerate(groups):
            first.setdefault(group.group_id, i)
        latest: dict[str, int] = {}  # the last group at each address, so far in start order
        out: dict[int, tuple[int, int]] = {}
        for i, group in enumerate(groups):
            parent, index = group.parent_group_id, group.parent_index
            if parent is None or index is None:
                parent, index = _parent_by_address(group.group_id, first.keys())
            if parent is not None and index is not None and parent in first:
                out[i] = (latest.get(parent, first[parent]), index)
            latest[group.group_id] = i
        placed: set[int] = set()  # groups whose chain of parents is known to end at a root
        for i in range(len(groups)):
            chain: list[int] = []
            on_chain: set[int] = set()
            at = i
            while at in out and at not in placed and at not in on_chain:
                chain.append(at)
                on_chain.add(at)
                at = out[at][0]
            if at in on_chain:  # back on itself: this one is a root now
                del out[at]
            placed.update(chain)
        return out

    def roots(self) -> list[TimelineGroup]:
        """The outermost groups (opened outside any recorded group), in start order."""
        links = self._links()
        return [group for i, group in enumerate(self.groups) if i not in links]

    def nested(self, group_id: str, index: int) -> list[TimelineGroup]:
        """The groups opened inside member ``index`` of group ``group_id`` (of every opening of
        that address), in start order."""
        groups = self.groups
        return [
            groups[i]
            for i, (parent, at) in sorted(self._links().items())
            if at == index and groups[parent].group_id == group_id
        ]

    def to_html(self) -> str:
        from rh_agents.observability.timeline_svg import render_html

        return render_html(self)

    def write_html(self, path: str | Path) -> Path:
        out = Path(path)
        # The page escapes what UTF-8 cannot encode; "replace" keeps a string that slipped
        # through from failing the whole write (it becomes "?").
        out.write_text(self.to_html(), encoding="utf-8", errors="replace")
        return out

    @classmethod
    def from_checkpoints(cls, records: Any, *, title: str = "") -> Timeline:
        """A durations-only timeline from a run's ``CheckpointRecord`` values.

        A member's bar is its top-level event (address ``group[i]::actor``): the event's
        duration, status, attempts and error. Members that stored no checkpoint are absent.
        """
        groups: dict[str, TimelineGroup] = {}
        # (A call a retried agent repeated at one address shows as its last call.)
        for record in sorted(latest_calls(records).values(), key=lambda r: r.seq):
            group_id, index = record.group_id, record.parallel_index
            if group_id is None or index is None:
                continue
            member_address = f"{group_id}[{index}]"
            rest = record.address[len(member_address) :]
            if not record.address.startswith(member_address) or rest.count("::") != 1:
                continue  # deeper events belong to the member's own tree
            group = groups.get(group_id)
            if group is None:
                group = groups[group_id] = TimelineGroup(
                    group_id, group_id.rsplit("::", 1)[-1], status="stored"
                )
            bar = group.member(index)
            bar.name = rest[2:]
            bar.started = 0.0
            bar.finished = record.execution_time
            bar.status = record.status
            bar.error = record.error
            bar.attempts = record.attempts
        return cls(list(groups.values()), timed=False, title=title or DEFAULT_TITLE)


def _parent_by_address(group_id: str, known: Collection[str]) -> tuple[str | None, int | None]:
    """The innermost known group ``G`` with ``group_id`` under ``G[i]::``, and that ``i``."""
    end = group_id.rfind("::")
    while end > 0:
        head = group_id[:end]  # ...G[i] or ...G[i]::actor
        if head.endswith("]"):
            open_at = head.rfind("[")
            digits = head[open_at + 1 : -1]
            if open_at > 0 and digits.isdigit() and head[:open_at] in known:
                return head[:open_at], int(digits)
        end = group_id.rfind("::", 0, end)
    return None, None


class TimelineRecorder:
    """A bus subscriber that builds a ``Timeline``. Fed by its own feeder, in order.

    A group opened again at an address (a retried member's nested group) is a new group: the
    records that follow, up to the next opening, are its.
    """

    def __init__(self) -> None:
        self._groups: list[TimelineGroup] = []  # in the order they started
        self._by_address: dict[str, TimelineGroup] = {}  # the last opening at each address

    def __call__(self, record: BusEvent) -> None:
        if isinstance(record, MemberStarted | MemberFinished | EventRetrying):
            if record.group_id is None or record.parallel_index is None:
                return
            group = self._by_address.get(record.group_id)
            if group is None:  # subscribed after the group opened
                group = self._add(
                    TimelineGroup(record.group_id, record.group_id.rsplit("::", 1)[-1])
                )
            bar = group.member(record.parallel_index)
            if isinstance(record, MemberStarted):
                bar.name = record.name
                bar.started = record.timestamp
                bar.enqueued = record.timestamp - record.queue_wait
            elif isinstance(record, MemberFinished):
                bar.name = record.name
                if bar.started is None and record.queue_wait is not None:
                    # It finished without ever waiting, so no start was published.
                    bar.started = record.timestamp - record.execution_time
                    bar.enqueued = bar.started - record.queue_wait
                bar.finished = record.timestamp
                bar.status = record.status
                bar.error = record.error
                bar.attempts = record.attempts
            else:
                bar.retries.append(record.timestamp)
        elif isinstance(record, GroupStarted):
            self._add(
                TimelineGroup(
                    record.address,
                    record.name,
                    started=record.timestamp,
                    max_workers=record.max_workers,
                    parent_group_id=record.parent_group_id,
                    parent_index=record.parallel_index if record.parent_group_id else None,
                    quorum=record.quorum,
                )
            )
        elif isinstance(record, GroupCompleted):
            group = self._by_address.get(record.address)
            if group is not None:
                group.finished = record.timestamp
                group.status = record.status
                group.metrics = record.metrics
                group.quorum = record.quorum
                group.quorum_reached = record.quorum_reached

    def _add(self, group: TimelineGroup) -> TimelineGroup:
        self._groups.append(group)
        self._by_address[group.group_id] = group
        return group

    def timeline(self, title: str = "") -> Timeline:
        """The timeline so far (groups in the order they started)."""
        return Timeline(list(self._groups), title=title or DEFAULT_TITLE)
