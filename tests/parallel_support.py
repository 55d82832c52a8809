"""Helpers for the parallel tests: gates instead of sleeps, concurrency gauges, leak checks."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.execution import ExecutionState


class Doc(BaseModel):
    text: str


async def value(x: Any) -> Any:
    """A member that returns ``x`` at once."""
    return x


async def boom(message: str = "boom") -> None:
    """A member that fails with ``ValueError(message)``."""
    raise ValueError(message)


async def _echo(input: Doc, context: str, state: ExecutionState) -> str:
    if input.text.startswith("fail"):
        raise ValueError(f"cannot process {input.text}")
    return input.text.upper()


echo_tool = Tool(name="echo", description="Upper-cases a text", input_model=Doc, handler=_echo)


class Gauge:
    """Counts members running at once (per key), keeping the high-water mark."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.high: dict[str, int] = {}
        self.total_now = 0
        self.total_high = 0
        self.runs: dict[Any, int] = {}

    def enter(self, key: str = "", ident: Any = None) -> None:
        self.now[key] = self.now.get(key, 0) + 1
        self.high[key] = max(self.high.get(key, 0), self.now[key])
        self.total_now += 1
        self.total_high = max(self.total_high, self.total_now)
        if ident is not None:
            self.runs[ident] = self.runs.get(ident, 0) + 1

    def exit(self, key: str = "") -> None:
        self.now[key] -= 1
        self.total_now -= 1


async def steps(n: int) -> None:
    """Yield to the loop ``n`` times: a delay measured in scheduler steps, not seconds."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], limit: int = 10_000) -> None:
    """Let the event loop run until ``condition()`` holds, for at most ``limit`` steps."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"still not true after {limit} loop steps")


def closed(coro: Coroutine[Any, Any, Any]) -> bool:
    return inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def assert_no_leftover_tasks(before: set[asyncio.Task[Any]]) -> None:
    """No task outlives the group: only the tasks that existed before are alive."""
    gc.collect()
    alive = {t for t in asyncio.all_tasks() if not t.done()}
    assert alive == before, f"leftover tasks: {alive - before}"


def own_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


class Crowds:
    """Who works at once: ``work(name, seconds)`` spans a piece of work; ``seen`` is every
    crowd met as one began, ``most`` the largest (1: never two at once)."""

    def __init__(self) -> None:
        self.working: set[str] = set()
        self.seen: list[list[str]] = []

    async def work(self, name: str, seconds: float = 0.0) -> str:
        self.working.add(name)
        self.seen.append(sorted(self.working))
        try:
            await asyncio.sleep(seconds)
        finally:
            self.working.discard(name)
        return name

    @property
    def most(self) -> int:
        return max(map(len, self.seen), default=0)

    @property
    def overlapping(self) -> list[list[str]]:
        """The crowds of more than one."""
        return [crowd for crowd in self.seen if len(crowd) > 1]
