"""What the viewer shows of a run, as plain JSON-ready values, from the store or a live feed.

A run is a **summary** (``run_summary``), **nodes** and **groups**; the pages arrange the nodes
into the execution tree (``build_tree``).

- A node is an event (``kind: "event"``: one actor call, at its address) or a group member
  (``kind: "member"``: ``group[i]``), with ``status``, ``attempts``, ``duration``, ``error``
  and ``result`` (a preview of the result's JSON, at most ``PREVIEW_CHARS`` characters).
- A group has its counts (``total``, ``done``, ``succeeded``, ``failed``), its ``status`` and a
  ``metrics`` snapshot: the group's own ``GroupMetrics`` when it was watched live, otherwise
  what its members' checkpoints tell (run-time percentiles, retries; checkpoints keep no
  start times, so no queue waits).

From the store, a group's size is not known (a member that never finished left no
checkpoint): ``total`` is then the highest member index stored plus one, and ``total_known``
is false.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rh_agents.core.parallel.metrics import Distribution
from rh_agents.recovery.records import CheckpointRecord, RunInfo, RunStatus, latest_calls
from rh_agents.ui.live import LiveFeed, Node

__all__ = [
    "PREVIEW_CHARS",
    "TreeItem",
    "add_counts",
    "build_tree",
    "live_summary",
    "parent_address",
    "preview",
    "run_summary",
    "stored_groups",
    "stored_nodes",
]

PREVIEW_CHARS = 200

_MEMBER = re.compile(r"^(.*)\[(\d+)\]$")
_NOT_DONE = ("failed", "timed_out")


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters (ending in "…"), or ``None``."""
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parent_address(address: str, kind: str) -> str | None:
    """Where a node or group hangs in the tree: a member's group, an event's member or event,
    a group's event or member (``None`` at the root)."""
    if kind == "member":
        match = _MEMBER.match(address)
        return match.group(1) if match else None
    head, sep, _ = address.rpartition("::")
    return head if sep else None


# --- from the store -------------------------------------------------------------------------


def stored_nodes(records: Iterable[CheckpointRecord]) -> dict[str, Node]:
    """Every checkpointed event as a node, and a member node for each member whose top-level
    event is stored (``group[i]::actor``): the member's outcome is that event's."""
    nodes: dict[str, Node] = {}
    for record in latest_calls(records).values():
        nodes[record.address] = {
            "address": record.address,
            "kind": "event",
            "name": None,
            "actor": record.actor,
            "actor_version": record.actor_version,
            "status": record.status,
            "duration": record.execution_time,
            "attempts": record.attempts,
            "retries": max(record.attempts - 1, 0),
            "error": record.error,
            "result": preview(record.result_json),
            "group_id": record.group_id,
            "index": record.parallel_index,
            "order": float(record.seq),
            "seq": record.seq,
        }
        member = _member_of(record)
        if member is not None:
            nodes[member] = {
                "address": member,
                "kind": "member",
                "name": None,
                "actor": record.actor,
                "status": record.status,
                "duration": record.execution_time,
                "attempts": record.attempts,
                "retries": max(record.attempts - 1, 0),
                "error": record.error,
                "group_id": record.group_id,
                "index": record.parallel_index,
                "order": float(record.seq),
                "seq": record.seq,
            }
    return nodes


def _member_of(record: CheckpointRecord) -> str | None:
    """The member address ``group[i]`` if ``record`` is that member's top-level event."""
    group_id, index = record.group_id, record.parallel_index
    if group_id is None or index is None:
        return None
    member = f"{group_id}[{index}]"
    rest = record.address[len(member) :]
    if record.address.startswith(member) and rest.startswith("::") and rest.count("::") == 1:
        return member
    return None


def stored_groups(
    records: Iterable[CheckpointRecord], run_status: str = RunStatus.COMPLETED.value
) -> dict[str, Node]:
    """Each group's counts and a metrics snapshot from its members' checkpoints."""
    members: dict[str, list[CheckpointRecord]] = {}
    first: dict[str, int] = {}
    for record in latest_calls(records).values():
        group_id = record.group_id
        if group_id is None:
            continue
        first[group_id] = min(first.get(group_id, record.seq), record.seq)
        if _member_of(record) is not None:
            members.setdefault(group_id, []).append(record)
    groups: dict[str, Node] = {}
    for group_id in first:
        stored = members.get(group_id, [])
        indexes = {r.parallel_index for r in stored if r.parallel_index is not None}
        total = max(indexes) + 1 if indexes else 0
        succeeded = sum(r.status == "completed" for r in stored)
        failed = sum(r.status in _NOT_DONE for r in stored)
        if run_status == RunStatus.RUNNING.value:
            status = "running"
        elif succeeded == total and len(indexes) == total:
            status = "completed"
        else:
            status = "partial"
        runs = Distribution.of(r.execution_time for r in stored)
        groups[group_id] = {
            "group_id": group_id,
            "name": group_id.rsplit("::", 1)[-1],
            "status": status,
            "total": total,
            "total_known": False,
            "done": len(stored),
            "succeeded": succeeded,
            "failed": failed,
            "cancelled": sum(r.status == "cancelled" for r in stored),
            "skipped": sum(r.status == "skipped" for r in stored),
            "missing": total - len(indexes),
            "max_workers": None,
            "order": float(first[group_id]),
            "metrics": {
                "run_time": runs.as_dict(),
                "retries": sum(max(r.attempts - 1, 0) for r in stored),
            },
            "metrics_source": "checkpoints",
        }
    return groups


def _counts(statuses: Iterable[str]) -> dict[str, int]:
    return add_counts({}, statuses)


