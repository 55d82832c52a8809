"""A clean stop on Ctrl-C: ``rh_agents.run(main())`` in place of ``asyncio.run(main())``.

::

    import rh_agents
    from rh_agents.recovery import Recovery

    async def main() -> None:
        recovery = Recovery(resume="auto")
        async with ExecutionState(run_id="digest", recovery=recovery) as state:
            ...

    if __name__ == "__main__":
        rh_agents.run(main())

The first Ctrl-C (SIGINT) stops the run gracefully: the main task is cancelled, so running
members are cancelled and members that never started are closed, the printers end with an
"interrupted" summary (what finished, what was cancelled, what never started; cancelled
members are not failures), the store marks the run ``interrupted`` and says how to resume it,
and the program exits with status 130 and no traceback. A second Ctrl-C, while that cleanup
runs, exits at once (status 130; the run then stays ``running`` in the store, as after a
crash, and resumes the same way).

Whether a cancellation comes from Ctrl-C is known through ``interrupt_requested()``: the state
and the printers ask it when something ends by a cancellation, to tell an interruption from a
failure. It is process-wide on purpose (a signal is); ``run`` clears it when it starts and when
it returns.

The handler is a plain ``signal.signal`` handler, not the event loop's: it runs even while a
handler keeps the loop busy (a blocking call, CPU work), so a second Ctrl-C always gets out.
It is installed only in the main thread (the only one that receives signals); elsewhere ``run``
is ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, TypeVar

from rh_agents.errors import ConfigurationError

__all__ = ["INTERRUPTED_EXIT_CODE", "interrupt_requested", "run"]

T = TypeVar("T")

# What shells report for a program ended by SIGINT (128 + 2).
INTERRUPTED_EXIT_CODE = 130

_requested = False


def interrupt_requested() -> bool:
    """Whether Ctrl-C asked the program run by ``rh_agents.run`` to stop."""
    return _requested


def run(
    main: Coroutine[Any, Any, T],
    *,
    debug: bool | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run ``main`` to completion, stopping cleanly on Ctrl-C (see the module docstring).

    Returns what ``main`` returns. After an interruption it raises ``SystemExit(130)``
    instead, once ``main`` has finished its cleanup: a script ends with status 130 and no
    traceback. (A ``main`` that catches the cancellation and returns a value anyway has that
    value returned, as ``asyncio.Runner`` does; the run is still stored as interrupted.)
    ``debug`` and ``loop_factory`` are ``asyncio.Runner``'s (``loop_factory=
    uvloop.new_event_loop``, say).
    """
    if not inspect.iscoroutine(main):
        raise ConfigurationError(
            f"rh_agents.run needs a coroutine, such as main(); got {type(main).__name__}"
        )
    problem = None
    if loop_factory is not None and not callable(loop_factory):
        problem = (
            "rh_agents.run's loop_factory must be a function that makes an event loop "
            f"(uvloop.new_event_loop), got {loop_factory!r:.60}"
        )
    else:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running here: the usual case
        else:
            problem = (
                "rh_agents.run was called inside a running event loop (a notebook, or an "
                "async function): there, await the coroutine instead"
            )
    if problem is not None:
        main.close()  # never run: no "coroutine was never awaited" warning
        raise ConfigurationError(problem)
    global _requested
    _requested = False
    try:
        with asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
            loop = runner.get_loop()
            task = loop.create_task(main)

            def cancel() -> None:
                task.cancel("interrupted (Ctrl-C)")

            def on_sigint(signum: int, frame: FrameType | None) -> None:
                global _requested
                if _requested:
                    # The second Ctrl-C: the user does not want to wait for the cleanup.
                    try:
                        sys.stderr.write("\ninterrupted again: exiting now\n")
                        sys.stderr.flush()
                    finally:
                        os._exit(INTERRUPTED_EXIT_CODE)
                _requested = True
                # Through the loop, not from inside whatever the signal interrupted.
                loop.call_soon_threadsafe(cancel)

            previous = _install(on_sigint)
            try:
                result: T = runner.run(_wait_for(task))
                return result
            except asyncio.CancelledError:
                if _requested:
                    raise SystemExit(INTERRUPTED_EXIT_CODE) from None
                raise
            except (SystemExit, KeyboardInterrupt):
                # ``main`` raised it (``sys.exit()``, or rich's console on a closed pipe): the
                # loop lets it through at once, leaving ``task`` with an exception nobody read,
                # which asyncio would report with a traceback. It is read here, where it goes on.
                if task.done() and not task.cancelled():
                    task.exception()
                raise
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
    finally:
        _requested = False


async def _wait_for(task: asyncio.Task[T]) -> T:
    # ``Runner.run`` takes a coroutine, and the signal handler needs the task before it runs.
    return await task


def _install(handler: Callable[[int, FrameType | None], None]) -> Any:
    """Install ``handler`` for SIGINT; the handler it replaces (``None``: not installed,
    outside the main thread, where signals are never delivered)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):
        return None
    # A handler installed from C, which Python cannot name, is put back as the default.
    return previous if previous is not None else signal.SIG_DFL
