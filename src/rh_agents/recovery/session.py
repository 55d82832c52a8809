"""``Recovery``: checkpoints a run as its events finish, and replays them on resume.

::

    # First run: every finished event is checkpointed under the run id (in the default
    # store, default_state_path(), unless a path is given).
    state = ExecutionState(run_id="digest-42", recovery=Recovery())
    async with state:
        await orchestrate(state)

    # After a crash: completed events return their stored results, the rest run again.
    state = ExecutionState.resume("digest-42")
    async with state:
        await orchestrate(state)        # the same code, so the same addresses

    # Or both in one line: create the run if it does not exist, resume it if it does.
    state = ExecutionState(run_id="digest-42", recovery=Recovery(resume="auto"))

Checkpoints are keyed by address. Inside a parallel group a member's address holds the
group and its submission index (``docs[3]::summarize``), so the finished members of a group
that was half done when the process died are found again whatever order they finish in.

One ``Recovery`` serves one state and is the only writer of that run: every finished event
appends to an in-memory batch on the event loop's thread, and the batch is written in one
transaction according to the ``CheckpointPolicy`` (see that module for the loss window).

Store waits never block the event loop. Batches are written by the run's one writer thread
(``rh_agents.recovery.writer``), in order. The loop waits for writes at most ``write_wait``
seconds per loop turn, however many events end in it (0.05 by default; a healthy write takes
well under a millisecond, so normally every checkpoint is committed before its event call
returns, as before); a write that takes longer
(another process holds the SQLite lock, a slow disk) goes on in the background, the run goes
on, and the checkpoints of the events finishing meanwhile wait in memory and are written, in
order, as soon as the store is free. Nothing is dropped.

A write that fails never fails the event that triggered it: its checkpoints are kept and
written with the next write, the failure is logged, listed in ``write_errors`` and issued once
per streak as a ``CheckpointWarning``. The run's end (``close`` / ``aclose``) writes everything
left and the final status, waiting at most ``close_timeout`` seconds: if that fails, or the
store stays locked that long, it raises a ``RecoveryError`` naming the store and the number of
checkpoints not written (the results the program already holds are unaffected). A store still
locked then gets them, and the final status, from the writer thread as soon as it frees (while
the process lives), and the lease is released after them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import sys
import time
import uuid
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from rh_agents.core.actors import BaseActor
from rh_agents.core.context import address_of_key, enclosing_member
from rh_agents.core.hooks import NO_INPUT
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.core.run_ids import check_run_id
from rh_agents.errors import (
    CheckpointWarning,
    ConfigurationError,
    RecoveryError,
    UnknownRunError,
)
from rh_agents.recovery.backend import StateBackend
from rh_agents.recovery.codec import decode_result, encode_checked
from rh_agents.recovery.input_digest import input_digest
from rh_agents.recovery.lease import RunLease
from rh_agents.recovery.opening import open_backend
from rh_agents.recovery.passing_over import StoredCalls
from rh_agents.recovery.policy import CheckpointPolicy
from rh_agents.recovery.records import (
    CheckpointRecord,
    ReplayDifference,
    ReplayMode,
    RunStatus,
)
from rh_agents.recovery.writer import CheckpointWriter, WriteJob, store_name

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_WRITE_WAIT",
    "Recovery",
    "ResumeMode",
    "current_argv",
    "current_command",
    "new_run_id",
    "rerun_addresses",
    "shell_join",
]

logger = logging.getLogger("rh_agents.recovery")

_COMPLETED = ResultStatus.COMPLETED.value

DEFAULT_WRITE_WAIT = 0.05
DEFAULT_CLOSE_TIMEOUT = 30.0
_MAX_WRITE_ERRORS = 100  # write_errors keeps the first ones (a long outage repeats itself)


# ``resume=``: False creates the run, True resumes it, "auto" does whichever applies.
ResumeMode = bool | Literal["auto"]


def new_run_id() -> str:
    """A fresh run id (random: run ids name runs, they are not execution addresses)."""
    return uuid.uuid4().hex[:16]


def current_command() -> str:
    """The command line that started this process, as a shell would take it again.

    ``python digest.py --fast`` stays as typed. A console script (``rh-agents demo``),
    which the system starts as ``/path/to/python /path/to/bin/rh-agents demo``, is given by
    its name when that name finds the same file on ``PATH``, by its full path otherwise.
    """
    return shell_join(current_argv())


def current_argv() -> list[str]:
    """The words of ``current_command()``."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    if len(argv) >= 2 and os.path.isabs(argv[1]) and not argv[1].endswith(".py"):
        script = argv[1]
        found = shutil.which(os.path.basename(script))
        same = found is not None and _same_file(found, script)
        argv = [os.path.basename(script) if same else script, *argv[2:]]
    return argv


