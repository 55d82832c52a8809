"""Shared pieces of the recovery tests: a squaring tool with gates and call counts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ExecutionResult
from rh_agents.recovery import JSONBackend, SQLiteBackend, StateBackend


class Item(BaseModel):
    i: int


class Square(BaseModel):
    i: int
    square: int


def make_backend(kind: str, tmp: Path) -> StateBackend:
    return SQLiteBackend(tmp / "state.db") if kind == "sqlite" else JSONBackend(tmp / "runs")


class Squarer:
    """A tool whose calls are counted; ``fail`` makes some indices raise, ``gates`` hold them."""

    def __init__(
        self,
        fail: Iterable[int] = (),
        gates: dict[int, asyncio.Event] | None = None,
        version: str = "1",
        cacheable: bool = False,
    ) -> None:
        self.calls: Counter[int] = Counter()
        self.fail = set(fail)
        self.gates = gates
        self.tool = Tool(
            name="square",
            input_model=Item,
            output_model=Square,
            handler=self.handle,
            version=version,
            cacheable=cacheable,
        )
        self.event: ExecutionEvent[Square] = ExecutionEvent(actor=self.tool)

    async def handle(self, item: Item, context: str, state: ExecutionState) -> Square:
        if self.gates is not None:
            await self.gates[item.i].wait()
        self.calls[item.i] += 1
        if item.i in self.fail:
            raise RuntimeError(f"member {item.i} failed")
        return Square(i=item.i, square=item.i * item.i)


async def run_group(
    state: ExecutionState, squarer: Squarer, n: int, done: dict[int, asyncio.Event] | None = None
) -> list[ExecutionResult[Any]]:
    async def member(i: int) -> ExecutionResult[Square]:
        result = await squarer.event(Item(i=i), "", state)
        if done is not None:
            done[i].set()
        return result

    async with state.parallel(max_workers=n, name="members") as p:
        for i in range(n):
            p.add(member(i))
        return await p.gather()


class StoreLocker:
    """Another process holding the database with BEGIN EXCLUSIVE until ``release()``
    (see store_locker.py)."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "store_locker.py"), str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@contextmanager
def locked(db: Path) -> Iterator[StoreLocker]:
    """The database held by another process for the block (killed at the end)."""
    locker = StoreLocker(db)
    try:
        yield locker
    finally:
        locker.kill()


class Ticker:
    """A task that wakes every ``period`` seconds and keeps the longest gap between wakes."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.longest = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.period)
            now = loop.time()
            self.longest = max(self.longest, now - last - self.period)
            self.ticks += 1
            last = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
