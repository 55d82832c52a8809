"""The event bus: publish never waits, each subscriber gets its events in order.

Each subscriber owns a queue and a feeder that calls it (a loop callback for a synchronous
subscriber, a task for an async one), so a slow subscriber delays only itself; ``publish``
appends to the queues and returns at once. A subscriber that raises is logged, counted in
``bus.subscriber_errors`` and keeps receiving later events; the other subscribers never
notice. Of a subscriber that keeps failing, the first ``MAX_KEPT_ERRORS`` (100) failures are
logged and kept; the rest are only counted (``bus.subscriber_error_count``), so that a printer
broken for good does not grow memory and the log with the run::

    bus = EventBus()
    bus.subscribe(printer)                 # a sync or async callable taking one record
    bus.subscribe(alert, kinds=[EventFailed, GroupCompleted])   # only these (and subclasses)
    state = ExecutionState(event_bus=bus)
    ...
    async for record in bus.stream():      # or read records as an async iterator
        ...
    await bus.drain()                      # wait until every subscriber has caught up
    await bus.close()                      # drain, then stop the feeders and streams

Closing is bounded: ``close()`` (which leaving ``async with state:`` calls) gives the
subscribers ``EventBus(shutdown_timeout=5.0)`` seconds to catch up. A subscriber still busy
then (an async one that never returns, or one far behind) is reported, in
``bus.subscriber_errors`` and as a ``SubscriberShutdownWarning``, and its feeder is cancelled:
the records it had not handled yet are dropped. ``shutdown_timeout=None`` waits as long as it
takes.

A synchronous subscriber object may also take its records in batches: if it has a
``handle_batch(queue)`` method, the bus calls it with the subscriber's own queue (a
``collections.deque``) holding every record not handled yet, oldest first; it pops them from the
left and handles each, in order. A batch saves a call per record (and lets a printer look at
its clock once per batch). A record it popped is handled: if it raises, that record is reported
(``subscriber_errors``) and the rest of the queue is handed to it again.

A subscriber that names its ``kinds`` gets only those records, and a record nobody wants is not
even built: ``bus.wants(MemberFinished)`` tells a publisher whether anyone would receive one
(a group of ten thousand members skips twenty thousand records when no subscriber asks for
member records).

A record can also be *deferred*: ``bus.defer(key, source)`` publishes
``source.deferred_record(key)`` at the event loop's next turn or just before the next record
published, whichever comes first, unless ``bus.withdraw(key)`` came first. A group defers each
member's ``MemberStarted`` this way: a member that finishes without ever letting the loop run
(no await that suspends, no record of its own) publishes only its ``MemberFinished``, and the
records of members that do wait keep their order (the start before anything the member does).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from rh_agents.core.records import (
    BusEvent,
    EventCompleted,
    EventFailed,
    EventReplayed,
    EventStarted,
)
from rh_agents.core.results import describe_error
from rh_agents.errors import ConfigurationError, SubscriberShutdownWarning

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "MAX_KEPT_ERRORS",
    "DeferredSource",
    "EventBus",
    "Subscriber",
    "SubscriberError",
    "Subscription",
]

_CALL_RECORDS = (EventStarted, EventCompleted, EventFailed, EventReplayed)

logger = logging.getLogger("rh_agents.bus")

# What a subscriber may raise that goes on, past the bus: requests to stop the program
# (rich's SystemExit on a broken pipe, a KeyboardInterrupt). Anything else it raises is a
# failure on that record, reported (see EventBus._report), never the run's.
_STOPS = (KeyboardInterrupt, SystemExit)

DEFAULT_SHUTDOWN_TIMEOUT = 5.0
# The failures of one subscriber kept in ``subscriber_errors`` and logged (the rest: counted).
MAX_KEPT_ERRORS = 100
# How long a cancelled feeder gets to end (a subscriber that swallows the cancellation is
# left behind rather than waited for).
_CANCEL_GRACE = 1.0
_DEFAULT: Any = object()  # close(timeout=...) not given: the bus's shutdown_timeout

Subscriber = Callable[[BusEvent], Any]

# The subscription whose feeder task (an async subscriber's) runs the current code, if any.
_feeding: contextvars.ContextVar[Subscription | None] = contextvars.ContextVar(
    "rh_agents_feeding", default=None
)


class DeferredSource(Protocol):
    """What ``EventBus.defer`` asks for a deferred record when the time to publish it comes."""

    def deferred_record(self, key: Any) -> BusEvent | list[BusEvent] | None:
        """The record for ``key``, or a list of records published in order as one batch
        (``None`` or ``[]``: nothing to publish after all)."""
        ...


@dataclass(frozen=True, slots=True)
class SubscriberError:
    """A subscriber raised while handling ``record`` (or, with a ``TimeoutError`` as its
    ``exception``, was still busy with it when the bus closed, and was cancelled)."""

    subscriber: str
    record: BusEvent
    error: str
    exception: BaseException


class Subscription:
    """One subscriber's queue and feeder. Owned by its bus.

    A synchronous subscriber is fed by a callback that the loop runs at its next turn after a
    push: no task, no future. An async subscriber (or a sync one that returns an awaitable) is
    fed by a task, so that it can await each record before the next.

    A producer that keeps the loop busy for a long stretch (a group whose members never wait)
    also calls ``EventBus.deliver_pending()`` between its chunks of work: a synchronous
    subscriber then gets what is queued right there, so records do not pile up by the
    thousand (and outlive a garbage-collector generation) before the loop's next turn.

    Invariants: only ``publish`` appends to ``_queue``; only the feeder pops from it, and for
    a synchronous subscriber ``deliver_pending`` (a plain call: nothing can interleave with
    it). The feeder is unstarted (nothing scheduled, no task yet), awake (``_awake``: it will
    look at the queue again before it rests, so a publisher only appends) or asleep (not
    awake: its queue is empty and the next push wakes it). An early delivery leaves it awake:
    its scheduled callback still comes, and is what rests it. "Idle", for ``drain()``, is not
    awake.
    """

    __slots__ = (
        "_accepted",
        "_awake",
        "_batch",
        "_bus",
        "_call",
        "_closed",
        "_current",
        "_delivering",
        "_failures",
        "_idle_waiters",
        "_is_async",
        "_queue",
        "_task",
        "_waiter",
        "handler",
        "kinds",
        "name",
    )

    def __init__(
        self,
        bus: EventBus,
        handler: Subscriber,
        kinds: frozenset[type[BusEvent]] | None = None,
    ) -> None:
        self._bus = bus
        self.handler = handler
        self.kinds = kinds  # None: every record
        # Per record class: whether it is one of ``kinds`` or a subclass of one (cached).
        self._accepted: dict[type[BusEvent], bool] = {}
        self.name = getattr(handler, "__qualname__", None) or type(handler).__name__
        call = handler if inspect.isroutine(handler) else type(handler).__call__
        self._is_async = inspect.iscoroutinefunction(call)
        # An object's bound __call__: calling it directly skips the type-slot lookup that
        # calling the object costs (per record).
        bound = handler if inspect.isroutine(handler) else handler.__call__  # type: ignore[operator]
        self._call: Subscriber = bound
        batch = None if inspect.isroutine(handler) else getattr(handler, "handle_batch", None)
        self._batch: Callable[[deque[BusEvent]], Any] | None = (
            batch if callable(batch) and not self._is_async else None
        )
        self._queue: deque[BusEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        # Bare futures rather than asyncio.Event: a feeder may sleep and wake a few times per
        # group, and an Event costs several times more per cycle.
        self._waiter: asyncio.Future[None] | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._awake = False
        self._closed = False
        self._delivering = False  # in the middle of handing records over (see _deliver)
        self._current: BusEvent | None = None  # what an async subscriber is handling
        self._failures = 0  # records it raised on (see EventBus._report)

    @property
    def closed(self) -> bool:
        """Whether this subscription ended (``unsubscribe``, or its bus closed)."""
        return self._closed

    @property
    def pending(self) -> int:
        """Records published but not yet handled."""
        return len(self._queue)

    def accepts(self, cls: type[BusEvent]) -> bool:
        """Whether records of class ``cls`` are delivered to this subscriber."""
        kinds = self.kinds
        if kinds is None:
            return True
        accepted = self._accepted.get(cls)
        if accepted is None:
            accepted = self._accepted[cls] = any(issubclass(cls, kind) for kind in kinds)
        return accepted

    def _push(self, record: BusEvent) -> None:
        if self._closed:
            return  # the feeder has ended or is ending: nobody would ever pop this record
        self._queue.append(record)
        if not self._awake:
            # Only the first record after the feeder rested pays for waking it: while it is
            # awake it drains the queue by itself (this is on every member's hot path).
            self._wake()

    def _push_many(self, records: list[BusEvent]) -> None:
        if self._closed:
            return  # (see _push)
        self._queue.extend(records)
        if not self._awake:
            self._wake()

    def _wake(self) -> None:
        if self._closed:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)  # a sleeping feeder task finds itself closed and ends
            return
        task = self._task
        if task is not None and not task.done():
            if task.get_loop().is_closed():
                # Its loop was closed under it (without cancelling it, as asyncio.run would):
                # it will never run again. A new feeder on this loop takes over the queue (a
                # record the old one was in the middle of went with its loop).
                self._task = self._waiter = None
            else:
                self._awake = True
                waiter, self._waiter = self._waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: records wait in the queue until one publishes inside a loop
        self._awake = True
        if self._is_async:
            self._task = loop.create_task(self._feed(), name=f"rh_agents-subscriber:{self.name}")
        else:
            loop.call_soon(self._feed_now)

    def _rest(self) -> None:
        self._awake = False
        if self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _feed_now(self) -> None:
        """Feed a synchronous subscriber everything queued (a loop callback)."""
        if self._is_async:
            return  # it turned async during an early delivery: its task owns the queue now
        if self._closed:
            self._queue.clear()
            self._rest()
            return
        try:
            delivered = self._deliver()
        except BaseException:
            # It raised what must stop the program (rich's SystemExit on a broken pipe, a
            # KeyboardInterrupt): that goes on, but the subscription must not stay awake with
            # no callback left to feed it, or drain() and close() would wait for it forever.
            # What it has not handled yet is fed at its next wake.
            self._rest()
            raise
        if delivered:
            self._rest()

    def _deliver_early(self) -> None:
        """Feed a synchronous subscriber what is queued now, ahead of its callback (which
        stays scheduled, and rests it)."""
        if (
            self._awake
            and self._queue
            and not self._is_async
            and not self._closed
            and not self._delivering  # called from its own handler: it has them in hand
        ):
            self._deliver()

    def _deliver(self) -> bool:
        """Hand every queued record to a synchronous subscriber, in order. ``False`` if it
        turned out to be async (it returned an awaitable): a task feeds it from then on."""
        self._delivering = True
        try:
            return self._deliver_all()
        finally:
            self._delivering = False

    def _deliver_all(self) -> bool:
        if self._batch is not None:
            self._deliver_batches(self._batch)
            return True
        queue = self._queue
        handler, pop = self._call, queue.popleft
        while queue:
            record = pop()
            try:
                outcome = handler(record)
            except _STOPS:
                raise  # (it asks the program to stop: see _feed_now)
            except BaseException as exc:  # a broken subscriber must not stop the run
                # (A CancelledError or another BaseException of its own included: raised out
                # of deliver_pending, it reached a group's worker and cancelled the group.)
                self._bus._report(self, record, exc)
                continue
            if outcome is not None and inspect.isawaitable(outcome):
                # It returned an awaitable after all: from now on a task feeds it, first
                # awaiting this outcome, so that records stay in order.
                self._is_async = True
                self._task = asyncio.get_running_loop().create_task(
                    self._feed(outcome, record), name=f"rh_agents-subscriber:{self.name}"
                )
                return False
        return True

    def _deliver_batches(self, handle: Callable[[deque[BusEvent]], Any]) -> None:
        queue = self._queue
        while queue:
            batch = list(queue)  # kept only to name the record a failure happened on
            try:
                handle(queue)
            except _STOPS:
                raise
            except BaseException as exc:  # a broken subscriber must not stop the run
                # Records are popped in order: the one it was handling is the last one gone.
                rest = queue[0] if queue else None
                consumed = next((i for i, record in enumerate(batch) if record is rest), len(batch))
                if consumed == 0:
                    queue.popleft()  # it failed before popping anything: drop that one
                    consumed = 1
                self._bus._report(self, batch[consumed - 1], exc)
                continue
            if queue and queue[0] is batch[0]:
                # It handled nothing: hand the records over one by one instead (never loop).
                call = self._call
                while queue:
                    record = queue.popleft()
                    try:
                        call(record)
                    except _STOPS:
                        raise
                    except BaseException as exc:
                        self._bus._report(self, record, exc)

    async def _feed(self, outcome: Any = None, record: BusEvent | None = None) -> None:
        queue = self._queue
        handler, pop = self._call, queue.popleft
        isawaitable = inspect.isawaitable
        loop = asyncio.get_running_loop()
        _feeding.set(self)  # (in this task's own context: see EventBus._check_caller)
        me = asyncio.current_task()
        try:
            if outcome is not None and record is not None:
                self._current = record
                try:
                    await outcome
                except Exception as exc:
                    self._bus._report(self, record, exc)
                except asyncio.CancelledError as exc:
                    if me is None or me.cancelling():
                        raise  # the feeder itself is stopped
                    self._bus._report(self, record, exc)  # the subscriber's own
                except _STOPS:
                    raise
                except BaseException as exc:  # (a test framework's failure, a GeneratorExit)
                    self._bus._report(self, record, exc)
            while True:
                while queue:
                    record = self._current = pop()
                    try:
                        outcome = handler(record)
                        # ``outcome is not None`` first: isawaitable() is slow on None.
                        if outcome is not None and isawaitable(outcome):
                            await outcome
                    except Exception as exc:  # a broken subscriber must not stop the run
                        self._bus._report(self, record, exc)
                    except asyncio.CancelledError as exc:
                        if me is None or me.cancelling():
                            raise  # the feeder itself is stopped (the bus closes)
                        # The subscriber's own (it raised one, or what it awaited was
                        # cancelled by its owner): a failure on this record, reported as any.
                        self._bus._report(self, record, exc)
                    except _STOPS:
                        raise  # (it asks the program to stop)
                    except BaseException as exc:
                        # Any other of its own (a test framework's failure, a GeneratorExit):
                        # it ended the feeder, whose error nobody retrieved.
                        self._bus._report(self, record, exc)
                self._current = None
                if self._closed:
                    return
                # Queue empty, no handler running: asleep until the next push.
                self._waiter = loop.create_future()
                self._rest()
                await self._waiter
        finally:
            # However the feeder ends (even cancelled), nobody waiting in drain() may hang.
            self._rest()

    async def _drain(self) -> None:
        if not self._awake and self._queue and not self._closed:
            self._wake()
        while self._awake:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    async def _close(self, drain: bool) -> None:
        if drain:
            await self._drain()
        self._closed = True
        task = self._task
        if task is None:
            self._queue.clear()  # a callback still scheduled finds the queue closed
            return
        if drain:
            self._wake()  # it finds itself closed and ends
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we ourselves are being cancelled
            return
        self._queue.clear()
        if task.done():
            return
        task.cancel()
        # Bounded: a subscriber that swallows the cancellation is left behind, not awaited.
        await asyncio.wait((task,), timeout=_CANCEL_GRACE)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a feeder's own failure was reported as it happened


class EventBus:
    """Fan-out of records to subscribers and streams; see the module docstring.

    ``shutdown_timeout``: how many seconds ``close()`` lets subscribers catch up before it
    cancels those still busy (``None``: no limit).
    """

    def __init__(self, *, shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        self.shutdown_timeout = _check_timeout(shutdown_timeout, "shutdown_timeout")
        self._subscriptions: list[Subscription] = []
        # Unsubscribed feeders may still be finishing a record; close() awaits them.
        self._retired: list[Subscription] = []
        # Weak: a stream() that is dropped unread must not keep collecting records.
        # (A dict of weak references rather than a WeakSet: publish is on every member's hot
        # path and an empty dict costs nothing to test.)
        self._streams: dict[int, weakref.ref[_StreamQueue]] = {}
        self.subscriber_errors: list[SubscriberError] = []
        # Every failure, counted; subscriber_errors keeps (and the log shows) only the first
        # MAX_KEPT_ERRORS of each subscriber (see _report).
        self.subscriber_error_count = 0
        self.published = 0
        self._closed = False
        self._runs_open = 0  # states inside `async with state:` on this bus (see end_run)
        # Deferred records by key, in the order deferred (see the module docstring). Only the
        # loop's thread touches it; a flush is scheduled at most once per loop turn.
        self._deferred: dict[Any, DeferredSource] = {}
        self._flush_scheduled = False

        # Whether anything would receive a record: callers skip building records if not. A
        # plain attribute, kept up to date by (un)subscribe and the streams, because every
        # member reads it (a property costs more than the test itself).
        self.has_listeners = False
        # Whether anyone takes the records of event calls (started, completed, failed,
        # replayed): every call reads it, and a subscriber that takes only a few kinds (the
        # run viewer's) must not have every call build records nobody receives.
        self.call_records = False
        self._wanted: dict[type[BusEvent], bool] = {}  # cache of wants(); cleared on changes
        # Bumped whenever who listens changes: a publisher may cache wants() until it moves.
        self.version = 0

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (leaving ``async with state:`` calls it): the
        subscribers' feeders have stopped, and records published now reach nobody."""
        return self._closed

    @property
    def subscribers(self) -> list[Subscriber]:
        """The handlers subscribed now, in the order they subscribed (a copy: ``subscribe``
        and ``unsubscribe`` change who gets records)::

            bus.subscribe(printer)
            assert bus.subscribers == [printer]
        """
        return [sub.handler for sub in self._subscriptions]

    def _update_listening(self) -> None:
        self.has_listeners = bool(self._subscriptions or self._streams)
        self._wanted.clear()
        self.version += 1
        self.call_records = self.has_listeners and any(self.wants(kind) for kind in _CALL_RECORDS)

    def subscribe(
        self,
        handler: Subscriber,
        *,
        kinds: type[BusEvent] | str | Iterable[type[BusEvent] | str] | None = None,
    ) -> Subscription:
        """Deliver every later record to ``handler`` (sync or async), in order.

        ``kinds``: only records of these classes (or their subclasses), e.g.
        ``kinds=[EventFailed, GroupCompleted]``, or of these ``kind`` strings
        (``kinds=["event.failed", "group.completed"]``); records nobody asked for are not even
        built.
        """
        if not callable(handler):
            raise TypeError(f"a subscriber must be callable, got {handler!r}")
        wanted: frozenset[type[BusEvent]] | None = None
        if kinds is not None:
            wanted = frozenset(_record_classes(kinds))
        subscription = Subscription(self, handler, wanted)
        self._subscriptions.append(subscription)
        self._update_listening()
        return subscription

    def wants(self, cls: type[BusEvent]) -> bool:
        """Whether a record of class ``cls`` would reach anyone (else: skip building it)."""
        wanted = self._wanted.get(cls)
        if wanted is None:
            wanted = self._wanted[cls] = bool(self._streams) or any(
                sub.accepts(cls) for sub in self._subscriptions
            )
        return wanted

    def unsubscribe(self, handler: Subscriber | Subscription) -> None:
        """Stop delivering to ``handler``; records already queued for it are dropped."""
        for sub in list(self._subscriptions):
            if sub is handler or sub.handler is handler:
                self._subscriptions.remove(sub)
                task = sub._task
                if task is not None and not task.done():
                    # Its feeder still runs (a record in hand): close() waits for it. Only
                    # until it ends: a service subscribing per request would keep every
                    # handler, and what it holds, for the bus's lifetime.
                    self._retired.append(sub)
                    task.add_done_callback(functools.partial(self._forget_retired, sub))
                sub._closed = True
                sub._queue.clear()
                sub._wake()  # a sleeping feeder task finds itself closed and ends
        self._update_listening()

    def _forget_retired(self, sub: Subscription, _feeder: asyncio.Task[None]) -> None:
        if sub in self._retired:
            self._retired.remove(sub)

    def defer(self, key: Any, source: DeferredSource) -> None:
        """Publish ``source.deferred_record(key)`` later, unless ``withdraw(key)`` comes first.

        "Later" is just before the next record published, or the event loop's next turn,
        whichever comes first. Must be called from inside the running loop.
        """
        self._deferred[key] = source
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_turn)

    def withdraw(self, key: Any) -> bool:
        """Drop the deferred record of ``key``; ``False`` if already published or never deferred."""
        return self._deferred.pop(key, None) is not None

    def _flush_turn(self) -> None:
        self._flush_scheduled = False
        if self._deferred:
            self._flush_deferred()

    def _flush_deferred(self) -> None:
        deferred = self._deferred
        if len(deferred) == 1:  # the usual case (one group's batch, or one record)
            key, source = deferred.popitem()
            record = source.deferred_record(key)
            if isinstance(record, list):
                self.publish_many(record)  # (the dict is empty again: no flush from in there)
            elif record is not None:
                self.publish(record)
            return
        pending = list(deferred.items())  # in the order they were deferred
        deferred.clear()
        for key, source in pending:
            record = source.deferred_record(key)
            if isinstance(record, list):
                self.publish_many(record)
            elif record is not None:
                self.publish(record)

    def deliver_pending(self) -> None:
        """Feed every synchronous subscriber what is queued for it, now, without waiting for
        the loop's next turn (async subscribers and streams are left to their tasks).

        For code that keeps the loop busy for a long stretch: a parallel group whose members
        never wait calls it every few hundred members, so that records are handled, and freed,
        while the group runs rather than piling up until it yields. The subscriber runs inside
        the caller's call, as it would in its loop callback: a failure is reported, never
        raised here, and a context variable it sets stays in a copy (as a callback's would),
        never reaching the caller (a worker between two members, the block).
        """
        contextvars.copy_context().run(self._deliver_pending)

    def _deliver_pending(self) -> None:
        if self._deferred:
            self._flush_deferred()  # (a busy group's member records wait there)
        for sub in self._subscriptions:
            sub._deliver_early()

    def publish(self, record: BusEvent) -> Awaitable[None]:
        """Queue ``record`` for every subscriber and stream; never waits.

        What it returns may be awaited, and is done already: ``await bus.publish(record)``
        (the form of the bus this one replaced, whose publish was a coroutine) works, and
        waits for nothing either."""
        if self._deferred:
            self._flush_deferred()  # they happened before this record
        self.published += 1
        for sub in self._subscriptions:
            if sub.kinds is not None and not sub.accepts(type(record)):
                continue
            if sub._awake:
                sub._queue.append(record)  # its feeder drains the queue by itself
            else:
                sub._push(record)
        if self._streams:
            self._push_streams(record)
        return _PUBLISHED

    def publish_many(self, records: list[BusEvent]) -> None:
        """Publish ``records`` in order, as ``publish`` would one by one (in one go: a group
        announces the members that started in a loop turn this way)."""
        if self._deferred:
            self._flush_deferred()  # they happened before these records
        self.published += len(records)
        for sub in self._subscriptions:
            if sub.kinds is None:
                accepted = records
            else:
                accepted = [record for record in records if sub.accepts(type(record))]
            if accepted:
                sub._push_many(accepted)
        if self._streams:
            for record in records:
                self._push_streams(record)

    def _push_streams(self, record: BusEvent) -> None:
        for key, ref in list(self._streams.items()):
            stream = ref()
            if stream is None:
                del self._streams[key]
            else:
                stream.push(record)
        if not self._streams:
            self._update_listening()

    def stream(self) -> AsyncIterator[BusEvent]:
        """Every record published from this call on, until the bus is closed::

        async for record in bus.stream():
            ...

        The stream is registered when ``stream()`` is called, not when iteration starts, so
        ``records = bus.stream()`` before a run misses nothing.
        """
        queue = _StreamQueue()
        if self._closed:
            queue.push(None)
        else:
            key = id(queue)
            streams = self._streams
            # The callback runs when the queue dies (before its id can be reused).
            streams[key] = weakref.ref(queue, lambda _ref: self._forget_stream(key))
            self._update_listening()
        return self._read(queue)

    def _forget_stream(self, key: int) -> None:
        self._streams.pop(key, None)
        self._update_listening()

    async def _read(self, queue: _StreamQueue) -> AsyncIterator[BusEvent]:
        try:
            while True:
                record = await queue.get()
                if record is None:
                    return
                yield record
        finally:
            self._forget_stream(id(queue))

    async def drain(self) -> None:
        """Wait until every subscriber has handled every record published so far.

        Not from inside an async subscriber of this bus: it would wait for itself (a
        ``ConfigurationError`` says so rather than hang)."""
        self._check_caller("drain()")
        if self._deferred:
            self._flush_deferred()
        for sub in list(self._subscriptions):
            await sub._drain()

    def open_run(self) -> None:
        """A run starts using this bus (``async with state:`` calls it): see ``end_run``."""
        if self._closed:
            # Its subscribers were stopped: every record of the run would be dropped unseen.
            raise ConfigurationError(
                "this run's event_bus was closed by a run that ended before this one began "
                "(the last run to leave `async with state:` closes the bus); make a new "
                "EventBus for each run, or enter both runs before either ends"
            )
        self._runs_open += 1

    async def end_run(self, opened: bool = True) -> None:
        """A run that used this bus ends (``state.close()`` calls it; ``opened``: it had called
        ``open_run``). The last run open closes the bus (``close()``); while another run still
        uses it, the bus only waits for the subscribers to catch up (at most its
        ``shutdown_timeout``), so that two states sharing one bus do not end each other's
        records."""
        if opened and self._runs_open > 0:
            self._runs_open -= 1
        if self._runs_open == 0:
            await self.close()
            return
        self._check_caller("close()")
        if self._deferred:
            self._flush_deferred()
        # (One still busy then is left to it: the last run's close reports and cancels it.)
        await self._drain_within(list(self._subscriptions), self.shutdown_timeout)

    # (A timeout of its own rather than the caller's asyncio.timeout: at its end the busy
    # subscribers are reported and cancelled, and the bus still ends cleanly.)
    async def close(self, *, drain: bool = True, timeout: float | None = _DEFAULT) -> None:  # noqa: ASYNC109
        """End the bus: optionally drain, then stop the feeders and end every ``stream()``.

        Draining waits at most ``timeout`` seconds (default: the bus's ``shutdown_timeout``)
        for the subscribers together; each one still busy then is reported (see the module
        docstring) and cancelled. ``drain=False`` cancels every feeder at once.
        """
        limit = self.shutdown_timeout if timeout is _DEFAULT else _check_timeout(timeout)
        self._check_caller("close()")
        if self._deferred:
            self._flush_deferred()
        self._closed = True
        subs = [*self._subscriptions, *self._retired]
        busy: list[Subscription] = []
        if drain:
            busy = await self._drain_within(subs, limit)
            for sub in busy:
                self._report_busy(sub, limit)
        for sub in subs:
            await sub._close(drain and sub not in busy)
        self._retired.clear()
        for ref in list(self._streams.values()):
            stream = ref()
            if stream is not None:
                stream.push(None)

    def _check_caller(self, action: str) -> None:
        """Refuse ``action`` from a subscriber's own feeder task: it waits for every
        subscriber to be idle, that one included, which never happens while it waits."""
        # A context variable rather than the current task: asyncio.wait_for (3.11) runs what
        # it waits for in a task of its own, which inherits the feeder's context.
        sub = _feeding.get()
        if sub is not None and sub._bus is self:
            raise ConfigurationError(
                f"bus.{action} was called by its own subscriber {sub.name}, which it would "
                "wait for forever (it waits until every subscriber is idle); call it from "
                "the code that runs the work, not from a subscriber"
            )

    async def _drain_within(
        self, subs: list[Subscription], limit: float | None
    ) -> list[Subscription]:
        """Drain ``subs`` for at most ``limit`` seconds in all; the ones still busy."""
        if limit is None:
            for sub in subs:
                await sub._drain()
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        for sub in subs:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(sub._drain(), left)
            except TimeoutError:
                break
        return [sub for sub in subs if sub._awake and sub._is_async]

    def _report_busy(self, sub: Subscription, limit: float | None) -> None:
        record = sub._current if sub._current is not None else next(iter(sub._queue), None)
        if record is None:  # (a feeder task about to start: nothing in hand)
            record = BusEvent(kind="bus.closed", address="", timestamp=0.0)
        dropped = len(sub._queue)
        message = (
            f"event subscriber {sub.name} was still busy {limit}s after the bus began to close "
            f"(handling {record.kind} at {record.address or '(root)'}); it was cancelled and "
            f"{dropped} record(s) queued for it were dropped. Make it return sooner, or give it "
            "more time with EventBus(shutdown_timeout=...)"
        )
        exc = TimeoutError(message)
        self.subscriber_errors.append(SubscriberError(sub.name, record, message, exc))
        logger.error("%s", message)
        warnings.warn(message, SubscriberShutdownWarning, stacklevel=2)

    def _report(self, sub: Subscription, record: BusEvent, exc: BaseException) -> None:
        self.subscriber_error_count += 1
        sub._failures += 1
        if sub._failures > MAX_KEPT_ERRORS:
            # A subscriber broken for good (a printer whose file was closed) raises on every
            # record: keeping each exception (its traceback holds frames) and logging each
            # would grow memory and the log with the run. Counted only, after one last line.
            if sub._failures == MAX_KEPT_ERRORS + 1:
                logger.error(
                    "event subscriber %s raised on %d records; its further failures are only "
                    "counted (bus.subscriber_error_count), not logged or kept",
                    sub.name,
                    MAX_KEPT_ERRORS,
                )
            return
        error = SubscriberError(sub.name, record, describe_error(exc), exc)
        self.subscriber_errors.append(error)
        logger.error(
            "event subscriber %s raised on %s at %s: %s",
            sub.name,
            # (Anything may be published, not only records: bus.publish(my_object).)
            getattr(record, "kind", type(record).__name__),
            getattr(record, "address", "?"),
            error.error,
            exc_info=exc,
        )


