"""Hostile tests of state recovery where it meets other features: a store another process
holds locked past ``close_timeout`` (``save_checkpoint`` and the run's end give up waiting,
the run's writer must not), and a JSON writer killed in the middle of a save."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from recovery_support import Item, Squarer, locked
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import RecoveryError
from rh_agents.recovery import Recovery, RunStatus, SQLiteBackend


def _writer_threads(run_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"rh_agents-checkpoints:{run_id}"]


def _lease_row(db: Path) -> tuple[object, ...] | None:
    with sqlite3.connect(db) as conn:
        row: tuple[object, ...] | None = conn.execute(
            "SELECT pid, token FROM leases WHERE run_id = 'r'"
        ).fetchone()
        return row


async def test_a_save_checkpoint_that_timed_out_does_not_end_checkpointing(
    tmp_path: Path,
) -> None:
    """``save_checkpoint()`` on a store another process held past ``close_timeout`` raised, as
    documented, but it also stopped the run's writer thread for good: once the store was
    free again every later write failed with 'the checkpoint writer ... was stopped', the
    checkpoints of every later event were lost and leaving the run raised."""
    db = tmp_path / "state.db"
    squarer = Squarer()
    recovery = Recovery(db, close_timeout=0.2)
    async with ExecutionState(run_id="r", recovery=recovery) as state:
        await squarer.event(Item(i=0), "", state)
        with locked(db) as locker:
            await squarer.event(Item(i=1), "", state)
            with pytest.raises(RecoveryError, match="stayed busy"):
                await state.save_checkpoint()
            locker.release()
        for i in range(2, 6):
            await squarer.event(Item(i=i), "", state)
        recovery.close_timeout = 10.0  # (the write in flight lands once the store is free)
        await state.save_checkpoint()
    assert recovery.write_errors == []
    with SQLiteBackend(db, mode="read") as backend:
        stored = backend.load("r")
        assert backend.get_run("r").status is RunStatus.COMPLETED
    assert len(stored) == 6 and all(r.status == "completed" for r in stored.values())


async def test_checkpoints_a_close_gave_up_on_are_written_once_the_store_frees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving the run while another process holds the store past ``close_timeout`` raises
    a ``RecoveryError`` that says the write goes on in the background while the process
    lives. It did not: the writer was stopped, so the checkpoints still pending and the final
    status were never written, and the run's lease was never released (its heartbeat thread
    renewed it for ever): resuming the run in the same process, the store free again, was
    refused with ``RunLockedError``."""
    db = tmp_path / "state.db"
    squarer = Squarer()
    first = Recovery(db, close_timeout=0.2)
    state = ExecutionState(run_id="r", recovery=first)
    with locked(db) as locker:
        with pytest.raises(RecoveryError, match=r"stayed busy.*3 checkpoint.*in the background"):
            async with state:
                for i in range(3):
                    await squarer.event(Item(i=i), "", state)
        locker.release()
    for thread in _writer_threads("r"):  # it ends once it has written what it holds
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert "written to" in caplog.text and "once the store freed" in caplog.text
    with SQLiteBackend(db, mode="read") as backend:
        assert len(backend.load("r")) == 3
        assert backend.get_run("r").status is RunStatus.COMPLETED
    assert _lease_row(db) is None
    # The first state is still referenced: its lease must not stand in the way.
    resumed = ExecutionState.resume("r", backend=db)
    async with resumed:
        for i in range(3):
            await squarer.event(Item(i=i), "", resumed)
    assert resumed.recovery is not None and resumed.recovery.recovered == 3
    assert dict(squarer.calls) == {0: 1, 1: 1, 2: 1}
    assert state.closed


# A writer of a JSON run killed between writing its temporary file and swapping it in: the
# child replaces os.replace by a SIGKILL of itself, at its third write (the first two create
# the run and mark it running).
_KILLED_MID_WRITE = """
import asyncio, os, signal, sys
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery import Recovery
sys.path.insert(0, sys.argv[2])
from recovery_support import Item, Squarer

writes = []
real_replace = os.replace

def replace(source, target):
    writes.append(target)
    if len(writes) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)

os.replace = replace

async def main():
    squarer = Squarer()
    async with ExecutionState(run_id="r", recovery=Recovery(sys.argv[1])) as state:
        for i in range(3):
            await squarer.event(Item(i=i), "", state)

asyncio.run(main())
"""


def _temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_temporary_file_left_by_a_killed_json_writer_is_removed_by_the_next_writer(
    tmp_path: Path,
) -> None:
    """``JSONBackend`` writes each save to a temporary file, then swaps it in. A writer killed
    in between (``kill -9`` while a large run file is written) left the temporary file, as
    large as the run, in the folder for good: a run killed again and again filled the disk
    with them. The next writer of the run (it holds the run's lease: nobody else writes it)
    removes them, and only its own run's."""
    folder = tmp_path / "runs"
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_WRITE, str(folder), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = _temporary_files(folder)
    assert len(left) == 1 and left[0].startswith(".r."), left
    # Another run's leftover, whose name starts like this run's, is not this run's to remove.
    other = folder / ".r.x.abcd1234.tmp"
    other.write_text("{}", encoding="utf-8")
    squarer = Squarer()
    state = ExecutionState.resume("r", backend=folder)

    async def resume() -> None:
        async with state:
            for i in range(3):
                await squarer.event(Item(i=i), "", state)

    asyncio.run(resume())
    assert _temporary_files(folder) == [other.name]
    assert state.recovery is not None and state.recovery.recovered == 1
    assert dict(squarer.calls) == {1: 1, 2: 1}
