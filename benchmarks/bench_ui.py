"""Viewer overhead: a 10,000-member group with and without the run viewer watching it.

Every mode runs side by side in one process, alternating, round after round; the table gives
the best run of each and the median of each round's ratio to that round's bare run, so the
ratio does not depend on how fast (or how busy) the machine is::

    .venv/bin/python -m benchmarks.bench_ui

Modes:

- "no viewer": the group alone (``rh_agents.ui`` is imported, as it is in the other modes:
  importing it changes nothing for a run that does not use it).
- "no-op subscriber": not the viewer: a subscriber that ignores every record, for scale (the
  cost of the records the bus builds and delivers as soon as anyone listens).
- "viewer up, not watching": a viewer server runs on the same event loop
  (``Viewer().start()``), but the run is not watched: what a process pays for serving pages.
- "watching": ``viewer.watch(state)``: a ``LiveFeed`` on the run's bus takes every record.
- "watching + a browser": the same, with a client reading the run's event stream
  (``/api/runs/{id}/events``, real HTTP on 127.0.0.1) from another thread, as a browser would.

The time runs from the first ``add`` to the bus closed, so the feed has taken every record
when the clock stops. Workloads: members that do nothing (the worst case: the records the
bus builds for a subscriber are most of the cost), members that are ``ExecutionEvent`` calls of
a tool that returns at once, and members that wait 10 ms (a stand-in for real calls).
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.ui import Viewer

MEMBERS = 10_000
WORKERS = 100
TARGET = 1.2
MODES = (
    "no viewer",
    "no-op subscriber",
    "viewer up, not watching",
    "watching",
    "watching + a browser",
)


class Number(BaseModel):
    n: int


async def _double(input: Number, context: str, state: ExecutionState) -> int:
    return input.n * 2


TOOL = Tool(name="double", description="doubles", input_model=Number, handler=_double)


def _ignore(record: Any) -> None:
    """Receives every record and does nothing."""


async def _noop() -> None:
    return None


async def _wait_10ms() -> None:
    await asyncio.sleep(0.01)


def _noop_members(state: ExecutionState, count: int) -> list[Awaitable[Any]]:
    return [_noop() for _ in range(count)]


def _event_members(state: ExecutionState, count: int) -> list[Awaitable[Any]]:
    return [ExecutionEvent(actor=TOOL)(Number(n=i), "", state) for i in range(count)]


def _waiting_members(state: ExecutionState, count: int) -> list[Awaitable[Any]]:
    return [_wait_10ms() for _ in range(count)]


# Workload: how its members are made, rounds, members. The 100,000-member run lasts long
# enough (about half a second) for a browser's stream to send updates while it runs, so it
# shows what watching costs a run in its steady state, not only at its start.
WORKLOADS: dict[str, tuple[Callable[[ExecutionState, int], list[Awaitable[Any]]], int, int]] = {
    "no-op members": (_noop_members, 15, MEMBERS),
    "no-op members, 100k": (_noop_members, 7, 100_000),
    "ExecutionEvent members": (_event_members, 9, MEMBERS),
    "10 ms members": (_waiting_members, 3, MEMBERS),
}


def _read_stream(port: int, run_id: str, ready: threading.Event, got: list[int]) -> None:
    """A browser's event stream: read until the run's end (or the server closes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/api/runs/{run_id}/events")
        response = conn.getresponse()
        ready.set()
        while line := response.readline():
            if line.startswith(b"event:"):
                got[0] += 1
                if line.strip() == b"event: end":
                    break
    except OSError:
        pass
    finally:
        ready.set()
        conn.close()


async def _run(
    mode: str, make: Callable[[ExecutionState, int], list[Awaitable[Any]]], members: int
) -> float:
    state = ExecutionState(run_id="bench")
    viewer = None
    reader = None
    got = [0]
    if mode == "no-op subscriber":
        state.event_bus.subscribe(_ignore)
    elif mode != "no viewer":
        viewer = await Viewer(port=0, store="/nonexistent/rh_agents_bench.db").start()
        if mode != "viewer up, not watching":
            viewer.watch(state)
        if mode == "watching + a browser":
            ready = threading.Event()
            reader = threading.Thread(
                target=_read_stream, args=(viewer.port, "bench", ready, got), daemon=True
            )
            reader.start()
            await asyncio.to_thread(ready.wait, 10)  # the stream's first bytes, then the run
    gc.collect()
    started = time.perf_counter()
    async with state.parallel(max_workers=WORKERS, name="bench") as p:
        for member in make(state, members):
            p.add(member)
        await p.gather()
    await state.event_bus.close()
    seconds = time.perf_counter() - started
    if viewer is not None:
        viewer.finish()
        await asyncio.sleep(0.3)  # the stream's last update and its end
        await viewer.close()
    if reader is not None:
        await asyncio.to_thread(reader.join, 5)
        assert got[0] >= 1, "the browser's stream received nothing"
    return seconds


def _measure(workload: str) -> dict[str, list[float]]:
    make, rounds, members = WORKLOADS[workload]
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            runs[mode].append(asyncio.run(_run(mode, make, members)))
    return runs


def main() -> None:
    print(f"Viewer overhead: one group of {MEMBERS:,} members (unless said), max_workers={WORKERS}")
    print(
        f"{'workload':<24} {'mode':<25} {'rounds':>6} {'best s':>8} {'µs/member':>10} "
        f"{'best ratio':>11} {'median ratio':>13}"
    )
    verdicts = []
    for workload in WORKLOADS:
        runs = _measure(workload)
        members = WORKLOADS[workload][2]
        bare = runs["no viewer"]
        for mode, seconds in runs.items():
            best = min(seconds)
            median = statistics.median(s / b for s, b in zip(seconds, bare, strict=True))
            print(
                f"{workload:<24} {mode:<25} {len(seconds):>6} {best:>8.3f} "
                f"{best / members * 1e6:>10.1f} {best / min(bare):>11.2f} {median:>13.2f}"
            )
            if mode == "watching + a browser":
                verdicts.append((workload, median))
        sys.stdout.flush()
    for workload, median in verdicts:
        verdict = "met" if median <= TARGET else "NOT met"
        print(f"target: watched + a browser <= {TARGET}x, {workload}: {verdict} ({median:.2f}x)")


if __name__ == "__main__":
    main()
