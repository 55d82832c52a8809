"""Store waits never block the event loop, and a failing write never fails an event.

The lock tests hold the state database with ``BEGIN EXCLUSIVE`` from a real second process
(``store_locker.py``) and measure the loop's stalls with a ticker task.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from recovery_support import Item, Square, Squarer, Ticker, locked, make_backend, run_group
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ExecutionResult
from rh_agents.errors import CheckpointWarning, RecoveryError
from rh_agents.recovery import CheckpointPolicy, JSONBackend, Recovery, RunStatus, SQLiteBackend
from rh_agents.recovery.records import CheckpointRecord
from rh_agents.recovery.writer import CheckpointWriter, is_busy

HERE = Path(__file__).resolve().parent
STALL_LIMIT = 0.2  # the longest the loop may stop while the store is locked
# uvloop keeps time in whole milliseconds: its timers may fire up to 1 ms before the clock
# here says they are due (make test-uvloop).
TIMER_SLACK = 0.002


async def _sleepy_group(
    state: ExecutionState, squarer: Squarer, n: int, *, hang: asyncio.Event, seconds: float
) -> list[ExecutionResult[Any]]:
    """``n`` members that finish after a short wait, and one that waits for ``hang``."""

    async def member(i: int) -> ExecutionResult[Square]:
        await asyncio.sleep(0.002 * (i % 5))
        return await squarer.event(Item(i=i), "", state)

    async with state.parallel(max_workers=8, name="members", timeout=seconds) as p:
        for i in range(n):
            p.add(member(i))
        p.add(hang.wait())
        return await p.gather()


@pytest.mark.parametrize(
    "policy", [CheckpointPolicy.every_event(), CheckpointPolicy(count=4)], ids=["every", "batched"]
)
async def test_a_locked_store_never_stalls_the_loop_and_loses_nothing(
    tmp_path: Path, policy: CheckpointPolicy
) -> None:
    db = tmp_path / "state.db"
    n = 40
    squarer = Squarer()
    ticker = Ticker()
    state = ExecutionState(run_id="r", recovery=Recovery(db, checkpoint=policy))
    with locked(db) as locker:
        ticker.start()
        started = time.monotonic()
        async with state:
            results = await _sleepy_group(state, squarer, n, hang=asyncio.Event(), seconds=0.4)
            elapsed = time.monotonic() - started
            stall_while_locked = ticker.longest
            assert state.recovery is not None and state.recovery.written == 0  # all waiting
            # The close waits for the store without blocking the loop: free it meanwhile.
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, locker.release)
        await ticker.stop()
    # The group's timeout kept its time while every checkpoint write was waiting.
    assert 0.4 - TIMER_SLACK <= elapsed < 0.4 + STALL_LIMIT, elapsed
    assert stall_while_locked < STALL_LIMIT, stall_while_locked
    assert ticker.longest < STALL_LIMIT, ticker.longest
    assert [r.ok for r in results[:n]] == [True] * n and not results[n].ok
    assert dict(squarer.calls) == {i: 1 for i in range(n)}
    with SQLiteBackend(db) as backend:
        stored = backend.load("r")
        assert backend.get_run("r").status is RunStatus.COMPLETED
    done = {r.parallel_index for r in stored.values() if r.status == "completed"}
    assert done == set(range(n))
    assert state.recovery is not None and state.recovery.written == n
    print(
        f"\nlocked store ({policy}): group {elapsed:.3f}s, longest loop stall "
        f"{stall_while_locked * 1000:.1f} ms while locked, {ticker.longest * 1000:.1f} ms "
        f"overall, {ticker.ticks} ticks"
    )


async def test_the_end_of_a_run_gives_up_on_a_store_that_stays_locked(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    ticker = Ticker()
    state = ExecutionState(run_id="r", recovery=Recovery(db, close_timeout=0.3))
    with locked(db):
        ticker.start()
        squarer = Squarer()
        started = time.monotonic()
        with pytest.raises(RecoveryError, match=r"state\.db.*stayed busy.*5 checkpoint"):
            async with state:
                results = await run_group(state, squarer, 5)
        elapsed = time.monotonic() - started
        await ticker.stop()
    assert all(r.ok for r in results)
    assert elapsed < 0.3 + 0.5
    assert ticker.longest < STALL_LIMIT


def test_a_synchronous_close_is_bounded_too(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    policy = CheckpointPolicy.batched(count=100, seconds=None)  # all wait for the close
    state = ExecutionState(run_id="r", recovery=Recovery(db, checkpoint=policy, close_timeout=0.2))
    asyncio.run(run_group(state, Squarer(), 3))
    assert state.recovery is not None
    with locked(db):
        started = time.monotonic()
        with pytest.raises(RecoveryError, match=r"stayed busy.*3 checkpoint"):
            state.recovery.close()
        assert time.monotonic() - started < 0.2 + 0.3


class FlakySave:
    """Makes ``backend.save`` raise ``OSError`` for the first ``failures`` calls."""

    def __init__(self, backend: Any, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self._save = backend.save
        backend.save = self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(28, "No space left on device")
        self._save(*args, **kwargs)


class SlowSave:
    """Makes every ``backend.save`` take ``seconds`` more (a slow disk)."""

    def __init__(self, backend: Any, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self._save = backend.save
        backend.save = self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        time.sleep(self.seconds)
        self._save(*args, **kwargs)


async def test_members_finishing_in_one_loop_turn_stall_it_for_one_write_wait(
    tmp_path: Path,
) -> None:
    # Thirty members end in the same loop turn, each with a checkpoint to write
    # (every_event). Each write takes 20 ms, within write_wait: were the wait counted per
    # write, the loop would wait for thirty writes one after another (0.6 s). It is counted
    # per loop turn: the turn waits at most write_wait, the rest is written in the
    # background, and nothing is lost.
    backend = make_backend("sqlite", tmp_path)
    slow = SlowSave(backend, 0.02)
    gate = asyncio.Event()
    squarer = Squarer(gates=dict.fromkeys(range(30), gate))
    ticker = Ticker()
    state = ExecutionState(run_id="r", recovery=Recovery(backend, write_wait=0.05))
    async with state:
        ticker.start()
        async with state.parallel(max_workers=30) as p:
            for i in range(30):
                p.add(squarer.event(Item(i=i), "", state))
            asyncio.get_running_loop().call_later(0.02, gate.set)
            results = await p.gather()
        await ticker.stop()
    assert all(r.ok for r in results)
    assert ticker.longest < 0.05 + 0.02 + STALL_LIMIT / 2, ticker.longest
    assert slow.calls < 30  # what piled up while a write was in flight went in one batch
    with SQLiteBackend(tmp_path / "state.db") as stored:
        assert len(stored.load("r")) == 30


@pytest.mark.parametrize("kind", ["json", "sqlite"])
async def test_a_failing_write_never_fails_a_member(tmp_path: Path, kind: str) -> None:
    backend = make_backend(kind, tmp_path)
    flaky = FlakySave(backend, failures=3)
    recovery = Recovery(backend)
    with pytest.warns(CheckpointWarning, match="No space left") as warned:
        async with ExecutionState(run_id="r", recovery=recovery) as state:
            results = await run_group(state, Squarer(), 10)
    assert [r.ok for r in results] == [True] * 10
    assert [r.unwrap().square for r in results] == [i * i for i in range(10)]
    assert len([w for w in warned if w.category is CheckpointWarning]) == 1  # once per streak
    assert len(recovery.write_errors) == 3 and flaky.calls > 3
    # Kept and written with the next write: nothing is missing at the end.
    assert len(backend.load("r")) == 10
    assert backend.get_run("r").status is RunStatus.COMPLETED
    backend.close()


async def test_checkpoints_that_never_get_written_fail_the_run_at_its_end(
    tmp_path: Path,
) -> None:
    backend = JSONBackend(tmp_path / "runs")
    FlakySave(backend, failures=10**6)
    results: list[ExecutionResult[Any]] = []
    with (
        pytest.warns(CheckpointWarning),
        pytest.raises(RecoveryError, match=r"10 checkpoint\(s\).*runs.*No space left") as caught,
    ):
        async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
            results = await run_group(state, Squarer(), 10)
    assert [r.ok for r in results] == [True] * 10  # the members kept their results
    assert isinstance(caught.value.__cause__, OSError)


async def test_warnings_as_errors_still_never_fail_a_member(tmp_path: Path) -> None:
    backend = JSONBackend(tmp_path / "runs")
    FlakySave(backend, failures=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
            results = await run_group(state, Squarer(), 4)
    assert [r.ok for r in results] == [True] * 4
    assert len(backend.load("r")) == 4


async def test_the_runs_own_exception_wins_over_a_failing_close(tmp_path: Path) -> None:
    backend = JSONBackend(tmp_path / "runs")
    FlakySave(backend, failures=10**6)
    with pytest.warns(CheckpointWarning), pytest.raises(ZeroDivisionError) as caught:
        async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
            await run_group(state, Squarer(), 2)
            _ = 1 / 0
    assert any("Closing the run failed too" in note for note in caught.value.__notes__)


async def test_save_checkpoint_waits_for_the_write_and_raises_if_it_fails(
    tmp_path: Path,
) -> None:
    backend = JSONBackend(tmp_path / "runs")
    policy = CheckpointPolicy.batched(count=100, seconds=None)
    state = ExecutionState(run_id="r", recovery=Recovery(backend, checkpoint=policy))
    squarer = Squarer()
    await squarer.event(Item(i=1), "", state)
    FlakySave(backend, failures=1)
    with pytest.warns(CheckpointWarning), pytest.raises(RecoveryError, match="kept"):
        await state.save_checkpoint()
    await state.save_checkpoint()  # the second try writes it
    assert len(backend.load("r")) == 1
    await state.close()


class BusyThenFine:
    """A backend stand-in whose first saves fail as a locked SQLite database does."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.batches: list[list[str]] = []

    def save(self, run_id: str, records: Any, status: Any = None) -> None:
        if self.busy > 0:
            self.busy -= 1
            error = RecoveryError("state database x: cannot save: locked")
            error.__cause__ = sqlite3.OperationalError("database is locked")
            raise error
        self.batches.append([r.address for r in records])


