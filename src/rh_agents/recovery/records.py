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

from rh_agents.core.context import address_of_key

__all__ = [
    "CHECKPOINT_ADAPTER",
    "CheckpointRecord",
    "ReplayDifference",
    "ReplayMode",
    "RunInfo",
    "RunStatus",
    "latest_calls",
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


def latest_calls(records: Iterable[CheckpointRecord]) -> dict[str, CheckpointRecord]:
    """Each address's last stored call (by ``seq``), keyed and addressed by the address
    itself: what a view of the run shows for it. (A call repeated at one address, by a
    retried agent, is stored under a key of its own: see ``core.context.CALL_MARK``.)"""
    latest: dict[str, CheckpointRecord] = {}
    for record in records:
        address = address_of_key(record.address)
        if address != record.address:
            record = replace(record, address=address)
        known = latest.get(address)
        if known is None or known.seq < record.seq:
            latest[address] = record
    return latest


@dataclass(slots=True, kw_only=True)
class CheckpointRecord:
    """One finished event, keyed by ``(run_id, address)``; ``address`` is the event's, or
    its key when it repeats a call at its address (``plan::search::#2``, and everything
    below it under that key: see ``core.context.CALL_MARK``).

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
