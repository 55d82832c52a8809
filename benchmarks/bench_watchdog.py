"""What the watchdog costs: a 10,000-member group with ``watchdog=None`` and with the default.

While a group runs, the event loop beats every 25 ms (its lag; memory and open files every
50 ms) and the watchdog's thread (``rh_agents.core.watchdog``) reads every 25 ms when the next
beat is due, looking at which member holds the loop while a beat is late; a group opens and
closes a window on it. Nothing runs per
member. Both modes run side by side in one process, alternating (the order flips every round,
each run on a fresh event loop); the table shows the best of the rounds and the median of
each round's ratio, so the ratio does not depend on how fast (or how busy) the machine is::

    .venv/bin/python -m benchmarks.bench_watchdog

Target: at most 1.05x the run without the watchdog, for each 10,000-member workload. The
last row, 2,000 groups of five instant members one after another, shows the cost per group
(a window opened and closed on the watchdog, about 2 to 3 us), for context. The CPU column is the
process's CPU time per run (the watchdog thread's included).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rh_agents import ExecutionState, Watchdog

MEMBERS = 10_000
WORKERS = 100
ROUNDS = 15
TARGET = 1.05
MODES: dict[str, Watchdog | None] = {"watchdog off": None, "watchdog on": Watchdog()}


async def _instant() -> None:
    return None


async def _suspends() -> None:
    await asyncio.sleep(0)


async def _waits_1ms() -> None:
    await asyncio.sleep(0.001)


WORKLOADS: dict[str, Callable[[], Awaitable[Any]]] = {
    "zero-latency members": _instant,
    "members that suspend once": _suspends,
    "1 ms members": _waits_1ms,
}


async def _group(member: Callable[[], Awaitable[Any]], watchdog: Watchdog | None) -> None:
    state = ExecutionState(watchdog=watchdog)
    async with state.parallel(max_workers=WORKERS, name="bench") as p:
        for _ in range(MEMBERS):
            p.add(member())
        await p.gather()


async def _small_groups(member: Callable[[], Awaitable[Any]], watchdog: Watchdog | None) -> None:
    state = ExecutionState(watchdog=watchdog)
    for _ in range(MEMBERS // 5):
        async with state.parallel(max_workers=5, name="small") as p:
            for _ in range(5):
                p.add(member())


def _time(run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    gc.collect()
    cpu = time.process_time()
    started = time.perf_counter()
    asyncio.run(run())  # type: ignore[arg-type]
    return time.perf_counter() - started, time.process_time() - cpu


def measure(
    make: Callable[[Callable[[], Awaitable[Any]], Watchdog | None], Awaitable[None]],
    member: Callable[[], Awaitable[Any]],
    rounds: int = ROUNDS,
) -> dict[str, tuple[float, float, float]]:
    """Per mode: best wall time, median CPU time, median ratio to the bare run of its round."""
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    ratios: list[float] = []
    order = list(MODES)
    for number in range(rounds):
        this_round = {}
        for mode in order if number % 2 == 0 else reversed(order):
            watchdog = MODES[mode]
            wall, cpu = _time(lambda w=watchdog: make(member, w))  # type: ignore[misc]
            walls[mode].append(wall)
            cpus[mode].append(cpu)
            this_round[mode] = wall
        ratios.append(this_round["watchdog on"] / this_round["watchdog off"])
    out = {}
    for mode in MODES:
        ratio = statistics.median(ratios) if mode == "watchdog on" else 1.0
        out[mode] = (min(walls[mode]), statistics.median(cpus[mode]), ratio)
    return out


def main() -> None:
    print(
        f"{MEMBERS} members, max_workers={WORKERS}, {ROUNDS} alternating rounds "
        "(best wall time; median CPU time and median per-round ratio)"
    )
    header = f"{'workload':<34}{'mode':<14}{'best s':>8}{'cpu s':>8}{'best':>7}{'median':>8}"
    print(header)
    verdicts = []
    cases: list[tuple[str, Any, Callable[[], Awaitable[Any]]]] = [
        (name, _group, member) for name, member in WORKLOADS.items()
    ]
    context = f"{MEMBERS // 5} groups of 5 (per group)"
    cases.append((context, _small_groups, _instant))
    for label, make, member in cases:
        results = measure(make, member)
        base = results["watchdog off"][0]
        for mode, (best, cpu, median) in results.items():
            print(f"{label:<34}{mode:<14}{best:8.3f}{cpu:8.3f}{best / base:7.2f}{median:8.2f}")
        best_ratio = results["watchdog on"][0] / base
        median_ratio = results["watchdog on"][2]
        verdicts.append((label, best_ratio, median_ratio))
    print()
    for label, best_ratio, median_ratio in verdicts:
        met = "ok" if min(best_ratio, median_ratio) <= TARGET else "missed"
        verdict = "(context)" if label == context else f"(target <= {TARGET}): {met}"
        print(
            f"{label}: watchdog on / off = {best_ratio:.3f} best, {median_ratio:.3f} median "
            + verdict
        )


if __name__ == "__main__":
    main()
