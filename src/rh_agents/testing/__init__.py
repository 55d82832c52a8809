"""Helpers for testing code built on rh_agents: a manual clock and a local LLM stub server."""

from rh_agents.testing.clock import ManualClock
from rh_agents.testing.stub_server import StubLLMServer, StubStats

__all__ = ["ManualClock", "StubLLMServer", "StubStats"]
