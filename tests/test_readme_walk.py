"""The README's walk through the command line, run as written after the demo: ``make demo``,
then each ``rh-agents runs ...`` line with the id the demo printed.

Each command runs as a real process (``python -m rh_agents``, what ``.venv/bin/rh-agents``
runs) with the test's default store (``RH_AGENTS_STATE``, set by conftest), from an empty
temporary folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import rh_agents

ROOT = Path(__file__).resolve().parent.parent
SRC = str(Path(rh_agents.__file__).resolve().parents[1])


def _walk() -> list[str]:
    """The commands of the README's ```bash block that goes from ``make demo`` through the
    ``rh-agents runs`` commands."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    walk = next(block for block in blocks if "rh-agents runs list" in block)
    return [line.split("#", 1)[0].strip() for line in walk.splitlines() if line.strip()]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rh_agents", *command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=50,
        check=False,
    )


@pytest.mark.slow
def test_every_command_of_the_readme_walk_works_after_the_demo(
    tmp_path: Path, state_store: Path
) -> None:
    commands = _walk()
    assert commands[0] == "make demo"
    assert [c.split()[:3] for c in commands[1:]] == [
        ["rh-agents", "runs", "list"],
        ["rh-agents", "runs", "show"],
        ["rh-agents", "runs", "timeline"],
        ["rh-agents", "runs", "resume"],
    ]

    demo = _run(["demo"], tmp_path)  # what `make demo` runs: .venv/bin/rh-agents demo
    assert demo.returncode == 0, demo.stderr
    saved = re.search(r"^Saved as run (\S+)\s+\(in\s+(\S+)\)\.", demo.stdout, re.M)
    assert saved is not None, demo.stdout
    run_id = saved.group(1)
    assert saved.group(2) == str(state_store)

    outputs = {}
    for command in commands[1:]:
        words = shlex.split(command.replace("RUN_ID", run_id))[1:]
        done = _run(words, tmp_path)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        outputs[words[1]] = done.stdout
    assert outputs["list"].splitlines()[0] == f"runs in {state_store}:"
    assert re.search(rf"^{run_id}\s+completed\s+\d+", outputs["list"], re.M)
    assert outputs["show"].startswith(f"run {run_id}: completed, ")
    assert "Orchestrator::documents: 30 of at least 30 members completed" in outputs["show"]
    assert outputs["timeline"].startswith("wrote timeline.html: ")
    assert (tmp_path / "timeline.html").stat().st_size > 0
    assert outputs["resume"].startswith(f"resuming run {run_id} would replay ")
    assert f"demo --run-id {run_id}" in outputs["resume"].splitlines()[-1]


def test_runs_list_says_where_it_looked_before_any_run(tmp_path: Path, state_store: Path) -> None:
    done = _run(["runs", "list"], tmp_path)
    assert done.returncode == 0 and done.stdout == f"no runs yet in {state_store}\n"
