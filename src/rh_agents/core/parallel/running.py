"""Running one member and landing its one result: ``_run_member`` and ``_finish``.

``_MemberRunning`` is the part of ``ParallelExecutionManager`` that a worker (or the cache
lane) calls for each member it takes: it enters the member's frame, holds its slots, applies
its timeout, turns what the member returned or raised into an ``ExecutionResult``, and lands
that result. Nothing here is called directly; it is what runs under::

    async with state.parallel(max_workers=5) as p:
        p.add(summarize(doc))            # a worker runs it through _run_member
        results = await p.gather()       # each result was set by _finish

Invariants:

- ``_finish`` is the only place a result lands, exactly once per member; ``_done`` counts
  them, and a member finished without running has its coroutine closed there.
- A global slot taken in ``_run_member`` is released in its ``finally``, whatever the exit.
- A cancellation that is not the group's own stop (the worker's task being cancelled) is
  recorded for the member and then re-raised: it is never swallowed.
- Member records are built only if the bus has someone who wants them (``_note_listeners``,
  cached until the bus's version moves); a ``MemberStarted`` is deferred and dropped if the
  member finishes before it would be published.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import CoroutineType
from typing import TYPE_CHECKING, Any, cast

from rh_agents.core.context import Frame, enter_frame, exit_frame
from rh_agents.core.parallel.slots import MemberSlot
from rh_agents.core.parallel.strategy import ErrorStrategy, GroupStatus
from rh_agents.core.records import BusEvent, MemberFinished, MemberStarted
from rh_agents.core.results import ExecutionResult, ResultStatus, describe_error
from rh_agents.errors import ParallelTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

    from rh_agents.core.bus import EventBus
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.lazy_source import LazySource
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.parallel.metrics import MetricsRecorder
    from rh_agents.core.parallel.ready import ReadyQueue

__all__ = ["_MemberRunning"]

_FAILURE_STATUSES = (ResultStatus.FAILED, ResultStatus.TIMED_OUT)


class _MemberRunning:
    """``ParallelExecutionManager``'s per-member run and completion (a mixin, no state)."""

    if not TYPE_CHECKING:
        # No fields of its own: they are all slots of ParallelExecutionManager. (Hidden
        # from mypy, which would otherwise reject assignments to fields declared below.)
        __slots__ = ()

    if TYPE_CHECKING:
        # Fields of ParallelExecutionManager (see its __init__) and the sibling methods used.
        group_id: str
        error_strategy: ErrorStrategy
        member_timeout: float | None
        failure_threshold: float | None
        quorum: int | None
        _state: ExecutionState
        _now: Callable[[], float]
        _plain: bool
        _group_slot: MemberSlot
        _retain: bool
        _results: list[ExecutionResult[Any] | None]
        _dependents: dict[int, list[Member]]
        _completion_order: list[int]
        _unretained: deque[ExecutionResult[Any]]
        _metrics: MetricsRecorder
        _ready: ReadyQueue
        _source: LazySource | None
        _workers: set[asyncio.Task[None]]
        _done_waiters: list[asyncio.Future[None]]
        _progress: asyncio.Future[None] | None
        _bus_version: int
        _announce_starts: bool
        _report_finishes: bool
        _announcements: list[Member | MemberFinished]
        _stop_status: ResultStatus | None
        _last_failure: ExecutionResult[Any] | None
        _trigger: ExecutionResult[Any] | None
        _total: int
        _done: int
        _succeeded: int
        _failed: int
        _cancelled: int
        _timed_out: int
        _skipped: int

        def _kick(self) -> None: ...
        def _stop(self, status: ResultStatus, group_status: GroupStatus | None) -> None: ...
        def _stopped_result(self, member: Member, elapsed: float = ...) -> ExecutionResult[Any]: ...
        def _skipped_result(
            self, member: Member, dep: ExecutionResult[Any]
        ) -> ExecutionResult[Any]: ...
        def _threshold_reached(self) -> bool: ...

    async def _run_member(self, member: Member, holds_slot: bool = True) -> None:
        state = self._state
        now = self._now
        bus = state.event_bus
        index = member.index
        # Without a global limit a member holds only its group slot, which the manager itself
        # lends and reclaims: one shared slot object serves every member.
        # (The cast is for mypy only: this mixin is always a ParallelExecutionManager.)
        slot = (
            MemberSlot(cast("ParallelExecutionManager[Any]", self))
            if state.global_slots is not None
            else self._group_slot
        )
        global_slots = state.global_slots if holds_slot else None
        address = member.address = f"{self.group_id}[{index}]"
        member.state = state  # the member is its own frame (see Member)
        member.group_id = self.group_id
        member.slot = slot
        frame: Frame = member
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
                self._announce(member)
            timeout = member.timeout or self.member_timeout
            # With no retry, breaker or rate limit anywhere there is nothing to resolve: run
            # the member directly (this is every member's hot path).
            if self._plain and member.retry is None:
                run = member.source
                if type(run) is not CoroutineType:
                    run = member.open()  # calls a function: nothing will call it again
                member.source = None  # runs once
            else:
                run = state.run_member(cast("ParallelExecutionManager[Any]", self), member, frame)
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

    def _cancelled_result(self, member: Member, started: float) -> ExecutionResult[Any] | None:
        """The result of ``member``, whose run was just cancelled (called in the ``except``).

        ``None`` if the cancellation is not the group's own stop (the worker's task itself is
        being cancelled): the member's result is then recorded here, and the caller re-raises,
        never swallowing it. A member that raised ``CancelledError`` by itself, or one our stop
        cancelled, gets its result returned.
        """
        result = self._stopped_result(member, self._now() - started)
        result.attempts = member.attempts
        if self._stop_status is None:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                if member.result is None:
                    self._finish(member, result)
                return None
        return result

    def _failed_result(
        self, member: Member, exc: Exception, started: float, address: str
    ) -> ExecutionResult[Any]:
        """The result of ``member``, which raised ``exc``."""
        return ExecutionResult(
            ok=False,
            error=describe_error(exc),
            exception=exc,
            execution_time=self._now() - started,
            status=ResultStatus.TIMED_OUT
            if isinstance(exc, ParallelTimeoutError)
            else ResultStatus.FAILED,
            address=address,
            attempts=member.attempts,  # counted by the retry loop, if one ran
        )

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
        if bus.version != self._bus_version:
            self._note_listeners(bus)
        if self._report_finishes:
            # Into the group's batch, with the starts: published in order at the loop's next
            # turn, or before anyone's next record (see deferred_record).
            started = member.started
            batch = self._announcements
            if not batch:
                bus.defer(self, self)
            elif batch[-1] is member:
                # It finished without waiting, and nothing was queued since its start: its
                # finish record takes the place of its start, which would never be published.
                batch.pop()
            batch.append(
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

        if self._dependents:
            dependents = self._dependents.pop(index, None)
            if dependents:
                for dependent in dependents:
                    if dependent.result is not None:
                        continue
                    if result.ok:
                        dependent.pending_deps -= 1
                        if dependent.pending_deps == 0 and self._stop_status is None:
                            self._ready.push(dependent)
                    else:
                        self._finish(dependent, self._skipped_result(dependent, result))
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

    def _announce(self, member: Member) -> None:
        """Queue ``member``'s ``MemberStarted``: the bus publishes it once the member waits
        (or publishes anything); a member that finishes first is announced by its finish
        record alone."""
        batch = self._announcements
        if not batch:
            self._state.event_bus.defer(self, self)
        batch.append(member)

    def deferred_record(self, key: Any) -> list[BusEvent] | None:
        """The group's member records since the last flush, in order (the bus asks, ``key`` is
        the group): a ``MemberFinished`` as it was made, a ``MemberStarted`` for each member
        started and not finished by now. One batch per loop turn (or per record published
        by anyone else in between) rather than one publish per record."""
        batch = self._announcements
        if not batch:
            return None
        self._announcements = []
        records: list[BusEvent] = []
        append = records.append
        total: int | None = -1  # (read once, if a start is announced)
        for member in batch:
            if isinstance(member, MemberFinished):
                append(member)
                continue
            started = member.started
            if member.result is not None or started is None:
                continue  # finished without waiting: its finish record tells it all
            if total == -1:
                source = self._source
                total = None if source is not None and not source.exhausted else self._total
            append(
                MemberStarted.of_member(
                    self.group_id,
                    member.index,
                    member.address or f"{self.group_id}[{member.index}]",
                    member.name,
                    started,
                    started - member.enqueued,
                    total,
                )
            )
        return records

    def _wake_readers(self) -> None:
        """Wake the stream() readers waiting for a result or for the end of the group."""
        progress = self._progress
        if progress is not None:
            self._progress = None
            if not progress.done():
                progress.set_result(None)

    def _unfinished(self) -> bool:
        return self._done < self._total or (self._source is not None and not self._source.exhausted)

    def _check_all_done(self) -> None:
        if self._workers or self._unfinished():
            return
        waiters, self._done_waiters = self._done_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
