"""Every ``add`` form against raw ``asyncio.gather`` + ``Semaphore`` and a bare pool, per loop.

The job of every member is ``await asyncio.sleep(L)``. Baselines and our forms run side by
side in this one process, each run on a fresh event loop, alternating within every round (the
machine is shared: a slower stretch moves both alike); a ratio is the median of the per-round
ratios, with their range in brackets::

    .venv/bin/python -m benchmarks.bench_forms                 # asyncio, then uvloop if installed
    .venv/bin/python -m benchmarks.bench_forms --loop uvloop   # one loop only
    .venv/bin/python -m benchmarks.bench_forms --quick         # fewer rounds

Forms: ``p.add(coro)``, ``p.add(fn)`` (a zero-argument lambda), ``p.add("name", coro)`` and
``p.add(fn, name=...)``; "+ sub" adds one synchronous subscriber that counts every record
(member records included). The bare pool is ``W`` tasks pulling members from one iterator:
no bookkeeping at all, the floor of any asyncio scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
Run = Callable[[], Awaitable[Any]]
FORMS = ("coro", "fn", "named", "fn+name")


def _sleeper(delay: float) -> Callable[[int], Awaitable[int]]:
    async def job(i: int) -> int:
        await asyncio.sleep(delay)
        return i

    return job


def _state(subscriber: bool) -> ExecutionState:
    bus = EventBus()
    if subscriber:
        seen = [0]

        def count(record: BusEvent) -> None:
            seen[0] += 1

        bus.subscribe(count)
    return ExecutionState(event_bus=bus)


async def raw(n: int, workers: int, job: Callable[[int], Awaitable[int]]) -> None:
    limit = asyncio.Semaphore(workers)

    async def one(i: int) -> int:
        async with limit:
            return await job(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def pool(n: int, workers: int, job: Callable[[int], Awaitable[int]]) -> None:
    results: list[Any] = [None] * n
    items = iter(range(n))

    async def worker() -> None:
        for i in items:
            results[i] = await job(i)

    await asyncio.gather(*(worker() for _ in range(workers)))


def _add(p: Any, form: str, job: Callable[[int], Awaitable[int]], i: int) -> None:
    if form == "coro":
        p.add(job(i))
    elif form == "fn":
        p.add(lambda i=i: job(i))
    elif form == "named":
        p.add(f"m{i}", job(i))
    else:
        p.add(lambda i=i: job(i), name=f"m{i}")


def ours(form: str, subscriber: bool) -> Callable[[int, int, Callable[[int], Awaitable[int]]], Any]:
    async def run(n: int, workers: int, job: Callable[[int], Awaitable[int]]) -> None:
        state = _state(subscriber)
        async with state.parallel(max_workers=workers) as p:
            for i in range(n):
                _add(p, form, job, i)
            await p.gather()
        await state.close()

    return run


def groups_of_five(form: str | None, subscriber: bool, count: int) -> Run:
    """``count`` groups of five zero-latency members, one after another (``None``: raw)."""
    job = _sleeper(0)

    async def run() -> None:
        if form is None:
            for _ in range(count):
                await raw(5, 5, job)
            return
        state = _state(subscriber)
        for _ in range(count):
            async with state.parallel(max_workers=5) as p:
                for i in range(5):
                    _add(p, form, job, i)
                await p.gather()
        await state.close()

    return run


def timed(make: Run, loop_factory: LoopFactory | None) -> float:
    gc.collect()
    start = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(make())  # type: ignore[arg-type]
    return time.perf_counter() - start


def rounds(
    count: int, runs: dict[str, Run], loop_factory: LoopFactory | None
) -> dict[str, list[float]]:
    """Each run once per round, in the order given; every round's times."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(count):
        for name, make in runs.items():
            times[name].append(timed(make, loop_factory))
    return times


