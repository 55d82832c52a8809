"""Model-based property test: the parallel features combined, over random scenarios.

Each scenario is a tree of groups (up to three levels: a member may open a group of its own in
each attempt) with random worker limits, an optional global limit, retry policies on the group,
the actor, the event, the member and the state, members of every form (callable, coroutine,
event call, callable returning an event call) that fail their first ``fails`` attempts, member
and group timeouts, every error strategy with ``failure_threshold``, ``quorum`` and
``raise_exception_group``, dependencies, priorities, the four ways of reading results,
cancellation of the enclosing task at a random moment, and a bus subscriber or none.

A scenario runs in its own event loop on virtual time (``composition_support``): sleeps and
timeouts are instant and exact, and a wait that nothing will ever end is reported as a deadlock
at once. The model (what the scenario says each member does) predicts, and the run is checked
against it:

- every group ends within a bound computed from its scenario (the sum of all work and backoff
  delays: a scheduler that never leaves a slot idle cannot take longer than doing everything one
  by one), capped by its timeout and by the cancellation; the virtual clock never moves while no
  member works or backs off (that is a deadlock hidden behind a timer);
- no group limit and no global limit is ever exceeded, counting members inside an attempt (not
  backing off, not waiting on their nested group); in groups nothing can stop early, no slot is
  idle while a member waits for one;
- each member is called exactly ``min(fails + 1, max_attempts)`` times unless it was stopped
  (timed out, cancelled, skipped), with the nearest retry policy winning (event > actor >
  member > group > state), backoff waits respected, and its result's ``attempts`` says so;
- statuses are the model's, exactly where nothing can interfere, and within what the strategy
  allows otherwise; errors are the strategy's (a timed-out group's error carries ``.results``);
  no attempt starts or ends once its group has stopped it;
- each member sees the context variables of its ``add()`` (every other member is added under
  a value of its own), never a value another member set, and none reaches the block;
- no internal error, no task left behind, no "never awaited" coroutine, no error in the loop;
  the bus's ``GroupCompleted`` and ``MemberFinished`` agree with the results; the run viewer's
  feed that follows the state shows what a feed fed every record shows, and agrees with the
  results.

``make test`` runs 300 scenarios (the same ones each run, ``derandomize``); ``make soak`` runs
10,000 new ones (``RH_SOAK_EXAMPLES``; failures are kept in ``.hypothesis/`` and replayed).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import random
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pydantic import BaseModel

from composition_support import (
    Deadlock,
    LoopClock,
    TooLong,
    VirtualLoop,
    run_virtual,
    scenario_settings,
)
from rh_agents.core.actors import Agent, BaseActor, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy, GroupStatus, RetryPolicy
from rh_agents.core.records import EventRetrying, GroupCompleted, MemberFinished
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import FailureThresholdError, GroupFailedError, ParallelTimeoutError
from rh_agents.ui.live import LiveFeed
from ui_support import assert_feeds_agree

SETTINGS = scenario_settings(300)

# Set around the add() of every other member: each member must see what was current at its
# add() (or what its own earlier attempts set), never another member's value.
TAG: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar("tag", default=None)

EPS = 1e-6  # virtual seconds: sums of float durations
# Loop iterations allowed per scenario (the largest of 1,500 drawn scenarios took about 200):
# past it, a livelock fails in about a second instead of spinning until the test's timeout.
MAX_STEPS = 100_000
MAX_DELAY = 30.0

COMPLETED = ResultStatus.COMPLETED
FAILED = ResultStatus.FAILED
CANCELLED = ResultStatus.CANCELLED
TIMED_OUT = ResultStatus.TIMED_OUT
SKIPPED = ResultStatus.SKIPPED

EVENT_KINDS = ("event", "event_callable")


# --- the scenario model ------------------------------------------------------------------------


def _short(obj: Any) -> str:
    """``Name(field=value, ...)`` with only the fields that differ from their defaults."""
    parts = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            parts.append(
                repr(value) if f.name in ("attempts", "members") else f"{f.name}={value!r}"
            )
        elif value != default:
            parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _pretty(obj: Any, printer: Any, cycle: bool) -> None:
    """Hypothesis prints a falsifying example with this: the short form above."""
    printer.text(_short(obj))


@dataclass(frozen=True, repr=False)
class Retry:
    """A ``RetryPolicy``: ``attempts`` in all, waits ``delay * multiplier**(n-1)`` + jitter."""

    attempts: int
    delay: float = 0.0
    multiplier: float = 1.0
    jitter: float = 0.0

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.attempts,
            initial_delay=self.delay,
            multiplier=self.multiplier,
            max_delay=MAX_DELAY,
            jitter=self.jitter,
        )

    def least_wait(self, after: int) -> float:
        """The shortest wait after failed attempt ``after`` (1-based)."""
        return min(self.delay * self.multiplier ** (after - 1), MAX_DELAY)

    def most_wait(self, after: int) -> float:
        return min(self.least_wait(after) + self.jitter, MAX_DELAY)

    __repr__ = _short
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class M:
    """A member: ``kind`` says how it is added; each attempt works ``work`` seconds (0: never
    suspends), then runs ``child`` (a nested group) if any, then fails while attempt <= fails."""

    kind: str = "callable"  # callable, coro, event, event_callable
    work: float = 0.1
    fails: int = 0
    retry: Retry | None = None  # p.add(..., retry=)
    actor_retry: Retry | None = None  # Tool(retry=), event kinds only
    event_retry: Retry | None = None  # ExecutionEvent(retry=), event kinds only
    timeout: float | None = None  # p.add(..., timeout=)
    after: tuple[int, ...] = ()
    priority: int = 0
    child: G | None = None

    __repr__ = _short
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class G:
    """A group: ``state.parallel(...)`` with these options, its members, how it is read."""

    members: tuple[M, ...]
    workers: int = 5
    strategy: str = "fail_slow"  # fail_slow, fail_fast, fail_threshold
    threshold: int | float | None = None
    quorum: int | None = None
    exception_group: bool = False
    timeout: float | None = None
    member_timeout: float | None = None
    retry: Retry | None = None
    read: str = "gather"  # gather, gather_dict, stream, exit (leave the block, then gather)
    named: bool = False

    @property
    def names(self) -> bool:
        return self.named or any(m.after for m in self.members)

    def can_stop_early(self) -> bool:
        """Whether a member may be stopped by the group (a strategy, quorum or timeout)."""
        return (
            self.strategy != "fail_slow"
            or self.quorum is not None
            or self.timeout is not None
            or self.member_timeout is not None
            or any(m.timeout is not None for m in self.members)
        )

    __repr__ = _short
    _repr_pretty_ = _pretty


@dataclass(frozen=True, repr=False)
class Scenario:
    root: G
    global_limit: int | None = None
    state_retry: Retry | None = None
    cancel_at: float | None = None
    # None, sync, async, groups_only (kinds=[GroupCompleted]), or viewer: the run viewer's
    # feed following the state (its watch log) beside one fed every record of the bus.
    subscriber: str | None = None
    seed: int = 0  # for the retry jitter (tenacity draws it from ``random``)

    __repr__ = _short
    _repr_pretty_ = _pretty


def policy_for(scenario: Scenario, group: G, m: M) -> Retry | None:
    """The retry policy that applies to ``m``: the nearest one wins."""
    if m.kind == "coro":
        return None  # a bare coroutine runs once (a state-wide policy included)
    if m.kind in EVENT_KINDS:
        found = (m.event_retry, m.actor_retry, m.retry, group.retry, scenario.state_retry)
    else:
        found = (m.retry, group.retry, scenario.state_retry)
    return next((r for r in found if r is not None), None)


def max_attempts(scenario: Scenario, group: G, m: M) -> int:
    policy = policy_for(scenario, group, m)
    return policy.attempts if policy is not None else 1


def expected_calls(scenario: Scenario, group: G, m: M) -> int:
    return min(m.fails + 1, max_attempts(scenario, group, m))


def natural_statuses(scenario: Scenario, group: G) -> list[ResultStatus]:
    """Each member's status if nothing stops anything: its failures against its attempts."""
    out: list[ResultStatus] = []
    for m in group.members:
        if any(out[d] is not COMPLETED for d in m.after):
            out.append(SKIPPED)
        else:
            out.append(COMPLETED if m.fails < max_attempts(scenario, group, m) else FAILED)
    return out


