"""``ParallelEventGroup``: the description of a group, and its statistics snapshot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rh_agents.core.events import ExecutionEvent
from rh_agents.core.parallel.strategy import GroupStatus

__all__ = ["GroupStatistics", "ParallelEventGroup"]


class ParallelEventGroup(BaseModel):
    """What a group is and how far it got.

    Owned and updated by its ``ParallelExecutionManager``; read it through ``p.group``, which
    brings it up to date. There, ``group_id`` is derived from the parent address and the
    group's name, so it is the same in every run of the same code; a group built by hand
    (``ParallelEventGroup()``) gets a random one and the name ``"Parallel Group"``.

    ``events`` are the ``ExecutionEvent`` calls the group's members made (an event call as a
    member, or the calls a member's code made), in member order: each the bound event with
    its ``address``, ``group_id`` and ``parallel_index``, as ``state.history`` keeps it. They
    are references to the events, not copies of results: a call's result is
    ``state.history[event.address].result``. Calls inside nested groups belong to those
    groups' ``events``.
    """

    model_config = ConfigDict(validate_assignment=False)

    group_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str = Field(default="Parallel Group")
    events: list[ExecutionEvent[Any]] = Field(default_factory=list)
    total: int = Field(default=0)
    completed: int = Field(default=0)
    failed: int = Field(default=0)
    status: GroupStatus = Field(default=GroupStatus.PENDING)
    start_time: float | None = None
    end_time: float | None = None
    max_workers: int | None = None
    parent_group_id: str | None = None
    member_names: dict[int, str] = Field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time


@dataclass(frozen=True, slots=True)
class GroupStatistics:
    """A frozen snapshot of a group's counters (``p.statistics()``).

    ``running`` counts the members holding a worker slot (not one that lent its slot, in a
    retry backoff say), ``queued`` the ready members waiting for one."""

    group_id: str
    total: int
    running: int
    queued: int
    succeeded: int
    failed: int
    cancelled: int
    timed_out: int
    skipped: int
    concurrency_high_water: int
    wall_time: float

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled + self.timed_out + self.skipped
