"""An event loop on virtual time, for scenario tests that must be fast and exact.

``run_virtual(main)`` runs the coroutine function ``main`` in a fresh ``VirtualLoop``: its
``time()`` is a virtual clock that only moves when the loop would otherwise wait. Its selector
never blocks: asked to wait ``timeout`` seconds, it advances the clock by ``timeout`` and polls
with 0, so ``asyncio.sleep``, ``asyncio.timeout`` and ``asyncio.wait_for`` take no real time and
fire exactly when due. Asked to wait with no timeout at all (nothing ready, nothing scheduled:
every task waits for another) it raises ``Deadlock``. ``max_time`` and ``max_steps`` cap the
virtual time and the loop iterations, so a livelock fails clearly instead of spinning::

    async def main() -> float:
        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    assert run_virtual(main) == 3600.0        # at once

``stall_check`` (optional) is called each time the clock is about to move, with the new time;
it may raise to say that nothing should be waiting at that point (see the composition test).
"""

from __future__ import annotations

import asyncio
import os
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings

__all__ = [
    "SOAK",
    "Deadlock",
    "LoopClock",
    "TooLong",
    "VirtualLoop",
    "run_virtual",
    "scenario_settings",
]

T = TypeVar("T")

#: Set by ``make soak``: new scenarios each run, this many (or a share of it) per suite.
SOAK = "RH_SOAK_EXAMPLES" in os.environ


def scenario_settings(examples: int, soak_share: float = 1.0) -> settings:
    """Hypothesis settings of a scenario suite: ``examples`` in ``make test``; under ``make
    soak``, ``soak_share`` of ``RH_SOAK_EXAMPLES``."""
    if SOAK:
        examples = max(1, int(int(os.environ["RH_SOAK_EXAMPLES"]) * soak_share))
    return settings(
        max_examples=examples,
        deadline=None,
        # The suite runs the same scenarios each time (stable CI); the soak draws new ones
        # each run and keeps what failed in the example database, replayed first next time.
        derandomize=not SOAK,
        database=settings.default.database if SOAK and settings.default else None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # No "explain" phase: it traces every line, which on Python 3.11 turns seconds into
        # minutes.
        phases=[phase for phase in Phase if phase is not Phase.explain],
        print_blob=True,
        # The suite stops at the first bug and shrinks only that one (within the test's
        # timeout); the soak keeps going and reports each distinct failure.
        report_multiple_bugs=SOAK,
    )


# Loop steps allowed for cancelling what is left after a failed scenario.
_CLEANUP_STEPS = 10_000


class Deadlock(RuntimeError):
    """The loop had nothing to run and nothing scheduled while the main task still waited."""


class TooLong(RuntimeError):
    """The scenario passed its cap on virtual time or loop steps (a livelock or a hang)."""


class _VirtualSelector:
    """Wraps a real selector; ``select`` moves the virtual clock instead of blocking."""

    def __init__(self, loop_ref: list[VirtualLoop]) -> None:
        self._real = selectors.DefaultSelector()
        self._loop_ref = loop_ref

    def select(self, timeout: float | None = None) -> list[Any]:
        loop = self._loop_ref[0]
        loop.steps += 1
        if loop.steps > loop.max_steps:
            if not loop.lenient:
                raise TooLong(f"more than {loop.max_steps} loop steps (a livelock?)")
            if loop.steps > loop.max_steps + _CLEANUP_STEPS:
                raise TooLong("tasks still pending after cleanup")
        if timeout is None:
            if not loop.lenient:
                raise Deadlock(
                    f"deadlock at virtual t={loop.now:.6g}s: no task can run and no timer "
                    f"is scheduled, yet the scenario has not finished. {loop.describe()}"
                )
        elif timeout > 0:
            new = loop.now + timeout
            if new > loop.max_time and not loop.lenient:
                raise TooLong(f"virtual time passed {loop.max_time}s (a hang?)")
            if loop.stall_check is not None and not loop.lenient:
                loop.stall_check(new)
            loop.now = new
        return self._real.select(0)

    def __getattr__(self, name: str) -> Any:  # register, unregister, modify, get_map, close...
        return getattr(self._real, name)


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock is virtual (see the module docstring)."""

    def __init__(self, *, max_time: float = 1e6, max_steps: int = 1_000_000) -> None:
        ref: list[VirtualLoop] = []
        super().__init__(selector=_VirtualSelector(ref))  # type: ignore[arg-type]
        ref.append(self)
        self.now = 0.0
        self.steps = 0
        self.max_time = max_time
        self.max_steps = max_steps
        self.lenient = False  # while cleaning up after a failure: never raise
        self.stall_check: Callable[[float], None] | None = None
        self.describe: Callable[[], str] = lambda: ""  # what a Deadlock message adds
        self.errors: list[dict[str, Any]] = []
        self.set_exception_handler(lambda _loop, context: self.errors.append(context))

    def time(self) -> float:
        return self.now


class LoopClock:
    """A ``Clock`` (rh_agents.core.clock) on the running loop's time: virtual in a VirtualLoop.

    ``on_sleep(seconds)`` is entered around every sleep (the retry backoffs), as a context
    manager factory, so a test can see who waits.
    """

    def __init__(self, on_sleep: Callable[[float], Any] | None = None) -> None:
        self._on_sleep = on_sleep

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        if self._on_sleep is None:
            await asyncio.sleep(seconds)
            return
        with self._on_sleep(seconds):
            await asyncio.sleep(seconds)


def run_virtual(
    main: Callable[[VirtualLoop], Coroutine[Any, Any, T]],
    *,
    max_time: float = 1e6,
    max_steps: int = 1_000_000,
) -> T:
    """Run ``main(loop)`` to completion in a new ``VirtualLoop``, then close the loop.

    On any error (a ``Deadlock`` included) every task still pending is cancelled and given a
    bounded number of steps to end, so nothing leaks into the next scenario; then the error
    is raised.
    """
    loop = VirtualLoop(max_time=max_time, max_steps=max_steps)
    try:
        task = loop.create_task(main(loop))
        try:
            return loop.run_until_complete(task)
        except BaseException:
            _cancel_everything(loop)
            raise
    finally:
        try:
            loop.lenient = True
            loop.run_until_complete(loop.shutdown_asyncgens())
        except TooLong:
            pass
        finally:
            loop.close()


def _cancel_everything(loop: VirtualLoop) -> None:
    loop.lenient = True
    loop.steps = max(loop.steps, loop.max_steps)  # from now on, _CLEANUP_STEPS at most
    for _ in range(20):
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if not pending:
            return
        for t in pending:
            t.cancel()
        gathered = asyncio.gather(*pending, return_exceptions=True)
        stop = loop.call_later(1e6, gathered.cancel)
        try:
            loop.run_until_complete(gathered)
        except BaseException:
            pass
        finally:
            stop.cancel()
