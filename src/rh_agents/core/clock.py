"""Injectable time: a clock for timestamps and durations, and a sleep for waits.

Tests pass a fake clock so that timing-dependent code runs instantly and deterministically::

    state = ExecutionState(clock=MyFakeClock())
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What rh_agents needs of time: a monotonic reading and an awaitable sleep."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (cancellable)."""
        ...


class SystemClock:
    """The real clock: ``time.perf_counter`` and ``asyncio.sleep``."""

    __slots__ = ()

    # The C function itself, not a method calling it: read several times per member.
    now = staticmethod(time.perf_counter)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
