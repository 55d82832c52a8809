"""Members and actors for the executor tests: defined here, at the top level of a module the
worker processes (and Ray's workers) can import, which is what sending them by reference
needs. Each measures itself from inside (process id, wall-clock start and end), so a test
can tell where and when it ran whatever the executor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.resilience import RetryPolicy


class Item(BaseModel):
    n: int = 0
    ms: float = 0.0
    path: str = ""


class Span(BaseModel):
    """Where and when one member ran: its process, and its wall-clock start and end."""

    n: int
    pid: int
    start: float
    end: float


def spin(ms: float) -> None:
    """Pure-Python work for about ``ms`` milliseconds (holds the GIL all along)."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        sum(range(100))


def span(n: int, ms: float = 0.0, sleep: float = 0.0) -> Span:
    """A callable member: spin ``ms``, sleep ``sleep`` seconds, report itself."""
    start = time.time()
    spin(ms)
    if sleep:
        time.sleep(sleep)
    return Span(n=n, pid=os.getpid(), start=start, end=time.time())


def peak(spans: list[Span]) -> int:
    """The most spans running at one instant (from their own clocks)."""
    edges = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def fails(message: str, after: float = 0.0) -> None:
    time.sleep(after)
    raise ValueError(message)


def waits_for(path: str, fail: bool) -> str:
    """Waits (at most 30 s) for the file ``path``, then fails (``ValueError``) or returns."""
    deadline = time.monotonic() + 30
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    if fail:
        raise ValueError("the first one failed")
    return "done"


def dies() -> None:
    os._exit(3)


def kills_itself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def dies_leaving_a_helper(path: str) -> None:
    """Starts a process of its own (forked: it holds the worker's pipe open), writes that
    process's pid to ``path`` and dies."""
    import multiprocessing

    helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    helper.start()
    Path(f"{path}.tmp").write_text(str(helper.pid))
    os.replace(f"{path}.tmp", path)
    os._exit(3)


def flaky(path: str, failures: int) -> int:
    """Fails ``failures`` times (counted in a file: each attempt is a new request), then
    returns how many attempts it took."""
    counter = Path(path)
    attempts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempts))
    if attempts <= failures:
        raise ConnectionError(f"attempt {attempts} fails")
    return attempts


def sleep_then_touch(path: str, seconds: float) -> str:
    """Writes its pid to ``path.pid``, sleeps, then writes ``path``: a cancelled run never
    writes ``path``."""
    # Written whole or not at all (a file then renamed): a worker killed while writing it
    # left an empty file, which a test read as a pid.
    Path(f"{path}.pid.tmp").write_text(str(os.getpid()))
    os.replace(f"{path}.pid.tmp", f"{path}.pid")
    time.sleep(seconds)
    Path(path).write_text("finished")
    return "finished"


async def async_span(n: int) -> Span:
    start = time.time()
    await asyncio.sleep(0.01)
    return Span(n=n, pid=os.getpid(), start=start, end=time.time())


# --- actors -------------------------------------------------------------------------------


def double(input: Item, context: str, state: ExecutionState) -> int:
    spin(input.ms)
    return input.n * 2


def spanned(input: Item, context: str, state: ExecutionState) -> Span:
    return span(input.n, input.ms)


def double_or_fail(input: Item, context: str, state: ExecutionState) -> int:
    """Fails while the file ``input.path`` exists."""
    if input.path and Path(input.path).exists():
        raise RuntimeError(f"member {input.n} fails this time")
    return input.n * 2


def flaky_handler(input: Item, context: str, state: ExecutionState) -> int:
    """``flaky`` as a handler: fails ``input.n`` times, counted in the file ``input.path``."""
    return flaky(input.path, input.n)


double_tool = Tool(name="double", input_model=Item, handler=double)
span_tool = Tool(name="span", input_model=Item, handler=spanned)
fragile_tool = Tool(name="fragile", input_model=Item, handler=double_or_fail)
cached_span_tool = Tool(name="cached_span", input_model=Item, handler=spanned, cacheable=True)
flaky_tool = Tool(
    name="flaky",
    input_model=Item,
    handler=flaky_handler,
    retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0),
)


async def orchestrate(input: Item, context: str, state: ExecutionState) -> list[int]:
    """Calls an event twice and opens a group of its own: records at every depth."""
    double_event = ExecutionEvent(actor=double_tool)
    first = await double_event(Item(n=input.n), "", state)
    second = await double_event(Item(n=input.n + 1), "", state)
    async with state.parallel(max_workers=2, name="inner") as p:
        for k in range(2):
            p.add(double_event(Item(n=k), "", state))
        inner = await p.gather()
    return [first.unwrap(), second.unwrap(), *(r.unwrap() for r in inner)]


orchestrator = Tool(name="orchestrator", input_model=Item, handler=orchestrate)


async def with_state(n: int, state: ExecutionState) -> int:
    """A callable member sent with the state: what it calls is recorded at its address."""
    result = await ExecutionEvent(actor=double_tool)(Item(n=n), "", state)
    return int(result.unwrap())


def record_shape(record: Any) -> tuple[Any, ...]:
    return (record.kind, record.address, record.group_id, record.parallel_index, record.is_parallel)


class TwoPartError(Exception):
    """Pickles (its args), but cannot be made again from them: ``__init__`` takes two."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


async def calls_then_returns_unrebuildable(n: int, state: ExecutionState) -> list[Any]:
    """Calls an event (its record and call come home), then returns what the driver cannot
    rebuild."""
    await ExecutionEvent(actor=double_tool)(Item(n=n), "", state)
    return [TwoPartError("E1", "broken")]


async def maps_inside(state: ExecutionState) -> int:
    """A callable member whose calls run in a group that keeps no results (parallel_map)."""
    done = 0
    event = ExecutionEvent(actor=double_tool)
    items = [Item(n=n) for n in range(3)]
    async for result in state.parallel_map(event, items, max_workers=2, name="inner"):
        done += result.ok
    return done


def starts_and_leaves(path: str) -> int:
    """Starts a process that would run for a minute, and returns at once (leaving it)."""
    helper = subprocess.Popen(["sleep", "60"])
    Path(path).write_text(str(helper.pid))
    return helper.pid
