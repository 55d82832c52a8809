"""Shared fixtures. Every async test runs under pytest-timeout (see pyproject).

``RH_AGENTS_TEST_LOOP=uvloop`` (``make test-uvloop``) runs the suite on uvloop's event loop:
every async test through pytest-asyncio's loop factory, and every ``asyncio.run()`` a test
makes in this process through the event loop policy. (Scripts a test starts in a subprocess
keep the default loop.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent

TEST_LOOP = os.environ.get("RH_AGENTS_TEST_LOOP", "asyncio")

if TEST_LOOP == "uvloop":
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {"uvloop": uvloop.new_event_loop}

elif TEST_LOOP == "eager":
    # Python 3.12+: asyncio's loop with asyncio.eager_task_factory, which starts every task
    # at once, inside create_task (a setting programs use for speed).
    if not hasattr(asyncio, "eager_task_factory"):
        raise pytest.UsageError("RH_AGENTS_TEST_LOOP=eager needs Python 3.12 or newer")

    def _eager_loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        return loop

    class _EagerPolicy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            loop = super().new_event_loop()
            loop.set_task_factory(asyncio.eager_task_factory)
            return loop

    asyncio.set_event_loop_policy(_EagerPolicy())

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {"eager": _eager_loop}

elif TEST_LOOP != "asyncio":
    raise pytest.UsageError(
        f"RH_AGENTS_TEST_LOOP must be asyncio, uvloop or eager, got {TEST_LOOP!r}"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"event loop: {TEST_LOOP}"


@pytest.fixture
def running_loop_kind() -> str:
    """The class name of the loop async tests run on (for the test that checks it)."""
    return TEST_LOOP


@pytest.fixture(autouse=True)
def state_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default store of every test, in a temporary folder of its own (what
    ``RH_AGENTS_STATE`` names; subprocesses inherit it): no test writes runs into the real
    home directory or the repository. ``XDG_STATE_HOME`` points there too, for tests that
    unset ``RH_AGENTS_STATE`` to see the fallback."""
    folder = tmp_path_factory.mktemp("state")
    path = folder / "state.db"
    monkeypatch.setenv("RH_AGENTS_STATE", str(path))
    monkeypatch.setenv("XDG_STATE_HOME", str(folder / "xdg"))
    return path


class Recorder:
    """A subscriber that keeps every record it receives."""

    def __init__(self) -> None:
        self.records: list[BusEvent] = []

    def __call__(self, record: BusEvent) -> None:
        self.records.append(record)

    def kinds(self) -> list[str]:
        return [r.kind for r in self.records]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def bus(recorder: Recorder) -> EventBus:
    bus = EventBus()
    bus.subscribe(recorder)
    return bus


@pytest.fixture
def state(bus: EventBus) -> ExecutionState:
    return ExecutionState(event_bus=bus)
