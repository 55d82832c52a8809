"""``ReadyQueue``: the members waiting for a worker, highest priority first, then by index.

Most members have the default priority and arrive in submission order, so they go to a plain
FIFO (O(1)); only members with a priority, or arriving out of index order (a dependent that
became ready late), go to a heap. ``pop`` compares the heads, so the order is exactly
"priority, then submission index" either way::

    ready = ReadyQueue()
    ready.push(member)
    next_member = ready.pop()        # None when empty

A coroutine or plain function added with no option but maybe a name (the common
``p.add(coro)``, ``p.add(lambda: call(x))`` and ``p.add("x", coro)``) waits in a lane of its
own, as itself, its index, the time it was added and its name: its ``Member`` is made only
when a worker takes it. A group of a hundred
thousand members then holds a hundred thousand coroutines while they wait, not also a hundred
thousand member objects for the garbage collector to walk.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

from rh_agents.core.parallel.member import Member

__all__ = ["ReadyQueue"]


class ReadyQueue:
    """Owned by one group's manager; see the module docstring."""

    __slots__ = ("_bare", "_bare_added", "_bare_index", "_bare_name", "_fifo", "_heap")

    def __init__(self) -> None:
        # Invariant: _fifo holds priority-0 members in increasing index order.
        self._fifo: deque[Member] = deque()
        self._heap: list[tuple[int, int, Member]] = []
        # Invariant: the bare lane is four deques in step (source, index, when added, name),
        # in increasing index order, every entry of priority 0.
        self._bare: deque[Any] = deque()  # coroutines and zero-argument functions
        self._bare_index: deque[int] = deque()
        self._bare_added: deque[float] = deque()
        self._bare_name: deque[str | None] = deque()

    def push(self, member: Member) -> None:
        fifo = self._fifo
        if member.priority == 0 and (not fifo or fifo[-1].index < member.index):
            fifo.append(member)
        else:
            heapq.heappush(self._heap, (-member.priority, member.index, member))

    def push_bare(self, source: Any, index: int, added: float, name: str | None = None) -> None:
        """A coroutine or function with no option but maybe a name, added at ``added`` as
        member ``index``."""
        self._bare.append(source)
        self._bare_index.append(index)
        self._bare_added.append(added)
        self._bare_name.append(name)

    def pop(self) -> Member | None:
        """The next member to run (its ``Member`` made now, if it waited bare)."""
        heap, fifo, bare = self._heap, self._fifo, self._bare
        if not heap and not fifo:
            return self._pop_bare() if bare else None  # the common case: bare members only
        # The smallest (-priority, index) of the three heads.
        best: tuple[int, int] | None = None
        source = ""
        if heap:
            best, source = (heap[0][0], heap[0][1]), "heap"
        if fifo and (best is None or (0, fifo[0].index) < best):
            best, source = (0, fifo[0].index), "fifo"
        if bare and (best is None or (0, self._bare_index[0]) < best):
            source = "bare"
        if source == "heap":
            return heapq.heappop(heap)[2]
        if source == "fifo":
            return fifo.popleft()
        return self._pop_bare()

    def _pop_bare(self) -> Member:
        member = Member(self._bare_index.popleft(), self._bare.popleft(), self._bare_name.popleft())
        member.enqueued = self._bare_added.popleft()
        return member

    def drain(self) -> list[Member]:
        """Every waiting member (in no particular order), leaving the queue empty."""
        members = list(self._fifo)
        members.extend(entry[2] for entry in self._heap)
        while self._bare:
            members.append(self._pop_bare())
        self._fifo.clear()
        self._heap.clear()
        return members

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap) + len(self._bare)

    def __bool__(self) -> bool:
        return bool(self._fifo or self._heap or self._bare)
