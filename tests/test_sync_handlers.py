"""Plain-def handlers: run in a worker thread, with the records, retries, limits, timeouts and
addresses of an async handler, the caller's context variables, and a bounded thread count."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from conftest import Recorder
from parallel_support import until
from rh_agents.core.actors import Tool, tool
from rh_agents.core.bus import EventBus
from rh_agents.core.context import current_frame
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventRetrying, EventStarted
from rh_agents.core.results import ResultStatus
from rh_agents.errors import ConfigurationError
from rh_agents.recovery import ActorCache
from rh_agents.resilience import RetryPolicy


class Item(BaseModel):
    n: int = 0


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


@tool
def double(input: Item, context: str, state: ExecutionState) -> int:
    """Twice n, in a worker thread."""
    return input.n * 2


@tool(name="double")
async def double_async(input: Item, context: str, state: ExecutionState) -> int:
    return input.n * 2


class Peak:
    """Counts the calls running at once, measured inside them (threads included)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            self.now -= 1


def recorded_state(recorder: Recorder, **options: Any) -> ExecutionState:
    bus = EventBus()
    bus.subscribe(recorder)
    return ExecutionState(event_bus=bus, **options)


async def test_a_plain_handler_runs_in_a_worker_thread_and_gives_its_value() -> None:
    seen: list[int] = []

    def where(input: Item, context: str, state: ExecutionState) -> str:
        seen.append(threading.get_ident())
        return f"{context}:{input.n}"

    async with ExecutionState() as state:
        result = await ExecutionEvent(actor=Tool(name="where", input_model=Item, handler=where))(
            Item(n=3), "ctx", state
        )
    assert result.ok and result.result == "ctx:3"
    assert seen and seen[0] != threading.get_ident()


async def test_records_and_addresses_are_those_of_an_async_handler() -> None:
    def shape(records: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (
                r.kind,
                r.address,
                r.group_id,
                r.parallel_index,
                r.is_parallel,
                getattr(r, "detail", ""),
            )
            for r in records
            if r.kind.startswith("event.")
        ]

    shapes = []
    for actor in (double, double_async):
        recorder = Recorder()
        async with recorded_state(recorder) as state:
            event = ExecutionEvent(actor=actor)
            await event(Item(n=1), "", state)
            async with state.parallel(max_workers=2, name="docs") as p:
                for n in range(3):
                    p.add(event(Item(n=n), "", state))
                results = await p.gather()
        assert [r.result for r in results] == [0, 2, 4]
        assert [r.address for r in results] == [f"docs[{n}]::double" for n in range(3)]
        shapes.append(shape(recorder.records))
    # Member by member the same records in the same order (threads interleave the members).
    assert sorted(shapes[0], key=lambda r: r[1]) == sorted(shapes[1], key=lambda r: r[1])
    assert ("event.completed", "docs[2]::double", "docs", 2, True, "4") in shapes[0]


async def test_the_thread_sees_the_callers_context_and_frame() -> None:
    seen: dict[str, str] = {}

    def look(input: Item, context: str, state: ExecutionState) -> None:
        seen["request"] = request_id.get()
        seen["address"] = current_frame(state).address

    looker = ExecutionEvent(actor=Tool(name="look", input_model=Item, handler=look))
    request_id.set("r-42")
    async with ExecutionState() as state, state.parallel(name="g") as p:
        p.add(looker(Item(), "", state))
    assert seen == {"request": "r-42", "address": "g[0]::look"}


async def test_the_event_loop_goes_on_while_the_handler_blocks() -> None:
    ticks = 0

    def slow(input: Item, context: str, state: ExecutionState) -> str:
        time.sleep(0.3)
        return "done"

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async with ExecutionState() as state:
        task = asyncio.create_task(ticker())
        result = await ExecutionEvent(actor=Tool(name="slow", input_model=Item, handler=slow))(
            Item(), "", state
        )
        task.cancel()
    assert result.result == "done"
    assert ticks >= 10  # the loop ran all along


