"""The worker pool of a group: which task runs which member, and when.

``_Scheduler`` is the part of ``ParallelExecutionManager`` that starts and stops worker tasks,
hands them ready members (highest priority, then submission order), pulls the ``map()`` input
as workers free up, lends and reclaims group slots for members that only wait, and runs the
members the cache answers in a lane of their own::

    async with state.parallel(max_workers=3) as p:
        for doc in docs:
            p.add(summarize(doc))    # _kick: a worker now, more at the loop's next turn

Invariants (the manager owns all of this state; only its workers and the task driving the
``async with`` block touch it, on one event loop):

- Every worker holds one slot of the group's ``SlotArbiter`` (``_slots``), from the moment
  it is started until it exits, except while its member has lent the slot (a retry backoff)
  and not yet taken it back through the arbiter. ``_high_water`` counts only slots held by
  members, never idle workers.
- The arbiter's liveness rule (see ``slots``): a slot is never idle while anyone waits for
  it. A slot freed with no task waiting reaches ready members through ``_kick`` (the
  arbiter's ``on_free``); a worker between two members first hands its slot to a task
  waiting to take one back (``pass_on``), and only then takes the next ready member.
- A worker takes its member when it first runs (``_unstarted`` holds those that have not), so
  contended members start by priority; a worker cancelled before it ran held no member, and
  ``_worker_done`` gives its slot back.
- Every task started here (workers and the cache lane) is in ``_workers`` until it ends (a
  worker leaving normally removes itself as its body returns), with ``_worker_done`` as its
  done callback; the group joins them all before it ends.
- A cache hit takes no worker slot: the cache lane runs hits one after another, outside the
  limit, and never waits for the global limit.
- For a group that keeps no results, pulling the ``map()`` input waits while twice the limit
  of results are unread, so memory stays O(max_workers) however long the input.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from rh_agents.core.context import Frame, enter_frame, exit_frame
from rh_agents.core.parallel.member import describe_member, is_event_call
from rh_agents.core.parallel.strategy import GroupStatus
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import ActorInputError, InvalidMemberError

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable
    from contextvars import Token

    from rh_agents.core.bus import EventBus
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.lazy_source import LazySource, Pulled
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.parallel.ready import ReadyQueue
    from rh_agents.core.parallel.slots import MemberSlot, SlotArbiter
    from rh_agents.core.records import BusEvent, MemberFinished
    from rh_agents.resilience.adaptive import AdaptiveLimit

__all__ = ["_Scheduler"]

# Python 3.12+ starts tasks eagerly: a worker started from _spawn runs its first member at once
# instead of a loop turn later, and gather() starts the first workers without waiting for
# that turn (see _kick, _spawn and _Gathering._wait_all).
EAGER_WORKERS = sys.version_info >= (3, 12)
# A worker lets the event loop run at least once per this many members (see _worker).
_YIELD_EVERY = 256
# A group hands its synchronous subscribers their records every this many finished members
# (see EventBus.deliver_pending): records left queued for a whole loop turn, one where a
# thousand members finish, outlive a garbage-collector generation and cost more than their
# handling does.
_DELIVER_EVERY = 128


class _Scheduler:
    """``ParallelExecutionManager``'s worker pool and slot lending (a mixin, no state)."""

    if not TYPE_CHECKING:
        # No fields of its own: they are all slots of ParallelExecutionManager. (Hidden
        # from mypy, which would otherwise reject assignments to fields declared below.)
        __slots__ = ()

    if TYPE_CHECKING:
        # Fields of ParallelExecutionManager (see its __init__) and the sibling methods used.
        _state: ExecutionState
        _adaptive: AdaptiveLimit | None
        _fixed_limit: int
        _retain: bool
        _ready: ReadyQueue
        _source: LazySource | None
        _source_error: Exception | None
        _unretained: deque[ExecutionResult[Any]]
        _instant: deque[Member]
        _instant_task: asyncio.Task[None] | None
        _workers: set[asyncio.Task[None]]
        _running_member: dict[asyncio.Task[None], Member]
        _unstarted: set[asyncio.Task[None]]
        _reader_space: asyncio.Future[None] | None
        _spawn_pending: bool
        _stop_status: ResultStatus | None
        _slots: SlotArbiter
        _context: contextvars.Context
        _high_water: int
        _done: int
        _deliver_at: int
        _plain: bool
        _now: Callable[[], float]
        _group_slot: MemberSlot
        _bus_version: int
        _announce_starts: bool
        _announcements: list[Member | MemberFinished]
        group_id: str
        member_timeout: float | None
        retry: Any

        @property
        def _limit(self) -> int: ...
        def _register(
            self, source: Any, name: str | None, priority: int, timeout: float | None, retry: Any
        ) -> Member: ...
        async def _run_member(self, member: Member, holds_slot: bool = ...) -> None: ...
        def _finish(self, member: Member, result: ExecutionResult[Any]) -> None: ...
        def _note_listeners(self, bus: EventBus) -> None: ...
        def deferred_record(self, key: Any) -> list[BusEvent] | None: ...
        def _cancelled_result(
            self, member: Member, started: float
        ) -> ExecutionResult[Any] | None: ...
        def _failed_result(
            self, member: Member, exc: Exception, started: float, address: str
        ) -> ExecutionResult[Any]: ...
        def _wake_readers(self) -> None: ...
        def _check_all_done(self) -> None: ...
        def _stop(self, status: ResultStatus, group_status: GroupStatus | None) -> None: ...

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
        slots = self._slots
        if slots._in_use == 0:
            if self._has_work():
                if EAGER_WORKERS:
                    # At the loop's next turn too, but then started eagerly (see _spawn);
                    # gather() does not wait for that turn.
                    self._spawn_pending = True
                    asyncio.get_running_loop().call_soon(self._spawn)
                else:
                    self._start_worker()
        elif self._has_work() and slots._in_use < slots.limit and not slots._waiters:
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
        slots = self._slots
        limit = slots.limit
        if slots._waiters:
            return  # tasks waiting to take a slot back go first (they hold the free ones)
        if not EAGER_WORKERS:
            for _ in range(min(limit if lazy else len(self._ready), limit - slots._in_use)):
                self._start_worker()
            return
        # Each worker runs its first member right here, up to that member's first wait: the
        # next one is started only if members are still waiting then and this one waits in
        # its member (members that never wait all run on the first, which lets the loop run
        # every few hundred). Workers starting now ask for no other spawn: the conditions
        # are checked again after each (a member may have lent its slot back meanwhile).
        self._spawn_pending = True
        try:
            while self._has_work() and slots._in_use < slots.limit and not slots._waiters:
                if self._start_worker(eager=True) not in self._running_member:
                    break
        finally:
            self._spawn_pending = False

    def _start_worker(self, eager: bool = False) -> asyncio.Task[None]:
        """Start a worker task; ``eager`` (Python 3.12+): its first step runs now, inside this
        call, so only from a loop callback or a wait of the block's own task (never from
        inside another worker's bookkeeping)."""
        self._slots.take_unchecked()  # the callers checked there is room
        # In a copy of the group's own context, never of whatever member's context asked
        # for the worker (a member lending its slot in a backoff): context variables that
        # a member sets for itself must not leak into the members the new worker runs.
        loop = asyncio.get_running_loop()
        if eager:
            # It registers itself in _workers as it starts (before this call returns), and
            # does what _worker_done does as it ends: it never is a task not yet started.
            return asyncio.Task(  # type: ignore[call-arg,unused-ignore]
                self._worker(eager=True), loop=loop, context=self._context.copy(), eager_start=True
            )
        task = loop.create_task(self._worker(), context=self._context.copy())
        self._workers.add(task)
        self._unstarted.add(task)
        task.add_done_callback(self._worker_done)
        return task

    def _take_next(self) -> Member | None:
        adaptive = self._adaptive
        limit = self._fixed_limit if adaptive is None else adaptive.current
        if self._stop_status is not None or self._slots._in_use > limit:
            return None
        return self._ready.pop()

    async def _worker(self, eager: bool = False) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._unstarted.discard(task)
        self._workers.add(task)  # (already there, unless started eagerly)
        running_member = self._running_member
        state = self._state
        bus = state.event_bus
        now = self._now
        group_id = self.group_id
        group_slot = self._group_slot
        completed = ResultStatus.COMPLETED
        # Members with no policy, no timeout and no global limit run right here (see below).
        direct = self._plain and state.global_slots is None and self.member_timeout is None
        handed_over = False
        idle = False  # left because there was nothing (more) to do for this worker
        first = True
        streak = 0  # members run since this worker last let the loop run
        # The token of the first member frame this worker entered: between two members run
        # here the frame stays that of the last one (each member sets its own over it, one
        # contextvar write per member instead of two), and this token restores the worker's
        # own frame before anything else runs here (input pulls, subscribers, the end).
        token: Token[Frame | None] | None = None
        try:
            while True:
                member = self._take_next()
                if member is None:
                    if token is not None:
                        exit_frame(token)
                        token = None
                    source = self._source
                    if (
                        source is None
                        or source.exhausted
                        or self._stop_status is not None
                        or self._slots._in_use > self._limit
                    ):
                        idle = True
                        break
                    if source.async_items is None and (
                        self._retain or len(self._unretained) < 2 * self._limit
                    ):
                        # A plain iterable with room for its results: read it right here.
                        member = self._pull_now(source)
                    else:
                        pulled = await self._pull(source)
                        member = (
                            None
                            if pulled is None
                            else self._register(
                                functools.partial(pulled[0], pulled[1]), None, 0, None, None
                            )
                        )
                    if member is None:
                        idle = True
                        break
                if first:
                    first = False
                    self._kick()  # more workers, should this member wait (see _kick)
                running_member[task] = member
                # The high-water mark counts slots held by members (not idle workers).
                held = self._slots._in_use - len(self._unstarted)
                if held > self._high_water:
                    self._high_water = held
                if direct and member.retry is None and member.timeout is None:
                    # _run_member's plain case, inline: no coroutine of our own per member and
                    # one frame less on every resumption of it (every member's hot path).
                    index = member.index
                    address = member.address = f"{group_id}[{index}]"
                    member.state = state  # the member is its own frame (see Member)
                    member.group_id = group_id
                    member.slot = group_slot
                    entered = enter_frame(member)
                    if token is None:
                        token = entered
                    started = member.started = now()
                    if bus.version != self._bus_version:
                        self._note_listeners(bus)
                    if self._announce_starts:
                        # (self._announce, inline; no local kept: a worker's local would hold
                        # the batch, and every member in it, until its next member.)
                        if not self._announcements:
                            bus.defer(self, self)
                        self._announcements.append(member)
                    result: ExecutionResult[Any]
                    try:
                        run = member.source
                        if type(run) is not CoroutineType:
                            run = member.open()  # calls a function: nothing calls it again
                        member.source = None  # runs once
                        value = await run
                    except asyncio.CancelledError:
                        cancelled = self._cancelled_result(member, started)
                        if cancelled is None:
                            raise  # not a cancellation of ours: recorded, and it goes on
                        result = cancelled
                    except Exception as exc:
                        result = self._failed_result(member, exc, started, address)
                    else:
                        if isinstance(value, ExecutionResult):
                            result = value
                        else:
                            result = ExecutionResult(
                                True,
                                value,
                                None,
                                None,
                                now() - started,
                                completed,
                                None,
                                None,
                                address,
                            )
                    if member.result is None:
                        self._finish(member, result)
                else:
                    if token is not None:
                        exit_frame(token)
                        token = None
                    await self._run_member(member)
                del running_member[task]
                if self._done >= self._deliver_at:
                    if token is not None:
                        exit_frame(token)
                        token = None
                    # Subscribers get what is queued now, not after every other worker's
                    # members of this loop turn (see _DELIVER_EVERY).
                    self._deliver_at = self._done + _DELIVER_EVERY
                    self._state.event_bus.deliver_pending()
                streak += 1
                if streak >= _YIELD_EVERY:
                    # Members that never suspend would otherwise hold the event loop for the
                    # whole group: let other tasks (subscribers, live displays, timers) run.
                    streak = 0
                    await asyncio.sleep(0)
                if self._slots._waiters and self._slots.pass_on():
                    # A member that lent its slot wants it back: it has ours, and we stop.
                    handed_over = True
                    return
        except Exception as exc:
            if not eager:
                raise  # _worker_done reports it
            self._state.report_internal_error(exc)  # a bug in the scheduler
        finally:
            if token is not None:
                exit_frame(token)
            running_member.pop(task, None)
            if not handed_over:
                # To a task waiting for a slot, else to ready members (via _kick).
                self._slots.release()
            if idle or handed_over or eager:
                # Leaving normally (or an eager worker, which has no done callback): nothing
                # runs in this task any more, so the group may end now rather than a loop
                # turn later, in the done callback.
                self._workers.discard(task)
                self._wake_readers()
                self._check_all_done()

    def _pull_now(self, source: LazySource) -> Member | None:
        """The next member of a plain iterable ``map()`` input, read without awaiting.

        With no policy to re-run it, the member is the call's coroutine itself (made now, as
        a worker is about to run it); otherwise a callable, which a retry can call again.
        """
        try:
            item = next(source.items)
        except StopIteration:
            source.exhausted = True
            return None
        except Exception as exc:
            self._input_failed(source, exc)
            return None
        call = source.call
        if not (self._plain and self.retry is None):
            return self._register(functools.partial(call, item), None, 0, None, None)
        try:
            made: Any = call(item)
        except Exception as exc:  # the member fails with it, as if it had raised when run
            made = functools.partial(_raise, exc)
        else:
            if type(made) is not CoroutineType and not inspect.isawaitable(made):
                made = functools.partial(
                    _raise,
                    InvalidMemberError(
                        f"map() called {describe_member(call)}, which returned "
                        f"{type(made).__name__}, not an awaitable; give it an async function"
                    ),
                )
        return self._register(made, None, 0, None, None)

    def _input_failed(self, source: LazySource, exc: Exception) -> None:
        """The ``map()`` input itself raised: it stops the group, whose error it becomes."""
        source.exhausted = True
        if self._source_error is None:
            self._source_error = exc
        self._stop(ResultStatus.CANCELLED, GroupStatus.FAILED)

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
            self._input_failed(source, exc)
            return None

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if task in self._unstarted:
            # Cancelled before its first step: the worker body never ran, nor took a member.
            self._unstarted.discard(task)
            self._slots.release()
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

    def _note_held(self) -> None:
        held = self._slots._in_use - len(self._unstarted)
        if held > self._high_water:
            self._high_water = held

    # --- the cache lane: members the cache answers, run without a worker slot ----------------

    def _served_by_cache(self, source: Any) -> bool:
        """Whether ``source`` is an event call whose result the state's cache already holds."""
        cache = self._state.cache
        if cache is None or not is_event_call(source):
            return False
        event = source.event
        if source.state is not self._state or not event.actor.cacheable:
            return False
        try:
            validated = event.actor.validate_input(source.input)
        except ActorInputError:
            return False  # the call itself reports the bad input
        return cache.holds(event.actor, validated)

    def _start_instant_lane(self) -> None:
        if self._instant_task is None and self._stop_status is None:
            task = asyncio.get_running_loop().create_task(
                self._instant_lane(), context=self._context.copy()
            )
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


def _raise(exc: Exception) -> Any:
    raise exc
