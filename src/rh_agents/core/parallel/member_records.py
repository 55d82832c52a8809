"""``MemberRecords``: a group's ``MemberStarted`` and ``MemberFinished`` records, batched.

A group of ten thousand members would publish twenty thousand records; this part builds
them only when a subscriber wants them, and publishes them in batches: starts and finishes
queue here in order, and the bus asks for the batch (``deferred_record``) at the event
loop's next turn, or just before anyone else's next record. A member that finishes without
ever letting the loop run is announced by its finish record alone::

    records = MemberRecords(group)
    records.started(member)                  # queued, not built yet
    records.finished(member, result)         # built now; replaces the start if nothing came between

Invariants: records of one group reach the bus in the order the members started and
finished; a ``MemberStarted`` is never published after its member's ``MemberFinished``; which
records anyone wants is read from the bus again whenever its version moves (``listen``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rh_agents.core.records import BusEvent, MemberFinished, MemberStarted

if TYPE_CHECKING:
    from rh_agents.core.bus import EventBus
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.results import ExecutionResult

__all__ = ["MemberRecords"]


class MemberRecords:
    """One group's member records on their way to the bus; see the module docstring."""

    __slots__ = ("_group", "batch", "bus", "bus_version", "finishes_wanted", "starts_wanted")

    def __init__(self, group: ParallelExecutionManager[Any]) -> None:
        self._group = group
        self.bus: EventBus = group.execution_state.event_bus
        # The bus's version when the two flags below were read: callers on the hot path
        # compare it with the bus's own (``if records.bus.version != records.bus_version:
        # records.listen()``) rather than call a method per member.
        self.bus_version = -1
        self.starts_wanted = False
        self.finishes_wanted = False
        # In order: members whose start is announced once they wait, and finish records.
        # (A worker appends a start to it inline, as ``started`` does: once per member.)
        self.batch: list[Member | MemberFinished] = []

    def listen(self) -> None:
        """Read again which member records would reach anyone (the bus's version moved)."""
        bus = self.bus
        self.bus_version = bus.version
        self.starts_wanted = bus.wants(MemberStarted)
        self.finishes_wanted = bus.wants(MemberFinished)

    def started(self, member: Member) -> None:
        """Queue ``member``'s ``MemberStarted`` (call only if ``starts_wanted``): published
        once the member waits, or publishes anything."""
        batch = self.batch
        if not batch:
            self.bus.defer(self, self)
        batch.append(member)

    def finished(self, member: Member, result: ExecutionResult[Any]) -> None:
        """Queue ``member``'s ``MemberFinished`` (call only if ``finishes_wanted``), with the
        group's counts right after it."""
        group = self._group
        tally = group._tally
        batch = self.batch
        if not batch:
            self.bus.defer(self, self)
        elif batch[-1] is member:
            # It finished without waiting, and nothing was queued since its start: its
            # finish record takes the place of its start, which would never be published.
            batch.pop()
        started = member.started
        group_id = group.group_id
        index = member.index
        source = group._source
        batch.append(
            MemberFinished.of_member(
                group_id,
                index,
                member.address or f"{group_id}[{index}]",
                member.name,
                group._now(),
                result.status._value_,  # the plain str: Enum.value is a slow descriptor
                result.execution_time,
                result.error,
                tally.done,
                tally.succeeded,
                None if source is not None and not source.exhausted else tally.total,
                result.attempts,
                None if started is None else started - member.enqueued,
            )
        )

    def deferred_record(self, key: Any) -> list[BusEvent] | None:
        """The records queued since the last batch, in order (the bus asks; ``key`` is this
        object): a ``MemberFinished`` as it was made, a ``MemberStarted`` for each member
        started and not finished by now."""
        batch = self.batch
        if not batch:
            return None
        self.batch = []
        group = self._group
        records: list[BusEvent] = []
        append = records.append
        total: int | None = -1  # (read once, if a start is announced)
        for member in batch:
            if isinstance(member, MemberFinished):
                append(member)
                continue
            started = member.started
            if member.result is not None or started is None:
                continue  # finished without waiting: its finish record tells it all
            if total == -1:
                source = group._source
                total = None if source is not None and not source.exhausted else group._tally.total
            group_id = group.group_id
            append(
                MemberStarted.of_member(
                    group_id,
                    member.index,
                    member.address or f"{group_id}[{member.index}]",
                    member.name,
                    started,
                    started - member.enqueued,
                    total,
                )
            )
        return records
