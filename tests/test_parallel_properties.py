"""Properties of the scheduler over random groups.

Delays are counted in event-loop steps (``asyncio.sleep(0)``), never in seconds, so each
example is deterministic; the only real timeouts are on members that never finish, where the
outcome cannot depend on speed. Each example runs in its own event loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy
from rh_agents.core.results import ResultStatus

# RH_PROPERTY_EXAMPLES=1000 runs a longer search locally; the suite's default stays fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("RH_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class Boom(Exception):
    pass


@dataclass(frozen=True)
class Spec:
    delay: int  # event-loop steps of work
    fails: bool
    hangs: bool  # never finishes: ends by the member timeout
    children: tuple[Spec, ...] = ()


def member_specs(depth: int) -> st.SearchStrategy[Spec]:
    children = st.just(()) if depth == 0 else st.lists(member_specs(depth - 1), max_size=4)
    return st.builds(
        Spec,
        delay=st.integers(0, 5),
        fails=st.booleans(),
        hangs=st.just(False),
        children=children.map(tuple),
    )


@dataclass(frozen=True)
class Scenario:
    groups: tuple[tuple[Spec, ...], ...]
    max_workers: int
    global_limit: int | None
    hang_timeouts: bool


@st.composite
def scenarios(draw: st.DrawFn, *, allow_hangs: bool = True) -> Scenario:
    nested = draw(st.booleans())
    spec = member_specs(1 if nested else 0)
    groups = draw(
        st.lists(st.lists(spec, max_size=40).map(tuple), min_size=1, max_size=3).map(tuple)
    )
    hang = allow_hangs and draw(st.booleans())
    if hang:
        groups = tuple(
            tuple(
                Spec(s.delay, False, True, s.children) if i % 7 == 3 else s for i, s in enumerate(g)
            )
            for g in groups
        )
    return Scenario(
        groups=groups,
        max_workers=draw(st.integers(1, 6)),
        global_limit=draw(st.none() | st.integers(1, 4)),
        hang_timeouts=hang,
    )


@dataclass
class Probe:
    """What the members saw: concurrency per group and in total, and how often each ran."""

    running: dict[str, int] = field(default_factory=dict)
    high: dict[str, int] = field(default_factory=dict)
    total: int = 0
    total_high: int = 0
    runs: dict[str, int] = field(default_factory=dict)
    coros: list[Coroutine[Any, Any, Any]] = field(default_factory=list)


def make_member(
    state: ExecutionState,
    probe: Probe,
    scenario: Scenario,
    spec: Spec,
    key: str,
    group: str,
    strategy: ErrorStrategy,
) -> Coroutine[Any, Any, Any]:
    async def member() -> str:
        probe.runs[key] = probe.runs.get(key, 0) + 1
        # Work: counted while it runs (a member waiting on its nested group does no work).
        probe.running[group] = probe.running.get(group, 0) + 1
        probe.high[group] = max(probe.high.get(group, 0), probe.running[group])
        probe.total += 1
        probe.total_high = max(probe.total_high, probe.total)
        try:
            for _ in range(spec.delay):
                await asyncio.sleep(0)
        finally:
            probe.running[group] -= 1
            probe.total -= 1
        if spec.hangs:
            await asyncio.Event().wait()
        if spec.children:
            await run_group(state, probe, scenario, spec.children, f"{key}/", strategy)
        if spec.fails:
            raise Boom(key)
        return key

    coro = member()
    probe.coros.append(coro)
    return coro


async def run_group(
    state: ExecutionState,
    probe: Probe,
    scenario: Scenario,
    specs: tuple[Spec, ...],
    prefix: str,
    strategy: ErrorStrategy,
) -> list[Any]:
    async with state.parallel(
        max_workers=scenario.max_workers,
        error_strategy=strategy,
    ) as p:
        for i, spec in enumerate(specs):
            member = make_member(state, probe, scenario, spec, f"{prefix}{i}", p.group_id, strategy)
            # Only members that never finish get a (tiny, real) timeout: their outcome is sure.
            p.add(member, timeout=0.001 if spec.hangs else None)
        results = await p.gather()
    assert p.statistics().concurrency_high_water <= scenario.max_workers
    return results


T = TypeVar("T")


async def after_a_turn(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    await asyncio.sleep(0)
    return await make()  # (made now: one cancelled meanwhile leaves no coroutine unawaited)


async def run_scenario(
    scenario: Scenario, probe: Probe, strategy: ErrorStrategy
) -> list[list[Any]]:
    state = ExecutionState(global_max_workers=scenario.global_limit)
    try:
        # A TaskGroup, so that a group that raises cancels its sibling groups (gather would not).
        # Each starts at the loop's next turn: under an eager task factory (make test-eager)
        # a group failing at once, inside create_task, would make the TaskGroup refuse the
        # next create_task ("is shutting down"), an error of this harness, not of the groups.
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(
                    after_a_turn(
                        functools.partial(
                            run_group, state, probe, scenario, specs, f"{g}:", strategy
                        )
                    )
                )
                for g, specs in enumerate(scenario.groups)
            ]
        return [t.result() for t in tasks]
    finally:
        if state.global_slots is not None:
            assert state.global_slots.in_use == 0 and state.global_slots.waiting == 0


def check_common(scenario: Scenario, probe: Probe) -> None:
    for group, high in probe.high.items():
        assert high <= scenario.max_workers, group
    if scenario.global_limit is not None:
        assert probe.total_high <= scenario.global_limit
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in probe.coros)
    assert all(n == 1 for n in probe.runs.values())


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def main() -> Any:
        me = asyncio.current_task()
        try:
            return await coro
        finally:
            assert asyncio.all_tasks() == {me}, "a task outlived its group"

    return asyncio.run(main())


def expected_status(spec: Spec) -> ResultStatus:
    if spec.hangs:
        return ResultStatus.TIMED_OUT
    return ResultStatus.FAILED if spec.fails else ResultStatus.COMPLETED


def fails(spec: Spec) -> bool:
    """Whether running ``spec`` under FAIL_FAST ends in a failure (its own or a child's)."""
    return spec.fails or any(fails(c) for c in spec.children)


def count_members(specs: tuple[Spec, ...]) -> int:
    return sum(1 + (count_members(s.children) if not s.hangs else 0) for s in specs)


@SETTINGS
@given(scenarios())
def test_fail_slow_runs_everything_once_in_submission_order(scenario: Scenario) -> None:
    probe = Probe()
    all_results = run(run_scenario(scenario, probe, ErrorStrategy.FAIL_SLOW))
    check_common(scenario, probe)
    for g, (specs, results) in enumerate(zip(scenario.groups, all_results, strict=True)):
        assert [r.index for r in results] == list(range(len(specs)))
        assert [r.status for r in results] == [expected_status(s) for s in specs]
        assert [r.result for r in results if r.ok] == [
            f"{g}:{i}" for i, s in enumerate(specs) if expected_status(s) is ResultStatus.COMPLETED
        ]
    assert len(probe.runs) == sum(count_members(specs) for specs in scenario.groups)


@SETTINGS
@given(scenarios(allow_hangs=False))
def test_fail_fast_raises_the_first_failure_and_leaves_nothing(scenario: Scenario) -> None:
    probe = Probe()
    any_failure = any(fails(s) for specs in scenario.groups for s in specs)
    if any_failure:
        with pytest.raises(ExceptionGroup) as info:
            run(run_scenario(scenario, probe, ErrorStrategy.FAIL_FAST))
        booms, rest = info.value.split(Boom)
        assert booms is not None and rest is None
    else:
        run(run_scenario(scenario, probe, ErrorStrategy.FAIL_FAST))
        assert len(probe.runs) == sum(count_members(specs) for specs in scenario.groups)
    check_common(scenario, probe)


@SETTINGS
@given(scenarios(), st.integers(0, 60))
def test_outside_cancellation_leaves_nothing(scenario: Scenario, after_steps: int) -> None:
    probe = Probe()

    async def cancel_later() -> str:
        task = asyncio.create_task(run_scenario(scenario, probe, ErrorStrategy.FAIL_SLOW))
        for _ in range(after_steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    outcome = run(cancel_later())
    assert outcome in ("cancelled", "finished")
    check_common(scenario, probe)


@SETTINGS
@given(
    st.lists(st.integers(0, 4), max_size=40),
    st.integers(1, 6),
    st.booleans(),
)
def test_map_holds_at_most_max_workers_items(delays: list[int], workers: int, aio: bool) -> None:
    pulled = finished = high = 0

    def note_pull() -> None:
        nonlocal pulled, high
        pulled += 1
        high = max(high, pulled - finished)

    def items() -> Any:
        for i, d in enumerate(delays):
            note_pull()
            yield i, d

    async def aitems() -> Any:
        for i, d in enumerate(delays):
            await asyncio.sleep(0)
            note_pull()
            yield i, d

    async def work(item: tuple[int, int]) -> int:
        nonlocal finished
        for _ in range(item[1]):
            await asyncio.sleep(0)
        finished += 1
        return item[0]

    async def main() -> list[Any]:
        state = ExecutionState()
        async with state.parallel(max_workers=workers) as p:
            p.map(work, aitems() if aio else items())
        return await p.gather()

    results = run(main())
    assert [r.result for r in results] == list(range(len(delays)))
    assert high <= workers
    assert pulled == finished == len(delays)


@st.composite
def dags(draw: st.DrawFn) -> list[tuple[tuple[int, ...], bool, int]]:
    """Members as (dependencies among earlier members, fails, delay)."""
    n = draw(st.integers(0, 25))
    members = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        members.append((tuple(sorted(deps)), draw(st.booleans()), draw(st.integers(0, 3))))
    return members


@SETTINGS
@given(dags(), st.integers(1, 4), st.lists(st.integers(-2, 2), min_size=25, max_size=25))
def test_dependencies_hold_on_random_dags(
    dag: list[tuple[tuple[int, ...], bool, int]], workers: int, priorities: list[int]
) -> None:
    events: list[tuple[str, int]] = []

    async def node(i: int) -> int:
        events.append(("start", i))
        for _ in range(dag[i][2]):
            await asyncio.sleep(0)
        events.append(("end", i))
        if dag[i][1]:
            raise Boom(str(i))
        return i

    async def main() -> list[Any]:
        state = ExecutionState()
        async with state.parallel(max_workers=workers) as p:
            for i, (deps, _, _) in enumerate(dag):
                p.add(str(i), node(i), after=[str(d) for d in deps], priority=priorities[i])
        return await p.gather()

    results = run(main())
    ok: set[int] = set()
    for i, (deps, fails_, _) in enumerate(dag):
        if all(d in ok for d in deps):
            assert results[i].status is (ResultStatus.FAILED if fails_ else ResultStatus.COMPLETED)
            start = events.index(("start", i))
            assert all(events.index(("end", d)) < start for d in deps)
            if not fails_:
                ok.add(i)
        else:
            assert results[i].status is ResultStatus.SKIPPED
            assert ("start", i) not in events


@SETTINGS
@given(st.lists(st.integers(-3, 3), max_size=30), st.integers(1, 4))
def test_contended_members_start_by_priority(priorities: list[int], workers: int) -> None:
    started: list[int] = []

    async def job(i: int) -> None:
        started.append(i)
        await asyncio.sleep(0)

    async def main() -> None:
        state = ExecutionState()
        async with state.parallel(max_workers=workers) as p:
            for i, prio in enumerate(priorities):
                p.add(job(i), priority=prio)

    run(main())
    assert started == sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))


