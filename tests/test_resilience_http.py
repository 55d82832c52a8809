"""Resilience over real HTTP: the OpenAI client against the local stub server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from rh_agents.core.actors import LLM
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ResultStatus
from rh_agents.errors import CircuitOpenError, ConfigurationError, RateLimitedError
from rh_agents.integrations.openai_llm import ChatReply, OpenAIChat, openai_llm
from rh_agents.resilience import CircuitBreaker, RateLimit, RetryPolicy
from rh_agents.testing import ManualClock, StubLLMServer


@pytest.fixture
def server() -> Iterator[StubLLMServer]:
    with StubLLMServer() as stub:
        yield stub


@pytest.fixture
async def llm(server: StubLLMServer) -> AsyncIterator[LLM]:
    actor = openai_llm("chat", model="stub", base_url=server.base_url, api_key="test", timeout=5)
    yield actor
    handler = actor.handler
    assert isinstance(handler, OpenAIChat)
    await handler.aclose()


def ask(text: str) -> dict[str, Any]:
    return {"prompt": text}


async def test_completion_through_the_openai_client(server: StubLLMServer, llm: LLM) -> None:
    state = ExecutionState()
    result = await ExecutionEvent(actor=llm)(ask("hello"), "", state)
    assert result.ok
    assert isinstance(result.result, ChatReply) and result.result.content == "echo: hello"
    assert server.stats().by_status == {200: 1}


async def test_transient_500s_are_recovered_with_the_right_attempts(
    server: StubLLMServer, llm: LLM
) -> None:
    clock = ManualClock()
    state = ExecutionState(clock=clock)
    server.fail_next(500, count=2)
    event = ExecutionEvent(actor=llm, retry=RetryPolicy(max_attempts=4, jitter=0))
    result = await event(ask("x"), "", state)
    assert result.ok and result.attempts == 3
    assert server.stats().statuses == [500, 500, 200]
    assert clock.sleeps == [0.5, 1.0]


async def test_429_becomes_rate_limited_with_the_servers_retry_after(
    server: StubLLMServer, llm: LLM
) -> None:
    clock = ManualClock()
    state = ExecutionState(clock=clock)
    server.fail_next(429, retry_after=4)
    once = await ExecutionEvent(actor=llm)(ask("x"), "", state)
    assert isinstance(once.exception, RateLimitedError) and once.exception.retry_after == 4
    server.fail_next(429, retry_after=4)
    event = ExecutionEvent(actor=llm, retry=RetryPolicy(max_attempts=2, initial_delay=0.1))
    assert (await event(ask("x"), "", state)).ok
    assert clock.sleeps == [4.0]


async def test_client_timeout_is_a_timed_out_result(server: StubLLMServer) -> None:
    server.latency = 0.5
    slow = openai_llm("slow", base_url=server.base_url, api_key="k", timeout=0.05)
    try:
        result = await ExecutionEvent(actor=slow)(ask("x"), "", ExecutionState())
    finally:
        assert isinstance(slow.handler, OpenAIChat)
        await slow.handler.aclose()
    assert result.status is ResultStatus.TIMED_OUT


async def test_outage_opens_the_breaker_then_the_group_recovers(
    server: StubLLMServer, llm: LLM
) -> None:
    clock = ManualClock()
    state = ExecutionState(clock=clock)
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30, half_open_max_calls=1)
    event = ExecutionEvent(actor=llm)
    server.set_outage(True)
    async with state.parallel(max_workers=4, circuit_breaker=breaker, name="during") as p:
        for i in range(20):
            p.add(event(ask(f"q{i}"), "", state))
        during = await p.gather()
    seen = server.stats().total
    # At most the threshold plus the calls already in flight when it opened reach the server.
    assert 3 <= seen <= 3 + 3
    assert sum(isinstance(r.exception, CircuitOpenError) for r in during) == 20 - seen
    assert state.breakers["chat"].state == "open"

    clock.advance(30)  # cool-down over, but the outage goes on: one probe only
    async with state.parallel(max_workers=4, circuit_breaker=breaker, name="probe") as p:
        for i in range(10):
            p.add(event(ask(f"p{i}"), "", state))
    assert server.stats().total == seen + 1
    assert state.breakers["chat"].state == "open"

    server.set_outage(False)
    clock.advance(30)
    async with state.parallel(max_workers=1, circuit_breaker=breaker, name="after") as p:
        for i in range(10):
            p.add(event(ask(f"a{i}"), "", state))
        after = await p.gather()
    assert all(r.ok for r in after)
    assert state.breakers["chat"].state == "closed"
    assert server.stats().count(200) == 10


async def test_rate_limit_holds_on_the_wire(server: StubLLMServer, llm: LLM) -> None:
    calls, period = 5, 0.2
    event = ExecutionEvent(actor=llm)
    # Open the client's connections first, so that arrival times reflect the limiter and
    # not TCP connection setup.
    warm_state = ExecutionState()
    warm = await warm_state.parallel_execute(
        [event(ask("warm"), "", warm_state) for _ in range(10)], max_workers=10
    )
    assert all(r.ok for r in warm)
    server.reset_stats()
    state = ExecutionState(rate_limit=RateLimit(calls, period, key="stub"))
    async with state.parallel(max_workers=10) as p:
        for i in range(20):
            p.add(event(ask(f"r{i}"), "", state))
        results = await p.gather()
    assert all(r.ok for r in results)
    stamps = server.stats().timestamps
    assert len(stamps) == 20
    # Leaky bucket: between any two requests i < j, at most a burst of `calls` plus what
    # drains in between may arrive. 50 ms of tolerance covers the time between leaving the
    # limiter and arriving at the server (new connections, thread scheduling).
    for i in range(len(stamps)):
        for j in range(i + 1, len(stamps)):
            arrived = j - i + 1
            allowed = calls + calls * (stamps[j] - stamps[i] + 0.05) / period
            assert arrived <= allowed + 1e-9, (i, j, stamps[j] - stamps[i])
    # ... and the whole run was paced, not sent at once.
    assert stamps[-1] - stamps[0] >= (20 - calls) * period / calls * 0.9


async def test_group_rate_limits_are_private_without_a_key() -> None:
    state = ExecutionState()
    limit = RateLimit(100, 1)
    a_running, counted = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def in_a() -> None:  # (its token taken: group a's bucket is made)
        a_running.set()
        await counted.wait()

    async def in_b() -> None:
        await a_running.wait()
        seen.append(len(state.rate_limiters))
        counted.set()

    async with (
        state.parallel(max_workers=2, rate_limit=limit, name="a") as a,
        state.parallel(max_workers=2, rate_limit=limit, name="b") as b,
    ):
        a.add(in_a)
        b.add(in_b)
    assert seen == [2]  # one bucket each while both ran
    assert len(state.rate_limiters) == 0  # each dropped as its group ended
    async with state.parallel(max_workers=2, rate_limit=RateLimit(100, 1, key="k")) as p:
        p.add(lambda: _noop())
    async with state.parallel(max_workers=2, rate_limit=RateLimit(100, 1, key="k")) as p:
        p.add(lambda: _noop())
    assert len(state.rate_limiters) == 1  # shared by key, kept


async def _noop() -> None:
    return None


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        openai_llm("x")
    with pytest.raises(ConfigurationError, match="calls"):
        RateLimit(0)


def test_stub_server_counts_and_capacity() -> None:
    import http.client
    import json

    with StubLLMServer(capacity=1, retry_after=2) as stub:
        conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=5)
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = json.loads(reply.read())
        assert reply.status == 200 and data["choices"][0]["message"]["content"] == "echo: hi"
        stub.fail_next(429)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        limited = conn.getresponse()
        limited.read()
        assert limited.status == 429 and limited.getheader("Retry-After") == "2"
        conn.close()
        stats = stub.stats()
        assert stats.total == 2 and stats.by_status == {200: 1, 429: 1}
        assert stats.max_concurrency == 1


def test_stub_server_outage_windows() -> None:
    import http.client
    import json

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    for outages, expected in (([(0.0, 3600.0)], 503), ([(3600.0, 7200.0)], 200)):
        with StubLLMServer(outages=outages) as stub:
            conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=5)
            conn.request("POST", "/v1/chat/completions", body)
            reply = conn.getresponse()
            reply.read()
            conn.close()
            assert reply.status == expected
            assert stub.stats().by_status == {expected: 1}


async def test_a_rate_below_one_call_per_period_works() -> None:
    # RateLimit(0.5, 1.0) was accepted, and every call then failed (a bucket smaller than one
    # call refuses them all): it is one call every two seconds.
    import asyncio

    from rh_agents.resilience.rate_limit import RateLimiterRegistry

    limiter = RateLimiterRegistry().limiter(RateLimit(0.5, 1.0), "g")
    assert (limiter.max_rate, limiter.time_period) == (1, 2.0)
    await asyncio.wait_for(limiter.acquire(), 5)  # the first call goes at once
