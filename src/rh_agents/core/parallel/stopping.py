"""Stopping a group: ``cancel()``, the group timeout, and the error the strategy raises.

A group stops once, for one reason: ``p.cancel()``, the block left by an exception, the
group's ``timeout``, a failure under ``FAIL_FAST`` or past ``failure_threshold``, a reached
``quorum``, or a failed ``map()`` input. The functions here are
``ParallelExecutionManager``'s methods (bound in its class body, each taking the group first)
that do it and say why::

    async with state.parallel(error_strategy="fail_fast") as p:
        p.add(flaky(doc))
        await p.gather()     # raises the first failure; the rest were cancelled

Invariants:

- ``_stop`` is idempotent: the first call sets ``_stop_status`` (what unfinished members
  become) and ``_stop_group_status``; later calls do nothing.
- ``_stop`` cancels every running worker but the calling task, and finishes at once, with a
  closed coroutine, every member that has not started (ready, waiting for the instant lane, or
  waiting for a dependency): after it, only running members still owe a result.
- ``_raise_for_strategy`` is called only once every member has its result (the group joined
  and finalized), so the error it raises never leaves work running behind it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NoReturn

from rh_agents.core.parallel.strategy import ErrorStrategy, GroupStatus
from rh_agents.core.results import ExecutionResult, ResultStatus, describe_error
from rh_agents.errors import (
    FailureThresholdError,
    GroupClosedError,
    GroupFailedError,
    MemberCancelledError,
    MemberFailedError,
    MemberSkippedError,
    ParallelTimeoutError,
)

if TYPE_CHECKING:
    from rh_agents.core.parallel.lazy_source import LazySource
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member

__all__ = [
    "cancel",
    "check_threshold",
    "input_close_failed",
    "input_failed",
    "member_raised_base",
    "on_group_timeout",
    "raise_for_strategy",
    "reraise",
    "skipped_result",
    "stop",
    "stop_reason_text",
    "stopped_result",
    "threshold_reached",
]


def threshold_reached(group: ParallelExecutionManager[Any]) -> bool:
    threshold = group.failure_threshold
    failures = group._tally.failures
    if isinstance(threshold, float):
        # A fraction of a total still growing means nothing: wait until sealed, and until a
        # map() input is read to its end (its members are added as workers free up).
        source = group._source
        return (
            group._sealed
            and (source is None or source.exhausted)
            and failures >= threshold * max(group._tally.total, 1)
        )
    return threshold is not None and failures >= threshold


def check_threshold(group: ParallelExecutionManager[Any]) -> None:
    """The member count just became final (sealed, or the map() input ended): stop now if the
    failures so far already reach a fractional threshold."""
    if (
        group._stop_status is None
        and group.failure_threshold is not None
        and group._tally.last_failure is not None
        and threshold_reached(group)
    ):
        group._trigger = group._tally.last_failure
        group._stop(ResultStatus.CANCELLED, GroupStatus.FAILED)


def stopped_result(
    group: ParallelExecutionManager[Any], member: Member, elapsed: float = 0.0
) -> ExecutionResult[Any]:
    status = group._stop_status or ResultStatus.CANCELLED
    where = f"member {member.name or member.index} of group {group.group_id!r}"
    exc: Exception
    if status is ResultStatus.TIMED_OUT:
        exc = ParallelTimeoutError(
            f"{where} did not finish: the group timed out after {group.timeout}s"
        )
    else:
        exc = MemberCancelledError(f"{where} was cancelled: {stop_reason_text(group)}")
    return ExecutionResult(
        ok=False,
        error=describe_error(exc),
        exception=exc,
        execution_time=elapsed,
        status=status,
    )


def stop_reason_text(group: ParallelExecutionManager[Any]) -> str:
    trigger = group._trigger
    if trigger is not None and group._stop_error is trigger.exception:
        return f"member {trigger.name or trigger.index} raised {trigger.error}"
    if trigger is not None:
        what = "fail-fast" if group.error_strategy is ErrorStrategy.FAIL_FAST else "threshold"
        return f"{what} after member {trigger.name or trigger.index} failed ({trigger.error})"
    if group.quorum is not None and group._tally.succeeded >= group.quorum:
        return f"quorum of {group.quorum} successes reached"
    return "the group was cancelled"


def skipped_result(
    group: ParallelExecutionManager[Any], member: Member, dep: ExecutionResult[Any]
) -> ExecutionResult[Any]:
    """The result of ``member``, skipped because its dependency ended as ``dep``."""
    exc = MemberSkippedError(
        f"member {member.name or member.index} of group {group.group_id!r} was skipped: "
        f"its dependency {dep.name or dep.index!r} did not complete ({dep.error})"
    )
    return ExecutionResult(
        ok=False, error=describe_error(exc), exception=exc, status=ResultStatus.SKIPPED
    )


def stop(
    group: ParallelExecutionManager[Any], status: ResultStatus, group_status: GroupStatus | None
) -> None:
    """Stop the group: cancel running members, finish unstarted ones as ``status``."""
    if group._stop_status is not None:
        return
    group._stop_status = status
    group._stop_group_status = group_status
    pool = group._pool
    pool.cancel_all()
    for member in pool.ready.drain():
        member.discard()
        group._finish(member, stopped_result(group, member))
    pool.replays.clear()
    while pool.instant:
        member = pool.instant.popleft()
        member.discard()
        group._finish(member, stopped_result(group, member))
    for member in group._members.values():
        if member.result is None and member.started is None and member.pending_deps:
            member.discard()
            group._finish(member, stopped_result(group, member))
    if group._source is not None:
        group._source.exhausted = True
    group._check_all_done()


def member_raised_base(group: ParallelExecutionManager[Any], result: ExecutionResult[Any]) -> None:
    """A member raised ``result.exception``, a ``BaseException`` that is not an ``Exception``
    (``KeyboardInterrupt``, ``SystemExit``, ``pytest.fail``): not a failure to collect but a
    request to stop. As ``asyncio.TaskGroup`` does, the group stops and raises it whatever
    its strategy (called before the member's result lands, which then ends the group)."""
    if group._stop_error is None:
        group._stop_error = result.exception
    if group._stop_status is None:
        group._trigger = result
        stop(group, ResultStatus.CANCELLED, GroupStatus.FAILED)


def input_failed(
    group: ParallelExecutionManager[Any], source: LazySource, exc: BaseException
) -> None:
    """The ``map()`` input itself raised (an ``Exception``, or a ``KeyboardInterrupt``, a
    test framework's failure): it stops the group, whose error it becomes."""
    source.exhausted = True
    if group._input_error is None:
        group._input_error = exc
    if group._stop_error is None:
        group._stop_error = exc
    stop(group, ResultStatus.CANCELLED, GroupStatus.FAILED)


def input_close_failed(group: ParallelExecutionManager[Any], exc: BaseException) -> None:
    """The ``map()`` input raised as it was closed (its ``finally``), every member done: the
    group's error, unless it has one already (its strategy's, the input's own), which then
    carries this one as its ``__context__`` if it has none (it is never lost)."""
    if group._input_error is None:
        group._input_error = exc
    earlier = group._stop_error or (group._trigger.exception if group._trigger else None)
    if earlier is None and group._trigger is None:
        group._stop_error = exc
        if group._stop_group_status is None:
            group._stop_group_status = GroupStatus.FAILED
    elif earlier is not None and earlier.__context__ is None and earlier is not exc:
        earlier.__context__ = exc


def on_group_timeout(group: ParallelExecutionManager[Any]) -> None:
    group._timeout_handle = None
    stop(group, ResultStatus.TIMED_OUT, GroupStatus.TIMED_OUT)


def cancel(group: ParallelExecutionManager[Any]) -> None:
    """Cancel every running member and skip the rest; results so far are kept.

    From the group's own event loop only (its tasks are cancelled here); from another
    thread, ``loop.call_soon_threadsafe(p.cancel)``.
    """
    loop = group._loop
    if loop is not None and asyncio._get_running_loop() is not loop:
        raise GroupClosedError(
            f"cancel() of group {group.group_id!r} was called from another thread or event "
            "loop than the one the group runs on (its tasks belong to that loop); from a "
            "thread: loop.call_soon_threadsafe(p.cancel)"
        )
    group._sealed = True
    stop(group, ResultStatus.CANCELLED, GroupStatus.CANCELLED)


def raise_for_strategy(
    group: ParallelExecutionManager[Any], results: list[ExecutionResult[Any]]
) -> None:
    """Raise what the group's end calls for, if anything (and remember it was raised: the
    block's exit does not raise it a second time once a reader had it)."""
    try:
        _raise_outcome(group, results)
    except BaseException:
        group._outcome_raised = True
        raise


def reraise(group: ParallelExecutionManager[Any], error: BaseException) -> NoReturn:
    """Raise ``error``, an exception the group keeps (a member's, its input's), with the
    traceback it had when the group first raised it: read again and again (``gather()``
    after the block), its traceback must not grow by the reader's frames each time."""
    kept = group._raised_tb
    if kept is not None and kept[0] is error:
        error.with_traceback(kept[1])
    else:
        group._raised_tb = (error, error.__traceback__)
    raise error


def _raise_outcome(
    group: ParallelExecutionManager[Any], results: list[ExecutionResult[Any]]
) -> None:
    if group._stop_error is not None:
        # The map() input failed, or a member raised a BaseException: it stopped the group.
        reraise(group, group._stop_error)
    if group.raise_exception_group:
        # Asked for, it is what the end raises whatever stopped the group (the strategy's
        # first failure, a threshold, a timeout, a quorum): every member that did not
        # complete, with every result.
        kept = group._tally.failures_kept
        if kept is not None:  # a group that keeps no results: its failures were kept for this
            results = sorted(kept, key=lambda r: r.index if r.index is not None else -1)
        errors = [
            r.exception
            if isinstance(r.exception, Exception)
            else MemberFailedError(r.error or "failed", r)
            for r in results
            if not r.ok
        ]
        if errors:
            raise GroupFailedError(
                f"{len(errors)} of {group._tally.total} members of group {group.group_id!r} "
                "did not complete",
                errors,
                results,
            )
    trigger = group._trigger
    if (
        trigger is None
        and group._stop_group_status is GroupStatus.TIMED_OUT
        and group.error_strategy is not ErrorStrategy.FAIL_SLOW
    ):
        raise ParallelTimeoutError(
            f"group {group.group_id!r} timed out after {group.timeout}s: "
            f"{group._tally.timed_out} of {group._tally.total} members did not finish in time "
            "(every result, finished ones included, is in this error's .results)",
            results,
        )
    if trigger is not None:
        if group.error_strategy is ErrorStrategy.FAIL_FAST:
            if trigger.exception is not None:
                reraise(group, trigger.exception)
            raise MemberFailedError(
                f"member {trigger.name or trigger.index} of group {group.group_id!r} "
                f"failed: {trigger.error}",
                trigger,
            )
        failures = group._tally.failures
        raise FailureThresholdError(
            f"group {group.group_id!r} stopped after {failures} failures "
            f"(failure_threshold={group.failure_threshold}); the rest were cancelled. "
            "Partial results are in .results",
            results,
        )
