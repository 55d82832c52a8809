"""Adaptive concurrency: bounds, growth, back-off on overload, and the group following it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError, RateLimitedError, UnusedGroupWarning
from rh_agents.integrations.openai_llm import OpenAIChat, openai_llm
from rh_agents.resilience import AdaptiveLimit, RetryPolicy
from rh_agents.resilience.signals import is_overload
from rh_agents.testing import ManualClock, StubLLMServer


def test_grows_on_success_and_halves_on_overload() -> None:
    limit = AdaptiveLimit(2, 64)
    assert limit.current == 2
    for _ in range(6):
        limit.on_success()
    assert limit.current == 8
    assert limit.on_overload()
    assert limit.current == 4
    assert limit.decreases == 1


def test_one_cut_per_burst_of_signals_from_calls_already_in_flight() -> None:
    limit = AdaptiveLimit(1, 64, initial=16)
    assert limit.on_overload(started=0.0, now=1.0, level=16)
    assert limit.current == 8
    # Calls that started before the cut answer 429 too: the cut already covered them.
    assert not limit.on_overload(started=0.5, now=1.1, level=16)
    assert limit.current == 8


def test_regrows_quickly_below_the_overload_level_then_probes_gently() -> None:
    limit = AdaptiveLimit(1, 64, initial=16, patience=8)
    limit.on_overload(level=16)
    assert limit.current == 8
    for _ in range(7):
        limit.on_success()
    assert limit.current == 15  # fast: one per success, up to just below 16
    for _ in range(10):
        limit.on_success()
    assert limit.current == 15  # near the known overload level: slow probing


def test_latency_rising_is_an_overload_signal() -> None:
    limit = AdaptiveLimit(1, 64, initial=10, latency_tolerance=2.0)
    limit.on_success(0.1)
    for _ in range(20):
        limit.on_success(1.0)  # ten times slower than the best seen
    assert limit.decreases >= 1 and limit.current < 10


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=300))
def test_never_leaves_its_bounds(events: list[tuple[bool, float]]) -> None:
    limit = AdaptiveLimit(3, 12, latency_tolerance=2.0)
    now = 0.0
    for ok, latency in events:
        now += 0.01
        if ok:
            limit.on_success(latency, started=now - latency, now=now, level=limit.current)
        else:
            limit.on_overload(started=now - latency, now=now, level=limit.current)
        assert 3 <= limit.current <= 12


def test_validation_and_auto() -> None:
    with pytest.raises(ConfigurationError, match="max"):
        AdaptiveLimit(8, 4)
    with pytest.raises(ConfigurationError, match="decrease"):
        AdaptiveLimit(decrease=1.5)
    state = ExecutionState()
    group = state.parallel(max_workers="auto")
    assert isinstance(group.adaptive_limit, AdaptiveLimit)
    with pytest.raises(ConfigurationError, match="auto"):
        state.parallel(max_workers="fast")
    with pytest.warns(UnusedGroupWarning, match="never run"):
        del group  # never run
        gc.collect()


def test_overload_signals() -> None:
    assert is_overload(RateLimitedError("429"))
    assert is_overload(TimeoutError())
    assert not is_overload(ValueError("bad"))


async def test_group_follows_the_limit_and_never_exceeds_max() -> None:
    state = ExecutionState(clock=ManualClock())
    limit = AdaptiveLimit(1, 4)
    running = 0
    seen = 0

    async def work() -> None:
        nonlocal running, seen
        running += 1
        seen = max(seen, running)
        try:
            for _ in range(3):
                await _yield()
        finally:
            running -= 1

    async with state.parallel(max_workers=limit) as p:
        for _ in range(40):
            p.add(work)
        results = await p.gather()
    assert all(r.ok for r in results)
    assert limit.current == 4 and seen == 4  # it grew to max and stayed there
    assert p.statistics().concurrency_high_water == 4


async def _yield() -> None:
    await asyncio.sleep(0)  # a suspension point, so members overlap


@pytest.fixture
def busy_server() -> Iterator[StubLLMServer]:
    with StubLLMServer(latency=0.02, capacity=3, retry_after=0.01) as stub:
        yield stub


async def test_backs_off_on_429_from_a_server_at_capacity(busy_server: StubLLMServer) -> None:
    llm = openai_llm("busy", base_url=busy_server.base_url, api_key="k", timeout=5)
    retry = RetryPolicy(max_attempts=30, initial_delay=0.005, max_delay=0.05, jitter=0.005)
    event = ExecutionEvent(actor=llm, retry=retry)
    state = ExecutionState()
    limit = AdaptiveLimit(2, 12, initial=12)
    try:
        async with state.parallel(max_workers=limit) as p:
            for i in range(60):
                p.add(event({"prompt": f"q{i}"}, "", state))
            results = await p.gather()
    finally:
        assert isinstance(llm.handler, OpenAIChat)
        await llm.handler.aclose()
    assert all(r.ok for r in results)
    stats = busy_server.stats()
    assert stats.count(429) >= 1 and limit.decreases >= 1  # it saw the overload and cut
    assert p.statistics().concurrency_high_water <= 12
    assert limit.current < 12  # backed off below where it started
