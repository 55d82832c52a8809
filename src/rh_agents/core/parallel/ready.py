"""``ReadyQueue``: the members waiting for a worker, highest priority first, then by index.

Most members have the default priority and arrive in submission order, so they go to a plain
FIFO (O(1)); only members with a priority, or arriving out of index order (a dependent that
became ready late), go to a heap. ``pop`` compares the two heads, so the order is exactly
"priority, then submission index" either way::

    ready = ReadyQueue()
    ready.push(member)
    next_member = ready.pop()        # None when empty
"""

from __future__ import annotations

import heapq
from collections import deque

from rh_agents.core.parallel.member import Member

__all__ = ["ReadyQueue"]


class ReadyQueue:
    """Owned by one group's manager; see the module docstring."""

    __slots__ = ("_fifo", "_heap")

    def __init__(self) -> None:
        # Invariant: _fifo holds priority-0 members in increasing index order.
        self._fifo: deque[Member] = deque()
        self._heap: list[tuple[int, int, Member]] = []

    def push(self, member: Member) -> None:
        fifo = self._fifo
        if member.priority == 0 and (not fifo or fifo[-1].index < member.index):
            fifo.append(member)
        else:
            heapq.heappush(self._heap, (-member.priority, member.index, member))

    def pop(self) -> Member | None:
        heap, fifo = self._heap, self._fifo
        if heap:
            if fifo:
                top_priority, top_index, _ = heap[0]
                if (top_priority, top_index) < (0, fifo[0].index):
                    return heapq.heappop(heap)[2]
                return fifo.popleft()
            return heapq.heappop(heap)[2]
        return fifo.popleft() if fifo else None

    def drain(self) -> list[Member]:
        """Every waiting member (in no particular order), leaving the queue empty."""
        members = list(self._fifo)
        members.extend(entry[2] for entry in self._heap)
        self._fifo.clear()
        self._heap.clear()
        return members

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._fifo) or bool(self._heap)
