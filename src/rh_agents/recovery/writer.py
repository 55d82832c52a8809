"""``CheckpointWriter``: a run's one writer thread, so that store waits never block the loop.

::

    writer = CheckpointWriter(backend, "nightly")
    job = writer.submit(records)             # written by the thread, batches in order
    if not job.wait(0.05):                   # a short blocking wait on the loop's thread ...
        job.when_done(loop, settle)          # ... then the loop goes on; settle(job) comes later
    await job.wait_async(30.0)               # or wait without blocking the loop
    writer.call(lease.release)               # anything else, after what is queued
    writer.finish()                          # the thread ends once the queue is empty
    writer.stop()                            # the same, but a busy store is no longer waited for

One thread per ``Recovery``, started at its first write, so a run has exactly one writer and
its batches are written in the order they were submitted. A write that finds the store locked
by another process (SQLite's ``SQLITE_BUSY`` / ``SQLITE_LOCKED``, once the backend's own busy
wait gave up) is tried again by the thread, with a growing pause, until it succeeds or the
writer is stopped; any other failure ends the job with its ``error`` (the caller keeps the
records and decides). The thread is a daemon: a store that stays locked never holds the
process at exit. A run that ends while the store is still locked (``Recovery.close`` gave up
waiting) hands its last writes and its lease's release to the thread and ``finish``es it:
they are made once the store frees, while the process lives.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rh_agents.errors import RecoveryError
from rh_agents.recovery.backend import StateBackend
from rh_agents.recovery.records import CheckpointRecord, RunStatus

__all__ = ["CheckpointWriter", "WriteJob", "is_busy", "store_name"]

logger = logging.getLogger("rh_agents.recovery")

_FIRST_PAUSE = 0.01
_LONGEST_PAUSE = 0.5

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the store is locked by someone else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.OperationalError):
            code = getattr(current, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in _BUSY_CODES:
                return True
            if "database is locked" in str(current) or "database is busy" in str(current):
                return True
        current = current.__cause__ or current.__context__
    return False


def store_name(backend: StateBackend) -> str:
    """What to call ``backend`` in a message: its file or folder."""
    for attribute in ("path", "directory"):
        where = getattr(backend, attribute, None)
        if where is not None:
            return str(where)
    return type(backend).__name__


class WriteJob:
    """One write (a batch of checkpoints and maybe the run's status) or one call.

    Its outcome is ``error`` (``None``: done). Owned by the writer thread until done; then
    read-only.
    """

    __slots__ = ("_callbacks", "_done", "_finished", "_fn", "_lock", "error", "records", "status")

    def __init__(
        self,
        records: Sequence[CheckpointRecord] = (),
        status: RunStatus | None = None,
        fn: Callable[[], Any] | None = None,
    ) -> None:
        self.records = list(records)
        self.status = status
        self._fn = fn
        self.error: BaseException | None = None
        # A lock held until the job is done (cheaper to wait on than a threading.Event, and
        # an every-event run waits on one per event).
        self._done = threading.Lock()
        self._done.acquire()
        self._finished = False
        self._lock = threading.Lock()
        self._callbacks: list[tuple[asyncio.AbstractEventLoop, Callable[[WriteJob], Any]]] = []

    @property
    def done(self) -> bool:
        return self._finished

    def wait(self, timeout: float | None) -> bool:
        """Block this thread until the job is done, at most ``timeout`` seconds."""
        if self._finished:
            return True
        if not self._done.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return self._finished
        self._done.release()  # for the next one waiting
        return True

    def when_done(self, loop: asyncio.AbstractEventLoop, fn: Callable[[WriteJob], Any]) -> None:
        """Call ``fn(job)`` on ``loop``'s thread once the job is done (soon, if it is)."""
        with self._lock:
            if not self._finished:
                self._callbacks.append((loop, fn))
                return
        loop.call_soon(fn, self)

    async def wait_async(self, seconds: float | None) -> bool:
        """Wait (without blocking the loop) until the job is done, at most ``seconds``."""
        if self._finished:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake(_job: WriteJob) -> None:
            if not future.done():
                future.set_result(None)

        self.when_done(loop, wake)
        await asyncio.wait((future,), timeout=seconds)
        return self._finished

    def _finish(self) -> None:
        """Mark the job done and schedule its callbacks (the writer thread)."""
        with self._lock:
            self._finished = True
            self._done.release()
            callbacks, self._callbacks = self._callbacks, []
        for loop, fn in callbacks:
            try:
                loop.call_soon_threadsafe(fn, self)
            except RuntimeError:
                pass  # that loop is closed: nobody waits any more


class CheckpointWriter:
    """The writer thread of one run; see the module docstring."""

    def __init__(self, backend: StateBackend, run_id: str) -> None:
        self.backend = backend
        self.run_id = run_id
        self._queue: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False  # finish() or stop(): no more jobs are taken
        self._start_lock = threading.Lock()

    def submit(
        self, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> WriteJob:
        """Queue a write of ``records`` (and ``status``); done after every earlier job."""
        return self._put(WriteJob(records, status))

    def call(self, fn: Callable[[], Any]) -> WriteJob:
        """Queue ``fn()`` to run on the writer thread after every earlier job."""
        return self._put(WriteJob(fn=fn))

    def finish(self) -> None:
        """Take no more jobs; the thread ends once it has run what is queued (a busy store
        still waited for)."""
        self._closed = True
        self._queue.put(None)

    def stop(self) -> None:
        """No retries from now on (a busy store fails at once); the thread ends once it has
        run what is queued."""
        self._stopping.set()
        self.finish()

    def _put(self, job: WriteJob) -> WriteJob:
        if self._closed:
            job.error = RecoveryError(
                f"the checkpoint writer of run {self.run_id!r} was stopped; nothing more is "
                f"written to {store_name(self.backend)}"
            )
            job._finish()
            return job
        self._queue.put(job)
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop,
                        name=f"rh_agents-checkpoints:{self.run_id}",
                        daemon=True,
                    )
                    self._thread.start()
        return job

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: WriteJob) -> None:
        try:
            if job._fn is not None:
                job._fn()
            else:
                self._save(job)
        except BaseException as exc:  # the job's outcome; the thread goes on
            job.error = exc
        finally:
            job._finish()

    def _save(self, job: WriteJob) -> None:
        pause = _FIRST_PAUSE
        waiting = False
        while True:
            try:
                self.backend.save(self.run_id, job.records, job.status)
            except Exception as exc:
                if not is_busy(exc) or self._stopping.is_set():
                    raise
                if not waiting:
                    waiting = True
                    logger.warning(
                        "state store %s is locked by another process (%s); %d checkpoint(s) "
                        "of run %r wait in memory and are written once it is free",
                        store_name(self.backend),
                        exc,
                        len(job.records),
                        self.run_id,
                    )
                self._stopping.wait(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
                continue
            if waiting:
                logger.info("state store %s is free again", store_name(self.backend))
            return
