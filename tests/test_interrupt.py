"""Ctrl-C: ``rh_agents.run`` stops a run cleanly, and a resume finishes it.

The first tests run a real program (``interrupt_child.py``) and send it SIGINT once it says
its members are waiting: exit status 130, no traceback, an "interrupted" ending with the
counts, the run stored as interrupted with the command that resumes it, and that command's
run finishing it. The others run ``rh_agents.run`` in this process, where a member sends the
signal itself once the others wait.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console

import rh_agents
from rh_agents import (
    EventBus,
    EventPrinter,
    ExecutionEvent,
    ExecutionState,
    ParallelEventPrinter,
    Tool,
)
from rh_agents.core import interrupt
from rh_agents.errors import ConfigurationError
from rh_agents.recovery import Recovery, RunStatus, SQLiteBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CHILD = Path(__file__).with_name("interrupt_child.py")
SRC = str(Path(rh_agents.__file__).resolve().parents[1])


def _start(store: Path, mode: str, printer: str = "parallel") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(store), mode, printer],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )


def _read_until(child: subprocess.Popen[str], wanted: str) -> str:
    """The child's output up to the line ``wanted`` (blocking reads: the test's timeout
    bounds them), or a failure with what it printed if it ended first."""
    assert child.stdout is not None
    seen = []
    for line in child.stdout:
        seen.append(line)
        if line.rstrip("\n") == wanted:
            return "".join(seen)
    _out, err = child.communicate()
    raise AssertionError(f"the program ended before {wanted!r}: {''.join(seen)}\n{err}")


def _run_info(store: Path) -> Any:
    with SQLiteBackend(store, mode="read") as backend:
        return backend.get_run("digest-1"), backend.load("digest-1")


@pytest.mark.parametrize("printer", ["parallel", "tree"])
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path, printer: str) -> None:
    store = tmp_path / "state.db"
    child = _start(store, "wait", printer)
    before = _read_until(child, "ready")
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    out = before + out

    assert child.returncode == 130, (out, err)
    assert "Traceback" not in err and err == "", err
    # The end says what happened, with the counts; nothing is listed as a failure.
    assert "⏹ interrupted (Ctrl-C): 4 of 10 members finished, 3 cancelled, 3 never started" in out
    assert "CANCELLED" not in out and "FAILED" not in out and "✘" not in out
    assert "MemberCancelledError" not in out
    group = (
        "⏹ 📦 docs: interrupted · 4 of 10 finished"
        if printer == "parallel"
        else "⏹ 📦 docs INTERRUPTED: 4 of 10 finished"
    )
    assert group in out
    info, records = _run_info(store)
    assert info.status is RunStatus.INTERRUPTED
    assert sorted(r.parallel_index for r in records.values()) == [0, 1, 2, 3]
    assert info.resume_command is not None and "interrupt_child.py" in info.resume_command
    assert f"run digest-1 is saved as interrupted; to resume: {info.resume_command}\n" in out

    again = _start(store, "go", printer)
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0, (out, err)
    assert out.rstrip().endswith("resumed")
    if printer == "parallel":
        assert "✔ 📦 docs: 10 finished · 10 ok (4 replayed) · 0 failed" in out
        assert [line for line in out.splitlines() if "replayed [" in line] == [
            f"  ↺ docs#{i} replayed [{i + 1}/10]" for i in range(4)
        ]
    else:
        assert out.count("REPLAYED (stored result)") == 4
        assert "✔ 📦 docs COMPLETED: 10 finished · 10 ok (4 replayed) · 0 failed" in out
    info, records = _run_info(store)
    assert info.status is RunStatus.COMPLETED and len(records) == 10


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    store = tmp_path / "state.db"
    child = _start(store, "stuck")
    _read_until(child, "ready")
    child.send_signal(signal.SIGINT)
    _read_until(child, "cleaning up")  # the cleanup has begun, and would never end
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    _out, err = child.communicate(timeout=30)
    assert child.returncode == 130
    assert time.monotonic() - sent < 5  # at once: nothing waits for the cleanup
    assert "interrupted again: exiting now" in err and "Traceback" not in err
    # The run stays "running", as after a crash; its lease died with the process, so the
    # same command resumes it.
    info, _records = _run_info(store)
    assert info.status is RunStatus.RUNNING
    again = _start(store, "go")
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0, (out, err)
    assert _run_info(store)[0].status is RunStatus.COMPLETED


def test_ctrl_c_on_the_demo_is_clean_and_its_command_resumes_it(state_store: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "rh_agents", "demo", "--mode", "progress", "--run-id", "d1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert demo.stdout is not None
    before = []
    for line in demo.stdout:  # the first finished document: the others are on their way
        before.append(line)
        if line.lstrip().startswith("✔ documents#"):
            break
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=30)
    out = "".join(before) + out
    assert demo.returncode == 130, (out, err)
    assert err == ""
    ended = re.search(
        r"^⏹ interrupted \(Ctrl-C\): (\d+) of 30 members finished, \d+ cancelled, "
        r"\d+ never started$",
        out,
        re.M,
    )
    assert ended is not None, out
    assert "✘" not in out and "CANCELLED" not in out
    resume = out.splitlines()[-1]
    prefix = "  run d1 is saved as interrupted; to resume: "
    assert resume.startswith(prefix), out
    command = shlex.split(resume[len(prefix) :])
    assert command == [sys.executable, "-m", "rh_agents", "demo", "--run-id", "d1"]
    with SQLiteBackend(state_store, mode="read") as backend:
        assert backend.get_run("d1").status is RunStatus.INTERRUPTED

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "Resuming run d1: what it finished is replayed." in again.stdout
    assert re.search(r"📦 documents: 30 finished · \d+ ok \(\d+ replayed\)", again.stdout)
    with SQLiteBackend(state_store, mode="read") as backend:
        assert backend.get_run("d1").status is RunStatus.COMPLETED


# --- in this process ------------------------------------------------------------------------


class Item(BaseModel):
    i: int


async def _wait_then_interrupt(input: Item, context: str, state: ExecutionState) -> int:
    if input.i >= 2:
        waiting = state.store["waiting"] = state.store.get("waiting", 0) + 1
        if waiting == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C now
        await asyncio.Event().wait()
    return input.i


def _interrupted_run(subscriber: Any, recovery: Recovery | None = None) -> None:
    event = ExecutionEvent(actor=Tool(name="work", input_model=Item, handler=_wait_then_interrupt))

    async def main() -> None:
        bus = EventBus()
        bus.subscribe(subscriber)
        async with (
            ExecutionState(event_bus=bus, run_id="r", recovery=recovery) as state,
            state.parallel(max_workers=3, name="docs") as p,
        ):
            for i in range(8):
                p.add(event(Item(i=i), "", state))

    with pytest.raises(SystemExit) as stopped:
        rh_agents.run(main())
    assert stopped.value.code == 130


@pytest.mark.parametrize("mode", ["realtime", "progress", "collapsed", "live"])
def test_every_printer_mode_ends_with_interrupted_and_lists_no_cancelled_member(
    mode: str,
) -> None:
    out = io.StringIO()
    terminal = mode == "live"
    console = Console(file=out, width=120, force_terminal=terminal, color_system=None)
    printer = ParallelEventPrinter(
        "progress" if terminal else mode,  # type: ignore[arg-type]
        console=console,
    )
    _interrupted_run(printer)
    printer.close()
    text = out.getvalue()
    assert "⏹ interrupted (Ctrl-C): 2 of 8 members finished, 3 cancelled, 3 never started" in text
    assert "interrupted · 2 of 8 finished · 2 ok · 0 failed · 3 cancelled · 3 never started" in text
    assert "CANCELLED" not in text and "✘" not in text
    assert "saved as interrupted" not in text  # no store: nothing to resume


def test_the_tree_printer_too(tmp_path: Path) -> None:
    out = io.StringIO()
    printer = EventPrinter(console=Console(file=out, width=200))
    recovery = Recovery(tmp_path / "state.db", resume="auto", resume_command="python x.py")
    _interrupted_run(printer, recovery)
    text = out.getvalue()
    assert "⏹ 📦 docs INTERRUPTED: 2 of 8 finished · 2 ok · 0 failed · 3 cancelled" in text
    assert text.rstrip().splitlines()[-2:] == [
        "⏹ interrupted (Ctrl-C): 2 of 8 members finished, 3 cancelled, 3 never started",
        "  run r is saved as interrupted; to resume: python x.py",
    ]
    assert "CANCELLED" not in text and "FAILED" not in text


def test_run_returns_what_main_returns_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGINT)

    async def main() -> int:
        assert signal.getsignal(signal.SIGINT) is not before
        return 42

    assert rh_agents.run(main()) == 42
    assert signal.getsignal(signal.SIGINT) is before
    assert not rh_agents.interrupt_requested()


def test_run_wants_a_coroutine() -> None:
    async def main() -> None: ...

    with pytest.raises(ConfigurationError, match="needs a coroutine, such as main"):
        rh_agents.run(main)  # type: ignore[arg-type]


async def test_run_inside_a_running_loop_says_to_await_and_closes_the_coroutine() -> None:
    # asyncio's RuntimeError, "coroutine was never awaited" and "Task was destroyed".
    import gc
    import warnings

    async def main() -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigurationError, match="inside a running event loop"):
            rh_agents.run(main())
        with pytest.raises(ConfigurationError, match="loop_factory must be a function"):
            rh_agents.run(main(), loop_factory=5)  # type: ignore[arg-type]
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_cancellation_that_is_not_ctrl_c_is_still_a_failure(tmp_path: Path) -> None:
    assert not interrupt.interrupt_requested()
    db = tmp_path / "state.db"
    gate = asyncio.Event()

    async def hold(input: Item, context: str, state: ExecutionState) -> int:
        gate.set()
        await asyncio.Event().wait()
        return 0

    event = ExecutionEvent(actor=Tool(name="hold", input_model=Item, handler=hold))

    async def body() -> None:
        async with ExecutionState(run_id="c", recovery=Recovery(db)) as state:
            await event(Item(i=0), "", state)

    task = asyncio.create_task(body())
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with SQLiteBackend(db, mode="read") as backend:
        assert backend.get_run("c").status is RunStatus.FAILED
