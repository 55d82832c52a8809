"""``ParallelExecutionManager``: run independent members concurrently under a limit.

Scheduling uses a bounded pool of worker tasks per group (never one task per member): at most
``max_workers`` members run at once, each worker takes the next ready member (highest
priority, then submission order) when it finishes one. Memory for running work is therefore
O(max_workers); a finished member keeps only its ``ExecutionResult``::

    async with state.parallel(max_workers=5, name="docs") as p:
        for doc in docs:
            p.add(summarize_event(doc, "", state))
        results = await p.gather()          # submission order; FAIL_SLOW never raises

The group's state is owned by parts with one job each, composed here:

- ``WorkerPool`` (``scheduler``): the worker tasks, the group's ``SlotArbiter``, the ready
  members and the instant lane;
- ``ResultTally`` (``tally``): the results, in submission and completion order, and their
  counts by status;
- ``ReaderWaits`` (``readers``): the tasks waiting for the whole group, for the next result,
  or for a reader to make room;
- ``MemberRecords`` (``member_records``): the member records on their way to the bus.

What happens across them is in modules of the manager's own methods (mixins with no fields;
each method takes ``self`` as the manager): ``adding`` (``add``, ``add_many``, ``map``),
``running`` (one member's run and its one result), ``stopping`` (cancel, timeouts, the
strategy's error), ``gathering`` (``gather``, ``stream`` and the waits behind them),
``executing`` (``execute_parallel``) and ``advising`` (the warnings a group gives). This module
holds the options, the members not yet run, why the group stopped, the ``async with``
lifecycle and the read-outs (properties, ``statistics()``, ``metrics()``).

Invariants (the manager owns its parts; workers are the pool's tasks, on one loop):

- Every member ends with exactly one result, landed by ``_finish`` in the tally. A member
  finished without running has its coroutine closed there.
- The group stops at most once (``_stop``): ``_stop_status`` says what unfinished members
  become, and nothing starts after it.
- Leaving the block (any way) waits for every task of the pool, so no task outlives the group.
"""

from __future__ import annotations

import asyncio
import contextvars
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rh_agents.core.context import Frame, current_frame
from rh_agents.core.parallel import (
    adding,
    advising,
    executing,
    gathering,
    running,
    stopping,
)
from rh_agents.core.parallel.group import GroupStatistics, ParallelEventGroup
from rh_agents.core.parallel.lazy_source import LazySource
from rh_agents.core.parallel.member import Member
from rh_agents.core.parallel.member_records import MemberRecords
from rh_agents.core.parallel.metrics import GroupMetrics, ResourceUsage
from rh_agents.core.parallel.options import GroupOptions
from rh_agents.core.parallel.readers import ReaderWaits
from rh_agents.core.parallel.scheduler import WorkerPool
from rh_agents.core.parallel.strategy import GroupStatus
from rh_agents.core.parallel.tally import ResultTally
from rh_agents.core.records import GroupCompleted, GroupStarted, _placed
from rh_agents.core.results import ExecutionResult, ResultStatus, describe_error
from rh_agents.core.watchdog import Window, open_window
from rh_agents.errors import ConfigurationError, GroupClosedError
from rh_agents.resilience.adaptive import AdaptiveLimit

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import ExecutionState

__all__ = ["ParallelExecutionManager"]

if TYPE_CHECKING:
    # Defaulted for type checkers only, as ExecutionEvent's: ``ParallelExecutionManager(state,
    # ...)`` is ``ParallelExecutionManager[Any]`` instead of an error asking for an annotation.
    from typing_extensions import TypeVar as _DefaultedTypeVar

    T = _DefaultedTypeVar("T", default=Any)
else:
    T = TypeVar("T")


