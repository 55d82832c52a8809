"""One writer per run: the lease, in both backends, in one process and across real processes.

The process test uses ``lease_child.py``: each child prints ``ready`` and waits for ``go``, so
the parent releases two of them together (a barrier over pipes), then reads who won.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recovery_support import Squarer, run_group
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError, RecoveryError, RunLockedError
from rh_agents.recovery import JSONBackend, Recovery, SQLiteBackend, open_backend
from rh_agents.recovery.lease import LeaseOwner, this_scope

HERE = Path(__file__).resolve().parent
CHILD = HERE / "lease_child.py"
SRC = HERE.parent / "src"
BACKENDS = ["sqlite", "json"]
LEASE_FIELDS = ("pid", "host", "scope", "started", "token", "since", "heartbeat")


def _store(kind: str, tmp: Path) -> Path:
    return tmp / "state.db" if kind == "sqlite" else tmp / "runs"


def _new_run(store: Path, run_id: str = "r") -> None:
    with open_backend(store) as backend:
        backend.create_run(run_id)


async def _resume_and_finish(store: Path, run_id: str = "r") -> None:
    async with ExecutionState.resume(run_id, backend=store) as state:
        results = await run_group(state, Squarer(), 3)
    assert all(r.ok for r in results)


class Child:
    """One ``lease_child.py`` process, spoken to over its pipes."""

    def __init__(self, store: Path, run_id: str = "r") -> None:
        env = dict(os.environ, PYTHONPATH=str(SRC))
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(store), run_id],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            assert self.proc.stderr is not None
            raise AssertionError(f"child ended early: {self.proc.stderr.read()}")
        return text.strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)  # reaped: no zombie is left holding the pid

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _race(children: list[Child]) -> tuple[Child, Child, str]:
    """Release ``children`` (two) together; the winner, the loser and the loser's message."""
    for child in children:
        child.send("go")
    answers = [child.line() for child in children]
    won = [i for i, answer in enumerate(answers) if answer.startswith("won ")]
    refused = [i for i, answer in enumerate(answers) if answer.startswith("refused ")]
    assert len(won) == 1 and len(refused) == 1, answers
    winner, loser = children[won[0]], children[refused[0]]
    assert answers[won[0]] == f"won {winner.proc.pid}"
    _, seconds, message = answers[refused[0]].split(" ", 2)
    assert float(seconds) < 2.0, "refused at once, not after waiting for the holder"
    assert loser.proc.wait(timeout=10) == 3
    return winner, loser, json.loads(message)


@pytest.mark.parametrize("kind", BACKENDS)
def test_resumers_started_together_one_wins_and_killed_holders_are_taken_over(
    tmp_path: Path, kind: str
) -> None:
    store = _store(kind, tmp_path)
    _new_run(store)
    first, *racers = children = [Child(store), Child(store), Child(store)]  # started at once
    try:
        for child in children:
            assert child.line() == "ready"
        first.send("go")
        assert first.line() == f"won {first.proc.pid}"
        first.kill()  # SIGKILL while holding the lease: it is never released
        # Two resumers released together over the dead holder's lease: exactly one takes it
        # over, the other is refused at once and told who holds the run.
        winner, _loser, message = _race(racers)
        assert f"pid {winner.proc.pid} on host {socket.gethostname()!r} since" in message
        assert "being written by another process" in message
        winner.kill()
        asyncio.run(_resume_and_finish(store))  # the parent takes over from a killed holder
    finally:
        for child in children:
            child.close()


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_second_writer_in_one_process_is_refused_until_the_first_closes(
    tmp_path: Path, kind: str
) -> None:
    store = _store(kind, tmp_path)
    first = ExecutionState(run_id="r", recovery=Recovery(store))
    assert first.recovery is not None and first.recovery.lease is not None
    started = time.monotonic()
    with pytest.raises(RunLockedError, match="this process") as info:
        ExecutionState.resume("r", backend=store)
    assert time.monotonic() - started < 1.0
    assert info.value.pid == os.getpid()
    assert info.value.host == socket.gethostname()
    assert info.value.since is not None and abs(info.value.since - time.time()) < 60
    await first.close()
    assert first.recovery.lease is None
    await _resume_and_finish(store)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_failed_attach_leaves_the_run_free(tmp_path: Path, kind: str) -> None:
    store = _store(kind, tmp_path)
    _new_run(store)
    with pytest.raises(RecoveryError, match="no checkpoint"):
        ExecutionState.resume("r", backend=store, resume_from="nowhere")
    with pytest.raises(RecoveryError, match="already exists"):
        ExecutionState(run_id="r", recovery=Recovery(store))
    await _resume_and_finish(store)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_validating_takes_no_lease(tmp_path: Path, kind: str) -> None:
    store = _store(kind, tmp_path)
    async with ExecutionState(run_id="r", recovery=Recovery(store)) as state:
        await run_group(state, Squarer(), 3)
    async with ExecutionState.resume("r", backend=store) as writer:
        async with ExecutionState.resume("r", backend=store, replay="validate") as checker:
            assert checker.recovery is not None and checker.recovery.lease is None
            await run_group(checker, Squarer(), 3)
        assert writer.recovery is not None and writer.recovery.lease is not None


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_recovery_dropped_without_close_frees_its_run_once_collected(
    tmp_path: Path, kind: str
) -> None:
    store = _store(kind, tmp_path)
    state = ExecutionState(run_id="r", recovery=Recovery(store))
    await state.event_bus.close()
    del state
    gc.collect()
    await _resume_and_finish(store)