def add_counts(counts: Mapping[str, int], statuses: Iterable[str]) -> dict[str, int]:
    """``counts`` (events by status) with ``statuses`` counted in: a new dict."""
    out = dict(counts)
    for status in statuses:
        out[status] = out.get(status, 0) + 1
    return out


def run_summary(
    info: RunInfo,
    records: Mapping[str, CheckpointRecord] | None = None,
    *,
    counts: Mapping[str, int] | None = None,
    now: float | None = None,
) -> Node:
    """A stored run for the runs list and the run's page: id, status, start, duration,
    counts of its events by status (from ``records``, or ``counts`` given)."""
    if counts is None:
        counts = _counts(r.status for r in (records or {}).values())
    now = time.time() if now is None else now
    running = info.status is RunStatus.RUNNING
    end = now if running else info.updated
    return {
        "run_id": info.run_id,
        "status": info.status.value,
        "created": info.created,
        "updated": info.updated,
        "duration": max(end - info.created, 0.0),
        "events": sum(counts.values()),
        "counts": dict(counts),
        "live": False,
        "resume_command": info.resume_command,
    }


def live_summary(
    feed: LiveFeed,
    info: RunInfo | None = None,
    *,
    stored: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Node:
    """A run watched live: its status is the store's once the store says it ended, else the
    feed's (``running`` until the program says it is over).

    ``stored``: the statuses of the run's checkpointed events, by address. Those the feed has
    not seen are counted with its own: a resumed run replays a call whole, and the calls it
    made (its groups' members among them) are only in the store."""
    now = time.time() if now is None else now
    counts, running = feed.event_counts()
    if stored:
        rows = feed.rows
        counts = add_counts(counts, (s for a, s in stored.items() if a not in rows))
    status = feed.status or RunStatus.RUNNING.value
    if info is not None and info.status is not RunStatus.RUNNING:
        status = info.status.value
    end = feed.finished if feed.finished is not None else now
    if info is not None and status != RunStatus.RUNNING.value and feed.finished is None:
        end = info.updated
    return {
        "run_id": feed.run_id,
        "status": status,
        "created": feed.created if info is None else min(info.created, feed.created),
        "updated": feed.last_record,
        "duration": max(end - feed.created, 0.0),
        "events": sum(counts.values()),
        "counts": dict(counts),
        "running": running,
        "live": True,
        "resume_command": info.resume_command if info is not None else None,
    }


# --- the tree -------------------------------------------------------------------------------


@dataclass(slots=True)
class TreeItem:
    """One line of the execution tree: an event, a group or a member, with what is known of
    it (``node`` or ``group``; ``None`` for a place only seen in a descendant's address)."""

    address: str
    label: str
    kind: str
    index: int | None = None
    node: Node | None = None
    group: Node | None = None
    order: float = math.inf
    children: dict[str, TreeItem] = field(default_factory=dict)

    def sorted_children(self) -> list[TreeItem]:
        items = list(self.children.values())
        if self.kind == "group":
            return sorted(items, key=lambda item: item.index if item.index is not None else -1)
        return sorted(items, key=lambda item: (item.order, item.address))

    @property
    def status(self) -> str | None:
        if self.node is not None:
            return str(self.node.get("status"))
        if self.group is not None:
            return str(self.group.get("status"))
        return None


class _Tree:
    def __init__(self) -> None:
        self.root = TreeItem("", "", "root")

    def _step(self, parent: TreeItem, prefix: str, segment: str, order: float) -> TreeItem:
        """The child of ``parent`` for one address segment (a member segment ``g[i]`` goes
        through its group)."""
        parent.order = min(parent.order, order)
        match = _MEMBER.match(segment)
        if match is None:
            address = f"{prefix}::{segment}" if prefix else segment
            item = parent.children.get(segment)
            if item is None:
                item = parent.children[segment] = TreeItem(address, segment, "event")
            item.order = min(item.order, order)
            return item
        name, index = match.group(1), int(match.group(2))
        group = self._group_item(parent, prefix, name, order)
        key = f"[{index}]"
        member = group.children.get(key)
        if member is None:
            member = group.children[key] = TreeItem(
                f"{group.address}[{index}]", key, "member", index=index
            )
        member.order = min(member.order, order)
        return member

    def _group_item(self, parent: TreeItem, prefix: str, name: str, order: float) -> TreeItem:
        key = f"{name} (group)"
        group = parent.children.get(key)
        if group is None:
            address = f"{prefix}::{name}" if prefix else name
            group = parent.children[key] = TreeItem(address, name, "group")
        group.order = min(group.order, order)
        return group

    def add_node(self, node: Node) -> None:
        order = float(node.get("order") or 0.0)
        item, prefix = self.root, ""
        for segment in node["address"].split("::"):
            item = self._step(item, prefix, segment, order)
            prefix = item.address
        item.node = node
        if node["kind"] == "member" and node.get("name"):
            item.label = f"[{item.index}] {node['name']}"

    def add_group(self, group: Node) -> None:
        order = float(group.get("order") or 0.0)
        head, sep, name = group["group_id"].rpartition("::")
        item, prefix = self.root, ""
        if sep:
            for segment in head.split("::"):
                item = self._step(item, prefix, segment, order)
                prefix = item.address
        self._group_item(item, prefix, name, order).group = group


def build_tree(nodes: Iterable[Node], groups: Iterable[Node]) -> list[TreeItem]:
    """The execution tree of ``nodes`` and ``groups``: the top-level items, in start order."""
    tree = _Tree()
    for group in groups:
        tree.add_group(group)
    for node in nodes:
        tree.add_node(node)
    return tree.root.sorted_children()
