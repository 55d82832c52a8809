"""Regressions found by probing the executors, the sync-handler threads and the integrations
as a hostile user would: a handler blocked for good, a member that starts processes of its
own, malformed replies from an OpenAI-compatible server.

The members sent to worker processes are defined here, at the top level: the workers import
this module by name (pytest put its folder on the driver's ``sys.path``, which the workers
inherit).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor_support import Item
from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ResultStatus
from rh_agents.executors import ProcessExecutor

# --- members sent to worker processes ---------------------------------------------------------


def start_child_then_sleep(path: str) -> int:
    """Start a long ``sleep`` process, say its pid in ``path``, then sleep past any timeout."""
    child = subprocess.Popen(["sleep", "60"])
    Path(path + ".tmp").write_text(str(child.pid))
    os.replace(path + ".tmp", path)  # (whole, for the driver that polls it)
    time.sleep(60)
    return child.pid


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- sync handlers in threads -------------------------------------------------------------------


def test_a_handler_blocked_for_good_does_not_hang_the_programs_exit() -> None:
    # A timed-out handler is abandoned in its thread; with concurrent.futures' threads the
    # interpreter joined it at exit, and a handler blocked for good hung the program.
    script = textwrap.dedent(
        """
        import asyncio, threading
        from pydantic import BaseModel
        from rh_agents.core.actors import Tool
        from rh_agents.core.events import ExecutionEvent
        from rh_agents.core.execution import ExecutionState

        class In(BaseModel):
            n: int = 0

        never = threading.Event()

        def stuck(input: In, context: str, state: ExecutionState) -> int:
            never.wait()
            return 1

        async def main() -> None:
            async with ExecutionState() as state:
                event = ExecutionEvent(actor=Tool(name="stuck", input_model=In, handler=stuck))
                (result,) = await state.parallel_execute([event(In(), "", state)],
                                                         member_timeout=0.1)
            print(result.status.name, flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "TIMED_OUT"
    assert "1 synchronous handler(s) abandoned" in done.stderr


async def test_closing_the_state_reports_an_abandoned_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    running = threading.Event()

    def stuck(input: Item, context: str, state: ExecutionState) -> int:
        running.set()
        release.wait(10)
        return 1

    event = ExecutionEvent(actor=Tool(name="stuck", input_model=Item, handler=stuck))
    try:
        with caplog.at_level(logging.WARNING, logger="rh_agents"):
            async with ExecutionState() as state:
                (result,) = await state.parallel_execute(
                    [event(Item(), "", state)], member_timeout=0.2
                )
        assert result.status is ResultStatus.TIMED_OUT and running.is_set()
        assert any("1 synchronous handler(s) abandoned" in r.message for r in caplog.records)
    finally:
        release.set()
    # The thread ends with its handler, holding nothing.
    deadline = time.monotonic() + 10
    while any(t.name.startswith("rh-agents-handler") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the handler's thread outlived its handler"
        await asyncio.sleep(0.01)


async def test_the_thread_pool_still_runs_at_most_limit_handlers_at_once() -> None:
    gate = threading.Event()
    ran: list[int] = []
    lock = threading.Lock()
    full = threading.Event()
    inside = 0
    peak = 0

    def work(input: Item, context: str, state: ExecutionState) -> int:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
            if inside == 2:
                full.set()
        gate.wait(5)
        with lock:
            inside -= 1
            ran.append(input.n)
        return input.n

    event = ExecutionEvent(actor=Tool(name="work", input_model=Item, handler=work))
    async with ExecutionState(max_threads=2) as state:
        task = asyncio.ensure_future(
            state.parallel_execute([event(Item(n=n), "", state) for n in range(6)], max_workers=6)
        )
        assert await asyncio.to_thread(full.wait, 5)
        gate.set()
        results = await task
    assert [r.result for r in results] == list(range(6)) and peak == 2


# --- worker processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessExecutor]:
    with ProcessExecutor(max_processes=2) as pool:
        yield pool


async def test_a_timed_out_member_takes_the_processes_it_started_with_it(
    pool: ProcessExecutor, tmp_path: Path
) -> None:
    # The worker was killed alone: the `sleep` its member started lived on, an orphan.
    marker = tmp_path / "child.pid"
    async with ExecutionState() as state:
        (result,) = await state.parallel_execute(
            [functools.partial(start_child_then_sleep, str(marker))],
            executor=pool,
            member_timeout=5.0,
        )
    assert result.status is ResultStatus.TIMED_OUT
    child = int(marker.read_text())
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, f"process {child} outlived its member"
        await asyncio.sleep(0.02)
