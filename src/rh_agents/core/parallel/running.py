"""Running one member and landing its one result: ``run_member`` and ``finish``.

The functions here are ``ParallelExecutionManager``'s methods (bound in its class body, each
taking the group first) that a worker (or the instant lane) calls for each member it takes:
``run_member`` enters the member's frame, holds its slots, applies its timeout and turns what
the member returned or raised into an ``ExecutionResult``; ``finish`` lands that result.
Nothing here is called directly; it is what runs under::

    async with state.parallel(max_workers=5) as p:
        p.add(summarize(doc))            # a worker runs it through _run_member
        results = await p.gather()       # each result was set by _finish

Invariants:

- ``finish`` is the only place a result lands (in the group's ``ResultTally``), exactly once
  per member, and a member finished without running has its coroutine closed there.
- A global slot taken in ``run_member`` is released in its ``finally``, whatever the exit.
- A cancellation that is not the group's own stop (the worker's task being cancelled) is
  recorded for the member and then re-raised: it is never swallowed.
- Member records are built only if the bus has someone who wants them (``MemberRecords``
  reads it again whenever the bus's version moves); a ``MemberStarted`` is deferred and
  dropped if the member finishes before it would be published.
"""

from __future__ import annotations

import asyncio
import copy
import sys
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from rh_agents.core.context import Frame, InContext, enter_frame, exit_frame
from rh_agents.core.deadlines import member_deadlines
from rh_agents.core.parallel.member import reused_coroutine
from rh_agents.core.parallel.slots import MemberSlot
from rh_agents.core.parallel.strategy import ErrorStrategy, GroupStatus
from rh_agents.core.results import ExecutionResult, ResultStatus, describe_error
from rh_agents.core.watch import MEMBER_FINISHED as _MEMBER_FINISHED
from rh_agents.errors import MemberCancelledError, ParallelTimeoutError

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member

__all__ = [
    "cancelled_result",
    "check_all_done",
    "failed_result",
    "finish",
    "release_dependents",
    "returned_result",
    "run_member",
    "unfinished",
]

_FAILURE_STATUSES = (ResultStatus.FAILED, ResultStatus.TIMED_OUT)


def _enter_member(frame: Frame, deadlines: tuple[asyncio.Timeout, ...]) -> None:
    """In a member's own context: make it the current frame, with the deadlines around it."""
    enter_frame(frame)
    member_deadlines.set(deadlines)


