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

Single flight: while a call for a key is running, identical calls on the same event loop
wait for it instead of starting their own. The call runs in a task owned by the cache and
every caller waits on it through ``asyncio.shield``, so a caller that is cancelled leaves the
call running for the others. The call belongs to the run (``ExecutionState``) of the caller
that started it: once no caller of that run waits for it any more, it is cancelled (the last
one waits for it to end). A joiner gets the call's own outcome (its value, or what its handler
raised), never what belonged to its starter alone: when the call was cancelled (its run's
callers left: their timeouts, their group's stop, their state closing) or failed by its
starter's event ``timeout``, each joiner takes over, the first running the call again (in its
own run, under its own policies) and the others joining that one. A joiner's own event
``timeout`` bounds its wait. ``await cache.aclose()`` cancels and awaits whatever still runs
on its loop.

One cache may serve several event loops (threads each running ``asyncio.run``, or one
``asyncio.run`` after another): the store and the counters are shared, but single flight is
per loop, since a task of one loop cannot be awaited from another. An identical call on
another loop runs on its own; the value stored last is kept.

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

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from rh_agents.core.actors import BaseActor
from rh_agents.core.context import running_frame
from rh_agents.core.events import event_timed_out
from rh_agents.core.parallel.slots import MemberSlot, SharedCallSlot, wait_lending
from rh_agents.core.results import Raised
from rh_agents.errors import (
    ConfigurationError,
    CorruptStateError,
    ParallelTimeoutError,
    RecoveryError,
)
from rh_agents.recovery.cache_worker import StoreRead, StoreWorker
from rh_agents.recovery.codec import canonical_json, encode_result
from rh_agents.recovery.writer import is_busy
from rh_agents.resilience.checks import check_number

__all__ = ["ActorCache", "CacheStore", "MemoryCacheStore", "SQLiteCacheStore", "cache_key"]

logger = logging.getLogger("rh_agents.recovery")

_MISSING = object()

# SQLite's busy_timeout is an int of milliseconds: a larger one reads as 0 (no wait at all).
_MAX_BUSY_MS = 2**31 - 1