async def test_retries_run_the_handler_again_in_a_thread() -> None:
    calls: list[int] = []

    def flaky(input: Item, context: str, state: ExecutionState) -> int:
        calls.append(threading.get_ident())
        if len(calls) < 3:
            raise ValueError("transient")
        return len(calls)

    recorder = Recorder()
    actor = Tool(
        name="flaky",
        input_model=Item,
        handler=flaky,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0),
    )
    async with recorded_state(recorder) as state, state.parallel(name="g") as p:
        p.add(ExecutionEvent(actor=actor)(Item(), "", state))
        (result,) = await p.gather()
    assert result.ok and result.result == 3 and result.attempts == 3
    assert all(ident != threading.get_ident() for ident in calls)
    retries = [r for r in recorder.records if isinstance(r, EventRetrying)]
    assert [(r.address, r.attempt) for r in retries] == [("g[0]::flaky", 1), ("g[0]::flaky", 2)]


async def test_a_timed_out_call_is_abandoned_and_reported_timed_out() -> None:
    release = threading.Event()
    finished = threading.Event()

    def stuck(input: Item, context: str, state: ExecutionState) -> str:
        release.wait(5)
        finished.set()
        return "late"

    actor = Tool(name="stuck", input_model=Item, handler=stuck)
    async with ExecutionState() as state:
        started = time.perf_counter()
        result = await ExecutionEvent(actor=actor, timeout=0.1)(Item(), "", state)
        waited = time.perf_counter() - started
        async with state.parallel(member_timeout=0.1) as p:
            p.add(ExecutionEvent(actor=actor)(Item(), "", state))
            (member,) = await p.gather()
        # The threads cannot be killed: they go on in the background until the handler ends.
        assert not finished.is_set()
        release.set()
    assert result.status is ResultStatus.TIMED_OUT and "timed out after 0.1s" in (
        result.error or ""
    )
    assert waited < 1
    assert member.status is ResultStatus.TIMED_OUT
    assert await asyncio.to_thread(finished.wait, 5)


async def test_max_threads_bounds_the_handlers_running_at_once() -> None:
    peak = Peak()

    def busy(input: Item, context: str, state: ExecutionState) -> int:
        with peak:
            time.sleep(0.03)
        return input.n

    event = ExecutionEvent(actor=Tool(name="busy", input_model=Item, handler=busy))
    async with ExecutionState(max_threads=2) as state:
        assert state.threads.limit == 2
        results = await state.parallel_execute(
            [event(Item(n=n), "", state) for n in range(8)], max_workers=8
        )
    assert [r.result for r in results] == list(range(8))
    assert peak.peak == 2


async def test_the_group_limit_bounds_sync_members_too() -> None:
    peak = Peak()

    def busy(input: Item, context: str, state: ExecutionState) -> int:
        with peak:
            time.sleep(0.02)
        return input.n

    event = ExecutionEvent(actor=Tool(name="busy", input_model=Item, handler=busy))
    async with ExecutionState(global_max_workers=3) as state:
        results = await state.parallel_execute(
            [event(Item(n=n), "", state) for n in range(9)], max_workers=5
        )
    assert all(r.ok for r in results)
    assert peak.peak == 3


async def test_a_call_cancelled_while_it_waits_for_a_thread_never_runs() -> None:
    ran: list[int] = []
    release = threading.Event()

    def work(input: Item, context: str, state: ExecutionState) -> int:
        ran.append(input.n)
        release.wait(5)
        return input.n

    event = ExecutionEvent(actor=Tool(name="work", input_model=Item, handler=work))
    async with ExecutionState(max_threads=1) as state:
        async with state.parallel(max_workers=3, timeout=0.2) as p:
            for n in range(3):
                p.add(event(Item(n=n), "", state))
            results = await p.gather()
        release.set()
    assert not any(r.ok for r in results)
    await asyncio.sleep(0.05)
    assert ran == [0]  # the other two waited for the one thread, and were dropped


async def test_closing_right_after_the_calls_end_reports_no_abandoned_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A thread counted its call as running until after the loop had its outcome: a state
    # closed at once (the group done) warned of handlers "abandoned ... still running" that
    # had all completed (a few states in twenty).
    event = ExecutionEvent(actor=double)
    with caplog.at_level(logging.WARNING, logger="rh_agents"):
        for _ in range(30):
            async with ExecutionState(max_threads=4, watchdog=None) as state:
                results = await state.parallel_execute(
                    [event(Item(n=n), "", state) for n in range(20)], max_workers=8
                )
            assert all(r.ok for r in results)
    assert not [r for r in caplog.records if "abandoned" in r.getMessage()]