def shell_join(words: list[str]) -> str:
    """``shlex.join(words)``, except that a word holding bytes that are not UTF-8 (a file
    name, as Python decodes it from the command line) is written as ``$'...'`` with those
    bytes as ``\\xNN``: what bash and zsh read back as the same bytes, and text a store can
    keep (the word as it is cannot be encoded)."""
    return " ".join(_shell_word(word) for word in words)


def _shell_word(word: str) -> str:
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return shlex.quote(word)
    shown = []
    for byte in os.fsencode(word):
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in "'\\":
            shown.append(char)
        else:
            shown.append(f"\\x{byte:02x}")
    return "$'" + "".join(shown) + "'"


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


class Recovery:
    """Checkpointing and replay for one run; see the module docstring.

    - ``backend``: a ``StateBackend`` (owned by the caller) or a path (opened and owned here):
      ``None`` means the default store, ``default_state_path()`` (the environment variable
      ``RH_AGENTS_STATE``, else ``~/.local/state/rh_agents/state.db``).
    - ``checkpoint``: a ``CheckpointPolicy``; default every event.
    - ``resume``: ``False`` (default) creates the run named by the state's ``run_id`` (a
      random id without one); ``True`` loads it instead (it must exist); ``"auto"`` creates
      it when the store has no such run and resumes it otherwise, so one program, run
      again after a crash or a Ctrl-C, goes on where it stopped (a completed run is replayed
      whole). ``resumed`` then says which it did.
    - ``replay``: a ``ReplayMode`` for the completed events of a resumed run.
    - ``resume_from``: an address; that event, everything below it and everything that
      finished after it in the stored run runs again.
    - ``resume_command``: the command that resumes this run, shown when it is interrupted and
      by ``rh-agents runs show``. By default, with ``resume="auto"``, the command line of this
      process (running it again resumes the run); otherwise none (resuming takes
      ``ExecutionState.resume`` in the program).
    - ``write_wait``: seconds the event loop waits for checkpoint writes (in all, per loop
      turn) before it lets the run go on and the write finish in the background (see the
      module docstring).
    - ``close_timeout``: seconds the run's end (and ``save_checkpoint``) waits for the store
      before it gives up with a ``RecoveryError``.
    - ``match_inputs``: replay a stored call only for the same input (its digest; see
      ``input_digest``); ``False`` matches by address, actor and version alone (for inputs
      that differ on every run by design, such as a timestamp made at call time).
    """

    def __init__(
        self,
        backend: StateBackend | str | Path | None = None,
        *,
        checkpoint: CheckpointPolicy | None = None,
        resume: ResumeMode = False,
        replay: ReplayMode | str = ReplayMode.SKIP,
        resume_from: str | None = None,
        write_wait: float = DEFAULT_WRITE_WAIT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        resume_command: str | None = None,
        match_inputs: bool = True,
    ) -> None:
        if not isinstance(match_inputs, bool):
            raise ConfigurationError(f"match_inputs must be True or False, got {match_inputs!r}")
        if checkpoint is not None and not isinstance(checkpoint, CheckpointPolicy):
            raise ConfigurationError(
                f"checkpoint must be a CheckpointPolicy, got {checkpoint!r}: "
                "CheckpointPolicy.every_event() or CheckpointPolicy.batched(count, seconds)"
            )
        self.policy = checkpoint if checkpoint is not None else CheckpointPolicy.every_event()
        for label, value in (("write_wait", write_wait), ("close_timeout", close_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{label} must be a number of seconds, got {value!r}")
        if not write_wait >= 0:
            raise ConfigurationError(f"write_wait must be at least 0 seconds, got {write_wait!r}")
        if not close_timeout > 0:
            raise ConfigurationError(
                f"close_timeout must be more than 0 seconds, got {close_timeout!r}"
            )
        self.write_wait = write_wait
        self.close_timeout = close_timeout
        try:
            self.replay = ReplayMode(replay)
        except ValueError:
            raise ConfigurationError(
                f"unknown replay mode {replay!r}; use one of {[m.value for m in ReplayMode]}"
            ) from None
        if resume not in (True, False, "auto"):
            raise ConfigurationError(f"resume must be False, True or 'auto', got {resume!r}")
        if not resume and (resume_from is not None or self.replay is not ReplayMode.SKIP):
            raise ConfigurationError(
                "replay and resume_from only apply with resume=True or resume='auto'"
            )
        if resume == "auto" and self.replay is ReplayMode.VALIDATE:
            raise ConfigurationError(
                "replay='validate' checks a stored run and writes nothing: use it with "
                "resume=True, not resume='auto' (which may create the run)"
            )
        self.resume: ResumeMode = resume
        if resume_command is None and resume == "auto":
            resume_command = current_command()
        self.resume_command = resume_command
        self._owns_backend = not isinstance(backend, StateBackend)
        # Last: nothing left to reject once it is open. A resume never creates the store.
        self.backend = open_backend(backend, mode="write" if resume is True else "create")
        self.resume_from = resume_from
        self.run_id: str | None = None
        self.resumed = False  # whether attach loaded a stored run (rather than creating one)
        self.recovered = 0  # events answered from checkpoints
        self.written = 0  # checkpoints committed by this process
        self.unserialisable = 0  # results that could not be stored (they re-run on resume)
        self._unstorable_actors: set[str] = set()  # actors already warned about
        # Stored calls not replayed because their input changed (they ran again).
        self.changed_inputs = 0
        self.match_inputs = match_inputs
        # Inputs replays() found the same as the stored call's, by address, until
        # recovered_result answers the call (the same object: not digested again).
        self._checked: dict[str, Any] = {}
        self._changed_actors: set[str] = set()  # actors already warned about
        self.differences: list[ReplayDifference] = []
        self._state: ExecutionState | None = None
        self._stored: dict[str, CheckpointRecord] = {}
        self._rerun: set[str] = set()
        self._calls = StoredCalls(self._stored)  # (which one answers a failed call)
        self._pending: list[CheckpointRecord] = []
        self._seq = 0
        self._last_write = 0.0
        self._failed = False
        self._interrupted = False
        self._closed = False
        # Writing (see the module docstring): the writer thread, the write in flight, failures.
        self.write_errors: list[BaseException] = []  # failed writes (the first ones)
        self._writer: CheckpointWriter | None = None
        self._inflight: WriteJob | None = None
        # The loop's wait for writes is counted per loop turn: members finishing by the
        # hundred in one turn each end a write, and each would wait again (a stall of N
        # times write_wait). What the turn has waited so far; a callback at the next turn
        # sets it back to 0.
        self._turn_waited = 0.0
        self._turn_reset_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False  # in a streak of failed writes (warned once per streak)

    # --- binding ------------------------------------------------------------------------

    def attach(self, state: ExecutionState) -> str:
        """Bind to ``state`` (done by ``ExecutionState``); creates or loads the run."""
        if self._state is not None:
            raise ConfigurationError("a Recovery serves one ExecutionState; make a new one")
        try:
            run_id = self._open_run(state.run_id)
        except BaseException:
            try:
                self._release_lease()
            finally:
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
        """Create or load the run, holding its lease (released by ``attach`` on failure)."""
        if self.resume == "auto":
            if run_id is None:
                raise ConfigurationError(
                    "resume='auto' needs the run's id, to find it again next time: "
                    "ExecutionState(run_id=..., recovery=Recovery(resume='auto'))"
                )
            check_run_id(run_id)
            # The lease first: under it, whether the run exists cannot change.
            self._take_lease(run_id)
            try:
                self.backend.get_run(run_id)
            except UnknownRunError:
                return self._create(run_id)
            return self._load(run_id)
        if not self.resume:
            run_id = check_run_id(run_id if run_id is not None else new_run_id())
            self._take_lease(run_id)  # first: a live writer is named, not "already exists"
            return self._create(run_id)
        if run_id is None:
            raise ConfigurationError("resuming needs the run id: ExecutionState.resume(id)")
        check_run_id(run_id)
        self.backend.get_run(run_id)  # read only: an unknown run writes nothing
        if self.replay is not ReplayMode.VALIDATE:  # validating writes nothing: no lease
            self._take_lease(run_id)
        return self._load(run_id)

    def _create(self, run_id: str) -> str:
        self.backend.create_run(run_id)
        if self.resume_command is not None:
            self.backend.set_resume_command(run_id, self.resume_command)
        return run_id

    def _load(self, run_id: str) -> str:
        """Load the stored run (under its lease, unless validating)."""
        self._stored = self.backend.load(run_id)  # under the lease: the last word
        self._calls = StoredCalls(self._stored)
        self._seq = max((r.seq for r in self._stored.values()), default=-1) + 1
        if self.resume_from is not None:
            self._rerun = rerun_addresses(self._stored, self.resume_from, run_id)
        self.resumed = True
        if self.replay is not ReplayMode.VALIDATE:
            # Running again: the store says so (not the status it had when it stopped).
            self.backend.save(run_id, [], RunStatus.RUNNING)
            if self.resume_command is not None:
                self.backend.set_resume_command(run_id, self.resume_command)
        return run_id

    # --- hooks called by ExecutionState -----------------------------------------------------

    def recovered_result(
        self, address: str, actor: BaseActor, input: Any = NO_INPUT
    ) -> ExecutionResult[Any] | None:
        """The stored result of the call ``address`` (its address, or its key when it repeats
        a call at its address: see ``core.context.CALL_MARK``) if it completed with this
        actor and version, and, when ``input`` is given, for the same input. The result's
        ``address`` is the key of the stored call that answers: a later one than asked for
        when the one asked for failed (see ``_replayable``)."""
        record = self._replayable(address, actor)
        if record is None:
            return None
        checked = self._checked.pop(address, NO_INPUT) if self._checked else NO_INPUT
        if (
            input is not NO_INPUT
            and checked is not input
            and not self._same_input(record, actor, input)
        ):
            if record.address != address:
                return None  # a later call, passed over to, had another input: this one runs
            self._input_changed(address, actor)
            return None
        value = decode_result(record, actor, store_name(self.backend))
        self.recovered += 1
        return ExecutionResult(
            ok=True,
            result=value,
            execution_time=record.execution_time,
            index=record.parallel_index,
            address=record.address,
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
        """Checkpoint one finished event under ``address`` (its key, when it repeats a call
        at its address), or compare it, when validating."""
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
            group_id=_group_of(address_of_key(address)),
            parallel_index=result.index,
            error=result.error,
            execution_time=result.execution_time,
            attempts=result.attempts,
            input_digest=None if validated is None else input_digest(validated),
        )
        self._seq += 1
        self._pending.append(record)
        if self._due(state):
            self.flush()

    def _due(self, state: ExecutionState | None) -> bool:
        """Whether the pending checkpoints are to be written now (the policy)."""
        policy = self.policy
        return len(self._pending) >= policy.count or (
            policy.seconds is not None
            and state is not None
            and state.clock.now() - self._last_write >= policy.seconds
        )

    @property
    def can_replay(self) -> bool:
        """Whether any call may be replayed (see ``RecoveryHook.can_replay``)."""
        return bool(self._stored) and self.replay is not ReplayMode.VALIDATE

    @property
    def runs_everything(self) -> bool:
        """Whether every call runs (``ReplayMode.VALIDATE``): a cache hit would stand in
        for the run whose result is to be compared, and hide a change."""
        return self.replay is ReplayMode.VALIDATE

    def replays(self, address: str, actor: BaseActor, input: Any) -> bool:
        """Whether ``recovered_result(address, actor, input)`` would answer the call (it
        counts and logs nothing)."""
        record = self._replayable(address, actor)
        if record is None or not self._same_input(record, actor, input):
            return False
        self._checked[address] = input  # (recovered_result need not digest it again)
        return True

    def _replayable(self, key: str, actor: BaseActor) -> CheckpointRecord | None:
        """The stored call that answers the call ``key``, if it completed with this actor and
        version: that one, or, when it failed and ended its attempt, the first completed
        call after it at its address (``StoredCalls.answer``, recovery/passing_over.py). A
        completed call is never passed over: a retry whose call ran afresh in the stored run
        (nothing stored after it) runs afresh again.
        """
        if self.replay is ReplayMode.VALIDATE:
            return None
        record = self._stored.get(key)
        if record is not None and record.status != _COMPLETED:
            record = self._calls.answer(key, record)
        if (
            record is None
            or record.result_json is None
            or record.address in self._rerun
            or record.actor != actor.name
            or record.actor_version != actor.version
        ):
            return None
        return record

    def _same_input(self, record: CheckpointRecord, actor: BaseActor, input: Any) -> bool:
        """Whether ``input`` is the input of the stored call (always, for a record written
        without a digest, or when inputs are not matched)."""
        if record.input_digest is None or not self.match_inputs:
            return True
        try:
            validated = actor.validate_input(input)
        except Exception:
            return False  # the call runs, and reports its bad input itself
        return input_digest(validated) == record.input_digest

    def _input_changed(self, address: str, actor: BaseActor) -> None:
        """The call at ``address`` has another input than the stored one: it runs again."""
        self.changed_inputs += 1
        if actor.name in self._changed_actors:
            return
        self._changed_actors.add(actor.name)
        logger.warning(
            "%s %r at %s was called with another input than in the stored run: it runs again "
            "rather than replay another call's result. Calls of one name under one parent are "
            "numbered in the order they start (name, name#2...): calls started concurrently "
            "outside a parallel group, in an order that varies, get each other's addresses; "
            "run them as members of a group (numbered by submission) or give each role its own tag",
            actor.kind,
            actor.name,
            address,
        )

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

    def _compare(self, key: str, text: str | None, status: str) -> None:
        stored = self._stored.get(key)
        if stored is None:
            return
        if stored.result_json != text or stored.status != status:
            self.differences.append(
                ReplayDifference(
                    address=key,
                    stored=stored.result_json,
                    current=text,
                    stored_status=stored.status,
                    current_status=status,
                )
            )

    # --- writing ----------------------------------------------------------------------------

    def flush(self, status: RunStatus | None = None) -> None:
        """Hand the pending checkpoints (and ``status``) to the writer thread, and wait for
        them at most ``write_wait`` seconds; after that they are written in the background.

        While a write is in flight, nothing is started: the checkpoints pending now go with
        the next write, which starts as soon as that one ends. Never raises for a failed
        write (see the module docstring); ``save_checkpoint`` waits and raises.
        """
        self._write(status, block=self.write_wait, per_turn=True)

    def _write(
        self, status: RunStatus | None, *, block: float, per_turn: bool = False
    ) -> WriteJob | None:
        """Start a write of everything pending (unless one is in flight); the job, if any.

        ``per_turn``: ``block`` is what the loop may wait in all during its current turn
        (what earlier writes of the turn waited is taken off)."""
        if self.run_id is None or self.replay is ReplayMode.VALIDATE or self._inflight is not None:
            return None
        if not self._pending and status is None:
            return None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # a synchronous close: the caller waits for the job
        full = block
        if per_turn and loop is not None:
            block -= self._turn_waited
        batch, self._pending = self._pending, []
        job = self._inflight = self._writer_thread().submit(batch, status)
        if block > 0:
            began = time.perf_counter()
            written = job.wait(block)
            if per_turn and loop is not None:
                self._count_turn_wait(loop, time.perf_counter() - began)
            if written:
                self._settle(job)
                return job
        if loop is None:
            return job
        if block >= full > 0 and not job.done:
            logger.info(
                "a checkpoint write to %s takes more than %ss; the run goes on and it ends in "
                "the background",
                store_name(self.backend),
                block,
            )
        self._loop = loop
        job.when_done(loop, self._settled_later)
        return job

    def _count_turn_wait(self, loop: asyncio.AbstractEventLoop, waited: float) -> None:
        self._turn_waited += waited
        if not self._turn_reset_scheduled:
            self._turn_reset_scheduled = True
            loop.call_soon(self._next_turn)  # (runs at the loop's next turn, not this one)

    def _next_turn(self) -> None:
        self._turn_waited = 0.0
        self._turn_reset_scheduled = False

    def _writer_thread(self) -> CheckpointWriter:
        writer = self._writer
        if writer is None:
            writer = self._writer = CheckpointWriter(self.backend, self.run_id or "")
            # A Recovery dropped without close (a crash in a test): its thread ends too.
            weakref.finalize(self, writer.stop)
        return writer

    def _settle(self, job: WriteJob, *, report: bool = True) -> None:
        """Take note of a finished write (on the loop's thread); once per job."""
        if self._inflight is not job:
            return
        self._inflight = None
        if job.error is None:
            self.written += len(job.records)
            if self._state is not None:
                self._last_write = self._state.clock.now()
            if self._failing:
                self._failing = False
                logger.warning("checkpoint writes to %s work again", store_name(self.backend))
            return
        self._pending[:0] = job.records  # kept, ahead of the newer ones: order holds
        if report:
            self._write_failed(job.error)

    def _settled_later(self, job: WriteJob) -> None:
        """A write that went to the background ended (a loop callback)."""
        if self._inflight is not job:
            return
        self._settle(job)
        if job.error is None and self._pending and not self._closed and self._due(self._state):
            self._write(None, block=0)  # what piled up meanwhile; the loop does not wait

    def _write_failed(self, exc: BaseException) -> None:
        if len(self.write_errors) < _MAX_WRITE_ERRORS:
            self.write_errors.append(exc)
        logger.error(
            "cannot write %d checkpoint(s) of run %r to %s: %s; they are kept and written "
            "with the next write",
            len(self._pending),
            self.run_id,
            store_name(self.backend),
            exc,
            exc_info=exc if not self._failing else None,
        )
        if self._failing:
            return
        self._failing = True
        message = (
            f"cannot write checkpoints of run {self.run_id!r} to {store_name(self.backend)} "
            f"({type(exc).__name__}: {exc}); the events are not failed, their checkpoints are "
            "kept in memory and written with the next write. If they still cannot be written "
            "when the run ends, leaving it raises a RecoveryError."
        )
        try:
            warnings.warn(message, CheckpointWarning, stacklevel=2)
        except Warning:
            # Warnings turned into errors must not fail the event call that wrote: the failure
            # is in write_errors, and the run's end raises if it is not made good.
            logger.error("%s", message)

    async def save_checkpoint(self) -> None:
        """Write what is pending now and wait until it is stored (``await
        state.save_checkpoint()``); the loop runs meanwhile.

        Raises a ``RecoveryError`` if the write fails (the checkpoints stay pending) or the
        store stays busy for ``close_timeout`` seconds.
        """
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        while True:
            job = self._inflight or self._write(None, block=0)
            if job is None:
                return
            if not await job.wait_async(deadline - loop.time()):
                raise self._stuck_error("save the checkpoints", job)
            self._settle(job)
            if job.error is not None:
                raise RecoveryError(
                    f"cannot save the checkpoints of run {self.run_id!r} to "
                    f"{store_name(self.backend)}: {job.error}; they are kept and written with "
                    "the next write"
                ) from job.error

    def mark_failed(self) -> None:
        """The run ended by an exception: ``close`` records ``FAILED`` rather than completed."""
        self._failed = True

    def mark_interrupted(self) -> str:
        """The run was stopped by Ctrl-C (``rh_agents.run``): ``close`` records
        ``INTERRUPTED``. Returns how to resume it: ``resume_command``, or the call to make."""
        self._interrupted = True
        return self.resume_hint()

    def resume_hint(self) -> str:
        """The command that resumes this run, or the ``ExecutionState.resume`` call that does."""
        if self.resume_command is not None:
            return self.resume_command
        return (
            f"run the program again with ExecutionState.resume({self.run_id!r}, "
            f"backend={store_name(self.backend)!r})"
        )

    def close(self) -> None:
        """Write the rest, record the run's final status and release an owned backend.

        Synchronous: it blocks at most ``close_timeout`` seconds; ``aclose`` (which leaving
        ``async with state:`` calls) waits without blocking the loop. Raises a
        ``RecoveryError`` if the checkpoints cannot be written or the store stays busy.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.close_timeout
        written = False
        try:
            job = self._inflight
            if job is not None:
                if not job.wait(max(0.0, deadline - time.monotonic())):
                    raise self._given_up(job)
                self._settle(job, report=False)
            job = self._write(self._final_status(), block=max(0.0, deadline - time.monotonic()))
            if job is not None:
                if not job.wait(max(0.0, deadline - time.monotonic())):
                    raise self._given_up(job)
                self._settle(job, report=False)
                if job.error is not None:
                    raise self._unwritten_error(job.error)
            written = True
        finally:
            release = self._release_on_writer()
            if written and release is not None:
                release.wait(max(0.0, deadline - time.monotonic()))
                self._raise_release_error(release)

    async def aclose(self) -> None:
        """``close`` without blocking the event loop (what leaving ``async with state:``
        calls): it awaits the writer, at most ``close_timeout`` seconds.

        A cancellation meanwhile (a Ctrl-C landing as the run ends) does not abandon the
        writes, which would lose the last checkpoints and the final status as a crash does:
        they are still waited for, within the same ``close_timeout``, then the cancellation
        is raised."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        cancelled: list[asyncio.CancelledError] = []
        written = False
        try:
            job = self._inflight
            if job is not None:
                if not await _wait_through_cancel(job, deadline, cancelled):
                    raise self._given_up(job)
                self._settle(job, report=False)
            job = self._write(self._final_status(), block=0)
            if job is not None:
                if not await _wait_through_cancel(job, deadline, cancelled):
                    raise self._given_up(job)
                self._settle(job, report=False)
                if job.error is not None:
                    raise self._unwritten_error(job.error)
            written = True
        finally:
            release = self._release_on_writer()
            if written and release is not None:
                await _wait_through_cancel(release, deadline, cancelled)
                self._raise_release_error(release)
            if cancelled:
                raise cancelled[0]

    def _final_status(self) -> RunStatus:
        if self._interrupted:
            return RunStatus.INTERRUPTED
        return RunStatus.FAILED if self._failed else RunStatus.COMPLETED

    def _release_on_writer(self) -> WriteJob | None:
        """Release the lease and an owned backend: on the writer thread after its writes, if
        it has one (so that nothing here waits on a store the thread is still waiting for);
        then the thread ends (once the store lets it write what it holds, when the close gave
        up waiting). ``None`` when done here and now."""
        writer = self._writer
        if writer is None:
            self._release()
            return None
        job = writer.call(self._release)
        writer.finish()
        return job

    def _raise_release_error(self, job: WriteJob) -> None:
        if job.done and job.error is not None:
            raise job.error

    def _release(self) -> None:
        try:
            self._release_lease()
        finally:
            if self._owns_backend:
                self.backend.close()

    def _pending_count(self, job: WriteJob | None) -> int:
        return len(self._pending) + (len(job.records) if job is not None else 0)

    def _stuck_error(
        self, action: str, job: WriteJob, *, later: str | None = None
    ) -> RecoveryError:
        """The store stayed busy past ``close_timeout``: what was not written, and what to do.

        The writer is left to go on (it writes as soon as the store frees): stopping it made
        every later write of the run fail, after a ``save_checkpoint`` that timed out."""
        unwritten = self._pending_count(job if self._inflight is job else None)
        later = later or (
            "they are kept and written with the next write, as soon as the store frees"
        )
        return RecoveryError(
            f"cannot {action} of run {self.run_id!r}: the state store {store_name(self.backend)} "
            f"stayed busy (locked by another process, or slow) for {self.close_timeout}s; "
            f"{unwritten} checkpoint(s) were not written in time ({later}); any that never "
            "land run again on resume. Find what holds the store, or give "
            "Recovery(close_timeout=...) more time."
        )

    def _given_up(self, job: WriteJob) -> RecoveryError:
        """The run's end gave up waiting for the store: what is left (the pending checkpoints
        and the final status) goes to the writer thread, after the write in flight, and the
        lease is released after them (``_release_on_writer``), so that all of it is written
        once the store frees, while this process lives (the thread is a daemon)."""
        error = self._stuck_error(
            "write the last checkpoints",
            job,
            later="they and the run's final status are written in the background as soon as "
            "the store frees, while this process lives, and the run's lease is released "
            "after them",
        )
        writer = self._writer_thread()
        jobs = [job]
        if self._inflight is job and job.status is None:
            batch, self._pending = self._pending, []
            jobs.append(writer.submit(batch, self._final_status()))
        writer.call(lambda: self._report_background(jobs))  # (after them: nobody waits now)
        return error

    def _report_background(self, jobs: list[WriteJob]) -> None:
        """Log how the writes the run's end gave up waiting for ended (the writer thread)."""
        failed = [job for job in jobs if job.error is not None]
        count = sum(len(job.records) for job in failed)
        if failed:
            logger.error(
                "%d checkpoint(s) of run %r that the run's end left to be written in the "
                "background could not be written to %s after all (%s); a resume runs those "
                "events again",
                count,
                self.run_id,
                store_name(self.backend),
                failed[0].error,
            )
        else:
            logger.warning(
                "the last checkpoints of run %r and its final status are written to %s, "
                "once the store freed",
                self.run_id,
                store_name(self.backend),
            )

    def _unwritten_error(self, exc: BaseException) -> BaseException:
        """The final write failed: the backend's own ``RecoveryError`` (a lost lease stays a
        ``RunLockedError``) with a note of what was lost, or a ``RecoveryError`` saying it."""
        detail = (
            f"{len(self._pending)} checkpoint(s) of run {self.run_id!r} could not be written to "
            f"{store_name(self.backend)} when the run ended; the results the program holds are "
            "unaffected, but a resume runs those events again"
        )
        if isinstance(exc, RecoveryError):
            exc.add_note(detail)
            return exc
        error = RecoveryError(f"{detail} ({type(exc).__name__}: {exc})")
        error.__cause__ = exc
        return error

    # --- the run's lease (one writer per run; see rh_agents.recovery.lease) -------------------

    _lease: RunLease | None = None

    @property
    def lease(self) -> RunLease | None:
        """The lease this object holds on its run (``None`` before attach, after close, and
        when validating)."""
        return self._lease

    def _take_lease(self, run_id: str) -> None:
        self._lease = self.backend.acquire_lease(run_id)

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()


def rerun_addresses(stored: dict[str, CheckpointRecord], address: str, run_id: str) -> set[str]:
    """The stored addresses that run again when resuming from ``address``: that event, every
    event below it, and every event that finished after the first of them (by ``seq``)."""
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


async def _wait_through_cancel(
    job: WriteJob, deadline: float, cancelled: list[asyncio.CancelledError]
) -> bool:
    """``job.wait_async`` until ``deadline`` (loop time), whether done; a cancellation of the
    waiting task is kept in ``cancelled`` (for the caller to raise once its writes are done)
    and the wait goes on."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await job.wait_async(max(0.0, deadline - loop.time()))
        except asyncio.CancelledError as exc:
            cancelled.append(exc)
            if job.done or loop.time() >= deadline:
                return job.done


def _group_of(address: str) -> str | None:
    """The innermost group of ``address``: ``a::docs[3]::tool`` -> ``a::docs``."""
    member = enclosing_member(address)
    return None if member is None else member[0]
