"""Per-group metrics: where the time went, as a frozen snapshot.

A group records two floats per member that ran (its queue wait and its run time), plus two
counters; nothing else happens on the hot path. Count, total and maximum are exact; the
percentiles come from the first ``SAMPLE_SIZE`` durations and, past that, a uniform reservoir
sample of them, so a group streaming a million items keeps a bounded buffer (percentiles of
groups up to ``SAMPLE_SIZE`` members are exact). They are computed only when a snapshot is
taken::

    async with state.parallel(max_workers=8, name="docs") as p:
        ...
        print(p.metrics().running)          # a snapshot during the run
    m = p.metrics()                          # or after it (also in GroupCompleted.metrics)
    print(m.queue_wait.p95, m.run_time.max, m.throughput, m.efficiency)

``efficiency`` compares the group with an ideal scheduler for its limit: the members' busy
times (their run times, less the retry backoffs during which they lent their worker) packed
perfectly onto ``max_workers`` workers would take ``sum(busy) / max_workers`` seconds;
efficiency is that ideal divided by the real wall time, capped at 1. A low value
means the group waited on something other than its own limit (a global limit, a rate limit,
a straggler, dependencies).
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import TYPE_CHECKING, Any

from rh_agents.errors import CircuitOpenError

if TYPE_CHECKING:
    from rh_agents.core.parallel.group import GroupStatistics
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.results import ExecutionResult

__all__ = [
    "SAMPLE_SIZE",
    "Distribution",
    "Durations",
    "GroupMetrics",
    "MetricsRecorder",
    "ReservoirSchedule",
    "ResourceUsage",
    "percentile",
]

SAMPLE_SIZE = 10_000


def percentile(ordered: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of sorted ``ordered`` by the nearest-rank method (0 if empty).

    Nearest rank returns an observed value (never an interpolation), which is what a person
    reading "p95 = 2.1 s" expects: some member really took 2.1 s.
    """
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Distribution:
    """Summary of a set of durations in seconds: ``count``, ``p50``, ``p95``, ``max``, ``total``.

    Immutable. The percentiles are computed when first read: sorting the sample is the one
    costly part of a snapshot (about a millisecond per 10,000 values), and every group takes
    one when it completes, mostly never read.
    """

    __slots__ = ("_p50", "_p95", "_sample", "count", "max", "total")

    count: int
    max: float
    total: float
    _p50: float | None
    _p95: float | None
    _sample: list[float] | None

    def __init__(
        self,
        count: int,
        p50: float | None = None,
        p95: float | None = None,
        max: float = 0.0,
        total: float = 0.0,
        *,
        sample: Iterable[float] = (),
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "count", count)
        setattr_(self, "max", max)
        setattr_(self, "total", total)
        setattr_(self, "_p50", p50)
        setattr_(self, "_p95", p95)
        # A copy: the group goes on adding to its own sample after a snapshot mid-run.
        setattr_(self, "_sample", None if p50 is not None and p95 is not None else list(sample))

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        """The exact distribution of ``values``."""
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 0.50),
            p95=percentile(ordered, 0.95),
            max=ordered[-1] if ordered else 0.0,
            total=math.fsum(ordered),
        )

    def _percentiles(self) -> None:
        ordered = sorted(self._sample or ())
        object.__setattr__(self, "_p50", percentile(ordered, 0.50))
        object.__setattr__(self, "_p95", percentile(ordered, 0.95))
        object.__setattr__(self, "_sample", None)

    @property
    def p50(self) -> float:
        if self._p50 is None:
            self._percentiles()
        assert self._p50 is not None
        return self._p50

    @property
    def p95(self) -> float:
        if self._p95 is None:
            self._percentiles()
        assert self._p95 is not None
        return self._p95

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "p50": self.p50,
            "p95": self.p95,
            "max": self.max,
            "total": self.total,
        }

    def _key(self) -> tuple[int, float, float, float, float]:
        return (self.count, self.p50, self.p95, self.max, self.total)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Distribution):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Distribution(count={self.count}, p50={self.p50}, p95={self.p95}, "
            f"max={self.max}, total={self.total})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Made again by its constructor: the default for a slotted class would restore the
        # fields with setattr, which a frozen one refuses. Percentiles rather than the sample
        # (up to SAMPLE_SIZE values): smaller, and what a reader of the copy gets.
        return (Distribution, (self.count, self.p50, self.p95, self.max, self.total))

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a Distribution is frozen")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: a Distribution is frozen")


