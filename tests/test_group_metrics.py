"""Per-group metrics, checked against a run whose every timestamp is known (fake clock)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import GroupMetrics
from rh_agents.core.parallel.metrics import Distribution, Durations, percentile
from rh_agents.core.records import BusEvent, GroupCompleted
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import CircuitOpenError


class SteppingClock:
    """A clock that only moves when a member says it ran for ``d`` seconds."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def runs_for(clock: SteppingClock, seconds: float, value: Any = None) -> Any:
    async def member() -> Any:
        clock.t += seconds
        return value

    return member


async def test_snapshot_matches_a_known_serial_run() -> None:
    clock = SteppingClock()
    bus = EventBus()
    completed: list[GroupCompleted] = []
    bus.subscribe(lambda r: completed.append(r) if isinstance(r, GroupCompleted) else None)
    state = ExecutionState(event_bus=bus, clock=clock)

    async def retried_twice() -> ExecutionResult[Any]:
        clock.t += 3.0
        return ExecutionResult(ok=True, result="r", execution_time=3.0, attempts=3)

    async def rejected() -> ExecutionResult[Any]:
        exc = CircuitOpenError("llm")
        return ExecutionResult.failure(exc, execution_time=0.0)

    async def boom() -> None:
        clock.t += 2.0
        raise ValueError("bad")

    async with state.parallel(max_workers=1, name="g") as p:
        p.add(runs_for(clock, 1.0), name="a")  # queue 0, run 1
        p.add(retried_twice, name="b")  # queue 1, run 3
        p.add(rejected, name="c")  # queue 4, run 0
        p.add(boom, name="d")  # queue 4, run 2
        p.add(runs_for(clock, 5.0), name="e", after="d")  # skipped: never ran
        during = p.metrics()
        await p.gather()
    await bus.close()

    # Before the block first yields no member has started: a worker takes its member when it
    # first runs (so priorities apply); a, b, c and d are queued, e waits for d.
    assert (during.total, during.done, during.running, during.queued) == (5, 0, 0, 4)
    m = p.metrics()
    assert isinstance(m, GroupMetrics)
    assert (m.total, m.succeeded, m.failed, m.cancelled, m.skipped, m.timed_out) == (
        5,
        2,
        2,
        0,
        1,
        0,
    )
    assert m.retries == 2
    assert m.breaker_rejections == 1
    assert m.queue_wait.count == 4
    assert sorted([m.queue_wait.p50, m.queue_wait.p95, m.queue_wait.max]) == [1.0, 4.0, 4.0]
    assert (m.run_time.p50, m.run_time.p95, m.run_time.max) == (1.0, 3.0, 3.0)
    assert m.run_time.total == 6.0
    assert m.wall_time == 6.0
    assert m.throughput == pytest.approx(5 / 6.0)
    assert m.concurrency_high_water == 1
    assert m.efficiency == pytest.approx(1.0)  # one worker, always busy
    assert completed[0].metrics == m
    assert completed[0].metrics is completed[0].metrics  # taken once, on first read
    stats = p.statistics()  # the older snapshot still works and agrees
    assert (stats.succeeded, stats.failed, stats.skipped, stats.wall_time) == (2, 2, 1, 6.0)


async def test_efficiency_against_the_limit() -> None:
    clock = SteppingClock()
    state = ExecutionState(clock=clock)
    async with state.parallel(max_workers=4) as p:
        for _ in range(4):
            p.add(runs_for(clock, 2.0))
        await p.gather()
    m = p.metrics()
    # The members never suspend, so they run one after another (8 s of wall time on the
    # stepping clock) although four slots were free: the ideal is 8 s / 4 workers = 2 s,
    # efficiency 1/4, and never more than one member ran at once.
    assert m.wall_time == 8.0
    assert m.run_time.total == 8.0
    assert m.efficiency == pytest.approx(0.25)
    assert m.concurrency_high_water == 1
    assert all(r.status is ResultStatus.COMPLETED for r in await p.gather())
    assert m.as_dict()["run_time"]["max"] == 2.0


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_percentiles_are_observed_values_in_order(values: list[float]) -> None:
    ordered = sorted(values)
    p50, p95 = percentile(ordered, 0.5), percentile(ordered, 0.95)
    assert p50 in values and p95 in values
    assert ordered[0] <= p50 <= p95 <= ordered[-1]


