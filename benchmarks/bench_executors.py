"""Where members run: the event loop, a pool of processes and Ray, on CPU-bound members.

40 members of about 50 ms of pure-Python work each (a fixed amount of work, calibrated once:
never a spin on the clock, which would finish on time however little CPU it got), in a group
of ``max_workers=2``, on this 2-core machine:

- the event loop runs them one at a time whatever ``max_workers`` says (about 2 s);
- a plain-def handler in worker threads is no better (the GIL), shown for context;
- ``executor=ProcessExecutor(max_processes=2)`` and ``executor=RayExecutor()`` (a local Ray of
  2 CPUs; its members on a pool of Ray actors, the default) run two at a time: the target is
  1.8x the loop's speed or more, each; ``RayExecutor(actors=False)`` (one Ray task per
  member) is shown beside;
- two bare processes doing the same work (no framework at all) show what the machine itself
  gives two parallel workers at that moment, and bare Ray tasks and bare Ray actors (Ray
  without us: two lanes of twenty calls) what Ray itself gives: the ceilings of the rows
  above.

All in one run, side by side, best of ``ROUNDS`` rounds each, with the executors warmed first
(their processes started, Ray's workers up): the start of a pool or of Ray is a one-off,
reported apart. Then the cost of an executor per member: ``ZERO`` members that do nothing,
``max_workers=2``, wall time per member.

    .venv/bin/python -m benchmarks.bench_executors
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import RHAgentsWarning
from rh_agents.executors import ProcessExecutor, RayExecutor

MEMBERS = 40
WORK_MS = 50.0
WORKERS = 2
ROUNDS = 5
ZERO = 400
TARGET = 1.8


def _work(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def calibrate() -> int:
    """The iterations of ``_work`` that take ``WORK_MS`` here (best of a few tries)."""
    trial = 200_000
    best = min(_timed(lambda: _work(trial)) for _ in range(5))
    return int(trial * (WORK_MS / 1000) / best)


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def cpu_member(iterations: int) -> int:
    """A member for an executor: a function of a module, sent by reference."""
    return _work(iterations)


async def cpu_member_async(iterations: int) -> int:
    """The same member for the event loop (it never awaits: the loop runs it through)."""
    return _work(iterations)


class Work(BaseModel):
    iterations: int


def cpu_handler(input: Work, context: str, state: ExecutionState) -> int:
    return _work(input.iterations)


def nothing() -> None:
    return None


async def nothing_async() -> None:
    return None


def _bare(count: int, iterations: int, connection: Any) -> None:
    started = time.time()
    for _ in range(count):
        _work(iterations)
    connection.send((started, time.time()))


def bare_processes(iterations: int) -> float:
    """The machine's own ceiling: the same work in two bare processes (multiprocessing, none
    of ours), 20 members each; from the first start of work to the last end, measured inside
    them (their own start-up is not counted)."""
    context = multiprocessing.get_context("forkserver")
    pipes = [context.Pipe(duplex=False) for _ in range(WORKERS)]
    processes = [
        context.Process(target=_bare, args=(MEMBERS // WORKERS, iterations, sender))
        for _, sender in pipes
    ]
    for process in processes:
        process.start()
    spans = [receiver.recv() for receiver, _ in pipes]
    for process in processes:
        process.join()
    return max(end for _, end in spans) - min(start for start, _ in spans)


async def bare_ray(ray: Any, iterations: int) -> float:
    """Ray's own cost: the same work as bare Ray tasks (none of ours), two lanes of 20
    sequential tasks (what max_workers=2 does)."""
    task = ray.remote(num_cpus=1, max_retries=0)(_work)

    async def lane() -> None:
        for _ in range(MEMBERS // WORKERS):
            await task.remote(iterations)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(WORKERS)))
    return time.perf_counter() - started


@functools.cache
def _bare_actor_class(ray: Any) -> Any:
    class Bare:
        def work(self, iterations: int) -> int:
            return _work(iterations)

    return ray.remote(num_cpus=1)(Bare)


async def bare_ray_actors(ray: Any, iterations: int) -> float:
    """The same with two bare Ray actors (none of ours), 20 sequential calls each; the actors
    are made and warmed first (not timed), and killed after (their CPUs back to Ray)."""
    actors = [_bare_actor_class(ray).remote() for _ in range(WORKERS)]
    await asyncio.gather(*(actor.work.remote(1) for actor in actors))

    async def lane(actor: Any) -> None:
        for _ in range(MEMBERS // WORKERS):
            await actor.work.remote(iterations)

    started = time.perf_counter()
    await asyncio.gather(*(lane(actor) for actor in actors))
    wall = time.perf_counter() - started
    for actor in actors:
        ray.kill(actor)
    await asyncio.sleep(0.2)  # (their CPUs back to Ray before the next case)
    return wall


async def run_group(
    state: ExecutionState, members: list[Any], executor: Any, workers: int = WORKERS
) -> float:
    started = time.perf_counter()
    results = await state.parallel_execute(members, max_workers=workers, executor=executor)
    wall = time.perf_counter() - started
    failed = [r.error for r in results if not r.ok]
    assert not failed, failed[:3]
    return wall


async def main() -> None:
    import ray

    iterations = calibrate()
    print(f"{MEMBERS} members of {WORK_MS:.0f} ms ({iterations:,} iterations), W={WORKERS}")
    # Members that hold the event loop are the point here: no warning about them.
    warnings.simplefilter("ignore", RHAgentsWarning)
    state = ExecutionState()

    started = time.perf_counter()
    pool = ProcessExecutor(max_processes=2)
    pool.start()
    await run_group(state, [functools.partial(cpu_member, 1) for _ in range(4)], pool)
    pool_start = time.perf_counter() - started

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    on_ray = RayExecutor()  # members on a pool of actors (the default)
    on_tasks = RayExecutor(actors=False)  # one Ray task per member
    for _ in range(3):  # Ray starts its workers as tasks come
        await run_group(state, [functools.partial(cpu_member, 1) for _ in range(4)], on_tasks)
    await run_group(state, [functools.partial(cpu_member, 1) for _ in range(4)], on_ray)
    on_ray.release()
    ray_start = time.perf_counter() - started

    async def warm_actors() -> None:
        # The pool's actors hold a CPU each while they live, so they are released after
        # their case (for the task cases) and made again before it, not timed.
        await run_group(state, [functools.partial(cpu_member, 1) for _ in range(4)], on_ray)

    async def release_actors() -> None:
        on_ray.release()
        await asyncio.sleep(0.2)  # (their CPUs back to Ray before the next case)

    threaded = ExecutionEvent(actor=Tool(name="cpu", input_model=Work, handler=cpu_handler))
    cases: dict[str, tuple[Callable[[], list[Any]], Any]] = {
        "event loop": (lambda: [cpu_member_async(iterations) for _ in range(MEMBERS)], None),
        "threads (a plain-def handler)": (
            lambda: [threaded(Work(iterations=iterations), "", state) for _ in range(MEMBERS)],
            None,
        ),
        "processes": (
            lambda: [functools.partial(cpu_member, iterations) for _ in range(MEMBERS)],
            pool,
        ),
        "ray (tasks: actors=False)": (
            lambda: [functools.partial(cpu_member, iterations) for _ in range(MEMBERS)],
            on_tasks,
        ),
        "ray (actors, the default)": (
            lambda: [functools.partial(cpu_member, iterations) for _ in range(MEMBERS)],
            on_ray,
        ),
    }
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for label, (members, executor) in cases.items():
            if executor is on_ray:
                await warm_actors()
            wall = await run_group(state, members(), executor)
            best[label] = min(best.get(label, wall), wall)
            if executor is on_ray:
                await release_actors()
        for label, wall in (
            ("two bare processes", bare_processes(iterations)),
            ("bare Ray tasks", await bare_ray(ray, iterations)),
            ("bare Ray actors", await bare_ray_actors(ray, iterations)),
        ):
            best[label] = min(best.get(label, wall), wall)

    loop_wall = best["event loop"]
    ideal = MEMBERS * WORK_MS / 1000 / WORKERS
    print()
    print("| where | wall (best of 5) | speed-up vs the loop | target | |")
    print("| --- | --- | --- | --- | --- |")
    for label, wall in best.items():
        speedup = loop_wall / wall
        if label in ("processes", "ray (tasks: actors=False)", "ray (actors, the default)"):
            verdict = "ok" if speedup >= TARGET else "missed"
            print(f"| {label} | {wall:.2f} s | {speedup:.2f}x | >= {TARGET}x | {verdict} |")
        elif label == "two bare processes":
            print(f"| {label} (the machine's ceiling) | {wall:.2f} s | {speedup:.2f}x | | |")
        elif label.startswith("bare Ray"):
            print(f"| {label} (Ray's own ceiling) | {wall:.2f} s | {speedup:.2f}x | | |")
        else:
            print(f"| {label} | {wall:.2f} s | {speedup:.2f}x | (context) | |")
    print(
        f"\n(ideal on 2 workers: {ideal:.2f} s; starting the pool took {pool_start:.2f} s, "
        f"starting Ray and its workers {ray_start:.2f} s: once each, not in the figures)"
    )

    zero: dict[str, float] = {}
    for _ in range(ROUNDS):
        for label, (members, executor) in {
            "event loop": (lambda: [nothing_async() for _ in range(ZERO)], None),
            "processes": (lambda: [nothing for _ in range(ZERO)], pool),
            "ray (tasks)": (lambda: [nothing for _ in range(ZERO)], on_tasks),
            "ray (actors)": (lambda: [nothing for _ in range(ZERO)], on_ray),
        }.items():
            if executor is on_ray:
                await warm_actors()
            wall = await run_group(state, members(), executor)
            zero[label] = min(zero.get(label, wall), wall / ZERO)
            if executor is on_ray:
                await release_actors()
    print(f"\n{ZERO} zero-work members, W={WORKERS}: wall time per member (best of {ROUNDS})")
    print()
    print("| where | per member |")
    print("| --- | --- |")
    for label, per in zero.items():
        print(f"| {label} | {per * 1e6:,.0f} us |")

    pool.close()
    ray.shutdown()
    print(
        f"\n(load average at the end: {os.getloadavg()[0]:.2f}: other work on the machine "
        "takes cores from the parallel cases, not from the loop)"
    )


if __name__ == "__main__":
    asyncio.run(main())
