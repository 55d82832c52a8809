"""The state backend interface: where runs and their checkpoints live.

Two implementations ship: ``SQLiteBackend`` (the default, one database file per project) and
``JSONBackend`` (one JSON file per run, for small runs and debugging). Both are synchronous and
are driven by a single writer, the run's ``Recovery`` object, on the event loop's thread::

    backend = open_backend(".rh_agents/state.db")      # a path: SQLite; a directory: JSON
    backend.create_run("r1")
    backend.save("r1", [record])                        # one transaction
    records = backend.load("r1")                        # {address: CheckpointRecord}

Contract for every backend: ``save`` is atomic (all of a batch or none of it), a read of a
damaged store raises ``CorruptStateError`` and writes nothing, and an unknown run id raises
``UnknownRunError``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

from rh_agents.recovery.records import CheckpointRecord, RunInfo, RunStatus

__all__ = ["DEFAULT_STATE_PATH", "StateBackend", "open_backend"]

DEFAULT_STATE_PATH = Path(".rh_agents") / "state.db"


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

    @abc.abstractmethod
    def save(
        self, run_id: str, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> None:
        """Write ``records`` (replacing any with the same address) and touch the run's update
        time, optionally changing its status, in one transaction."""

    @abc.abstractmethod
    def load(self, run_id: str) -> dict[str, CheckpointRecord]:
        """Every checkpoint of the run by address, or ``UnknownRunError``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and connections; idempotent."""

    def __enter__(self) -> StateBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_backend(location: StateBackend | str | Path | None = None) -> StateBackend:
    """A backend for ``location``: a backend is returned as is; ``None`` is the default SQLite
    file ``.rh_agents/state.db``; a path ending in ``.db``/``.sqlite``/``.sqlite3`` is SQLite;
    any other path is a directory of JSON files."""
    if isinstance(location, StateBackend):
        return location
    path = Path(location) if location is not None else DEFAULT_STATE_PATH
    if path.suffix in {".db", ".sqlite", ".sqlite3"}:
        from rh_agents.recovery.sqlite_backend import SQLiteBackend

        return SQLiteBackend(path)
    from rh_agents.recovery.json_backend import JSONBackend

    return JSONBackend(path)
