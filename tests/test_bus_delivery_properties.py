"""Properties of record delivery over random interleavings of publishing, early delivery
(``deliver_pending``) and loop turns.

Whatever the interleaving, every subscriber gets every record exactly once, in the order it
was published, and a synchronous subscriber never gets a record while it still has the
previous one in hand. Each example runs in its own event loop, with no real waiting.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rh_agents.core.bus import EventBus
from rh_agents.core.records import BusEvent, EventStarted

SETTINGS = settings(
    max_examples=int(os.environ.get("RH_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# An operation: publish N records, hand queued records over now, or let the loop turn.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 5)),
        st.tuples(st.just("deliver"), st.just(0)),
        st.tuples(st.just("turn"), st.just(0)),
    ),
    max_size=30,
)


def record(i: int) -> BusEvent:
    return EventStarted(address=f"r{i}", timestamp=float(i), actor="a", actor_kind="tool")


class Plain:
    """A synchronous function-like subscriber; it raises on the records in ``fails_on`` (after
    noting them) and may ask for early delivery from inside its own handler."""

    def __init__(self, bus: EventBus, fails_on: frozenset[int], reenters: bool) -> None:
        self.bus, self.fails_on, self.reenters = bus, fails_on, reenters
        self.got: list[int] = []
        self.in_hand = False
        self.overlaps = 0

    def __call__(self, r: BusEvent) -> None:
        if self.in_hand:
            self.overlaps += 1
        self.in_hand = True
        try:
            i = int(r.address[1:])
            self.got.append(i)
            if self.reenters:
                self.bus.deliver_pending()
            if i in self.fails_on:
                raise ValueError(f"record {i}")
        finally:
            self.in_hand = False


class Batches:
    """A synchronous subscriber that takes its queue in batches (as the printer does)."""

    def __init__(self) -> None:
        self.got: list[int] = []

    def __call__(self, r: BusEvent) -> None:
        self.got.append(int(r.address[1:]))

    def handle_batch(self, queue: deque[BusEvent]) -> None:
        while queue:
            self.got.append(int(queue.popleft().address[1:]))


class TurnsAsync:
    """Synchronous until record ``turn_at``; from then on it returns an awaitable per record,
    each of which takes a few loop turns."""

    def __init__(self, turn_at: int) -> None:
        self.turn_at = turn_at
        self.got: list[int] = []

    async def _later(self, i: int) -> None:
        for _ in range(i % 3):
            await asyncio.sleep(0)
        self.got.append(i)

    def __call__(self, r: BusEvent) -> Any:
        i = int(r.address[1:])
        if i < self.turn_at:
            self.got.append(i)
            return None
        return self._later(i)


class Async:
    def __init__(self) -> None:
        self.got: list[int] = []

    async def __call__(self, r: BusEvent) -> None:
        await asyncio.sleep(0)
        self.got.append(int(r.address[1:]))


@SETTINGS
@given(
    ops=operations,
    fails_on=st.frozensets(st.integers(0, 40), max_size=5),
    reenters=st.booleans(),
    turn_at=st.integers(0, 40),
)
def test_every_subscriber_gets_every_record_once_and_in_order(
    ops: list[tuple[str, int]], fails_on: frozenset[int], reenters: bool, turn_at: int
) -> None:
    async def scenario() -> None:
        bus = EventBus()
        plain = Plain(bus, fails_on, reenters)
        batches, turns, later = Batches(), TurnsAsync(turn_at), Async()
        for subscriber in (plain, batches, turns, later):
            bus.subscribe(subscriber)
        published = 0
        for op, n in ops:
            if op == "publish":
                for _ in range(n):
                    bus.publish(record(published))
                    published += 1
            elif op == "deliver":
                bus.deliver_pending()
            else:
                await asyncio.sleep(0)
        await asyncio.wait_for(bus.drain(), timeout=5)
        expected = list(range(published))
        assert plain.got == expected
        assert plain.overlaps == 0
        assert batches.got == expected
        assert turns.got == expected
        assert later.got == expected
        failed = sorted(int(e.record.address[1:]) for e in bus.subscriber_errors)
        assert failed == [i for i in expected if i in fails_on]
        await asyncio.wait_for(bus.close(), timeout=5)

    asyncio.run(scenario())
