"""The ``rh-agents`` command line and the demo behind it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import rh_agents
from rh_agents.cli import app


def test_demo_command_prints_the_run_and_the_digest() -> None:
    result = CliRunner().invoke(
        app, ["demo", "--documents", "3", "--mode", "collapsed", "--failure-rate", "0"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b" not in out  # captured output is not a terminal
    assert "▶ 🤖 Orchestrator STARTED" in out
    assert "📦 documents: 3/3 done · 0 failed" in out
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
