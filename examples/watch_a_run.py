"""Watch a run three ways: the printer, a subscriber that only wants failures, and metrics.

The printer shows the groups; the alert subscriber asks for ``MemberFinished`` records only
(``kinds=``), so it is handed nothing else; ``p.metrics()`` is a frozen snapshot of where the
time went. Run with ``.venv/bin/python examples/watch_a_run.py``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import IO

from rich.console import Console

from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import GroupMetrics
from rh_agents.core.records import BusEvent, MemberFinished


async def fetch(page: int) -> str:
    await asyncio.sleep(0.001 * (page % 5))  # stands for a call that takes a while
    if page % 7 == 3:
        raise ConnectionError(f"page {page} did not answer")
    return f"page {page}"


async def main(out: IO[str] = sys.stdout) -> tuple[list[str], GroupMetrics]:
    bus = EventBus()
    alerts: list[str] = []

    def alert(record: BusEvent) -> None:
        assert isinstance(record, MemberFinished)  # the only kind it asked for
        if record.status != "completed":
            alerts.append(f"{record.address}: {record.error}")

    printer = ParallelEventPrinter("collapsed", console=Console(file=out, width=100))
    bus.subscribe(printer)
    bus.subscribe(alert, kinds=[MemberFinished])
    state = ExecutionState(event_bus=bus)
    async with state.parallel(max_workers=4, name="pages") as p:
        for page in range(12):
            p.add(fetch(page))
    await bus.drain()
    printer.close()
    return alerts, p.metrics()


if __name__ == "__main__":
    alerts, metrics = asyncio.run(main())
    print("\n".join(alerts))
    print(
        f"{metrics.succeeded}/{metrics.total} ok, p95 run {metrics.run_time.p95 * 1000:.1f} ms, "
        f"busiest {metrics.concurrency_high_water} at once"
    )
