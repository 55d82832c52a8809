"""``Recovery``: checkpoints a run as its events finish, and replays them on resume.

::

    # First run: every finished event is checkpointed under the run id.
    state = ExecutionState(run_id="digest-42", recovery=Recovery(".rh_agents/state.db"))
    async with state:
        await orchestrate(state)

    # After a crash: completed events return their stored results, the rest run again.
    state = ExecutionState.resume("digest-42", backend=".rh_agents/state.db")
    async with state:
        await orchestrate(state)        # the same code, so the same addresses

Checkpoints are keyed by address. Inside a parallel group a member's address holds the
group and its submission index (``docs[3]::summarize``), so the finished members of a group
that was half done when the process died are found again whatever order they finish in.

One ``Recovery`` serves one state and is the only writer of that run: every finished event
appends to an in-memory batch on the event loop's thread, and the batch is written in one
transaction according to the ``CheckpointPolicy`` (see that module for the loss window).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rh_agents.core.actors import BaseActor
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import ConfigurationError, RecoveryError
from rh_agents.recovery.backend import StateBackend, open_backend
from rh_agents.recovery.codec import decode_result, encode_checked
from rh_agents.recovery.policy import CheckpointPolicy
from rh_agents.recovery.records import (
    CheckpointRecord,
    ReplayDifference,
    ReplayMode,
    RunStatus,
)

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState

__all__ = ["Recovery", "new_run_id", "rerun_addresses"]

logger = logging.getLogger("rh_agents.recovery")

_COMPLETED = ResultStatus.COMPLETED.value


def new_run_id() -> str:
    """A fresh run id (random: run ids name runs, they are not execution addresses)."""
    return uuid.uuid4().hex[:16]


class Recovery:
    """Checkpointing and replay for one run; see the module docstring.

    - ``backend``: a ``StateBackend`` (owned by the caller) or a path (opened and owned here):
      ``None`` means ``.rh_agents/state.db``.
    - ``checkpoint``: a ``CheckpointPolicy``; default every event.
    - ``resume``: load the run named by the state's ``run_id`` instead of creating it.
    - ``replay``: a ``ReplayMode`` for the completed events of a resumed run.
    - ``resume_from``: an address; that event, everything below it and everything that
      finished after it in the stored run runs again.
    """

    def __init__(
        self,
        backend: StateBackend | str | Path | None = None,
        *,
        checkpoint: CheckpointPolicy | None = None,
        resume: bool = False,
        replay: ReplayMode | str = ReplayMode.SKIP,
        resume_from: str | None = None,
    ) -> None:
        self.policy = checkpoint if checkpoint is not None else CheckpointPolicy.every_event()
        try:
            self.replay = ReplayMode(replay)
        except ValueError:
            raise ConfigurationError(
                f"unknown replay mode {replay!r}; use one of {[m.value for m in ReplayMode]}"
            ) from None
        if not resume and (resume_from is not None or self.replay is not ReplayMode.SKIP):
            raise ConfigurationError("replay and resume_from only apply with resume=True")
        self.resume = resume
        self._owns_backend = not isinstance(backend, StateBackend)
        self.backend = open_backend(backend)  # last: nothing left to reject once it is open
        self.resume_from = resume_from
        self.run_id: str | None = None
        self.recovered = 0  # events answered from checkpoints
        self.written = 0  # checkpoints committed by this process
        self.unserialisable = 0  # results that could not be stored (they re-run on resume)
        self._unstorable_actors: set[str] = set()  # actors already warned about
        self.differences: list[ReplayDifference] = []
        self._state: ExecutionState | None = None
        self._stored: dict[str, CheckpointRecord] = {}
        self._rerun: set[str] = set()
        self._pending: list[CheckpointRecord] = []
        self._seq = 0
        self._last_write = 0.0
        self._failed = False
        self._closed = False

    # --- binding ------------------------------------------------------------------------

    def attach(self, state: ExecutionState) -> str:
        """Bind to ``state`` (done by ``ExecutionState``); creates or loads the run."""
        if self._state is not None:
            raise ConfigurationError("a Recovery serves one ExecutionState; make a new one")
        try:
            run_id = self._open_run(state.run_id)
        except BaseException:
            if self._owns_backend:
                self.backend.close()
            raise
        self.run_id = run_id
        self._state = state
        self._last_write = state.clock.now()
        if self.replay is ReplayMode.REPUBLISH:
            state.replay_publishes = True
        return run_id

    def _open_run(self, run_id: str | None) -> str:
        if not self.resume:
            run_id = run_id if run_id is not None else new_run_id()
            self.backend.create_run(run_id)
            return run_id
        if run_id is None:
            raise ConfigurationError("resuming needs the run id: ExecutionState.resume(id)")
        self._stored = self.backend.load(run_id)
        self._seq = max((r.seq for r in self._stored.values()), default=-1) + 1
        if self.resume_from is not None:
            self._rerun = rerun_addresses(self._stored, self.resume_from, run_id)
        return run_id

    # --- hooks called by ExecutionState -----------------------------------------------------

    def recovered_result(self, address: str, actor: BaseActor) -> ExecutionResult[Any] | None:
        """The stored result for ``address`` if it completed with this actor and version."""
        if self.replay is ReplayMode.VALIDATE:
            return None
        record = self._stored.get(address)
        if (
            record is None
            or record.status != _COMPLETED
            or record.result_json is None
            or address in self._rerun
            or record.actor != actor.name
            or record.actor_version != actor.version
        ):
            return None
        value = decode_result(record, actor)
        self.recovered += 1
        return ExecutionResult(
            ok=True,
            result=value,
            execution_time=record.execution_time,
            index=record.parallel_index,
            address=address,
            attempts=record.attempts,
            source="replay",
        )

    async def on_event_finished(
        self,
        address: str,
        actor: BaseActor,
        validated: BaseModel | None,
        result: ExecutionResult[Any],
    ) -> None:
        """Checkpoint one finished event (or compare it, when validating)."""
        if self._closed:
            return
        text: str | None = None
        type_name: str | None = None
        if result.ok:
            encoded = encode_checked(result.result, actor.output_model)
            text, type_name = encoded.text, encoded.type_name
            if text is None:
                self._not_stored(address, actor, encoded.problem)
        if self.replay is ReplayMode.VALIDATE:
            self._compare(address, text, result.status.value)
            return
        state = self._state
        record = CheckpointRecord(
            run_id=self.run_id or "",
            address=address,
            seq=self._seq,
            actor=actor.name,
            actor_version=actor.version,
            status=result.status.value,
            result_json=text,
            output_model=actor.output_model.__name__ if actor.output_model else type_name,
            group_id=_group_of(address),
            parallel_index=result.index,
            error=result.error,
            execution_time=result.execution_time,
            attempts=result.attempts,
        )
        self._seq += 1
        self._pending.append(record)
        policy = self.policy
        if len(self._pending) >= policy.count or (
            policy.seconds is not None
            and state is not None
            and state.clock.now() - self._last_write >= policy.seconds
        ):
            self.flush()

    def _not_stored(self, address: str, actor: BaseActor, problem: str | None) -> None:
        """A result that cannot be stored faithfully: counted, and logged once per actor."""
        self.unserialisable += 1
        if actor.name in self._unstorable_actors:
            return
        self._unstorable_actors.add(actor.name)
        logger.warning(
            "%s %r returned a result that cannot be stored exactly (at %s: %s); it is "
            "left as it is, its result is not stored, and it runs again on resume",
            actor.kind,
            actor.name,
            address,
            problem,
        )

    def _compare(self, address: str, text: str | None, status: str) -> None:
        stored = self._stored.get(address)
        if stored is None:
            return
        if stored.result_json != text or stored.status != status:
            self.differences.append(
                ReplayDifference(
                    address=address,
                    stored=stored.result_json,
                    current=text,
                    stored_status=stored.status,
                    current_status=status,
                )
            )

    # --- writing ----------------------------------------------------------------------------

    def flush(self, status: RunStatus | None = None) -> None:
        """Write the pending checkpoints in one transaction (kept for a retry on failure)."""
        if self.run_id is None or self.replay is ReplayMode.VALIDATE:
            return
        if not self._pending and status is None:
            return
        batch = self._pending
        self._pending = []
        try:
            self.backend.save(self.run_id, batch, status)
        except BaseException:
            self._pending = batch + self._pending
            raise
        self.written += len(batch)
        if self._state is not None:
            self._last_write = self._state.clock.now()

    async def save_checkpoint(self) -> None:
        """Write what is pending now (``await state.save_checkpoint()``)."""
        self.flush()

    def mark_failed(self) -> None:
        """The run ended by an exception: ``close`` records ``FAILED`` rather than completed."""
        self._failed = True

    def close(self) -> None:
        """Write the rest, record the run's final status and release an owned backend."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(RunStatus.FAILED if self._failed else RunStatus.COMPLETED)
        finally:
            if self._owns_backend:
                self.backend.close()


def rerun_addresses(stored: dict[str, CheckpointRecord], address: str, run_id: str) -> set[str]:
    """The stored addresses that run again when resuming from ``address``: that event, every
    event below it, and every event that finished after it (by ``seq``)."""
    below = (address + "::", address + "[")
    inside = [r for r in stored.values() if r.address.startswith(below)]
    own = stored.get(address)
    seqs = [r.seq for r in inside] + ([own.seq] if own is not None else [])
    if not seqs:
        known = ", ".join(list(stored)[:5])
        raise RecoveryError(
            f"cannot resume from {address!r}: run {run_id!r} has no checkpoint at or below "
            f"it (some known addresses: {known})"
        )
    first = min(seqs)
    return {r.address for r in stored.values() if r.seq >= first} | {r.address for r in inside}


def _group_of(address: str) -> str | None:
    """The innermost group of ``address``: ``a::docs[3]::tool`` -> ``a::docs``."""
    end = address.rfind("[")
    return address[:end] if end > 0 else None
