"""A cache store that waits never stalls the event loop, never costs a result, and leaves no
thread behind.

The lock tests hold the cache database with ``BEGIN EXCLUSIVE`` from a real second process
(``store_locker.py``) and measure the loop's stalls with a ticker task.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recovery_support import Item, Square, Squarer, Ticker, locked
from rh_agents.core.actors import BaseActor
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError
from rh_agents.recovery import ActorCache, MemoryCacheStore, SQLiteCacheStore

pytestmark = pytest.mark.timeout(60)

# The longest the loop may stop while the cache store is locked. What this guards against is
# the loop waiting for the store's lock (30 s per write before the store thread); the margin
# is wide because a loaded 2-core CI machine once stalled a lookup-bound loop for 0.3 s.
STALL_LIMIT = 1.0


def cache_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rh_agents-cache")]


async def _calls(state: ExecutionState, squarer: Squarer, n: int) -> list[Any]:
    """``n`` distinct calls in a group, then each of them once more, one at a time."""
    async with state.parallel(max_workers=8, name="members") as p:
        for i in range(n):
            p.add(squarer.event(Item(i=i), "", state))
        first = await p.gather()
    again = [await squarer.event(Item(i=i), "", state) for i in range(n)]
    return first + again


async def test_a_locked_cache_store_never_stalls_the_loop_and_drops_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "cache.db"
    store = SQLiteCacheStore(db)
    n = 20
    squarer = Squarer(cacheable=True)
    cache = ActorCache(store, close_timeout=0.2)
    ticker = Ticker()
    with locked(db), caplog.at_level(logging.WARNING, logger="rh_agents.recovery"):
        ticker.start()
        started = time.monotonic()
        async with ExecutionState(cache=cache) as state:
            results = await _calls(state, squarer, n)
        elapsed = time.monotonic() - started
        await ticker.stop()
        # Leaving the state dropped what the locked store could not take, and joined the
        # store's thread: nothing waits on the lock any more.
        assert not cache_threads()
    store.close()
    assert ticker.longest < STALL_LIMIT, ticker.longest
    assert [r.ok for r in results] == [True] * (2 * n)
    assert [r.unwrap() for r in results[n:]] == [Square(i=i, square=i * i) for i in range(n)]
    # Each call ran once: the second ones were answered by the values waiting to be written.
    assert dict(squarer.calls) == {i: 1 for i in range(n)}
    assert [r.source for r in results[n:]] == ["cache"] * n
    assert cache.dropped == n
    assert elapsed < 5.0  # (the old busy timeout stopped the loop 30 s per write)
    messages = [r.getMessage() for r in caplog.records]
    assert any("database is locked" in m and "wait in memory" in m for m in messages)
    assert any(f"{n} value(s) not written" in m for m in messages)
    print(
        f"\nlocked cache store: {2 * n} calls in {elapsed:.3f}s, longest loop stall "
        f"{ticker.longest * 1000:.1f} ms, {ticker.ticks} ticks"
    )


async def test_values_wait_for_a_locked_store_and_are_written_once_it_frees(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cache.db"
    store = SQLiteCacheStore(db)
    n = 10
    squarer = Squarer(cacheable=True)
    cache = ActorCache(store, close_timeout=10.0)
    ticker = Ticker()
    with locked(db) as locker:
        ticker.start()
        async with ExecutionState(cache=cache) as state:
            results = await _calls(state, squarer, n)
            stall_while_locked = ticker.longest
            await ticker.stop()
            assert cache.dropped == 0 and cache_threads()  # the values wait in memory
            locker.release()
        # The close waited for the store to take them, then joined the thread.
        assert not cache_threads()
    assert stall_while_locked < STALL_LIMIT, stall_while_locked
    assert [r.ok for r in results] == [True] * (2 * n)
    assert cache.dropped == 0
    store.close()

    # Another cache on the same file has them all.
    again = SQLiteCacheStore(db)
    fresh = Squarer(cacheable=True)
    async with ExecutionState(cache=ActorCache(again)) as state:
        replayed = [await fresh.event(Item(i=i), "", state) for i in range(n)]
    again.close()
    assert [r.source for r in replayed] == ["cache"] * n
    assert [r.unwrap() for r in replayed] == [Square(i=i, square=i * i) for i in range(n)]
    assert not fresh.calls


async def test_a_value_the_store_refuses_for_retry_for_is_dropped_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "cache.db"
    store = SQLiteCacheStore(db)
    squarer = Squarer(cacheable=True)
    cache = ActorCache(store, retry_for=0.05, close_timeout=10.0)
    with locked(db), caplog.at_level(logging.WARNING, logger="rh_agents.recovery"):
        async with ExecutionState(cache=cache) as state:
            result = await squarer.event(Item(i=2), "", state)
        # The close did not need its 10 s: the worker gave the value up after retry_for.
        assert not cache_threads()
    store.close()
    assert result.ok and result.unwrap() == Square(i=2, square=4)
    assert cache.dropped == 1
    assert any("stayed locked for 0.05 s" in r.getMessage() for r in caplog.records)


class GatedStore:
    """A store whose reads wait for ``gate`` (a store that does not answer)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.inner = MemoryCacheStore()

    def get(self, key: str, actor: BaseActor) -> Any:
        self.gate.wait()
        return self.inner.get(key, actor)

    def put(self, key: str, actor: BaseActor, value: Any) -> None:
        self.inner.put(key, actor, value)


