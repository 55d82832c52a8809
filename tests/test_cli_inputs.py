"""Inputs the command line (and the API behind it) must take, or refuse, clearly: store paths
in any case, a JSON folder with a bad run file, an empty ``--from``, a huge ``--documents``,
an empty ``--host``."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recovery_support import Squarer, run_group
from rh_agents.cli import app
from rh_agents.core.execution import ExecutionState
from rh_agents.demo import run_demo
from rh_agents.demo_data import MAX_DOCUMENTS
from rh_agents.errors import ConfigurationError, CorruptStateError
from rh_agents.recovery import JSONBackend, Recovery, SQLiteBackend, open_backend

runner = CliRunner()


# --- store paths: the SQLite suffixes in any case --------------------------------------------


@pytest.mark.parametrize("name", ["state.DB", "state.Db", "runs.SQLITE", "runs.Sqlite3"])
async def test_an_sqlite_suffix_in_any_case_is_sqlite(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    recovery = Recovery(path)
    assert isinstance(recovery.backend, SQLiteBackend)
    async with ExecutionState(run_id="r", recovery=recovery) as state:
        await run_group(state, Squarer(), 3)
    assert path.is_file()  # one database file, not a folder of JSON run files
    with open_backend(path, mode="read") as backend:
        assert isinstance(backend, SQLiteBackend)
        assert [run.run_id for run in backend.list_runs()] == ["r"]
    listed = runner.invoke(app, ["runs", "list", "--state", str(path)])
    assert listed.exit_code == 0, listed.output
    assert "r " in listed.stdout and "completed" in listed.stdout


def test_other_suffixes_stay_json_folders(tmp_path: Path) -> None:
    with open_backend(tmp_path / "runs.DBX") as backend:
        assert isinstance(backend, JSONBackend)


# --- runs list over a JSON folder with a corrupt run file ------------------------------------


async def test_runs_list_shows_the_readable_runs_and_names_the_bad_file(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    for run_id in ("alpha", "beta"):
        async with ExecutionState(run_id=run_id, recovery=Recovery(folder)) as state:
            await run_group(state, Squarer(), 2)
    bad = folder / "broken.json"
    bad.write_text('{"format": 1, "run": {', encoding="utf-8")  # truncated
    (folder / "worse.json").write_bytes(b"\xff\xfe not text")

    listed = runner.invoke(app, ["runs", "list", "--state", str(folder)])
    assert listed.exit_code == 1, listed.output  # listed, but not everything could be read
    assert "alpha" in listed.stdout and "beta" in listed.stdout
    assert "broken" not in listed.stdout
    assert str(bad) in listed.stderr and str(folder / "worse.json") in listed.stderr
    assert "2 run file(s)" in listed.stderr and "the 2 other run(s) are" in listed.stderr
    assert bad.read_text(encoding="utf-8") == '{"format": 1, "run": {'  # left as it was

    # The backend's own list_runs stays strict; list_readable_runs is the lenient one.
    with JSONBackend(folder, mode="read") as backend:
        runs, problems = backend.list_readable_runs()
        assert sorted(run.run_id for run in runs) == ["alpha", "beta"]
        assert len(problems) == 2
        with pytest.raises(CorruptStateError, match=r"broken\.json"):
            backend.list_runs()


@pytest.mark.parametrize(
    ("column", "value"), [("status", "paused"), ("created", "yesterday"), ("updated", "soon")]
)
async def test_runs_list_over_sqlite_shows_the_readable_runs_and_names_the_bad_one(
    tmp_path: Path, column: str, value: str
) -> None:
    """One run row of an SQLite store that this version cannot read (a status it does not
    know, a time that is text) made ``runs list`` exit 2 listing nothing, where a
    JSON folder's damaged run file is named and the other runs listed: SQLite does the same."""
    db = tmp_path / "state.db"
    for run_id in ("alpha", "beta", "damaged"):
        async with ExecutionState(run_id=run_id, recovery=Recovery(db)) as state:
            await run_group(state, Squarer(), 2)
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE runs SET {column} = ? WHERE run_id = 'damaged'", (value,))
    conn.close()

    listed = runner.invoke(app, ["runs", "list", "--state", str(db)])
    assert listed.exit_code == 1, listed.output  # listed, but not everything could be read
    assert "alpha" in listed.stdout and "beta" in listed.stdout
    assert "damaged" not in listed.stdout
    assert "holds run 'damaged'" in listed.stderr
    assert "1 run(s) in" in listed.stderr and "the 2 other run(s) are" in listed.stderr

    # As for JSON: the backend's own list_runs stays strict; list_readable_runs is lenient.
    with SQLiteBackend(db, mode="read") as backend:
        runs, problems = backend.list_readable_runs()
        assert sorted(run.run_id for run in runs) == ["alpha", "beta"]
        assert len(problems) == 1 and isinstance(problems[0], CorruptStateError)
        assert "'damaged'" in str(problems[0])
        with pytest.raises(CorruptStateError, match="'damaged'"):
            backend.list_runs()