def ratio(times: dict[str, list[float]], name: str, base: str) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios ``name / base``."""
    per_round = sorted(o / b for o, b in zip(times[name], times[base], strict=True))
    return statistics.median(per_round), per_round[0], per_round[-1]


def _fmt(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def _variants() -> list[tuple[str, str, bool]]:
    return [
        (f"{form}{' + sub' if sub else ''}", form, sub) for sub in (False, True) for form in FORMS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    loops: list[tuple[str, LoopFactory | None]] = []
    if args.loop in ("asyncio", "both"):
        loops.append(("asyncio", None))
    if args.loop in ("uvloop", "both"):
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed (pip install 'rh-agents[fast]'): asyncio only")
        else:
            loops.append((f"uvloop {uvloop.__version__}", uvloop.new_event_loop))
    quick = args.quick
    print(f"Python {platform.python_version()}")
    for loop_name, factory in loops:
        print(f"\n## {loop_name}\n")
        _per_member(factory, 3 if quick else 7)
        _group_of_five(factory, 3 if quick else 5)
        _ten_ms(factory, loop_name, 1 if quick else 3)


def _per_member(factory: LoopFactory | None, count: int) -> None:
    n, w = 10_000, 50
    job = _sleeper(0)
    runs: dict[str, Run] = {
        "raw": lambda: raw(n, w, job),
        "pool": lambda: pool(n, w, job),
    }
    for label, form, sub in _variants():
        runs[label] = lambda form=form, sub=sub: ours(form, sub)(n, w, job)
    times = rounds(count, runs, factory)
    base = min(times["raw"]) / n * 1e6
    print(f"per member, N={n:,}, W={w}, L=0 ({count} rounds): raw gather + Semaphore {base:.1f} us")
    print("| form | us/member | ratio to raw | target <= 0.5x |")
    print("| --- | ---: | --- | --- |")
    for name in ("pool", *(label for label, _, _ in _variants())):
        r = ratio(times, name, "raw")
        verdict = "" if name == "pool" else ("ok" if r[0] <= 0.5 else "MISSED")
        print(f"| {name} | {min(times[name]) / n * 1e6:.1f} | {_fmt(r)} | {verdict} |")


def _group_of_five(factory: LoopFactory | None, count: int) -> None:
    groups = 1_000
    runs: dict[str, Run] = {"raw": groups_of_five(None, False, groups)}
    for label, form, sub in _variants():
        runs[label] = groups_of_five(form, sub, groups)
    times = rounds(count, runs, factory)
    base = min(times["raw"]) / groups * 1e6
    print(f"\ngroup of 5, L=0 ({groups:,} groups, {count} rounds): raw {base:.0f} us per group")
    print("| form | us/group | ratio to raw | target <= 1.5x |")
    print("| --- | ---: | --- | --- |")
    for label, _, _ in _variants():
        r = ratio(times, label, "raw")
        print(
            f"| {label} | {min(times[label]) / groups * 1e6:.0f} | {_fmt(r)} | "
            f"{'ok' if r[0] <= 1.5 else 'MISSED'} |"
        )


def _ten_ms(factory: LoopFactory | None, loop_name: str, count: int) -> None:
    job = _sleeper(0.01)
    uv = loop_name.startswith("uvloop")
    print("\n10 ms members, callable form + one subscriber: efficiency = ideal / wall")
    print("| case | bare pool | ours | ours / pool | target |")
    print("| --- | ---: | ---: | --- | --- |")
    for n, w, relative, absolute in ((10_000, 50, 0.97, 0.95), (100_000, 1000, 0.8, 0.85)):
        ideal = math.ceil(n / w) * 0.01
        runs: dict[str, Run] = {
            "pool": lambda n=n, w=w: pool(n, w, job),
            "ours": lambda n=n, w=w: ours("fn", True)(n, w, job),
        }
        times = rounds(count, runs, factory)
        eff_pool = ideal / min(times["pool"])
        eff_ours = ideal / min(times["ours"])
        per_round = sorted(p / o for o, p in zip(times["ours"], times["pool"], strict=True))
        r = (statistics.median(per_round), per_round[0], per_round[-1])
        if uv:
            target = f"ours >= {absolute}"
            ok = eff_ours >= absolute
        else:
            target = f">= {relative}x pool"
            ok = r[0] >= relative
        print(
            f"| N={n:,}, W={w} | {eff_pool:.2f} | {eff_ours:.2f} | {_fmt(r)} | {target} "
            f"{'ok' if ok else 'MISSED'} |"
        )


if __name__ == "__main__":
    main()
