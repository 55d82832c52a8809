"""Scheduler overhead of a parallel group against ``asyncio.gather`` with a semaphore.

Both run the same trivial members (a few event-loop steps each) side by side in one process;
the table shows time per member, the ratio to the baseline and the peak number of live tasks
(a group uses at most ``max_workers`` worker tasks, the baseline one task per member)::

    python -m benchmarks.bench_parallel_overhead
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from rh_agents.core.execution import ExecutionState

MEMBERS = 20_000
WORKERS = 50
ROUNDS = 3


async def _member(peak: list[int]) -> int:
    peak[1] += 1
    if peak[1] % 500 == 0:  # all_tasks() is O(tasks): sample it, or it dominates the baseline
        peak[0] = max(peak[0], len(asyncio.all_tasks()))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return 1


async def _baseline(peak: list[int]) -> None:
    limit = asyncio.Semaphore(WORKERS)

    async def limited() -> int:
        async with limit:
            return await _member(peak)

    await asyncio.gather(*(limited() for _ in range(MEMBERS)))


async def _group(peak: list[int]) -> None:
    state = ExecutionState()
    async with state.parallel(max_workers=WORKERS) as p:
        for _ in range(MEMBERS):
            p.add(_member(peak))


async def _lazy_group(peak: list[int]) -> None:
    state = ExecutionState()

    async def one(_: int) -> int:
        return await _member(peak)

    async with state.parallel(max_workers=WORKERS) as p:
        p.map(one, range(MEMBERS))


def _measure(run: Callable[[list[int]], Coroutine[Any, Any, None]]) -> tuple[float, int]:
    best = float("inf")
    peak = [0, 0]
    for _ in range(ROUNDS):
        start = time.perf_counter()
        asyncio.run(run(peak))
        best = min(best, time.perf_counter() - start)
    return best, peak[0]


def main() -> None:
    rows = [
        ("asyncio.gather + Semaphore", _baseline),
        ("state.parallel + add()", _group),
        ("state.parallel + map()", _lazy_group),
    ]
    base = None
    print(f"{MEMBERS} members, max_workers={WORKERS}, best of {ROUNDS}")
    print(f"{'variant':<30}{'us/member':>12}{'ratio':>8}{'peak tasks':>12}")
    for label, run in rows:
        seconds, peak = _measure(run)
        base = base if base is not None else seconds
        per = seconds / MEMBERS * 1e6
        print(f"{label:<30}{per:>12.1f}{seconds / base:>8.2f}{peak:>12}")


if __name__ == "__main__":
    main()
