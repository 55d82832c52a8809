"""Property test: the resilience policies combined with the group's features, over random scenarios.

Each scenario runs one to three groups at once on one state, with random worker limits (fixed
or adaptive), an optional global limit, member timeouts, retry policies on the groups and the
state, circuit breakers on the groups, the state and the actor (their keys private or shared
across groups), rate limits on the groups and the state (private or shared by key), members of
two forms (a zero-argument callable, an event call) that succeed or fail in each attempt after
a random time or hang until their timeout, three ways of reading results, and a bus subscriber
or none. It runs on virtual time (``composition_support``: sleeps, timeouts, cool-downs and
rate-limit waits are instant and exact, a wait nothing will end is reported at once).

Checked, in every scenario:

- the run ends (no deadlock, no livelock), every member has exactly one result, the global
  limit's slots are all back, no task is left behind, no coroutine was never awaited;
- no group limit (an adaptive one: its ``max``) and no global limit is ever exceeded, counting
  calls in progress (a member backing off or waiting for a rate-limit token holds no slot);
- no call starts while its circuit is open;
- the calls of each rate limit's bucket keep to it: in any time window, at most ``calls`` plus
  the window's share of the rate (checked where nothing else can delay a call after it took
  its token: the last bucket it takes, no global limit);
- a member's result is what its calls did: completed with its first successful call's value
  (and no call after it), failed with its last call's error or the circuit's refusal, timed out
  only under a member timeout; its ``attempts`` are at least its calls and at most the nearest
  retry policy's ``max_attempts``; a member no breaker and no timeout can touch made exactly
  ``min(first success + 1, max_attempts)`` calls;
- an adaptive limit stays within its bounds;
- each member sees the context variables of its ``add()`` (some are added with a value set
  for them alone), never a value another member set, and none reaches the block.

``make test`` runs 150 scenarios (the same each run); ``make soak`` runs 3,000 new ones
(``RH_SOAK_EXAMPLES``).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import example, given, note
from hypothesis import strategies as st
from pydantic import BaseModel

from composition_support import LoopClock, VirtualLoop, run_virtual, scenario_settings
from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import CircuitOpenError
from rh_agents.resilience import AdaptiveLimit, CircuitBreaker, RateLimit, RetryPolicy
from rh_agents.resilience.breaker import CircuitState

# A scenario here costs more than one of the composition suite: the soak runs three tenths
# of its count (10,000 -> 3,000).
SETTINGS = scenario_settings(150, soak_share=0.3)

EPS = 1e-6
HANG = 1000.0  # a call that only a member timeout ends
MAX_STEPS = 200_000


# --- the scenario --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What one call does: succeed or fail after ``duration`` virtual seconds."""

    ok: bool
    duration: float


@dataclass(frozen=True)
class MemberSpec:
    steps: tuple[Step, ...]  # call k does steps[min(k, len - 1)]
    form: str  # "callable" or "event"
    tagged: bool = False  # added with a context variable set to its own value

    def step(self, k: int) -> Step:
        return self.steps[min(k, len(self.steps) - 1)]

    def first_ok(self) -> int | None:
        for k, step in enumerate(self.steps):
            if step.ok:
                return k
        return None


@dataclass(frozen=True)
class BreakerSpec:
    threshold: int
    cooldown: float
    half_open: int
    key: str | None

    def make(self) -> CircuitBreaker:
        return CircuitBreaker(
            failure_threshold=self.threshold,
            cooldown=self.cooldown,
            half_open_max_calls=self.half_open,
            key=self.key,
        )


@dataclass(frozen=True)
class RateSpec:
    calls: int
    period: float
    key: str | None

    def make(self) -> RateLimit:
        return RateLimit(self.calls, self.period, key=self.key)


@dataclass(frozen=True)
class RetrySpec:
    attempts: int
    delay: float

    def make(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.attempts, initial_delay=self.delay, jitter=0)


@dataclass(frozen=True)
class GroupSpec:
    members: tuple[MemberSpec, ...]
    workers: int
    adaptive: tuple[int, int, int] | None  # (min, max, initial)
    member_timeout: float | None
    retry: RetrySpec | None
    breaker: BreakerSpec | None
    rate: RateSpec | None
    reader: str

    def cap(self) -> int:
        return self.adaptive[1] if self.adaptive is not None else self.workers


