"""``ReaderWaits``: the tasks waiting to read a group, and what wakes them.

Three kinds of wait, each a future owned here: a task waiting for the whole group
(``gather()``, leaving the block; one future each, so each can be cancelled on its own),
stream readers waiting for the next result (one future shared by every reader), and a worker
waiting for a stream reader to make room (a group that keeps no results bounds what is
unread)::

    waits = ReaderWaits()
    await waits.next_result()      # a stream reader...
    waits.result_landed()          # ...woken by a worker as a member finishes

Invariants: a waiter is woken at most once; the shared futures are awaited shielded (a
reader's cancellation never cancels the future the other readers wait on: what it does to the
group, a stop, is decided in stream.py) and replaced once done, so a wait never sees an old
wake.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["ReaderStatistics", "ReaderWaits"]


@dataclass(frozen=True, slots=True)
class ReaderStatistics:
    """A frozen snapshot of the waits: tasks waiting for the whole group, whether stream
    readers wait for a result, whether a worker waits for a reader to make room."""

    waiting_for_end: int
    waiting_for_result: bool
    waiting_for_room: bool


class ReaderWaits:
    """The futures readers of one group wait on; see the module docstring."""

    __slots__ = ("_ends", "_room", "progress")

    def __init__(self) -> None:
        self._ends: list[asyncio.Future[None]] = []
        # The future stream readers wait on, or None: read per member (a plain field, not a
        # property, so that a group nobody streams pays one attribute read for it).
        self.progress: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    # --- the whole group ----------------------------------------------------------------

    def end(self) -> asyncio.Future[None]:
        """A new future of the caller's own, set once every member has its result."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ends.append(waiter)
        return waiter

    def group_ended(self) -> None:
        """Wake every task waiting for the whole group."""
        waiters, self._ends = self._ends, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- stream readers -------------------------------------------------------------------

    def next_result(self) -> asyncio.Future[None]:
        """The shared future set when the next result lands (await it shielded)."""
        progress = self.progress
        if progress is None or progress.done():
            progress = self.progress = asyncio.get_running_loop().create_future()
        return progress

    def result_landed(self) -> None:
        """Wake the stream readers: a result landed, or nothing more will come."""
        progress = self.progress
        if progress is not None:
            self.progress = None
            if not progress.done():
                progress.set_result(None)

    # --- room for unread results ------------------------------------------------------------

    def room(self) -> asyncio.Future[None]:
        """The shared future set when a reader takes an unread result (await it shielded)."""
        room = self._room
        if room is None or room.done():
            room = self._room = asyncio.get_running_loop().create_future()
        return room

    def result_taken(self) -> None:
        """A reader took an unread result: a worker waiting for room may go on."""
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def statistics(self) -> ReaderStatistics:
        """A frozen snapshot of who waits."""
        progress, room = self.progress, self._room
        return ReaderStatistics(
            waiting_for_end=sum(1 for waiter in self._ends if not waiter.done()),
            waiting_for_result=progress is not None and not progress.done(),
            waiting_for_room=room is not None and not room.done(),
        )
