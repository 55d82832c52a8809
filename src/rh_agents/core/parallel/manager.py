"""``ParallelExecutionManager``: run independent members concurrently under a limit.

Scheduling uses a bounded pool of worker tasks per group (never one task per member): at most
``max_workers`` members run at once, each worker takes the next ready member (highest
priority, then submission order) when it finishes one. Memory for running work is therefore
O(max_workers); a finished member keeps only its ``ExecutionResult``::

    async with state.parallel(max_workers=5, name="docs") as p:
        for doc in docs:
            p.add(summarize_event(doc, "", state))
        results = await p.gather()          # submission order; FAIL_SLOW never raises

Invariants (the manager is the single owner of all of these; workers are its tasks):

- ``_running`` counts workers holding a slot, and never exceeds the limit except for the
  moment a member that lent its slot (retry backoff) takes it back before a worker exits.
- A worker takes its member when it first runs (``_unstarted`` holds the workers that have
  not), so contended members start by priority; a worker cancelled before it ran held none.
- Every member ends with exactly one result, set by ``_finish``; ``_done`` counts them. A
  member finished without running has its coroutine closed there.
- Every worker task is in ``_workers`` until it ends (or, leaving normally, until its body
  is about to return: nothing of ours runs in it after that); leaving the block (any way)
  waits for all of them, so no task outlives the group.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rh_agents.core.context import Frame, current_frame, enter_frame, exit_frame
from rh_agents.core.parallel.group import GroupStatistics, ParallelEventGroup
from rh_agents.core.parallel.lazy_source import LazySource, Pulled
from rh_agents.core.parallel.member import Member, check_member, is_event_call
from rh_agents.core.parallel.metrics import GroupMetrics, MetricsRecorder
from rh_agents.core.parallel.options import check_group_options
from rh_agents.core.parallel.ready import ReadyQueue
from rh_agents.core.parallel.slots import MemberSlot
from rh_agents.core.parallel.strategy import ErrorStrategy, GroupStatus
from rh_agents.core.parallel.stream import ResultStream
from rh_agents.core.records import GroupCompleted, GroupStarted, MemberFinished, MemberStarted
from rh_agents.core.results import ExecutionResult, ResultStatus, describe_error
from rh_agents.errors import (
    ActorInputError,
    ConfigurationError,
    DependencyError,
    DuplicateMemberError,
    FailureThresholdError,
    GroupClosedError,
    GroupFailedError,
    MemberCancelledError,
    MemberFailedError,
    MemberSkippedError,
    ParallelTimeoutError,
)
from rh_agents.resilience.adaptive import AdaptiveLimit, as_adaptive

if TYPE_CHECKING:
    from rh_agents.core.bus import EventBus
    from rh_agents.core.execution import ExecutionState

__all__ = ["ParallelExecutionManager"]

T = TypeVar("T")

_FAILURE_STATUSES = (ResultStatus.FAILED, ResultStatus.TIMED_OUT)
_NO_DEPENDENCIES: tuple[str, ...] = ()
# A worker lets the event loop run at least once per this many members (see _worker).
_YIELD_EVERY = 256


class ParallelExecutionManager(Generic[T]):
    """An async context manager running members concurrently; see the module docstring.

    Made by ``ExecutionState.parallel(...)``, which documents the options.
    """

    # Slots: a group has some sixty fields, past what an instance dict stores cheaply, and a
    # group is made per parallel block.
    __slots__ = (
        "__weakref__",
        "_adaptive",
        "_announce_starts",
        "_bus_version",
        "_cancelled",
        "_completion_order",
        "_display_name",
        "_done",
        "_done_waiters",
        "_end_time",
        "_entered",
        "_failed",
        "_final_limit",
        "_finalized",
        "_fixed_limit",
        "_group",
        "_group_slot",
        "_high_water",
        "_instant",
        "_instant_task",
        "_last_failure",
        "_members",
        "_metrics",
        "_names",
        "_now",
        "_parent_frame",
        "_plain",
        "_progress",
        "_reader_space",
        "_ready",
        "_reclaimers",
        "_report_finishes",
        "_requested_name",
        "_results",
        "_retain",
        "_running",
        "_running_member",
        "_sealed",
        "_skipped",
        "_source",
        "_source_error",
        "_spawn_pending",
        "_started_at",
        "_state",
        "_status",
        "_stop_group_status",
        "_stop_status",
        "_succeeded",
        "_timed_out",
        "_timeout_handle",
        "_total",
        "_trigger",
        "_unretained",
        "_unstarted",
        "_wall_time",
        "_workers",
        "circuit_breaker",
        "error_strategy",
        "failure_threshold",
        "group_id",
        "member_timeout",
        "quorum",
        "raise_exception_group",
        "rate_limit",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        state: ExecutionState,
        *,
        max_workers: int | str | AdaptiveLimit = 5,
        name: str | None = None,
        error_strategy: ErrorStrategy | str = ErrorStrategy.FAIL_SLOW,
        timeout: float | None = None,
        member_timeout: float | None = None,
        failure_threshold: float | None = None,
        quorum: int | None = None,
        raise_exception_group: bool = False,
        retry: Any = None,
        circuit_breaker: Any = None,
        retain_results: bool = True,
        rate_limit: Any = None,
    ) -> None:
        # resilience: "auto" or an AdaptiveLimit makes the limit follow load (see _limit)
        self._adaptive = as_adaptive(max_workers)
        if self._adaptive is not None:
            max_workers = self._adaptive.current
        limit, strategy = check_group_options(
            max_workers=max_workers,
            name=name,
            error_strategy=error_strategy,
            timeout=timeout,
            member_timeout=member_timeout,
            failure_threshold=failure_threshold,
            quorum=quorum,
        )

        self._state = state
        self._now = state.clock.now  # bound once: read several times per member
        self._group_slot = MemberSlot(self)
        self._instant: deque[Member] = deque()  # cache hits waiting for the cache lane
        self._instant_task: asyncio.Task[None] | None = None
        self._plain = False  # set on entry: no policy applies, members run directly
        self._fixed_limit = limit
        self.rate_limit = rate_limit
        self._requested_name = name
        self.error_strategy = strategy
        self.timeout = timeout
        self.member_timeout = member_timeout
        self.failure_threshold = failure_threshold
        self.quorum = quorum
        self.raise_exception_group = raise_exception_group
        self.retry = retry
        self.circuit_breaker = circuit_breaker
        self._retain = retain_results

        self._group: ParallelEventGroup | None = None  # built on first read of .group
        self._display_name = ""
        self._status = GroupStatus.PENDING
        self._end_time: float | None = None
        self.group_id = ""
        self._entered = False
        self._sealed = False  # no more add(): gather/stream started or block left
        self._finalized = False
        self._members: list[Member] = []
        self._names: dict[str, int] = {}
        self._ready = ReadyQueue()
        self._source: LazySource | None = None
        self._results: list[ExecutionResult[Any] | None] = []
        self._completion_order: list[int] = []
        self._unretained: deque[ExecutionResult[Any]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._running_member: dict[asyncio.Task[None], Member] = {}
        self._unstarted: set[asyncio.Task[None]] = set()
        self._source_error: Exception | None = None
        self._last_failure: ExecutionResult[Any] | None = None
        self._reclaimers: deque[asyncio.Future[None]] = deque()
        self._running = 0
        self._high_water = 0
        self._total = 0
        self._done = 0
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0
        self._timed_out = 0
        self._skipped = 0
        self._stop_status: ResultStatus | None = None
        self._stop_group_status: GroupStatus | None = None
        self._trigger: ExecutionResult[Any] | None = None
        # One future per task waiting for the whole group (each cancellable on its own).
        self._done_waiters: list[asyncio.Future[None]] = []
        self._progress: asyncio.Future[None] | None = None
        self._reader_space: asyncio.Future[None] | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._spawn_pending = False  # a _spawn is scheduled for the loop's next turn
        self._final_limit: int | None = None  # the limit when the group ended
        # Whether member records would reach anyone, as of the bus's version (_note_listeners).
        self._bus_version = -1
        self._announce_starts = False
        self._report_finishes = False
        self._parent_frame: Frame | None = None
        self._started_at = 0.0
        self._wall_time: float | None = None
        self._metrics = MetricsRecorder()  # observability: per-member timings

    # --- adaptive limit (resilience) -------------------------------------------------------

    @property
    def _limit(self) -> int:
        adaptive = self._adaptive
        return adaptive.current if adaptive is not None else self._fixed_limit

    @property
    def adaptive_limit(self) -> AdaptiveLimit | None:
        """The ``AdaptiveLimit`` driving this group's ``max_workers``, if any."""
        return self._adaptive

    def limit_changed(self) -> None:
        """The adaptive limit grew: hand out the new slots."""
        self._serve_reclaimers()
        self._kick()

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ParallelExecutionManager[T]:
        if self._entered:
            raise GroupClosedError("this parallel group was already used; make a new one")
        self._entered = True
        state = self._state
        self._plain = not self.has_policies
        parent = current_frame(state)
        self._parent_frame = parent
        name = self._requested_name or "parallel"
        self.group_id = parent.child_address(name)
        self._started_at = state.clock.now()
        self._display_name = self._requested_name or self.group_id.rsplit("::", 1)[-1]
        self._status = GroupStatus.RUNNING
        loop = asyncio.get_running_loop()
        if self.timeout is not None:
            self._timeout_handle = loop.call_later(self.timeout, self._on_group_timeout)
        bus = state.event_bus
        if bus.has_listeners:
            bus.publish(
                GroupStarted(
                    address=self.group_id,
                    timestamp=self._started_at,
                    group_id=parent.group_id,
                    parallel_index=parent.parallel_index,
                    is_parallel=parent.group_id is not None,
                    name=self._display_name,
                    total=self._total,
                    max_workers=self._limit,
                    parent_group_id=parent.group_id,
                )
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            # Leaving without gathering gathers (and may raise the strategy's error).
            if self._retain:
                await self._gather_all()
            else:  # nothing to collect: results were only streamed
                await self._wait_all()
                self._finalize()
                self._raise_for_strategy([])
            return
        # Leaving by an exception (or cancellation): stop everything, wait for our workers.
        self._sealed = True
        self._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
        try:
            await self._join_workers()
        finally:
            self._finalize()

    # --- adding members -------------------------------------------------------------------

    def add(
        self,
        *args: Any,
        name: str | None = None,
        after: Iterable[str] | str = _NO_DEPENDENCIES,
        priority: int = 0,
        timeout: float | None = None,
        retry: Any = None,
    ) -> int:
        """Add a member; returns its index. Three forms::

            p.add(event(input, context, state))          # a coroutine
            p.add(lambda: call(doc), name="doc2")        # a zero-argument callable
            p.add("doc3", event(input3, context, state)) # name first

        ``after`` names members that must complete first (a failed one skips this member);
        ``priority`` orders members waiting for a worker (higher first); ``timeout`` bounds
        this member alone.
        """
        if (
            len(args) == 1
            and type(args[0]) is CoroutineType
            and name is None
            and after is _NO_DEPENDENCIES
            and type(priority) is int
            and priority == 0
            and timeout is None
            and retry is None
            and self.retry is None
            and self._entered
            and not self._sealed
        ):
            # p.add(coro) with no options, the form of every member of a big group: nothing
            # below could reject it, so skip straight to adding it.
            return self._add_member(args[0], None, [], 0, None, None)
        if len(args) == 2 and isinstance(args[0], str):
            if name is not None:
                _close_quietly(args[1])
                raise ConfigurationError("give the member's name once: p.add('x', coro)")
            name, source = args
        elif len(args) == 1:
            source = args[0]
        else:
            for arg in args:
                _close_quietly(arg)
            raise ConfigurationError(
                "p.add() takes one member, or a name and a member: "
                f"got {len(args)} positional arguments"
            )
        try:
            self._check_can_add()
            check_member(source)
            if name is not None:
                if not isinstance(name, str) or not name:
                    raise ConfigurationError(f"a member name must be a non-empty str, got {name!r}")
                if name in self._names:
                    raise DuplicateMemberError(
                        f"group {self.group_id!r} already has a member named {name!r} "
                        f"(index {self._names[name]}); names must be unique"
                    )
            if timeout is not None and not (
                isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0
            ):
                raise ConfigurationError(f"timeout must be seconds > 0, got {timeout!r}")
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise ConfigurationError(f"priority must be an int, got {priority!r}")
            if isinstance(after, str):
                after = (after,)
            deps: list[int] = []
            if after and not self._retain:
                # Dependents are found through the kept members; without them none would run.
                raise ConfigurationError("after= needs a group that keeps results")
            for dep in after:
                if dep not in self._names:
                    known = ", ".join(sorted(self._names)) or "none yet"
                    raise DependencyError(
                        f"member {name or len(self._members)!r} depends on {dep!r}, which is "
                        f"not a member of group {self.group_id!r} (known: {known}); add the "
                        "dependency first"
                    )
                deps.append(self._names[dep])
            self._check_retry(source, retry)
        except BaseException:
            _close_quietly(source)
            raise
        return self._add_member(source, name, deps, priority, timeout, retry)

    def add_many(
        self,
        entries: Iterable[tuple[Any, ...]],
    ) -> list[int]:
        """Add ``(name, member)`` or ``(name, member, after)`` entries; returns their indices.

        If one is rejected, the error is raised and every coroutine not added yet is closed,
        so a bad entry never leaves a "coroutine was never awaited" warning behind.
        """
        entries_iter = iter(entries)
        indices: list[int] = []
        try:
            for entry in entries_iter:
                name, member = entry[0], entry[1]
                after: Iterable[str] = entry[2] if len(entry) > 2 else ()
                if name is None:
                    indices.append(self.add(member, after=after))
                else:
                    indices.append(self.add(name, member, after=after))
        except BaseException:
            for rest in entries_iter:
                _close_quietly(rest[1])
            raise
        return indices

    def _check_can_add(self) -> None:
        if not self._entered:
            raise GroupClosedError(
                "add() needs an open group: use 'async with state.parallel(...) as p:'"
            )
        if self._sealed:
            raise GroupClosedError(
                f"group {self.group_id!r} was already gathered or closed; add members "
                "before calling gather()/stream(), or open a new group"
            )

    def _check_retry(self, source: Any, retry: Any) -> None:
        # A bare coroutine cannot run twice: reject a policy that would need it to, now.
        policy = retry if retry is not None else self.retry
        if policy is None:
            return
        attempts = getattr(policy, "max_attempts", 1)
        if attempts > 1 and inspect.iscoroutine(source) and not is_event_call(source):
            from rh_agents.errors import RetryPolicyError

            raise RetryPolicyError(
                f"a retry policy with max_attempts={attempts} cannot re-run a bare coroutine "
                f"({source.__qualname__}); add a zero-argument callable instead: "
                "p.add(lambda: fn(x))"
            )

    def _add_member(
        self,
        source: Any,
        name: str | None,
        deps: list[int],
        priority: int,
        timeout: float | None,
        retry: Any,
    ) -> int:
        member = self._register(source, name, priority, timeout, retry)
        index = member.index
        if self._stop_status is not None:
            self._finish(member, self._stopped_result(member))
            return index
        pending = 0
        for dep_index in deps:
            dep = self._members[dep_index]
            if dep.result is None:
                pending += 1
                if dep.dependents is None:
                    dep.dependents = []
                dep.dependents.append(member)
            elif not dep.result.ok:
                self._finish(member, self._skipped_result(member, dep))
                return index
        if deps:
            member.after = tuple(deps)
            member.pending_deps = pending
        if pending == 0 and self._state.cache is not None and self._served_by_cache(member.source):
            self._instant.append(member)  # a cache hit takes no worker slot
            self._start_instant_lane()
        elif pending == 0:
            self._ready.push(member)
            if not self._unstarted:  # else the worker starting now will kick (see _kick)
                self._kick()
        return index

    def _register(
        self, source: Any, name: str | None, priority: int, timeout: float | None, retry: Any
    ) -> Member:
        index = self._total
        member = Member(index, source, name, priority, timeout, retry)
        member.enqueued = self._now()
        if self._retain:
            self._members.append(member)
            self._results.append(None)
        self._total += 1
        if name is not None:
            self._names[name] = index
        return member

    def map(
        self,
        func: Callable[[Any], Awaitable[Any]] | Any,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        context: str = "",
    ) -> None:
        """Add one member per item of ``items``, pulled only as workers free up.

        ``func`` is an async function of one item, or an ``ExecutionEvent`` (called as
        ``event(item, context, state)``). A sync or async iterable of any length works:
        items are read lazily, so a million-item input never sits in memory.
        """
        self._check_can_add()
        if self._source is not None:
            raise ConfigurationError("a group takes one map() input; open another group")
        from rh_agents.core.events import ExecutionEvent

        call: Callable[[Any], Awaitable[Any]]
        if isinstance(func, ExecutionEvent):
            call = functools.partial(_call_event, func, context=context, state=self._state)
        elif callable(func):
            call = func
        else:
            raise ConfigurationError(f"map() needs an async function or an event, got {func!r}")
        if isinstance(items, AsyncIterable):
            self._source = LazySource(call, async_items=aiter(items))
        elif isinstance(items, Iterable):
            self._source = LazySource(call, items=iter(items))
        else:
            raise ConfigurationError(f"map() needs an iterable or async iterable, got {items!r}")
        self._kick()

    # --- scheduling ----------------------------------------------------------------------

    def _kick(self) -> None:
        """See that ready members get workers while slots are free.

        With no worker running, one starts at once. Otherwise more are started at the event
        loop's next turn (``_spawn``), and only if members are still waiting then: members
        that finish without ever suspending are thus all run by the worker already there,
        instead of paying for a task each, while members that wait get their workers one
        loop turn later.

        A worker chooses its member only when it first runs, so members added in one go are
        started by priority, not by the order of the add() calls.
        """
        if self._stop_status is not None or self._unstarted or self._spawn_pending:
            return
        if self._running == 0:
            if self._has_work():
                self._start_worker()
        elif self._has_work() and self._running < self._limit:
            self._spawn_pending = True
            asyncio.get_running_loop().call_soon(self._spawn)

    def _has_work(self) -> bool:
        source = self._source
        return bool(self._ready) or (source is not None and not source.exhausted)

    def _spawn(self) -> None:
        """Start a worker for each member still waiting, up to the free slots."""
        self._spawn_pending = False
        if self._stop_status is not None:
            return
        source = self._source
        # A lazy input's length is unknown: then fill every free slot.
        lazy = source is not None and not source.exhausted
        wanted = min(self._limit if lazy else len(self._ready), self._limit - self._running)
        for _ in range(wanted):
            self._start_worker()

    def _start_worker(self) -> None:
        self._running += 1
        task = asyncio.get_running_loop().create_task(self._worker())
        self._workers.add(task)
        self._unstarted.add(task)
        task.add_done_callback(self._worker_done)

    def _take_next(self) -> Member | None:
        adaptive = self._adaptive
        limit = self._fixed_limit if adaptive is None else adaptive.current
        if self._stop_status is not None or self._running > limit:
            return None
        return self._ready.pop()

    async def _worker(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._unstarted.discard(task)
        running_member = self._running_member
        handed_over = False
        idle = False  # left because there was nothing (more) to do for this worker
        first = True
        streak = 0  # members run since this worker last let the loop run
        try:
            while True:
                member = self._take_next()
                if member is None:
                    source = self._source
                    if (
                        source is None
                        or source.exhausted
                        or self._stop_status is not None
                        or self._running > self._limit
                    ):
                        idle = True
                        break
                    pulled = await self._pull(source)
                    if pulled is None:
                        idle = True
                        break
                    call, item = pulled
                    member = self._register(functools.partial(call, item), None, 0, None, None)
                if first:
                    first = False
                    self._kick()  # more workers, should this member wait (see _kick)
                running_member[task] = member
                # The high-water mark counts slots held by members (not idle workers).
                held = self._running - len(self._unstarted)
                if held > self._high_water:
                    self._high_water = held
                await self._run_member(member)
                del running_member[task]
                streak += 1
                if streak >= _YIELD_EVERY:
                    # Members that never suspend would otherwise hold the event loop for the
                    # whole group: let other tasks (subscribers, live displays, timers) run.
                    streak = 0
                    await asyncio.sleep(0)
                if self._reclaimers:
                    # A member that lent its slot wants it back: give it ours and stop.
                    self._reclaimers.popleft().set_result(None)
                    handed_over = True
                    return
        finally:
            running_member.pop(task, None)
            if not handed_over:
                self._running -= 1
                self._serve_reclaimers()
                if idle:
                    self._kick()  # a worker over the limit left: ready members may start now
            if idle or handed_over:
                # Leaving normally: nothing runs in this task any more, so the group may end
                # now rather than a loop turn later, in the done callback.
                self._workers.discard(task)
                self._wake_readers()
                self._check_all_done()

    async def _pull(self, source: LazySource) -> Pulled | None:
        """The next item of the map() input; an error of the input stops the group."""
        if not self._retain:
            # Backpressure towards the stream's reader: results not yet read are bounded by
            # twice the limit, so memory stays O(max_workers) however long the input.
            while len(self._unretained) >= 2 * self._limit and self._stop_status is None:
                await self._wait_for_reader()
            if self._stop_status is not None:
                return None
        try:
            return await source.next_item()
        except Exception as exc:
            source.exhausted = True
            if self._source_error is None:
                self._source_error = exc
            self._stop(ResultStatus.CANCELLED, GroupStatus.FAILED)
            return None

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if task in self._unstarted:
            # Cancelled before its first step: the worker body never ran, nor took a member.
            self._unstarted.discard(task)
            self._running -= 1
            self._serve_reclaimers()
        if not task.cancelled() and task.exception() is not None:  # a bug in the scheduler
            self._state.report_internal_error(task.exception())
        # A worker that leaves may be the one that found the lazy input exhausted, after the
        # last result: a reader waiting for more must learn that nothing more will come.
        self._wake_readers()
        self._check_all_done()

    async def _wait_for_reader(self) -> None:
        if self._reader_space is None or self._reader_space.done():
            self._reader_space = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._reader_space)

    def _serve_reclaimers(self) -> None:
        while self._reclaimers and self._running < self._limit:
            waiter = self._reclaimers.popleft()
            if not waiter.done():
                self._running += 1
                self._note_held()
                waiter.set_result(None)

    def _note_held(self) -> None:
        held = self._running - len(self._unstarted)
        if held > self._high_water:
            self._high_water = held

    def _lend_slot(self) -> None:
        self._running -= 1
        self._kick()

    async def _reclaim_slot(self) -> None:
        if self._running < self._limit and not self._reclaimers:
            self._running += 1
            self._note_held()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reclaimers.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # If the slot was handed over just now, the worker's finally releases it; if not,
            # count it back anyway, since that worker will release one when it ends.
            if not (waiter.done() and not waiter.cancelled()):
                self._reclaimers.remove(waiter)
                self._running += 1
            raise

    # --- the cache lane: members the cache answers, run without a worker slot ----------------

    def _served_by_cache(self, source: Any) -> bool:
        """Whether ``source`` is an event call whose result the state's cache already holds."""
        cache = self._state.cache
        if cache is None or not is_event_call(source):
            return False
        # The call's bound arguments: the coroutine has not started, so they are all there.
        args = source.cr_frame.f_locals
        event, state = args.get("self"), args.get("state")
        if state is not self._state or not event.actor.cacheable:
            return False
        try:
            validated = event.actor.validate_input(args.get("input"))
        except ActorInputError:
            return False  # the call itself reports the bad input
        return cache.holds(event.actor, validated)

    def _start_instant_lane(self) -> None:
        if self._instant_task is None and self._stop_status is None:
            task = asyncio.get_running_loop().create_task(self._instant_lane())
            self._instant_task = task
            self._workers.add(task)  # owned like a worker: joined before the group ends
            task.add_done_callback(self._worker_done)

    async def _instant_lane(self) -> None:
        """Run cache hits one after another; they never wait for the handler or a slot."""
        task = asyncio.current_task()
        assert task is not None
        try:
            while self._instant and self._stop_status is None:
                member = self._instant.popleft()
                self._running_member[task] = member
                await self._run_member(member, holds_slot=False)
                del self._running_member[task]
        finally:
            self._running_member.pop(task, None)
            self._instant_task = None

    async def _run_member(self, member: Member, holds_slot: bool = True) -> None:
        state = self._state
        now = self._now
        bus = state.event_bus
        index = member.index
        # Without a global limit a member holds only its group slot, which the manager itself
        # lends and reclaims: one shared slot object serves every member.
        slot = MemberSlot(self) if state.global_slots is not None else self._group_slot
        global_slots = state.global_slots if holds_slot else None
        address = member.address = f"{self.group_id}[{index}]"
        frame = Frame(state, address, self.group_id, index, slot)
        token = enter_frame(frame)
        started = member.started = now()
        result: ExecutionResult[Any]
        try:
            if global_slots is not None:
                await global_slots.acquire()
                slot.global_held = True
                started = member.started = now()
            if bus.version != self._bus_version:
                self._note_listeners(bus)
            if self._announce_starts:
                # Published once the member waits or publishes (see deferred_record): a member
                # that finishes without suspending needs no start record of its own.
                bus.defer(member, self)
            timeout = member.timeout or self.member_timeout
            # With no retry, breaker or rate limit anywhere there is nothing to resolve: run
            # the member directly (this is every member's hot path).
            if self._plain and member.retry is None:
                run = member.source
                if type(run) is CoroutineType:
                    member.source = None  # a coroutine runs once
                else:
                    run = member.open()
            else:
                run = state.run_member(self, member, frame)
            if timeout is None:
                value = await run
            else:
                deadline = asyncio.timeout(timeout)
                try:
                    async with deadline:
                        value = await run
                except TimeoutError as exc:
                    if not deadline.expired():
                        raise  # the member's own TimeoutError: a failure, not our timeout
                    raise ParallelTimeoutError(
                        f"member {member.name or index} of group {self.group_id!r} timed out "
                        f"after {timeout}s"
                    ) from exc
        except asyncio.CancelledError:
            result = self._stopped_result(member, now() - started)
            if self._stop_status is None:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Not a cancellation of ours (only _stop cancels workers): record the
                    # member, then let the cancellation go on. Never swallow it.
                    if member.result is None:
                        self._finish(member, result)
                    raise
            # Otherwise: our own stop, or the member raised CancelledError by itself.
        except Exception as exc:
            status = (
                ResultStatus.TIMED_OUT
                if isinstance(exc, ParallelTimeoutError)
                else ResultStatus.FAILED
            )
            result = ExecutionResult(
                ok=False,
                error=describe_error(exc),
                exception=exc,
                execution_time=now() - started,
                status=status,
                address=address,
            )
        else:
            if isinstance(value, ExecutionResult):
                result = value
            else:
                # Positional: keyword parsing would cost more than the object (hot path).
                result = ExecutionResult(
                    True,
                    value,
                    None,
                    None,
                    now() - started,
                    ResultStatus.COMPLETED,
                    None,
                    None,
                    address,
                )
        finally:
            exit_frame(token)
            if slot.global_held:
                slot.global_held = False
                assert state.global_slots is not None
                state.global_slots.release()
        if member.result is None:
            self._finish(member, result)

    # --- completion -----------------------------------------------------------------------

    def _finish(self, member: Member, result: ExecutionResult[Any]) -> None:
        """Record ``member``'s one result and react to it (the only place results land)."""
        index = member.index
        result.index = index
        result.name = member.name
        if result.address is None:
            result.address = f"{self.group_id}[{index}]"
        member.result = result
        if member.source is not None:
            member.discard()  # closes a coroutine that never ran: no "never awaited" warning
        self._metrics.record(member, result)  # observability: one append per member
        status = result.status
        self._done += 1
        if result.ok:
            self._succeeded += 1
        elif status is ResultStatus.FAILED:
            self._failed += 1
        elif status is ResultStatus.TIMED_OUT:
            self._timed_out += 1
        elif status is ResultStatus.CANCELLED:
            self._cancelled += 1
        else:
            self._skipped += 1
        if self._retain:
            self._results[index] = result
            self._completion_order.append(index)
        else:
            self._unretained.append(result)
            member.result = result  # the member itself is not kept; only the stream holds it

        bus = self._state.event_bus
        if bus._deferred:  # (read directly: a method call per member costs more than this)
            bus.withdraw(member)  # never announced: the finish record tells it all
        if bus.version != self._bus_version:
            self._note_listeners(bus)
        if self._report_finishes:
            started = member.started
            bus.publish(
                MemberFinished.of_member(
                    self.group_id,
                    index,
                    member.address or f"{self.group_id}[{index}]",
                    member.name,
                    self._now(),
                    status._value_,  # the plain str: Enum.value is a slow descriptor
                    result.execution_time,
                    result.error,
                    self._done,
                    self._succeeded,
                    None
                    if self._source is not None and not self._source.exhausted
                    else self._total,
                    result.attempts,
                    None if started is None else started - member.enqueued,
                )
            )

        dependents = member.dependents
        if dependents:
            member.dependents = None
            for dependent in dependents:
                if dependent.result is not None:
                    continue
                if result.ok:
                    dependent.pending_deps -= 1
                    if dependent.pending_deps == 0 and self._stop_status is None:
                        self._ready.push(dependent)
                else:
                    self._finish(dependent, self._skipped_result(dependent, member))
            self._kick()

        if not result.ok and status in _FAILURE_STATUSES and self._stop_status is None:
            self._last_failure = result
            strategy = self.error_strategy
            if strategy is ErrorStrategy.FAIL_FAST or (
                self.failure_threshold is not None and self._threshold_reached()
            ):
                self._trigger = result
                self._stop(ResultStatus.CANCELLED, GroupStatus.FAILED)
        elif (
            result.ok
            and self.quorum is not None
            and self._succeeded >= self.quorum
            and self._stop_status is None
        ):
            self._stop(ResultStatus.CANCELLED, None)

        if self._progress is not None:
            self._wake_readers()
        if not self._workers:  # else the last worker to end checks (see _worker_done)
            self._check_all_done()

    def _note_listeners(self, bus: EventBus) -> None:
        """Which member records anyone would receive (cached until the bus's version moves)."""
        self._bus_version = bus.version
        self._announce_starts = bus.wants(MemberStarted)
        self._report_finishes = bus.wants(MemberFinished)

    def deferred_record(self, key: Any) -> MemberStarted | None:
        """The ``MemberStarted`` of member ``key``, which the bus publishes once it waits."""
        member: Member = key
        started = member.started
        if member.result is not None or started is None:
            return None
        source = self._source
        return MemberStarted.of_member(
            self.group_id,
            member.index,
            member.name,
            started,
            started - member.enqueued,
            None if source is not None and not source.exhausted else self._total,
        )

    def _wake_readers(self) -> None:
        """Wake the stream() readers waiting for a result or for the end of the group."""
        progress = self._progress
        if progress is not None:
            self._progress = None
            if not progress.done():
                progress.set_result(None)

    def _threshold_reached(self) -> bool:
        threshold = self.failure_threshold
        failures = self._failed + self._timed_out
        if isinstance(threshold, float):
            # A fraction of a total still growing means nothing: wait until sealed.
            return self._sealed and failures >= threshold * max(self._total, 1)
        return threshold is not None and failures >= threshold

    def _unfinished(self) -> bool:
        return self._done < self._total or (self._source is not None and not self._source.exhausted)

    def _check_all_done(self) -> None:
        if self._workers or self._unfinished():
            return
        waiters, self._done_waiters = self._done_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _stopped_result(self, member: Member, elapsed: float = 0.0) -> ExecutionResult[Any]:
        status = self._stop_status or ResultStatus.CANCELLED
        where = f"member {member.name or member.index} of group {self.group_id!r}"
        exc: Exception
        if status is ResultStatus.TIMED_OUT:
            exc = ParallelTimeoutError(
                f"{where} did not finish: the group timed out after {self.timeout}s"
            )
        else:
            exc = MemberCancelledError(f"{where} was cancelled: {self._stop_reason_text()}")
        return ExecutionResult(
            ok=False,
            error=describe_error(exc),
            exception=exc,
            execution_time=elapsed,
            status=status,
        )

    def _stop_reason_text(self) -> str:
        trigger = self._trigger
        if trigger is not None:
            what = "fail-fast" if self.error_strategy is ErrorStrategy.FAIL_FAST else "threshold"
            return f"{what} after member {trigger.name or trigger.index} failed ({trigger.error})"
        if self.quorum is not None and self._succeeded >= self.quorum:
            return f"quorum of {self.quorum} successes reached"
        return "the group was cancelled"

    def _skipped_result(self, member: Member, dep: Member) -> ExecutionResult[Any]:
        exc = MemberSkippedError(
            f"member {member.name or member.index} of group {self.group_id!r} was skipped: "
            f"its dependency {dep.name or dep.index!r} did not complete "
            f"({dep.result.error if dep.result else 'no result'})"
        )
        return ExecutionResult(
            ok=False, error=describe_error(exc), exception=exc, status=ResultStatus.SKIPPED
        )

    def _stop(self, status: ResultStatus, group_status: GroupStatus | None) -> None:
        """Stop the group: cancel running members, finish unstarted ones as ``status``."""
        if self._stop_status is not None:
            return
        self._stop_status = status
        self._stop_group_status = group_status
        current = asyncio.current_task()
        for task in list(self._running_member):
            if task is not current:
                task.cancel()
        for task in self._workers:  # workers between members or pulling the lazy input
            if task is not current and task not in self._running_member:
                task.cancel()
        for member in self._ready.drain():
            member.discard()
            self._finish(member, self._stopped_result(member))
        while self._instant:
            member = self._instant.popleft()
            member.discard()
            self._finish(member, self._stopped_result(member))
        for member in self._members:
            if member.result is None and member.started is None and member.pending_deps:
                member.discard()
                self._finish(member, self._stopped_result(member))
        if self._source is not None:
            self._source.exhausted = True
        self._check_all_done()

    def _on_group_timeout(self) -> None:
        self._timeout_handle = None
        self._stop(ResultStatus.TIMED_OUT, GroupStatus.TIMED_OUT)

    def cancel(self) -> None:
        """Cancel every running member and skip the rest; results so far are kept."""
        self._sealed = True
        self._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)

    async def _join_workers(self) -> None:
        # Wait for every worker, even if we are cancelled meanwhile: no orphan may survive.
        cancelled = False
        while self._workers:
            try:
                await asyncio.wait(set(self._workers))
            except asyncio.CancelledError:
                cancelled = True
                self._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
        if self._source is not None:
            await self._source.aclose()
        if cancelled:
            raise asyncio.CancelledError

    async def _wait_all(self) -> None:
        """Wait until every member has a result; a cancelled waiter cancels the group."""
        self._seal()
        if not self._unfinished() and not self._workers:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done_waiters.append(waiter)
        try:
            await self._wait_lending(waiter)
        except asyncio.CancelledError:
            self._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
            try:
                await self._join_workers()
            finally:
                self._finalize()
            raise
        await self._join_workers()

    async def _wait_lending(self, waiter: asyncio.Future[None]) -> None:
        """Wait for ``waiter``, lending the global slot of the member we run inside, if any.

        A member waiting on its own nested group does no work, so it gives its global slot
        back meanwhile; that is what keeps nested groups from deadlocking on the global limit.
        If the wait is cancelled the slot stays lent: the member's own ``finally`` then has
        nothing to release, and waiting for a slot only to give it back would be pointless.
        """
        parent_slot = self._parent_frame.slot if self._parent_frame is not None else None
        lent = isinstance(parent_slot, MemberSlot) and parent_slot.lend_global()
        await waiter  # our own future: cancelling it disturbs no other waiter
        if lent:
            assert isinstance(parent_slot, MemberSlot)
            await parent_slot.reclaim_global()

    def _seal(self) -> None:
        """No more add(): the member count is now known, so a fractional threshold can apply."""
        if self._sealed:
            return
        self._sealed = True
        if (
            self._stop_status is None
            and self._last_failure is not None
            and self._threshold_reached()
        ):
            self._trigger = self._last_failure
            self._stop(ResultStatus.CANCELLED, GroupStatus.FAILED)

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        self._final_limit = self._limit
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        state = self._state
        now = state.clock.now()
        self._wall_time = now - self._started_at
        status = self._stop_group_status
        if status is None:
            status = (
                GroupStatus.COMPLETED if self._succeeded == self._total else (GroupStatus.PARTIAL)
            )
        self._status = status
        self._end_time = now
        bus = state.event_bus
        if bus.has_listeners:
            parent = self._parent_frame
            bus.publish(
                GroupCompleted(
                    address=self.group_id,
                    timestamp=now,
                    group_id=parent.group_id if parent else None,
                    parallel_index=parent.parallel_index if parent else None,
                    is_parallel=bool(parent and parent.group_id),
                    name=self._display_name,
                    status=status.value,
                    total=self._total,
                    succeeded=self._succeeded,
                    failed=self._failed,
                    cancelled=self._cancelled,
                    skipped=self._skipped,
                    timed_out=self._timed_out,
                    wall_time=self._wall_time,
                    metrics_source=self.metrics,  # a snapshot only if someone reads it
                )
            )

    # --- results ----------------------------------------------------------------------------

    async def _gather_all(self) -> list[ExecutionResult[Any]]:
        if not self._entered:
            raise GroupClosedError("gather() needs 'async with state.parallel(...) as p:' first")
        await self._wait_all()
        self._finalize()
        results = self._collected()
        self._raise_for_strategy(results)
        return results

    def _collected(self) -> list[ExecutionResult[Any]]:
        if not self._retain:
            raise ConfigurationError(
                "this group does not keep results (retain_results=False); read them with "
                "stream() as they complete"
            )
        return list(self._results)  # type: ignore[arg-type]  # every slot is filled

    def _raise_for_strategy(self, results: list[ExecutionResult[Any]]) -> None:
        if self._source_error is not None:
            raise self._source_error  # the map() input itself failed; it stopped the group
        trigger = self._trigger
        if (
            trigger is None
            and self._stop_group_status is GroupStatus.TIMED_OUT
            and self.error_strategy is not ErrorStrategy.FAIL_SLOW
        ):
            raise ParallelTimeoutError(
                f"group {self.group_id!r} timed out after {self.timeout}s: "
                f"{self._timed_out} of {self._total} members did not finish in time "
                "(finished results are in p.gather() with error_strategy=FAIL_SLOW)"
            )
        if trigger is not None:
            if self.error_strategy is ErrorStrategy.FAIL_FAST:
                if trigger.exception is not None:
                    raise trigger.exception
                raise MemberFailedError(
                    f"member {trigger.name or trigger.index} of group {self.group_id!r} "
                    f"failed: {trigger.error}",
                    trigger,
                )
            failures = self._failed + self._timed_out
            raise FailureThresholdError(
                f"group {self.group_id!r} stopped after {failures} failures "
                f"(failure_threshold={self.failure_threshold}); the rest were cancelled. "
                "Partial results are in .results",
                results,
            )
        if self.raise_exception_group:
            errors = [
                r.exception
                if isinstance(r.exception, Exception)
                else MemberFailedError(r.error or "failed", r)
                for r in results
                if not r.ok
            ]
            if errors:
                raise GroupFailedError(
                    f"{len(errors)} of {len(results)} members of group {self.group_id!r} "
                    "did not complete",
                    errors,
                    results,
                )

    async def gather(self, members: Iterable[Any] | None = None) -> list[ExecutionResult[T]]:
        """Every result in submission order (waits for all). FAIL_SLOW never raises.

        With ``members`` (the spec's Option D form), those are added first and only their
        results are returned.
        """
        if members is None:
            return await self._gather_all()
        indices = self.add_many((None, m) for m in members)
        results = await self._gather_all()
        return [results[i] for i in indices]

    async def gather_dict(
        self, members: Mapping[str, Any] | None = None
    ) -> dict[str | int, ExecutionResult[T]]:
        """Results by member name (unnamed members by index), in submission order."""
        if members is not None:
            self.add_many(members.items())
        results = await self._gather_all()
        if members is not None:
            return {key: results[self._names[key]] for key in members}
        return {(r.name if r.name is not None else r.index or 0): r for r in results}

    def stream(self) -> AsyncIterator[ExecutionResult[T]]:
        """Results in completion order, as soon as each member finishes::

            async for result in p.stream():
                print(result.index, result.ok)

        Leaving the loop early is fine: the rest still runs and is gathered with the block.
        (The iterator is a plain object, not an async generator, so abandoning it leaves no
        finalizer task behind.)
        """
        if not self._entered:
            raise GroupClosedError("stream() needs 'async with state.parallel(...) as p:' first")
        self._seal()
        return ResultStream(self)

    def gather_stream(self, members: Iterable[Any]) -> AsyncIterator[ExecutionResult[T]]:
        """Add ``members``, then stream every result in completion order (Option D form)."""
        self.add_many((None, m) for m in members)
        return self.stream()

    def as_completed(
        self, members: Iterable[Any] | None = None
    ) -> AsyncIterator[ExecutionResult[T]]:
        """Results in completion order with ``index``, ``name`` and ``event_id`` set."""
        if members is not None:
            self.add_many((None, m) for m in members)
        return self.stream()

    # --- introspection -------------------------------------------------------------------------

    @property
    def has_policies(self) -> bool:
        """Whether a retry, breaker, rate limit or adaptive limit applies to this group."""
        return self._state.has_policies or not (
            self._adaptive is None
            and self.retry is None
            and self.circuit_breaker is None
            and self.rate_limit is None
        )

    @property
    def name(self) -> str:
        """The group's name (the last part of its id)."""
        return self._display_name or self._requested_name or "parallel"

    @property
    def group(self) -> ParallelEventGroup | None:
        """The spec's ``ParallelEventGroup`` for this group, brought up to date on each read.

        Built on first read and synced on every read rather than kept current: updating a
        pydantic model for every member would cost more than the member's own bookkeeping.
        """
        if not self._entered:
            return None
        group = self._group
        if group is None:
            parent = self._parent_frame
            group = self._group = ParallelEventGroup(
                group_id=self.group_id,
                name=self._display_name,
                start_time=self._started_at,
                max_workers=self._limit,
                parent_group_id=parent.group_id if parent is not None else None,
            )
        group.status = self._status
        group.end_time = self._end_time
        group.completed = self._succeeded
        group.failed = self._done - self._succeeded
        group.total = self._total
        group.member_names = {index: name for name, index in self._names.items()}
        return group

    @property
    def total(self) -> int:
        return self._total

    @property
    def max_workers(self) -> int:
        return self._limit

    @property
    def status(self) -> GroupStatus:
        return self._status

    def statistics(self) -> GroupStatistics:
        """A frozen snapshot of the group's counters, valid during and after the run."""
        end = self._wall_time
        wall = (
            end
            if end is not None
            else (self._state.clock.now() - self._started_at if self._entered else 0.0)
        )
        return GroupStatistics(
            group_id=self.group_id,
            total=self._total,
            running=len(self._running_member),
            queued=len(self._ready),
            succeeded=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            timed_out=self._timed_out,
            skipped=self._skipped,
            concurrency_high_water=self._high_water,
            wall_time=wall,
        )

    # --- observability: metrics snapshot ---------------------------------------------------

    def metrics(self) -> GroupMetrics:
        """A frozen ``GroupMetrics`` snapshot (counts, percentiles, throughput, efficiency)."""
        # Once the group is over, the limit it ran under (an adaptive one moves on).
        limit = self._final_limit if self._final_limit is not None else self._limit
        return self._metrics.snapshot(self.statistics(), max_workers=limit)


def _call_event(event: Any, item: Any, *, context: str, state: ExecutionState) -> Awaitable[Any]:
    return event(item, context, state)  # type: ignore[no-any-return]


def _close_quietly(obj: Any) -> None:
    if inspect.iscoroutine(obj):
        obj.close()