@dataclass(frozen=True)
class Scenario:
    groups: tuple[GroupSpec, ...]
    global_limit: int | None
    retry: RetrySpec | None
    breaker: BreakerSpec | None
    rate: RateSpec | None
    actor_breaker: BreakerSpec | None
    subscriber: bool


KEYS = st.sampled_from([None, "shared"])


@st.composite
def breakers(draw: st.DrawFn) -> BreakerSpec:
    return BreakerSpec(
        threshold=draw(st.integers(1, 3)),
        cooldown=draw(st.sampled_from([0.0, 1.0, 5.0, 40.0])),
        half_open=draw(st.integers(1, 2)),
        key=draw(KEYS),
    )


@st.composite
def rates(draw: st.DrawFn) -> RateSpec:
    # Rates of a power of two per second: the bucket's arithmetic (aiolimiter's) stays exact
    # on virtual time, whose clock moves only when the loop waits. (With 3 per 0.5 s, a
    # wake-up computed a rounding error short of its level finds the bucket still full and
    # asks again for the same instant: a real clock moves on meanwhile, a virtual one does not.)
    return RateSpec(
        calls=draw(st.sampled_from([1, 2, 4])),
        period=draw(st.sampled_from([0.5, 1.0, 4.0])),
        key=draw(st.sampled_from([None, "api"])),
    )


@st.composite
def retries(draw: st.DrawFn) -> RetrySpec:
    return RetrySpec(attempts=draw(st.integers(1, 4)), delay=draw(st.sampled_from([0.0, 0.5, 2.0])))


@st.composite
def members(draw: st.DrawFn, timeout: float | None) -> MemberSpec:
    durations = [0.0, 0.5, 1.0, 3.0] + ([HANG] if timeout is not None else [])
    steps = draw(
        st.lists(
            st.builds(Step, ok=st.booleans(), duration=st.sampled_from(durations)),
            min_size=1,
            max_size=4,
        )
    )
    return MemberSpec(
        tuple(steps), draw(st.sampled_from(["callable", "event"])), draw(st.booleans())
    )


