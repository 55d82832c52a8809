"""``LazySource``: the items of ``p.map()``, read only as workers free up.

Only workers pull, one item each time one is free, so at most ``max_workers`` items are in
flight whatever the length of the input::

    p.map(summarize, read_lines(path))      # a generator of a million lines is fine
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import copy_context
from typing import Any

__all__ = ["LazySource", "Pulled"]

Pulled = tuple[Callable[[Any], Awaitable[Any]], Any]  # (call, item) from the map() input


class LazySource:
    """Items of ``map()``, pulled one at a time by free workers (backpressure).

    Only workers pull, one item each time they are free, so at most ``max_workers`` items are
    in flight; an async iterator is read by one worker at a time. The input is read, and
    ``call`` called, in ``context``: the block's context variables as ``map()`` was called,
    one copy for the whole input (what it sets, it sees at its next step; no member sees it).
    """

    __slots__ = ("_lock", "async_items", "call", "context", "exhausted", "items")

    def __init__(
        self,
        call: Callable[[Any], Awaitable[Any]],
        items: Any = None,
        async_items: AsyncIterator[Any] | None = None,
    ) -> None:
        self.call = call
        self.items = items
        self.async_items = async_items
        self.exhausted = False
        self._lock: asyncio.Lock | None = None
        self.context = copy_context()

    async def next_item(self) -> Pulled | None:
        """The next ``(call, item)``, or ``None`` once the input is exhausted."""
        if self.exhausted:
            return None
        if self.async_items is None:
            try:
                return self.call, next(self.items)
            except StopIteration:
                self.exhausted = True
                return None
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.exhausted or self.async_items is None:
                return None
            try:
                return self.call, await anext(self.async_items)
            except StopAsyncIteration:
                self.exhausted = True
                return None

    async def aclose(self) -> None:
        """Close the input (a generator's ``finally`` runs now): it will never be read again."""
        items, self.async_items = self.async_items, None
        closer = getattr(items, "aclose", None)
        if closer is not None:
            await closer()
        sync_items, self.items = self.items, None
        sync_closer = getattr(sync_items, "close", None)
        if sync_closer is not None:
            sync_closer()