def _lease_row(db: Path, run_id: str = "r") -> tuple[object, ...] | None:
    conn = sqlite3.connect(db)
    try:
        row: tuple[object, ...] | None = conn.execute(
            f"SELECT {', '.join(LEASE_FIELDS)} FROM leases WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        return row
    finally:
        conn.close()


def _plant_lease(db: Path, owner: LeaseOwner, run_id: str = "r") -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                f"INSERT OR REPLACE INTO leases (run_id, {', '.join(LEASE_FIELDS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, *(getattr(owner, name) for name in LEASE_FIELDS)),
            )
    finally:
        conn.close()


def test_a_lease_held_from_another_machine_is_taken_over_only_when_its_heartbeat_is_stale(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    _new_run(db)
    now = time.time()
    elsewhere = LeaseOwner(
        pid=4242,
        host="other-box",
        scope="other-box|boot|pid:[1]",
        started="",
        token="theirs",
        since=now - 100,
        heartbeat=now - 10,
    )
    _plant_lease(db, elsewhere)
    with SQLiteBackend(db, lease_stale_after=60) as backend:
        with pytest.raises(RunLockedError, match="pid 4242 on host 'other-box'"):
            backend.acquire_lease("r")
        _plant_lease(db, dataclasses.replace(elsewhere, heartbeat=now - 61))
        lease = backend.acquire_lease("r")
        row = _lease_row(db)
        assert row is not None and row[0] == os.getpid() and row[4] == lease.owner.token
        lease.release()
    assert _lease_row(db) is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_live_pid_holds_its_lease_but_a_reused_pid_does_not(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _new_run(db)
    parent = os.getppid()  # alive for the whole test
    stat = Path(f"/proc/{parent}/stat").read_text()
    started = stat[stat.rfind(")") + 2 :].split()[19]
    now = time.time()
    holder = LeaseOwner(parent, socket.gethostname(), this_scope(), started, "t", now, now - 999)
    _plant_lease(db, holder)
    with SQLiteBackend(db) as backend:
        # On this machine the pid decides, however old the heartbeat.
        with pytest.raises(RunLockedError, match=f"pid {parent} "):
            backend.acquire_lease("r")
        # The same pid number, but another process (it started at another time): dead.
        _plant_lease(db, dataclasses.replace(holder, started=started + "1"))
        backend.acquire_lease("r").release()


async def test_a_writer_whose_lease_was_taken_over_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    state = ExecutionState(run_id="r", recovery=Recovery(db))
    assert state.recovery is not None
    now = time.time()
    usurper = LeaseOwner(4242, "other-box", "elsewhere", "", "theirs", now, now)
    _plant_lease(db, usurper)
    with pytest.raises(RunLockedError, match=r"no longer holds.*pid 4242 on host 'other-box'"):
        state.recovery.backend.save("r", [])
    with pytest.raises(RunLockedError):
        await state.close()
    assert _lease_row(db) is not None  # the usurper's lease is left alone


def test_the_heartbeat_renews_the_lease_on_its_own_thread(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _new_run(db)
    with SQLiteBackend(db, lease_stale_after=0.2) as backend:  # a beat every 0.05 s
        lease = backend.acquire_lease("r")
        beats = [t for t in threading.enumerate() if t.name == "rh-agents lease r"]
        assert len(beats) == 1 and beats[0] is not threading.current_thread()
        first = _lease_row(db)
        assert first is not None
        deadline = time.monotonic() + 10
        while (row := _lease_row(db)) is not None and row[6] == first[6]:
            assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
            time.sleep(0.01)  # polling the row, the condition we wait for
        lease.release()
        beats[0].join(timeout=10)
        assert not beats[0].is_alive()
    assert _lease_row(db) is None


@pytest.mark.parametrize(
    "value", [0, -1, -0.5, math.nan, math.inf, 4 * threading.TIMEOUT_MAX * 2, True, "abc", None]
)
def test_a_lease_stale_after_that_is_no_time_is_refused_before_anything_is_created(
    tmp_path: Path, value: object
) -> None:
    """``lease_stale_after`` of 0, below 0 or nan was taken: the heartbeat thread, which
    renews the lease every quarter of it, then renewed it in a busy loop (thousands of
    SQLite writes a second); "abc" failed only once a run started, as a bare TypeError; a
    quarter above ``threading.TIMEOUT_MAX`` cannot be waited for. Each is now refused when the
    backend is made, naming the option, and no database is created."""
    db = tmp_path / "state.db"
    with pytest.raises(ConfigurationError, match=r"SQLiteBackend\(lease_stale_after=\.\.\.\)"):
        SQLiteBackend(db, lease_stale_after=value)  # type: ignore[arg-type]
    assert not db.exists()


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_clock_that_cannot_be_called_is_refused(tmp_path: Path, kind: str) -> None:
    """``now=`` given a number (a time, not a clock) failed at the first write, as a bare
    TypeError ("'float' object is not callable"): it is refused when the backend is made."""
    store = _store(kind, tmp_path)
    backend = SQLiteBackend if kind == "sqlite" else JSONBackend
    with pytest.raises(ConfigurationError, match=r"\(now=\.\.\.\) must be a function"):
        backend(store, now=1.5e9)  # type: ignore[arg-type]
    assert not store.exists()


async def test_the_json_lease_is_a_lock_file_removed_on_release(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    state = ExecutionState(run_id="r", recovery=Recovery(runs))
    lock = runs / "r.lock"
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with open_backend(runs, mode="read") as reader:
        assert [info.run_id for info in reader.list_runs()] == ["r"]
    await state.close()
    assert sorted(p.name for p in runs.iterdir()) == ["r.json"]
