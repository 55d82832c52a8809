"""``SQLiteBackend``: the default state backend, one SQLite database per project.

::

    backend = SQLiteBackend(".rh_agents/state.db")    # created (with its folder) if missing
    state = ExecutionState(recovery=Recovery(backend))

The database runs in WAL mode with ``synchronous=NORMAL``: a commit survives the process being
killed (the data is in the operating system's cache), and only an operating-system crash or
power loss can drop the last commits. Each ``save`` is one transaction. One object owns the
connection; a lock serialises calls, so the backend may also be used from other threads. No
thread is started. Readers in other processes (``rh-agents runs show``) never block the writer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rh_agents.errors import CorruptStateError, RecoveryError, UnknownRunError
from rh_agents.recovery.backend import StateBackend
from rh_agents.recovery.records import CHECKPOINT_ADAPTER, CheckpointRecord, RunInfo, RunStatus

__all__ = ["SQLiteBackend"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    address TEXT NOT NULL,
    seq INTEGER NOT NULL,
    actor TEXT NOT NULL,
    actor_version TEXT NOT NULL,
    status TEXT NOT NULL,
    result_json TEXT,
    output_model TEXT,
    group_id TEXT,
    parallel_index INTEGER,
    error TEXT,
    execution_time REAL NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (run_id, address)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "run_id",
    "address",
    "seq",
    "actor",
    "actor_version",
    "status",
    "result_json",
    "output_model",
    "group_id",
    "parallel_index",
    "error",
    "execution_time",
    "attempts",
)
_INSERT = (
    f"INSERT OR REPLACE INTO checkpoints ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


class SQLiteBackend(StateBackend):
    """State in one SQLite file; see the module docstring. ``now`` gives wall-clock times."""

    def __init__(
        self,
        path: str | Path = Path(".rh_agents") / "state.db",
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._now = now
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise RecoveryError(f"cannot open state database {self.path}: {exc}") from exc
        try:
            with self._errors("open"):
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
        except RecoveryError:
            self._conn.close()
            self._conn = None
            raise

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "not a database" in text or "malformed" in text or "corrupt" in text:
                raise CorruptStateError(
                    f"state database {self.path} is damaged ({text}) while trying to {action}; "
                    "nothing was written. Restore it from a copy or point the backend at a "
                    "new file."
                ) from exc
            raise RecoveryError(f"state database {self.path}: cannot {action}: {text}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RecoveryError(f"state database {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def create_run(self, run_id: str) -> RunInfo:
        now = self._now()
        with self._transaction(f"create run {run_id!r}") as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise RecoveryError(
                    f"run {run_id!r} already exists in {self.path}; resume it with "
                    f"ExecutionState.resume({run_id!r}) or choose another run id"
                )
            conn.execute(
                "INSERT INTO runs (run_id, created, updated, status) VALUES (?, ?, ?, ?)",
                (run_id, now, now, RunStatus.RUNNING.value),
            )
        return RunInfo(run_id=run_id, created=now, updated=now)

    def _info(self, row: Any) -> RunInfo:
        return RunInfo(
            run_id=row[0], created=row[1], updated=row[2], status=row[3], checkpoints=row[4]
        )

    _RUN_QUERY = (
        "SELECT r.run_id, r.created, r.updated, r.status, "
        "(SELECT COUNT(*) FROM checkpoints c WHERE c.run_id = r.run_id) FROM runs r"
    )

    def get_run(self, run_id: str) -> RunInfo:
        with self._lock, self._errors(f"read run {run_id!r}"):
            row = (
                self._connection()
                .execute(self._RUN_QUERY + " WHERE r.run_id = ?", (run_id,))
                .fetchone()
            )
        if row is None:
            raise UnknownRunError(self._unknown(run_id))
        return self._info(row)

    def _unknown(self, run_id: str) -> str:
        return (
            f"no run {run_id!r} in state database {self.path}; "
            "`rh-agents runs list` shows the known runs"
        )

    def list_runs(self) -> list[RunInfo]:
        with self._lock, self._errors("list runs"):
            rows = (
                self._connection().execute(self._RUN_QUERY + " ORDER BY r.updated DESC").fetchall()
            )
        return [self._info(row) for row in rows]

    def save(
        self, run_id: str, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> None:
        rows = [
            (
                r.run_id,
                r.address,
                r.seq,
                r.actor,
                r.actor_version,
                r.status,
                r.result_json,
                r.output_model,
                r.group_id,
                r.parallel_index,
                r.error,
                r.execution_time,
                r.attempts,
            )
            for r in records
        ]
        with self._transaction(f"save checkpoints of run {run_id!r}") as conn:
            if status is None:
                cursor = conn.execute(
                    "UPDATE runs SET updated = ? WHERE run_id = ?", (self._now(), run_id)
                )
            else:
                cursor = conn.execute(
                    "UPDATE runs SET updated = ?, status = ? WHERE run_id = ?",
                    (self._now(), status.value, run_id),
                )
            if cursor.rowcount == 0:
                raise UnknownRunError(self._unknown(run_id))
            conn.executemany(_INSERT, rows)

    def load(self, run_id: str) -> dict[str, CheckpointRecord]:
        self.get_run(run_id)
        with self._lock, self._errors(f"read the checkpoints of run {run_id!r}"):
            rows = (
                self._connection()
                .execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM checkpoints WHERE run_id = ? ORDER BY seq",
                    (run_id,),
                )
                .fetchall()
            )
        return {
            row[1]: CHECKPOINT_ADAPTER.validate_python(dict(zip(_COLUMNS, row, strict=True)))
            for row in rows
        }

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
