"""The default store: where runs go when no path is given, and where `rh-agents runs` looks."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recovery_support import Squarer, run_group
from rh_agents.cli import app
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery import Recovery, RunStatus, SQLiteBackend
from rh_agents.recovery.backend import default_state_path
from rh_agents.recovery.opening import open_backend

runner = CliRunner()


def test_the_environment_variable_names_the_store(
    state_store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert default_state_path() == state_store
    monkeypatch.setenv("RH_AGENTS_STATE", str(tmp_path / "runs"))  # a folder: JSON files
    assert default_state_path() == tmp_path / "runs"
    assert type(open_backend(None)).__name__ == "JSONBackend"


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX fallback")
def test_without_it_a_per_user_state_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RH_AGENTS_STATE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_path() == tmp_path / "xdg" / "rh_agents" / "state.db"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the specification says so
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_path() == tmp_path / "home" / ".local" / "state" / "rh_agents" / "state.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_path() == tmp_path / "home" / ".local" / "state" / "rh_agents" / "state.db"


async def test_a_run_without_a_path_is_listed_without_one(state_store: Path) -> None:
    empty = runner.invoke(app, ["runs", "list"])
    assert empty.exit_code == 0 and empty.output == f"no runs yet in {state_store}\n"
    assert not await asyncio.to_thread(state_store.exists)  # listing created nothing

    async with ExecutionState(run_id="nightly", recovery=Recovery()) as state:
        await run_group(state, Squarer(), 3)
    listed = runner.invoke(app, ["runs", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[0] == f"runs in {state_store}:"
    assert "nightly" in listed.output and "completed" in listed.output
    shown = runner.invoke(app, ["runs", "show", "nightly"])
    assert shown.exit_code == 0 and shown.output.startswith("run nightly: completed, 3 events")
    assert ExecutionState.resume("nightly").recovery is not None  # found there too


def test_an_empty_store_says_where_it_is(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SQLiteBackend(db).close()
    listed = runner.invoke(app, ["runs", "list", "--state", str(db)])
    assert listed.exit_code == 0 and listed.output == f"no runs yet in {db}\n"


def _old_store(path: Path) -> None:
    """A store as written before runs had a resume_command column."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created REAL NOT NULL,
                           updated REAL NOT NULL, status TEXT NOT NULL);
        CREATE TABLE checkpoints (run_id TEXT NOT NULL, address TEXT NOT NULL,
            seq INTEGER NOT NULL, actor TEXT NOT NULL, actor_version TEXT NOT NULL,
            status TEXT NOT NULL, result_json TEXT, output_model TEXT, group_id TEXT,
            parallel_index INTEGER, error TEXT, execution_time REAL NOT NULL,
            attempts INTEGER NOT NULL, PRIMARY KEY (run_id, address)) WITHOUT ROWID;
        INSERT INTO runs VALUES ('old', 1.0, 2.0, 'failed');
        """
    )
    conn.close()


def test_a_store_from_before_the_resume_command_is_read_as_it_is_and_upgraded_on_write(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    _old_store(db)
    before = db.read_bytes()
    with SQLiteBackend(db, mode="read") as backend:
        info = backend.get_run("old")
    assert info.status is RunStatus.FAILED and info.resume_command is None
    assert db.read_bytes() == before  # reading changed nothing
    shown = runner.invoke(app, ["runs", "show", "old", "--state", str(db)])
    assert shown.exit_code == 0, shown.output
    assert "resume: run your program again with ExecutionState.resume('old'" in shown.output
    with SQLiteBackend(db) as backend:
        backend.set_resume_command("old", "python old.py")
        assert backend.get_run("old").resume_command == "python old.py"
        assert backend.list_runs()[0].status is RunStatus.FAILED
