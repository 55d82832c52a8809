"""``ManualClock``: a clock whose time only moves when told to, for instant, exact tests.

``sleep(s)`` advances the time by ``s`` at once (and lets other tasks run), so a retry backoff
of 30 seconds takes no real time; ``advance(s)`` moves time forward from outside::

    clock = ManualClock()
    state = ExecutionState(clock=clock)
    ...
    assert clock.sleeps == [0.5, 1.0]      # the backoff waits that happened
"""

from __future__ import annotations

import asyncio

__all__ = ["ManualClock"]


class ManualClock:
    """A ``Clock`` for tests; see the module docstring."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += max(0.0, seconds)
        await asyncio.sleep(0)  # still a suspension point, like a real sleep