def test_durations_keep_a_bounded_sample_but_exact_count_total_and_max() -> None:
    from rh_agents.core.parallel.metrics import Durations

    small = Durations(capacity=100)
    big = Durations(capacity=100)
    for i in range(100):
        small.add(float(i))
    for i in range(10_000):
        big.add(float(i % 1000))
    assert small.distribution().p50 == 49.0  # exact below the capacity
    assert len(big.sample) == 100  # bounded above it
    d = big.distribution()
    assert (d.count, d.max, d.total) == (10_000, 999.0, sum(float(i % 1000) for i in range(10_000)))
    assert 300 <= d.p50 <= 700  # a uniform sample of 0..999 has its median near 500


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=200))
def test_a_snapshot_distribution_equals_the_exact_one(values: list[float]) -> None:
    durations = Durations()
    for value in values:
        durations.add(value)
    lazy = durations.distribution()
    assert lazy == Distribution.of(values)
    assert lazy.as_dict() == Distribution.of(values).as_dict()


def test_a_snapshot_does_not_move_with_later_values() -> None:
    durations = Durations()
    for value in (3.0, 1.0, 2.0):
        durations.add(value)
    snapshot = durations.distribution()
    for _ in range(100):
        durations.add(50.0)  # the group goes on after the snapshot was taken
    assert (snapshot.count, snapshot.p50, snapshot.p95, snapshot.max) == (3, 2.0, 3.0, 3.0)
    with pytest.raises(FrozenInstanceError):
        snapshot.count = 4  # type: ignore[misc]


@given(
    capacity=st.integers(1, 20),
    values=st.lists(st.integers(0, 10**6), max_size=300),
    seed=st.integers(0, 1000),
)
def test_the_reservoir_holds_values_of_the_stream_and_exact_totals(
    capacity: int, values: list[int], seed: int
) -> None:
    durations = Durations(capacity, seed=seed)
    for value in values:
        durations.add(float(value))
    assert len(durations.sample) == min(capacity, len(values))
    assert set(durations.sample) <= {float(v) for v in values}
    d = durations.distribution()
    assert d.count == len(values)
    assert d.max == (float(max(values)) if values else 0.0)
    assert d.total == float(sum(values))


def test_the_reservoir_sample_is_uniform_over_the_stream() -> None:
    # Each of 40 values should end up in a 4-value sample with probability 1/10: over 4000
    # seeded runs, every position is kept about 400 times (a skewed sampler would favour the
    # first or the last values).
    kept = [0] * 40
    for seed in range(4000):
        durations = Durations(4, seed=seed)
        for i in range(40):
            durations.add(float(i))
        for value in durations.sample:
            kept[int(value)] += 1
    assert sum(kept) == 4 * 4000
    assert all(300 <= k <= 500 for k in kept), kept


def test_a_duration_sample_needs_room() -> None:
    with pytest.raises(ValueError, match="capacity >= 1"):
        Durations(0)


async def test_completed_metrics_keep_the_limit_the_group_ran_under() -> None:
    from rh_agents.resilience.adaptive import AdaptiveLimit

    bus = EventBus()
    completed: list[GroupCompleted] = []
    bus.subscribe(completed.append, kinds=[GroupCompleted])
    state = ExecutionState(event_bus=bus)
    limit = AdaptiveLimit(1, 8, initial=4)

    async def member() -> None:
        return None

    async with state.parallel(max_workers=limit) as p:
        p.add(member())
    await bus.drain()
    at_the_end = limit.current  # (its success may have grown the limit)
    limit.on_overload()  # the shared limit moves on after the group ...
    assert limit.current < at_the_end
    assert completed[0].metrics.max_workers == at_the_end  # ... its snapshot, read now, not
    assert p.metrics().max_workers == at_the_end