async def test_a_lookup_the_store_does_not_answer_in_time_is_a_miss() -> None:
    store = GatedStore()
    squarer = Squarer(cacheable=True)
    cache = ActorCache(store, wait=0.02)
    ticker = Ticker()
    ticker.start()
    async with ExecutionState(cache=cache) as state:
        first = await squarer.event(Item(i=1), "", state)
        # A group asks holds() for each member it adds: bounded by `wait` on the loop's
        # thread, and at once while the store's thread is still stuck.
        results = await state.parallel_execute(
            [squarer.event(Item(i=i), "", state) for i in range(2, 8)]
        )
        stall = ticker.longest
        await ticker.stop()
        store.gate.set()  # let the stuck lookup return, so that the close can join the thread
    assert not cache_threads()
    assert stall < STALL_LIMIT, stall
    assert first.ok and first.source == "run"
    assert [r.source for r in results] == ["run"] * 6
    assert dict(squarer.calls) == {i: 1 for i in range(1, 8)}
    assert cache.hits == 0
    assert any("did not answer a lookup" in str(e) for e in cache.store_errors)
    assert len(store.inner) == 7  # every value was kept all the same


async def test_a_healthy_store_keeps_no_thread_after_the_state_ends(tmp_path: Path) -> None:
    store = SQLiteCacheStore(tmp_path / "cache.db")
    squarer = Squarer(cacheable=True)
    cache = ActorCache(store)
    async with ExecutionState(cache=cache) as state:
        await squarer.event(Item(i=3), "", state)
        hit = await squarer.event(Item(i=3), "", state)
    assert not cache_threads()
    assert hit.source == "cache" and squarer.calls[3] == 1
    # The cache stays usable after a state has ended: its thread starts again.
    async with ExecutionState(cache=cache) as state:
        assert (await squarer.event(Item(i=3), "", state)).source == "cache"
    assert not cache_threads()
    store.close()


@pytest.mark.parametrize("value", [-1, math.nan, math.inf, True, "1"])
@pytest.mark.parametrize("option", ["wait", "close_timeout", "retry_for"])
def test_bad_waits_are_refused(option: str, value: object) -> None:
    # (nan slipped past the range check: a wait of nan seconds is none.)
    with pytest.raises(ConfigurationError, match=rf"ActorCache\({option}=\.\.\.\)"):
        ActorCache(**{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("store", ["redis://x", 5, object()])
def test_a_cache_store_that_is_no_store_is_refused(store: object) -> None:
    # It was taken, and every call then logged a store error and ran uncached.
    with pytest.raises(ConfigurationError, match=r"ActorCache\(store=\.\.\.\) takes a cache"):
        ActorCache(store)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, math.nan, math.inf, 2_147_484.0, True, "0.02", None])
def test_a_busy_timeout_that_is_no_wait_is_refused(tmp_path: Path, value: object) -> None:
    """``SQLiteCacheStore(busy_timeout=inf)`` raised an OverflowError, True was taken as one
    second, and a wait past SQLite's limit (2**31 - 1 ms) was taken as no wait at all: each is
    now a ConfigurationError naming the option, raised before the file is created."""
    path = tmp_path / "cache.db"
    with pytest.raises(ConfigurationError, match=r"SQLiteCacheStore\(busy_timeout=\.\.\.\)"):
        SQLiteCacheStore(path, busy_timeout=value)  # type: ignore[arg-type]
    assert not path.exists()


def test_a_busy_timeout_up_to_sqlites_limit_is_kept(tmp_path: Path) -> None:
    store = SQLiteCacheStore(tmp_path / "cache.db", busy_timeout=2_147_483.647)
    try:
        assert store._connection().execute("PRAGMA busy_timeout").fetchone() == (2_147_483_647,)
    finally:
        store.close()