async def run_member(
    group: ParallelExecutionManager[Any], member: Member, holds_slot: bool = True
) -> None:
    state = group._state
    now = group._now
    index = member.index
    pool = group._pool
    # Without a global limit a member holds only its group slot, which the pool itself
    # lends and reclaims: one shared slot object serves every member.
    global_slots = state.global_slots
    slot = MemberSlot(pool) if global_slots is not None else pool.group_slot
    if not holds_slot:
        global_slots = None
    address = member.address = f"{group.group_id}[{index}]"
    if group._key is not None:
        member.key = f"{group._key}[{index}]"
    member.state = state  # the member is its own frame (see Member)
    member.group_id = group.group_id
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
        records = group._records
        if records.bus.version != records.bus_version:
            records.listen()
        if records.starts_wanted:
            # Published once the member waits or publishes (see MemberRecords): a member
            # that finishes without suspending needs no start record of its own.
            records.started(member)
        timeout = member.timeout or group.member_timeout
        deadline = asyncio.timeout(timeout) if timeout is not None else None
        context = member.context
        if context is not None:
            # Added under other context variables than the block's (or run after a member
            # set one on this worker): it runs with those, each step, in this worker's task.
            # Its frame and the member deadlines around it are this group's, not those of
            # wherever it was added.
            deadlines = member_deadlines.get()
            context.run(
                _enter_member, frame, deadlines if deadline is None else (*deadlines, deadline)
            )
        # With no retry, breaker or rate limit anywhere there is nothing to resolve: run
        # the member directly (this is every member's hot path).
        if pool.plain and member.retry is None:
            run = member.source
            if type(run) is not CoroutineType:
                # Calls a function (nothing will call it again), in the member's context.
                run = member.open() if context is None else context.run(member.open)
            elif run.cr_frame is None or run.cr_await is not None:
                run = reused_coroutine(member, run)  # (started already: see there)
            member.source = None  # runs once
        else:
            run = state.run_member(group, member, frame)
        if context is not None:
            run = InContext(run, context)
        if deadline is None:
            value = await run
        else:
            inside = member_deadlines.set((*member_deadlines.get(), deadline))
            try:
                async with deadline:
                    value = await run
            except TimeoutError as exc:
                if not deadline.expired():
                    raise  # the member's own TimeoutError: a failure, not our timeout
                raise ParallelTimeoutError(
                    f"member {member.name or index} of group {group.group_id!r} timed out "
                    f"after {timeout}s"
                ) from exc
            finally:
                member_deadlines.reset(inside)
    except asyncio.CancelledError:
        cancelled = cancelled_result(group, member, started)
        if cancelled is None:
            raise  # not a cancellation of ours: recorded, and it goes on
        result = cancelled
    except Exception as exc:
        result = failed_result(group, member, exc, started, address)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit, pytest.fail...
        # Still the member's one result (else the group would wait for it forever); the
        # group stops and raises it (see stopping.member_raised_base).
        result = failed_result(group, member, exc, started, address)
        group._member_raised_base(result)
    else:
        if isinstance(value, ExecutionResult):
            result = returned_result(value, group.group_id, member.index)
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
        if slot._joins:
            slot.member_ended(index)  # (a task of its own still waits, its slots lent)
        if slot is not pool.group_slot:
            slot.ended = True  # a wait outliving the member (another task's) takes nothing back
        if slot.global_held:
            slot.global_held = False
            assert global_slots is not None
            global_slots.release()
    if member.result is None:
        finish(group, member, result)


def cancelled_result(
    group: ParallelExecutionManager[Any], member: Member, started: float
) -> ExecutionResult[Any] | None:
    """The result of ``member``, whose run was just cancelled (called in the ``except``).

    ``None`` if the cancellation is not the group's own stop (the worker's task itself is
    being cancelled): the member's result is then recorded here, and the caller re-raises,
    never swallowing it. A member that raised ``CancelledError`` by itself, or one our stop
    cancelled, gets its result returned.
    """
    result = group._stopped_result(member, group._now() - started)
    result.attempts = member.attempts
    if group._stop_status is None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            if member.result is None:
                finish(group, member, result)
            return None
        # Nobody cancelled it: the member raised CancelledError itself (gave up, or awaited
        # a task that its owner cancelled). Said so, with the cancellation's own message,
        # rather than "the group was cancelled", which it was not.
        raised = sys.exc_info()[1]
        why = f": {raised.args[0]}" if raised is not None and raised.args else ""
        exc = MemberCancelledError(
            f"member {member.name or member.index} of group {group.group_id!r} was "
            f"cancelled, not by its group (a CancelledError raised in it, or by what it "
            f"awaited{why})"
        )
        if raised is not None:
            exc.__cause__ = raised
        result.exception = exc
        result.error = describe_error(exc)
    return result


def failed_result(
    group: ParallelExecutionManager[Any],
    member: Member,
    exc: BaseException,
    started: float,
    address: str,
) -> ExecutionResult[Any]:
    """The result of ``member``, which raised ``exc``."""
    return ExecutionResult(
        ok=False,
        error=describe_error(exc),
        exception=exc,
        execution_time=group._now() - started,
        status=ResultStatus.TIMED_OUT
        if isinstance(exc, ParallelTimeoutError)
        else ResultStatus.FAILED,
        address=address,
        attempts=member.attempts,  # counted by the retry loop, if one ran
    )


