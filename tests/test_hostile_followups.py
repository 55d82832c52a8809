"""Mistakes in the optional parts' APIs get errors that say what to do (hostile probes)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError, InvalidRunIdError
from rh_agents.integrations.otel import instrument, uninstrument
from rh_agents.ui import Viewer

pytestmark = pytest.mark.timeout(10)


def test_instrumenting_a_state_twice_is_refused_rather_than_doubling_every_span() -> None:
    state = ExecutionState()
    provider = TracerProvider()
    exporter = instrument(state, provider)
    with pytest.raises(ConfigurationError, match="instrumented already"):
        instrument(state, provider)
    other = instrument(state, TracerProvider())  # another backend: fine
    uninstrument(state, other)
    uninstrument(state, exporter)
    again = instrument(state, provider)  # once stopped, a new one may start
    assert again is not exporter
    state.event_bus.unsubscribe(again)  # (the documented other way to stop it)
    instrument(state, provider)


async def test_the_viewer_names_what_it_does_not_watch() -> None:
    viewer = Viewer(port=0)
    state = ExecutionState()
    with pytest.raises(ConfigurationError, match="not watched by the viewer"):
        viewer.finish(state)
    with pytest.raises(ConfigurationError, match="no run named 'nightly'"):
        viewer.finish("nightly")
    with pytest.raises(InvalidRunIdError):
        viewer.watch(state, run_id="../x")
    feed = viewer.watch(state, run_id="nightly")
    viewer.finish("nightly")
    assert feed.status == "completed"
    await viewer.close()
