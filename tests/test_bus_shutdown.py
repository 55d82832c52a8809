"""Bounded shutdown: leaving a run waits for the subscribers at most ``shutdown_timeout``.

A subscriber still busy then is reported (``bus.subscriber_errors`` and a
``SubscriberShutdownWarning``) and its feeder is cancelled; checkpoints are not affected.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from recovery_support import Squarer, run_group
from rh_agents.core.bus import DEFAULT_SHUTDOWN_TIMEOUT, EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent, EventCompleted
from rh_agents.errors import ConfigurationError, RHAgentsError, SubscriberShutdownWarning
from rh_agents.recovery import Recovery, RunStatus, SQLiteBackend


class Stuck:
    """An async subscriber that never returns from its first record (until cancelled)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen: list[BusEvent] = []

    async def __call__(self, record: BusEvent) -> None:
        self.seen.append(record)
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def _record(i: int) -> BusEvent:
    return BusEvent(kind="test", address=f"a{i}", timestamp=float(i))


async def test_a_subscriber_that_never_returns_is_reported_and_cancelled() -> None:
    bus = EventBus(shutdown_timeout=0.05)
    stuck, handled = Stuck(), []
    bus.subscribe(stuck)
    bus.subscribe(handled.append)
    for i in range(3):
        bus.publish(_record(i))
    await stuck.entered.wait()
    started = time.monotonic()
    with pytest.warns(SubscriberShutdownWarning, match=r"Stuck.*a0.*2 record\(s\)"):
        await bus.close()
    assert time.monotonic() - started < 1.0
    assert stuck.cancelled.is_set()
    assert [r.address for r in handled] == ["a0", "a1", "a2"]  # the others got everything
    [error] = bus.subscriber_errors
    assert "Stuck" in error.subscriber and error.record.address == "a0"
    assert isinstance(error.exception, TimeoutError)
    assert "shutdown_timeout" in error.error


async def test_leaving_a_run_is_bounded_and_checkpoints_are_unaffected(tmp_path: Path) -> None:
    bus = EventBus(shutdown_timeout=0.05)
    stuck = Stuck()
    bus.subscribe(stuck, kinds=[EventCompleted])
    squarer = Squarer()
    with SQLiteBackend(tmp_path / "state.db") as backend:
        state = ExecutionState(run_id="r", event_bus=bus, recovery=Recovery(backend))
        with pytest.warns(SubscriberShutdownWarning):
            async with state:
                await run_group(state, squarer, 5)
        assert stuck.cancelled.is_set()
        assert len(backend.load("r")) == 5
        assert backend.get_run("r").status is RunStatus.COMPLETED
    [error] = bus.subscriber_errors
    assert error.record.kind == "event.completed"


async def test_the_time_limit_is_shared_by_all_subscribers() -> None:
    bus = EventBus(shutdown_timeout=0.1)
    stuck = [Stuck() for _ in range(4)]
    for subscriber in stuck:
        bus.subscribe(subscriber)
    bus.publish(_record(0))
    await asyncio.gather(*(s.entered.wait() for s in stuck))
    started = time.monotonic()
    with pytest.warns(SubscriberShutdownWarning):
        await bus.close()
    assert time.monotonic() - started < 0.35  # one limit for all, not 0.1 s each
    assert len(bus.subscriber_errors) == 4


async def test_a_slow_subscriber_that_catches_up_in_time_is_not_reported() -> None:
    bus = EventBus(shutdown_timeout=5.0)
    handled: list[str] = []

    async def slow(record: BusEvent) -> None:
        await asyncio.sleep(0)
        handled.append(record.address)

    bus.subscribe(slow)
    for i in range(20):
        bus.publish(_record(i))
    await bus.close()
    assert handled == [f"a{i}" for i in range(20)]
    assert bus.subscriber_errors == []


async def test_a_subscriber_that_swallows_the_cancellation_does_not_hold_the_close() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def stubborn(record: BusEvent) -> None:
        entered.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # refuses to stop

    bus = EventBus(shutdown_timeout=0.02)
    bus.subscribe(stubborn)
    bus.publish(_record(0))
    await entered.wait()
    with pytest.warns(SubscriberShutdownWarning):
        await asyncio.wait_for(bus.close(), timeout=5)
    release.set()  # let it end before the test's loop closes
    await asyncio.sleep(0)


async def test_close_takes_its_own_timeout_and_none_waits_for_ever() -> None:
    bus = EventBus(shutdown_timeout=None)
    stuck = Stuck()
    bus.subscribe(stuck)
    bus.publish(_record(0))
    await stuck.entered.wait()
    closing = asyncio.create_task(bus.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # no limit: still waiting
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    with pytest.warns(SubscriberShutdownWarning):
        await bus.close(timeout=0)
    assert stuck.cancelled.is_set()


def test_the_option_is_checked_and_the_warning_is_the_librarys() -> None:
    assert EventBus().shutdown_timeout == DEFAULT_SHUTDOWN_TIMEOUT
    with pytest.raises(ConfigurationError, match="shutdown_timeout"):
        EventBus(shutdown_timeout=-1)
    assert issubclass(SubscriberShutdownWarning, RuntimeWarning)
    assert issubclass(SubscriberShutdownWarning, RHAgentsError)