# The columns of SQLiteCacheStore's table.
_CACHE_COLUMNS = {"key", "actor", "version", "value_json"}


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

    A value that cannot be serialised is simply not stored. An entry written by an older shape
    of the model reads as a miss; a damaged one (text that is not JSON) raises a
    ``CorruptStateError`` naming its key and the file, which an ``ActorCache`` logs and takes
    as a miss (the call's value then replaces it). A file whose ``actor_cache`` table lacks
    the columns of this one (another program's) is refused when opened. Thread-safe (one connection
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
            # A store dropped without close() (the docs' one-line ActorCache(SQLiteCacheStore(
            # path))) closes its connection as it goes: no "unclosed database" warning.
            weakref.finalize(self, self._conn.close)
            # Checked before anything is written: another program's table of that name would
            # be a store failure at every call (each one logged, and run without the cache).
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(actor_cache)")}
            lacking = sorted(_CACHE_COLUMNS - columns) if columns else []
            if lacking:
                self._conn.close()
                raise CorruptStateError(
                    f"cache database {self.path} is not an rh_agents cache: its table "
                    f"actor_cache has no column(s) {', '.join(lacking)} (it is another "
                    "program's, or was altered); nothing was written. Point the cache at "
                    "another file."
                )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS actor_cache (key TEXT PRIMARY KEY, actor TEXT "
                "NOT NULL, version TEXT NOT NULL, value_json TEXT NOT NULL)"
            )
            self._conn.execute(f"PRAGMA busy_timeout = {round(seconds * 1000)}")
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
        except ValidationError as exc:
            errors = exc.errors()
            if not any(error["type"] == "json_invalid" for error in errors):
                # Written by another shape of the model (changed without a new version): a
                # miss, silently; the call's value replaces it.
                return _MISSING
            problem = errors[0]["msg"]
        except ValueError as exc:  # (json.loads)
            problem = str(exc)
        # Damage (a truncated write, an edit by hand): said, with what to do. The cache
        # takes it as a miss, as any failed read: the call runs and its value replaces it.
        raise CorruptStateError(
            f"cache entry {key} of {actor.kind} {actor.name!r} in cache database {self.path} "
            f"is damaged: it is not valid JSON ({problem}); the call runs and its value "
            f"replaces the entry. If many entries are, delete {self.path} (a cache only saves "
            "work)."
        )

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


# Where a flight is registered: its loop and its key. Each entry is read and written only by
# its own loop's thread, so a lookup and the registration that follows it need no lock (one
# dict operation at a time is atomic); aclose() works on a copy.
_Where = tuple[asyncio.AbstractEventLoop, str]


class _Flight:
    """One running call, who waits on it, and who started it.

    ``member_slot`` and ``member_index``: the slots held by the member whose call started it
    and its index in its group (``None`` outside a member; without a global limit the members
    of a group share one slot object, hence the index). ``state``: the run the call belongs
    to (its starter's; its nested events are that run's), ``own`` how many of its ``waiters``
    are of that run. ``address``: the starter's call's, which its own timeout names.
    ``closed``: cancelled by ``aclose()``.
    """

    __slots__ = (
        "address",
        "closed",
        "member_index",
        "member_slot",
        "own",
        "state",
        "task",
        "waiters",
        "where",
    )

    def __init__(
        self,
        task: asyncio.Task[tuple[Any, int]],
        where: _Where,
        member_slot: MemberSlot | None,
        member_index: int | None,
        state: object,
        address: str | None,
    ) -> None:
        self.task = task
        self.where = where
        self.waiters = 0
        self.own = 0
        self.member_slot = member_slot
        self.member_index = member_index
        self.state = state
        self.address = address
        self.closed = False


# What a joiner's wait gives when the shared call ended by something of its starter's alone
# (see _Flight): the joiner takes over.
_TAKE_OVER = object()


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
    identical running call) count what happened (a joiner that took the call over, see the
    module docstring, counts in both).

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
        self._flights: dict[_Where, _Flight] = {}
        # Calls whose last caller left: cancelled, and no longer joined (a new caller of the
        # same key starts a call of its own), but still ending; aclose() waits for them too.
        self._leaving: set[asyncio.Task[tuple[Any, int]]] = set()
        # The counters, counted by callers on every loop (threads) using this cache.
        self._counting = threading.Lock()
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

    def _count(self, counter: str) -> None:
        with self._counting:
            setattr(self, counter, getattr(self, counter) + 1)

    async def run(
        self,
        actor: BaseActor,
        validated: BaseModel,
        call: Callable[[], Awaitable[tuple[Any, int]]],
        *,
        join_timeout: float | None = None,
    ) -> tuple[Any, int, str]:
        """``(value, attempts, source)``: from the store, a running call, or ``call()``.

        ``join_timeout`` (the calling event's own ``timeout``, which ``call()`` applies to
        each of its attempts): how long a caller that joins an identical running call waits
        for it, at most; then the caller fails with its own timeout error."""
        key = _key_of(actor, validated)
        if key is None or key in _computing.get():
            # No key; or a call below the one computing this key, with its input (an agent
            # calling itself with another context): it would wait for its own result, for
            # ever. It runs, uncached.
            self._count("misses")
            value, attempts = await call()
            return value, attempts, "run"
        stored = await self._lookup(key, actor)
        if stored is not _MISSING:
            self._count("hits")
            return stored, 1, "cache"
        # Per loop: a task of another loop cannot be awaited here.
        where = (asyncio.get_running_loop(), key)
        while True:
            flight = self._flights.get(where)
            if flight is None:
                return await self._start(where, actor, call)
            self._count("joined")
            joined = await self._join_flight(flight, actor, join_timeout)
            if joined is not _TAKE_OVER:
                value, attempts = joined
                return value, attempts, "cache"
            # The call ended by its starter's own timeout or cancellation: not this caller's
            # outcome. It runs the call itself (or joins whoever took it over first).

    async def _start(
        self, where: _Where, actor: BaseActor, call: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> tuple[Any, int, str]:
        """Run ``call()`` as a call that identical calls may join, and wait for it."""
        self._count("misses")
        # The call runs on this caller's slots, and lends none of them (see SharedCallSlot):
        # should this caller leave first, the call goes on for the others. The frame is this
        # call's own (made for it by the event).
        frame = running_frame()
        member_slot: MemberSlot | None = None
        starter: SharedCallSlot | None = None
        if frame is not None and isinstance(frame.slot, MemberSlot):
            member_slot = frame.slot
            starter = frame.slot = SharedCallSlot(member_slot)
        task = asyncio.create_task(self._fill(where, actor, call), name=f"cache:{actor.name}")
        task.add_done_callback(_consume)
        flight = self._flights[where] = _Flight(
            task,
            where,
            member_slot,
            frame.parallel_index if frame is not None else None,
            frame.state if frame is not None else None,
            frame.address if frame is not None else None,
        )
        # (_fill unregisters it as it ends; this also covers a task cancelled before it
        # started, or one an eager task factory finished before it was registered.)
        task.add_done_callback(lambda _: self._forget(flight))
        outcome = await self._wait(flight, actor, starter, joining=False)
        value, attempts = outcome
        if type(value) is Raised:
            value.raise_again()
        return value, attempts, "run"

    async def _join_flight(self, flight: _Flight, actor: BaseActor, seconds: float | None) -> Any:
        """The outcome of ``flight`` for a caller that joins it, at most ``seconds`` later:
        ``(value, attempts)``, or ``_TAKE_OVER``."""
        if seconds is None:
            outcome = await self._wait_joined(flight, actor)
        else:
            deadline = asyncio.timeout(seconds)
            try:
                async with deadline:
                    outcome = await self._wait_joined(flight, actor)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise  # the shared call's own failure
                # This caller's own deadline, said as for a call of its own (a bare
                # TimeoutError says nothing). The call goes on for the others.
                frame = running_frame()
                address = frame.address if frame is not None else actor.name
                raise event_timed_out(actor, address, seconds) from exc
        if outcome is not _TAKE_OVER and type(outcome[0]) is Raised:
            outcome[0].raise_again()
        return outcome

    async def _wait_joined(self, flight: _Flight, actor: BaseActor) -> Any:
        try:
            return await self._wait(flight, actor, None, joining=True)
        except ParallelTimeoutError as exc:
            if flight.address is not None and exc.address == flight.address:
                # The deadline of the starter's event, not the call's own outcome: another
                # caller may have no timeout, or a longer one.
                return _TAKE_OVER
            raise

    async def _wait(
        self, flight: _Flight, actor: BaseActor, starter: SharedCallSlot | None, *, joining: bool
    ) -> Any:
        """Wait for ``flight`` as one of its callers: ``(value, attempts)``, or, for a joiner
        whose call was cancelled by something else than ``aclose()`` or this caller,
        ``_TAKE_OVER``. A caller cancelled meanwhile leaves the call (see ``_leave``)."""
        frame = running_frame()
        own_run = (frame.state if frame is not None else None) is flight.state
        flight.waiters += 1
        if own_run:
            flight.own += 1
        try:
            if not joining or _same_member(flight):
                # This caller's own call (the flight runs it in this caller's slots), or
                # one its member started beside it, on the slots this caller would lend.
                return await asyncio.shield(flight.task)
            # A joiner only waits: it lends its slots, which the call it waits for may need
            # between two attempts, and takes them back first thing once the call is done
            # (see wait_lending).
            return await wait_lending(flight.task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if flight.task.cancelled() and me is not None and not me.cancelling():
                # The shared call was cancelled, not this caller (whose cancellation, if any,
                # goes on below).
                if flight.closed:
                    raise RecoveryError(
                        f"the shared call of {actor.kind} {actor.name!r} was cancelled because "
                        "the cache was closed"
                    ) from None
                if joining:
                    # Its starter's run left it (their timeouts, their group's stop, their
                    # state closing): that is not this caller's outcome. (Not a cancellation
                    # of this task: nothing is hidden by returning.)
                    return _TAKE_OVER
                # Its own handler was cancelled from inside: as without the cache.
                raise
            if starter is not None:
                # The call uses none of our slots from now on, whether it goes on for the
                # others or is cancelled just below.
                starter.leave()
            await self._leave(flight, own_run)
            raise
        finally:
            flight.waiters -= 1
            if own_run:
                flight.own -= 1

    async def _leave(self, flight: _Flight, own_run: bool) -> None:
        """A caller of ``flight`` is cancelled. If it was the last caller, or the last one of
        the run the call belongs to (the others, of other runs, take it over), the call is
        cancelled. It may take a while to end (a handler's cleanup, a nested group's): a
        caller coming meanwhile must not join a call that is being cancelled, so it is
        forgotten now; and this caller waits for it to end, as it would for a call of its
        own (no task of its group, nothing of its run, outlives them)."""
        task = flight.task
        if task.done() or not (flight.waiters == 1 or (own_run and flight.own == 1)):
            return
        task.cancel()
        self._forget(flight)
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)
        await _join(task)

    def _forget(self, flight: _Flight) -> None:
        """Unregister ``flight`` (if it still is): identical calls from now on start afresh."""
        if self._flights.get(flight.where) is flight:
            del self._flights[flight.where]

    async def _fill(
        self, where: _Where, actor: BaseActor, call: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> tuple[Any, int]:
        key = where[1]
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
            flight = self._flights.get(where)
            if flight is not None and flight.task is asyncio.current_task():
                del self._flights[where]

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
        if isinstance(exc, CorruptStateError):
            # One damaged entry (its message says what happens and what to do), not a store
            # that fails until further notice.
            logger.warning("%s (kept in cache.store_errors)", exc)
            return
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
        """Cancel the calls still running on this event loop and wait for them to end (their
        callers get a ``RecoveryError``), then ``settle()``. Calls running on another loop
        (another thread's) are that loop's to end: a task cannot be awaited from elsewhere."""
        loop = asyncio.get_running_loop()
        # (Copies: callers on other threads may change them meanwhile.)
        flights = [f for f in list(self._flights.values()) if f.where[0] is loop]
        tasks = [f.task for f in flights]
        tasks += [t for t in list(self._leaving) if t.get_loop() is loop]
        for flight in flights:
            flight.closed = True
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for flight in flights:
            self._forget(flight)
        await self.settle()
