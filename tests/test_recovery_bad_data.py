"""Damaged state, unknown runs and results that no longer fit: clear errors, nothing lost."""

from __future__ import annotations

import logging
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
from rh_agents.recovery import (
    ActorCache,
    JSONBackend,
    Recovery,
    SQLiteBackend,
    SQLiteCacheStore,
    cache_key,
)


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


def _database(path: Path, script: str) -> bytes:
    with sqlite3.connect(path) as conn:
        conn.executescript(script)
    conn.close()
    return path.read_bytes()


def test_a_database_with_only_some_of_the_tables_is_reported_and_left_alone(
    tmp_path: Path,
) -> None:
    # It read as an empty store (no runs, nothing to resume), and a run created in it added
    # the missing tables to it.
    db = tmp_path / "state.db"
    before = _database(
        db,
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, created REAL NOT NULL, "
        "updated REAL NOT NULL, status TEXT NOT NULL, resume_command TEXT);"
        "INSERT INTO runs VALUES ('r', 1.0, 2.0, 'running', NULL);",
    )
    with SQLiteBackend(db, mode="read") as backend, pytest.raises(CorruptStateError) as read:
        backend.list_runs()
    assert str(db) in str(read.value) and "not checkpoints" in str(read.value)
    assert "another file" in str(read.value)  # what to do
    with pytest.raises(CorruptStateError, match="not checkpoints"):
        ExecutionState(run_id="new", recovery=Recovery(db))
    assert db.read_bytes() == before


def test_another_programs_tables_of_the_same_names_are_reported_and_left_alone(
    tmp_path: Path,
) -> None:
    # Opening it for a run added rh_agents' columns to that program's table (ALTER TABLE)
    # before the first write failed.
    db = tmp_path / "state.db"
    before = _database(
        db,
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, payload BLOB);"
        "INSERT INTO runs VALUES (1, 'nightly');",
    )
    with pytest.raises(CorruptStateError) as opened:
        ExecutionState(run_id="new", recovery=Recovery(db))
    assert db.read_bytes() == before
    assert str(db) in str(opened.value) and "has no column(s)" in str(opened.value)
    with SQLiteBackend(db, mode="read") as backend, pytest.raises(CorruptStateError):
        backend.list_runs()


async def test_a_database_with_none_of_the_tables_is_a_new_store(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _database(db, "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('kept');")
    with SQLiteBackend(db, mode="read") as backend:
        assert backend.list_runs() == []
    await _completed_run(db, n=2)
    with SQLiteBackend(db, mode="read") as backend:
        assert [run.run_id for run in backend.list_runs()] == ["r"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    conn.close()


def test_a_cache_file_with_another_programs_table_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    before = _database(db, "CREATE TABLE actor_cache (id INTEGER PRIMARY KEY, blob BLOB);")
    with pytest.raises(CorruptStateError, match="has no column"):
        SQLiteCacheStore(db)
    assert db.read_bytes() == before


async def test_a_stored_result_that_is_not_json_is_damage_not_a_changed_model(
    tmp_path: Path,
) -> None:
    # Text that is not JSON was a ResultSchemaError, which says the model changed and
    # advises bumping the actor's version: no help for a damaged store.
    db = tmp_path / "state.db"
    await _completed_run(db, n=2)
    with sqlite3.connect(db) as conn:
        conn.execute(
            'UPDATE checkpoints SET result_json = \'{"i": 0, "squ\' WHERE address = ?',
            ("members[0]::square",),
        )
    conn.close()
    async with ExecutionState.resume("r", backend=db) as state:
        results = await run_group(state, Squarer(), 2)
    damaged = results[0].exception
    assert isinstance(damaged, CorruptStateError) and not isinstance(damaged, ResultSchemaError)
    assert "members[0]::square" in str(damaged) and str(db) in str(damaged)
    assert "not valid JSON" in str(damaged) and "Restore the store" in str(damaged)
    assert results[1].ok and results[1].source == "replay"


async def test_a_damaged_cache_entry_is_a_miss_said_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "cache.db"
    squarer = Squarer(cacheable=True)
    async with ExecutionState(cache=ActorCache(SQLiteCacheStore(db))) as state:
        await squarer.event(Item(i=2), "", state)
    with sqlite3.connect(db) as conn:
        conn.execute('UPDATE actor_cache SET value_json = \'{"i": 2, "squ\'')
    conn.close()
    cache = ActorCache(SQLiteCacheStore(db))
    with caplog.at_level(logging.WARNING, logger="rh_agents.recovery"):
        async with ExecutionState(cache=cache) as state:
            result = await squarer.event(Item(i=2), "", state)
    assert result.ok and result.source == "run" and squarer.calls[2] == 2
    [damaged] = cache.store_errors
    assert isinstance(damaged, CorruptStateError)
    key = cache_key(squarer.tool, Item(i=2))
    assert key in str(damaged) and str(db) in str(damaged) and "delete" in str(damaged)
    assert [r.getMessage() for r in caplog.records] == [f"{damaged} (kept in cache.store_errors)"]
    again = ActorCache(SQLiteCacheStore(db))  # the entry was replaced by the call's value
    async with ExecutionState(cache=again) as state:
        hit = await squarer.event(Item(i=2), "", state)
    assert hit.source == "cache" and hit.unwrap() == result.unwrap()
