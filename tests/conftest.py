"""Shared fixtures. Every async test runs under pytest-timeout (see pyproject)."""

from __future__ import annotations

import pytest

from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent


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
