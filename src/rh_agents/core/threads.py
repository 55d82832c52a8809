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
  The waiting calls are handed to the threads by the event loop: a thread freed goes to the
  next one only once its caller has taken the outcome of the call it ran (a couple of loop
  turns later: ``after_outcome_taken``), so the calls a stop caused by that outcome
  cancels (``FAIL_FAST``, a quorum) never start.
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
import functools
import inspect
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from rh_agents.core.handing_over import after_outcome_taken
from rh_agents.core.results import Raised
from rh_agents.errors import ConfigurationError

__all__ = ["DEFAULT_MAX_THREADS", "ThreadRunner"]

logger = logging.getLogger("rh_agents")

# The standard library's own default for a thread pool: enough for handlers that wait on
# I/O, few enough that a machine is never flooded.
DEFAULT_MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)


# What a call is at: waiting for a thread (here, on the loop's side), handed to the threads,
# running in one, ended, or dropped (cancelled before a thread started it: it never runs).
_WAITING, _HANDED, _RUNNING, _ENDED, _DROPPED = range(5)


class _Call:
    """One call of ``fn(*args)``: made on ``loop`` by ``task``, whose ``future`` it settles."""

    __slots__ = ("args", "at", "fn", "future", "loop", "task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.future = future
        self.task = asyncio.current_task(loop)
        self.fn: Callable[..., Any] | None = fn
        self.args: tuple[Any, ...] | None = args
        self.at = _WAITING


class _Pool:
    """At most ``limit`` daemon threads running submitted calls in order.

    Not ``ThreadPoolExecutor``: the interpreter joins its threads at exit, so one abandoned
    handler blocked for good (the very case a timeout abandons) would hang the program's exit.

    The calls waiting for a thread wait here, on the loop's side, and are handed to the
    threads by the event loop, never by a thread that just ended a call: a thread is held
    until the loop has set the outcome of its call (``_finished``) and its caller has taken
    it (``after_outcome_taken``), and only then goes to the next call still wanted (one
    whose future was not cancelled meanwhile, by a group's stop say). The cost: a waiting
    call starts a couple of loop turns after a thread frees, later if the loop was busy (or
    blocked) meanwhile.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()  # to the threads
        self._waiting: deque[_Call] = deque()  # waiting for a thread (the dropped ones too)
        # Calls ended whose thread is not given back yet (see _release); a loop that closed
        # meanwhile never gives it back: submit takes those back (_reclaim).
        self._ending: set[_Call] = set()
        self._lock = threading.Lock()
        self._held = 0  # threads held by a call: handed to them, running, or in _ending
        self._threads = 0
        self._idle = 0  # threads waiting for work, less the work already promised to them
        self.running = 0  # calls running now (the abandoned ones included)

    def submit(self, call: _Call) -> None:
        """Hand ``call`` to a thread now, or have it wait (on ``call.loop``'s thread)."""
        with self._lock:
            if self._held >= self._limit and self._ending:
                self._reclaim()
            if self._held < self._limit and not self._waiting:
                self._hand_out(call)
            else:
                self._waiting.append(call)
                self._fill()

    def cancel(self, call: _Call) -> None:
        """``call``'s caller gave up: one not started never runs; one running is abandoned."""
        with self._lock:
            if call.at == _WAITING or call.at == _HANDED:
                # (One waiting stays in the queue until a thread frees: _fill skips it.)
                call.at = _DROPPED
                call.fn = call.args = None

    def _hand_out(self, call: _Call) -> None:
        """Give ``call`` a thread (the lock held)."""
        self._held += 1
        call.at = _HANDED
        self._queue.put(call)
        if self._idle:
            self._idle -= 1
        elif self._threads < self._limit:
            self._threads += 1
            threading.Thread(
                target=self._work,
                name=f"rh-agents-handler_{self._threads - 1}",
                daemon=True,
            ).start()

    def _fill(self) -> None:
        """Hand the waiting calls still wanted to the threads free (the lock held)."""
        waiting = self._waiting
        while waiting and self._held < self._limit:
            call = waiting.popleft()
            if call.at == _WAITING and not call.future.done() and not call.loop.is_closed():
                self._hand_out(call)
            else:  # its caller gave up (a timeout, a group's stop): it never runs
                call.at = _DROPPED
                call.fn = call.args = None

    def _reclaim(self) -> None:
        """Take back the threads of calls whose loop closed before giving them back (the
        lock held)."""
        for call in [call for call in self._ending if call.loop.is_closed()]:
            self._ending.discard(call)
            self._held -= 1

    def _work(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:  # shutdown
                return
            value: Any = None
            error: BaseException | None = None
            with self._lock:
                fn, args = call.fn, call.args
                run = call.at == _HANDED and fn is not None and args is not None
                if run:
                    call.at = _RUNNING
                    self.running += 1
            if run:
                assert fn is not None and args is not None
                try:
                    value = fn(*args)
                except BaseException as exc:  # (the caller's to judge, as an async handler's)
                    error = exc
            with self._lock:
                if run:
                    self.running -= 1
                    call.at = _ENDED
                call.fn = call.args = None
                self._ending.add(call)
                self._idle += 1  # (before the loop hears: the thread it frees is waiting)
            try:
                call.loop.call_soon_threadsafe(self._finished, call, value, error)
            except RuntimeError:  # the loop closed: nobody waits for the outcome
                _close_dropped(value)
                self._release(call)
            del call, fn, args, value, error  # (drop the call and its value before waiting)

    def _finished(self, call: _Call, value: Any, error: BaseException | None) -> None:
        """``call`` ended in its thread (on its loop): its outcome to its caller, and its
        thread to the next call once the caller took the outcome (``_release``)."""
        future = call.future
        if future.done():  # abandoned (or dropped): nobody awaits what it returned
            _close_dropped(value)
        elif isinstance(error, GeneratorExit):
            # Set as the future's exception, it would be thrown into the awaiting task's
            # outermost coroutine, which the interpreter takes as a close of every coroutine
            # awaiting below it: the handler's exception, its message, would never reach the
            # caller. Handed over as a value, it is raised where the call awaits (see run).
            future.set_result(Raised(error))
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
        after_outcome_taken(call.loop, call.task, future, functools.partial(self._release, call))

    def _release(self, call: _Call) -> None:
        """The thread ``call`` held goes to the next call still wanted."""
        with self._lock:
            if call in self._ending:  # (else taken back already: _reclaim)
                self._ending.discard(call)
                self._held -= 1
                self._fill()

    def shutdown(self) -> int:
        """Cancel the calls not started, let every thread go once its call ends; the number
        of calls still running (abandoned)."""
        with self._lock:
            dropped = [call for call in self._waiting if call.at == _WAITING]
            self._waiting.clear()
            while True:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                if call is not None and call.at == _HANDED:
                    dropped.append(call)
            for call in dropped:
                call.at = _DROPPED
                call.fn = call.args = None
            for _ in range(self._threads):
                self._queue.put(None)
            self._threads = self._idle = 0
            running = self.running
        for call in dropped:
            try:
                call.loop.call_soon_threadsafe(call.future.cancel)
            except RuntimeError:  # its loop closed: nobody waits for it
                pass
        return running


def _close_dropped(value: Any) -> None:
    """Nobody will await what an abandoned handler returned: a coroutine is closed (no
    "never awaited" warning)."""
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
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call = _Call(loop, loop.create_future(), context.run, (_stop_iteration_guarded, fn, *args))
        executor.submit(call)
        # Cancelled, a call still waiting for its thread never runs; a running one is
        # abandoned (what it returns is dropped: see _Pool._finished).
        try:
            value = await call.future
        except asyncio.CancelledError:
            executor.cancel(call)
            future = call.future
            if future.done() and not future.cancelled() and future.exception() is None:
                _close_dropped(future.result())  # (it came, but this caller left first)
            raise
        if type(value) is Raised:
            value.raise_again()
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
