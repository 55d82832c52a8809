"""Shared fixtures. Every async test runs under pytest-timeout (see pyproject)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent


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