def finish(
    group: ParallelExecutionManager[Any], member: Member, result: ExecutionResult[Any]
) -> None:
    """Record ``member``'s one result and react to it (the only place results land)."""
    index = member.index
    if result.index is not None and (
        result.index != index
        or (result.name != member.name and not _own(result, group.group_id, index))
    ):
        # Another group's result (or another member's), handed back by this member: it is
        # taken as is, but as a copy, so that its own group keeps it as it was.
        result = copy.copy(result)
    result.index = index
    result.name = member.name
    if result.address is None:
        result.address = f"{group.group_id}[{index}]"
    member.result = result  # (a member no longer kept stays reachable from the stream)
    if member.source is not None:
        member.discard()  # closes a coroutine that never ran: no "never awaited" warning
    tally = group._tally
    tally.land(member, result)
    watch = group._state.watch
    if watch is not None:  # the run viewer's log, read later (see core/watch.py)
        # Values the member and result hold already (no number made per member); its end is
        # worked out when read, or is now for a member that never ran.
        started = member.started
        group_id = group.group_id
        watch.log += (
            _MEMBER_FINISHED, member.address or f"{group_id}[{index}]", group_id, index,
            member.name, started, member.enqueued, result.execution_time, result.attempts,
            result.status._value_, result.error, group._now() if started is None else None,
        )  # fmt: skip

    records = group._records
    if records.bus.version != records.bus_version:
        records.listen()
    if records.finishes_wanted:
        # Into the group's batch, with the starts: published in order at the loop's next
        # turn, or before anyone's next record (see MemberRecords).
        records.finished(member, result)

    if group._dependents:
        release_dependents(group, index, result)

    status = result.status
    if group._stop_status is None:
        if not result.ok and status in _FAILURE_STATUSES:
            if group.error_strategy is ErrorStrategy.FAIL_FAST or (
                group.failure_threshold is not None and group._threshold_reached()
            ):
                group._trigger = result
                group._stop(ResultStatus.CANCELLED, GroupStatus.FAILED)
        elif result.ok and group.quorum is not None and tally.succeeded >= group.quorum:
            group._stop(ResultStatus.CANCELLED, None)

    readers = group._readers
    if readers.progress is not None:
        readers.result_landed()
    if not group._pool.workers:  # else the last worker to end checks (see WorkerPool)
        check_all_done(group)


def returned_result(
    result: ExecutionResult[Any], group_id: str, index: int
) -> ExecutionResult[Any]:
    """The result of member ``index`` that returned ``result``: the result of its own call
    (an event call added as the member) is the member's; any other (one the caller made, or
    had from elsewhere, maybe returned by several members) is taken as a copy, so that
    placing it (``index``, ``name``, ``address``) changes nothing its owner holds."""
    return result if _own(result, group_id, index) else copy.copy(result)


def _own(result: ExecutionResult[Any], group_id: str, index: int) -> bool:
    """Whether ``result`` is of a call made by member ``index`` itself, not of a group nested
    in it: its address is under the member's, with no ``[`` after (names have none)."""
    address = result.address
    prefix = f"{group_id}[{index}]::"
    return address is not None and address.startswith(prefix) and "[" not in address[len(prefix) :]


def release_dependents(
    group: ParallelExecutionManager[Any], index: int, result: ExecutionResult[Any]
) -> None:
    """Member ``index`` ended as ``result``: its dependents get ready, or are skipped."""
    dependents = group._dependents.pop(index, None)
    if not dependents:
        return
    for dependent in dependents:
        if dependent.result is not None:
            continue
        if result.ok:
            dependent.pending_deps -= 1
            if dependent.pending_deps == 0 and group._stop_status is None:
                pool = group._pool
                state = group._state
                if (
                    state.cache is not None or state.recovery is not None
                ) and pool.answered_at_once(dependent):
                    pool.run_at_once(dependent)  # a cache hit or a replay: no worker slot
                else:
                    pool.ready.push(dependent)
        else:
            finish(group, dependent, group._skipped_result(dependent, result))
    group._pool.kick()


def unfinished(group: ParallelExecutionManager[Any]) -> bool:
    tally = group._tally
    return tally.done < tally.total or (group._source is not None and not group._source.exhausted)


def check_all_done(group: ParallelExecutionManager[Any]) -> None:
    if group._pool.workers or unfinished(group):
        return
    group._readers.group_ended()
