"""``ParallelExecutionManager``: run independent members concurrently under a limit.

Scheduling uses a bounded pool of worker tasks per group (never one task per member): at most
``max_workers`` members run at once, each worker takes the next ready member (highest
priority, then submission order) when it finishes one. Memory for running work is therefore
O(max_workers); a finished member keeps only its ``ExecutionResult``::

    async with state.parallel(max_workers=5, name="docs") as p:
        for doc in docs:
            p.add(summarize_event(doc, "", state))
        results = await p.gather()          # submission order; FAIL_SLOW never raises

The class is one object composed of mixins, one concept per module, so that the per-member
path calls plain methods of the same object: ``adding`` (``add``, ``add_many``, ``map``),
``scheduler`` (the worker pool, slot lending, the cache lane), ``running`` (one member's run
and its result), ``stopping`` (cancel, timeouts, the strategy's error), ``gathering``
(``gather``, ``stream`` and the waits behind them) and ``executing`` (``execute_parallel``:
a whole batch in one call, with or without ``async with``). This module holds the state (every field
is set in ``__init__``), the options, the ``async with`` lifecycle and the read-outs
(properties, ``statistics()``, ``metrics()``).

Invariants (the manager is the single owner of all of these; workers are its tasks):

- ``_slots`` (the group's ``SlotArbiter``) counts workers holding a slot. It is the one place
  where anyone waits for a slot of this group, and it never leaves a slot idle while anyone
  waits (see ``slots``); the count passes the limit only for a worker whose member was
  cancelled while taking its slot back, and that worker is on its way out.
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
import contextvars
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from rh_agents.core.context import Frame, current_frame
from rh_agents.core.parallel.adding import _Adding
from rh_agents.core.parallel.advising import _Advising
from rh_agents.core.parallel.executing import _Executing
from rh_agents.core.parallel.gathering import _Gathering
from rh_agents.core.parallel.group import GroupStatistics, ParallelEventGroup
from rh_agents.core.parallel.lazy_source import LazySource
from rh_agents.core.parallel.member import Member
from rh_agents.core.parallel.metrics import GroupMetrics, MetricsRecorder, ResourceUsage
from rh_agents.core.parallel.options import GroupOptions
from rh_agents.core.parallel.ready import ReadyQueue
from rh_agents.core.parallel.running import _MemberRunning
from rh_agents.core.parallel.scheduler import _DELIVER_EVERY, _Scheduler
from rh_agents.core.parallel.slots import MemberSlot, SlotArbiter
from rh_agents.core.parallel.stopping import _Stopping
from rh_agents.core.parallel.strategy import GroupStatus
from rh_agents.core.records import GroupCompleted, GroupStarted, MemberFinished
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.core.watchdog import Window, open_window
from rh_agents.errors import ConfigurationError, GroupClosedError
from rh_agents.resilience.adaptive import AdaptiveLimit

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import ExecutionState

__all__ = ["ParallelExecutionManager"]

T = TypeVar("T")


class ParallelExecutionManager(
    _Adding, _Scheduler, _MemberRunning, _Stopping, _Gathering[T], _Executing, _Advising
):
    """An async context manager running members concurrently; see the module docstring.

    Made by ``ExecutionState.parallel(...)``, which documents the options, or directly, with
    the same options, for a batch run without ``async with``::

        manager = ParallelExecutionManager(execution_state, max_workers=5,
                                           batch_mode=BatchMode.GATHER)
        results = await manager.execute_parallel(events, dependencies={1: [0]})
    """

    # Slots: a group has some sixty fields, past what an instance dict stores cheaply, and a
    # group is made per parallel block. The mixins have empty slots: this tuple is the one
    # layout, and __init__ below sets every field.
    __slots__ = (
        "__weakref__",
        "_adaptive",
        "_announce_starts",
        "_announcements",
        "_bus_version",
        "_cancelled",
        "_completion_order",
        "_context",
        "_deliver_at",
        "_dependents",
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
        "_report_finishes",
        "_requested_name",
        "_results",
        "_retain",
        "_running_member",
        "_sealed",
        "_skipped",
        "_slots",
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
        "_used",
        "_wall_time",
        "_window",
        "_workers",
        "circuit_breaker",
        "error_strategy",
        "failure_threshold",
        "group_id",
        "member_timeout",
        "options",
        "quorum",
        "raise_exception_group",
        "rate_limit",
        "retry",
        "timeout",
    )

    def __init__(
        self, state: ExecutionState, options: GroupOptions | None = None, /, **settings: Any
    ) -> None:
        """A group of ``state`` with ``options``, or with the ``settings`` that
        ``ExecutionState.parallel`` takes (``max_workers=3, name="docs"``...)."""
        if options is None:
            options = GroupOptions.of(**settings)
        elif settings:
            raise ConfigurationError(
                f"give a group its GroupOptions or its settings, not both: {sorted(settings)}"
            )
        self.options = options
        # Every field, grouped by the module that writes it (the others only read it).

        # The options: copied from the frozen options, read everywhere, never changed
        # (plain fields rather than lookups through self.options: read per member).
        self._state = state
        self._now = state.clock.now  # bound once: read several times per member
        self._adaptive = options.adaptive  # "auto" or an AdaptiveLimit (see _limit)
        self._fixed_limit = limit = options.limit
        self.rate_limit = options.rate_limit
        self._requested_name = options.name
        self.error_strategy = options.error_strategy
        self.timeout = options.timeout
        self.member_timeout = options.member_timeout
        self.failure_threshold = options.failure_threshold
        self.quorum = options.quorum
        self.raise_exception_group = options.raise_exception_group
        self.retry = options.retry
        self.circuit_breaker = options.circuit_breaker
        self._retain = options.retain_results
        self._group_slot = MemberSlot(self)  # shared by members when there is no global limit

        # Lifecycle (this module: __aenter__, _finalize, the group property).
        self._group: ParallelEventGroup | None = None  # built on first read of .group
        self._display_name = ""
        self._status = GroupStatus.PENDING
        self._end_time: float | None = None
        self.group_id = ""
        self._entered = False
        self._used = False  # entered, or given to execute_parallel or add() (even if refused)
        self._finalized = False
        self._plain = False  # set on entry: no policy applies, members run directly
        self._parent_frame: Frame | None = None
        self._started_at = 0.0
        self._wall_time: float | None = None
        self._final_limit: int | None = None  # the limit when the group ended
        self._timeout_handle: asyncio.TimerHandle | None = None  # cancelled by _finalize
        # What the watchdog sees while the group runs (see rh_agents.core.watchdog); its
        # thread reads _running_member to tell which member holds the loop.
        self._window: Window | None = None
        # The context of the task that opened the block: each worker runs in a copy of it.
        self._context = contextvars.copy_context()

        # Members (adding.py; the scheduler registers map() items).
        # The members waiting on dependencies (a stop must finish them). Others are not kept:
        # once run, a member is only its result (a dependency is looked up by its result).
        self._members: dict[int, Member] = {}
        # The members waiting on a dependency, by the index of the member they wait for.
        self._dependents: dict[int, list[Member]] = {}
        self._names: dict[str, int] = {}
        self._source: LazySource | None = None
        self._total = 0

        # The worker pool (scheduler.py).
        self._ready = ReadyQueue()
        self._instant: deque[Member] = deque()  # cache hits waiting for the cache lane
        self._instant_task: asyncio.Task[None] | None = None
        self._workers: set[asyncio.Task[None]] = set()
        self._running_member: dict[asyncio.Task[None], Member] = {}
        self._unstarted: set[asyncio.Task[None]] = set()
        # The one arbiter of this group's slots; a slot freed with no task waiting for it
        # goes to ready members (_kick).
        self._slots = SlotArbiter(
            self._adaptive if self._adaptive is not None else limit, self._kick
        )
        self._high_water = 0
        self._spawn_pending = False  # a _spawn is scheduled for the loop's next turn
        self._source_error: Exception | None = None

        # Results and counters (running.py: _finish is the only writer).
        self._results: list[ExecutionResult[Any] | None] = []
        self._completion_order: list[int] = []
        self._unretained: deque[ExecutionResult[Any]] = deque()
        self._last_failure: ExecutionResult[Any] | None = None
        self._done = 0
        self._deliver_at = _DELIVER_EVERY
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0
        self._timed_out = 0
        self._skipped = 0
        self._metrics = MetricsRecorder()  # observability: per-member timings
        # Whether member records would reach anyone, as of the bus's version (_note_listeners).
        self._bus_version = -1
        self._announce_starts = False
        self._report_finishes = False
        # Member records not published yet, in order (see deferred_record): members whose
        # start is announced once they wait, and finish records.
        self._announcements: list[Member | MemberFinished] = []

        # Stopping (stopping.py; _finish and _seal decide to stop).
        self._stop_status: ResultStatus | None = None
        self._stop_group_status: GroupStatus | None = None
        self._trigger: ExecutionResult[Any] | None = None

        # Readers (gathering.py and stream.py).
        self._sealed = False  # no more add(): gather/stream started or block left
        # One future per task waiting for the whole group (each cancellable on its own).
        self._done_waiters: list[asyncio.Future[None]] = []
        self._progress: asyncio.Future[None] | None = None
        self._reader_space: asyncio.Future[None] | None = None

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
        """The adaptive limit grew: hand out the new slots (to waiting tasks, then ready work)."""
        self._slots.limit_changed()

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ParallelExecutionManager[T]:
        if self._entered:
            raise GroupClosedError("this parallel group was already used; make a new one")
        self._entered = True
        state = self._state
        self._plain = not self.has_policies
        parent = current_frame(state)
        self._parent_frame = parent
        self._context = contextvars.copy_context()
        name = self._requested_name or "parallel"
        self.group_id = parent.child_address(name)
        self._started_at = state.clock.now()
        self._display_name = self._requested_name or self.group_id.rsplit("::", 1)[-1]
        self._status = GroupStatus.RUNNING
        loop = asyncio.get_running_loop()
        if self.timeout is not None:
            self._timeout_handle = loop.call_later(self.timeout, self._on_group_timeout)
        watchdog = state.watchdog
        if watchdog is not None:
            self._window = open_window(self, watchdog)
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
        try:
            if exc is None:
                if self._finalized and self._status is GroupStatus.COMPLETED:
                    return  # gathered already, every member completed: nothing to raise
                # Leaving without gathering gathers (and may raise the strategy's error).
                if self._retain:
                    await self._gather_all()
                else:  # nothing to collect: results were only streamed
                    await self._wait_all()
                    self._finalize()
                    self._raise_for_strategy([])
                return
            # Leaving by an exception (or cancellation): stop everything, wait for workers.
            self._sealed = True
            self._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
            try:
                await self._join_workers()
            finally:
                self._finalize()
        finally:
            # The display is current when the block is left: synchronous subscribers (the
            # printer) have every record of this group before the program's next line runs.
            if self._finalized:
                self._state.event_bus.deliver_pending()

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
        window = self._window
        if window is not None:
            window.close()
            if self._parent_frame is None or self._parent_frame.group_id is None:
                state.run_resources.add(window)  # an outermost group: part of the run's figures
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
                    resources_source=self.resource_usage if window is not None else None,
                )
            )
        # Last: a warning made an error (-W error) must find the group already ended.
        self._advise_after_run()

    # --- introspection -------------------------------------------------------------------------

    @property
    def has_policies(self) -> bool:
        """Whether a retry, breaker, rate limit or adaptive limit applies to this group."""
        return self._state.has_policies or self.options.has_policies

    @property
    def execution_state(self) -> ExecutionState:
        """The ``ExecutionState`` this group belongs to."""
        return self._state

    @property
    def name(self) -> str:
        """The group's name (the last part of its id)."""
        return self._display_name or self._requested_name or "parallel"

    @property
    def group(self) -> ParallelEventGroup | None:
        """This group's ``ParallelEventGroup`` description, brought up to date on each read.

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
        group.events = self._group_events()
        return group

    def _group_events(self) -> list[ExecutionEvent[Any]]:
        """The calls this group's members made (not those of nested groups), by member."""
        group_id = self.group_id
        return [
            entry.event
            for entry in self._state.history.get_group(group_id)
            if entry.group_id == group_id
        ]

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
        """A frozen ``GroupMetrics`` snapshot (counts, percentiles, throughput, efficiency,
        and the resources the group used)."""
        # Once the group is over, the limit it ran under (an adaptive one moves on).
        limit = self._final_limit if self._final_limit is not None else self._limit
        return self._metrics.snapshot(
            self.statistics(), max_workers=limit, resources=self.resource_usage()
        )

    def resource_usage(self) -> ResourceUsage | None:
        """What the process used while the group ran (so far, while it runs): peak resident
        memory, open files, the event loop's lag; ``None`` when nothing watched it (the
        state's ``watchdog=None``, or a loop on virtual time). See ``ResourceUsage``."""
        window = self._window
        return window.usage() if window is not None else None
