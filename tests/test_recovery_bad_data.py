"""Damaged state, unknown runs and results that no longer fit: clear errors, nothing lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from recovery_support import Item, Squarer, make_backend, run_group
from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import (
    CorruptStateError,
    InvalidRunIdError,
    RecoveryError,
    ResultSchemaError,
    RunLockedError,
    UnknownRunError,
)
from rh_agents.recovery import JSONBackend, Recovery, SQLiteBackend


async def _completed_run(backend_location: Path, n: int = 40) -> None:
    async with ExecutionState(run_id="r", recovery=Recovery(backend_location)) as state:
        await run_group(state, Squarer(), n)


@pytest.mark.parametrize("kind", ["sqlite", "json"])
def test_an_unknown_run_id_is_named_in_the_error(tmp_path: Path, kind: str) -> None:
    with make_backend(kind, tmp_path) as backend:
        with pytest.raises(UnknownRunError, match="no run 'ghost'"):
            ExecutionState.resume("ghost", backend=backend)
        with pytest.raises(UnknownRunError):
            backend.load("ghost")


@pytest.mark.parametrize("kind", ["sqlite", "json"])
async def test_a_run_id_cannot_be_created_twice(tmp_path: Path, kind: str) -> None:
    with make_backend(kind, tmp_path) as backend:
        first = ExecutionState(run_id="r", recovery=Recovery(backend))
        with pytest.raises(RunLockedError, match="this process"):  # still being written
            ExecutionState(run_id="r", recovery=Recovery(backend))
        await first.close()
        with pytest.raises(RecoveryError, match="already exists"):
            ExecutionState(run_id="r", recovery=Recovery(backend))


def test_a_file_that_is_not_a_database_is_reported_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    garbage = b"this is not sqlite at all\n" * 200
    db.write_bytes(garbage)
    with pytest.raises(CorruptStateError, match="damaged"):
        ExecutionState.resume("r", backend=db)
    with pytest.raises(CorruptStateError):
        ExecutionState(run_id="new", recovery=Recovery(db))
    assert db.read_bytes() == garbage


async def test_a_truncated_database_is_reported_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    await _completed_run(db, n=300)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    whole = db.read_bytes()
    db.write_bytes(whole[: len(whole) // 2])
    truncated = db.read_bytes()
    with pytest.raises(CorruptStateError, match="damaged"):
        ExecutionState.resume("r", backend=db)
    assert db.read_bytes() == truncated


async def test_a_truncated_json_file_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    await _completed_run(runs, n=5)
    path = runs / "r.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    broken = path.read_bytes()
    with pytest.raises(CorruptStateError, match="truncated"):
        ExecutionState.resume("r", backend=runs)
    backend = JSONBackend(runs)
    with pytest.raises(CorruptStateError):
        backend.save("r", [])
    assert path.read_bytes() == broken
    assert [p.name for p in runs.iterdir()] == ["r.json"]  # no stray temporary file


class Reshaped(BaseModel):
    text: str


async def test_a_stored_result_that_no_longer_fits_its_model(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    await _completed_run(db, n=2)

    async def handler(item: Item, context: str, state: ExecutionState) -> Reshaped:
        return Reshaped(text=str(item.i))

    changed = ExecutionEvent(
        actor=Tool(name="square", input_model=Item, output_model=Reshaped, handler=handler)
    )
    async with ExecutionState.resume("r", backend=db) as state:
        [result] = await state.parallel_execute([changed(Item(i=0), "", state)], name="members")
    assert isinstance(result.exception, ResultSchemaError)
    assert "members[0]::square" in str(result.exception)
    assert "Reshaped" in str(result.exception)


def test_json_backend_rejects_a_run_id_that_cannot_name_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidRunIdError, match="path separator"):
        ExecutionState(run_id="../escape", recovery=Recovery(JSONBackend(tmp_path)))
    with pytest.raises(InvalidRunIdError, match="path separator"):
        JSONBackend(tmp_path).create_run("../escape")
    assert list(tmp_path.iterdir()) == []


def test_sqlite_backend_refuses_use_after_close(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "state.db")
    backend.close()
    with pytest.raises(RecoveryError, match="closed"):
        backend.list_runs()