def member_bound(scenario: Scenario, group: G, m: M) -> float:
    calls = expected_calls(scenario, group, m)
    policy = policy_for(scenario, group, m)
    child = group_bound(scenario, m.child) if m.child is not None else 0.0
    total = calls * (m.work + child)
    if policy is not None:
        total += sum(policy.most_wait(n) for n in range(1, calls))
    limit = m.timeout or group.member_timeout
    return min(total, limit) if limit is not None else total


def group_bound(scenario: Scenario, group: G) -> float:
    """The longest a group may take: all its work and waits one after another, or its timeout."""
    total = sum(member_bound(scenario, group, m) for m in group.members)
    return min(total, group.timeout) if group.timeout is not None else total


# --- drawing scenarios -------------------------------------------------------------------------

MEMBER_BUDGET = 60  # members over a scenario's whole tree of groups
WORK = (0.0, 0.01, 0.05, 0.1, 0.1, 0.25, 1.0)
TIMEOUTS = (0.05, 0.1, 0.15, 0.3, 0.5, 1.0, 3.0)


# Strategies built once: a scenario makes hundreds of draws.
_KINDS = st.sampled_from(("callable", "callable", "coro", "event", "event_callable"))
_WORK = st.sampled_from(WORK)
_FAILS = st.sampled_from((0, 0, 0, 1, 1, 2, 3))
_TIMEOUT = st.sampled_from(TIMEOUTS)
_PRIORITY = st.sampled_from((0, 0, 0, 1, -1))
_STRATEGY = st.sampled_from(("fail_slow", "fail_slow", "fail_fast", "fail_threshold"))
_THRESHOLD = st.one_of(st.integers(1, 3), st.sampled_from((0.25, 0.5, 1.0)))
_READ = st.sampled_from(("gather", "gather", "gather_dict", "stream", "exit"))
_ATTEMPTS = st.integers(1, 4)
_DELAY = st.sampled_from((0.0, 0.01, 0.05, 0.1, 0.5))
_MULTIPLIER = st.sampled_from((1.0, 2.0))
_JITTER = st.sampled_from((0.0, 0.0, 0.0, 0.02))
_CANCEL_AT = st.one_of(st.sampled_from((0.0, 0.05, 0.1, 0.2)), st.floats(0, 2))
_SUBSCRIBER = st.sampled_from((None, None, "sync", "async", "groups_only", "viewer"))
_ONE_IN = {n: st.integers(1, n) for n in range(2, 9)}


