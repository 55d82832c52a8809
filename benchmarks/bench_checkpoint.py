"""Checkpoint cost: a 10,000-member group with SQLite checkpointing against the same group
without it, measured side by side in one process (rounds alternate; medians compared). Each
round writes a fresh database file; the time includes opening, every write and the close
(which folds the write-ahead log back into the database).

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
ROUNDS = 9


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


async def _group(state: ExecutionState) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` for the whole group, close included."""
    started, cpu = time.perf_counter(), time.process_time()
    async with state, state.parallel(max_workers=WORKERS, name="members") as p:
        for i in range(MEMBERS):
            p.add(EVENT(Item(i=i), "", state))
        results = await p.gather()
    elapsed = time.perf_counter() - started, time.process_time() - cpu
    assert all(r.ok for r in results)
    return elapsed


def _plain(tmp: Path, n: int) -> ExecutionState:
    return ExecutionState()


def _batched(tmp: Path, n: int) -> ExecutionState:
    policy = CheckpointPolicy.batched(count=500, seconds=1.0)
    return ExecutionState(run_id=f"b{n}", recovery=Recovery(tmp / f"b{n}.db", checkpoint=policy))


def _every(tmp: Path, n: int) -> ExecutionState:
    return ExecutionState(run_id=f"e{n}", recovery=Recovery(tmp / f"e{n}.db"))


MODES: list[tuple[str, Callable[[Path, int], ExecutionState]]] = [
    ("no checkpoints", _plain),
    ("SQLite, batched (500 / 1 s)", _batched),
    ("SQLite, every event", _every),
]


def paired(times: list[float], base: list[float]) -> float:
    """Median of the per-round ratios: each round's modes ran back to back, so a slow spell
    of a shared machine hits both sides of a ratio."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def main() -> None:
    wall: dict[str, list[float]] = {name: [] for name, _ in MODES}
    cpu: dict[str, list[float]] = {name: [] for name, _ in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(ROUNDS):
            for name, make in MODES:  # alternate so that drift hits every mode alike
                w, c = asyncio.run(_group(make(Path(tmp), n)))
                wall[name].append(w)
                cpu[name].append(c)
    base = MODES[0][0]
    base_wall = statistics.median(wall[base])
    base_cpu = statistics.median(cpu[base])
    print(f"{MEMBERS} ExecutionEvent members, max_workers={WORKERS}, {ROUNDS} rounds per mode")
    print(
        "| mode                        | wall median s | µs/member | ratio (median) "
        "| ratio (paired) | ratio (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, _ in MODES:
        median = statistics.median(wall[name])
        print(
            f"| {name:<27} | {median:>13.3f} | {median / MEMBERS * 1e6:>9.1f} "
            f"| {median / base_wall:>14.2f} | {paired(wall[name], wall[base]):>14.2f} "
            f"| {statistics.median(cpu[name]) / base_cpu:>11.2f} |"
        )


if __name__ == "__main__":
    main()
