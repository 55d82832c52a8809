"""The offline demo: deterministic digest, option checks, and a real terminal run under tmux."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from rh_agents.demo import run_demo
from rh_agents.demo_data import DOCUMENTS
from rh_agents.errors import ConfigurationError

SRC = Path(__file__).resolve().parent.parent / "src"


def test_bundled_documents_are_a_few_dozen_short_texts() -> None:
    assert 25 <= len(DOCUMENTS) <= 40
    assert all(title and 40 < len(text) < 300 for title, text in DOCUMENTS)


async def test_demo_digests_what_succeeded_and_shows_every_failure() -> None:
    out = io.StringIO()
    digest = await run_demo(
        console=Console(file=out, width=200, force_terminal=False),
        documents=12,
        workers=4,
        mode="collapsed",
        latency=0.0,
        failure_rate=0.5,
    )
    text = out.getvalue()
    # Seeded per document and attempt: with three attempts each, documents 1 and 4 fail all
    # three on every run, whatever the finishing order; the others recover by retrying.
    assert digest.startswith("Digest of 10 of 12 documents (2 failed")
    assert "✘ documents#1 FAILED: SimulatedProviderError: 503" in text
    assert "✘ documents#4 FAILED: SimulatedProviderError: 503" in text
    assert "⚠ 📦 documents: 12 finished · 10 ok · 2 failed" in text
    # The nested groups, merged: the LLM step's retries are counted there.
    assert "📦 steps ×12: 24 finished · 22 ok · 2 failed · 9 retried" in text
    assert "\x1b" not in text


async def test_demo_with_no_failures_and_another_seed() -> None:
    digest = await run_demo(
        console=Console(file=io.StringIO(), force_terminal=False),
        documents=5,
        failure_rate=0.0,
        seed=3,
        latency=0.0,
    )
    assert digest.startswith("Digest of 5 of 5 documents\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"documents": 0}, "documents must be >= 1"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"failure_rate": 1.5}, "failure_rate must be between 0 and 1"),
        ({"mode": "loud"}, "mode must be one of"),
    ],
)
async def test_demo_rejects_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await run_demo(console=Console(file=io.StringIO()), latency=0.0, **options)  # type: ignore[arg-type]


def _tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not on PATH")
def test_demo_in_a_real_terminal() -> None:
    session = f"rh-agents-demo-{os.getpid()}"
    command = (
        f"RH_AGENTS_STATE={shlex.quote(os.environ['RH_AGENTS_STATE'])} "
        f"PYTHONPATH={shlex.quote(str(SRC))} {shlex.quote(sys.executable)} -m rh_agents demo "
        "--documents 30 --workers 4 --mode progress; echo DEMO''-EXIT-$?"
    )
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40")
    try:
        _tmux("send-keys", "-t", session, command, "Enter")
        saw_live_bar = False
        screen = ""
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            # -J joins wrapped lines; the marker cannot match the typed command (DEMO''-EXIT).
            screen = _tmux("capture-pane", "-p", "-J", "-t", session, "-S", "-200")
            if re.search(r"DEMO-EXIT-\d+", screen):
                break
            # While it runs, the live view shows the group's bar with its known total.
            saw_live_bar = saw_live_bar or ("📦 documents" in screen and "/30 " in screen)
            time.sleep(0.05)  # polling the screen for a condition, not waiting blindly
        else:
            pytest.fail(f"the demo did not finish in 45s; screen:\n{screen}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, timeout=10)
    assert "DEMO-EXIT-0" in screen
    assert saw_live_bar, screen
    # The default run: transient failures all recover within three attempts.
    assert "Digest of 30 of 30 documents" in screen
    assert "✔ 📦 documents: 30 finished · 30 ok · 0 failed" in screen
    steps = r"📦 steps ×30: 60 finished · 60 ok · 0 failed · [1-9]\d* retried"
    assert re.search(steps, screen), screen
    assert "⠿" not in screen  # the live view was cleared: only the final text remains


async def test_a_narrow_console_gets_every_line_wrapped_between_words() -> None:
    out = io.StringIO()
    await run_demo(
        console=Console(file=out, width=40, force_terminal=False),
        documents=3,
        mode="collapsed",
        latency=0.0,
        failure_rate=0.0,
    )
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "rh_agents demo: a research digest over 3",
        "  documents (offline, simulated LLM)",
        "  Orchestrator → parallel group",
        "    documents (max_workers=8)",
    ]
    assert lines[-6:] == [
        "Try: rh-agents demo --mode realtime",
        "       (every event, tagged with its",
        "       group and index)",
        "     rh-agents demo --mode progress   (a",
        "       live bar per group, its members",
        "       beneath)",
    ]
    # No line is wider than the console (but the commands and code to copy, which are never
    # cut), and the summary's lines keep their tree.
    assert (
        max(
            cell_len(line)
            for line in lines
            if not line.startswith("  rh-agents ") and "└─ View details: " not in line
        )
        <= 40
    )
    at = next(n for n, line in enumerate(lines) if "📦 documents" in line)
    assert lines[at] == "  ✔ 📦 documents: 3 finished · 3 ok ·"
    assert lines[at + 1].startswith("      0 failed · ")  # then the wall time


def _demo_process(tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rh_agents",
            "demo",
            "--documents",
            "3",
            "--state",
            str(tmp_path / "state.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
    )


def test_demo_read_by_a_pipe_that_closes_early_ends_without_a_traceback(tmp_path: Path) -> None:
    # `rh-agents demo | head -1`: the reader goes away after the first line.
    demo = _demo_process(tmp_path)
    assert demo.stdout is not None and demo.stderr is not None
    assert b"rh_agents demo" in demo.stdout.readline()
    demo.stdout.close()
    errors = demo.stderr.read().decode()
    assert demo.wait(timeout=60) in (0, 1)
    assert "Traceback" not in errors and "never retrieved" not in errors, errors


def test_demo_on_an_ascii_terminal_replaces_what_it_cannot_show(tmp_path: Path) -> None:
    demo = _demo_process(tmp_path, PYTHONIOENCODING="ascii")
    out, errors = demo.communicate(timeout=60)
    assert demo.returncode == 0, errors.decode()
    text = out.decode("ascii")  # nothing but ASCII reached it
    assert "Orchestrator ? parallel group documents" in text
    assert "Digest of 3 of 3 documents" in text
