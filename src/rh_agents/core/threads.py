"""Worker threads for synchronous handlers: ``ThreadRunner``, one per ``ExecutionState``.

An actor whose handler is a plain ``def`` (a synchronous SDK, a parser) runs it in a worker
thread, so the event loop goes on while it works::

    def parse(input: Page, context: str, state: ExecutionState) -> Parsed:   # no async
        return slow_parser(input.html)

    parse_tool = Tool(name="parse", input_model=Page, handler=parse)
    state = ExecutionState(max_threads=8)        # at most 8 handler threads at once

The call is otherwise the call of an async handler: the same records, the same retries and
timeouts, the same address. The handler sees the caller's context variables (the context is
copied into the thread), so ``current_frame(state)`` in it is the call's own frame.

Invariants:

- At most ``limit`` handlers run at once per state; more wait, in order, without a thread.
- A call that is cancelled (a timeout, a group's stop) before its thread starts never runs.
  One cancelled while its thread runs is abandoned: its caller gets the cancellation (a
  timeout reports the call timed out) at once, but a thread cannot be killed, so the handler
  goes on to its end in the background, and its thread counts against ``limit`` until then.
- The threads are made when first needed and let go by ``shutdown`` (``ExecutionState.close``)
  without waiting for an abandoned handler, which it reports (a warning on the ``rh_agents``
  logger). They are daemon threads, unlike ``concurrent.futures``' (which the interpreter
  joins at exit): a handler blocked for good must not keep the program from exiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from rh_agents.errors import ConfigurationError

__all__ = ["DEFAULT_MAX_THREADS", "ThreadRunner"]

logger = logging.getLogger("rh_agents")

# The standard library's own default for a thread pool: enough for handlers that wait on
# I/O, few enough that a machine is never flooded.
DEFAULT_MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)


_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _Pool:
    """At most ``limit`` daemon threads running submitted calls in order.

    Not ``ThreadPoolExecutor``: the interpreter joins its threads at exit, so one abandoned
    handler blocked for good (the very case a timeout abandons) would hang the program's exit.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for work, less the work already promised to them
        self.running = 0  # calls running now (the abandoned ones included)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._queue.put((future, fn, args))
            if self._idle:
                self._idle -= 1
            elif self._threads < self._limit:
                self._threads += 1
                threading.Thread(
                    target=self._work,
                    name=f"rh-agents-handler_{self._threads - 1}",
                    daemon=True,
                ).start()
        return future

    def _work(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:  # shutdown
                return
            future, fn, args = work
            if future.set_running_or_notify_cancel():
                with self._lock:
                    self.running += 1
                try:
                    value = fn(*args)
                except BaseException as exc:  # (the caller's to judge, as an async handler's)
                    future.set_exception(exc)
                else:
                    future.set_result(value)
                finally:
                    with self._lock:
                        self.running -= 1
                del work, future, fn, args  # (drop the call and its value before waiting)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> int:
        """Cancel the calls not started, let every thread go once its call ends; the number
        of calls still running (abandoned)."""
        with self._lock:
            while True:
                try:
                    work = self._queue.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
            for _ in range(self._threads):
                self._queue.put(None)
            self._threads = self._idle = 0
            return self.running


def _close_dropped(future: Future[Any]) -> None:
    """The result of an abandoned call arrived (in its thread): close it if a coroutine."""
    if future.cancelled() or future.exception() is not None:
        return
    value = future.result()
    if inspect.iscoroutine(value):
        value.close()


def _stop_iteration_guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with a ``StopIteration`` it raises turned into a ``RuntimeError``, as a
    coroutine's is (``next()`` on an empty iterator in a handler): asyncio cannot put a
    ``StopIteration`` into a future, which would then never resolve, its caller waiting
    for ever."""
    try:
        return fn(*args)
    except StopIteration as exc:
        name = getattr(fn, "__name__", None) or type(fn).__name__
        raise RuntimeError(f"{name} raised StopIteration") from exc


class ThreadRunner:
    """Runs synchronous functions in at most ``limit`` worker threads (see the module)."""

    __slots__ = ("_executor", "limit")

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            limit = DEFAULT_MAX_THREADS
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"max_threads must be an int >= 1, got {limit!r}")
        self.limit = limit
        self._executor: _Pool | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread, in a copy of the caller's context.

        Should ``fn`` return an awaitable (a plain function returning a coroutine), it is
        awaited here, on the loop.
        """
        executor = self._executor
        if executor is None:
            executor = self._executor = _Pool(self.limit)
        context = contextvars.copy_context()
        future = executor.submit(context.run, _stop_iteration_guarded, fn, *args)
        # Cancelling the wrapper cancels a call still queued; a running one is abandoned.
        try:
            value = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Nobody will await what an abandoned handler returns: a coroutine is closed
            # when it comes (no "never awaited" warning).
            future.add_done_callback(_close_dropped)
            raise
        if inspect.isawaitable(value):
            return await value
        return value

    def shutdown(self) -> None:
        """Let the threads go once their handlers end (no wait: see the module docstring)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        abandoned = executor.shutdown()
        if abandoned:
            logger.warning(
                "%d synchronous handler(s) abandoned by a timeout or a stop are still running "
                "in their threads; they are left to end in the background (a thread cannot be "
                "killed): give their blocking calls a timeout of their own",
                abandoned,
            )
