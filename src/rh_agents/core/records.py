"""Typed records published on the event bus.

Every record is a small frozen dataclass with a ``kind`` string, so a subscriber can either
``match`` on the class or switch on ``record.kind``::

    def on_event(record: BusEvent) -> None:
        match record:
            case EventFailed(address=address, error=error):
                print("failed:", address, error)
            case GroupCompleted(name=name, succeeded=ok, total=total):
                print(f"{name}: {ok}/{total}")

Records are shared by every subscriber, so treat them as read-only. (They are not frozen
dataclasses on purpose: a frozen dataclass costs about four times as much to build, and a
group publishes one record per member.)

Records that happen inside a parallel group carry the group's id, the member's index and
``is_parallel=True``, however deep the event is nested inside the member.

The package builds its records with ``_placed`` (or ``_placed_in``, from a frame), which
gives a record its place in the tree: ``kind``, ``address``, ``timestamp``, ``group_id``,
``parallel_index`` and ``is_parallel``. That rule is written there only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

_new = object.__new__

__all__ = [
    "BusEvent",
    "CircuitStateChanged",
    "EventCompleted",
    "EventFailed",
    "EventReplayed",
    "EventRetrying",
    "EventStarted",
    "GroupCompleted",
    "GroupStarted",
    "MemberFinished",
    "MemberStarted",
    "RunInterrupted",
    "RunWarning",
    "is_member_call",
]


@dataclass(slots=True, kw_only=True)
class BusEvent:
    """Fields every record has. ``address`` is the execution-tree path of what it is about."""

    kind: str
    address: str
    timestamp: float
    group_id: str | None = None
    parallel_index: int | None = None
    is_parallel: bool = False

    @property
    def depth(self) -> int:
        """How deep in the execution tree (0 for a root-level event)."""
        return self.address.count("::")


# --- placing a record in the tree -----------------------------------------------------------

_Record = TypeVar("_Record", bound=BusEvent)


class _Place(Protocol):
    """Where a record happens: a ``Frame`` (``rh_agents.core.context``), or anything else
    with these three. A protocol rather than ``Frame`` itself: this module sits below
    ``context`` and imports nothing of the package."""

    @property
    def address(self) -> str: ...

    @property
    def group_id(self) -> str | None: ...

    @property
    def parallel_index(self) -> int | None: ...


# Each record class's ``kind``, read from its dataclass fields on its first record: a slots
# dataclass keeps no class attribute for a field's default.
_kinds: dict[type[BusEvent], str] = {}


def _kind_of(cls: type[BusEvent]) -> str:
    default = cls.__dataclass_fields__["kind"].default
    if not isinstance(default, str):
        raise TypeError(f"{cls.__name__} has no default kind: it cannot be placed")
    _kinds[cls] = default
    return default


def _placed(
    cls: type[_Record],
    address: str,
    timestamp: float,
    group_id: str | None,
    parallel_index: int | None,
    /,
) -> _Record:
    """A new record of ``cls`` placed in the tree: its ``kind`` (the class's), ``address``,
    ``timestamp``, ``group_id``, ``parallel_index`` and ``is_parallel`` (inside a group
    exactly when it has a group id). The caller sets the rest, every field of its own.

    The one place a record gets its place. Field by field and positional, not by keywords:
    records are built per call and per member, and keyword parsing costs more than the record.
    """
    record = _new(cls)
    try:
        record.kind = _kinds[cls]
    except KeyError:  # the class's first record
        record.kind = _kind_of(cls)
    record.address = address
    record.timestamp = timestamp
    record.group_id = group_id
    record.parallel_index = parallel_index
    record.is_parallel = group_id is not None
    return record


def _placed_in(cls: type[_Record], where: _Place, timestamp: float, /) -> _Record:
    """``_placed`` at ``where`` (a ``Frame``): a record published from inside it."""
    return _placed(cls, where.address, timestamp, where.group_id, where.parallel_index)


# --- actor events ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class EventStarted(BusEvent):
    """An ``ExecutionEvent`` began running its actor."""

    kind: str = "event.started"
    actor: str
    actor_kind: str
    detail: str = ""
    tag: str | None = None  # the event's tag, which stands for ``actor`` in the address


@dataclass(slots=True, kw_only=True)
class EventCompleted(BusEvent):
    """An ``ExecutionEvent`` finished successfully. ``source`` tells where the result came from."""

    kind: str = "event.completed"
    actor: str
    actor_kind: str
    execution_time: float
    detail: str = ""
    attempts: int = 1
    source: str = "run"  # "run", "cache" or "replay"
    tag: str | None = None


@dataclass(slots=True, kw_only=True)
class EventFailed(BusEvent):
    """An ``ExecutionEvent`` failed (or was cancelled: ``cancelled=True``)."""

    kind: str = "event.failed"
    actor: str
    actor_kind: str
    execution_time: float
    error: str
    error_type: str
    attempts: int = 1
    cancelled: bool = False
    tag: str | None = None


@dataclass(slots=True, kw_only=True)
class EventReplayed(BusEvent):
    """A resumed run answered an ``ExecutionEvent`` call from its checkpoint: the handler
    did not run (nothing below it ran either). Published instead of ``EventStarted`` and
    ``EventCompleted`` in the default replay mode (``replay="skip"``); ``replay="republish"``
    publishes ``EventCompleted(source="replay")`` instead. ``execution_time`` and
    ``attempts`` are the stored run's, for reference: no time was spent now."""

    kind: str = "event.replayed"
    actor: str
    actor_kind: str
    execution_time: float = 0.0
    attempts: int = 1
    tag: str | None = None


@dataclass(slots=True, kw_only=True)
class EventRetrying(BusEvent):
    """An attempt failed and another one will follow after ``delay`` seconds."""

    kind: str = "event.retrying"
    attempt: int
    delay: float
    error: str
    error_type: str


# --- group events ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class GroupStarted(BusEvent):
    """A parallel group opened. ``total`` grows as members are added (see ``MemberFinished``).
    ``quorum`` is the group's ``quorum=`` (``None`` without one)."""

    kind: str = "group.started"
    name: str
    total: int
    max_workers: int | None
    parent_group_id: str | None = None
    quorum: int | None = None


@dataclass(slots=True, kw_only=True)
class MemberStarted(BusEvent):
    """A member of a group took a worker and began to run.

    Published when the member first waits (or publishes a record of its own), with the time
    it started as ``timestamp``: a member that finishes without ever suspending publishes only
    its ``MemberFinished``, which carries the same timing (start = ``timestamp -
    execution_time``, and ``queue_wait``).

    ``total`` is the number of members added so far (``None`` while a lazy input is unread),
    so a display knows the group's size from the first member on.
    """

    kind: str = "group.member_started"
    name: str | None
    index: int
    queue_wait: float
    total: int | None = None

    @classmethod
    def of_member(
        cls,
        group_id: str,
        index: int,
        address: str,
        name: str | None,
        timestamp: float,
        queue_wait: float,
        total: int | None,
    ) -> MemberStarted:
        """The record for member ``index`` (at ``address``) of ``group_id``, built positionally.

        A group publishes one per member that waits; this skips keyword-argument parsing,
        which costs more than the record itself.
        """
        record = _placed(cls, address, timestamp, group_id, index)
        record.name = name
        record.index = index
        record.queue_wait = queue_wait
        record.total = total
        return record


@dataclass(slots=True, kw_only=True)
class MemberFinished(BusEvent):
    """A member of a group finished, with the group's counts right after it.

    ``status`` is one of ``ResultStatus``'s values. ``total`` is the number of members added
    so far (the final total is in ``GroupCompleted``; a lazy input's total is unknown, ``None``,
    until the input is exhausted). ``queue_wait`` is the time from ``add`` to the start
    (``None`` for a member that never started: skipped, or cancelled while it waited).
    """

    kind: str = "group.member_finished"
    name: str | None
    index: int
    status: str
    execution_time: float
    error: str | None
    done: int
    succeeded: int
    failed: int
    total: int | None
    attempts: int = 1
    queue_wait: float | None = None

    @classmethod
    def of_member(
        cls,
        group_id: str,
        index: int,
        address: str,
        name: str | None,
        timestamp: float,
        status: str,
        execution_time: float,
        error: str | None,
        done: int,
        succeeded: int,
        total: int | None,
        attempts: int,
        queue_wait: float | None,
    ) -> MemberFinished:
        """The record for member ``index`` (at ``address``) of ``group_id``, built
        positionally: a group publishes one per member."""
        record = _placed(cls, address, timestamp, group_id, index)
        record.name = name
        record.index = index
        record.status = status
        record.execution_time = execution_time
        record.error = error
        record.done = done
        record.succeeded = succeeded
        record.failed = done - succeeded
        record.total = total
        record.attempts = attempts
        record.queue_wait = queue_wait
        return record


@dataclass(slots=True, kw_only=True)
class GroupCompleted(BusEvent):
    """A group finished. ``status`` is a ``GroupStatus`` value; ``metrics`` a frozen snapshot;
    ``resources`` what the process used while it ran (also in ``metrics.resources``).
    ``input_error`` is what the group's ``map()`` input raised as it was read or closed
    (``"OSError: disk read failed"``); ``None`` when it raised nothing. ``quorum`` is the
    group's ``quorum=`` (``None`` without one); ``quorum_reached`` says whether the group
    ended by reaching it (its status stays ``partial`` when it cancelled members to do so).

    The snapshot is taken when ``metrics`` is first read (the group is over, so it is the same
    whenever it is read): building it costs more than the rest of the record, and most
    subscribers never look. ``metrics_source`` is what makes it: a ``GroupMetrics``, or a
    zero-argument callable returning one.
    """

    kind: str = "group.completed"
    name: str
    status: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    skipped: int
    timed_out: int
    wall_time: float
    input_error: str | None = None
    quorum: int | None = None
    metrics_source: Any = field(default=None, compare=False, repr=False)
    resources_source: Any = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        # The sources are the live group's bound methods (its state, context, weak
        # references: none of which pickles or copies): a pickled or copied record carries
        # what they make instead, which is what a reader of this one would get.
        self.metrics, self.resources  # noqa: B018 (reading resolves and keeps them)
        return (None, {name: getattr(self, name) for name in self.__dataclass_fields__})

    @property
    def quorum_reached(self) -> bool:
        """Whether the group had a ``quorum`` and ended by reaching it: that many members
        succeeded and nothing else stopped it (a timeout, a failure under ``FAIL_FAST``, a
        cancellation). The members it then cancelled were not needed; they are not failures."""
        quorum = self.quorum
        return (
            quorum is not None
            and self.succeeded >= quorum
            and self.status in ("completed", "partial")
        )

    @property
    def metrics(self) -> Any:
        """The group's ``GroupMetrics`` (``None`` if the record was made without one)."""
        source = self.metrics_source
        if callable(source):
            source = self.metrics_source = source()
        return source

    @property
    def resources(self) -> Any:
        """What the process used while the group ran, a ``ResourceUsage`` (peak memory, open
        files, the loop's lag); ``None`` when nothing watched the group."""
        source = self.resources_source
        if callable(source):
            source = self.resources_source = source()
        return source


def is_member_call(record: BusEvent) -> bool:
    """Whether ``record`` is about the call that is itself a group member's work (its
    address is the member's, ``docs[3]``, plus one name: ``docs[3]::summarize``), rather
    than a call nested deeper inside the member."""
    group_id, index = record.group_id, record.parallel_index
    if group_id is None or index is None:
        return False
    address = record.address
    member = f"{group_id}[{index}]::"
    return address.startswith(member) and "::" not in address[len(member) :]


# --- run events -----------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class RunInterrupted(BusEvent):
    """The run was stopped by Ctrl-C (``rh_agents.run``): published by the state as its
    ``async with`` block is left, after every group has ended (their ``GroupCompleted``
    records come first), so a display can end with "interrupted" rather than failures.

    ``run_id`` is the state's; ``resume`` is how to resume the run, when it has a store (the
    command, or the ``ExecutionState.resume`` call); ``None`` without one.
    """

    kind: str = "run.interrupted"
    run_id: str | None = None
    resume: str | None = None


@dataclass(slots=True, kw_only=True)
class RunWarning(BusEvent):
    """Something in the run deserves attention, though it went on: the record of a warning
    that is also issued with ``warnings.warn`` (see ``rh_agents.errors``).

    ``category`` is the warning's class name (``"LoopBlockedWarning"``), ``message`` what
    happened, naming the member or group at ``address``, and ``hint`` what to do about it.
    Inside a group, ``group_id`` and ``parallel_index`` say where, as for other records.
    """

    kind: str = "run.warning"
    category: str
    message: str
    hint: str = ""


# --- resilience events ----------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class CircuitStateChanged(BusEvent):
    """A circuit breaker changed state (``closed``, ``open`` or ``half_open``)."""

    kind: str = "circuit.changed"
    key: str
    old_state: str
    new_state: str
    failures: int
