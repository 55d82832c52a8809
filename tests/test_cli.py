"""The ``rh-agents`` command line and the demo behind it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rh_agents
from rh_agents.cli import app

SRC = str(Path(rh_agents.__file__).resolve().parents[1])


def test_demo_command_prints_the_run_and_the_digest() -> None:
    result = CliRunner().invoke(
        app, ["demo", "--documents", "3", "--mode", "collapsed", "--failure-rate", "0"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b" not in out  # captured output is not a terminal
    assert "▶ 🤖 Orchestrator STARTED" in out
    assert "📦 documents: 3 finished · 3 ok · 0 failed" in out
    assert "Digest of 3 of 3 documents" in out


def test_demo_rejects_bad_options() -> None:
    for args in (["--documents", "0"], ["--workers", "0"], ["--failure-rate", "2"]):
        result = CliRunner().invoke(app, ["demo", *args])
        assert result.exit_code == 2, (args, result.output)


def test_no_arguments_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "demo" in result.output


def test_python_dash_m_runs_the_demo() -> None:
    src = str(Path(rh_agents.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-m", "rh_agents", "demo", "--documents", "4", "--mode", "realtime"],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Digest of" in done.stdout
    assert "documents[3]" in done.stdout or "documents#3" in done.stdout


def test_python_dash_m_of_the_cli_module_runs_the_command_line_too() -> None:
    # It was a silent no-op with status 0: a script checking its status was fooled.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rh_agents.cli",
            "runs",
            "show",
            "no-such-run",
            "--state",
            "/nonexistent/x.db",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=50,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "x.db" in done.stderr


def _help(*args: str) -> str:
    result = CliRunner().invoke(
        app, [*args, "--help"], env={"COLUMNS": "100"}, prog_name="rh-agents"
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_help_names_the_run_id_as_usage_does_and_gives_flags_no_type() -> None:
    for command in (["runs", "show"], ["runs", "resume"], ["runs", "timeline"]):
        text = _help(*command)
        assert f"Usage: rh-agents {' '.join(command)} [OPTIONS] {{RUN_ID}}" in text
        assert "run_id" not in text
    for command in ([], ["runs"], ["demo"], ["runs", "show"], ["runs", "list"]):
        text = _help(*command)
        help_row = next(line for line in text.splitlines() if "--help" in line)
        assert "<bool>" not in help_row and "--help " in help_row, help_row
    all_row = next(line for line in _help("runs", "show").splitlines() if "--all" in line)
    assert "<bool>" not in all_row


def test_the_demo_suggests_other_modes_than_the_one_it_ran() -> None:
    from rh_agents.demo import outro

    assert "--mode realtime" not in outro("realtime")
    assert "--mode collapsed" not in outro("collapsed")
    assert "--mode progress" not in outro("progress")
    assert outro("smart").splitlines() == [
        "Try: rh-agents demo --mode realtime   (every event, tagged with its group and index)",
        "     rh-agents demo --mode collapsed --failure-rate 0.3 --workers 4",
    ]


@pytest.mark.parametrize("command", [["demo", "--timeline"], ["runs", "timeline", "r1", "--out"]])
def test_an_output_path_that_cannot_be_written_stops_before_any_work(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    option = command[-1]
    (tmp_path / "a_file").write_text("")
    cases = {
        "missing/dir/x.html": "the folder missing/dir does not exist",
        "a_file/x.html": "a_file is not a folder",
        ".": "it is a folder",
    }
    for path, problem in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "rh_agents", *command, path],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
            timeout=50,
            check=False,
        )
        assert done.returncode == 2, done
        # One line, before anything ran: no banner, no store opened, no traceback.
        assert done.stdout == ""
        assert done.stderr == f"error: {option} {path}: {problem}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_an_output_file_or_folder_without_write_permission_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Permissions are what os.access says (a test run as root may write anywhere): nothing is
    # writable here, everything still readable.
    monkeypatch.setattr(os, "access", lambda path, mode, **_: not mode & os.W_OK)
    existing = tmp_path / "old.html"
    existing.write_text("")
    for path, problem in (
        (tmp_path / "x.html", f"the folder {tmp_path} is not writable"),
        (existing, "the file is not writable"),
    ):
        result = CliRunner().invoke(app, ["demo", "--timeline", str(path)])
        assert result.exit_code == 2
        assert result.output == f"error: --timeline {path}: {problem}\n"
    assert existing.read_text() == ""
