"""Checkpoint cost: a 10,000-member group with SQLite checkpointing against the same group
without it, measured side by side in one process (rounds alternate; medians compared).

Run: ``.venv/bin/python -m benchmarks.bench_checkpoint``
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery import CheckpointPolicy, Recovery

MEMBERS = 10_000
WORKERS = 50
ROUNDS = 5


class Item(BaseModel):
    i: int


class Square(BaseModel):
    i: int
    square: int


async def _square(item: Item, context: str, state: ExecutionState) -> Square:
    return Square(i=item.i, square=item.i * item.i)


EVENT: ExecutionEvent[Square] = ExecutionEvent(
    actor=Tool(name="square", input_model=Item, output_model=Square, handler=_square)
)


async def _group(state: ExecutionState) -> float:
    started = time.perf_counter()
    async with state, state.parallel(max_workers=WORKERS, name="members") as p:
        for i in range(MEMBERS):
            p.add(EVENT(Item(i=i), "", state))
        results = await p.gather()
    elapsed = time.perf_counter() - started
    assert all(r.ok for r in results)
    return elapsed


def _plain(tmp: Path, n: int) -> ExecutionState:
    return ExecutionState()


def _batched(tmp: Path, n: int) -> ExecutionState:
    policy = CheckpointPolicy.batched(count=500, seconds=1.0)
    return ExecutionState(run_id=f"b{n}", recovery=Recovery(tmp / "state.db", checkpoint=policy))


def _every(tmp: Path, n: int) -> ExecutionState:
    return ExecutionState(run_id=f"e{n}", recovery=Recovery(tmp / "state.db"))


MODES: list[tuple[str, Callable[[Path, int], ExecutionState]]] = [
    ("no checkpoints", _plain),
    ("SQLite, batched (500 / 1 s)", _batched),
    ("SQLite, every event", _every),
]


def main() -> None:
    times: dict[str, list[float]] = {name: [] for name, _ in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(ROUNDS):
            for name, make in MODES:  # alternate so that drift hits every mode alike
                times[name].append(asyncio.run(_group(make(Path(tmp), n))))
    base = statistics.median(times[MODES[0][0]])
    print(f"{MEMBERS} ExecutionEvent members, max_workers={WORKERS}, median of {ROUNDS} rounds")
    print(f"| {'mode':<28} | {'median s':>8} | {'µs/member':>9} | {'ratio':>5} |")
    print(f"|{'-' * 30}|{'-' * 10}:|{'-' * 10}:|{'-' * 6}:|")
    for name, _ in MODES:
        median = statistics.median(times[name])
        print(
            f"| {name:<28} | {median:>8.3f} | {median / MEMBERS * 1e6:>9.1f} | "
            f"{median / base:>5.2f} |"
        )


if __name__ == "__main__":
    main()
