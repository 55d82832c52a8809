"""The four ways to read a group's results: a list, a dict by name, a stream, as_completed.

Run with ``.venv/bin/python examples/results_four_ways.py``.
"""

from __future__ import annotations

import asyncio

from rh_agents.core.execution import ExecutionState


async def fetch(name: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return f"{name} done"


async def main() -> dict[str, object]:
    state = ExecutionState()
    seen: dict[str, object] = {}

    # A list in submission order, gathered automatically when the block ends.
    async with state.parallel(max_workers=3) as p:
        p.add(fetch("a", 0.03))
        p.add(lambda: fetch("b", 0.01), name="b")  # a zero-argument callable can be retried
        p.add("c", fetch("c", 0.02))  # or the name first
    seen["list"] = [r.result for r in await p.gather()]  # the same results after the block
    seen["dict"] = {k: r.result for k, r in (await p.gather_dict()).items()}

    # A stream in completion order.
    async with state.parallel(max_workers=3, name="streamed") as p:
        for i, delay in enumerate((0.03, 0.01, 0.02)):
            p.add(fetch(f"s{i}", delay))
        seen["stream"] = [r.result async for r in p.stream()]

    # as_completed with metadata, the members given to it directly (it adds them first).
    async with state.parallel(max_workers=2, name="meta") as p:
        seen["as_completed"] = [
            (r.index, r.event_id) async for r in p.as_completed([fetch("x", 0.02), fetch("y", 0)])
        ]

    # The one-liner.
    named = await state.parallel_execute({"left": fetch("l", 0), "right": fetch("r", 0)})
    seen["parallel_execute"] = {k: r.result for k, r in named.items()}
    return seen


if __name__ == "__main__":
    for way, value in asyncio.run(main()).items():
        print(f"{way:17} {value}")
