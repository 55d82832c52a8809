"""The actor cache: single flight for identical concurrent calls, versions, persistence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import BaseModel

from recovery_support import Item, Square, Squarer
from rh_agents import ExecutionEvent, Tool
from rh_agents.core.execution import ExecutionState
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