async def _in_wait_for(call: Any) -> Any:
    """A member awaiting its call through ``asyncio.wait_for`` (a task of its own on 3.11)."""
    return (await asyncio.wait_for(call, 30)).unwrap()


@pytest.mark.parametrize("layer", ["direct", "wait_for", "cached"])
@pytest.mark.parametrize("stop", ["fail_fast", "quorum"])
async def test_a_stop_drops_the_calls_waiting_for_the_thread_its_call_frees(
    stop: str, layer: str
) -> None:
    # With one thread, the call that stopped its group (a failure under FAIL_FAST, the
    # success reaching a quorum) freed the thread before the loop heard of it: the thread
    # took the next waiting call at once, which ran (side effects included) though its
    # member was then reported cancelled.
    ran: list[int] = []
    release = threading.Event()

    def write(input: Item, context: str, state: ExecutionState) -> int:
        ran.append(input.n)
        if input.n == 0:
            release.wait(10)
            if stop == "fail_fast":
                raise OSError("row 0 rejected")
        return input.n

    actor = Tool(name="write", input_model=Item, handler=write, cacheable=layer == "cached")
    event = ExecutionEvent(actor=actor)
    options: dict[str, Any] = (
        {"error_strategy": "fail_fast"} if stop == "fail_fast" else {"quorum": 1}
    )
    recorder = Recorder()
    cache = ActorCache() if layer == "cached" else None
    async with recorded_state(recorder, max_threads=1, cache=cache) as state:
        with contextlib.suppress(OSError):
            async with state.parallel(max_workers=5, name="rows", **options) as p:
                for n in range(5):
                    call = event(Item(n=n), "", state)
                    p.add(_in_wait_for(call) if layer == "wait_for" else call)
                # Every call made (the first holding the thread, the others waiting for it):
                # the first may end.
                await until(lambda: sum(isinstance(r, EventStarted) for r in recorder.records) == 5)
                await until(lambda: ran == [0])
                release.set()
        # A call made now runs once the thread has run whatever it was handed before.
        assert (await event(Item(n=99), "", state)).ok
    assert ran == [0, 99]
    assert p.statistics().cancelled == 4


async def test_a_plain_function_returning_a_coroutine_is_awaited() -> None:
    async def later(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    actor = Tool(name="wrap", input_model=Item, handler=lambda i, c, s: later(i.n))
    async with ExecutionState() as state:
        result = await ExecutionEvent(actor=actor)(Item(n=1), "", state)
    assert result.result == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_a_bad_max_threads_is_a_configuration_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_threads"):
        ExecutionState(max_threads=bad)


async def test_a_coroutine_returned_by_an_abandoned_handler_is_closed() -> None:
    # The thread returned its coroutine after the call had timed out: nobody awaited it, and
    # "coroutine was never awaited" came when it was collected.
    import gc
    import warnings

    gate = threading.Event()
    returned = threading.Event()
    made: list[Any] = []

    async def fetch(n: int) -> int:
        return n

    def handler(input: Item, context: str, state: Any) -> Any:
        gate.wait(5)
        made.append(fetch(input.n))
        returned.set()
        return made[-1]

    event = ExecutionEvent(actor=Tool(name="t", input_model=Item, handler=handler), timeout=0.02)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with ExecutionState(watchdog=None) as state:
            result = await event(Item(n=1), "", state)
            assert result.status.value == "timed_out"
            gate.set()
            await until(returned.is_set)
            await until(lambda: made[0].cr_frame is None)  # closed (by the thread's callback)
        made.clear()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_plain_handler_raising_stop_iteration_fails_instead_of_hanging() -> None:
    # next() on an empty iterator: asyncio cannot put a StopIteration into a future, so the
    # call never resolved and its group waited for ever.
    class Key(BaseModel):
        key: str

    def lookup(input: Key, context: str, state: ExecutionState) -> str:
        return next(iter([]))

    event = ExecutionEvent(actor=Tool(name="lookup", input_model=Key, handler=lookup))
    state = ExecutionState(watchdog=None)
    async with state.parallel(name="docs") as p:
        p.add(event(Key(key="a"), "", state))
    (result,) = await asyncio.wait_for(p.gather(), 10)
    assert result.status is ResultStatus.FAILED
    assert result.error == "RuntimeError: lookup raised StopIteration"
    assert isinstance(result.exception, RuntimeError)
    assert isinstance(result.exception.__cause__, StopIteration)
