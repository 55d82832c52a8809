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
import os
import time
from collections.abc import Callable

from rich.console import Console

from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent

MEMBERS = 10_000
WORKERS = 100
REPEATS = 5
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
                seconds = asyncio.run(_run_group(printer))
                if isinstance(printer, ParallelEventPrinter):
                    printer.close()
                best[label] = min(best.get(label, seconds), seconds)
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
    own = (best["progress printer"] - best["no-op subscriber"]) / MEMBERS * 1e6
    print(f"the printer's own work: {own:.1f} µs/member (progress printer minus no-op subscriber)")


if __name__ == "__main__":
    main()
