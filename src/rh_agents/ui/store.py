"""The viewer's read-only access to a state store.

Every read opens the store with ``open_backend(path, mode="read")`` (nothing is ever created or
written, and read-only files and folders work), reads, and closes it again, so the viewer
never holds a file or a lock between requests and sees a store that is replaced or created
after it started. Reads run in a worker thread (``in_thread``): a store that waits for a lock,
or a slow disk, never holds up the event loop, which may be a watched run's own; and, as those
threads are daemon threads, never holds up the end of the program either (Ctrl-C).

Every failure is a ``StoreProblem`` with a sentence for the page and an HTTP status: a run id
that breaks the rule (400), an unknown run (404), a store that cannot be read (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rh_agents.core.run_ids import check_run_id
from rh_agents.errors import InvalidRunIdError, RecoveryError, UnknownRunError
from rh_agents.recovery.backend import default_state_path
from rh_agents.recovery.opening import open_backend
from rh_agents.recovery.records import CheckpointRecord, RunInfo

__all__ = ["StoreProblem", "StoreReader", "in_thread"]

_T = TypeVar("_T")


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a daemon thread of its own (in a copy of this context), awaited: as
    ``asyncio.to_thread``, but a call that hangs does not hold the program's end. A store read
    can wait long (a database locked by a writer, up to SQLite's busy timeout of 30 s; a slow
    network disk), and the default executor's threads are joined as ``asyncio.run`` ends and
    as the interpreter exits: Ctrl-C on ``rh-agents ui`` waited for them. A caller that stops
    waiting (it is cancelled) leaves the thread to end on its own, its outcome dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # (its caller may have stopped waiting)
            outcome()

    def run() -> None:
        try:
            result = context.run(fn, *args)
        except BaseException as exc:  # handed to the caller, as to_thread does
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        # The loop may be closed already (the program ended while this ran): nobody waits.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="rh_agents.ui reader", daemon=True).start()
    return await future


class StoreProblem(Exception):
    """Why a read gave nothing: ``message`` for a person, ``status`` for HTTP."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:  # UnknownRunError: not the quoted repr
        return str(exc.args[0])
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class StoreReader:
    """Reads runs from the store at ``location`` (``None``: ``default_state_path()``, as it is
    when the reader is made)."""

    def __init__(self, location: str | Path | None = None) -> None:
        self.path = Path(location) if location is not None else default_state_path()
        # Event counts by status, per run, kept while the run's update time stays the same.
        self._counts: dict[str, tuple[float, int, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return self.path.exists()

    # --- blocking reads (run in a thread by the async ones) -----------------------------------

    def list_runs_sync(self) -> list[RunInfo]:
        """Every run; any run that cannot be read fails the whole listing (``StoreProblem``).
        ``list_readable_runs_sync`` lists the others."""
        runs, problems = self.list_readable_runs_sync()
        if problems:
            raise StoreProblem(f"the state store {self.path} cannot be read: {problems[0]}")
        return runs

    def list_readable_runs_sync(self) -> tuple[list[RunInfo], list[str]]:
        """Every run that can be read, and a sentence for each that cannot (a damaged run
        file of a JSON folder, naming the file; a damaged run row of an SQLite database,
        naming the run): one bad run does not hide the others, as ``rh-agents runs list``
        does not. ``StoreProblem`` when the store itself cannot be read."""
        if not self.exists():
            return [], []
        try:
            with open_backend(self.path, mode="read") as backend:
                runs, problems = backend.list_readable_runs()
        except (RecoveryError, OSError) as exc:
            raise StoreProblem(
                f"the state store {self.path} cannot be read: {_describe(exc)}"
            ) from exc
        return runs, [_describe(problem) for problem in problems]

    def read_run_sync(self, run_id: str) -> tuple[RunInfo, dict[str, CheckpointRecord]]:
        check = self.check_run_id(run_id)
        if not self.exists():
            raise StoreProblem(
                f"no run {check!r}: there is no state store at {self.path} yet", status=404
            )
        try:
            with open_backend(self.path, mode="read") as backend:
                info = backend.get_run(check)
                records = backend.load(check)
        except UnknownRunError as exc:
            raise StoreProblem(f"no run {check!r} in {self.path}", status=404) from exc
        except (RecoveryError, OSError) as exc:
            raise StoreProblem(
                f"run {check!r} cannot be read from {self.path}: {_describe(exc)}"
            ) from exc
        self._remember(info, records)
        return info, records

    def get_run_sync(self, run_id: str) -> RunInfo | None:
        """The run's metadata, or ``None`` when the store has no such run."""
        check = self.check_run_id(run_id)
        if not self.exists():
            return None
        try:
            with open_backend(self.path, mode="read") as backend:
                return backend.get_run(check)
        except UnknownRunError:
            return None
        except (RecoveryError, OSError) as exc:
            raise StoreProblem(
                f"run {check!r} cannot be read from {self.path}: {_describe(exc)}"
            ) from exc

    def counts_sync(self, infos: list[RunInfo]) -> dict[str, dict[str, int]]:
        """Each run's events by status (read once per update of the run); a run whose
        checkpoints cannot be read fails them all (``StoreProblem``)."""
        out, problems = self.readable_counts_sync(infos)
        if problems:
            raise StoreProblem(f"the state store {self.path} cannot be read: {problems[0]}")
        return out

    def readable_counts_sync(
        self, infos: list[RunInfo]
    ) -> tuple[dict[str, dict[str, int]], list[str]]:
        """Each run's events by status (read once per update of the run), and a sentence for
        each run whose checkpoints cannot be read (left out of the counts): one damaged run
        does not hide the counts of the others. ``StoreProblem`` when the store itself cannot
        be opened."""
        out: dict[str, dict[str, int]] = {}
        problems: list[str] = []
        stale = []
        with self._lock:
            for info in infos:
                known = self._counts.get(info.run_id)
                if known is not None and known[:2] == (info.updated, info.checkpoints):
                    out[info.run_id] = known[2]
                else:
                    stale.append(info.run_id)
        if stale and self.exists():
            try:
                with open_backend(self.path, mode="read") as backend:
                    for run_id in stale:
                        try:
                            info = backend.get_run(run_id)
                            records = backend.load(run_id)
                        except UnknownRunError:
                            continue  # deleted since the listing
                        except RecoveryError as exc:
                            problems.append(f"run {run_id!r}: {_describe(exc)}")
                            continue
                        out[run_id] = self._remember(info, records)
            except (RecoveryError, OSError) as exc:
                raise StoreProblem(
                    f"the state store {self.path} cannot be read: {_describe(exc)}"
                ) from exc
        return out, problems

    def _remember(self, info: RunInfo, records: dict[str, CheckpointRecord]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in records.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        with self._lock:
            self._counts[info.run_id] = (info.updated, info.checkpoints, counts)
        return counts

    @staticmethod
    def check_run_id(run_id: str) -> str:
        try:
            return check_run_id(run_id)
        except InvalidRunIdError as exc:
            raise StoreProblem(f"not a run id: {_describe(exc)}", status=400) from exc

    # --- the same, off the event loop ---------------------------------------------------------

    async def list_runs(self) -> list[RunInfo]:
        return await in_thread(self.list_runs_sync)

    async def list_readable_runs(self) -> tuple[list[RunInfo], list[str]]:
        return await in_thread(self.list_readable_runs_sync)

    async def read_run(self, run_id: str) -> tuple[RunInfo, dict[str, CheckpointRecord]]:
        return await in_thread(self.read_run_sync, run_id)

    async def get_run(self, run_id: str) -> RunInfo | None:
        return await in_thread(self.get_run_sync, run_id)

    async def counts(self, infos: list[RunInfo]) -> dict[str, dict[str, int]]:
        return await in_thread(self.counts_sync, infos)

    async def readable_counts(
        self, infos: list[RunInfo]
    ) -> tuple[dict[str, dict[str, int]], list[str]]:
        return await in_thread(self.readable_counts_sync, infos)
