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

The cache only saves work, so it never costs a result: a call whose input has no canonical JSON
(bytes that are not UTF-8, an arbitrary object) runs without the cache, and a store that fails
(closed, a full disk) is a miss on reading and a value not kept on writing. Both are logged
(once per actor, once per streak of store failures); the store's errors are kept in
``cache.store_errors``.

Nor does it ever stall the event loop: a store other than the memory one is read and written
on a thread of the cache (``cache_worker.StoreWorker``). A lookup waits at most
``ActorCache(wait=0.05)`` seconds, then is a miss; a value to keep waits in memory (answering
lookups) until the store takes it, tried again while another process holds the file locked,
for at most ``retry_for`` seconds, then dropped with a logged reason. The state's end
(``settle()``) gives the writes left ``close_timeout`` seconds, drops the rest (logged) and
joins the thread.

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
import logging
import sqlite3
import threading
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from rh_agents.core.actors import BaseActor
from rh_agents.core.context import running_frame
from rh_agents.core.parallel.slots import MemberSlot, SharedCallSlot, wait_lending
from rh_agents.core.results import Raised
from rh_agents.errors import ConfigurationError, CorruptStateError, RecoveryError
from rh_agents.recovery.cache_worker import StoreRead, StoreWorker
from rh_agents.recovery.codec import canonical_json, encode_result
from rh_agents.recovery.writer import is_busy
from rh_agents.resilience.checks import check_number

__all__ = ["ActorCache", "CacheStore", "MemoryCacheStore", "SQLiteCacheStore", "cache_key"]

logger = logging.getLogger("rh_agents.recovery")

_MISSING = object()

# SQLite's busy_timeout is an int of milliseconds: a larger one reads as 0 (no wait at all).
_MAX_BUSY_MS = 2**31 - 1


