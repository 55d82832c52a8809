"""``ResultTally``: a group's results and its counts of them.

The tally is the one owner of what a group has collected: the results it keeps (by index,
and the order they completed in), the results it only hands to a stream reader, and one
count per final status. The group calls ``expect`` as it numbers a member and ``land`` as
the member's one result arrives; everyone else reads::

    tally = ResultTally(retain=True)
    index = tally.expect()                 # member 0 is on its way
    tally.land(member, result)             # and here is its result
    tally.statistics()                     # TallyStatistics(total=1, done=1, succeeded=1, ...)

Invariants:

- ``done == succeeded + failed + cancelled + timed_out + skipped <= total``; each member is
  counted once, by ``land``.
- With ``retain``, ``results`` has one entry per expected member (``None`` until its result
  lands) and ``completion_order`` lists each landed index once; without it, ``unretained``
  holds the landed results no reader has taken yet, and nothing else is kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rh_agents.core.parallel.metrics import MetricsRecorder
from rh_agents.core.results import ExecutionResult, ResultStatus

if TYPE_CHECKING:
    from rh_agents.core.parallel.member import Member

__all__ = ["ResultTally", "TallyStatistics"]

_FAILED = ResultStatus.FAILED
_TIMED_OUT = ResultStatus.TIMED_OUT
_CANCELLED = ResultStatus.CANCELLED


@dataclass(frozen=True, slots=True)
class TallyStatistics:
    """A frozen snapshot of a tally: members expected, results landed by status, and the
    results waiting for a stream reader (a group that keeps no results)."""

    total: int
    done: int
    succeeded: int
    failed: int
    cancelled: int
    timed_out: int
    skipped: int
    unread: int


class ResultTally:
    """What a group has collected so far; see the module docstring."""

    __slots__ = (
        "cancelled",
        "completion_order",
        "done",
        "dropping",
        "failed",
        "failures_kept",
        "last_failure",
        "metrics",
        "results",
        "retain",
        "skipped",
        "succeeded",
        "timed_out",
        "total",
        "unretained",
    )

    def __init__(self, retain: bool) -> None:
        self.retain = retain
        self.results: list[ExecutionResult[Any] | None] = []  # by index (kept results only)
        self.completion_order: list[int] = []
        self.unretained: deque[ExecutionResult[Any]] = deque()  # for the stream's reader
        self.dropping = False  # no reader will come: unkept results are only counted
        self.last_failure: ExecutionResult[Any] | None = None
        # A group that keeps no results but raises every failure at the end keeps those.
        self.failures_kept: list[ExecutionResult[Any]] | None = None
        self.total = 0  # members numbered so far
        self.done = 0
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.skipped = 0
        self.metrics = MetricsRecorder()  # per-member timings (observability)

    def expect(self) -> int:
        """Number the next member: its index (and its place in ``results``, if kept)."""
        index = self.total
        self.total = index + 1
        if self.retain:
            self.results.append(None)
        return index

    def land(self, member: Member, result: ExecutionResult[Any]) -> None:
        """Count ``member``'s one result and keep it (or queue it for the stream reader)."""
        self.metrics.record(member, result)  # one append per member
        self.done += 1
        status = result.status
        if result.ok:
            self.succeeded += 1
        elif status is _FAILED:
            self.failed += 1
            self.last_failure = result
        elif status is _TIMED_OUT:
            self.timed_out += 1
            self.last_failure = result
        elif status is _CANCELLED:
            self.cancelled += 1
        else:
            self.skipped += 1
        if self.retain:
            index = member.index
            self.results[index] = result
            self.completion_order.append(index)
        else:
            if not self.dropping:
                self.unretained.append(result)
            if self.failures_kept is not None and not result.ok:
                self.failures_kept.append(result)

    def drop_unread(self) -> None:
        """No reader will take the results a group that keeps none has not handed out yet
        (its block is left): drop them, and those still to land."""
        self.dropping = True
        self.unretained.clear()

    @property
    def failures(self) -> int:
        """Members that failed or timed out (what a failure threshold counts)."""
        return self.failed + self.timed_out

    def collected(self) -> list[ExecutionResult[Any]]:
        """Every kept result in submission order (call once every member has landed)."""
        return list(self.results)  # type: ignore[arg-type]  # every entry is filled by then

    def statistics(self) -> TallyStatistics:
        """A frozen snapshot of the counts."""
        return TallyStatistics(
            total=self.total,
            done=self.done,
            succeeded=self.succeeded,
            failed=self.failed,
            cancelled=self.cancelled,
            timed_out=self.timed_out,
            skipped=self.skipped,
            unread=len(self.unretained),
        )
