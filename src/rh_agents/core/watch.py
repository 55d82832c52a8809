"""``RunWatch``: a run's calls and members, logged for an observer that reads them later.

A bus subscriber gets one record per call and per member, built and delivered while the run
runs; for members that do little, that is most of what the run costs. An observer that only
needs to show the run now and then (the run viewer) attaches a ``RunWatch`` instead: calls
and groups append plain values to its ``log`` (no record is built, nothing is delivered) and
register the groups they open, and the observer reads the log and the open groups on its own
time::

    watch = RunWatch.of(state)            # the state's watch, made if it has none
    watch.readers.append(take)            # take(log, inputs) gets every entry drained from now on
    ...
    watch.drain()                         # (the observer, when it wants to know) take() runs
    for group in watch.groups.values():   # groups open now: their counts and running members
        ...

The log is one flat list: each entry is its kind followed by its fields, by position, all
plain values (strings, numbers, ``None``). No object is made per entry that the garbage
collector tracks: entries kept as tuples, or holding the run's objects, made the run's
collections more frequent and longer (a group of 10,000 ``ExecutionEvent`` members took
1.2x to 1.4x as long, all of it in the collector). Entries by their kind:

- ``CALL_STARTED``, 7 fields: ``address, group_id, index, actor, actor_kind, timestamp,
  detail_chars``, as an event call starts; its input is appended to ``inputs`` at the same
  time (one item per ``CALL_STARTED`` entry, in the same order);
- ``CALL_ENDED``, 13 fields: ``address, group_id, index, actor, actor_kind, timestamp,
  execution_time, attempts, status, error, error_type, source, detail_chars``, as it ends
  (``status`` a ``ResultStatus`` value; ``source`` ``run``, ``cache``, ``replay`` for a
  result from a stored run republished as completed, or ``replayed`` for one announced as a
  replay, as the bus tells them; the result itself is in ``state.history`` at ``address``);
- ``MEMBER_FINISHED``, 11 fields: ``address, group_id, index, name, started, enqueued,
  execution_time, attempts, status, error, ended``, as a group member's one result lands:
  ``started`` is ``None`` for a member that never ran, and then only ``ended`` is given (its
  end is ``started + execution_time`` otherwise, its queue wait ``started - enqueued``). A
  member running now is not logged: it is in its group's pool (``running_members``).

Invariants, while a watch is attached: every call logged as started is logged as ended (its
end may come in a later drain; a call that started before the watch has only its end); a
member is logged once, after its result landed; ``groups`` holds exactly the groups that are
open, those opened before the watch included (it is the state's ``open_groups``). A watch
detached (``detach``) and a new one attached later starts a new log: what happened in between
is in no log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from rh_agents.core.results import ExecutionResult, describe_error

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member

__all__ = ["CALL_ENDED", "CALL_STARTED", "MEMBER_FINISHED", "RunWatch", "call_ended"]

CALL_STARTED = 1
CALL_ENDED = 2
MEMBER_FINISHED = 3

Reader = Callable[[list[Any], list[Any]], None]


class RunWatch:
    """One run's log of calls and members, and its open groups; see the module docstring."""

    __slots__ = ("groups", "inputs", "log", "on_group", "readers")

    def __init__(
        self, groups: MutableMapping[str, ParallelExecutionManager[Any]] | None = None
    ) -> None:
        self.log: list[Any] = []  # flat: kind, fields, kind, fields...
        self.inputs: list[Any] = []  # the input of each CALL_STARTED entry, in order
        # The groups open now, by id: the state's own ``open_groups`` (it keeps them whether
        # or not it is watched, so that a watch begun mid-run sees the groups already open).
        self.groups: MutableMapping[str, ParallelExecutionManager[Any]] = (
            groups if groups is not None else {}
        )
        # Called once, then forgotten, when a group opens next (on the run's event loop): an
        # observer attached from outside any loop starts its timers there.
        self.on_group: list[Callable[[], None]] = []
        # Called with each drained batch of entries and their inputs, in order (every reader
        # gets every entry).
        self.readers: list[Reader] = []

    @classmethod
    def of(cls, state: ExecutionState) -> RunWatch:
        """``state``'s watch, attached to it first if it has none."""
        watch = state.watch
        if watch is None:
            watch = state.watch = cls(state.open_groups)
        return watch

    def group_opened(self) -> None:
        """A group opened (the group calls it when ``on_group`` has callbacks)."""
        waiting, self.on_group = self.on_group, []
        for callback in waiting:
            callback()

    def drain(self) -> None:
        """Hand the entries logged since the last drain (and their inputs) to every reader."""
        log, inputs = self.log, self.inputs
        if not log:
            return
        self.log = []
        self.inputs = []
        for reader in list(self.readers):
            reader(log, inputs)

    def detach(self, reader: Reader, state: ExecutionState) -> None:
        """Stop handing entries to ``reader``; the last reader gone, ``state`` is no longer
        watched (its calls and members log nothing)."""
        if reader in self.readers:
            self.readers.remove(reader)
        if not self.readers and state.watch is self:
            state.watch = None
            self.log = []
            self.inputs = []

    def running_members(self) -> Iterator[tuple[str, Member]]:
        """``(group_id, member)`` for each member of an open group running now."""
        for group_id, group in list(self.groups.items()):
            for member in list(group._pool.running.values()):
                if member.result is None:  # (its worker may not have moved on yet)
                    yield group_id, member

    def progress(self, group_id: str) -> tuple[int, int, int | None] | None:
        """An open group's members done and succeeded so far, and its total (``None`` while a
        ``map()`` input is still being read); ``None`` for a group not open."""
        group = self.groups.get(group_id)
        if group is None:
            return None
        tally = group._tally
        source = group._source
        total = None if source is not None and not source.exhausted else tally.total
        return tally.done, tally.succeeded, total


def call_ended(
    watch: RunWatch,
    address: str,
    group_id: str | None,
    index: int | None,
    actor: BaseActor,
    timestamp: float,
    result: ExecutionResult[Any] | BaseException,
    detail_chars: int,
    started: float | None = None,
    attempts: int = 1,
) -> None:
    """Log the end of a call: its ``result``, or the ``BaseException`` that ended it (a
    cancellation, a KeyboardInterrupt: ``started`` gives its duration, ``attempts`` the calls
    made)."""
    if isinstance(result, BaseException):
        cancelled = isinstance(result, asyncio.CancelledError)
        watch.log += (
            (CALL_ENDED, address, group_id, index, actor.name, actor.kind, timestamp,
             0.0 if started is None else timestamp - started, attempts,
             "cancelled" if cancelled else "failed",
             "cancelled" if cancelled else describe_error(result), type(result).__name__,
             "run", detail_chars)
        )  # fmt: skip
        return
    exc = result.exception
    watch.log += (
        (CALL_ENDED, address, group_id, index, actor.name, actor.kind, timestamp,
         result.execution_time, result.attempts, result.status._value_, result.error,
         None if exc is None else type(exc).__name__, result.source, detail_chars)
    )  # fmt: skip
