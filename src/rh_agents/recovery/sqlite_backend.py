"""``SQLiteBackend``: the default state backend, one SQLite database per project.

::

    backend = SQLiteBackend("runs/state.db")          # created (with its folder) if missing
    state = ExecutionState(recovery=Recovery(backend))
    SQLiteBackend("runs/state.db", mode="read").list_runs()    # never writes
    SQLiteBackend()                                   # the default store, default_state_path()

The database runs in WAL mode with ``synchronous=NORMAL``: a commit survives the process being
killed (the data is in the operating system's cache), and only an operating-system crash or
power loss can drop the last commits. Each ``save`` is one transaction. One object owns the
connection; a lock serialises calls, so the backend may also be used from other threads.
Readers in other processes (``rh-agents runs show``) never block the writer.

Opening (``mode``, see ``backend``): ``"create"`` makes the folder and the database, sets WAL
and the schema, and proves at once that the file can be written (a write in a transaction
that is rolled back), so a read-only file or folder, a folder that cannot be created or a
file that is not a database fails before anything runs. ``"write"`` opens an existing file
(``mode=rw``: never created) and prepares it at its first write. ``"read"`` opens it with
``mode=ro`` and ``query_only``. A missing file, or a database with none of rh_agents' tables
(a 0-byte file), reads as an empty store and is left as it is; a database with only some of
them, or with a table of one of their names that lacks its columns (damaged, or another
program's), is a ``CorruptStateError`` naming the file, and nothing is written to it.

Reading a WAL database needs SQLite's side files ``-wal`` and ``-shm``: a reader creates them
(empty; SQLite's own, no data) when its folder is writable and they are missing. In a
read-only folder they cannot be created, so a reader opens the file with ``immutable=1``,
which is safe there because no process can write in that folder either; if a write-ahead log
holding commits is there but cannot be opened, the error says so rather than show old data.

Leases (``acquire_lease``): a row per run in the table ``leases``, a heartbeat thread and a
token check in every ``save`` (a read inside its transaction: no extra page is written); see
``rh_agents.recovery.lease`` for the design.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from rh_agents.core.run_ids import check_run_id
from rh_agents.errors import ConfigurationError, CorruptStateError, RecoveryError, UnknownRunError
from rh_agents.recovery.backend import (
    OpenMode,
    StateBackend,
    check_clock,
    check_mode,
    default_state_path,
)
from rh_agents.recovery.lease import (
    DEFAULT_STALE_AFTER,
    Heartbeat,
    LeaseOwner,
    RunLease,
    locked_error,
    lost_error,
    owner_is_dead,
)
from rh_agents.recovery.records import CHECKPOINT_ADAPTER, CheckpointRecord, RunInfo, RunStatus
from rh_agents.resilience.checks import check_number

__all__ = ["SQLiteBackend"]

logger = logging.getLogger("rh_agents.recovery")

_BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    resume_command TEXT
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
    input_digest TEXT,
    PRIMARY KEY (run_id, address)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    scope TEXT NOT NULL,
    started TEXT NOT NULL,
    token TEXT NOT NULL,
    since REAL NOT NULL,
    heartbeat REAL NOT NULL
);
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
    "input_digest",
)
_INSERT = (
    f"INSERT OR REPLACE INTO checkpoints ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_LEASE_COLUMNS = ("pid", "host", "scope", "started", "token", "since", "heartbeat")
# The columns each table of a store must have. A store written before resume_command or
# input_digest existed lacks them (read as NULL, added at its first write), and one written
# before leases existed lacks that table (created at its first write); runs and checkpoints
# have been there from the first version.
_NEEDED = {
    "runs": {"run_id", "created", "updated", "status"},
    "checkpoints": set(_COLUMNS) - {"input_digest"},
    "leases": {"run_id", *_LEASE_COLUMNS},
}
_CORE_TABLES = {"runs", "checkpoints"}
_RENEW = "UPDATE leases SET heartbeat = ? WHERE run_id = ? AND token = ?"


class SQLiteBackend(StateBackend):
    """State in one SQLite file; see the module docstring.

    - ``path``: the database file; ``None`` is the default store (``default_state_path()``).
    - ``mode``: ``"create"`` (default), ``"write"`` or ``"read"`` (see ``backend``).
    - ``now``: gives wall-clock times.
    - ``lease_stale_after``: seconds without a heartbeat after which a lease held from another
      machine (where its pid cannot be checked) is taken over.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        mode: OpenMode = "create",
        now: Callable[[], float] = time.time,
        lease_stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.path = Path(path) if path is not None else default_state_path()
        self.mode = check_mode(mode)
        self.lease_stale_after = _check_stale_after(lease_stale_after)
        self._now = check_clock("SQLiteBackend", now)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._writable = False  # pragmas and schema applied, writing proven
        self._tables = False  # the runs and checkpoints tables exist
        self._resume_column = False  # runs has resume_command (older stores lack it)
        self._digest_column = False  # checkpoints has input_digest (older stores lack it)
        self._leases: dict[str, str] = {}  # run id -> token of the leases taken here
        # (device, inode) of the file written to, once writes are prepared (see
        # _check_same_file); None before, or where the file cannot be stat'ed.
        self._file: tuple[int, int] | None = None
        if self.mode == "create":
            with self._lock:
                try:
                    self._make_folder()
                    with self._errors("open it for writing"):
                        self._prepare_writes()
                except BaseException:
                    self._drop_connection()
                    raise

    # --- connection -------------------------------------------------------------------------

    def _make_folder(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecoveryError(
                f"cannot create the folder {folder} for state database {self.path} "
                f"({exc.strerror or exc}); create it, or pass a path in a folder this process "
                "may write"
            ) from exc

    def _uri(self, mode: str, *, immutable: bool = False) -> str:
        # The file name's bytes, quoted: a name that is not UTF-8 (byte 0xff, which Python
        # holds as the lone surrogate "\udcff") could not be quoted as text, and every read
        # of such a store failed with UnicodeEncodeError. SQLite decodes %FF back to the byte.
        path = quote(os.fsencode(self.path.absolute()), safe="/")
        return f"file:{path}?mode={mode}" + ("&immutable=1" if immutable else "")

    def _open(self) -> sqlite3.Connection | None:
        """The connection (opened on first use, under ``_lock``); ``None`` while a store that
        this backend may not create does not exist."""
        if self._closed:
            raise RecoveryError(f"state database {self.path} is closed")
        if self._conn is not None:
            return self._conn
        try:
            found = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            if self.mode != "create":
                return None
        except OSError:
            pass  # let SQLite say what is wrong
        else:
            if not stat.S_ISREG(found.st_mode):
                # A folder would be "disk I/O error" when read, and a named pipe would hang.
                kind = "a folder" if stat.S_ISDIR(found.st_mode) else "not a regular file"
                raise RecoveryError(
                    f"state database {self.path} is {kind}; pass the path of a .db file (or of "
                    "a folder without the .db suffix, for JSON run files)"
                )
        if self.mode == "create":
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
            )
        elif self.mode == "write":
            self._conn = self._connect(self._uri("rw"))
        else:
            self._conn = self._connect_read()
        return self._conn

    def _connect(self, uri: str) -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
        )

    def _connect_read(self) -> sqlite3.Connection:
        conn = self._connect(self._uri("ro"))
        try:
            conn.execute("PRAGMA query_only=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if _code(exc) not in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
                raise
            wal = Path(f"{self.path}-wal")
            try:
                pending = wal.stat().st_size > 0
            except OSError:
                pending = False
            if pending:
                raise RecoveryError(
                    f"state database {self.path} cannot be read: its write-ahead log {wal} "
                    f"holds commits, and SQLite cannot open that log without creating "
                    f"{self.path.name}-shm in a folder it may not write ({exc}). Read it "
                    "where the folder is writable (copy the folder, or give this account "
                    "write access); the next run there folds the log into the database."
                ) from exc
        # A read-only folder: nobody can write here, so reading the file as immutable is exact.
        conn = self._connect(self._uri("ro", immutable=True))
        conn.execute("PRAGMA query_only=ON")
        return conn

    def _prepare_writes(self) -> sqlite3.Connection:
        """The connection, ready for writing (under ``_lock`` and ``_errors``)."""
        if self.mode == "read":
            raise RecoveryError(
                f"state database {self.path} was opened read-only (mode='read'); open it with "
                "mode='create' or 'write' to change it"
            )
        conn = self._open()
        if conn is None:
            raise RecoveryError(
                f"state database {self.path} does not exist, and this backend does not create "
                "it (mode='write'); nothing was created. Check the path, or open it with "
                "mode='create'."
            )
        if self._writable:
            return conn
        self._check_tables(conn)  # (before anything is written to another program's file)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        if not _has_resume_column(conn):  # a store written before the column existed
            conn.execute("ALTER TABLE runs ADD COLUMN resume_command TEXT")
        if not _has_digest_column(conn):  # (the same)
            conn.execute("ALTER TABLE checkpoints ADD COLUMN input_digest TEXT")
        # Prove now, not at the first checkpoint, that the file can be written: a write in a
        # transaction that is rolled back changes nothing.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
        finally:
            conn.execute("ROLLBACK")
        self._writable = self._tables = self._resume_column = self._digest_column = True
        self._file = _identity(self.path)
        return conn

    def _check_same_file(self) -> None:
        """Refuse to write when the database file was deleted or replaced since it was
        opened: SQLite would go on writing to the unlinked file, and every checkpoint written
        from then on would be lost without a word."""
        if self._file is not None and _identity(self.path) != self._file:
            raise RecoveryError(
                f"state database {self.path} was deleted or replaced while this process was "
                "writing to it; nothing of this write was stored. Restore the file, or resume "
                "the run from a copy of it"
            )

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._failure(exc, action) from exc

    def _failure(self, exc: sqlite3.Error, action: str) -> RecoveryError:
        """A ``RecoveryError`` that says what went wrong with the file and what to do."""
        text = str(exc)
        code = _code(exc)
        where = f"state database {self.path}"
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or any(
            word in text for word in ("not a database", "malformed", "corrupt")
        ):
            return CorruptStateError(
                f"{where} is damaged ({text}) while trying to {action}; nothing was written. "
                "Restore it from a copy or point the backend at a new file."
            )
        if "no such table" in text or "no such column" in text:
            return CorruptStateError(
                f"{where} is not an rh_agents state database ({text}) while trying to "
                f"{action}; nothing was written. Point the backend at another file."
            )
        if code == sqlite3.SQLITE_FULL:
            return RecoveryError(
                f"{where}: cannot {action}: the disk is full ({text}); nothing of this write "
                "was stored. Free some space, then resume the run."
            )
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
            return RecoveryError(
                f"{where}: cannot {action}: the file or its folder is read-only ({text}). "
                "Reading still works (`rh-agents runs list`); to run, make the file and its "
                f"folder {self.path.parent} writable, or use another path."
            )
        if code == sqlite3.SQLITE_CANTOPEN:
            return RecoveryError(
                f"{where}: cannot {action}: the file cannot be opened ({text}). Check that it "
                f"is a file, and that its folder {self.path.parent} exists and may be read "
                "and written by this process."
            )
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return RecoveryError(
                f"{where}: cannot {action}: another process kept it locked for more than "
                f"{_BUSY_TIMEOUT:.0f}s ({text}); try again once that process is done."
            )
        if code == sqlite3.SQLITE_IOERR:
            return RecoveryError(
                f"{where}: cannot {action}: an I/O error ({text}); check the disk, its free "
                "space and the file's permissions."
            )
        return RecoveryError(f"{where}: cannot {action}: {text}")

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            conn = self._prepare_writes()
            self._check_same_file()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on some errors (FULL)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection | None]:
        """The connection for a read, or ``None`` for a store that has no runs table yet."""
        with self._lock, self._errors(action):
            conn = self._open()
            if conn is not None and not self._tables:
                if self._check_tables(conn):
                    self._tables = True
                    self._resume_column = _has_resume_column(conn)
                    self._digest_column = _has_digest_column(conn)
                else:
                    conn = None
            yield conn

    def _check_tables(self, conn: sqlite3.Connection) -> bool:
        """Whether the database holds rh_agents' tables; ``False`` for one that holds none of
        them (a new database, a 0-byte file: an empty store). One that holds only some of
        them, or a table of one of their names without the columns it needs, is damaged or
        another program's: a ``CorruptStateError``, since read as an empty store it would
        hide what it holds, and written to it would get tables added to that program's file."""
        names = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        ours = sorted(names & _NEEDED.keys())
        if not ours:
            return False
        missing = sorted(_CORE_TABLES - names)
        if missing:
            raise CorruptStateError(
                f"state database {self.path} is not a whole rh_agents state database: it has "
                f"the table(s) {', '.join(ours)} but not {', '.join(missing)} (it is damaged, "
                "or another program's); nothing was read or written. Restore it from a copy, "
                "or point the backend at another file."
            )
        for table in ours:
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            lacking = sorted(_NEEDED[table] - columns)
            if lacking:
                raise CorruptStateError(
                    f"state database {self.path} is not an rh_agents state database: its "
                    f"table {table} has no column(s) {', '.join(lacking)} (it is another "
                    "program's, or was altered); nothing was read or written. Point the "
                    "backend at another file."
                )
        return True

    def _validated(self, build: Callable[[], Any], what: str) -> Any:
        try:
            return build()
        except ValidationError as exc:
            raise CorruptStateError(
                f"state database {self.path} holds {what} that does not have the expected "
                f"shape ({exc.error_count()} errors: {exc.errors()[0]['msg']}); it may have "
                "been edited by hand. Nothing was written; restore it from a copy."
            ) from exc

    # --- runs -------------------------------------------------------------------------------

    def create_run(self, run_id: str) -> RunInfo:
        check_run_id(run_id)
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
        info: RunInfo = self._validated(
            lambda: RunInfo(
                run_id=row[0],
                created=row[1],
                updated=row[2],
                status=row[3],
                checkpoints=row[4],
                resume_command=row[5],
            ),
            f"run {row[0]!r}",
        )
        return info

    @property
    def _read_columns(self) -> tuple[str, ...]:
        if self._digest_column:
            return _COLUMNS
        return tuple("NULL" if name == "input_digest" else name for name in _COLUMNS)

    @property
    def _run_query(self) -> str:
        # A store written before resume_command existed is read as it is (never altered
        # by a read): the column reads as NULL.
        command = "r.resume_command" if self._resume_column else "NULL"
        return (
            "SELECT r.run_id, r.created, r.updated, r.status, "
            f"(SELECT COUNT(*) FROM checkpoints c WHERE c.run_id = r.run_id), {command} "
            "FROM runs r"
        )

    def get_run(self, run_id: str) -> RunInfo:
        check_run_id(run_id)
        with self._reading(f"read run {run_id!r}") as conn:
            row = (
                None
                if conn is None
                else conn.execute(self._run_query + " WHERE r.run_id = ?", (run_id,)).fetchone()
            )
        if row is None:
            raise UnknownRunError(self._unknown(run_id))
        return self._info(row)

    def _unknown(self, run_id: str) -> str:
        missing = "" if self.path.exists() else " (there is no such file; nothing was created)"
        return (
            f"no run {run_id!r} in state database {self.path}{missing}; "
            "`rh-agents runs list` shows the known runs"
        )

    def list_runs(self) -> list[RunInfo]:
        runs, _ = self._scan(skip_unreadable=False)
        return runs

    def list_readable_runs(self) -> tuple[list[RunInfo], list[RecoveryError]]:
        return self._scan(skip_unreadable=True)

    def _scan(self, *, skip_unreadable: bool) -> tuple[list[RunInfo], list[RecoveryError]]:
        """The runs of the database; a run row that cannot be read (a status this version
        does not know, a time that is text) raises, or with ``skip_unreadable`` is left out
        and its error returned, as a JSON folder's damaged run file is: one such row hid
        every run from ``rh-agents runs list`` and the viewer."""
        with self._reading("list runs") as conn:
            rows = (
                []
                if conn is None
                else conn.execute(self._run_query + " ORDER BY r.updated DESC").fetchall()
            )
        runs = []
        problems: list[RecoveryError] = []
        for row in rows:
            try:
                runs.append(self._info(row))
            except CorruptStateError as exc:
                if not skip_unreadable:
                    raise
                problems.append(exc)
        return runs, problems

    def save(
        self, run_id: str, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> None:
        check_run_id(run_id)
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
                r.input_digest,
            )
            for r in records
        ]
        with self._transaction(f"save checkpoints of run {run_id!r}") as conn:
            now = self._now()
            token = self._leases.get(run_id)
            if token is not None:  # fencing: a lease taken over means this write must not land
                held = conn.execute("SELECT token FROM leases WHERE run_id = ?", (run_id,))
                if held.fetchone() != (token,):
                    raise self._lost(conn, run_id, now)
            if status is None:
                cursor = conn.execute("UPDATE runs SET updated = ? WHERE run_id = ?", (now, run_id))
            else:
                cursor = conn.execute(
                    "UPDATE runs SET updated = ?, status = ? WHERE run_id = ?",
                    (now, status.value, run_id),
                )
            if cursor.rowcount == 0:
                raise UnknownRunError(self._unknown(run_id))
            conn.executemany(_INSERT, rows)

    def set_resume_command(self, run_id: str, command: str | None) -> None:
        check_run_id(run_id)
        with self._transaction(f"record how to resume run {run_id!r}") as conn:
            token = self._leases.get(run_id)
            if token is not None:  # fencing, as in save
                held = conn.execute("SELECT token FROM leases WHERE run_id = ?", (run_id,))
                if held.fetchone() != (token,):
                    raise self._lost(conn, run_id, self._now())
            cursor = conn.execute(
                "UPDATE runs SET resume_command = ? WHERE run_id = ?", (command, run_id)
            )
            if cursor.rowcount == 0:
                raise UnknownRunError(self._unknown(run_id))

    def load(self, run_id: str) -> dict[str, CheckpointRecord]:
        self.get_run(run_id)
        with self._reading(f"read the checkpoints of run {run_id!r}") as conn:
            rows = (
                []
                if conn is None
                else conn.execute(
                    # A store written before input_digest existed is read as it is (never
                    # altered by a read): the column reads as NULL.
                    f"SELECT {', '.join(self._read_columns)} FROM checkpoints "
                    "WHERE run_id = ? ORDER BY seq",
                    (run_id,),
                ).fetchall()
            )
        records: dict[str, CheckpointRecord] = self._validated(
            lambda: {
                row[1]: CHECKPOINT_ADAPTER.validate_python(dict(zip(_COLUMNS, row, strict=True)))
                for row in rows
            },
            f"a checkpoint of run {run_id!r}",
        )
        return records

    # --- leases -----------------------------------------------------------------------------

    def acquire_lease(self, run_id: str) -> RunLease:
        """Hold ``run_id`` as its one writer (see ``rh_agents.recovery.lease``)."""
        check_run_id(run_id)
        token = uuid.uuid4().hex
        with self._transaction(f"take the lease of run {run_id!r}") as conn:
            now = self._now()
            row = conn.execute(
                f"SELECT {', '.join(_LEASE_COLUMNS)} FROM leases WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is not None:
                holder = LeaseOwner(*row)
                if not owner_is_dead(holder, now, self.lease_stale_after):
                    raise locked_error(run_id, holder, f"state database {self.path}", now)
                logger.info(
                    "run %r: taking over the lease left by %s, which is gone",
                    run_id,
                    holder.describe(now),
                )
            owner = LeaseOwner.current(token, now)
            conn.execute(
                f"INSERT OR REPLACE INTO leases (run_id, {', '.join(_LEASE_COLUMNS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, *(getattr(owner, name) for name in _LEASE_COLUMNS)),
            )
            self._leases[run_id] = token
        return _SQLiteLease(self, run_id, owner)

    def _lost(self, conn: sqlite3.Connection, run_id: str, now: float) -> RecoveryError:
        row = conn.execute(
            f"SELECT {', '.join(_LEASE_COLUMNS)} FROM leases WHERE run_id = ?", (run_id,)
        ).fetchone()
        holder = "nobody" if row is None else LeaseOwner(*row).describe(now)
        return lost_error(run_id, holder, f"state database {self.path}")

    def _release_lease(self, run_id: str, token: str) -> None:
        with self._lock:
            if self._leases.get(run_id) == token:
                del self._leases[run_id]
            if self._closed or self._conn is None:
                return
        with self._transaction(f"release the lease of run {run_id!r}") as conn:
            conn.execute("DELETE FROM leases WHERE run_id = ? AND token = ?", (run_id, token))

    def close(self) -> None:
        """Release the leases taken through this object, then the connection; idempotent."""
        with self._lock:
            held = list(self._leases.items())
        for run_id, token in held:
            try:
                self._release_lease(run_id, token)
            except RecoveryError:
                logger.warning("could not release the lease of run %r", run_id, exc_info=True)
        with self._lock:
            self._closed = True
            self._drop_connection()


class _SQLiteLease(RunLease):
    """A lease row, renewed by a heartbeat thread with its own connection."""

    def __init__(self, backend: SQLiteBackend, run_id: str, owner: LeaseOwner) -> None:
        super().__init__(run_id, owner)
        self._backend = backend
        beat = _Renewal(backend._uri("rw"), run_id, owner.token, backend._now)
        self._heartbeat = Heartbeat(
            beat, beat.close, backend.lease_stale_after / 4, name=f"rh-agents lease {run_id}"
        )
        weakref.finalize(self, self._heartbeat.stop)

    def _release(self) -> None:
        self._heartbeat.stop()
        self._backend._release_lease(self.run_id, self.owner.token)


class _Renewal:
    """One heartbeat: renew the lease row's time; ``False`` once the row is gone."""

    def __init__(self, uri: str, run_id: str, token: str, now: Callable[[], float]) -> None:
        self._uri = uri
        self._run_id = run_id
        self._token = token
        self._now = now
        self._conn: sqlite3.Connection | None = None

    def __call__(self) -> bool:
        if self._conn is None:
            self._conn = sqlite3.connect(self._uri, uri=True, isolation_level=None, timeout=5.0)
        cursor = self._conn.execute(_RENEW, (self._now(), self._run_id, self._token))
        return cursor.rowcount > 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _check_stale_after(value: Any) -> float:
    """``lease_stale_after`` as a float, or a ``ConfigurationError`` naming it: the heartbeat
    thread renews the lease every quarter of it, so 0, a negative number or nan made that
    thread renew in a busy loop, a string failed only once a run started (a bare TypeError),
    and a quarter above ``threading.TIMEOUT_MAX`` cannot be waited for at all."""
    seconds = check_number(
        "SQLiteBackend(lease_stale_after=...)",
        value,
        minimum=0,
        inclusive=False,
        hint="; it is the seconds without a heartbeat after which a lease held from another "
        "machine is taken over",
    )
    limit = 4 * threading.TIMEOUT_MAX
    if seconds > limit:
        raise ConfigurationError(
            f"SQLiteBackend(lease_stale_after=...) must be at most {limit:.0f} seconds (its "
            f"heartbeat waits a quarter of it), got {value!r}"
        )
    return seconds


def _has_resume_column(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "resume_command" for row in conn.execute("PRAGMA table_info(runs)"))


def _has_digest_column(conn: sqlite3.Connection) -> bool:
    rows = conn.execute("PRAGMA table_info(checkpoints)")
    return any(row[1] == "input_digest" for row in rows)


def _code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``exc`` (``SQLITE_FULL``, ...), if known."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of ``path``; ``None`` if it does not exist."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino
