"""``StoreWorker``: the thread through which an ``ActorCache`` reads and writes its store.

::

    worker = StoreWorker(store, report)
    read = worker.read(key, actor)             # served by the thread, before any write
    if read.wait(0.05): value = read.value     # a short blocking wait on the loop's thread ...
    await read.wait_async(0.05)                # ... or one that does not block the loop
    read.abandon()                             # too late: the caller ran the call instead
    worker.write(key, actor, value)            # kept in memory until the store has it
    await worker.finished(1.0)                 # at a state's end: the rest is dropped, logged

A store such as an SQLite file that another process holds locked can make a read or a write
wait; done on the event loop's thread, that wait stops every task. The worker does them on a
thread of its own, so the loop only ever waits for a result as long as it chooses.

One thread, started when there is work and ending as soon as there is none, so an idle cache
keeps no thread. Reads go first (a lookup that waits behind a write is a call that runs for
nothing). A value waiting to be written answers reads at once, from memory (``pending``), so
a value is found again as soon as its call has ended, whether or not the store has it yet.

A write that finds the store locked (``is_busy``) is tried again with a growing pause, for at
most ``retry_for`` seconds, then dropped with a logged reason: a cache only saves work, and a
value not kept only costs one more call later. Any other failure drops it at once. Every
outcome goes to ``report(action, actor, error)`` (``error`` ``None``: it worked), on the
worker's thread.

The thread is a daemon: a store that never answers never holds the process at exit. Its
owner joins it (``finished``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rh_agents.core.actors import BaseActor
from rh_agents.errors import RecoveryError
from rh_agents.recovery.writer import is_busy

__all__ = ["StoreRead", "StoreWorker"]

logger = logging.getLogger("rh_agents.recovery")

_FIRST_PAUSE = 0.01
_LONGEST_PAUSE = 0.5

# report(action, actor, error): "read from" or "write to"; error None when it worked.
Report = Callable[[str, BaseActor, BaseException | None], None]


class _Done:
    """Something the worker finishes once: waited on by a thread or by a loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Block this thread until done, at most ``timeout`` seconds."""
        return self._event.wait(max(0.0, timeout))

    async def wait_async(self, seconds: float | None) -> bool:
        """Wait (without blocking the loop) until done, at most ``seconds``."""
        if self._event.is_set():
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not self._event.is_set():
                self._futures.append((loop, future))
        if not self._event.is_set():
            await asyncio.wait((future,), timeout=seconds)
        return self._event.is_set()

    def _finish(self) -> None:
        with self._lock:
            self._event.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass  # that loop is closed: nobody waits any more


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StoreRead(_Done):
    """One lookup: ``value`` (the store's own missing sentinel on a miss) or ``error``."""

    def __init__(self, key: str, actor: BaseActor) -> None:
        super().__init__()
        self.key = key
        self.actor = actor
        self.value: Any = None
        self.error: BaseException | None = None
        # Its caller stopped waiting (and ran the call): the worker skips it if not begun.
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True


class _Write(_Done):
    """One value waiting to be written."""

    def __init__(self, key: str, actor: BaseActor, value: Any) -> None:
        super().__init__()
        self.key = key
        self.actor = actor
        self.value = value
        self.since = time.monotonic()


class StoreWorker:
    """The thread of one cache's store; see the module docstring."""

    def __init__(self, store: Any, report: Report, *, retry_for: float = 30.0) -> None:
        self.store = store
        self.retry_for = retry_for
        self._report = report
        self._cond = threading.Condition()
        self._reads: deque[StoreRead] = deque()
        # The values not written yet, by key, oldest first (a newer value for a key replaces
        # the older one, which then never needs writing).
        self._writes: dict[str, _Write] = {}
        self._next_write = 0.0  # monotonic time before which a busy store is not tried again
        self._pause = _FIRST_PAUSE
        self._thread: threading.Thread | None = None
        self._running = False  # a thread serves the queues (it clears this as it leaves)
        self._stopping = False
        self._exited: _Done | None = None  # finished when the running thread leaves
        # When the store call in progress began (None: none is): a call that has taken longer
        # than the loop is willing to wait means the next lookups would only wait too.
        self._busy_since: float | None = None
        self.dropped = 0  # values never written (store locked past retry_for, or failing)
        self._expiry_logged = False

    # --- the loop's side --------------------------------------------------------------------

    def pending(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` for a value waiting to be written under ``key``, else
        ``(False, None)``."""
        with self._cond:
            write = self._writes.get(key)
            return (True, write.value) if write is not None else (False, None)

    def stuck(self, longer_than: float) -> bool:
        """Whether the store call in progress has taken more than ``longer_than`` seconds."""
        since = self._busy_since
        return since is not None and time.monotonic() - since > longer_than

    @property
    def retrying(self) -> bool:
        """Whether a write found the store locked and waits to be tried again."""
        return self._next_write > 0

    def read(self, key: str, actor: BaseActor) -> StoreRead:
        """Queue a lookup of ``key``; served before any write."""
        job = StoreRead(key, actor)
        with self._cond:
            self._reads.append(job)
            self._wake()
        return job

    def write(self, key: str, actor: BaseActor, value: Any) -> _Done:
        """Queue ``value`` for ``key``; it answers ``pending`` until the store has it."""
        job = _Write(key, actor, value)
        with self._cond:
            self._writes.pop(key, None)  # re-inserted last: written after the older ones
            self._writes[key] = job
            self._wake()
        return job

    async def finished(self, seconds: float) -> bool:
        """Wait (without blocking the loop) until every queued write is done, at most
        ``seconds``; then drop what is left (logged) and join the thread. ``False``
        when the thread did not end (a store call that never returns: it stays a daemon)."""
        exited = self._exit_signal()
        if exited is None:
            self._join()
            return True
        if not await exited.wait_async(seconds):
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            # The thread leaves once its store call in progress returns (an SQLite store's
            # short busy timeout): a little more than that, never unbounded.
            if not await exited.wait_async(1.0):
                logger.warning(
                    "the cache store %s did not return from a call within 1 s of being asked "
                    "to stop; its thread is left to end on its own",
                    _name(self.store),
                )
                return False
        self._join()
        return True

    def _exit_signal(self) -> _Done | None:
        with self._cond:
            return self._exited if self._running else None

    def _join(self) -> None:
        with self._cond:
            thread = self._thread if not self._running else None
        if thread is not None:
            # It has left its loop (``_running`` is clear): only returning is left to do.
            thread.join()
            with self._cond:
                if self._thread is thread:
                    self._thread = None

    def _wake(self) -> None:
        """Start the thread if none serves the queues, else wake it (``_cond`` held)."""
        if self._running:
            self._cond.notify()
            return
        previous = self._thread
        if previous is not None:
            # It has left its loop (``_running`` is clear): only returning is left to do.
            previous.join()
        self._running = True
        self._stopping = False
        self._exited = _Done()
        self._thread = threading.Thread(
            target=self._serve, name=f"rh_agents-cache:{_name(self.store)}", daemon=True
        )
        self._thread.start()

    # --- the thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            self._busy_since = time.monotonic()
            try:
                if isinstance(job, StoreRead):
                    self._do_read(job)
                else:
                    self._do_write(job)
            finally:
                self._busy_since = None

    def _next(self) -> StoreRead | _Write | None:
        """The next job, or ``None`` once there is nothing left (the thread then ends)."""
        with self._cond:
            while True:
                if self._stopping:
                    self._leave(dropping=True)
                    return None
                while self._reads:
                    read = self._reads.popleft()
                    if not read.abandoned:
                        return read
                    read._finish()
                if not self._writes:
                    self._leave(dropping=False)
                    return None
                delay = self._next_write - time.monotonic()
                if delay <= 0:
                    return next(iter(self._writes.values()))
                self._cond.wait(delay)  # a read or a stop wakes it sooner

    def _leave(self, *, dropping: bool) -> None:
        """End serving (``_cond`` held): drop what is left, wake whoever waits for the end."""
        if dropping:
            for read in self._reads:
                read.error = RecoveryError("the cache was closed before this lookup ran")
                read._finish()
            self._reads.clear()
            if self._writes:
                self.dropped += len(self._writes)
                logger.warning(
                    "cache store %s: %d value(s) not written (the store stayed locked or "
                    "failing until the run ended); their calls run again next time",
                    _name(self.store),
                    len(self._writes),
                )
                for write in self._writes.values():
                    write._finish()
                self._writes.clear()
        self._pause = _FIRST_PAUSE
        self._next_write = 0.0
        self._running = False
        exited = self._exited
        if exited is not None:
            exited._finish()

    def _do_read(self, job: StoreRead) -> None:
        try:
            job.value = self.store.get(job.key, job.actor)
        except Exception as exc:  # a failing store is a miss; the caller reports it
            job.error = exc
        job._finish()

    def _do_write(self, job: _Write) -> None:
        error: BaseException | None = None
        try:
            self.store.put(job.key, job.actor, job.value)
        except Exception as exc:
            error = exc
        with self._cond:
            if error is not None and is_busy(error) and self._stopping:
                # Left in the queue: the stop drops it with the others, in one message.
                report_error: BaseException | None = error
                done = False
            elif error is not None and is_busy(error):
                if time.monotonic() - job.since < self.retry_for:
                    # Locked by someone else: try again after a pause (reads go on meanwhile).
                    self._next_write = time.monotonic() + self._pause
                    self._pause = min(self._pause * 2, _LONGEST_PAUSE)
                    report_error = error
                    done = False
                else:
                    report_error = RecoveryError(
                        f"the cache store {_name(self.store)} stayed locked for "
                        f"{self.retry_for:g} s; a value of {job.actor.kind} {job.actor.name!r} "
                        f"was not written ({error})"
                    )
                    self.dropped += 1
                    done = True
                    if not self._expiry_logged:  # once per streak, not per value
                        self._expiry_logged = True
                        logger.warning(
                            "%s; values whose store stays locked that long are dropped (their "
                            "calls run again next time)",
                            report_error,
                        )
            else:
                if error is None:
                    self._expiry_logged = False
                report_error = error
                if error is not None:
                    self.dropped += 1
                self._pause = _FIRST_PAUSE
                self._next_write = 0.0
                done = True
            if done and self._writes.get(job.key) is job:
                del self._writes[job.key]
        if done:
            job._finish()
        self._report("write to", job.actor, report_error)


def _name(store: Any) -> str:
    return str(getattr(store, "path", None) or type(store).__name__)
