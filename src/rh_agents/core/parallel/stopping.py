"""Stopping a group: ``cancel()``, the group timeout, and the error the strategy raises.

A group stops once, for one reason: ``p.cancel()``, the block left by an exception, the
group's ``timeout``, a failure under ``FAIL_FAST`` or past ``failure_threshold``, a reached
``quorum``, or a failed ``map()`` input. ``_Stopping`` is the part of
``ParallelExecutionManager`` that does it and says why::

    async with state.parallel(error_strategy="fail_fast") as p:
        p.add(flaky(doc))
        await p.gather()     # raises the first failure; the rest were cancelled

Invariants:

- ``_stop`` is idempotent: the first call sets ``_stop_status`` (what unfinished members
  become) and ``_stop_group_status``; later calls do nothing.
- ``_stop`` cancels every running worker but the calling task, and finishes at once, with a
  closed coroutine, every member that has not started (ready, waiting for the cache lane, or
  waiting for a dependency): after it, only running members still owe a result.
- ``_raise_for_strategy`` is called only once every member has its result (the group joined
  and finalized), so the error it raises never leaves work running behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from rh_agents.core.parallel.strategy import ErrorStrategy, GroupStatus
from rh_agents.core.results import ExecutionResult, ResultStatus, describe_error
from rh_agents.errors import (
    FailureThresholdError,
    GroupFailedError,
    MemberCancelledError,
    MemberFailedError,
    MemberSkippedError,
    ParallelTimeoutError,
)

if TYPE_CHECKING:
    from rh_agents.core.parallel.lazy_source import LazySource
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.parallel.ready import ReadyQueue

__all__ = ["_Stopping"]


class _Stopping:
    """``ParallelExecutionManager``'s stop and error-strategy methods (a mixin, no state)."""

    if not TYPE_CHECKING:
        # No fields of its own: they are all slots of ParallelExecutionManager. (Hidden
        # from mypy, which would otherwise reject assignments to fields declared below.)
        __slots__ = ()

    if TYPE_CHECKING:
        # Fields of ParallelExecutionManager (see its __init__) and the sibling methods used.
        group_id: str
        error_strategy: ErrorStrategy
        timeout: float | None
        failure_threshold: float | None
        quorum: int | None
        raise_exception_group: bool
        _sealed: bool
        _stop_status: ResultStatus | None
        _stop_group_status: GroupStatus | None
        _trigger: ExecutionResult[Any] | None
        _source_error: Exception | None
        _source: LazySource | None
        _members: dict[int, Member]
        _ready: ReadyQueue
        _instant: deque[Member]
        _workers: set[asyncio.Task[None]]
        _running_member: dict[asyncio.Task[None], Member]
        _timeout_handle: asyncio.TimerHandle | None
        _total: int
        _succeeded: int
        _failed: int
        _timed_out: int

        def _finish(self, member: Member, result: ExecutionResult[Any]) -> None: ...
        def _check_all_done(self) -> None: ...

    def _threshold_reached(self) -> bool:
        threshold = self.failure_threshold
        failures = self._failed + self._timed_out
        if isinstance(threshold, float):
            # A fraction of a total still growing means nothing: wait until sealed.
            return self._sealed and failures >= threshold * max(self._total, 1)
        return threshold is not None and failures >= threshold

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

    def _skipped_result(self, member: Member, dep: ExecutionResult[Any]) -> ExecutionResult[Any]:
        """The result of ``member``, skipped because its dependency ended as ``dep``."""
        exc = MemberSkippedError(
            f"member {member.name or member.index} of group {self.group_id!r} was skipped: "
            f"its dependency {dep.name or dep.index!r} did not complete ({dep.error})"
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
        for member in self._members.values():
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
                "(every result, finished ones included, is in this error's .results)",
                results,
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
