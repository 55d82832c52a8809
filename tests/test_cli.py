"""The ``rh-agents`` command line and the offline demo behind it."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

from typer.testing import CliRunner

import rh_agents
from rh_agents.cli import app
from rh_agents.demo import DOCUMENTS, run_demo

DIGEST_OF_3 = [
    "- Worker pools bound memory",
    "- Rate limits protect providers",
    "- " + DOCUMENTS[2],
]


def test_demo_command_prints_the_tree_and_the_digest() -> None:
    result = CliRunner().invoke(app, ["demo", "--documents", "3"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b" not in out  # captured output is not a terminal
    first = out.splitlines()[0]
    assert first.startswith('▶ 🤖 Orchestrator STARTED {"notes":["Worker pools bound memory:')
    assert first.endswith("…")  # the input detail is cut to the event's detail_chars
    assert "  ▶ 📦 notes PARALLEL, max_workers=3" in out
    assert "Orchestrator::notes[2]::reader::steps[1]::keywords" in out
    digest = out.split("\nDigest:\n", 1)[1].splitlines()
    assert digest == DIGEST_OF_3


def test_demo_rejects_zero_documents() -> None:
    result = CliRunner().invoke(app, ["demo", "--documents", "0"])
    assert result.exit_code == 2
    assert "documents" in result.output


def test_no_arguments_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "demo" in result.output
    assert "Run the offline research-digest demo" in result.output


def test_python_dash_m_runs_the_demo() -> None:
    src = str(Path(rh_agents.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-m", "rh_agents", "demo", "--documents", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\nDigest:\n", 1)[1].splitlines() == DIGEST_OF_3


async def test_run_demo_is_deterministic_and_writes_to_the_given_file() -> None:
    outs = [StringIO(), StringIO()]
    digests = [await run_demo(file=out, documents=8, seed=3) for out in outs]
    assert digests[0] == digests[1]
    assert len(digests[0].splitlines()) == 8
    for out in outs:
        text = out.getvalue()
        assert "Orchestrator::notes[7]::reader" in text
        assert "FAILED" not in text