def member_addresses(specs: tuple[Spec, ...], group_id: str) -> dict[str, Spec]:
    """Every member's address (nested groups included) and its spec: a member runs at
    ``group[i]`` and a group opened inside it is ``group[i]::parallel``."""
    out: dict[str, Spec] = {}
    for i, spec in enumerate(specs):
        address = f"{group_id}[{i}]"
        out[address] = spec
        if spec.children:
            out.update(member_addresses(spec.children, f"{address}::parallel"))
    return out


@SETTINGS
@given(scenarios(allow_hangs=False))
def test_records_keep_their_order_and_starts_come_only_for_members_that_wait(
    scenario: Scenario,
) -> None:
    from rh_agents.core.bus import EventBus
    from rh_agents.core.records import (
        BusEvent,
        GroupCompleted,
        GroupStarted,
        MemberFinished,
        MemberStarted,
    )

    records: list[BusEvent] = []

    async def scenario_with_a_subscriber() -> None:
        bus = EventBus()
        bus.subscribe(records.append)
        state = ExecutionState(event_bus=bus, global_max_workers=scenario.global_limit)
        probe = Probe()
        async with asyncio.TaskGroup() as tg:
            for g, specs in enumerate(scenario.groups):
                tg.create_task(
                    run_group(state, probe, scenario, specs, f"{g}:", ErrorStrategy.FAIL_SLOW)
                )
        await bus.close()

    run(scenario_with_a_subscriber())
    # The outer groups are "parallel", "parallel#2", ... in the order they opened.
    roots = [r.address for r in records if isinstance(r, GroupStarted) and "::" not in r.address]
    members: dict[str, Spec] = {}
    for root in roots:
        index = 0 if root == "parallel" else int(root.split("#")[1]) - 1
        members.update(member_addresses(scenario.groups[index], root))
    position = {id(r): n for n, r in enumerate(records)}
    for address, spec in members.items():
        own = [r for r in records if r.address == address or r.address.startswith(address + "::")]
        finished = [r for r in own if isinstance(r, MemberFinished) and r.address == address]
        started = [r for r in own if isinstance(r, MemberStarted) and r.address == address]
        assert len(finished) == 1 and own[-1] is finished[0], address  # the finish is last
        waits = spec.delay > 0 or bool(spec.children)
        assert len(started) == (1 if waits else 0), address  # a start iff it waited
        if started:
            assert own[0] is started[0], address  # announced before anything it published
    for group in (r for r in records if isinstance(r, GroupStarted)):
        inside = [
            r
            for r in records
            if r.address.startswith(group.address + "[") or r.address == group.address
        ]
        assert inside[0] is group and isinstance(inside[-1], GroupCompleted), group.address
        assert position[id(inside[0])] < position[id(inside[-1])]
