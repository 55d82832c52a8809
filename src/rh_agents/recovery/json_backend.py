"""``JSONBackend``: one plain JSON file per run, for small runs and for reading by eye.

::

    backend = JSONBackend(".rh_agents/runs")           # a directory; files are <run_id>.json
    state = ExecutionState(recovery=Recovery(backend, checkpoint=CheckpointPolicy.batched()))

Every ``save`` rewrites the run's whole file: the new text goes to a temporary file in the same
directory, is flushed and fsynced, then ``os.replace`` swaps it in, so a reader (or a crash)
sees either the old file or the new one, never half of one. Rewriting costs time in proportion
to the run's size, so prefer batched checkpoints or ``SQLiteBackend`` for large runs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rh_agents.errors import CorruptStateError, RecoveryError, UnknownRunError
from rh_agents.recovery.backend import StateBackend
from rh_agents.recovery.records import CHECKPOINT_ADAPTER, CheckpointRecord, RunInfo, RunStatus

__all__ = ["JSONBackend"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FORMAT = 1


class JSONBackend(StateBackend):
    """State as JSON files in ``directory``; see the module docstring."""

    def __init__(self, directory: str | Path, *, now: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._now = now
        self._lock = threading.Lock()
        # The last document read or written per run: saves only add to it.
        self._docs: dict[str, dict[str, Any]] = {}
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, run_id: str) -> Path:
        if not _SAFE_ID.match(run_id):
            raise RecoveryError(
                f"run id {run_id!r} cannot name a file; use letters, digits, '.', '_' and '-'"
            )
        return self.directory / f"{run_id}.json"

    def _read(self, run_id: str) -> dict[str, Any]:
        cached = self._docs.get(run_id)
        if cached is not None:
            return cached
        path = self._path(run_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnknownRunError(
                f"no run {run_id!r} in {self.directory} (no file {path.name}); "
                "`rh-agents runs list` shows the known runs"
            ) from None
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError(f"not an rh_agents run file (format {_FORMAT})")
            info = RunInfo.model_validate(doc["run"])
            records = {
                address: CHECKPOINT_ADAPTER.validate_python(item)
                for address, item in doc["checkpoints"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise CorruptStateError(
                f"state file {path} cannot be read ({type(exc).__name__}: {exc}); it may be "
                "truncated or edited by hand. Nothing was written; restore it or remove it."
            ) from exc
        loaded = {"run": info, "checkpoints": records}
        self._docs[run_id] = loaded
        return loaded

    def _write(self, run_id: str, info: RunInfo, records: dict[str, CheckpointRecord]) -> None:
        path = self._path(run_id)
        doc = {
            "format": _FORMAT,
            "run": info.model_dump(mode="json"),
            "checkpoints": {a: CHECKPOINT_ADAPTER.dump_python(r) for a, r in records.items()},
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{run_id}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(doc, handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._docs[run_id] = {"run": info, "checkpoints": records}

    def create_run(self, run_id: str) -> RunInfo:
        with self._lock:
            if self._path(run_id).exists():
                raise RecoveryError(
                    f"run {run_id!r} already exists in {self.directory}; resume it with "
                    f"ExecutionState.resume({run_id!r}) or choose another run id"
                )
            now = self._now()
            info = RunInfo(run_id=run_id, created=now, updated=now)
            self._write(run_id, info, {})
            return info

    def get_run(self, run_id: str) -> RunInfo:
        with self._lock:
            doc = self._read(run_id)
            info: RunInfo = doc["run"]
            return info.model_copy(update={"checkpoints": len(doc["checkpoints"])})

    def list_runs(self) -> list[RunInfo]:
        runs = [self.get_run(p.stem) for p in sorted(self.directory.glob("*.json"))]
        return sorted(runs, key=lambda info: info.updated, reverse=True)

    def save(
        self, run_id: str, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> None:
        with self._lock:
            doc = self._read(run_id)
            merged = dict(doc["checkpoints"])
            for record in records:
                merged[record.address] = record
            info: RunInfo = doc["run"]
            update: dict[str, Any] = {"updated": self._now(), "checkpoints": len(merged)}
            if status is not None:
                update["status"] = status
            self._write(run_id, info.model_copy(update=update), merged)

    def load(self, run_id: str) -> dict[str, CheckpointRecord]:
        with self._lock:
            records: dict[str, CheckpointRecord] = self._read(run_id)["checkpoints"]
            return dict(sorted(records.items(), key=lambda item: item[1].seq))

    def close(self) -> None:
        with self._lock:
            self._docs.clear()