def _check_timeout(value: float | None, name: str = "timeout") -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigurationError(f"{name} must be None or a number of seconds, got {value!r}")
    if value is not None and not value >= 0:
        raise ConfigurationError(f"{name} must be None or at least 0 seconds, got {value!r}")
    return value


class _Published:
    """What ``EventBus.publish`` returns: an awaitable that is done already (see there)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # (a generator that ends at once: awaiting it never suspends)

    def __repr__(self) -> str:
        return "<published>"


_PUBLISHED = _Published()


# Records waiting in one stream (see _StreamQueue) before the backlog is reported.
_STREAM_BACKLOG = 100_000


class _StreamQueue:
    """An unbounded queue for one ``stream()`` consumer (``None`` ends it).

    Unbounded, since a record dropped would be lost to its reader without a word; a reader
    that stops reading (and holds the stream) makes it hold every later record, so once
    ``_STREAM_BACKLOG`` are waiting it is said, once, on the ``rh_agents.bus`` logger."""

    __slots__ = ("__weakref__", "_items", "_waiter", "_warned")

    def __init__(self) -> None:
        self._items: deque[BusEvent | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._warned = False

    def push(self, record: BusEvent | None) -> None:
        items = self._items
        items.append(record)
        if len(items) >= _STREAM_BACKLOG and not self._warned:
            self._warned = True
            logger.warning(
                "a bus.stream() holds %d records its reader has not taken (about 1 kB each): "
                "read it, or end it (break out of its loop and drop it, or aclose() it); "
                "a reader that wants only some records can subscribe a handler with kinds= "
                "instead",
                len(items),
            )
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> BusEvent | None:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


def _record_classes(kinds: Any) -> list[type[BusEvent]]:
    """The record classes ``subscribe(kinds=...)`` names: classes or ``kind`` strings, one
    alone or several (a lone one is forgiven for not being in a list; a string is one kind,
    never its letters)."""
    if isinstance(kinds, (type, str)):
        kinds = [kinds]
    try:
        given = list(kinds)
    except TypeError:
        raise TypeError(
            "kinds= takes record classes such as EventFailed or GroupCompleted, or their kind "
            f"strings ('event.failed'), one or a list of them; got {kinds!r}"
        ) from None
    by_kind = _classes_by_kind() if any(isinstance(kind, str) for kind in given) else {}
    classes: list[type[BusEvent]] = []
    for kind in given:
        if isinstance(kind, str):
            if kind not in by_kind:
                raise TypeError(
                    f"kinds= names no record kind {kind!r}; the kinds are "
                    f"{', '.join(sorted(by_kind))}"
                )
            classes.append(by_kind[kind])
        elif isinstance(kind, type) and issubclass(kind, BusEvent):
            classes.append(kind)
        else:
            raise TypeError(
                f"kinds= takes record classes such as EventFailed or GroupCompleted "
                f"(subclasses of BusEvent) or their kind strings, got {kind!r}"
            )
    return classes


def _classes_by_kind() -> dict[str, type[BusEvent]]:
    """Every record class with a kind of its own, by that kind (found, not listed: a record
    class added later is named too)."""
    found: dict[str, type[BusEvent]] = {}
    pending = list(BusEvent.__subclasses__())
    for cls in pending:  # (breadth first: a kind names its class, not a subclass keeping it)
        pending.extend(cls.__subclasses__())
        field = getattr(cls, "__dataclass_fields__", {}).get("kind")
        default = getattr(field, "default", None)
        if isinstance(default, str):
            found.setdefault(default, cls)
    return found
