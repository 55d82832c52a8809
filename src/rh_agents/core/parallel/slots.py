"""Slots: ``SlotPool`` for the global worker limit, ``MemberSlot`` for what a member holds.

Unlike ``asyncio.Semaphore``, a released ``SlotPool`` slot is handed directly to the oldest
waiter, so a task that releases and immediately re-acquires cannot overtake tasks already
waiting. A ``MemberSlot`` lets a running member lend its slots back while it only waits (a
retry backoff, its own nested group) and reclaim them before it works again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from rh_agents.errors import ConfigurationError

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager

__all__ = ["MemberSlot", "SlotPool"]


class SlotPool:
    """At most ``limit`` holders at once::

    pool = SlotPool(10)
    await pool.acquire()
    try:
        ...
    finally:
        pool.release()
    """

    __slots__ = ("_in_use", "_waiters", "high_water", "limit")

    def __init__(self, limit: int) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ConfigurationError(f"a worker limit must be an int >= 1, got {limit!r}")
        self.limit = limit
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.high_water = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        if self._in_use < self.limit and not self._waiters:
            self._in_use += 1
            if self._in_use > self.high_water:
                self.high_water = self._in_use
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        # Hand the slot straight to the oldest live waiter; in_use stays the same.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1
        assert self._in_use >= 0, "SlotPool released more often than acquired"


class MemberSlot:
    """The slots a running member holds: one of its group, maybe one of the global limit.

    A member can lend them back while it only waits (a retry backoff, a nested group) and
    reclaim them afterwards, so waiting never holds capacity and nested groups cannot
    deadlock on the global limit.
    """

    __slots__ = ("global_held", "manager")

    def __init__(self, manager: ParallelExecutionManager[Any]) -> None:
        self.manager = manager
        self.global_held = False

    def lend_global(self) -> bool:
        pool = self.manager._state.global_slots
        if pool is None or not self.global_held:
            return False
        self.global_held = False
        pool.release()
        return True

    async def reclaim_global(self) -> None:
        pool = self.manager._state.global_slots
        if pool is not None and not self.global_held:
            await pool.acquire()
            self.global_held = True

    def lend(self) -> None:
        """Give back the group slot (and the global one) while this member only waits."""
        self.lend_global()
        self.manager._lend_slot()

    async def reclaim(self) -> None:
        """Take the slots back before doing work again."""
        await self.manager._reclaim_slot()
        await self.reclaim_global()