@st.composite
def groups(draw: st.DrawFn) -> GroupSpec:
    timeout = draw(st.sampled_from([None, None, 2.0, 5.0]))
    adaptive = None
    if draw(st.booleans()) and draw(st.booleans()):
        low = draw(st.integers(1, 2))
        high = draw(st.integers(low, 4))
        adaptive = (low, high, draw(st.integers(low, high)))
    return GroupSpec(
        members=tuple(draw(st.lists(members(timeout), min_size=1, max_size=6))),
        workers=draw(st.integers(1, 4)),
        adaptive=adaptive,
        member_timeout=timeout,
        retry=draw(st.none() | retries()),
        breaker=draw(st.none() | breakers()),
        rate=draw(st.none() | rates()),
        reader=draw(st.sampled_from(["gather", "dict", "as_completed"])),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    drawn = tuple(draw(st.lists(groups(), min_size=1, max_size=3)))
    global_limit = draw(st.none() | st.integers(1, 4))
    retry = draw(st.none() | retries())
    breaker = draw(st.none() | breakers())
    rate = draw(st.none() | rates())
    # One key is one limit (a RateLimit naming a key claimed with other settings is refused):
    # every user of the key has the settings of the first one drawn.
    keyed = [r for r in (rate, *(g.rate for g in drawn)) if r is not None and r.key]
    if keyed:
        first = keyed[0]
        rate = first if rate is not None and rate.key else rate
        drawn = tuple(
            replace(g, rate=first) if g.rate is not None and g.rate.key else g for g in drawn
        )
    return Scenario(
        groups=drawn,
        global_limit=global_limit,
        retry=retry,
        breaker=breaker,
        rate=rate,
        actor_breaker=draw(st.none() | breakers()),
        subscriber=draw(st.booleans()),
    )


# --- what the framework resolves, as the model says it --------------------------------------------


def breaker_of(scenario: Scenario, group: GroupSpec, member: MemberSpec) -> BreakerSpec | None:
    """The nearest breaker: the actor's (event calls), the group's, the state's."""
    found = scenario.actor_breaker if member.form == "event" else None
    return found or group.breaker or scenario.breaker


def circuit_key(scenario: Scenario, g: int, member: MemberSpec) -> str | None:
    breaker = breaker_of(scenario, scenario.groups[g], member)
    if breaker is None:
        return None
    if breaker.key is not None:
        return breaker.key
    return "svc" if member.form == "event" else f"group:g{g}"


def max_attempts(scenario: Scenario, group: GroupSpec) -> int:
    retry = group.retry or scenario.retry
    return retry.attempts if retry is not None else 1


def buckets(scenario: Scenario, g: int) -> list[tuple[str, RateSpec]]:
    """The rate-limit buckets a call of group ``g`` takes a token of, in order."""
    group = scenario.groups[g]
    found: list[tuple[str, RateSpec]] = []
    if group.rate is not None:
        name = f"key:{group.rate.key}" if group.rate.key else f"group:g{g}"
        found.append((name, group.rate))
    state = scenario.rate
    if state is not None and not (
        group.rate is not None and state.key and state.key == group.rate.key
    ):
        found.append((f"key:{state.key}" if state.key else "state", state))
    return found


# --- running it ----------------------------------------------------------------------------------


# Set around a member's add() (tagged members): each member must see its own value (or none),
# whatever another member set, on whichever worker it runs.
TAG: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar("tag", default=None)


class Flaky(ConnectionError):
    def __init__(self, g: int, m: int, k: int) -> None:
        super().__init__(f"g{g}[{m}] call {k} failed")
        self.where = (g, m, k)


class Call(BaseModel):
    g: int
    m: int


@dataclass
class World:
    scenario: Scenario
    state: ExecutionState | None = None
    calls: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    active: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    active_total: int = 0
    entries: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    violations: list[str] = field(default_factory=list)
    results: dict[int, list[ExecutionResult[Any]]] = field(default_factory=dict)
    limits: dict[int, AdaptiveLimit] = field(default_factory=dict)

    async def work(self, g: int, m: int) -> tuple[int, int, int]:
        scenario = self.scenario
        group = scenario.groups[g]
        spec = group.members[m]
        state = self.state
        assert state is not None
        now = asyncio.get_running_loop().time()
        key = circuit_key(scenario, g, spec)
        if key is not None:
            if key not in state.breakers:
                self.violations.append(f"g{g}[{m}] called with no circuit {key!r} made")
            elif state.breakers[key].state is CircuitState.OPEN:
                self.violations.append(f"g{g}[{m}] called at {now} while circuit {key!r} is open")
        for name, _ in buckets(scenario, g):
            self.entries[name].append(now)
        self.active[g] += 1
        self.active_total += 1
        if self.active[g] > group.cap():
            self.violations.append(f"g{g}: {self.active[g]} calls at once, cap {group.cap()}")
        limit = scenario.global_limit
        if limit is not None and self.active_total > limit:
            self.violations.append(f"{self.active_total} calls at once, global limit {limit}")
        seen = TAG.get()
        expected = (g, m) if spec.tagged else None
        # (Its own earlier attempts ran in its context: what they set, it sees, as a task
        # retrying a call would.)
        if seen != expected and not (self.calls[g, m] and seen == ("set by", g, m)):
            self.violations.append(f"g{g}[{m}] saw context value {seen!r}, not {expected!r}")
        TAG.set(("set by", g, m))  # must reach no other member, nor the block
        k = self.calls[g, m]
        self.calls[g, m] = k + 1
        step = spec.step(k)
        try:
            await asyncio.sleep(step.duration)
        finally:
            self.active[g] -= 1
            self.active_total -= 1
        if not step.ok:
            raise Flaky(g, m, k)
        return (g, m, k)

    async def main(self, loop: VirtualLoop) -> None:
        scenario = self.scenario
        bus = EventBus()
        if scenario.subscriber:
            seen: list[Any] = []
            bus.subscribe(seen.append)
        self.state = state = ExecutionState(
            event_bus=bus,
            clock=LoopClock(),
            watchdog=None,
            global_max_workers=scenario.global_limit,
            retry=scenario.retry.make() if scenario.retry else None,
            circuit_breaker=scenario.breaker.make() if scenario.breaker else None,
            rate_limit=scenario.rate.make() if scenario.rate else None,
        )
        world = self

        async def handler(input: Call, context: str, state: Any) -> tuple[int, int, int]:
            return await world.work(input.g, input.m)

        actor = Tool(
            name="svc",
            input_model=Call,
            handler=handler,
            circuit_breaker=scenario.actor_breaker.make() if scenario.actor_breaker else None,
        )
        event = ExecutionEvent(actor=actor)
        try:
            await asyncio.gather(*(self.run_group(g, event) for g in range(len(scenario.groups))))
        finally:
            await state.close()

    async def run_group(self, g: int, event: ExecutionEvent[Any]) -> None:
        spec = self.scenario.groups[g]
        state = self.state
        assert state is not None
        workers: Any = spec.workers
        if spec.adaptive is not None:
            low, high, initial = spec.adaptive
            workers = self.limits[g] = AdaptiveLimit(low, high, initial=initial)
        async with state.parallel(
            name=f"g{g}",
            max_workers=workers,
            member_timeout=spec.member_timeout,
            retry=spec.retry.make() if spec.retry else None,
            circuit_breaker=spec.breaker.make() if spec.breaker else None,
            rate_limit=spec.rate.make() if spec.rate else None,
        ) as p:
            for m, member in enumerate(spec.members):
                token = TAG.set((g, m)) if member.tagged else None
                if member.form == "event":
                    p.add(event(Call(g=g, m=m), "", state))
                else:
                    p.add(lambda m=m: self.work(g, m))
                if token is not None:
                    TAG.reset(token)
            if spec.reader == "gather":
                results = await p.gather()
            elif spec.reader == "dict":
                results = list((await p.gather_dict()).values())
            else:
                results = [r async for r in p.as_completed()]
        if TAG.get() is not None:
            self.violations.append(f"g{g}: a member's context value reached the block")
        self.results[g] = sorted(results, key=lambda r: r.index if r.index is not None else -1)


def run_scenario(scenario: Scenario) -> tuple[World, list[str]]:
    world = World(scenario)
    gc.freeze()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run_virtual(world.main, max_time=1e6, max_steps=MAX_STEPS)
            finally:
                gc.collect()
    finally:
        gc.unfreeze()
    return world, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


# --- the checks ----------------------------------------------------------------------------------


def check_member(world: World, g: int, m: int, r: ExecutionResult[Any]) -> None:
    scenario = world.scenario
    group = scenario.groups[g]
    spec = group.members[m]
    calls = world.calls[g, m]
    first_ok = spec.first_ok()
    most = max_attempts(scenario, group)
    where = f"g{g}[{m}] {spec}: {r!r}, called {calls}x"
    assert r.index == m, f"wrong index: {where}"
    assert r.ok == (r.status is ResultStatus.COMPLETED), f"ok does not match status: {where}"
    assert calls <= r.attempts <= most, f"attempts: {where}"
    # No call after the first success.
    assert first_ok is None or calls <= first_ok + 1, f"called after a success: {where}"
    if r.status is ResultStatus.COMPLETED:
        assert calls >= 1 and spec.step(calls - 1).ok, f"completed: {where}"
        assert r.result == (g, m, calls - 1), f"wrong value: {where}"
    elif r.status is ResultStatus.FAILED:
        exc = r.exception
        if isinstance(exc, Flaky):
            assert exc.where == (g, m, calls - 1), f"not its last call's error: {where}"
            assert not spec.step(calls - 1).ok, f"failed on a success: {where}"
        else:
            assert isinstance(exc, CircuitOpenError), f"failed with another error: {where}"
            assert breaker_of(scenario, group, spec) is not None, f"refused, no breaker: {where}"
    elif r.status is ResultStatus.TIMED_OUT:
        assert group.member_timeout is not None, f"timed out without a timeout: {where}"
    else:
        raise AssertionError(f"unexpected status: {where}")
    if breaker_of(scenario, group, spec) is None and group.member_timeout is None:
        expected = most if first_ok is None else min(first_ok + 1, most)
        assert calls == expected, f"expected {expected} calls: {where}"
        assert r.attempts == calls, f"attempts differ from calls: {where}"


def check_rates(world: World) -> None:
    scenario = world.scenario
    if scenario.global_limit is not None:
        return  # a call may wait for a global slot after its token: entries may bunch
    # Every user of a key gives it the same settings (one key, one limit): the bound is theirs.
    specs: dict[str, list[RateSpec]] = defaultdict(list)
    last: set[str] = set()
    skipped: set[str] = set()
    for g in range(len(scenario.groups)):
        taken = buckets(scenario, g)
        for name, _ in taken[:-1]:
            skipped.add(name)  # a later bucket's wait may delay the call after this one
        for name, spec in taken:
            specs[name].append(spec)
        if taken:
            last.add(taken[-1][0])
    for name in last - skipped:
        calls = max(spec.calls for spec in specs[name])
        per_second = max(spec.calls / spec.period for spec in specs[name])
        rate = f"{calls} at once, {per_second}/s"
        times = sorted(world.entries[name])
        for i in range(len(times)):
            for j in range(i, len(times)):
                allowed = calls + (times[j] - times[i]) * per_second + EPS
                assert j - i + 1 <= allowed, (
                    f"bucket {name} ({rate}): {j - i + 1} calls in "
                    f"[{times[i]}, {times[j]}], at most {allowed:.3f}"
                )


def check_scenario(scenario: Scenario) -> None:
    world, runtime_warnings = run_scenario(scenario)
    assert not world.violations, world.violations
    assert not runtime_warnings, runtime_warnings
    for g, group in enumerate(scenario.groups):
        results = world.results[g]
        assert [r.index for r in results] == list(range(len(group.members)))
        for m, r in enumerate(results):
            check_member(world, g, m, r)
        if g in world.limits:
            low, high, _ = group.adaptive or (1, 1, 1)
            assert low <= world.limits[g].current <= high
    state = world.state
    assert state is not None
    if state.global_slots is not None:
        assert state.global_slots.in_use == 0
    check_rates(world)


def _one_group(
    *members: MemberSpec, state_rate: RateSpec | None = None, **options: Any
) -> Scenario:
    """A scenario of one group with ``options``, and nothing on the state but ``state_rate``."""
    group: dict[str, Any] = {
        "workers": 1,
        "adaptive": None,
        "member_timeout": None,
        "retry": None,
        "breaker": None,
        "rate": None,
        "reader": "gather",
    }
    group.update(options)
    return Scenario(
        groups=(GroupSpec(members=members, **group),),
        global_limit=None,
        retry=None,
        breaker=None,
        rate=state_rate,
        actor_breaker=None,
        subscriber=False,
    )


FAIL_FAST_CALL = Step(ok=False, duration=0.0)

# Bugs this suite found, kept as the first examples it runs.
KNOWN = {
    # An event-call member timed out in its second attempt reported one attempt.
    "attempts_of_an_event_member_timed_out_in_a_retry": _one_group(
        MemberSpec((FAIL_FAST_CALL, Step(ok=False, duration=3.0)), "event"),
        member_timeout=2.0,
        retry=RetrySpec(2, 0.0),
    ),
    # A group's rate limit replaced the state's: three calls at once under one a minute.
    "a_groups_rate_limit_adds_to_the_states": _one_group(
        *[MemberSpec((Step(ok=True, duration=0.0),), "callable")] * 3,
        workers=3,
        rate=RateSpec(4, 0.5, None),
        state_rate=RateSpec(1, 4.0, None),
    ),
}


@SETTINGS
@given(scenario=scenarios())
@example(scenario=KNOWN["attempts_of_an_event_member_timed_out_in_a_retry"])
@example(scenario=KNOWN["a_groups_rate_limit_adds_to_the_states"])
def test_random_resilience_compositions_keep_every_invariant(scenario: Scenario) -> None:
    note(repr(scenario))
    check_scenario(scenario)
