"""Hand-built records of a small run, in a fixed order, for the printer tests.

``Orch`` runs a group ``docs`` of three members (two workers). Member 1 runs a nested group
``steps`` whose first member is retried and whose second fails; member 1 itself then times out,
a circuit breaker opens, and member 2 is cancelled.
"""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.bus_handlers.parallel_printer import ParallelMode
from rh_agents.core.records import (
    BusEvent,
    CircuitStateChanged,
    EventCompleted,
    EventRetrying,
    EventStarted,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
)


class FrozenClock:
    """Every reading is 0: durations print as 0ms, so a real run prints the same every time."""

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def plain_printer(
    mode: ParallelMode, *, width: int = 100, **options: object
) -> tuple[ParallelEventPrinter, io.StringIO]:
    """A printer writing plain text to a string, on a clock that always reads 0."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False)
    options.setdefault("clock", lambda: 0.0)
    return ParallelEventPrinter(mode, console=console, **options), out  # type: ignore[arg-type]


DOCS = "Orch::docs"
STEPS = "Orch::docs[1]::reader::steps"


def _in(group: str, index: int) -> dict[str, object]:
    return {"group_id": group, "parallel_index": index, "is_parallel": True}


def _within(group: str | None, index: int) -> dict[str, object]:
    return {} if group is None else _in(group, index)


def member_started(
    address: str,
    index: int,
    *,
    at: float,
    group: str | None = None,
    name: str | None = None,
    queue_wait: float = 0.0,
    total: int | None = None,
) -> MemberStarted:
    """Member ``index`` at ``address`` started at ``at`` (inside ``group``, if given)."""
    return MemberStarted(
        address=address,
        timestamp=at,
        **_within(group, index),
        name=name,
        index=index,
        queue_wait=queue_wait,
        total=total,
    )


def member_finished(
    address: str,
    index: int,
    *,
    at: float,
    took: float,
    done: int,
    ok: int,
    total: int | None,
    status: str = "completed",
    error: str | None = None,
    group: str | None = None,
    name: str | None = None,
    attempts: int = 1,
) -> MemberFinished:
    """Member ``index`` finished at ``at`` after ``took`` seconds; the group's counts after it
    are ``done`` and ``ok`` (``failed`` is the rest, as a group reports it)."""
    return MemberFinished(
        address=address,
        timestamp=at,
        **_within(group, index),
        name=name,
        index=index,
        status=status,
        execution_time=took,
        error=error,
        done=done,
        succeeded=ok,
        failed=done - ok,
        total=total,
        attempts=attempts,
    )


def group_completed(
    address: str,
    *,
    at: float,
    name: str,
    status: str,
    total: int,
    ok: int,
    wall: float,
    failed: int = 0,
    timed_out: int = 0,
    cancelled: int = 0,
    skipped: int = 0,
    within: tuple[str, int] | None = None,
) -> GroupCompleted:
    """Group ``name`` at ``address`` completed at ``at``; ``within``: the group and index of
    the member it runs in, for a nested group."""
    return GroupCompleted(
        address=address,
        timestamp=at,
        **({} if within is None else _in(*within)),
        name=name,
        status=status,
        total=total,
        succeeded=ok,
        failed=failed,
        cancelled=cancelled,
        skipped=skipped,
        timed_out=timed_out,
        wall_time=wall,
    )


def run_records() -> list[BusEvent]:
    timed_out = "ParallelTimeoutError: member 1 of group 'Orch::docs' timed out after 2.0s"
    return [
        EventStarted(address="Orch", timestamp=0.0, actor="Orch", actor_kind="agent"),
        GroupStarted(address=DOCS, timestamp=0.0, name="docs", total=0, max_workers=2),
        member_started(f"{DOCS}[0]", 0, at=0.0, group=DOCS, total=3),
        member_started(f"{DOCS}[1]", 1, at=0.0, group=DOCS, total=3),
        EventStarted(
            address=f"{DOCS}[0]::reader",
            timestamp=0.0,
            **_in(DOCS, 0),
            actor="reader",
            actor_kind="agent",
        ),
        GroupStarted(
            address=STEPS,
            timestamp=0.1,
            **_in(DOCS, 1),
            name="steps",
            total=0,
            max_workers=2,
            parent_group_id=DOCS,
        ),
        member_started(f"{STEPS}[0]", 0, at=0.1, group=STEPS, name="summary", total=2),
        EventRetrying(
            address=f"{STEPS}[0]::llm",
            timestamp=0.3,
            **_in(STEPS, 0),
            attempt=1,
            delay=0.25,
            error="RateLimitError: 429 slow down",
            error_type="RateLimitError",
        ),
        member_finished(
            f"{STEPS}[0]", 0, at=0.9, took=0.8, done=1, ok=1, total=2,
            group=STEPS, name="summary", attempts=2,
        ),
        member_started(
            f"{STEPS}[1]", 1, at=0.9, group=STEPS, name="keywords", queue_wait=0.8, total=2
        ),
        member_finished(
            f"{STEPS}[1]", 1, at=1.0, took=0.1, done=2, ok=1, total=2,
            status="failed", error="ValueError: no words", group=STEPS, name="keywords",
        ),
        group_completed(
            STEPS, at=1.1, name="steps", status="partial", total=2, ok=1, failed=1, wall=1.0,
            within=(DOCS, 1),
        ),
        EventCompleted(
            address=f"{DOCS}[0]::reader",
            timestamp=1.2,
            **_in(DOCS, 0),
            actor="reader",
            actor_kind="agent",
            execution_time=1.2,
        ),
        member_finished(f"{DOCS}[0]", 0, at=1.2, took=1.2, done=1, ok=1, total=3, group=DOCS),
        CircuitStateChanged(
            address=f"{DOCS}[1]",
            timestamp=1.5,
            key="llm",
            old_state="closed",
            new_state="open",
            failures=5,
        ),
        member_finished(
            f"{DOCS}[1]", 1, at=2.0, took=2.0, done=2, ok=1, total=3,
            status="timed_out", error=timed_out, group=DOCS,
        ),
        member_started(f"{DOCS}[2]", 2, at=2.0, group=DOCS, name="last", queue_wait=2.0, total=3),
        member_finished(
            f"{DOCS}[2]", 2, at=2.5, took=0.5, done=3, ok=1, total=3,
            status="cancelled", error="MemberCancelledError: group stopped", group=DOCS,
            name="last",
        ),
        group_completed(
            DOCS, at=2.5, name="docs", status="partial", total=3, ok=1, cancelled=1,
            timed_out=1, wall=2.5,
        ),
        EventCompleted(
            address="Orch", timestamp=2.6, actor="Orch", actor_kind="agent", execution_time=2.6
        ),
    ]  # fmt: skip
