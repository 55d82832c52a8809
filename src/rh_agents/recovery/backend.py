"""The state backend interface: where runs and their checkpoints live.

Two implementations ship: ``SQLiteBackend`` (the default, one database file) and
``JSONBackend`` (one JSON file per run, for small runs and debugging). Both are synchronous and
are driven by a single writer, the run's ``Recovery`` object, on the event loop's thread::

    backend = open_backend("runs/state.db")            # (recovery.opening) SQLite or JSON
    backend.create_run("r1")
    backend.save("r1", [record])                        # one transaction
    records = backend.load("r1")                        # {address: CheckpointRecord}

Contract for every backend: ``save`` is atomic (all of a batch or none of it), a read of a
damaged store raises ``CorruptStateError`` and writes nothing, an unknown run id raises
``UnknownRunError``, a run id that breaks the rule of ``run_ids`` raises
``InvalidRunIdError``, and every other failure of the store (permissions, a full disk, a path
that cannot be created) is a ``RecoveryError`` naming the path and what to do, never a bare
``OSError``.

A backend is opened in one of three modes (``mode=``):

- ``"create"`` (default): the store (folder, database) is created if missing, and checked
  for writing at once, so a location that cannot be written fails before anything runs.
- ``"write"``: an existing store is written, a missing one is never created; reading it
  behaves as an empty store. ``Recovery(resume=True)`` uses it, so resuming an unknown run
  creates nothing.
- ``"read"``: nothing is ever written or created; a missing store reads as empty. The
  command line uses it, and it works on read-only files and folders.

``acquire_lease(run_id)`` makes the caller the run's one writer (see ``lease``).

Where runs are kept by default (``open_backend(None)``, ``Recovery()``, ``rh-agents runs``,
the demo): ``default_state_path()``, which is, in order,

1. the environment variable ``RH_AGENTS_STATE`` if it is set (a ``.db`` file, or a folder
   for JSON run files, by the rule of ``open_backend``);
2. ``$XDG_STATE_HOME/rh_agents/state.db`` if ``XDG_STATE_HOME`` is set (an absolute path);
3. on Windows, ``%LOCALAPPDATA%\\rh_agents\\state.db``;
4. ``~/.local/state/rh_agents/state.db``.

Why a per-user location rather than a folder of the current directory: a run is looked at
later, from wherever the user happens to be (``rh-agents runs list`` right after
``make demo``, a resume from another shell), and a store relative to the current folder
shows nothing from anywhere else. The XDG base directory specification names
``$XDG_STATE_HOME`` (default ``~/.local/state``) as the place for exactly this kind of data:
state that should persist between runs but is not worth backing up like documents. A
project that wants its own store sets ``RH_AGENTS_STATE`` (``.rh_agents/state.db``, say)
or passes a path.
"""

from __future__ import annotations

import abc
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from rh_agents.core.run_ids import check_run_id
from rh_agents.errors import ConfigurationError, RecoveryError
from rh_agents.recovery.lease import LeaseOwner, NoLease, RunLease
from rh_agents.recovery.records import CheckpointRecord, RunInfo, RunStatus

__all__ = [
    "STATE_ENV_VAR",
    "OpenMode",
    "StateBackend",
    "check_clock",
    "check_mode",
    "default_state_path",
]

STATE_ENV_VAR = "RH_AGENTS_STATE"


def default_state_path() -> Path:
    """Where runs are kept when no path is given (see the module docstring: the environment
    variable ``RH_AGENTS_STATE``, else a per-user state folder). Read at each call, so a
    change of the environment applies at once."""
    chosen = os.environ.get(STATE_ENV_VAR)
    if chosen:
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the specification ignores a relative one
        return Path(xdg) / "rh_agents" / "state.db"
    local = os.environ.get("LOCALAPPDATA")
    if sys.platform == "win32" and local:
        return Path(local) / "rh_agents" / "state.db"
    return Path.home() / ".local" / "state" / "rh_agents" / "state.db"


OpenMode = Literal["create", "write", "read"]
_MODES = ("create", "write", "read")


def check_mode(mode: str) -> OpenMode:
    """``mode`` if it is an ``OpenMode``, else ``ConfigurationError``."""
    if mode not in _MODES:
        raise ConfigurationError(f"unknown open mode {mode!r}; use one of {list(_MODES)}")
    return mode  # type: ignore[return-value]  # checked just above


def check_clock(backend: str, now: Callable[[], float]) -> Callable[[], float]:
    """``now`` if it can be called, else ``ConfigurationError``: a number passed for the clock
    failed only at the first write, as a bare TypeError."""
    if not callable(now):
        raise ConfigurationError(
            f"{backend}(now=...) must be a function that returns the time in seconds (such "
            f"as time.time), got {now!r}"
        )
    return now


class StateBackend(abc.ABC):
    """Storage for runs and their checkpoints; see the module docstring."""

    @abc.abstractmethod
    def create_run(self, run_id: str) -> RunInfo:
        """Register a new run (status ``RUNNING``); an existing id is a ``RecoveryError``."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunInfo:
        """The run's metadata, or ``UnknownRunError``."""

    @abc.abstractmethod
    def list_runs(self) -> list[RunInfo]:
        """Every run, most recently updated first."""

    def list_readable_runs(self) -> tuple[list[RunInfo], list[RecoveryError]]:
        """Every run that can be read (most recently updated first), and one error for each
        run that cannot (a corrupt or unreadable run file), rather than failing as a whole
        the way ``list_runs`` does. This default has nothing to skip: it is ``list_runs``."""
        return self.list_runs(), []

    @abc.abstractmethod
    def save(
        self, run_id: str, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> None:
        """Write ``records`` (replacing any with the same address) and touch the run's update
        time, optionally changing its status, in one transaction."""

    @abc.abstractmethod
    def load(self, run_id: str) -> dict[str, CheckpointRecord]:
        """Every checkpoint of the run by address, or ``UnknownRunError``."""

    def set_resume_command(self, run_id: str, command: str | None) -> None:
        """Record the command that resumes ``run_id`` (``RunInfo.resume_command``), under
        the run's lease. This default stores nothing: a backend that cannot keep it still
        works, and ``rh-agents runs show`` then names the ``ExecutionState.resume`` call."""
        check_run_id(run_id)

    def acquire_lease(self, run_id: str) -> RunLease:
        """Hold ``run_id`` as its one writer until the lease is released, or raise
        ``RunLockedError`` naming the live holder (see ``rh_agents.recovery.lease``).

        This default keeps no other process out: a backend shared between processes must
        override it."""
        check_run_id(run_id)
        return NoLease(run_id, LeaseOwner.current(uuid.uuid4().hex, time.time()))

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and connections; idempotent."""

    def __enter__(self) -> StateBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
