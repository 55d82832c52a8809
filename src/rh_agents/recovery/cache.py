"""``ActorCache``: reuse the results of cacheable actors, and run identical calls once.

::

    cache = ActorCache()                                   # in memory
    cache = ActorCache(SQLiteCacheStore(".rh_agents/cache.db"))   # kept across runs
    state = ExecutionState(cache=cache)
    fetch = Tool(name="fetch", input_model=Url, handler=get, cacheable=True, version="2")

A call of a ``cacheable`` actor is keyed by the actor's name, its ``version`` and the canonical
JSON of its validated input (keys sorted), hashed with SHA-256. A new ``version`` therefore
misses. A hit returns the stored value without calling the handler (``source="cache"`` on the
result and on ``EventCompleted``). Failures are never cached.

Single flight: while a call for a key is running, identical calls wait for it instead of
starting their own. The call runs in a task owned by the cache and every caller waits on it
through ``asyncio.shield``, so a caller that is cancelled leaves the call running for the
others; only when the last caller has gone is the call cancelled. ``await cache.aclose()``
cancels and awaits whatever is still running.

A hit still passes through the member's worker in a parallel group, but returns at once
without calling the handler, so it holds that slot only for the lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from rh_agents.core.actors import BaseActor
from rh_agents.core.parallel.slots import wait_lending
from rh_agents.errors import CorruptStateError, RecoveryError
from rh_agents.recovery.codec import canonical_json, encode_result

__all__ = ["ActorCache", "CacheStore", "MemoryCacheStore", "SQLiteCacheStore", "cache_key"]

_MISSING = object()


def cache_key(actor: BaseActor, validated: BaseModel) -> str:
    """SHA-256 of the actor's name, version and the canonical JSON of its input."""
    text = "\0".join((actor.name, actor.version, canonical_json(validated)))
    return hashlib.sha256(text.encode()).hexdigest()


class CacheStore(Protocol):
    """Where cached values live. Implementations must be safe to call from several threads."""

    def get(self, key: str, actor: BaseActor) -> Any:
        """The stored value, or the module's ``_MISSING`` sentinel (see ``ActorCache``)."""
        ...

    def put(self, key: str, actor: BaseActor, value: Any) -> None: ...


class MemoryCacheStore:
    """Values kept as they are (the same object is shared by every hit: do not mutate it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}

    def get(self, key: str, actor: BaseActor) -> Any:
        with self._lock:
            return self._values.get(key, _MISSING)

    def put(self, key: str, actor: BaseActor, value: Any) -> None:
        with self._lock:
            self._values[key] = value

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


class SQLiteCacheStore:
    """Values as JSON in an SQLite table, typed back by the actor's ``output_model``.

    A value that cannot be serialised is simply not stored. Thread-safe (one connection
    behind a lock); close it with ``close()``.
    """

    def __init__(self, path: str | Path = Path(".rh_agents") / "cache.db") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS actor_cache (key TEXT PRIMARY KEY, actor TEXT "
                "NOT NULL, version TEXT NOT NULL, value_json TEXT NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise CorruptStateError(
                f"cache database {self.path} cannot be opened ({exc}); nothing was written"
            ) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RecoveryError(f"cache database {self.path} is closed")
        return self._conn

    def get(self, key: str, actor: BaseActor) -> Any:
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT value_json FROM actor_cache WHERE key = ?", (key,))
                .fetchone()
            )
        if row is None:
            return _MISSING
        model = actor.output_model
        try:
            return model.model_validate_json(row[0]) if model else json.loads(row[0])
        except ValueError:
            return _MISSING  # stale shape: treat as a miss; the next put replaces it

    def put(self, key: str, actor: BaseActor, value: Any) -> None:
        text, _ = encode_result(value, actor.output_model)
        if text is None:
            return
        with self._lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO actor_cache (key, actor, version, value_json) "
                "VALUES (?, ?, ?, ?)",
                (key, actor.name, actor.version, text),
            )

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _Flight:
    """One running call and how many callers wait on it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[tuple[Any, int]]) -> None:
        self.task = task
        self.waiters = 0


def _consume(task: asyncio.Task[Any]) -> None:
    # Every waiter may have gone before the call failed: read the outcome so that asyncio
    # does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class ActorCache:
    """The cache of one or more runs; see the module docstring.

    ``hits``, ``misses`` (calls that ran the handler) and ``joined`` (calls that waited on an
    identical running call) count what happened.
    """

    def __init__(self, store: CacheStore | None = None) -> None:
        self.store: CacheStore = store if store is not None else MemoryCacheStore()
        self._flights: dict[str, _Flight] = {}
        self.hits = 0
        self.misses = 0
        self.joined = 0

    def holds(self, actor: BaseActor, validated: BaseModel) -> bool:
        """Whether a call of ``actor`` with this input would be answered from the store."""
        return self.store.get(cache_key(actor, validated), actor) is not _MISSING

    async def run(
        self,
        actor: BaseActor,
        validated: BaseModel,
        call: Callable[[], Awaitable[tuple[Any, int]]],
    ) -> tuple[Any, int, str]:
        """``(value, attempts, source)``: from the store, a running call, or ``call()``."""
        key = cache_key(actor, validated)
        stored = self.store.get(key, actor)
        if stored is not _MISSING:
            self.hits += 1
            return stored, 1, "cache"
        flight = self._flights.get(key)
        if flight is None:
            self.misses += 1
            task = asyncio.create_task(self._fill(key, actor, call), name=f"cache:{actor.name}")
            task.add_done_callback(_consume)
            flight = self._flights[key] = _Flight(task)
            source = "run"
        else:
            self.joined += 1
            source = "cache"
        flight.waiters += 1
        try:
            if source == "run":
                # This caller's own call: the flight runs it in this caller's slots.
                value, attempts = await asyncio.shield(flight.task)
            else:
                # A joiner only waits: it lends its slots, which the call it waits for may
                # need between two attempts (see wait_lending).
                value, attempts = await wait_lending(asyncio.shield(flight.task))
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if flight.task.cancelled() and me is not None and not me.cancelling():
                # The shared call was cancelled (``aclose``), not this caller: an error.
                raise RecoveryError(
                    f"the shared call of {actor.kind} {actor.name!r} was cancelled because "
                    "the cache was closed"
                ) from None
            if not flight.task.done() and flight.waiters == 1:
                flight.task.cancel()  # the last caller left: nobody needs the result
            raise
        finally:
            flight.waiters -= 1
        return value, attempts, source

    async def _fill(
        self, key: str, actor: BaseActor, call: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> tuple[Any, int]:
        try:
            value, attempts = await call()
            value = actor.validate_output(value)
            self.store.put(key, actor, value)
            return value, attempts
        finally:
            flight = self._flights.get(key)
            if flight is not None and flight.task is asyncio.current_task():
                del self._flights[key]

    async def aclose(self) -> None:
        """Cancel the calls still running and wait for them to end."""
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