def _record(i: int) -> CheckpointRecord:
    return CheckpointRecord(
        run_id="r", address=f"a{i}", seq=i, actor="t", actor_version="1", status="completed"
    )


def test_the_writer_retries_a_busy_store_and_keeps_the_order_of_batches() -> None:
    backend = BusyThenFine(busy=3)
    writer = CheckpointWriter(backend, "r")  # type: ignore[arg-type]
    jobs = [writer.submit([_record(2 * i), _record(2 * i + 1)]) for i in range(5)]
    assert all(job.wait(5) for job in jobs)
    assert all(job.error is None for job in jobs)
    assert backend.batches == [[f"a{2 * i}", f"a{2 * i + 1}"] for i in range(5)]
    writer.stop()
    late = writer.submit([_record(99)])
    assert late.done and isinstance(late.error, RecoveryError)


def test_busy_is_told_from_other_failures() -> None:
    locked_error = RecoveryError("x")
    locked_error.__cause__ = sqlite3.OperationalError("database is locked")
    assert is_busy(locked_error)
    assert not is_busy(RecoveryError("disk full"))
    assert not is_busy(OSError(28, "No space left on device"))


def test_options_are_checked(tmp_path: Path) -> None:
    from rh_agents.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="write_wait"):
        Recovery(tmp_path / "a.db", write_wait=-1)
    with pytest.raises(ConfigurationError, match="close_timeout"):
        Recovery(tmp_path / "b.db", close_timeout=0)
