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
  without waiting for an abandoned handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rh_agents.errors import ConfigurationError

__all__ = ["DEFAULT_MAX_THREADS", "ThreadRunner"]

# The standard library's own default for a thread pool: enough for handlers that wait on
# I/O, few enough that a machine is never flooded.
DEFAULT_MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)


class ThreadRunner:
    """Runs synchronous functions in at most ``limit`` worker threads (see the module)."""

    __slots__ = ("_executor", "limit")

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            limit = DEFAULT_MAX_THREADS
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"max_threads must be an int >= 1, got {limit!r}")
        self.limit = limit
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread, in a copy of the caller's context.

        Should ``fn`` return an awaitable (a plain function returning a coroutine), it is
        awaited here, on the loop.
        """
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(
                self.limit, thread_name_prefix="rh-agents-handler"
            )
        context = contextvars.copy_context()
        future = executor.submit(context.run, fn, *args)
        # Cancelling the wrapper cancels a call still queued; a running one is abandoned.
        value = await asyncio.wrap_future(future)
        if inspect.isawaitable(value):
            return await value
        return value

    def shutdown(self) -> None:
        """Let the threads go once their handlers end (no wait: see the module docstring)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
