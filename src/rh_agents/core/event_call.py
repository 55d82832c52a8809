"""``EventCall``: one call of an event, as a value that knows what it calls.

``event(input, context, state)`` returns an ``EventCall``. It is awaitable like the coroutine it
stands for (and is one, for ``asyncio``: ``create_task``, ``gather`` and ``wait_for`` take it),
but it also says what it calls, so a group, its instant lane and the policy runner read
attributes rather than a coroutine's frame::

    call = summarize(doc, "", state)
    call.event.actor.name, call.input, call.context, call.state
    result = await call                  # runs it, once

Nothing runs until it is awaited (or sent into by a task). A call that is dropped without
ever being awaited warns, as a coroutine does ("was never awaited", an
``UnawaitedCallWarning``, with a ``RunWarning`` on the state's bus); ``close()`` drops it
quietly. Awaiting it a second time is an error, as it is for a coroutine.
"""

from __future__ import annotations

import warnings
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rh_agents.core.advice import publish_soon, run_warning
from rh_agents.errors import UnawaitedCallWarning

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.results import ExecutionResult

__all__ = ["EventCall"]

OutT = TypeVar("OutT")

# What ``_running`` holds once the call was closed without having started.
_CLOSED: Any = object()


class EventCall(Coroutine[Any, Any, "ExecutionResult[OutT]"], Generic[OutT]):
    """A call of ``event`` with its arguments; see the module docstring."""

    __slots__ = ("_running", "context", "event", "input", "state")

    def __init__(
        self, event: ExecutionEvent[OutT], input: Any, context: str, state: ExecutionState
    ) -> None:
        self.event = event
        self.input = input
        self.context = context
        self.state = state
        # The coroutine running the call, made when it starts (or _CLOSED).
        self._running: Coroutine[Any, Any, ExecutionResult[OutT]] | None = None

    @property
    def started(self) -> bool:
        """Whether the call has started (or was closed): it can no longer be awaited."""
        return self._running is not None

    def _start(self) -> Coroutine[Any, Any, ExecutionResult[OutT]]:
        if self._running is not None:
            raise RuntimeError(
                f"this call of {self.event.actor.name!r} was already awaited; call the event "
                "again for another run"
            )
        coro = self._running = self.event._invoke(self.input, self.context, self.state)
        return coro

    def __await__(self) -> Generator[Any, None, ExecutionResult[OutT]]:
        return self._start().__await__()

    def send(self, value: Any) -> Any:
        running = self._running
        if running is None:
            running = self._start()
        elif running is _CLOSED:
            raise RuntimeError("cannot reuse an event call that was closed")
        return running.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        running = self._running
        if running is None:
            running = self._start()
        elif running is _CLOSED:
            raise typ if val is None else val
        if val is None and tb is None:
            return running.throw(typ)
        return running.throw(typ, val, tb)  # the three-argument form, for old callers

    def close(self) -> None:
        """Drop the call: a started one is closed, one never started never will be."""
        running = self._running
        if running is None:
            self._running = _CLOSED
        elif running is not _CLOSED:
            running.close()

    def __del__(self) -> None:
        if self._running is None:
            # As for a coroutine: a call made and dropped is almost always a missing await.
            message = f"a call of {self.event.actor.name!r} was never awaited, so it never ran"
            hint = "Await it, or add it to a group (p.add(call))"
            state = self.state
            publish_soon(
                state.event_bus,
                run_warning(
                    UnawaitedCallWarning,
                    message,
                    hint,
                    address=self.event.tag or self.event.actor.name,
                    timestamp=state.clock.now(),
                ),
            )
            warnings.warn(
                f"{message} ({hint.lower()})",
                UnawaitedCallWarning,
                stacklevel=1,
                source=self,
            )

    def __repr__(self) -> str:
        return f"<EventCall {self.event.actor.name!r} input={self.input!r:.60}>"