class ReservoirSchedule:
    """Which values of a stream replace a slot of a full sample, and which slot (Algorithm L).

    Rather than drawing a random number for every value (Algorithm R), it draws how many
    values to skip before the next replacement, so a long stream costs about
    ``capacity * log(count / capacity)`` draws in all. Seeded, so two identical runs keep the
    same sample. One schedule can drive several samples that see the same values in step (a
    group's queue waits and run times): they then keep the same members' values.
    """

    __slots__ = ("_rng", "_weight", "capacity", "next")

    def __init__(self, capacity: int, seed: int) -> None:
        self._rng = random.Random(seed)
        self.capacity = capacity
        self._weight = self._draw_weight()
        self.next = 0  # the count at which the next value replaces one in the sample
        self._schedule(capacity)

    def take(self) -> int:
        """The slot the value numbered ``next`` goes into; schedules the one after."""
        slot = self._rng.randrange(self.capacity)
        self._weight *= self._draw_weight()
        self._schedule(self.next)
        return slot

    def _draw_weight(self) -> float:
        # 1 - random() lies in (0, 1]: its log is finite.
        return math.exp(math.log(1.0 - self._rng.random()) / self.capacity)

    def _schedule(self, count: int) -> None:
        remaining = 1.0 - self._weight
        if remaining <= 0.0:  # a draw of exactly 1: replace at the very next value
            self.next = count + 1
            return
        skip = math.floor(math.log(1.0 - self._rng.random()) / math.log(remaining))
        self.next = count + skip + 1


class Durations:
    """Durations seen by a group: exact count, total and max; a bounded sample for percentiles.

    Up to ``capacity`` values the sample holds them all; past that it is a uniform reservoir
    kept by a ``ReservoirSchedule`` (its own, or one shared with a sibling series).
    """

    __slots__ = ("_schedule", "_seed", "capacity", "count", "max", "sample", "total")

    def __init__(self, capacity: int = SAMPLE_SIZE, *, seed: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"a duration sample needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.sample: array[float] = array("d")
        self._schedule: ReservoirSchedule | None = None  # set once the sample is full
        self._seed = capacity if seed is None else seed

    @property
    def full(self) -> bool:
        """Whether the sample is full (then count, total and max are kept as values come)."""
        return self._schedule is not None

    def fill(self, schedule: ReservoirSchedule | None = None) -> ReservoirSchedule:
        """Switch to reservoir mode (the sample holds ``capacity`` values), under
        ``schedule`` or a new one of its own; returns the schedule."""
        sample = self.sample
        self.count = len(sample)
        self.total = math.fsum(sample)
        self.max = max(sample)
        self._schedule = schedule or ReservoirSchedule(self.capacity, self._seed)
        return self._schedule

    def add(self, value: float) -> None:
        schedule = self._schedule
        if schedule is None:
            if len(self.sample) < self.capacity:
                self.sample.append(value)  # the common case: count, total and max from here
                return
            schedule = self.fill()
        count = self.count = self.count + 1
        self.total += value
        if value > self.max:
            self.max = value
        if count == schedule.next:
            self.sample[schedule.take()] = value

    def distribution(self) -> Distribution:
        """A snapshot; its percentiles are sorted out only if someone reads them."""
        sample = self.sample
        if self._schedule is None:  # every value is in the sample
            return Distribution(
                count=len(sample),
                max=max(sample) if sample else 0.0,
                total=math.fsum(sample),
                sample=sample,
            )
        return Distribution(count=self.count, max=self.max, total=self.total, sample=sample)


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
    resources: ResourceUsage | None = None

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled + self.timed_out + self.skipped

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for logs and JSON): distributions and resources become nested dicts."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Distribution | ResourceUsage):
                value = value.as_dict()
            out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What the process used while a group ran (``GroupMetrics.resources``,
    ``GroupCompleted.resources``), or while a run's groups ran
    (``ExecutionState.resource_usage()``), as the watchdog sampled it.

    - ``rss_start`` / ``rss_peak``: resident memory (bytes) when it started, and the most
      seen while it ran: the samples' resident size, or the process's own high-water mark
      when that rose meanwhile (so a short spike between samples still counts);
    - ``fds_start`` / ``fds_peak``: open file descriptors, at the start and at most;
    - ``loop_lag``: how late the event loop ran a callback that was due (seconds), one value
      per probe: ``p95`` and ``max`` say how long members kept it busy;
    - ``samples``: the resource samples taken while it ran (about one per 50 ms; a group
      shorter than that may have none: its figures are then the readings around it).

    A figure the platform does not give is ``None`` (resident size on macOS, descriptors on
    Windows). ``rss_growth`` and ``fds_growth`` are peak minus start.
    """

    rss_start: int | None
    rss_peak: int | None
    fds_start: int | None
    fds_peak: int | None
    loop_lag: Distribution
    samples: int = 0
    # The lag values kept (a bounded sample), so that usages can be merged exactly enough.
    lag_sample: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def rss_growth(self) -> int | None:
        if self.rss_peak is None or self.rss_start is None:
            return None
        return self.rss_peak - self.rss_start

    @property
    def fds_growth(self) -> int | None:
        if self.fds_peak is None or self.fds_start is None:
            return None
        return self.fds_peak - self.fds_start

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for logs and JSON)."""
        return {
            "rss_start": self.rss_start,
            "rss_peak": self.rss_peak,
            "rss_growth": self.rss_growth,
            "fds_start": self.fds_start,
            "fds_peak": self.fds_peak,
            "fds_growth": self.fds_growth,
            "loop_lag": self.loop_lag.as_dict(),
            "samples": self.samples,
        }

    def describe(self) -> str:
        """One line for people: ``peak memory 212 MiB (+200 MiB) · open files 108 at most
        (+100) · event loop lag p95 2 ms, max 41 ms`` (what is unknown is left out)."""
        parts = []
        if self.rss_peak is not None:
            growth = self.rss_growth
            parts.append(
                f"peak memory {_mib(self.rss_peak)}"
                + (f" ({'+' if growth >= 0 else ''}{_mib(growth)})" if growth is not None else "")
            )
        if self.fds_peak is not None:
            growth = self.fds_growth
            parts.append(
                f"open files {self.fds_peak} at most"
                + (f" (+{growth})" if growth is not None and growth > 0 else "")
            )
        lag = self.loop_lag
        if lag.count:
            parts.append(f"event loop lag p95 {_ms(lag.p95)}, max {_ms(lag.max)}")
        return " · ".join(parts)

    @classmethod
    def merge(cls, usages: Iterable[ResourceUsage | None]) -> ResourceUsage | None:
        """One usage over several (a run's groups): the first start, the highest peaks, every
        lag value (``None`` if there is none to merge)."""
        known = [usage for usage in usages if usage is not None]
        if not known:
            return None
        lags = Durations()
        count = total = 0.0
        worst = 0.0
        for usage in known:
            for value in usage.lag_sample:
                lags.add(value)
            count += usage.loop_lag.count
            total += usage.loop_lag.total
            worst = max(worst, usage.loop_lag.max)
        return cls(
            rss_start=known[0].rss_start,
            rss_peak=_highest(usage.rss_peak for usage in known),
            fds_start=known[0].fds_start,
            fds_peak=_highest(usage.fds_peak for usage in known),
            loop_lag=Distribution(int(count), max=worst, total=total, sample=lags.sample),
            samples=sum(usage.samples for usage in known),
            lag_sample=tuple(lags.sample),
        )


