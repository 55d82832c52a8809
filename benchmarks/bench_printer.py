"""Printer overhead: a 10,000-member group with and without ``ParallelEventPrinter``.

Both runs happen side by side in one process, alternating; the best of several repeats is
kept, and so is the median of each round's ratio to that round's bare run, so the ratio does
not depend on how fast (or how busy) the machine is::

    .venv/bin/python -m benchmarks.bench_printer

The printer is in ``progress`` mode on a non-terminal console writing to ``os.devnull`` (what
it does in CI or a log file). The time includes draining the bus, so the printer has really
handled every record when the clock stops. Target: at most 1.5x the run with no subscriber.

A second table feeds pre-built records straight to the printer (no bus, no event loop), in
``progress`` (plain lines, and the live view of a terminal) and ``collapsed``, both with a
``MemberStarted`` before every ``MemberFinished`` and with ``MemberFinished`` alone (what a
member that never waits publishes).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rich.console import Console

from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.bus_handlers.parallel_printer import ParallelMode
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
REPEATS = 15
TARGET = 1.5
LABELS = ("no subscriber", "no-op subscriber", "progress printer", "collapsed printer")


def _ignore(record: BusEvent) -> None:
    """Receives every record and does nothing: the cost of building and delivering records."""


async def _noop() -> None:
    return None


async def _wait_10ms() -> None:
    await asyncio.sleep(0.01)  # a stand-in for a call that waits (real ones wait far longer)


async def _run_group(
    subscriber: Callable[[BusEvent], None] | None,
    member: Callable[[], Any] = _noop,
    members: int = MEMBERS,
) -> float:
    bus = EventBus()
    if subscriber is not None:
        bus.subscribe(subscriber)
    state = ExecutionState(event_bus=bus)
    started = time.perf_counter()
    async with state.parallel(max_workers=WORKERS, name="bench") as p:
        for _ in range(members):
            p.add(member())
        await p.gather()
    await bus.close()
    return time.perf_counter() - started


def _measure() -> dict[str, list[float]]:
    """Seconds of every run, by label (one run of each label per round, alternating)."""
    runs: dict[str, list[float]] = {label: [] for label in LABELS}
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for _ in range(REPEATS):
            for label in LABELS:
                printer: Callable[[BusEvent], None] | None = None
                if label == "no-op subscriber":
                    printer = _ignore
                elif label != "no subscriber":
                    mode: ParallelMode = "progress" if label == "progress printer" else "collapsed"
                    console = Console(file=sink, force_terminal=False, width=100)
                    printer = ParallelEventPrinter(mode, console=console)
                gc.collect()  # start every run from the same heap
                seconds = asyncio.run(_run_group(printer))
                if isinstance(printer, ParallelEventPrinter):
                    printer.close()
                runs[label].append(seconds)
    return runs


def _measure_waiting(rounds: int = 5, members: int = 2_000) -> float:
    """Median per-round ratio progress printer / no subscriber, members that wait 10 ms."""
    ratios: list[float] = []
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for _ in range(rounds):
            gc.collect()
            bare = asyncio.run(_run_group(None, _wait_10ms, members))
            console = Console(file=sink, force_terminal=False, width=100)
            printer = ParallelEventPrinter("progress", console=console)
            gc.collect()
            printed = asyncio.run(_run_group(printer, _wait_10ms, members))
            printer.close()
            ratios.append(printed / bare)
    return statistics.median(ratios)


def _records(*, started: bool = True) -> list[BusEvent]:
    """The records of a 10,000-member group, built once (for the printer-alone run).

    ``started=False``: no ``MemberStarted``, as for members that finish without waiting.
    """
    group = "bench"
    records: list[BusEvent] = [
        GroupStarted(address=group, timestamp=0.0, name=group, total=0, max_workers=WORKERS)
    ]
    for i in range(MEMBERS):
        where: dict[str, Any] = {"group_id": group, "parallel_index": i, "is_parallel": True}
        if started:
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


ALONE: tuple[tuple[ParallelMode, bool], ...] = (
    ("progress", False),
    ("progress", True),
    ("collapsed", False),
)


def _printer_alone() -> dict[tuple[ParallelMode, bool, bool], float]:
    """Seconds per member the printer itself spends, by (mode, terminal, with MemberStarted)."""
    best: dict[tuple[ParallelMode, bool, bool], float] = {}
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for started in (True, False):
            records = _records(started=started)
            for _ in range(REPEATS):
                for mode, terminal in ALONE:
                    console = Console(file=sink, width=100, force_terminal=terminal)
                    printer = ParallelEventPrinter(mode, console=console)
                    queue = deque(records)
                    begun = time.perf_counter()
                    # As the bus hands them over: one batch (the printer's handle_batch).
                    printer.handle_batch(queue)
                    printer.close()
                    seconds = (time.perf_counter() - begun) / MEMBERS
                    key = (mode, terminal, started)
                    best[key] = min(best.get(key, seconds), seconds)
    return best


def main() -> None:
    runs = _measure()
    bare = runs["no subscriber"]
    base = min(bare)
    print(
        f"Printer overhead: {MEMBERS:,} zero-latency members, max_workers={WORKERS}, "
        f"{REPEATS} rounds"
    )
    print(f"{'run':<20} {'best s':>8} {'µs/member':>10} {'best ratio':>11} {'median ratio':>13}")
    medians: dict[str, float] = {}
    for label, seconds in runs.items():
        best = min(seconds)
        medians[label] = statistics.median(s / b for s, b in zip(seconds, bare, strict=True))
        print(
            f"{label:<20} {best:>8.3f} {best / MEMBERS * 1e6:>10.1f} {best / base:>11.2f} "
            f"{medians[label]:>13.2f}"
        )
    ratio = min(runs["progress printer"]) / base
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(
        f"target: progress printer <= {TARGET}x no subscriber: {verdict} "
        f"(best {ratio:.2f}x, median {medians['progress printer']:.2f}x)"
    )
    waiting = _measure_waiting()
    print(f"members that wait 10 ms (2,000, same limit): progress printer {waiting:.2f}x")
    alone = _printer_alone()
    print("the printer alone, fed the same records pre-built (no bus, no event loop):")
    print(f"  {'mode':<22} {'started+finished':>17} {'finished only':>14}")
    for mode, terminal in ALONE:
        label = f"{mode} ({'terminal' if terminal else 'plain'})"
        cells = [alone[(mode, terminal, started)] * 1e6 for started in (True, False)]
        print(f"  {label:<22} {cells[0]:>12.2f} µs {cells[1]:>11.2f} µs")


if __name__ == "__main__":
    main()
