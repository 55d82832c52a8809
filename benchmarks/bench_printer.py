"""Printer overhead: a 10,000-member group with and without ``ParallelEventPrinter``.

Both runs happen side by side in one process, alternating, and the best of several repeats
is kept, so the ratio does not depend on how fast the machine is::

    .venv/bin/python -m benchmarks.bench_printer

The printer is in ``progress`` mode on a non-terminal console writing to ``os.devnull`` (what
it does in CI or a log file). The time includes draining the bus, so the printer has really
handled every record when the clock stops. Target: at most 1.5x the run with no subscriber.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable

from rich.console import Console

from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import (
    BusEvent,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
)

MEMBERS = 10_000
WORKERS = 100
REPEATS = 9
TARGET = 1.5
LABELS = ("no subscriber", "no-op subscriber", "progress printer", "collapsed printer")


def _ignore(record: BusEvent) -> None:
    """Receives every record and does nothing: the cost of building and delivering records."""


async def _noop() -> None:
    return None


async def _run_group(subscriber: Callable[[BusEvent], None] | None) -> float:
    bus = EventBus()
    if subscriber is not None:
        bus.subscribe(subscriber)
    state = ExecutionState(event_bus=bus)
    started = time.perf_counter()
    async with state.parallel(max_workers=WORKERS, name="bench") as p:
        for _ in range(MEMBERS):
            p.add(_noop())
        await p.gather()
    await bus.close()
    return time.perf_counter() - started


def _measure() -> dict[str, float]:
    best: dict[str, float] = {}
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for _ in range(REPEATS):
            for label in LABELS:
                printer: Callable[[BusEvent], None] | None = None
                if label == "no-op subscriber":
                    printer = _ignore
                elif label != "no subscriber":
                    mode = "progress" if label == "progress printer" else "collapsed"
                    console = Console(file=sink, force_terminal=False, width=100)
                    printer = ParallelEventPrinter(mode, console=console)
                gc.collect()  # start every run from the same heap
                seconds = asyncio.run(_run_group(printer))
                if isinstance(printer, ParallelEventPrinter):
                    printer.close()
                best[label] = min(best.get(label, seconds), seconds)
    return best


def _records() -> list[BusEvent]:
    """The records a 10,000-member group publishes, built once (for the printer-alone run)."""
    group = "bench"
    records: list[BusEvent] = [
        GroupStarted(address=group, timestamp=0.0, name=group, total=0, max_workers=WORKERS)
    ]
    for i in range(MEMBERS):
        where = {"group_id": group, "parallel_index": i, "is_parallel": True}
        records.append(
            MemberStarted(
                address=f"{group}[{i}]", timestamp=i * 1e-5, **where, name=None, index=i,
                queue_wait=0.0, total=MEMBERS,
            )
        )  # fmt: skip
        records.append(
            MemberFinished(
                address=f"{group}[{i}]", timestamp=i * 1e-5, **where, name=None, index=i,
                status="completed", execution_time=1e-5, error=None, done=i + 1,
                succeeded=i + 1, failed=0, total=MEMBERS,
            )
        )  # fmt: skip
    records.append(
        GroupCompleted(
            address=group, timestamp=0.1, name=group, status="completed", total=MEMBERS,
            succeeded=MEMBERS, failed=0, cancelled=0, skipped=0, timed_out=0, wall_time=0.1,
        )
    )  # fmt: skip
    return records


def _printer_alone() -> dict[str, float]:
    """Seconds per member the printer itself spends, fed pre-built records (no bus, no loop)."""
    records = _records()
    best: dict[str, float] = {}
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for _ in range(REPEATS):
            for mode in ("progress", "collapsed"):
                printer = ParallelEventPrinter(mode, console=Console(file=sink, width=100))
                started = time.perf_counter()
                for record in records:
                    printer(record)
                printer.close()
                seconds = (time.perf_counter() - started) / MEMBERS
                best[mode] = min(best.get(mode, seconds), seconds)
    return best


def main() -> None:
    best = _measure()
    base = best["no subscriber"]
    print(
        f"Printer overhead: {MEMBERS:,} zero-latency members, max_workers={WORKERS}, "
        f"best of {REPEATS}"
    )
    print(f"{'run':<20} {'seconds':>9} {'µs/member':>10} {'ratio':>7}")
    for label, seconds in best.items():
        print(
            f"{label:<20} {seconds:>9.3f} {seconds / MEMBERS * 1e6:>10.1f} {seconds / base:>7.2f}"
        )
    ratio = best["progress printer"] / base
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"target: progress printer <= {TARGET}x no subscriber: {verdict} ({ratio:.2f}x)")
    alone = _printer_alone()
    print("the printer alone, fed the same records pre-built (no bus, no event loop):")
    for mode, seconds in alone.items():
        share = seconds * MEMBERS / base
        print(f"  {mode:<10} {seconds * 1e6:>5.2f} µs/member = {share:.2f}x of the bare group")


if __name__ == "__main__":
    main()