def _mib(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _highest(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


class MetricsRecorder:
    """What a group records per member; owned by its manager (one task at a time touches it).

    ``record`` is called once per member from the manager's ``_finish``; it appends at most two
    floats and bumps at most two ints. A member answered from a stored run (a replay) adds
    nothing: its timings belong to that run.
    """

    __slots__ = ("breaker_rejections", "busy", "queue_waits", "retries", "run_times", "schedule")

    def __init__(self) -> None:
        self.queue_waits = Durations()
        self.run_times = Durations()
        # Once full, both samples are driven by this one schedule: each keeps the same
        # members, and a member costs one check for both instead of two calls.
        self.schedule: ReservoirSchedule | None = None
        self.retries = 0
        self.breaker_rejections = 0
        # Seconds members held a worker slot: their run times but the time they lent it (a
        # retry's backoff); what efficiency counts.
        self.busy = 0.0

    def record(self, member: Member, result: ExecutionResult[Any]) -> None:
        if result.source == "replay":
            # Answered from a stored run: its time and attempts are that run's, not this
            # one's, so they stay out of this group's figures (its counts still have it).
            return
        started = member.started
        if started is not None:
            waits, runs = self.queue_waits, self.run_times
            wait = started - member.enqueued
            run = result.execution_time
            self.busy += run - member.lent if member.lent else run
            schedule = self.schedule
            if schedule is None:
                if len(waits.sample) < waits.capacity:
                    waits.sample.append(wait)  # the common case: two appends per member
                    runs.sample.append(run)
                else:
                    schedule = self.schedule = waits.fill()
                    runs.fill(schedule)
            if schedule is not None:
                count = waits.count = runs.count = waits.count + 1
                waits.total += wait
                runs.total += run
                if wait > waits.max:
                    waits.max = wait
                if run > runs.max:
                    runs.max = run
                if count == schedule.next:
                    slot = schedule.take()
                    waits.sample[slot] = wait
                    runs.sample[slot] = run
        attempts = result.attempts
        if attempts > 1:
            self.retries += attempts - 1
        exc = result.exception
        if exc is not None and isinstance(exc, CircuitOpenError):
            self.breaker_rejections += 1

    def snapshot(
        self,
        stats: GroupStatistics,
        *,
        max_workers: int,
        resources: ResourceUsage | None = None,
    ) -> GroupMetrics:
        """Freeze the current state, with the group's counters from ``stats``."""
        run_time = self.run_times.distribution()
        wall_time = stats.wall_time
        throughput = stats.done / wall_time if wall_time > 0 else 0.0
        if wall_time > 0:
            efficiency = min(1.0, max(0.0, self.busy) / max_workers / wall_time)
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
            queue_wait=self.queue_waits.distribution(),
            run_time=run_time,
            wall_time=wall_time,
            throughput=throughput,
            concurrency_high_water=stats.concurrency_high_water,
            max_workers=max_workers,
            efficiency=efficiency,
            resources=resources,
        )