def cache_key(actor: BaseActor, validated: BaseModel) -> str:
    """SHA-256 of the actor's name, version and the canonical JSON of its input."""
    # As a JSON array: a separator inside a name ("a\0b" with version "1", "a" with version
    # "b\x001") must not make two actors' keys one.
    text = json.dumps([actor.name, actor.version, canonical_json(validated)], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _key_of(actor: BaseActor, validated: BaseModel) -> str | None:
    """``cache_key``, or ``None`` for an input that has no canonical JSON (bytes that are not
    UTF-8, an arbitrary object): such a call cannot be keyed, so it runs without the cache
    rather than fail (the cache only saves work; it must never cost a result)."""
    try:
        return cache_key(actor, validated)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        if actor.name not in _UNKEYED:
            _UNKEYED.add(actor.name)
            logger.warning(
                "%s %r: an input cannot be turned into a cache key (%s); such calls run "
                "without the cache",
                actor.kind,
                actor.name,
                exc,
            )
        return None


# The keys the calls this one runs inside are computing for the cache (see ActorCache.run).
_computing: ContextVar[frozenset[str]] = ContextVar(
    "rh_agents_cache_computing", default=frozenset()
)

# Actors already warned about (once per process, as a log line, not per call).
_UNKEYED: set[str] = set()


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
    behind a lock); close it with ``close()``. A ``get`` or ``put`` that finds the file locked
    by another process waits at most ``busy_timeout`` seconds, then raises SQLite's
    ``database is locked``: an ``ActorCache`` calls it from its own thread, takes such a read
    as a miss and tries such a write again later, so a short wait here keeps that thread
    answering (and able to stop).
    """

    def __init__(
        self, path: str | Path = Path(".rh_agents") / "cache.db", *, busy_timeout: float = 0.02
    ) -> None:
        # inf raised an OverflowError, and a wait past SQLite's limit (a 32-bit count of
        # milliseconds) was silently taken as no wait at all.
        seconds = check_number("SQLiteCacheStore(busy_timeout=...)", busy_timeout, minimum=0)
        if round(seconds * 1000) > _MAX_BUSY_MS:
            raise ConfigurationError(
                f"SQLiteCacheStore(busy_timeout=...) must be at most {_MAX_BUSY_MS / 1000} "
                f"seconds (SQLite's limit), got {busy_timeout!r}"
            )
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # Opening waits as long as it must (once, when the cache is made); the calls
            # after it wait at most busy_timeout.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS actor_cache (key TEXT PRIMARY KEY, actor TEXT "
                "NOT NULL, version TEXT NOT NULL, value_json TEXT NOT NULL)"
            )
            self._conn.execute(f"PRAGMA busy_timeout = {round(seconds * 1000)}")
            # A store dropped without close() (the docs' one-line ActorCache(SQLiteCacheStore(
            # path))) closes its connection as it goes: no "unclosed database" warning.
            weakref.finalize(self, self._conn.close)
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
    """One running call, how many callers wait on it, and the member whose call started
    it: the slots it holds and its index in its group (``None`` outside a member; without a
    global limit the members of a group share one slot object, hence the index)."""

    __slots__ = ("member_index", "member_slot", "task", "waiters")

    def __init__(
        self,
        task: asyncio.Task[tuple[Any, int]],
        member_slot: MemberSlot | None,
        member_index: int | None,
    ) -> None:
        self.task = task
        self.waiters = 0
        self.member_slot = member_slot
        self.member_index = member_index


def _same_member(flight: _Flight) -> bool:
    """Whether the calling task works for the member whose call started ``flight``."""
    frame = running_frame()
    if flight.member_slot is None or frame is None:
        return False
    return _member_slot(frame.slot) is _member_slot(flight.member_slot) and (
        frame.parallel_index == flight.member_index
    )


def _member_slot(slot: Any) -> Any:
    """The member's own slots behind ``slot`` (a call inside a shared call of the member's
    runs on a ``SharedCallSlot`` of them)."""
    return slot.member_slot if isinstance(slot, SharedCallSlot) else slot


async def _join(task: asyncio.Task[Any]) -> None:
    """Wait for ``task``, cancelled, to end (cancelled again meanwhile: still waits)."""
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()


def _consume(task: asyncio.Task[Any]) -> None:
    # Every waiter may have gone before the call failed: read the outcome so that asyncio
    # does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class ActorCache:
    """The cache of one or more runs; see the module docstring.

    ``hits``, ``misses`` (calls that ran the handler) and ``joined`` (calls that waited on an
    identical running call) count what happened.

    A store other than ``MemoryCacheStore`` (which never waits) is read and written by a
    thread of the cache's own (``StoreWorker``), so a store that waits (an SQLite file locked
    by another process) never stops the event loop: a lookup waits at most ``wait`` seconds,
    then is a miss (the call runs); a value to keep is handed to the thread, which writes it
    when the store lets it (dropped, with a logged reason, if it stays locked for
    ``retry_for`` seconds). Until written, it answers lookups from memory. Leaving
    ``async with state:`` (``settle()``) waits at most ``close_timeout`` seconds for the
    writes still queued, drops the rest (logged) and joins the thread.
    """

    def __init__(
        self,
        store: CacheStore | None = None,
        *,
        wait: float = 0.05,
        close_timeout: float = 1.0,
        retry_for: float = 30.0,
    ) -> None:
        for name, seconds in (
            ("wait", wait),
            ("close_timeout", close_timeout),
            ("retry_for", retry_for),
        ):
            # (nan slipped past a "< 0" check: a wait of nan seconds is no wait at all.)
            check_number(f"ActorCache({name}=...)", seconds, minimum=0)
        if store is not None and not (
            callable(getattr(store, "get", None)) and callable(getattr(store, "put", None))
        ):
            # (Else every call logged a store error and ran uncached.)
            raise ConfigurationError(
                f"ActorCache(store=...) takes a cache store with get(key, actor) and "
                f"put(key, actor, value), such as SQLiteCacheStore(path) or "
                f"MemoryCacheStore(); got {store!r:.80}"
            )
        self.store: CacheStore = store if store is not None else MemoryCacheStore()
        self.wait = float(wait)
        self.close_timeout = float(close_timeout)
        # The memory store answers at once: it needs no thread.
        self._worker = (
            None
            if isinstance(self.store, MemoryCacheStore)
            else StoreWorker(self.store, self._reported, retry_for=retry_for)
        )
        self._flights: dict[str, _Flight] = {}
        # Calls whose last caller left: cancelled, and no longer joined (a new caller of the
        # same key starts a call of its own), but still ending; aclose() waits for them too.
        self._leaving: set[asyncio.Task[tuple[Any, int]]] = set()
        self.hits = 0
        self.misses = 0
        self.joined = 0
        # Failures of the store (locked, closed, full): the first ones, and which of reading
        # and writing fail now (logged once per streak, not per call). Writes are reported by
        # the worker's thread, hence the lock.
        self.store_errors: list[BaseException] = []
        self._failing: set[str] = set()
        self._errors_lock = threading.Lock()

    @property
    def dropped(self) -> int:
        """Values never written because the store stayed locked or failed."""
        return self._worker.dropped if self._worker is not None else 0

    def holds(self, actor: BaseActor, validated: BaseModel) -> bool:
        """Whether a call of ``actor`` with this input would be answered from the store.

        Called on the loop's thread by a group deciding where to run a member: it blocks that
        thread at most ``wait`` seconds (a store slower than that is a miss)."""
        key = _key_of(actor, validated)
        if key is None:
            return False
        worker = self._worker
        if worker is None:
            return self._get(key, actor) is not _MISSING
        found, _ = worker.pending(key)
        if found:
            return True
        if worker.stuck(self.wait):
            return False  # it would only wait too
        read = worker.read(key, actor)
        read.wait(self.wait)
        return self._read_outcome(read) is not _MISSING

    async def _lookup(self, key: str, actor: BaseActor) -> Any:
        """The stored value, or ``_MISSING``; never waits longer than ``wait`` seconds."""
        worker = self._worker
        if worker is None:
            return self._get(key, actor)
        found, value = worker.pending(key)
        if found:
            return value
        if worker.stuck(self.wait):
            return _MISSING
        read = worker.read(key, actor)
        try:
            await read.wait_async(self.wait)
        finally:
            read.abandon()  # a no-op once done; else the worker skips it (cancelled, too late)
        return self._read_outcome(read)

    def _read_outcome(self, read: StoreRead) -> Any:
        """The value of a lookup, or ``_MISSING`` for one that failed or was too slow."""
        if not read.done:
            read.abandon()
            self._reported(
                "read from",
                read.actor,
                RecoveryError(
                    f"the cache store did not answer a lookup within {self.wait:g} s (another "
                    "process may hold it locked); the call ran without the cache"
                ),
            )
            return _MISSING
        self._reported("read from", read.actor, read.error)
        return _MISSING if read.error is not None else read.value

    async def run(
        self,
        actor: BaseActor,
        validated: BaseModel,
        call: Callable[[], Awaitable[tuple[Any, int]]],
    ) -> tuple[Any, int, str]:
        """``(value, attempts, source)``: from the store, a running call, or ``call()``."""
        key = _key_of(actor, validated)
        if key is None or key in _computing.get():
            # No key; or a call below the one computing this key, with its input (an agent
            # calling itself with another context): it would wait for its own result, for
            # ever. It runs, uncached.
            self.misses += 1
            value, attempts = await call()
            return value, attempts, "run"
        stored = await self._lookup(key, actor)
        if stored is not _MISSING:
            self.hits += 1
            return stored, 1, "cache"
        flight = self._flights.get(key)
        starter: SharedCallSlot | None = None
        if flight is None:
            self.misses += 1
            # The call runs on this caller's slots, and lends none of them (see
            # SharedCallSlot): should this caller leave first, the call goes on for the
            # others. The frame is this call's own (made for it by the event).
            frame = running_frame()
            member_slot: MemberSlot | None = None
            if frame is not None and isinstance(frame.slot, MemberSlot):
                member_slot = frame.slot
                starter = frame.slot = SharedCallSlot(member_slot)
            task = asyncio.create_task(self._fill(key, actor, call), name=f"cache:{actor.name}")
            task.add_done_callback(_consume)
            flight = self._flights[key] = _Flight(
                task, member_slot, frame.parallel_index if frame is not None else None
            )
            source = "run"
        else:
            self.joined += 1
            source = "cache"
        flight.waiters += 1
        try:
            if source == "run" or _same_member(flight):
                # This caller's own call (the flight runs it in this caller's slots), or
                # one its member started beside it, on the slots this caller would lend.
                value, attempts = await asyncio.shield(flight.task)
            else:
                # A joiner only waits: it lends its slots, which the call it waits for may
                # need between two attempts, and takes them back first thing once the call is
                # done (see wait_lending).
                value, attempts = await wait_lending(flight.task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if flight.task.cancelled() and me is not None and not me.cancelling():
                # The shared call was cancelled (``aclose``), not this caller: an error.
                raise RecoveryError(
                    f"the shared call of {actor.kind} {actor.name!r} was cancelled because "
                    "the cache was closed"
                ) from None
            if starter is not None:
                # The call uses none of our slots from now on, whether it goes on for the
                # others or is cancelled just below.
                starter.leave()
            if not flight.task.done() and flight.waiters == 1:
                # The last caller left: nobody needs the result. The call may take a while
                # to end (a handler's cleanup, a nested group's): a caller coming meanwhile
                # must not join a call that is being cancelled, so it is forgotten now; and
                # this caller waits for it to end, as it would for a call of its own (no
                # task of its group outlives the group).
                task = flight.task
                task.cancel()
                if self._flights.get(key) is flight:
                    del self._flights[key]
                    self._leaving.add(task)
                    task.add_done_callback(self._leaving.discard)
                await _join(task)
            raise
        finally:
            flight.waiters -= 1
        if type(value) is Raised:
            value.raise_again()
        return value, attempts, source

    async def _fill(
        self, key: str, actor: BaseActor, call: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> tuple[Any, int]:
        _computing.set(_computing.get() | {key})  # (this task's context: the calls below)
        try:
            try:
                value, attempts = await call()
            except (Exception, asyncio.CancelledError):
                raise
            except BaseException as exc:  # KeyboardInterrupt, SystemExit, pytest's Failed...
                return Raised(exc), 0
            value = actor.validate_output(value)
            if self._worker is None:
                self._put(key, actor, value)
            else:
                # Queued: it answers lookups from now on. Waiting a little for the store
                # (never more than ``wait``) means that a healthy store has it when the call
                # returns, for another process or a new cache on the same file; a store known
                # to be locked is not waited for at all.
                written = self._worker.write(key, actor, value)
                if not self._worker.retrying:
                    await written.wait_async(self.wait)
            return value, attempts
        finally:
            flight = self._flights.get(key)
            if flight is not None and flight.task is asyncio.current_task():
                del self._flights[key]

    # The store only saves work: when it fails (an SQLite file locked by another process, a
    # full disk, a closed store), a lookup is a miss and a value not stored is run again next
    # time; the call keeps its result either way.

    def _get(self, key: str, actor: BaseActor) -> Any:
        try:
            value = self.store.get(key, actor)
        except Exception as exc:  # (not a BaseException: a cancellation goes on)
            self._reported("read from", actor, exc)
            return _MISSING
        self._reported("read from", actor, None)
        return value

    def _put(self, key: str, actor: BaseActor, value: Any) -> None:
        try:
            self.store.put(key, actor, value)
        except Exception as exc:
            self._reported("write to", actor, exc)
        else:
            self._reported("write to", actor, None)

    def _reported(self, action: str, actor: BaseActor, exc: BaseException | None) -> None:
        """Keep the outcome of a store call (any thread): log the first failure of a streak."""
        with self._errors_lock:
            if exc is None:
                self._failing.discard(action)
                return
            if len(self.store_errors) < 100:
                self.store_errors.append(exc)
            if action in self._failing:
                return
            self._failing.add(action)
        logger.warning(
            "cannot %s the cache store %s for %s %r (%s: %s); %s until it works again "
            "(failures are kept in cache.store_errors)",
            action,
            getattr(self.store, "path", type(self.store).__name__),
            actor.kind,
            actor.name,
            type(exc).__name__,
            exc,
            "values to keep wait in memory (and answer lookups)"
            if action == "write to" and self._worker is not None and is_busy(exc)
            else "calls run without the cache",
        )

    async def settle(self) -> None:
        """Wait (without blocking the loop) at most ``close_timeout`` seconds for the values
        still to be written, drop the rest with a logged reason, and join the store's thread.
        The cache stays usable (a thread starts again when needed). ``ExecutionState`` calls
        it when the state ends."""
        if self._worker is not None:
            await self._worker.finished(self.close_timeout)

    async def aclose(self) -> None:
        """Cancel the calls still running and wait for them to end, then ``settle()``."""
        tasks = [flight.task for flight in self._flights.values()] + list(self._leaving)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for key, flight in list(self._flights.items()):
            # (A call cancelled before it started never ran the code that unregisters it.)
            if flight.task.done():
                del self._flights[key]
        await self.settle()