def _sometimes(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws."""
    return draw(_ONE_IN[one_in]) == 1


def _retry(draw: st.DrawFn, one_in: int) -> Retry | None:
    if not _sometimes(draw, one_in):
        return None
    return Retry(draw(_ATTEMPTS), draw(_DELAY), draw(_MULTIPLIER), draw(_JITTER))


def _timeout(draw: st.DrawFn, one_in: int) -> float | None:
    return draw(_TIMEOUT) if _sometimes(draw, one_in) else None


def _member(depth: int) -> st.SearchStrategy[M]:
    """A member of a group at nesting ``depth``; ``after`` is fixed up by its group."""
    child = _GROUPS[depth + 1] if depth < MAX_DEPTH else None

    @st.composite
    def draw_member(draw: st.DrawFn) -> M:
        kind = draw(_KINDS)
        own_retry = _retry(draw, 4)
        actor_retry = event_retry = None
        if kind in EVENT_KINDS and own_retry is None:
            # (Never both a member's and an actor's or event's policy on one event member: which
            # of the two is nearer is not the question here.)
            actor_retry = _retry(draw, 4)
            event_retry = _retry(draw, 6)
        after: tuple[int, ...] = ()
        if _sometimes(draw, 4):
            after = tuple(draw(st.sets(st.integers(0, 29), min_size=1, max_size=2)))
        return M(
            kind=kind,
            work=draw(_WORK),
            fails=draw(_FAILS),
            retry=own_retry,
            actor_retry=actor_retry,
            event_retry=event_retry,
            timeout=_timeout(draw, 8),
            after=after,
            priority=draw(_PRIORITY),
            child=draw(child) if child is not None and _sometimes(draw, 8) else None,
        )

    return draw_member()


def _group(depth: int) -> st.SearchStrategy[G]:
    """A group at nesting ``depth`` (1 = the root)."""
    members = st.lists(_member(depth), min_size=1, max_size=30 if depth == 1 else 8)

    @st.composite
    def draw_group(draw: st.DrawFn) -> G:
        retry = _retry(draw, 3)
        strategy = draw(_STRATEGY)
        drawn = draw(members)
        fixed = []
        for i, m in enumerate(drawn):
            kind, own_retry = m.kind, m.retry
            if kind == "coro":
                if own_retry is not None and own_retry.attempts > 1:
                    own_retry = None  # add() refuses to re-run a bare coroutine
                if own_retry is None and retry is not None and retry.attempts > 1:
                    kind = "callable"
            after = tuple(sorted(d for d in m.after if d < i))  # only members added before
            fixed.append(dataclasses.replace(m, kind=kind, retry=own_retry, after=after))
        return G(
            members=tuple(fixed),
            workers=draw(st.integers(1, 5)),
            strategy=strategy,
            threshold=draw(_THRESHOLD) if strategy == "fail_threshold" else None,
            quorum=draw(st.integers(1, len(fixed))) if _sometimes(draw, 6) else None,
            exception_group=_sometimes(draw, 6),
            timeout=_timeout(draw, 6),
            member_timeout=_timeout(draw, 8),
            retry=retry,
            read=draw(_READ),
            named=_sometimes(draw, 2),
        )

    return draw_group()


MAX_DEPTH = 3
_GROUPS: dict[int, st.SearchStrategy[G]] = {}
for _depth in range(MAX_DEPTH, 0, -1):
    _GROUPS[_depth] = _group(_depth)


def _trimmed(group: G, budget: list[int]) -> G:
    """``group`` with nested groups dropped, last first, past ``budget`` members in all."""
    budget[0] -= len(group.members)
    members = []
    for m in group.members:
        if m.child is not None:
            if budget[0] - len(m.child.members) < 0:
                m = dataclasses.replace(m, child=None)
            else:
                m = dataclasses.replace(m, child=_trimmed(m.child, budget))
        members.append(m)
    return dataclasses.replace(group, members=tuple(members))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    return Scenario(
        root=_trimmed(draw(_GROUPS[1]), [MEMBER_BUDGET]),
        global_limit=draw(st.integers(1, 4)) if _sometimes(draw, 2) else None,
        state_retry=_retry(draw, 8),
        cancel_at=draw(_CANCEL_AT) if _sometimes(draw, 4) else None,
        subscriber=draw(_SUBSCRIBER),
        seed=draw(st.integers(0, 3)),
    )


# --- running a scenario ------------------------------------------------------------------------


class Flaky(Exception):
    """A planned failure: attempt ``attempt`` of member ``index`` of group run ``run``."""

    def __init__(self, run: int, index: int, attempt: int) -> None:
        super().__init__(f"run {run} member {index} fails attempt {attempt}")
        self.where = (run, index, attempt)


class Job(BaseModel):
    run: int
    index: int


@dataclass(eq=False)
class MemberRun:
    """One member of one group run, as the scenario sees it from inside."""

    group: GroupRun
    index: int
    spec: M
    policy: Retry | None
    attempts: int  # the max_attempts that applies
    expected: int  # calls expected unless stopped
    calls: int = 0
    phase: str = "idle"  # idle, work, between, nested, backoff, reclaim
    final: str | None = None  # ok / failed, once the last attempt ended
    attempt_ends: list[float] = field(default_factory=list)
    tag: Any = None  # the context variable TAG's value when it was added

    @property
    def name(self) -> str | None:
        return f"m{self.index}" if self.group.spec.names else None

    @property
    def value(self) -> str:
        return f"r{self.group.id}m{self.index}"

    def __repr__(self) -> str:
        return f"member {self.index} of {self.group.name}"


@dataclass(eq=False)
class GroupRun:
    """One run of a group spec (a nested group runs once per attempt of its member)."""

    id: int
    spec: G
    parent: MemberRun | None
    calm: bool  # neither this group nor any enclosing one can stop a member early
    members: list[MemberRun] = field(default_factory=list)
    group_id: str = ""
    entered_at: float | None = None
    exited_at: float | None = None
    outcome: str = "running"  # returned, raised, cancelled
    results: list[ExecutionResult[Any]] | None = None
    streamed: list[ExecutionResult[Any]] = field(default_factory=list)
    error: BaseException | None = None
    stats: Any = None
    status: GroupStatus | None = None
    doing: int = 0
    final_failures: int = 0
    final_successes: int = 0
    stopped: str | None = None  # why the group stopped its members, once we know it did
    stopped_at: float = 0.0

    @property
    def name(self) -> str:
        return f"g{self.id}"


class World:
    """Runs one scenario and records what happened, for the checks."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.loop: VirtualLoop | None = None
        self.clock = LoopClock(on_sleep=self._backoff)
        self.records: list[Any] = []
        self.state = ExecutionState(
            global_max_workers=scenario.global_limit,
            clock=self.clock,
            retry=scenario.state_retry.policy() if scenario.state_retry else None,
        )
        if scenario.subscriber == "sync":
            self.state.event_bus.subscribe(self.records.append)
        elif scenario.subscriber == "async":

            async def keep(record: Any) -> None:
                self.records.append(record)

            self.state.event_bus.subscribe(keep)
        elif scenario.subscriber == "groups_only":
            self.state.event_bus.subscribe(self.records.append, kinds=[GroupCompleted])
        elif scenario.subscriber == "viewer":
            # Followed from outside the loop: the feed takes the log when read (no timer of
            # its own, which would make virtual time pass). Wall-clock times are not compared.
            self.recorded = LiveFeed("recorded", clock_now=lambda: 0.0)
            self.state.event_bus.subscribe(self.recorded, kinds=LiveFeed.KINDS)
            self.followed = LiveFeed("followed", clock_now=lambda: 0.0)
            self.followed.follow(self.state)
        self.runs: list[GroupRun] = []
        self.doing = 0  # members inside an attempt, over every group
        self.budgeted = 0  # works and backoffs in progress: what may make time pass
        self.task_member: dict[asyncio.Task[Any], MemberRun] = {}
        self.problems: dict[str, list[str]] = {}
        self.actors: dict[tuple[Retry | None, bool], BaseActor] = {}
        self.events: dict[tuple[Retry | None, Retry | None, bool], ExecutionEvent[Any]] = {}
        self.root_done = False
        self.root_end: float | None = None
        self.cancel_fired = False
        self.cancel_time: float | None = None
        self.leftover: list[str] = []
        self.root_task: asyncio.Task[None] | None = None

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def problem(self, kind: str, text: str) -> None:
        self.problems.setdefault(kind, []).append(f"t={self.now():.6g}: {text}")

    # --- the members' work -------------------------------------------------------------------

    def _enter(self, mr: MemberRun) -> None:
        run = mr.group
        run.doing += 1
        self.doing += 1
        if run.doing > run.spec.workers:
            self.problem(
                "group limit",
                f"{run.doing} members of {run.name} work at once, max_workers={run.spec.workers}",
            )
        limit = self.scenario.global_limit
        if limit is not None and self.doing > limit:
            self.problem("global limit", f"{self.doing} members work at once, global={limit}")

    def _exit(self, mr: MemberRun) -> None:
        mr.group.doing -= 1
        self.doing -= 1

    @contextlib.contextmanager
    def _backoff(self, seconds: float) -> Iterator[None]:
        """Around every retry backoff (the state's clock sleeps only for those)."""
        task = asyncio.current_task()
        mr = self.task_member.get(task) if task is not None else None
        self.budgeted += 1
        if mr is not None:
            mr.phase = "backoff"
        try:
            yield
        finally:
            self.budgeted -= 1
            if mr is not None:
                mr.phase = "reclaim"

    async def attempt(self, mr: MemberRun) -> str:
        """One attempt of member ``mr``: what every form of member ends up running."""
        spec = mr.spec
        mr.calls += 1
        n = mr.calls
        if n > mr.expected:
            self.problem("calls", f"{mr} started attempt {n}; at most {mr.expected} expected")
        if n == 1:
            for d in spec.after:
                if mr.group.members[d].final != "ok":
                    self.problem("dependencies", f"{mr} started before member {d} completed")
        elif mr.policy is not None and mr.attempt_ends:
            waited = self.now() - mr.attempt_ends[-1]
            least = mr.policy.least_wait(n - 1)
            if waited < least - EPS:
                self.problem("backoff", f"{mr} retried after {waited:.6g}s, backoff {least:.6g}s")
        self._check_not_halted(mr, "started an attempt")
        seen = TAG.get()
        if seen != mr.tag and not (n > 1 and seen == ("set by", mr.group.id, mr.index)):
            self.problem("context", f"{mr} saw context value {seen!r}, added under {mr.tag!r}")
        TAG.set(("set by", mr.group.id, mr.index))  # must reach no other member
        task = asyncio.current_task()
        assert task is not None
        self.task_member[task] = mr
        mr.phase = "work"
        self._enter(mr)
        try:
            if spec.work > 0:
                self.budgeted += 1
                try:
                    await asyncio.sleep(spec.work)
                finally:
                    self.budgeted -= 1
        finally:
            self._exit(mr)
            mr.phase = "between"
        if spec.child is not None:
            mr.phase = "nested"
            try:
                await self.run_group(spec.child, mr)
            finally:
                mr.phase = "between"
        self._check_not_halted(mr, "finished an attempt")
        mr.attempt_ends.append(self.now())
        if n <= spec.fails:
            if n >= mr.attempts:
                mr.final = "failed"
                self._final_failure(mr.group)
            raise Flaky(mr.group.id, mr.index, n)
        mr.final = "ok"
        self._final_success(mr.group)
        return mr.value

    # --- when a group must have stopped its members ----------------------------------------

    def _final_failure(self, run: GroupRun) -> None:
        """A member of ``run`` fails for good (the group's ``_finish`` follows at once)."""
        run.final_failures += 1
        spec = run.spec
        if spec.strategy == "fail_fast":
            self._stopped(run, "FAIL_FAST")
        elif spec.strategy == "fail_threshold":
            assert spec.threshold is not None
            threshold = spec.threshold
            need = threshold * len(spec.members) if isinstance(threshold, float) else threshold
            if run.final_failures >= need:
                self._stopped(run, "FAIL_THRESHOLD")

    def _final_success(self, run: GroupRun) -> None:
        run.final_successes += 1
        spec = run.spec
        # (With a member timeout, one that fires at the very moment the member returns may still
        # make it TIMED_OUT: then this success is not one.)
        timeouts = spec.member_timeout is not None or any(m.timeout for m in spec.members)
        if spec.quorum is not None and not timeouts and run.final_successes >= spec.quorum:
            self._stopped(run, "quorum")

    def _stopped(self, run: GroupRun, why: str) -> None:
        if run.stopped is None:
            run.stopped = why
            run.stopped_at = self.now()

    def _check_not_halted(self, mr: MemberRun, what: str) -> None:
        """No attempt starts or ends once its group stopped it: at once for the group's own
        stop (it cancels its workers then and there), within the same virtual instant for the
        stop of an enclosing group or the cancellation of the enclosing task (which reach the
        group as soon as the task waiting on it runs)."""
        now = self.now()
        if self.cancel_fired and now > (self.cancel_time or 0.0) + EPS:
            self.problem("after stop", f"{mr} {what} after the enclosing task was cancelled")
        run: GroupRun | None = mr.group
        while run is not None:
            timeout = run.spec.timeout
            if run.stopped is not None and (run is mr.group or now > run.stopped_at + EPS):
                self.problem("after stop", f"{mr} {what} after {run.name} stopped ({run.stopped})")
            elif timeout is not None and now > (run.entered_at or 0.0) + timeout + EPS:
                self.problem("after stop", f"{mr} {what} after {run.name} timed out")
            run = run.parent.group if run.parent is not None else None

    # --- events ------------------------------------------------------------------------------

    async def _handle(self, input: Job, context: str, state: ExecutionState) -> str:
        return await self.attempt(self.runs[input.run].members[input.index])

    def _event(self, spec: M) -> ExecutionEvent[Any]:
        nested = spec.child is not None
        key = (spec.actor_retry, spec.event_retry, nested)
        event = self.events.get(key)
        if event is None:
            actor_key = (spec.actor_retry, nested)
            actor = self.actors.get(actor_key)
            if actor is None:
                cls = Agent if nested else Tool
                actor = self.actors[actor_key] = cls(
                    name="agent" if nested else "leaf",
                    input_model=Job,
                    handler=self._handle,
                    retry=spec.actor_retry.policy() if spec.actor_retry else None,
                )
            event = self.events[key] = ExecutionEvent(
                actor=actor, retry=spec.event_retry.policy() if spec.event_retry else None
            )
        return event

    # --- groups ------------------------------------------------------------------------------

    def _add(self, p: Any, mr: MemberRun) -> None:
        spec = mr.spec
        options: dict[str, Any] = {}
        if mr.name is not None:
            options["name"] = mr.name
        if spec.after:
            options["after"] = [f"m{d}" for d in spec.after]
        if spec.priority:
            options["priority"] = spec.priority
        if spec.timeout is not None:
            options["timeout"] = spec.timeout
        if spec.retry is not None:
            options["retry"] = spec.retry.policy()
        state = self.state
        job = Job(run=mr.group.id, index=mr.index)
        # Every other member is added under a context value of its own.
        token = TAG.set(("added", mr.group.id, mr.index)) if mr.index % 2 else None
        mr.tag = TAG.get()
        try:
            if spec.kind == "callable":
                p.add(lambda: self.attempt(mr), **options)
            elif spec.kind == "coro":
                p.add(self.attempt(mr), **options)
            elif spec.kind == "event":
                p.add(self._event(spec)(job, "", state), **options)
            else:
                event = self._event(spec)
                p.add(lambda: event(job, "", state), **options)
        finally:
            if token is not None:
                TAG.reset(token)

    async def run_group(self, spec: G, parent: MemberRun | None) -> None:
        scenario = self.scenario
        calm = not spec.can_stop_early() and (parent is None or parent.group.calm)
        run = GroupRun(id=len(self.runs), spec=spec, parent=parent, calm=calm)
        self.runs.append(run)
        for i, m in enumerate(spec.members):
            run.members.append(
                MemberRun(
                    group=run,
                    index=i,
                    spec=m,
                    policy=policy_for(scenario, spec, m),
                    attempts=max_attempts(scenario, spec, m),
                    expected=expected_calls(scenario, spec, m),
                )
            )
        group = self.state.parallel(
            max_workers=spec.workers,
            name=run.name,
            error_strategy=ErrorStrategy(spec.strategy),
            timeout=spec.timeout,
            member_timeout=spec.member_timeout,
            failure_threshold=spec.threshold,
            quorum=spec.quorum,
            raise_exception_group=spec.exception_group,
            retry=spec.retry.policy() if spec.retry else None,
        )
        run.entered_at = self.now()
        outside = TAG.get()
        try:
            async with group as p:
                run.group_id = p.group_id
                for mr in run.members:
                    self._add(p, mr)
                if spec.read == "gather":
                    run.results = await p.gather()
                elif spec.read == "gather_dict":
                    by_key = await p.gather_dict()
                    keys = [mr.name if mr.name is not None else mr.index for mr in run.members]
                    if list(by_key) != keys:
                        self.problem("results", f"{run.name}: gather_dict keys {list(by_key)}")
                    run.results = [by_key[k] for k in keys]
                elif spec.read == "stream":
                    async for result in p.stream():
                        run.streamed.append(result)
                    run.results = await p.gather()
            if run.results is None:
                run.results = await p.gather()  # after the block: the stored results
            if TAG.get() != outside:
                self.problem("context", f"{run.name}: a member's context value reached the block")
            run.outcome = "returned"
        except asyncio.CancelledError:
            run.outcome = "cancelled"
            raise
        except Exception as exc:
            run.outcome = "raised"
            run.error = exc
        finally:
            run.exited_at = self.now()
            run.stats = group.statistics()
            run.status = group.status

    # --- the scenario's loop -----------------------------------------------------------------

    def stall_check(self, new_time: float) -> None:
        """Called when virtual time is about to move: something must be working then."""
        if self.root_done:
            return
        if self.budgeted == 0:
            raise Deadlock(
                f"deadlock: virtual time would move from {self.now():.6g}s to {new_time:.6g}s "
                "while no member works or backs off (only a timeout or the cancellation could "
                f"end the wait). {self.describe()}"
            )
        if self.cancel_fired:
            return
        limit = self.scenario.global_limit
        if limit is not None and self.doing >= limit:
            return
        for run in self.runs:
            if not run.calm or run.entered_at is None or run.exited_at is not None:
                continue
            busy = sum(1 for mr in run.members if mr.phase in ("work", "nested"))
            waiting = [mr.index for mr in run.members if self._waits_for_slot(mr)]
            if waiting and busy < run.spec.workers:
                self.problem(
                    "idle slot",
                    f"{run.name}: members {waiting} wait while {busy} of "
                    f"{run.spec.workers} slots are busy"
                    + (f" and {self.doing} of {limit} global slots" if limit else ""),
                )

    def _waits_for_slot(self, mr: MemberRun) -> bool:
        if mr.final is not None:
            return False
        if mr.phase == "reclaim":
            return True
        return (
            mr.phase == "idle"
            and mr.calls == 0
            and all(mr.group.members[d].final == "ok" for d in mr.spec.after)
        )

    def describe(self) -> str:
        lines = []
        for run in self.runs:
            if run.entered_at is None or run.exited_at is not None:
                continue
            phases = ", ".join(
                f"{mr.index}:{mr.phase}/{mr.calls}" for mr in run.members if mr.final is None
            )
            lines.append(f"{run.name} (workers={run.spec.workers}) unfinished: {phases}")
        return "Open groups: " + ("; ".join(lines) or "none")

    async def main(self, loop: VirtualLoop) -> None:
        self.loop = loop
        loop.stall_check = self.stall_check
        loop.describe = self.describe
        before = {t for t in asyncio.all_tasks() if not t.done()}
        root = self.root_task = loop.create_task(self.run_group(self.scenario.root, None))
        root.add_done_callback(self._root_ended)
        handle = None
        if self.scenario.cancel_at is not None:
            handle = loop.call_later(self.scenario.cancel_at, self._cancel_root)
        await asyncio.wait([root])
        if handle is not None:
            handle.cancel()
        alive = {t for t in asyncio.all_tasks() if not t.done()} - before
        self.leftover = [
            repr(t) for t in alive if not t.get_coro().__qualname__.startswith("Subscription.")
        ]
        await self.state.event_bus.close(drain=True)
        if self.scenario.subscriber == "viewer":
            self.followed.finish()  # (what the run logged is taken: the feed lets go)

    def _root_ended(self, task: asyncio.Task[None]) -> None:
        self.root_done = True
        self.root_end = self.now()

    def _cancel_root(self) -> None:
        assert self.root_task is not None
        self.cancel_fired = self.root_task.cancel()
        self.cancel_time = self.now()


def run_scenario(scenario: Scenario) -> tuple[World, list[str]]:
    """Run ``scenario`` in its own virtual-time loop; the world and the warnings it left."""
    world = World(scenario)
    bound = group_bound(scenario, scenario.root)
    # Objects from before are frozen: the collection after the run (a coroutine never awaited
    # warns when it is collected) then only looks at this scenario's objects, which is fast.
    saved = random.getstate()
    random.seed(scenario.seed)
    gc.freeze()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run_virtual(world.main, max_time=10 * bound + 100, max_steps=MAX_STEPS)
            finally:
                gc.collect()
    finally:
        gc.unfreeze()
        random.setstate(saved)
    return world, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


# --- the checks --------------------------------------------------------------------------------


def known_results(run: GroupRun) -> list[ExecutionResult[Any]] | None:
    """Every member's result, if the run handed them out (returned, or in the error)."""
    if run.results is not None:
        return run.results
    # (A member's own ParallelTimeoutError has empty .results: that member's result says it.)
    results = getattr(run.error, "results", None)
    return list(results) if results else None


def check_member(world: World, run: GroupRun, mr: MemberRun, r: ExecutionResult[Any]) -> None:
    spec = mr.spec
    group = run.spec
    where = f"{mr} ({spec!r}): {r!r}, called {mr.calls}x"
    assert r.index == mr.index and r.name == mr.name, f"wrong index/name: {where}"
    assert r.ok == (r.status is COMPLETED), f"ok does not match the status: {where}"
    if r.status is COMPLETED:
        assert spec.fails < mr.attempts and mr.calls == spec.fails + 1, f"completed: {where}"
        assert r.result == mr.value, f"wrong value: {where}"
    elif r.status is FAILED:
        assert spec.fails >= mr.attempts and mr.calls == mr.attempts, f"failed: {where}"
        assert isinstance(r.exception, Flaky), f"failed with another error: {where}"
        assert r.exception.where == (run.id, mr.index, mr.attempts), f"wrong failure: {where}"
    elif r.status is TIMED_OUT:
        assert (
            spec.timeout is not None
            or group.member_timeout is not None
            or group.timeout is not None
        ), f"timed out without a timeout: {where}"
    elif r.status is CANCELLED:
        assert group.strategy != "fail_slow" or group.quorum is not None, (
            f"cancelled, but nothing in its group cancels: {where}"
        )
    elif r.status is SKIPPED:
        assert mr.calls == 0, f"skipped yet called: {where}"
    if r.status in (COMPLETED, FAILED):
        # "attempts" says how many times the member was called (the retries it took).
        assert r.attempts == mr.calls, f"attempts={r.attempts} but called {mr.calls}x: {where}"
        least = mr.calls * spec.work
        if mr.policy is not None:
            least += sum(mr.policy.least_wait(n) for n in range(1, mr.calls))
        assert r.execution_time >= least - EPS, f"execution_time < {least}: {where}"
        limit = spec.timeout or group.member_timeout
        if limit is not None:
            assert r.execution_time <= limit + EPS, f"ran past its timeout {limit}: {where}"
    if spec.after:
        deps_ok = all(results_status(run, d) is COMPLETED for d in spec.after)
        if r.status is SKIPPED:
            assert not deps_ok, f"skipped although its dependencies completed: {where}"
        elif r.status in (COMPLETED, FAILED):
            assert deps_ok, f"ran although a dependency did not complete: {where}"


def results_status(run: GroupRun, index: int) -> ResultStatus | None:
    results = known_results(run)
    return results[index].status if results is not None else None


def check_run_results(world: World, run: GroupRun) -> None:
    """A group run that ended by itself: its results and error against the model."""
    scenario = world.scenario
    spec = run.spec
    n = len(spec.members)
    error = run.error
    results = known_results(run)
    what = f"{run.name} {spec!r}"

    # Which error the strategy may raise.
    if error is not None:
        # (raise_exception_group=True: a GroupFailedError whatever stopped the group)
        allowed: tuple[type[BaseException], ...] = (GroupFailedError,)
        if spec.exception_group:
            pass
        elif spec.strategy == "fail_fast":
            allowed += (Flaky, ParallelTimeoutError)
        elif spec.strategy == "fail_threshold":
            allowed += (FailureThresholdError, ParallelTimeoutError)
        assert isinstance(error, allowed), f"{what} raised {error!r}"
        if isinstance(error, Flaky):
            assert error.where[0] == run.id, f"{what} raised another group's failure {error!r}"
            mr = run.members[error.where[1]]
            assert error.where[2] == mr.attempts, f"{what} raised {error!r} before the last try"
        if isinstance(error, GroupFailedError):
            assert spec.exception_group, f"{what} raised {error!r} without being asked"
    if run.status is GroupStatus.TIMED_OUT and spec.strategy != "fail_slow" and error is not None:
        # "A timed-out group keeps every result that finished, under every strategy (an error
        # raised for the timeout carries .results)."
        assert results is not None, f"{what} timed out; its {error!r} carries no .results"

    if results is not None:
        assert len(results) == n, f"{what}: {len(results)} results for {n} members"
        for mr, r in zip(run.members, results, strict=True):
            check_member(world, run, mr, r)
        counts = Counter(r.status for r in results)
        stats = run.stats
        assert (
            stats.succeeded,
            stats.failed,
            stats.cancelled,
            stats.timed_out,
            stats.skipped,
        ) == (
            counts[COMPLETED],
            counts[FAILED],
            counts[CANCELLED],
            counts[TIMED_OUT],
            counts[SKIPPED],
        ), f"{what}: statistics {stats} against results {counts}"
        if run.streamed:
            # stream() gave each result once; all of them unless the strategy's error ended it.
            streamed = {id(r) for r in run.streamed}
            assert len(streamed) == len(run.streamed) <= n, f"{what}: stream() repeated one"
            assert streamed <= {id(r) for r in results}, f"{what}: stream() gave other results"
            assert error is not None or len(streamed) == n, f"{what}: stream() missed some"

    # Exact predictions where nothing can cut a member short.
    if (
        spec.timeout is None
        and spec.member_timeout is None
        and not any(m.timeout for m in spec.members)
    ):
        natural = natural_statuses(scenario, spec)
        failures = natural.count(FAILED)
        successes = natural.count(COMPLETED)
        quorum = spec.quorum
        reaches_quorum = quorum is not None and successes >= quorum
        threshold = spec.threshold
        if spec.strategy == "fail_fast":
            stops = failures > 0
        elif spec.strategy == "fail_threshold":
            assert threshold is not None
            stops = failures >= (threshold * n if isinstance(threshold, float) else threshold)
        else:
            stops = False
        if not stops and not reaches_quorum:
            assert results is not None, f"{what} raised {error!r}; every member should have run"
            got = [r.status for r in results]
            assert got == natural, f"{what}: statuses {got}, expected {natural}"
            assert (error is not None) == (spec.exception_group and got.count(COMPLETED) < n), (
                f"{what}: raised {error!r}"
            )
        elif spec.strategy == "fail_slow" and reaches_quorum:
            assert results is not None, f"{what} raised {error!r} with a quorum"
            got = [r.status for r in results]
            assert got.count(COMPLETED) == quorum, f"{what}: {got}, quorum {quorum}"
        elif stops and quorum is None:
            assert error is not None, f"{what} did not raise: {failures} failures are due"
            if spec.exception_group:  # (what the end raises, whatever stopped the group)
                assert isinstance(error, GroupFailedError), f"{what} raised {error!r}"
            elif spec.strategy == "fail_threshold":
                assert isinstance(error, FailureThresholdError), f"{what} raised {error!r}"
        if results is not None:
            for mr, r, want in zip(run.members, results, natural, strict=True):
                allowed = {want, CANCELLED, SKIPPED} if mr.spec.after else {want, CANCELLED}
                assert r.status in allowed, (
                    f"{what}: member {mr.index} is {r.status}, its own outcome would be {want}"
                )
    elif spec.strategy == "fail_slow" and not spec.exception_group:
        assert error is None, f"{what} raised {error!r} under FAIL_SLOW"


def check_records(world: World) -> None:
    """The bus's records agree with the runs' results and statistics."""
    subscriber = world.scenario.subscriber
    if subscriber is None:
        return
    if subscriber == "viewer":
        check_feeds(world)
        return
    completed: dict[str, list[GroupCompleted]] = {}
    finished: dict[tuple[str, int], list[MemberFinished]] = {}
    retrying: Counter[str] = Counter()
    for record in world.records:
        if isinstance(record, GroupCompleted):
            completed.setdefault(record.name, []).append(record)
        elif isinstance(record, MemberFinished):
            assert record.group_id is not None
            finished.setdefault((record.group_id, record.index), []).append(record)
        elif isinstance(record, EventRetrying):
            retrying[record.address] += 1
    for run in world.runs:
        if run.entered_at is None:
            continue
        records = completed.get(run.name, [])
        assert len(records) == 1, f"{run.name}: {len(records)} GroupCompleted records"
        record = records[0]
        n = len(run.spec.members)
        counts = (
            record.succeeded,
            record.failed,
            record.cancelled,
            record.timed_out,
            record.skipped,
        )
        assert record.total == n and sum(counts) == n, f"{run.name}: {record} for {n} members"
        stats = run.stats
        assert counts == (
            stats.succeeded,
            stats.failed,
            stats.cancelled,
            stats.timed_out,
            stats.skipped,
        ), f"{run.name}: GroupCompleted {counts} against statistics {stats}"
        assert record.status == run.status, f"{run.name}: {record.status} against {run.status}"
        results = known_results(run)
        if results is not None:
            by_status = Counter(r.status for r in results)
            assert counts == (
                by_status[COMPLETED],
                by_status[FAILED],
                by_status[CANCELLED],
                by_status[TIMED_OUT],
                by_status[SKIPPED],
            ), f"{run.name}: GroupCompleted {counts} against results {by_status}"
        if subscriber == "groups_only":
            continue
        for mr in run.members:
            got = finished.get((run.group_id, mr.index), [])
            assert len(got) == 1, f"{mr}: {len(got)} MemberFinished records"
            member = got[0]
            if results is not None:
                r = results[mr.index]
                assert (member.status, member.attempts) == (r.status.value, r.attempts), (
                    f"{mr}: MemberFinished {member.status}/{member.attempts} against {r!r}"
                )
            if member.status in ("completed", "failed"):
                assert member.attempts == mr.calls, f"{mr}: {member} but called {mr.calls}x"
                address = f"{run.group_id}[{mr.index}]"
                retries = retrying[address] + retrying[address + "::leaf"]
                retries += retrying[address + "::agent"]
                assert retries == mr.calls - 1, f"{mr}: {retries} EventRetrying, {mr.calls} calls"


def check_feeds(world: World) -> None:
    """The viewer's feed that followed the state shows what the one fed every record shows,
    and its members agree with the results; the state is no longer watched."""
    assert world.state.watch is None, "the feed let go, but the state still logs"
    assert_feeds_agree(world.recorded, world.followed)
    nodes = {node["address"]: node for node in world.followed.all_nodes()}
    for run in world.runs:
        results = known_results(run)
        if run.entered_at is None or results is None:
            continue
        for index, result in enumerate(results):
            node = nodes.get(f"{run.group_id}[{index}]")
            assert node is not None, f"{run.name}[{index}]: no node in the followed feed"
            assert (node["status"], node["attempts"]) == (result.status.value, result.attempts), (
                f"{run.name}[{index}]: node {node['status']}/{node['attempts']} against {result!r}"
            )


def check_world(world: World, runtime_warnings: list[str], loop_errors: list[Any]) -> None:
    scenario = world.scenario
    if currently_in_test_context():
        note(f"{len(world.runs)} group runs; problems: {world.problems}")
    problems = world.problems

    # Nothing went wrong inside the library or the loop.
    assert not world.state.internal_errors, f"internal errors: {world.state.internal_errors!r}"
    assert not loop_errors, f"errors reported by the event loop: {loop_errors}"

    # Calls: never more than the model says, after the dependencies, with the backoff between.
    assert "calls" not in problems, problems["calls"][:5]
    assert "dependencies" not in problems, problems["dependencies"][:5]
    assert "backoff" not in problems, problems["backoff"][:5]
    assert "after stop" not in problems, problems["after stop"][:5]
    assert "results" not in problems, problems["results"][:5]
    # Each member sees the context variables of its add(), never another member's.
    assert "context" not in problems, problems["context"][:5]

    # Limits, counted around the work itself; no slot idle while a member waits for one.
    assert "group limit" not in problems, problems["group limit"][:5]
    assert "global limit" not in problems, problems["global limit"][:5]
    assert "idle slot" not in problems, problems["idle slot"][:5]

    # No deadlock (run_virtual raised one), and every group within its bound.
    bound = group_bound(scenario, scenario.root)
    assert world.root_end is not None
    if world.cancel_fired:
        assert world.cancel_time is not None
        assert world.root_end <= world.cancel_time + EPS, (
            f"cancelled at {world.cancel_time:.6g}s, the group ended only at {world.root_end:.6g}s"
        )
    assert world.root_end <= bound + EPS, (
        f"the scenario took {world.root_end:.6g}s (virtual), its bound is {bound:.6g}s"
    )
    if scenario.global_limit is None:  # else a nested group may wait for others' slots
        for run in world.runs:
            if run.exited_at is not None and run.entered_at is not None:
                took = run.exited_at - run.entered_at
                assert took <= group_bound(scenario, run.spec) + EPS, (
                    f"{run.name} took {took:.6g}s, bound {group_bound(scenario, run.spec):.6g}s"
                )

    # Nothing left behind.
    assert not world.leftover, f"tasks left after the group ended: {world.leftover}"
    assert not runtime_warnings, f"warnings: {runtime_warnings}"

    # The enclosing task: cancelled if and only if the cancellation reached it.
    root_task = world.root_task
    assert root_task is not None and root_task.done()
    if world.cancel_fired:
        assert root_task.cancelled(), "the cancellation of the enclosing task was swallowed"
    else:
        assert not root_task.cancelled(), "the enclosing task was cancelled by nobody"
        assert root_task.exception() is None, f"the scenario failed: {root_task.exception()!r}"

    # Every run that ended by itself: results, errors, statuses; then the bus's records.
    for run in world.runs:
        if run.outcome in ("returned", "raised"):
            check_run_results(world, run)
        else:
            assert run.outcome == "cancelled", f"{run.name} still {run.outcome}"
            assert world.cancel_fired or run.parent is not None, f"{run.name} was cancelled"
    check_records(world)


def check_scenario(scenario: Scenario) -> None:
    world, runtime_warnings = run_scenario(scenario)
    assert world.loop is not None
    loop_errors = [c.get("message") for c in world.loop.errors]
    check_world(world, runtime_warnings, loop_errors)


# --- the tests ---------------------------------------------------------------------------------

# Known cases, each run first by the property and again on its own (named) below.
KNOWN = {
    # A retry whose backoff is shorter than an attempt, under max_workers=1: both members come
    # back from their backoff while the other holds the slot; nobody must be left waiting.
    "retry_under_one_worker": Scenario(
        root=G((M(fails=1), M(fails=1)), workers=1, retry=Retry(2, delay=0.01))
    ),
    # A slot freed by a member going into its backoff goes to a member coming back from one.
    "freed_slot_to_a_member_back_from_backoff": Scenario(
        root=G(
            (M(fails=1), M(fails=1), M(work=0.3, fails=1), M(work=1.0)),
            workers=2,
            retry=Retry(2, delay=0.01),
        )
    ),
    # Member 1 times out while it waits to take its slot back after a backoff.
    "timeout_while_waiting_for_the_slot": Scenario(
        root=G(
            (M(fails=1), M(work=0.01, fails=1, timeout=0.5), M(work=1.0)),
            workers=1,
            retry=Retry(3, delay=0.03),
        )
    ),
    # The member's own policy on an event member (it has no event or actor policy).
    "member_retry_on_an_event_member": Scenario(
        root=G((M(kind="event", fails=1, retry=Retry(2)),)),
    ),
    # The group's policy on an event member whose worker was started during a backoff.
    "group_retry_on_an_event_member_after_a_backoff": Scenario(
        root=G((M(fails=1), M(kind="event", fails=1)), workers=1, retry=Retry(2, delay=0.01))
    ),
    # A nested group's policy, inside a member that the outer group's policy retries.
    "nested_group_retry_inside_a_retried_member": Scenario(
        root=G((M(child=G((M(kind="event", fails=1),), retry=Retry(2))),), retry=Retry(2))
    ),
    # A group timeout under FAIL_FAST: the error carries every result.
    "fail_fast_group_timeout_keeps_results": Scenario(
        root=G((M(work=0.1), M(work=1.0)), strategy="fail_fast", timeout=0.15)
    ),
    # A callable member that fails every attempt reports them all.
    "attempts_of_a_callable_member_that_fails": Scenario(
        root=G((M(fails=3),), retry=Retry(3)),
    ),
}


def _with_known_examples(test: Any) -> Any:
    for scenario in reversed(KNOWN.values()):
        test = example(scenario=scenario)(test)
    return test


@SETTINGS
@given(scenario=scenarios())
@_with_known_examples
def test_random_compositions_keep_every_invariant(scenario: Scenario) -> None:
    note(f"bound: {group_bound(scenario, scenario.root):.6g}s")
    check_scenario(scenario)


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_composition(name: str) -> None:
    check_scenario(KNOWN[name])


def test_the_virtual_loop_reports_a_deadlock_at_once() -> None:
    async def stuck(loop: VirtualLoop) -> None:
        await loop.create_future()

    with pytest.raises(Deadlock, match="deadlock"):
        run_virtual(stuck)


def test_the_virtual_loop_stops_a_livelock() -> None:
    async def spin(loop: VirtualLoop) -> None:
        for _ in range(10**9):  # a livelock: always ready, never done
            await asyncio.sleep(0)

    with pytest.raises(TooLong, match="loop steps"):
        run_virtual(spin, max_steps=1000)


def test_virtual_time_makes_sleeps_and_timeouts_instant_and_exact() -> None:
    async def main(loop: VirtualLoop) -> float:
        await asyncio.sleep(3600)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.sleep(5)
        return loop.time()

    assert run_virtual(main) == 3602.0


def test_a_coroutine_never_awaited_is_caught() -> None:
    """The scenario's warning check sees a coroutine dropped without being awaited."""

    async def never() -> None:
        pass

    async def main(loop: VirtualLoop) -> None:
        holder: list[Any] = [never()]
        holder.append(holder)  # a cycle: only the collector frees it

    gc.freeze()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_virtual(main)
            gc.collect()
    finally:
        gc.unfreeze()
    assert any("never awaited" in str(w.message) for w in caught)