def test_runs_list_with_only_bad_files_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "broken.json").write_text("not json", encoding="utf-8")
    listed = runner.invoke(app, ["runs", "list", "--state", str(folder)])
    assert listed.exit_code == 1
    assert f"no readable runs in {folder}" in listed.stdout
    assert "broken.json" in listed.stderr


# --- runs resume --from "" ------------------------------------------------------------------


@pytest.mark.parametrize("address", ["", "   "])
async def test_an_empty_from_is_a_usage_error(tmp_path: Path, address: str) -> None:
    db = tmp_path / "state.db"
    async with ExecutionState(run_id="nightly", recovery=Recovery(db)) as state:
        await run_group(state, Squarer(), 2)
    plan = runner.invoke(app, ["runs", "resume", "nightly", "--from", address, "--state", str(db)])
    assert plan.exit_code == 2, plan.output
    assert "--from" in plan.stderr and "needs an address" in plan.stderr
    assert "would replay" not in plan.stdout  # no plan for the whole run in its place


# --- demo --documents -----------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("count", [str(10**20), str(MAX_DOCUMENTS + 1)])
def test_demo_refuses_more_documents_than_its_maximum(count: str) -> None:
    result = runner.invoke(app, ["demo", "--documents", count])
    assert result.exit_code == 2, result.output
    assert "--documents" in result.stderr and str(MAX_DOCUMENTS) in result.stderr


@pytest.mark.timeout(20)
async def test_run_demo_refuses_more_documents_than_its_maximum() -> None:
    with pytest.raises(ConfigurationError, match=f">= 1 and at most {MAX_DOCUMENTS}"):
        await run_demo(documents=10**20, save=False)


# --- ui --host "" ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["", " "])
def test_ui_refuses_an_empty_host(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_bind(*args: object) -> None:
        raise AssertionError("an empty host must be refused before anything is bound")

    monkeypatch.setattr(socket.socket, "bind", no_bind)
    result = runner.invoke(app, ["ui", "--host", host, "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "--host" in result.stderr and "0.0.0.0" in result.stderr
    assert "http://" not in result.output  # no URL announced


def test_the_viewer_api_refuses_an_empty_host() -> None:
    server = pytest.importorskip("rh_agents.ui.server")
    with pytest.raises(ConfigurationError, match="host"):
        server.Viewer(host="")
    with pytest.raises(ConfigurationError, match="host"):
        server.bind("", 0)


@pytest.mark.parametrize(
    "command",
    [
        ["runs", "list"],
        ["runs", "show", "r"],
        ["runs", "resume", "r"],
        ["runs", "timeline", "r"],
        ["demo", "--documents", "2"],
    ],
)
def test_an_empty_state_path_is_refused_not_read_as_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # Path("") is ".": `--state "$UNSET"` listed the current folder, and the demo wrote its
    # run files there.
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, [*command, "--state", ""])
    assert done.exit_code == 2, done.output
    assert "is empty" in done.output
    assert list(tmp_path.iterdir()) == []  # nothing written here