class ParallelExecutionManager(Generic[T]):
    """An async context manager running members concurrently; see the module docstring.

    Made by ``ExecutionState.parallel(...)``, which documents the options, or directly, with
    the same options, for a batch run without ``async with``::

        manager = ParallelExecutionManager(execution_state, max_workers=5,
                                           batch_mode=BatchMode.GATHER)
        results = await manager.execute_parallel(events, dependencies={1: [0]})
    """

    # Slots: a group is made per parallel block, and its fields are read per member.
    __slots__ = (
        "__weakref__",
        "_adaptive",
        "_dependents",
        "_display_name",
        "_end_time",
        "_end_waiters",
        "_ended_by_close",
        "_entered",
        "_final_limit",
        "_finalized",
        "_fixed_limit",
        "_group",
        "_input_error",
        "_key",
        "_leaving",
        "_leaving_to_gather",
        "_loop",
        "_members",
        "_names",
        "_now",
        "_outcome_raised",
        "_parent_frame",
        "_pool",
        "_raised_tb",
        "_reader",
        "_readers",
        "_records",
        "_requested_name",
        "_retain",
        "_sealed",
        "_source",
        "_started_at",
        "_state",
        "_status",
        "_stop_error",
        "_stop_group_status",
        "_stop_status",
        "_stream_owned",
        "_tally",
        "_timeout_handle",
        "_trigger",
        "_used",
        "_wall_time",
        "_window",
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

    # The methods that work across the parts, one module each (see the module docstring).
    # Adding members (adding.py).
    add = adding.add
    add_many = adding.add_many
    map = adding.map
    _add_graph = adding.add_graph
    _register = adding.register
    # Running one member and landing its result (running.py).
    _run_member = running.run_member
    _cancelled_result = running.cancelled_result
    _failed_result = running.failed_result
    _finish = running.finish
    _unfinished = running.unfinished
    _check_all_done = running.check_all_done
    # Stopping, and the error the strategy raises (stopping.py).
    cancel = stopping.cancel
    _stop = stopping.stop
    _threshold_reached = stopping.threshold_reached
    _check_threshold = stopping.check_threshold
    _stopped_result = stopping.stopped_result
    _skipped_result = stopping.skipped_result
    _input_failed = stopping.input_failed
    _member_raised_base = stopping.member_raised_base
    _on_group_timeout = stopping.on_group_timeout
    _raise_for_strategy = stopping.raise_for_strategy
    # Reading the results (gathering.py).
    gather = gathering.gather
    gather_dict = gathering.gather_dict
    stream = gathering.stream
    gather_stream = gathering.gather_stream
    as_completed = gathering.as_completed
    _gather_all = gathering.gather_all
    _collected = gathering.collected
    _join_workers = gathering.join_workers
    _wait_all = gathering.wait_all
    _wait_lending = gathering.wait_lending
    # A whole batch in one call (executing.py).
    batch_mode = property(executing.batch_mode)
    execute_parallel = executing.execute_parallel
    # Warnings (advising.py).
    _advise_after_run = advising.advise_after_run
    __del__ = advising.warn_if_unused

    def __init__(self, execution_state: ExecutionState, *args: Any, **settings: Any) -> None:
        """A group of ``execution_state`` with the settings that ``ExecutionState.parallel``
        takes (``max_workers=3, name="docs"``...), or its ``GroupOptions``. As in the spec,
        ``max_workers`` and ``batch_mode`` may also come by position:
        ``ParallelExecutionManager(state, 5, BatchMode.GATHER)``."""
        state = execution_state
        if getattr(state, "event_bus", None) is None:
            raise ConfigurationError(
                "ParallelExecutionManager(execution_state, ...) takes an ExecutionState first, "
                f"got {type(state).__name__} {state!r:.60}"
            )
        options: GroupOptions | None = None
        if len(args) == 1 and isinstance(args[0], GroupOptions):
            options = args[0]
            if settings:
                raise ConfigurationError(
                    f"give a group its GroupOptions or its settings, not both: {sorted(settings)}"
                )
        elif args:
            if len(args) > 2 or any(isinstance(arg, GroupOptions) for arg in args):
                raise ConfigurationError(
                    "ParallelExecutionManager(execution_state, max_workers, batch_mode) takes "
                    f"at most those two by position (the rest by name), got {args!r:.80}"
                )
            for name, value in zip(("max_workers", "batch_mode"), args, strict=False):
                if name in settings:
                    raise ConfigurationError(f"{name} given twice, by position and by name")
                settings[name] = value
        if options is None:
            options = GroupOptions.of(**settings)
        if options.rate_limit is not None:
            # A key given other settings than the state's (or another group's) is refused
            # here, where the group is made, rather than at its first call.
            state.rate_limiters.check(options.rate_limit, "state.parallel(rate_limit=...)")
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

        # Lifecycle (this module: __aenter__, _finalize, the group property).
        self._group: ParallelEventGroup | None = None  # built on first read of .group
        self._display_name = ""
        self._status = GroupStatus.PENDING
        self._end_time: float | None = None
        self.group_id = ""
        # Recovery's key for the group's id (see core.context.CALL_MARK; None: the id).
        self._key: str | None = None
        self._entered = False
        self._used = False  # entered, or given to execute_parallel or add() (even if refused)
        self._finalized = False
        self._leaving = False  # its block is being left (see ExecutionState.close)
        # ...normally: it gathers, for as long as its members run (close() refuses then,
        # rather than wait for them; a block left by an exception or a GeneratorExit is
        # waited for: its members are being cancelled).
        self._leaving_to_gather = False
        # Its block lives in a stream the caller iterates (parallel_map's generator, an
        # execute_parallel stream): a state closing under it closes it (see close()).
        self._stream_owned = False
        self._ended_by_close = False  # ...and the state's close() ended it (see stream)
        # The id of the task that last stepped its stream (a stream-owned group's reader; an
        # id, not the task: a held stream must not keep a finished request's task alive).
        self._reader: int | None = None
        self._end_waiters: list[asyncio.Future[None]] | None = None  # (made on first wait)
        self._parent_frame: Frame | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it runs on, once entered
        self._started_at = 0.0
        self._wall_time: float | None = None
        self._final_limit: int | None = None  # the limit when the group ended
        self._timeout_handle: asyncio.TimerHandle | None = None  # cancelled by _finalize
        # What the watchdog sees while the group runs (see rh_agents.core.watchdog); its
        # thread asks the pool which member holds the loop.
        self._window: Window | None = None

        # The members not run yet (adding.py; the pool registers map() items).
        # The members waiting on dependencies (a stop must finish them). Others are not kept:
        # once run, a member is only its result (a dependency is looked up by its result).
        self._members: dict[int, Member] = {}
        # The members waiting on a dependency, by the index of the member they wait for.
        self._dependents: dict[int, list[Member]] = {}
        self._names: dict[str, int] = {}
        self._source: LazySource | None = None

        # Why the group stopped (stopping.py; _finish and _seal decide to stop).
        self._stop_status: ResultStatus | None = None
        self._stop_group_status: GroupStatus | None = None
        self._trigger: ExecutionResult[Any] | None = None
        # Raised by the group whatever its strategy: the map() input's error, or what a
        # member raised that is not an Exception (KeyboardInterrupt, SystemExit, a test
        # framework's failure): a request to stop, never a member's failure to collect.
        self._stop_error: BaseException | None = None
        # What the map() input raised, reading or closing it (its GroupCompleted says so).
        self._input_error: BaseException | None = None
        self._outcome_raised = False  # a reader had the group's error (see __aexit__)
        # The exception the group raised last and its traceback then (see stopping.reraise).
        self._raised_tb: tuple[BaseException, TracebackType | None] | None = None
        self._sealed = False  # no more add(): gather/stream started or block left

        # The parts, each the one owner of its state.
        self._pool = WorkerPool(self, self._adaptive if self._adaptive is not None else limit)
        self._tally = ResultTally(self._retain)
        if not self._retain and self.raise_exception_group:
            # It raises every failure at the end: those (only) are kept for it.
            self._tally.failures_kept = []
        self._readers = ReaderWaits()
        self._records = MemberRecords(self)

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
        self._pool.slots.limit_changed()

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ParallelExecutionManager[T]:
        if self._entered:
            raise GroupClosedError("this parallel group was already used; make a new one")
        state = self._state
        if state._closed:
            self._used = True  # (refused, not forgotten: no UnusedGroupWarning)
            state.check_open()
        loop = asyncio.get_running_loop()
        if self.rate_limit is not None:
            # (Checked again: another group may have claimed the key since this one was made.)
            self._used = True  # (refused, it was not forgotten: no UnusedGroupWarning)
            state.rate_limiters.claim(self.rate_limit, "state.parallel(rate_limit=...)")
        parent = current_frame(state)
        with state.loop_lock:
            # The check that no other thread's loop runs groups of this state, and this
            # group's place among the open ones, in one step: two threads opening groups at
            # the same moment must not both pass the check before either is registered.
            if state._loop is not loop:
                self._used = True  # (told now: no UnusedGroupWarning later)
                state.claim_loop(loop)
            self.group_id = parent.child_address(self._requested_name or "parallel")
            self._loop = loop
            # Open groups, by id: an observer (the run viewer's feed) reads their counts and
            # running members, including those of groups opened before it began to watch.
            state.open_groups[self.group_id] = self
        self._entered = True
        if self._adaptive is not None:
            self._adaptive.attach(self)  # told when it grows (detached by _finalize)
        pool = self._pool
        pool.plain = not self.has_policies
        self._parent_frame = parent
        pool.context = contextvars.copy_context()
        if state.has_event_hooks:
            # Opened again by a retried call or member at the same id: its members' calls are
            # told apart from the last opening's (see core.context.CALL_MARK).
            self._key = parent.call_key(self.group_id)
        parent.children_running += 1  # (until the block is left: see Frame)
        if not self._retain:
            state.history.keep_none_under(self.group_id)  # (bounded memory: see history)
        self._started_at = state.clock.now()
        self._display_name = self._requested_name or self.group_id.rsplit("::", 1)[-1]
        self._status = GroupStatus.RUNNING
        if self.timeout is not None:
            self._timeout_handle = loop.call_later(self.timeout, self._on_group_timeout)
        watchdog = state.watchdog
        if watchdog is not None:
            self._window = open_window(self, watchdog)
        watch = state.watch
        if watch is not None and watch.on_group:
            watch.group_opened()
        bus = state.event_bus
        if bus.has_listeners:
            # At the group's own address, placed in its parent member (if any).
            started = _placed(
                GroupStarted,
                self.group_id,
                self._started_at,
                parent.group_id,
                parent.parallel_index,
            )
            started.name = self._display_name
            started.total = self._tally.total
            started.max_workers = self._limit
            started.parent_group_id = parent.group_id
            started.quorum = self.quorum
            bus.publish(started)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._leaving:
            # Left already: a stream's group that the state's close() ended under it, whose
            # generator is closed afterwards (its `async with` leaves a second time). A map()
            # input that failed as it was closed then is raised here, by the generator's
            # aclose(), as an async generator's cleanup error is.
            stop_error = self._stop_error
            if (
                isinstance(exc, GeneratorExit)
                and isinstance(stop_error, Exception)
                and not self._outcome_raised
            ):
                self._outcome_raised = True
                stopping.reraise(self, stop_error)
            return
        self._leaving = True
        self._leaving_to_gather = exc is None
        try:
            if exc is None:
                if self._finalized and (
                    self._status is GroupStatus.COMPLETED or self._outcome_raised
                ):
                    # Gathered already: every member completed, or the group's error was
                    # raised where it was read (and handled there, since the block goes on).
                    return
                # Leaving without gathering gathers (and may raise the strategy's error).
                if self._retain:
                    await self._gather_all()
                else:  # nothing to collect: results were only streamed
                    # Those no reader took are dropped: else workers waiting for a reader
                    # to make room for the next item (map()) would wait forever.
                    self._tally.drop_unread()
                    self._readers.result_taken()
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
                self._finalize_under(exc)
            stop_error = self._stop_error
            if (
                stop_error is not None
                and isinstance(stop_error, Exception)
                and stop_error is not exc
                and not self._outcome_raised
            ):
                # The map() input failed (reading it, or closing it: its `finally`), and the
                # block leaves by another way. Never lost: a generator closed early
                # (parallel_map under aclosing, or dropped) raises it, as an async
                # generator's aclose() raises what its cleanup raised; a cancellation or the
                # block's own exception goes on and carries it as a note.
                if isinstance(exc, GeneratorExit):
                    stopping.reraise(self, stop_error)
                exc.add_note(f"The group's map() input failed too: {describe_error(stop_error)}")
            elif (
                stop_error is not None
                and not isinstance(stop_error, Exception)
                and stop_error is not exc
                and not self._outcome_raised
            ):
                # A member (or the map() input) asked the program to stop (SystemExit,
                # KeyboardInterrupt): as in asyncio.TaskGroup, that goes before the body's
                # exception or a cancellation, which would otherwise lose it (and which it
                # carries as its context, when it has none of its own).
                if stop_error.__context__ is None and stop_error.__cause__ is None:
                    stop_error.__context__ = exc
                stopping.reraise(self, stop_error)
        finally:
            if not self._finalized and not self._pool.workers:
                # Every worker has ended (the joins wait for them whatever happens) but a
                # cancellation cut the exit short before the group was finalized: finalize
                # it now, or it would stay open (and keep state.close() waiting) for ever.
                self._finalize_under(exc)
            parent = self._parent_frame
            if parent is not None:
                parent.children_running -= 1
            # The display is current when the block is left: synchronous subscribers (the
            # printer) have every record of this group before the program's next line runs.
            if self._finalized:
                self._state.event_bus.deliver_pending()
            owed = gathering.owed_slot()
            if owed is not None:
                # A cancelled wait lent the member's global slot (a timeout of its own,
                # inside the block or around it): unless the member is being stopped for
                # good, it works on after the block, so it takes the slot back now, once
                # this group's own members are done with theirs.
                await gathering.take_back_owed(owed)

    def _finalize_under(self, exc: BaseException | None) -> None:
        """``_finalize`` while ``exc`` (a cancellation, an error) leaves: a warning made an
        error (``python -W error``) must not replace it, so it becomes a note on it."""
        try:
            self._finalize()
        except Warning as warning:
            if exc is None:
                raise
            exc.add_note(f"{type(warning).__name__} as the group ended: {warning}")

    async def _wait_finalized(self) -> None:
        """Wait until the group has ended (its results final, its records published)."""
        if self._finalized:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._end_waiters is None:
            self._end_waiters = []
        self._end_waiters.append(waiter)
        await waiter

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        self._final_limit = self._limit
        waiters, self._end_waiters = self._end_waiters, None
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        state = self._state
        if state.open_groups.get(self.group_id) is self:
            del state.open_groups[self.group_id]
        if not self._retain:
            state.history.keep_again_under(self.group_id)
        if self._adaptive is not None:
            self._adaptive.detach(self)
        limit = self.rate_limit
        if limit is not None and limit.key is None:
            # The group's own bucket: nothing takes from it once the group ended (kept, a
            # state running many groups would keep one per group for its lifetime).
            state.rate_limiters.drop_scope(self.group_id)
        now = state.clock.now()
        self._wall_time = now - self._started_at
        tally = self._tally
        status = self._stop_group_status
        if status is None:
            status = (
                GroupStatus.COMPLETED if tally.succeeded == tally.total else GroupStatus.PARTIAL
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
            completed = _placed(
                GroupCompleted,
                self.group_id,
                now,
                parent.group_id if parent else None,
                parent.parallel_index if parent else None,
            )
            completed.name = self._display_name
            completed.status = status.value
            completed.total = tally.total
            completed.succeeded = tally.succeeded
            completed.failed = tally.failed
            completed.cancelled = tally.cancelled
            completed.skipped = tally.skipped
            completed.timed_out = tally.timed_out
            completed.wall_time = self._wall_time
            failed_input = self._input_error
            completed.input_error = None if failed_input is None else describe_error(failed_input)
            completed.quorum = self.quorum
            completed.metrics_source = self.metrics  # a snapshot only if someone reads it
            completed.resources_source = self.resource_usage if window is not None else None
            bus.publish(completed)
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
        tally = self._tally
        group.status = self._status
        group.end_time = self._end_time
        group.completed = tally.succeeded
        group.failed = tally.done - tally.succeeded
        group.total = tally.total
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
        return self._tally.total

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
        tally, pool = self._tally, self._pool
        return GroupStatistics(
            group_id=self.group_id,
            total=tally.total,
            running=pool.holding(),  # (not members that lent their slot: a backoff)
            queued=len(pool.ready),
            succeeded=tally.succeeded,
            failed=tally.failed,
            cancelled=tally.cancelled,
            timed_out=tally.timed_out,
            skipped=tally.skipped,
            concurrency_high_water=pool.high_water,
            wall_time=wall,
        )

    # --- observability: metrics snapshot ---------------------------------------------------

    def metrics(self) -> GroupMetrics:
        """A frozen ``GroupMetrics`` snapshot (counts, percentiles, throughput, efficiency,
        and the resources the group used)."""
        # Once the group is over, the limit it ran under (an adaptive one moves on).
        limit = self._final_limit if self._final_limit is not None else self._limit
        return self._tally.metrics.snapshot(
            self.statistics(), max_workers=limit, resources=self.resource_usage()
        )

    def resource_usage(self) -> ResourceUsage | None:
        """What the process used while the group ran (so far, while it runs): peak resident
        memory, open files, the event loop's lag; ``None`` when nothing watched it (the
        state's ``watchdog=None``, or a loop on virtual time). See ``ResourceUsage``."""
        window = self._window
        return window.usage() if window is not None else None
