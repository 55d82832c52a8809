"""What a state backend stores: run metadata and one checkpoint per finished event.

Both are pydantic models, so they travel as JSON (never pickled)::

    info = RunInfo(run_id="r1", created=time.time(), updated=time.time())
    record = CheckpointRecord(run_id="r1", address="docs[3]::summarize", seq=7,
                              actor="summarize", actor_version="1", status="completed",
                              result_json='{"text": "..."}', output_model="Summary")
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from pydantic import BaseModel, ConfigDict, TypeAdapter

__all__ = [
    "CHECKPOINT_ADAPTER",
    "CheckpointRecord",
    "ReplayDifference",
    "ReplayMode",
    "RunInfo",
    "RunStatus",
    "call_key",
    "latest_calls",
    "split_call_key",
]


class RunStatus(enum.StrEnum):
    """Where a run stands. A run whose process died stays ``RUNNING`` (see ``updated``);
    ``INTERRUPTED`` is a run stopped by Ctrl-C under ``rh_agents.run`` (resume it)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class ReplayMode(enum.StrEnum):
    """What a resumed run does with the events it finds completed.

    - ``SKIP``: return the stored result quietly (nothing is published).
    - ``REPUBLISH``: return it and publish ``EventCompleted(source="replay")`` so printers
      and subscribers see the whole tree again.
    - ``VALIDATE``: run everything again, report every result that differs from the stored
      one in ``Recovery.differences``, and write nothing.
    """

    SKIP = "skip"
    REPUBLISH = "republish"
    VALIDATE = "validate"


class RunInfo(BaseModel):
    """A run's metadata. Times are wall-clock seconds since the epoch. ``resume_command`` is
    the command that resumes the run, when the program that wrote it said (``None``: run the
    program again with ``ExecutionState.resume``)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    created: float
    updated: float
    status: RunStatus = RunStatus.RUNNING
    checkpoints: int = 0
    resume_command: str | None = None


# A second call at one address in a run (the retry of the agent that made the first one
# calls its tools again, at the addresses its first attempt used) is stored beside the first,
# under ``address::#2``: no actor name or tag contains '#', so no event's address reads so.
_CALL_MARK = "::#"


def call_key(address: str, call: int) -> str:
    """Where the ``call``-th call at ``address`` in a run is stored: ``address`` for the
    first one, ``address::#2``, ``address::#3``... for the next.

    A resumed run answers its ``n``-th call at an address with the ``n``-th stored one, so
    that a retry which made a call afresh in the stored run makes it afresh again, and one
    whose call was committed gets that very result::

        call_key("plan::search", 1)  # 'plan::search'
        call_key("plan::search", 2)  # 'plan::search::#2'
    """
    return address if call == 1 else f"{address}{_CALL_MARK}{call}"


def split_call_key(key: str) -> tuple[str, int]:
    """``(address, call)`` of a stored key (see ``call_key``)."""
    address, mark, number = key.rpartition(_CALL_MARK)
    if mark and number.isdigit():
        return address, int(number)
    return key, 1


def latest_calls(records: Iterable[CheckpointRecord]) -> dict[str, CheckpointRecord]:
    """Each address's last stored call (by ``seq``), keyed and addressed by the address
    itself: what a view of the run shows for it."""
    latest: dict[str, CheckpointRecord] = {}
    for record in records:
        address, call = split_call_key(record.address)
        if call != 1:
            record = replace(record, address=address)
        known = latest.get(address)
        if known is None or known.seq < record.seq:
            latest[address] = record
    return latest


@dataclass(slots=True, kw_only=True)
class CheckpointRecord:
    """One finished event, keyed by ``(run_id, address)``; ``address`` is the event's, or
    for the second and later calls at one address in the run, ``call_key`` of it.

    ``seq`` is the order in which events finished in the run that wrote them (used by
    ``resume_from``); ``result_json`` is the result as JSON text (``None`` when the call
    failed or its value could not be serialised); ``status`` is a ``ResultStatus`` value.
    A plain slotted dataclass (not frozen: frozen dataclasses are slower to build), because
    one is made per finished event on the hot path; treat it as immutable. Stored data is
    validated on the way back in through ``CHECKPOINT_ADAPTER``.
    """

    run_id: str
    address: str
    seq: int
    actor: str
    actor_version: str
    status: str
    result_json: str | None = None
    output_model: str | None = None
    group_id: str | None = None
    parallel_index: int | None = None
    error: str | None = None
    execution_time: float = 0.0
    attempts: int = 1
    # The call's input as ``input_digest`` has it (``None``: written before digests were, or
    # an input with no JSON): a resumed run replays the record only for that same input.
    input_digest: str | None = None


CHECKPOINT_ADAPTER: TypeAdapter[CheckpointRecord] = TypeAdapter(CheckpointRecord)


class ReplayDifference(BaseModel):
    """A result that came out differently when a run was validated."""

    model_config = ConfigDict(frozen=True)

    address: str
    stored: str | None
    current: str | None
    stored_status: str
    current_status: str
