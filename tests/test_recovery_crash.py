"""A process killed with SIGKILL in the middle of a 200-member group, then resumed.

The child (``recovery_child.py``) appends each member's index to a log as its side effect.
The parent kills it once the log holds 50 lines (polling the file), resumes the run in a
second child, and checks that every side effect happened once, except for members inside the
documented loss window (handler returned, checkpoint not yet committed when the kill landed),
and that the final results equal those of an uninterrupted run.

A second test kills the process while another process holds the database locked (``BEGIN
EXCLUSIVE``): the run went on meanwhile, its checkpoints waiting in memory. Once the lock is
released the run is resumed: every event whose checkpoint was committed runs once, the others
run again, and the results equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from recovery_support import StoreLocker
from rh_agents.recovery import RunStatus, SQLiteBackend

HERE = Path(__file__).resolve().parent
CHILD = HERE / "recovery_child.py"
SRC = HERE.parent / "src"
MEMBERS = 200
KILL_AFTER = 50


def _spawn(tmp: Path, run_id: str, how: str, mode: str, seed: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    args = [str(tmp / "state.db"), str(tmp / "log"), str(tmp / f"{how}.json"), run_id, how]
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args, mode, str(seed)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _lines(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().splitlines()]


def _finish(proc: subprocess.Popen[bytes]) -> None:
    _out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err.decode()


def _wait_for_lines(proc: subprocess.Popen[bytes], log: Path, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(_lines(log)) < count:
        assert proc.poll() is None, "the child ended before it could be killed"
        assert time.monotonic() < deadline, f"the child never reached {count} members"
        time.sleep(0.002)  # polling the log file, the condition we wait for


def _kill_mid_group(tmp: Path, run_id: str, mode: str) -> None:
    proc = _spawn(tmp, run_id, "fresh", mode, seed=1)
    try:
        _wait_for_lines(proc, tmp / "log", KILL_AFTER)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _uninterrupted(tmp: Path) -> dict[str, object]:
    clean = tmp / "clean"
    clean.mkdir()
    _finish(_spawn(clean, "clean", "fresh", "every", seed=3))
    assert sorted(_lines(clean / "log")) == list(range(MEMBERS))
    result: dict[str, object] = json.loads((clean / "fresh.json").read_text())["total"]
    return result


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "window_limit"), [("every", 1), ("batched", 16)])
def test_kill_mid_group_then_resume_runs_each_member_once(
    tmp_path: Path, mode: str, window_limit: int
) -> None:
    _kill_mid_group(tmp_path, "crash", mode)
    first = _lines(tmp_path / "log")
    assert KILL_AFTER <= len(first) < MEMBERS, "the kill must land inside the group"
    with SQLiteBackend(tmp_path / "state.db") as backend:
        stored = backend.load("crash")
        assert backend.get_run("crash").status is RunStatus.RUNNING
    committed = {
        r.parallel_index
        for r in stored.values()
        if r.address.startswith("orchestrator::members[") and r.status == "completed"
    }
    # Members whose side effect happened but whose checkpoint was not committed yet.
    window = set(first) - committed
    assert len(window) <= window_limit
    assert committed <= set(first)

    _finish(_spawn(tmp_path, "crash", "resume", mode, seed=2))

    counts = Counter(_lines(tmp_path / "log"))
    assert set(counts) == set(range(MEMBERS))
    twice = {i for i, n in counts.items() if n > 1}
    assert twice <= window
    assert max(counts.values()) <= 2
    resumed = json.loads((tmp_path / "resume.json").read_text())
    assert resumed["recovered"] == len(committed)
    assert resumed["total"] == _uninterrupted(tmp_path)
    with SQLiteBackend(tmp_path / "state.db") as backend:
        assert backend.get_run("crash").status is RunStatus.COMPLETED


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["every", "batched"])
def test_kill_while_the_store_is_locked_then_resume(tmp_path: Path, mode: str) -> None:
    proc = _spawn(tmp_path, "crash", "fresh", mode, seed=1)
    locker: StoreLocker | None = None
    try:
        _wait_for_lines(proc, tmp_path / "log", 30)
        locker = StoreLocker(tmp_path / "state.db")
        locked_at = len(_lines(tmp_path / "log"))
        # The run goes on while the store is locked: 40 more members finish meanwhile.
        _wait_for_lines(proc, tmp_path / "log", locked_at + 40)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=10)
        if locker is not None:
            locker.release()
    assert proc.returncode == -signal.SIGKILL
    first = _lines(tmp_path / "log")
    assert len(first) < MEMBERS, "the kill must land inside the group"
    with SQLiteBackend(tmp_path / "state.db") as backend:
        stored = backend.load("crash")
    committed = {
        r.parallel_index
        for r in stored.values()
        if r.address.startswith("orchestrator::members[") and r.status == "completed"
    }
    assert committed <= set(first[:locked_at])  # nothing was written while it was locked

    _finish(_spawn(tmp_path, "crash", "resume", mode, seed=2))

    counts = Counter(_lines(tmp_path / "log"))
    assert set(counts) == set(range(MEMBERS))
    assert all(counts[i] == 1 for i in committed)  # every committed event ran once
    assert max(counts.values()) <= 2
    resumed = json.loads((tmp_path / "resume.json").read_text())
    assert resumed["recovered"] == len(committed)
    assert resumed["total"] == _uninterrupted(tmp_path)
    with SQLiteBackend(tmp_path / "state.db") as backend:
        assert backend.get_run("crash").status is RunStatus.COMPLETED
