"""Per-group metrics: where the time went, as a frozen snapshot.

A group records two floats per member that ran (its queue wait and its run time) into compact
``array('d')`` buffers, plus two counters; nothing else happens on the hot path. Percentiles
are computed only when a snapshot is taken::

    async with state.parallel(max_workers=8, name="docs") as p:
        ...
        print(p.metrics().running)          # a snapshot during the run
    m = p.metrics()                          # or after it (also in GroupCompleted.metrics)
    print(m.queue_wait.p95, m.run_time.max, m.throughput, m.efficiency)

``efficiency`` compares the group with an ideal scheduler for its limit: the members' run
times packed perfectly onto ``max_workers`` workers would take ``sum(run) / max_workers``
seconds; efficiency is that ideal divided by the real wall time, capped at 1. A low value
means the group waited on something other than its own limit (a global limit, a rate limit,
a straggler, dependencies).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rh_agents.errors import CircuitOpenError

if TYPE_CHECKING:
    from rh_agents.core.parallel.group import GroupStatistics
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.results import ExecutionResult

__all__ = ["Distribution", "GroupMetrics", "MetricsRecorder", "percentile"]


def percentile(ordered: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of sorted ``ordered`` by the nearest-rank method (0 if empty).

    Nearest rank returns an observed value (never an interpolation), which is what a person
    reading "p95 = 2.1 s" expects: some member really took 2.1 s.
    """
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of a set of durations in seconds."""

    count: int
    p50: float
    p95: float
    max: float
    total: float

    @classmethod
    def of(cls, values: array[float]) -> Distribution:
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 0.50),
            p95=percentile(ordered, 0.95),
            max=ordered[-1] if ordered else 0.0,
            total=math.fsum(ordered),
        )


@dataclass(frozen=True, slots=True)
class GroupMetrics:
    """A frozen snapshot of one group (``p.metrics()`` and ``GroupCompleted.metrics``).

    Counts have the same names as ``GroupStatistics``; ``queue_wait`` and ``run_time`` cover
    the members that started (a member skipped or cancelled before it ran has neither).
    """

    group_id: str
    total: int
    running: int
    queued: int
    succeeded: int
    failed: int
    cancelled: int
    timed_out: int
    skipped: int
    retries: int
    breaker_rejections: int
    queue_wait: Distribution
    run_time: Distribution
    wall_time: float
    throughput: float
    concurrency_high_water: int
    max_workers: int
    efficiency: float

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled + self.timed_out + self.skipped

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for logs and JSON): distributions become nested dicts."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Distribution):
                value = {
                    "count": value.count,
                    "p50": value.p50,
                    "p95": value.p95,
                    "max": value.max,
                    "total": value.total,
                }
            out[name] = value
        return out


class MetricsRecorder:
    """What a group records per member; owned by its manager (one task at a time touches it).

    ``record`` is called once per member from the manager's ``_finish``; it appends at most two
    floats and bumps at most two ints.
    """

    __slots__ = ("breaker_rejections", "queue_waits", "retries", "run_times")

    def __init__(self) -> None:
        self.queue_waits: array[float] = array("d")
        self.run_times: array[float] = array("d")
        self.retries = 0
        self.breaker_rejections = 0

    def record(self, member: Member, result: ExecutionResult[Any]) -> None:
        started = member.started
        if started is not None:
            self.queue_waits.append(started - member.enqueued)
            self.run_times.append(result.execution_time)
        attempts = result.attempts
        if attempts > 1:
            self.retries += attempts - 1
        exc = result.exception
        if exc is not None and isinstance(exc, CircuitOpenError):
            self.breaker_rejections += 1

    def snapshot(self, stats: GroupStatistics, *, max_workers: int) -> GroupMetrics:
        """Freeze the current state, with the group's counters from ``stats``."""
        run_time = Distribution.of(self.run_times)
        wall_time = stats.wall_time
        throughput = stats.done / wall_time if wall_time > 0 else 0.0
        if wall_time > 0:
            efficiency = min(1.0, run_time.total / max_workers / wall_time)
        else:
            efficiency = 1.0 if run_time.count else 0.0
        return GroupMetrics(
            group_id=stats.group_id,
            total=stats.total,
            running=stats.running,
            queued=stats.queued,
            succeeded=stats.succeeded,
            failed=stats.failed,
            cancelled=stats.cancelled,
            timed_out=stats.timed_out,
            skipped=stats.skipped,
            retries=self.retries,
            breaker_rejections=self.breaker_rejections,
            queue_wait=Distribution.of(self.queue_waits),
            run_time=run_time,
            wall_time=wall_time,
            throughput=throughput,
            concurrency_high_water=stats.concurrency_high_water,
            max_workers=max_workers,
            efficiency=efficiency,
        )
