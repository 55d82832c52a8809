"""``JSONBackend``: one plain JSON file per run, for small runs and for reading by eye.

::

    backend = JSONBackend(".rh_agents/runs")           # a directory; files are <run_id>.json
    state = ExecutionState(recovery=Recovery(backend, checkpoint=CheckpointPolicy.batched()))
    JSONBackend(".rh_agents/runs", mode="read").list_runs()      # never writes

Every ``save`` rewrites the run's whole file: the new text goes to a temporary file in the same
directory, is flushed and fsynced, then ``os.replace`` swaps it in, so a reader (or a crash)
sees either the old file or the new one, never half of one. A write that fails (a full disk,
permissions) leaves the old file as it was and removes the temporary one. Rewriting costs time
in proportion to the run's size, so prefer batched checkpoints or ``SQLiteBackend`` for large
runs.

Opening (``mode``, see ``backend``): ``"create"`` makes the directory and checks that it may be
written; ``"write"`` and ``"read"`` never create it, and a missing directory reads as empty.

Leases (``acquire_lease``): an exclusive ``flock`` on ``<run_id>.lock`` in the directory, held
while the run is written; see ``rh_agents.recovery.lease`` for the design. POSIX only. Taking
it also removes the run's temporary files that a writer killed in the middle of a save left.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rh_agents.core.run_ids import check_run_id
from rh_agents.errors import CorruptStateError, InvalidRunIdError, RecoveryError, UnknownRunError
from rh_agents.recovery.backend import OpenMode, StateBackend, check_clock, check_mode
from rh_agents.recovery.lease import LeaseOwner, RunLease, locked_error, owner_is_dead
from rh_agents.recovery.records import CHECKPOINT_ADAPTER, CheckpointRecord, RunInfo, RunStatus

if sys.platform != "win32":
    import fcntl

__all__ = ["JSONBackend"]

_FORMAT = 1
_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class _NotARegularFile(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


# Opened without blocking: opening a named pipe to read waits for a writer, forever.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _read_regular_file(path: Path) -> bytes:
    """The bytes of the regular file ``path``; ``_NotARegularFile`` for anything else (a
    folder, a named pipe, a device), checked on the opened file: a named pipe called
    ``r.json`` made listing the folder hang, as the SQLite backend already refuses."""
    fd = os.open(path, _OPEN_FLAGS)
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe or device)"
            raise _NotARegularFile(kind)
        return file.read()


class JSONBackend(StateBackend):
    """State as JSON files in ``directory``; see the module docstring. ``mode``:
    ``"create"`` (default), ``"write"`` or ``"read"``; ``now`` gives wall-clock times."""

    def __init__(
        self,
        directory: str | Path,
        *,
        mode: OpenMode = "create",
        now: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.mode = check_mode(mode)
        self._now = check_clock("JSONBackend", now)
        self._lock = threading.Lock()
        # The last document read or written per run: saves only add to it.
        self._docs: dict[str, dict[str, Any]] = {}
        if self.mode == "create":
            self._make_directory()

    def _make_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise RecoveryError(
                f"state directory {self.directory} is a file, not a folder; pass a folder for "
                "JSON run files, or a path ending in .db for SQLite"
            ) from exc
        except OSError as exc:
            raise RecoveryError(
                f"cannot create the state directory {self.directory} ({exc.strerror or exc}); "
                "create it, or pass a folder this process may write"
            ) from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise RecoveryError(
                f"state directory {self.directory} cannot be written by this process; make it "
                "writable or pass another folder (reading works: `rh-agents runs list`)"
            )

    def _path(self, run_id: str) -> Path:
        return self.directory / f"{check_run_id(run_id)}.json"

    def _writing(self) -> None:
        if self.mode == "read":
            raise RecoveryError(
                f"state directory {self.directory} was opened read-only (mode='read'); open it "
                "with mode='create' or 'write' to change it"
            )

    def _corrupt(self, path: Path, problem: str) -> CorruptStateError:
        return CorruptStateError(
            f"state file {path} cannot be read ({problem}); it may be truncated or edited by "
            "hand. Nothing was written; restore it or remove it."
        )

    def _read(self, run_id: str) -> dict[str, Any]:
        cached = self._docs.get(run_id)
        if cached is not None:
            return cached
        path = self._path(run_id)
        try:
            data = _read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):
            if self.directory.exists() and not self.directory.is_dir():
                # (The same sentence as a listing's: "the directory does not exist" was wrong.)
                raise RecoveryError(
                    f"state directory {self.directory} is a file, not a folder of run files"
                ) from None
            missing = "" if self.directory.is_dir() else "; the directory does not exist"
            raise UnknownRunError(
                f"no run {run_id!r} in {self.directory} (no file {path.name}{missing}); "
                "`rh-agents runs list` shows the known runs"
            ) from None
        except _NotARegularFile as exc:
            raise RecoveryError(
                f"state file {path} is {exc.kind}, not a run file; move it out of the folder "
                "of run files"
            ) from None
        except OSError as exc:
            raise RecoveryError(
                f"cannot read state file {path} ({exc.strerror or exc}); check that it is a "
                "file this process may read"
            ) from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._corrupt(path, f"not UTF-8 text: byte {exc.start}") from exc
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError(f"not an rh_agents run file (format {_FORMAT})")
            info = RunInfo.model_validate(doc["run"])
            records = {
                address: CHECKPOINT_ADAPTER.validate_python(item)
                for address, item in doc["checkpoints"].items()
            }
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
            ValidationError,
        ) as exc:
            raise self._corrupt(path, f"{type(exc).__name__}: {exc}") from exc
        loaded = {"run": info, "checkpoints": records}
        self._docs[run_id] = loaded
        return loaded

    def _write(self, run_id: str, info: RunInfo, records: dict[str, CheckpointRecord]) -> None:
        self._writing()
        path = self._path(run_id)
        doc = {
            "format": _FORMAT,
            "run": info.model_dump(mode="json"),
            "checkpoints": {a: CHECKPOINT_ADAPTER.dump_python(r) for a, r in records.items()},
        }
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{run_id}.", suffix=".tmp", dir=self.directory)
        except OSError as exc:
            raise self._write_error(path, exc) from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(doc, handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise self._write_error(path, exc) from exc
            raise
        self._docs[run_id] = {"run": info, "checkpoints": records}

    def _write_error(self, path: Path, exc: OSError) -> RecoveryError:
        kept = f"{path} was left as it was" if path.exists() else f"{path} was not created"
        if exc.errno in _FULL:
            advice = "the disk is full; free some space, then resume the run"
        elif exc.errno in _DENIED:
            advice = (
                f"the folder {self.directory} cannot be written; make it writable or use "
                "another folder"
            )
        else:
            advice = "check the disk and the folder's permissions"
        return RecoveryError(
            f"cannot write state file {path} ({exc.strerror or exc}): {advice}. {kept}."
        )

    def create_run(self, run_id: str) -> RunInfo:
        with self._lock:
            self._writing()
            path = self._path(run_id)
            if path.exists():
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
        runs, _ = self._scan(skip_unreadable=False)
        return runs

    def list_readable_runs(self) -> tuple[list[RunInfo], list[RecoveryError]]:
        return self._scan(skip_unreadable=True)

    def _scan(self, *, skip_unreadable: bool) -> tuple[list[RunInfo], list[RecoveryError]]:
        """The runs of the folder; a run file that cannot be read raises, or with
        ``skip_unreadable`` is left out and its error returned."""
        try:
            names = sorted(entry.name for entry in os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            if self.directory.exists() and not self.directory.is_dir():
                raise RecoveryError(
                    f"state directory {self.directory} is a file, not a folder of run files"
                ) from None
            return [], []
        except OSError as exc:
            raise RecoveryError(
                f"cannot list state directory {self.directory} ({exc.strerror or exc}); check "
                "that this process may read it"
            ) from exc
        runs = []
        problems: list[RecoveryError] = []
        for name in names:
            run_id = name[: -len(".json")]
            if not name.endswith(".json") or not run_id:
                continue
            try:
                check_run_id(run_id)
            except InvalidRunIdError:
                continue  # not a name this backend writes
            try:
                runs.append(self.get_run(run_id))
            except UnknownRunError:
                continue  # removed since the folder was listed: not a run any more
            except RecoveryError as exc:
                if not skip_unreadable:
                    raise
                problems.append(exc)
        return sorted(runs, key=lambda info: info.updated, reverse=True), problems

    def save(
        self, run_id: str, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> None:
        with self._lock:
            self._writing()
            doc = self._read(run_id)
            merged = dict(doc["checkpoints"])
            for record in records:
                merged[record.address] = record
            info: RunInfo = doc["run"]
            update: dict[str, Any] = {"updated": self._now(), "checkpoints": len(merged)}
            if status is not None:
                update["status"] = status
            self._write(run_id, info.model_copy(update=update), merged)

    def set_resume_command(self, run_id: str, command: str | None) -> None:
        with self._lock:
            self._writing()
            doc = self._read(run_id)
            info: RunInfo = doc["run"]
            update = {"resume_command": command}
            self._write(run_id, info.model_copy(update=update), doc["checkpoints"])

    def load(self, run_id: str) -> dict[str, CheckpointRecord]:
        with self._lock:
            records: dict[str, CheckpointRecord] = self._read(run_id)["checkpoints"]
            return dict(sorted(records.items(), key=lambda item: item[1].seq))

    # --- leases -----------------------------------------------------------------------------

    def acquire_lease(self, run_id: str) -> RunLease:
        """Hold ``run_id`` as its one writer: an exclusive ``flock`` on ``<run_id>.lock``."""
        self._path(run_id)
        self._writing()
        if sys.platform == "win32":
            raise RecoveryError(
                "JSONBackend keeps a run's lease with flock(), which Windows lacks; use "
                "SQLiteBackend there"
            )
        path = self.directory / f"{run_id}.lock"
        for _ in range(100):  # the lock file can be swapped under us only by a release
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RecoveryError(
                    f"cannot take the lease of run {run_id!r}: cannot open {path} "
                    f"({exc.strerror or exc}); the folder {self.directory} must exist and be "
                    "writable to run"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_owner(fd)
                os.close(fd)
                raise locked_error(run_id, holder, str(path), self._now()) from None
            except OSError as exc:
                os.close(fd)
                raise RecoveryError(
                    f"cannot take the lease of run {run_id!r}: cannot lock {path} "
                    f"({exc.strerror or exc}); the file system must support flock()"
                ) from exc
            if _same_file(fd, path):
                break
            os.close(fd)  # released and removed meanwhile: lock the file now at the path
        else:
            raise RecoveryError(f"cannot take the lease of run {run_id!r}: {path} keeps changing")
        owner = LeaseOwner.current(uuid.uuid4().hex, self._now())
        try:
            data = json.dumps(
                {name: getattr(owner, name) for name in LeaseOwner.__dataclass_fields__}
            ).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError as exc:
            _unlock(fd, path)
            raise self._write_error(path, exc) from exc
        with self._lock:
            self._docs.pop(run_id, None)  # read the file again under the lease
        self._remove_leftovers(run_id)
        return _FileLease(run_id, owner, fd, path)

    def _remove_leftovers(self, run_id: str) -> None:
        """Remove the temporary files of ``run_id`` that a writer killed in the middle of a
        save left (each as large as the run file); called under the run's lease, so no other
        process is writing one. Another run's are left alone: a run's temporary files are
        ``.<run_id>.<random>.tmp`` (``_write``) and the random part has no dot, so
        ``.a.b.x1.tmp`` is run ``a.b``'s, never run ``a``'s."""
        own = re.compile(rf"\.{re.escape(run_id)}\.[A-Za-z0-9_]+\.tmp")
        try:
            names = [entry.name for entry in os.scandir(self.directory)]
        except OSError:
            return
        for name in names:
            if own.fullmatch(name):
                try:
                    os.unlink(self.directory / name)
                except OSError:
                    pass  # (a read-only folder: nothing can be written there anyway)

    def close(self) -> None:
        with self._lock:
            self._docs.clear()


def _read_owner(fd: int) -> LeaseOwner | None:
    """The holder's details from its lock file. A holder writes them just after it got the
    lock, so for a moment the file may be empty, half written, or still name the dead
    process it took over from: read again for up to 50 ms until it names a live one."""
    owner = None
    for _ in range(50):
        try:
            owner = LeaseOwner(**json.loads(os.pread(fd, 4096, 0)))
        except (OSError, ValueError, TypeError):
            owner = None
        if owner is not None and not owner_is_dead(owner, owner.heartbeat, 0.0):
            return owner
        time.sleep(0.001)
    return owner


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _unlock(fd: int, path: Path) -> None:
    """Remove the lock file while still holding it, then let it go."""
    try:
        os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


class _FileLease(RunLease):
    """An exclusive ``flock`` on an open file; the kernel drops it if the process dies."""

    def __init__(self, run_id: str, owner: LeaseOwner, fd: int, path: Path) -> None:
        super().__init__(run_id, owner)
        # Also dropped if the lease is garbage collected without a release.
        self._drop = weakref.finalize(self, _unlock, fd, path)

    def _release(self) -> None:
        self._drop()
