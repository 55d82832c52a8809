"""The actor cache: single flight for identical concurrent calls, versions, persistence."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from parallel_support import until
from recovery_support import Item, Square, Squarer
from rh_agents import ExecutionEvent, Tool
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import ParallelTimeoutError
from rh_agents.recovery import ActorCache, SQLiteCacheStore, cache_key


async def _until(condition: object) -> None:
    """Yield to the loop until ``condition()`` holds (no wall-clock waits)."""
    for _ in range(10_000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_fifty_identical_concurrent_calls_run_the_handler_once() -> None:
    gate = asyncio.Event()
    squarer = Squarer(gates={7: gate}, cacheable=True)
    cache = ActorCache()
    state = ExecutionState(cache=cache)

    async def group() -> list[object]:
        async with state.parallel(max_workers=50, name="same") as p:
            for _ in range(50):
                p.add(squarer.event(Item(i=7), "", state))
            return [r.unwrap() for r in await p.gather()]

    task = asyncio.create_task(group())
    await _until(lambda: cache.joined == 49)
    assert squarer.calls[7] == 0  # everybody waits on the one running call
    gate.set()
    values = await task
    assert values == [Square(i=7, square=49)] * 50
    assert squarer.calls[7] == 1
    assert (cache.misses, cache.joined, cache.hits) == (1, 49, 0)

    again = await squarer.event(Item(i=7), "", state)
    assert again.source == "cache" and again.unwrap() == Square(i=7, square=49)
    assert squarer.calls[7] == 1 and cache.hits == 1

    newer = Squarer(version="2", cacheable=True)
    await newer.event(Item(i=7), "", state)
    assert newer.calls[7] == 1  # a new version misses


async def test_different_inputs_have_independent_keys() -> None:
    squarer = Squarer(cacheable=True)
    state = ExecutionState(cache=ActorCache())
    results = await state.parallel_execute([squarer.event(Item(i=i), "", state) for i in range(6)])
    assert [r.unwrap().square for r in results] == [i * i for i in range(6)]
    assert dict(squarer.calls) == {i: 1 for i in range(6)}
    assert cache_key(squarer.tool, Item(i=1)) != cache_key(squarer.tool, Item(i=2))


async def test_a_cancelled_waiter_does_not_cancel_the_call_for_the_others() -> None:
    gate = asyncio.Event()
    squarer = Squarer(gates={3: gate}, cacheable=True)
    cache = ActorCache()
    state = ExecutionState(cache=cache)
    starter = asyncio.create_task(squarer.event(Item(i=3), "", state))
    await _until(lambda: cache.misses == 1)
    follower = asyncio.create_task(squarer.event(Item(i=3), "", state))
    await _until(lambda: cache.joined == 1)
    starter.cancel()  # the caller that started the shared call goes away
    with pytest.raises(asyncio.CancelledError):
        await starter
    gate.set()
    result = await follower
    assert result.unwrap() == Square(i=3, square=9)
    assert squarer.calls[3] == 1


async def test_the_call_is_cancelled_when_its_last_waiter_leaves() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handle(item: Item, context: str, state: ExecutionState) -> Square:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    squarer = Squarer(cacheable=True)
    squarer.tool = squarer.tool.model_copy(update={"handler": handle})
    squarer.event = squarer.event.model_copy(update={"actor": squarer.tool})
    state = ExecutionState(cache=ActorCache())
    caller = asyncio.create_task(squarer.event(Item(i=1), "", state))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await cancelled.wait()


async def test_failures_are_shared_but_never_cached() -> None:
    gate = asyncio.Event()
    squarer = Squarer(fail={5}, gates={5: gate}, cacheable=True)
    cache = ActorCache()
    state = ExecutionState(cache=cache)
    calls = [asyncio.create_task(squarer.event(Item(i=5), "", state)) for _ in range(3)]
    await _until(lambda: cache.joined == 2)
    gate.set()
    results = await asyncio.gather(*calls)
    assert [r.ok for r in results] == [False] * 3
    assert all("member 5 failed" in (r.error or "") for r in results)
    assert squarer.calls[5] == 1
    await squarer.event(Item(i=5), "", state)
    assert squarer.calls[5] == 2  # the failure was not stored


async def test_sqlite_cache_survives_a_new_cache_and_types_results(tmp_path: Path) -> None:
    store = SQLiteCacheStore(tmp_path / "cache.db")
    first = Squarer(cacheable=True)
    await first.event(Item(i=4), "", ExecutionState(cache=ActorCache(store)))
    store.close()

    store = SQLiteCacheStore(tmp_path / "cache.db")
    second = Squarer(cacheable=True)
    result = await second.event(Item(i=4), "", ExecutionState(cache=ActorCache(store)))
    store.close()
    assert result.source == "cache"
    assert result.result == Square(i=4, square=16)
    assert not second.calls


async def test_non_cacheable_actors_ignore_the_cache() -> None:
    squarer = Squarer()
    state = ExecutionState(cache=ActorCache())
    await squarer.event(Item(i=1), "", state)
    await squarer.event(Item(i=1), "", state)
    assert squarer.calls[1] == 2


async def test_aclose_cancels_running_calls() -> None:
    squarer = Squarer(gates={1: asyncio.Event()}, cacheable=True)
    cache = ActorCache()
    state = ExecutionState(cache=cache)
    caller = asyncio.create_task(squarer.event(Item(i=1), "", state))
    await _until(lambda: cache.misses == 1)
    await cache.aclose()
    result = await caller
    assert not result.ok
    assert "cache was closed" in (result.error or "")


async def test_a_call_made_while_an_abandoned_one_ends_runs_afresh() -> None:
    # The last caller of a call leaves (cancelled: its timeout, its group's stop); the call
    # is cancelled, but ending takes it a while (a handler's cleanup). A new identical call
    # made meanwhile must run afresh, not join the ending call and fail with it.
    cleanup_done = asyncio.Event()
    entered = asyncio.Event()
    runs: list[int] = []

    class Question(BaseModel):
        q: str

    async def answer(question: Question, context: str, state: ExecutionState) -> str:
        runs.append(len(runs) + 1)
        this_run = runs[-1]
        entered.set()
        try:
            if this_run == 1:
                await asyncio.Event().wait()  # until cancelled
            return f"answer to {question.q}"
        finally:
            if this_run == 1:
                await cleanup_done.wait()  # closing a connection, say

    ask = ExecutionEvent(
        actor=Tool(name="ask", input_model=Question, handler=answer, cacheable=True)
    )
    cache = ActorCache()
    state = ExecutionState(cache=cache)
    first = asyncio.create_task(ask(Question(q="same"), "", state))
    await entered.wait()
    first.cancel()
    await _until(lambda: cache._leaving)  # the call is cancelled, and still ending

    again = await ask(Question(q="same"), "", state)
    assert (again.ok, again.result, again.source) == (True, "answer to same", "run")
    assert runs == [1, 2]

    cleanup_done.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    await cache.aclose()
    assert not cache._leaving and not cache._flights


async def test_a_cached_call_cancelled_with_its_group_ends_before_the_block_is_left() -> None:
    # The call runs in a task of the cache's; its group timed out and the block was left
    # while the call's cleanup still ran (a task of the group outliving it).
    steps: list[str] = []

    class Question(BaseModel):
        q: str

    async def fetch(question: Question, context: str, state: ExecutionState) -> str:
        try:
            await asyncio.Event().wait()
        finally:
            steps.append("cleanup started")
            for _ in range(3):
                await asyncio.sleep(0)
            steps.append("cleanup finished")
        return question.q

    ask = ExecutionEvent(
        actor=Tool(name="fetch", input_model=Question, handler=fetch, cacheable=True)
    )
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    async with state.parallel(max_workers=2, timeout=0.02, name="g") as p:
        p.add(ask(Question(q="a"), "", state))
    assert [r.status.value for r in await p.gather()] == ["timed_out"]
    assert steps == ["cleanup started", "cleanup finished"]
    me = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not me and not t.done()] == []


async def test_a_base_exception_of_a_cached_call_stops_the_group_like_any_member() -> None:
    # Raised in the cache's own task, SystemExit went out of the event loop itself: the
    # block saw only a cancellation, and asyncio.run raised it past everything.
    class Question(BaseModel):
        q: str

    async def leave(question: Question, context: str, state: ExecutionState) -> str:
        await asyncio.sleep(0)
        raise SystemExit(3)

    ask = ExecutionEvent(
        actor=Tool(name="leave", input_model=Question, handler=leave, cacheable=True)
    )
    state = ExecutionState(cache=ActorCache(), watchdog=None)
    with pytest.raises(SystemExit):
        async with state.parallel(name="g") as p:
            p.add(ask(Question(q="a"), "", state))
            p.add(asyncio.Event().wait())
            await p.gather()
    assert [r.status.value for r in p._tally.collected()] == ["failed", "cancelled"]


def test_equal_inputs_share_a_key_and_different_ones_never_do() -> None:
    # A set's members were written in hash order (equal sets, different keys, and a key
    # that changed from one process to the next), and JSON made dict keys 1 and "1" one.
    from rh_agents.core.actors import Tool as ToolActor

    class Tags(BaseModel):
        tags: set[int]
        names: frozenset[str] = frozenset()

    class Scores(BaseModel):
        scores: dict[int | str, int]

    async def handler(input: BaseModel, context: str, state: ExecutionState) -> str:
        return ""

    tags = ToolActor(name="tags", input_model=Tags, handler=handler, cacheable=True)
    scores = ToolActor(name="scores", input_model=Scores, handler=handler, cacheable=True)
    names = ["apple", "b", "c", "q", "zz", "kiwi"]
    assert cache_key(tags, Tags(tags={1, 9}, names=frozenset(names))) == cache_key(
        tags, Tags(tags={9, 1}, names=frozenset(reversed(names)))
    )
    assert cache_key(scores, Scores(scores={1: 5})) != cache_key(scores, Scores(scores={"1": 5}))
    assert cache_key(scores, Scores(scores={"1": 5})) != cache_key(
        scores, Scores(scores={"1": 5, 2: 5})
    )


def test_a_set_inputs_key_is_the_same_in_every_process() -> None:
    import os
    import subprocess
    import sys

    program = (
        "from pydantic import BaseModel\n"
        "from rh_agents.recovery.codec import canonical_json\n"
        "class Names(BaseModel):\n"
        "    names: frozenset[str]\n"
        "print(canonical_json(Names(names=frozenset(['apple', 'b', 'c', 'q', 'zz']))))\n"
    )
    texts = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert texts == {'{"names":{"<set>":["apple","b","c","q","zz"]}}\n'}


async def test_a_groups_retry_policy_applies_to_a_cacheable_actors_call() -> None:
    # The call a cache miss runs is the member's own call: the group's policies apply to it
    # as to any other (they were skipped: one attempt, and the member failed).
    from rh_agents import RetryPolicy

    calls: list[int] = []

    async def flaky(input: Item, context: str, state: ExecutionState) -> int:
        calls.append(input.i)
        if len(calls) < 3:
            raise ConnectionError("the service hiccuped")
        return input.i

    event = ExecutionEvent(
        actor=Tool(name="flaky", input_model=Item, handler=flaky, cacheable=True)
    )
    async with ExecutionState(cache=ActorCache()) as state:
        async with state.parallel(retry=RetryPolicy(max_attempts=3, initial_delay=0.001)) as p:
            p.add(event(Item(i=7), "", state))
        [result] = await p.gather()
    assert (result.ok, result.result, result.attempts) == (True, 7, 3), result.error
    assert calls == [7, 7, 7]


def test_a_cache_store_dropped_without_close_closes_its_database(tmp_path: Path) -> None:
    # ActorCache(SQLiteCacheStore(path)), as the docs write it, never calls close(): the
    # connection goes with the store (Python 3.13 warns of an unclosed database otherwise).
    import gc
    import sqlite3

    store = SQLiteCacheStore(tmp_path / "cache.db")
    connection = store._conn
    assert connection is not None
    connection.execute("SELECT 1")
    del store
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


async def test_a_validating_resume_runs_every_call_past_the_cache(tmp_path: Path) -> None:
    # replay="validate" runs everything again to list what changed; cache hits stood in for
    # the runs, so a program whose results changed passed validation with no difference.
    from rh_agents.recovery import Recovery

    factor = [10]
    calls: list[int] = []

    async def times(input: Item, context: str, state: ExecutionState) -> int:
        calls.append(input.i)
        return input.i * factor[0]

    event = ExecutionEvent(
        actor=Tool(name="times", input_model=Item, handler=times, cacheable=True)
    )
    store, cached = tmp_path / "run.db", ActorCache(SQLiteCacheStore(tmp_path / "cache.db"))

    async def body(state: ExecutionState) -> list[int]:
        async with state.parallel() as p:
            for i in (1, 2):
                p.add(event(Item(i=i), "", state))
        return [r.result for r in await p.gather()]

    async with ExecutionState(run_id="v", recovery=Recovery(store), cache=cached) as state:
        assert await body(state) == [10, 20]
    calls.clear()
    factor[0] = 100  # the program changed
    state = ExecutionState.resume("v", backend=store, replay="validate", cache=cached)
    async with state:
        assert await body(state) == [100, 200]
    assert sorted(calls) == [1, 2]
    assert state.recovery is not None
    assert len(state.recovery.differences) == 2  # type: ignore[attr-defined]


async def test_a_call_below_the_one_computing_its_key_runs_rather_than_wait_for_itself() -> None:
    # An agent asking itself the same question with another context (a hint): the nested
    # call has the key its ancestor is computing, joined that call, and waited for its own
    # result for ever.
    from rh_agents import Agent

    async def research(input: Item, context: str, state: ExecutionState) -> str:
        if context == "":
            nested = await event(Item(i=input.i), "a hint", state)
            return f"summary of {nested.result}"
        return f"facts about {input.i}"

    event = ExecutionEvent(
        actor=Agent(name="research", input_model=Item, handler=research, cacheable=True)
    )
    async with ExecutionState(cache=ActorCache()) as state:
        result = await asyncio.wait_for(event(Item(i=1), "", state), 10)
    assert result.ok and result.result == "summary of facts about 1"


# --- what a joiner gets: the call's own outcome, never its starter's alone ---------------------


class _FirstHeld:
    """A cacheable tool whose first call waits for ``release`` (an ``asyncio.Event``, or a
    ``threading.Event`` waited for in a thread); the later ones return at once."""

    def __init__(self, release: asyncio.Event | threading.Event | None = None) -> None:
        self.release = release if release is not None else asyncio.Event()
        self.calls = 0
        self.started = threading.Event()
        self.tool = Tool(
            name="square",
            input_model=Item,
            output_model=Square,
            handler=self.handle,
            cacheable=True,
        )

    def event(self, **options: Any) -> ExecutionEvent[Square]:
        return ExecutionEvent(actor=self.tool, **options)

    async def handle(self, item: Item, context: str, state: ExecutionState) -> Square:
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            if isinstance(self.release, threading.Event):
                await asyncio.to_thread(self.release.wait, 30)
            else:
                await self.release.wait()
        return Square(i=item.i, square=item.i * item.i)


async def test_a_joiner_takes_over_when_the_starter_times_out() -> None:
    # The starter's event timeout cut the shared call short, and the joiner (no timeout of
    # its own) got that timeout as its result: a bare TimeoutError, with an empty message.
    held = _FirstHeld()
    cache = ActorCache()
    state = ExecutionState(cache=cache)
    starter = asyncio.create_task(held.event(timeout=0.5)(Item(i=3), "", state))
    await until(lambda: cache.misses == 1)
    joiner = asyncio.create_task(held.event()(Item(i=3), "", state))
    await until(lambda: cache.joined == 1)
    first, second = await asyncio.wait_for(asyncio.gather(starter, joiner), 10)
    assert first.status is ResultStatus.TIMED_OUT
    assert isinstance(first.exception, ParallelTimeoutError)
    assert "timed out after 0.5s" in str(first.exception)
    assert second.ok and second.unwrap() == Square(i=3, square=9)
    assert second.source == "run"  # it ran the call itself
    assert held.calls == 2
    assert (cache.misses, cache.joined) == (2, 1)


async def test_a_joiners_own_timeout_bounds_its_wait() -> None:
    # The joiner's timeout was ignored: it waited as long as the starter's call took.
    held = _FirstHeld()
    cache = ActorCache()
    state = ExecutionState(cache=cache)
    starter = asyncio.create_task(held.event()(Item(i=4), "", state))
    await until(lambda: cache.misses == 1)
    joined = await asyncio.wait_for(held.event(timeout=0.05)(Item(i=4), "", state), 10)
    assert joined.status is ResultStatus.TIMED_OUT
    assert isinstance(joined.exception, ParallelTimeoutError)
    assert str(joined.exception).startswith("tool 'square' at square#2 timed out after 0.05s")
    assert not starter.done()  # the shared call goes on for its starter
    held.release.set()  # type: ignore[union-attr]
    result = await asyncio.wait_for(starter, 10)
    assert result.ok and result.unwrap() == Square(i=4, square=16)
    assert held.calls == 1


async def test_a_joiner_of_another_state_takes_over_when_the_starters_state_closes() -> None:
    # The starter's group timed out and its state closed while a call of another state waited
    # on the shared call: the call went on in the closed state, and its nested call failed
    # there, as the joiner's result ("this ExecutionState was closed").
    release = asyncio.Event()
    inner_calls: list[int] = []

    async def inner(item: Item, context: str, state: ExecutionState) -> Square:
        inner_calls.append(item.i)
        return Square(i=item.i, square=item.i * item.i)

    inner_event = ExecutionEvent(actor=Tool(name="inner", input_model=Item, handler=inner))
    calls = 0

    async def research(item: Item, context: str, state: ExecutionState) -> Square:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
        found = await inner_event(item, "", state)
        return found.unwrap()  # type: ignore[no-any-return]

    agent = ExecutionEvent(
        actor=Tool(
            name="research", input_model=Item, output_model=Square, handler=research, cacheable=True
        )
    )
    cache = ActorCache()
    other = ExecutionState(cache=cache)
    joiner: asyncio.Task[ExecutionResult[Square]] | None = None

    first = ExecutionState(cache=cache)
    async with first, first.parallel(name="g", timeout=0.5) as p:
        p.add(agent(Item(i=5), "", first))
        await until(lambda: cache.misses == 1)
        joiner = asyncio.create_task(agent(Item(i=5), "", other))
        await until(lambda: cache.joined == 1)
        [timed_out] = await p.gather()
    assert first.closed
    assert timed_out.status is ResultStatus.TIMED_OUT
    release.set()  # (too late for the first call, which was cancelled with its run)
    assert joiner is not None
    result = await asyncio.wait_for(joiner, 10)
    assert result.ok and result.unwrap() == Square(i=5, square=25)
    assert result.source == "run"
    assert calls == 2 and inner_calls == [5]  # the nested call ran once, in the joiner's run


def test_one_cache_serves_two_event_loops_at_once() -> None:
    # A call on a second loop (another thread's asyncio.run) joined the first loop's shared
    # call, and failed: "got Future ... attached to a different loop".
    release = threading.Event()
    held = _FirstHeld(release)
    cache = ActorCache()
    results: dict[str, ExecutionResult[Square]] = {}

    def run(name: str) -> None:
        async def call() -> ExecutionResult[Square]:
            return await held.event()(Item(i=6), "", ExecutionState(cache=cache))

        results[name] = asyncio.run(asyncio.wait_for(call(), 20))

    first = threading.Thread(target=run, args=("first",))
    first.start()
    try:
        assert held.started.wait(10)  # the first loop's call is running
        second = threading.Thread(target=run, args=("second",))
        second.start()
        second.join(20)
        assert not second.is_alive()
    finally:
        release.set()
        first.join(20)
    assert not first.is_alive()
    assert results["second"].ok and results["second"].source == "run"  # it ran on its own
    assert results["first"].ok and results["first"].source == "run"
    assert results["first"].unwrap() == results["second"].unwrap() == Square(i=6, square=36)
    assert held.calls == 2 and cache.misses == 2
