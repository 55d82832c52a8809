"""CPU-bound members: the same group on the event loop, then in a pool of processes.

    python examples/cpu_bound.py          # counts primes below 8 limits, twice

The handler is a plain ``def`` doing pure-Python work. On the event loop's side it runs in a
worker thread, and Python's one interpreter lock lets one thread compute at a time: the group
takes as long as its members one after another. With ``executor="processes"`` each member
runs in a worker process, so two cores run two members at once. The group is the same: the
same results in the same order, the same records with the same addresses. (On a machine busy
with other work, the processes get less of it: compare on a quiet one.)

A script that starts processes keeps its program under ``if __name__ == "__main__":`` (each
worker process imports this file, and must not run the program again). The actor's handler
and model are defined at the top level, so the workers find them by name.
"""

from __future__ import annotations

import asyncio
import sys
import time

from pydantic import BaseModel

from rh_agents import ExecutionEvent, ExecutionState, ProcessExecutor, Tool


class Limit(BaseModel):
    below: int


def count_primes(input: Limit, context: str, state: ExecutionState) -> int:
    """How many primes are below ``input.below`` (trial division: slow on purpose)."""
    count = 0
    for n in range(2, input.below):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


primes: ExecutionEvent[int] = ExecutionEvent(
    actor=Tool(name="primes", input_model=Limit, handler=count_primes)
)


async def main(limits: list[int]) -> dict[str, tuple[list[int], float]]:
    """The counts and the wall time, on the event loop's side and in processes."""
    runs: dict[str, tuple[list[int], float]] = {}
    # A pool of our own, started before the clock runs (starting it is a one-off);
    # executor="processes" would use the shared pool, started on first use.
    with ProcessExecutor(max_processes=2) as pool:
        pool.start()
        async with ExecutionState() as state:
            for where, executor in (("loop", None), ("processes", pool)):
                started = time.perf_counter()
                results = await state.parallel_execute(
                    [primes(Limit(below=n), "", state) for n in limits],
                    max_workers=2,
                    executor=executor,
                )
                runs[where] = ([r.unwrap() for r in results], time.perf_counter() - started)
    return runs


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    runs = asyncio.run(main([size + 1000 * k for k in range(8)]))
    for where, (counts, wall) in runs.items():
        print(f"{where:>9}: {wall:.2f} s  {counts}")
    assert runs["loop"][0] == runs["processes"][0]