def test_a_group_keeps_the_same_members_in_both_samples_past_capacity() -> None:
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.parallel.metrics import SAMPLE_SIZE, MetricsRecorder

    recorder = MetricsRecorder()
    n = SAMPLE_SIZE * 3
    for i in range(n):
        member = Member(i, None)
        member.enqueued = 0.0
        member.started = float(i)  # queue wait i
        recorder.record(member, ExecutionResult(ok=True, execution_time=2.0 * i))  # run 2i
    waits, runs = recorder.queue_waits, recorder.run_times
    assert len(waits.sample) == len(runs.sample) == SAMPLE_SIZE
    # One schedule drives both: slot by slot they hold the same member's two durations.
    assert all(r == 2 * w for w, r in zip(waits.sample, runs.sample, strict=True))
    assert (waits.count, waits.max, waits.total) == (n, n - 1.0, float(sum(range(n))))
    assert (runs.count, runs.max, runs.total) == (n, 2.0 * (n - 1), 2.0 * sum(range(n)))
    # The sample reaches past the first capacity's worth of members.
    assert max(waits.sample) >= SAMPLE_SIZE


async def test_efficiency_leaves_out_the_backoffs_that_held_no_worker() -> None:
    # A retry's backoff lends the member's worker slot: the worker is free for others, not
    # busy. Each member works 0.5 s, fails, waits 1 s, works 0.5 s: its run time is 2 s, of
    # which it held its worker for 1 s. Two members, one after another (they never
    # suspend), under max_workers=2: 4 s of wall time, 2 s of work, efficiency 2 / 2 / 4.
    from rh_agents.resilience import RetryPolicy

    clock = SteppingClock()
    state = ExecutionState(clock=clock)
    tried: set[int] = set()

    def fails_once(i: int) -> Any:
        async def member() -> int:
            clock.t += 0.5
            if i not in tried:
                tried.add(i)
                raise ConnectionError("transient")
            return i

        return member

    retry = RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0)
    async with state.parallel(max_workers=2, retry=retry) as p:
        for i in range(2):
            p.add(fails_once(i))
    m = p.metrics()
    assert [r.attempts for r in await p.gather()] == [2, 2]
    assert (m.wall_time, m.run_time.total, m.run_time.max) == (4.0, 4.0, 2.0)
    assert m.efficiency == pytest.approx(0.25)  # (it read 0.5: the backoffs counted as work)


TRIPS: list[Callable[[Any], Any]] = [
    lambda value: pickle.loads(pickle.dumps(value)),
    copy.copy,
    copy.deepcopy,
]


@pytest.mark.parametrize("trip", TRIPS, ids=["pickle", "copy", "deepcopy"])
def test_a_distribution_pickles_and_copies_with_its_percentiles(
    trip: Callable[[Any], Any],
) -> None:
    durations = Durations()
    for value in (3.0, 1.0, 2.0, 8.0):
        durations.add(value)
    lazy = durations.distribution()  # percentiles not sorted out yet
    again = trip(lazy)
    assert (again.count, again.p50, again.p95, again.max, again.total) == (4, 2.0, 8.0, 8.0, 14.0)
    assert again == lazy == trip(Distribution.of([3.0, 1.0, 2.0, 8.0]))
    with pytest.raises(FrozenInstanceError):
        again.count = 5


@pytest.mark.parametrize("trip", TRIPS, ids=["pickle", "copy", "deepcopy"])
async def test_metrics_and_every_record_of_a_group_pickle_and_copy(
    trip: Callable[[Any], Any],
) -> None:
    # Records and metrics cross processes (executor="processes") and get copied by those who
    # keep them: a GroupCompleted whose metrics were never read still holds the group's bound
    # methods, which carry what neither pickles nor copies (a weak reference, a context).
    bus = EventBus()
    records: list[BusEvent] = []
    bus.subscribe(records.append)
    state = ExecutionState(event_bus=bus)

    async def boom() -> None:
        raise ValueError("bad")

    async with state.parallel(name="docs") as p:
        p.add(runs_for(SteppingClock(), 1.0, "ok"))
        p.add(boom)
    await p.gather()
    await bus.drain()
    await state.close()

    metrics = p.metrics()
    assert trip(metrics) == metrics
    completed = [r for r in records if isinstance(r, GroupCompleted)]
    assert len(completed) == 1 and callable(completed[0].metrics_source)  # not read yet
    assert len(records) > 3
    for record in records:
        again = trip(record)
        assert type(again) is type(record) and again == record
    again = trip(completed[0])
    assert again.metrics == completed[0].metrics and again.metrics.succeeded == 1
    assert again.resources is not None and again.resources == completed[0].resources
