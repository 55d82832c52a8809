"""Stream a large (here: endless-looking) input through a group in bounded memory.

Items are pulled only as workers free up, so the input never sits in memory.
Run with ``.venv/bin/python examples/lazy_map.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from rh_agents.core.execution import ExecutionState


def numbers(limit: int) -> Iterator[int]:
    yield from range(limit)


async def square(n: int) -> int:
    await asyncio.sleep(0)
    return n * n


async def main(limit: int = 100_000) -> int:
    state = ExecutionState()
    total = 0
    results = state.parallel_map(square, numbers(limit), max_workers=100)
    async with contextlib.aclosing(results):
        async for result in results:
            total += result.result
    return total


if __name__ == "__main__":
    print(asyncio.run(main()))
