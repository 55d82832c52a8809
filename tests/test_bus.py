"""EventBus: per-subscriber order, publish never waits, broken subscribers stay contained."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from parallel_support import until
from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent, EventStarted, GroupCompleted, MemberFinished

if TYPE_CHECKING:
    from conftest import Recorder


def record(i: int) -> BusEvent:
    return EventStarted(address=f"a{i}", timestamp=float(i), actor="a", actor_kind="tool")


def addresses(records: list[BusEvent]) -> list[str]:
    return [r.address for r in records]


EXPECTED = [f"a{i}" for i in range(50)]


async def test_each_subscriber_gets_every_record_in_order(recorder: Recorder) -> None:
    bus = EventBus()
    bus.subscribe(recorder)
    seen_async: list[BusEvent] = []

    async def slow_then_fast(r: BusEvent) -> None:
        # Suspend a varying number of times: order must not depend on handler speed.
        for _ in range(int(r.timestamp) % 3):
            await asyncio.sleep(0)
        seen_async.append(r)

    bus.subscribe(slow_then_fast)
    for i in range(50):
        bus.publish(record(i))
    assert bus.published == 50
    await bus.drain()
    assert addresses(recorder.records) == EXPECTED
    assert addresses(seen_async) == EXPECTED
    await bus.close()


async def test_async_callable_object_subscriber() -> None:
    class Sink:
        def __init__(self) -> None:
            self.got: list[BusEvent] = []

        async def __call__(self, r: BusEvent) -> None:
            await asyncio.sleep(0)
            self.got.append(r)

    bus = EventBus()
    sink = Sink()
    bus.subscribe(sink)
    for i in range(5):
        bus.publish(record(i))
    await bus.close()
    assert addresses(sink.got) == EXPECTED[:5]


class Doc(BaseModel):
    text: str


async def noop(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text


async def _timed_run(bus: EventBus, calls: int) -> float:
    state = ExecutionState(event_bus=bus)
    event = ExecutionEvent(actor=Tool(name="noop", input_model=Doc, handler=noop))
    started = time.perf_counter()
    for _ in range(calls):
        await event(Doc(text="x"), "", state)
    return time.perf_counter() - started


async def test_publish_never_waits_for_a_slow_subscriber() -> None:
    fast_bus = EventBus()
    fast_bus.subscribe(lambda r: None)
    fast = await _timed_run(fast_bus, 200)
    await fast_bus.close()

    slow_bus = EventBus()
    handled: list[BusEvent] = []

    async def slow(r: BusEvent) -> None:
        await asyncio.sleep(0.05)
        handled.append(r)

    subscription = slow_bus.subscribe(slow)
    slow_bus.subscribe(lambda r: None)
    slow_time = await _timed_run(slow_bus, 200)
    # 400 records at 50 ms each would take 20 s if publish waited for the subscriber.
    assert subscription.pending > 300
    assert len(handled) < 100
    assert slow_time < 3 * fast + 0.5
    await slow_bus.close(drain=False)


async def test_raising_subscriber_is_reported_and_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    good: list[BusEvent] = []
    bad_seen: list[BusEvent] = []

    def flaky(r: BusEvent) -> None:
        bad_seen.append(r)
        if r.address in ("a1", "a3"):
            raise ValueError(f"cannot show {r.address}")

    bus.subscribe(flaky)
    bus.subscribe(good.append)
    with caplog.at_level(logging.ERROR, logger="rh_agents.bus"):
        for i in range(5):
            bus.publish(record(i))
        await bus.drain()
    assert addresses(good) == EXPECTED[:5]
    assert addresses(bad_seen) == EXPECTED[:5]  # kept receiving after raising
    assert [(e.record.address, e.error) for e in bus.subscriber_errors] == [
        ("a1", "ValueError: cannot show a1"),
        ("a3", "ValueError: cannot show a3"),
    ]
    assert all(isinstance(e.exception, ValueError) for e in bus.subscriber_errors)
    assert "flaky" in bus.subscriber_errors[0].subscriber
    logged = [r for r in caplog.records if r.name == "rh_agents.bus"]
    assert len(logged) == 2
    assert "cannot show a1" in logged[0].getMessage()
    await bus.close()


async def test_raising_async_subscriber_is_reported() -> None:
    bus = EventBus()

    async def broken(r: BusEvent) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.publish(record(0))
    bus.publish(record(1))
    await bus.close()
    assert [e.error for e in bus.subscriber_errors] == ["RuntimeError: boom"] * 2


async def test_an_async_subscriber_raising_cancelled_error_is_reported_and_fed_on() -> None:
    # Its own CancelledError (it raised one, or what it awaited was cancelled by its owner)
    # is a failure on that record, reported as any other; the records after it still come.
    bus = EventBus()
    got: list[str] = []

    async def gives_up_on_the_first(r: BusEvent) -> None:
        await asyncio.sleep(0)
        if r.address == "a0":
            raise asyncio.CancelledError("the request it awaited was cancelled")
        got.append(r.address)

    bus.subscribe(gives_up_on_the_first)
    for i in range(3):
        bus.publish(record(i))
    await bus.close()
    assert got == ["a1", "a2"]
    assert bus.subscriber_error_count == 1
    assert [e.record.address for e in bus.subscriber_errors] == ["a0"]
    assert "CancelledError" in bus.subscriber_errors[0].error


async def test_stream_yields_records_and_ends_on_close() -> None:
    bus = EventBus()
    stream = bus.stream()  # registered now: records published before iterating are kept
    bus.publish(record(0))
    bus.publish(record(1))

    async def consume() -> list[BusEvent]:
        return [r async for r in stream]

    consumer = asyncio.create_task(consume())
    bus.publish(record(2))
    await bus.close()
    assert addresses(await consumer) == EXPECTED[:3]


async def test_stream_started_in_a_task_misses_nothing(state: ExecutionState) -> None:
    bus = state.event_bus
    got: list[str] = []

    async def consume() -> None:
        async for r in bus.stream():
            got.append(r.kind)

    stream_task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # let the consumer register, as a real watcher would
    event = ExecutionEvent(actor=Tool(name="noop", input_model=Doc, handler=noop))
    await event(Doc(text="x"), "", state)
    await bus.close()
    await stream_task
    assert got == ["event.started", "event.completed"]


async def test_stream_after_close_ends_at_once() -> None:
    bus = EventBus()
    await bus.close()
    assert [r async for r in bus.stream()] == []


async def test_abandoned_stream_stops_collecting() -> None:
    bus = EventBus()
    stream = bus.stream()
    assert bus.has_listeners
    del stream
    assert not bus.has_listeners


async def test_drain_waits_for_a_slow_subscriber() -> None:
    bus = EventBus()
    gate = asyncio.Event()
    handled: list[BusEvent] = []

    async def gated(r: BusEvent) -> None:
        await gate.wait()
        handled.append(r)

    bus.subscribe(gated)
    for i in range(3):
        bus.publish(record(i))
    drain = asyncio.create_task(bus.drain())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not drain.done()
    assert handled == []
    gate.set()
    await drain
    assert addresses(handled) == EXPECTED[:3]
    await bus.close()


async def test_drain_does_not_hang_when_a_feeder_died() -> None:
    bus = EventBus()
    handling = asyncio.Event()

    async def slow(r: BusEvent) -> None:
        handling.set()
        await asyncio.Event().wait()

    subscription = bus.subscribe(slow)
    bus.publish(record(0))
    draining = asyncio.create_task(bus.drain())
    await handling.wait()
    assert subscription._task is not None
    subscription._task.cancel()  # its feeder task ends (cancelled from outside)
    await asyncio.wait_for(draining, timeout=5)
    await bus.close()
    assert bus.subscriber_errors == []  # a dying feeder is not a handler error


async def test_unsubscribe_stops_delivery(recorder: Recorder) -> None:
    bus = EventBus()
    other: list[BusEvent] = []
    bus.subscribe(recorder)
    subscription = bus.subscribe(other.append)
    bus.publish(record(0))
    await bus.drain()
    bus.unsubscribe(recorder)
    bus.unsubscribe(subscription)
    assert not bus.has_listeners
    bus.publish(record(1))
    await bus.close()
    assert addresses(recorder.records) == ["a0"]
    assert addresses(other) == ["a0"]


async def test_unsubscribed_busy_feeder_is_awaited_by_close() -> None:
    bus = EventBus()
    entered, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def busy(r: BusEvent) -> None:
        entered.set()
        await release.wait()
        finished.append(r.address)

    subscription = bus.subscribe(busy)
    bus.publish(record(0))
    bus.publish(record(1))
    await entered.wait()
    bus.unsubscribe(busy)
    closing = asyncio.create_task(bus.close())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not closing.done()  # close() owns the feeder still handling a0
    release.set()
    await closing
    assert finished == ["a0"]  # a1 was dropped by unsubscribe
    assert subscription.pending == 0


async def test_close_without_drain_cancels_feeders() -> None:
    bus = EventBus()
    never = asyncio.Event()

    async def stuck(r: BusEvent) -> None:
        await never.wait()

    bus.subscribe(stuck)
    bus.publish(record(0))
    await asyncio.sleep(0)
    await asyncio.wait_for(bus.close(drain=False), timeout=5)


async def test_publish_after_close_is_ignored(recorder: Recorder) -> None:
    bus = EventBus()
    sub = bus.subscribe(recorder)
    bus.publish(record(0))
    await bus.close()
    bus.publish(record(1))
    assert sub.pending == 0
    assert addresses(recorder.records) == ["a0"]


@pytest.mark.parametrize("handler", [None, 42, "printer"])
def test_subscribe_non_callable_is_a_type_error(handler: object) -> None:
    with pytest.raises(TypeError, match="subscriber must be callable"):
        EventBus().subscribe(handler)  # type: ignore[arg-type]


class Deferred:
    """A deferred source that builds record ``i`` when asked, and counts the requests."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def deferred_record(self, key: object) -> BusEvent | None:
        assert isinstance(key, int)
        self.asked.append(key)
        return None if key < 0 else record(key)


async def test_deferred_record_is_published_at_the_next_loop_turn(recorder: Recorder) -> None:
    bus = EventBus()
    bus.subscribe(recorder)
    source = Deferred()
    bus.defer(1, source)
    assert source.asked == []  # nothing built yet
    await asyncio.sleep(0)  # one turn of the loop
    assert source.asked == [1]
    await bus.drain()
    assert addresses(recorder.records) == ["a1"]


async def test_withdrawn_record_is_never_built_nor_published(recorder: Recorder) -> None:
    bus = EventBus()
    bus.subscribe(recorder)
    source = Deferred()
    bus.defer(1, source)
    assert bus.withdraw(1) is True
    assert bus.withdraw(1) is False  # already gone
    await asyncio.sleep(0)
    await bus.drain()
    assert source.asked == [] and recorder.records == []


async def test_deferred_records_come_before_a_later_publish(recorder: Recorder) -> None:
    bus = EventBus()
    bus.subscribe(recorder)
    source = Deferred()
    bus.defer(1, source)
    bus.defer(2, source)
    bus.defer(-1, source)  # its source decides there is nothing to publish after all
    bus.publish(record(3))  # no loop turn in between: the deferred ones go first
    assert bus.withdraw(2) is False  # published already
    await bus.drain()
    assert addresses(recorder.records) == ["a1", "a2", "a3"]
    assert source.asked == [1, 2, -1]


async def test_drain_and_close_publish_what_is_deferred(recorder: Recorder) -> None:
    bus = EventBus()
    bus.subscribe(recorder)
    source = Deferred()
    bus.defer(1, source)
    await bus.drain()
    assert addresses(recorder.records) == ["a1"]
    bus.defer(2, source)
    await bus.close()
    assert addresses(recorder.records) == ["a1", "a2"]


async def test_has_listeners_follows_subscribers_and_streams() -> None:
    bus = EventBus()
    assert not bus.has_listeners

    def handler(record: BusEvent) -> None:
        pass

    bus.subscribe(handler)
    assert bus.has_listeners
    stream = bus.stream()
    bus.unsubscribe(handler)
    assert bus.has_listeners  # the stream still listens
    del stream
    assert not bus.has_listeners


class TurnsAsync:
    """A plain function subscriber that handles a0 at once and returns an awaitable for every
    later record; the one for a1 is not done until ``gate`` opens."""

    def __init__(self) -> None:
        self.handled: list[str] = []
        self.gate = asyncio.Event()

    async def _slow(self, r: BusEvent) -> None:
        if r.address == "a1":
            await self.gate.wait()  # anything handled meanwhile would be out of order
        self.handled.append(r.address)

    def handler(self, r: BusEvent) -> Any:
        # A plain function, so the bus feeds it from a callback, until it returns an
        # awaitable; then a task takes over and awaits each one before the next record.
        if r.address == "a0":
            self.handled.append("a0")
            return None
        return self._slow(r)


async def test_sync_subscriber_returning_awaitables_is_awaited_in_order() -> None:
    bus = EventBus()
    subscriber = TurnsAsync()
    handled, gate = subscriber.handled, subscriber.gate
    bus.subscribe(subscriber.handler)
    for i in range(4):
        bus.publish(record(i))
    drain = asyncio.create_task(bus.drain())
    for _ in range(5):
        await asyncio.sleep(0)
    assert handled == ["a0"] and not drain.done()
    gate.set()
    await asyncio.wait_for(drain, timeout=5)
    assert handled == ["a0", "a1", "a2", "a3"]
    bus.publish(record(4))
    await bus.close()
    assert handled[-1] == "a4"


@pytest.mark.parametrize("early", [False, True], ids=["at the loop's turn", "deliver_pending"])
async def test_sync_subscriber_errors_are_contained_and_later_records_delivered(
    early: bool,
) -> None:
    bus = EventBus()
    seen: list[str] = []

    def flaky(r: BusEvent) -> None:
        if r.address == "a1":
            raise ValueError("bad record")
        seen.append(r.address)

    bus.subscribe(flaky)
    for i in range(3):
        bus.publish(record(i))
    if early:
        bus.deliver_pending()  # reported, never raised to the caller
    else:
        await asyncio.wait_for(bus.drain(), timeout=5)
    assert seen == ["a0", "a2"]
    assert [e.error for e in bus.subscriber_errors] == ["ValueError: bad record"]
    await bus.close()


async def test_close_without_drain_drops_what_a_sync_subscriber_has_not_seen(
    recorder: Recorder,
) -> None:
    bus = EventBus()
    bus.subscribe(recorder)
    bus.publish(record(0))
    await bus.close(drain=False)  # the loop never turned: record 0 was not delivered
    await asyncio.sleep(0)
    assert recorder.records == []
    bus.publish(record(1))  # after close: ignored
    await asyncio.sleep(0)
    assert recorder.records == []


async def test_a_subscriber_with_kinds_gets_only_those_records() -> None:
    from rh_agents.core.records import EventCompleted, EventFailed

    bus = EventBus()
    failures: list[BusEvent] = []
    everything: list[BusEvent] = []
    bus.subscribe(failures.append, kinds=[EventFailed])
    bus.subscribe(everything.append)
    failed = EventFailed(
        address="f", timestamp=1.0, actor="a", actor_kind="tool", error="x",
        error_type="ValueError", execution_time=0.1,
    )  # fmt: skip
    done = EventCompleted(
        address="d", timestamp=2.0, actor="a", actor_kind="tool", execution_time=0.1
    )
    bus.publish(record(0))
    bus.publish(failed)
    bus.publish(done)
    await bus.drain()
    assert failures == [failed]
    assert everything == [record(0), failed, done]


def test_wants_says_whether_anyone_would_receive_a_kind() -> None:
    from rh_agents.core.records import GroupCompleted, MemberFinished

    bus = EventBus()
    assert not bus.wants(MemberFinished)

    def handler(record: BusEvent) -> None:
        pass

    bus.subscribe(handler, kinds=GroupCompleted)  # one class alone is fine too
    assert bus.wants(GroupCompleted) and not bus.wants(MemberFinished)
    bus.subscribe(handler, kinds=[BusEvent])  # a base class takes every subclass
    assert bus.wants(MemberFinished)
    bus.unsubscribe(handler)
    assert not bus.wants(MemberFinished)
    stream = bus.stream()  # a stream takes everything
    assert bus.wants(MemberFinished)
    del stream
    assert not bus.wants(MemberFinished)


@pytest.mark.parametrize("bad", [[int], [None], 5, [b"event.failed"]])
def test_kinds_must_be_record_classes_or_kinds(bad: object) -> None:
    with pytest.raises(TypeError, match="kinds= takes record classes"):
        EventBus().subscribe(print, kinds=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["nope", ["event.failed", "group.complete"]])
def test_an_unknown_kind_string_is_named(bad: object) -> None:
    with pytest.raises(TypeError, match=r"names no record kind '(nope|group\.complete)'.*"):
        EventBus().subscribe(print, kinds=bad)  # type: ignore[arg-type]


def test_kinds_by_their_kind_strings() -> None:
    # A string is one kind (it was taken for its letters: "got 'g'").
    from rh_agents.core.records import EventFailed, GroupCompleted, MemberFinished

    bus = EventBus()
    bus.subscribe(print, kinds="group.completed")
    assert bus.wants(GroupCompleted) and not bus.wants(EventFailed)
    bus.subscribe(print, kinds=["event.failed", MemberFinished])
    assert bus.wants(EventFailed) and bus.wants(MemberFinished)


async def test_a_group_builds_no_member_records_nobody_asked_for() -> None:
    from rh_agents.core.records import GroupCompleted, MemberFinished, MemberStarted

    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    groups: list[BusEvent] = []
    bus.subscribe(groups.append, kinds=[GroupCompleted])

    async def member(i: int) -> int:
        await asyncio.sleep(0)
        return i

    built: list[str] = []
    original = MemberFinished.of_member

    def spy(*args: Any) -> MemberFinished:
        built.append("finished")
        return original(*args)

    MemberFinished.of_member = spy  # type: ignore[method-assign]
    try:
        async with state.parallel(max_workers=2) as p:
            for i in range(5):
                p.add(member(i))
    finally:
        MemberFinished.of_member = original  # type: ignore[method-assign]
    await bus.drain()
    assert built == [] and not bus.wants(MemberStarted)
    assert [type(r) for r in groups] == [GroupCompleted]
    assert groups[0].total == 5  # type: ignore[attr-defined]


async def test_a_subscriber_added_mid_group_gets_the_later_member_records() -> None:
    from rh_agents.core.records import MemberFinished

    bus = EventBus()
    state = ExecutionState(event_bus=bus)  # nobody listens when the group opens
    late: list[BusEvent] = []
    gate = asyncio.Event()

    async def first() -> int:
        bus.subscribe(late.append, kinds=[MemberFinished])
        gate.set()
        return 0

    async def second() -> int:
        await gate.wait()
        return 1

    async with state.parallel(max_workers=1) as p:
        p.add(first())
        p.add(second())
    await bus.drain()
    # The subscriber joined while the first member ran: both finishes reach it.
    assert [r.index for r in late if isinstance(r, MemberFinished)] == [0, 1]


class BatchTaker:
    """A subscriber that takes its records in batches; it fails on ``fail_on`` addresses."""

    def __init__(self, fail_on: tuple[str, ...] = (), lazy: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.single: list[str] = []
        self.fail_on = fail_on
        self.lazy = lazy  # handles nothing in batches: the bus falls back to single calls

    def __call__(self, record: BusEvent) -> None:
        self.single.append(record.address)

    def handle_batch(self, queue: Any) -> None:
        if self.lazy:
            return
        batch: list[str] = []
        self.batches.append(batch)
        while queue:
            record = queue.popleft()
            if record.address in self.fail_on:
                raise ValueError(f"cannot take {record.address}")
            batch.append(record.address)


async def test_a_batch_subscriber_gets_every_record_in_order_in_few_calls() -> None:
    bus = EventBus()
    taker = BatchTaker()
    bus.subscribe(taker)
    for i in range(50):
        bus.publish(record(i))
    await bus.drain()
    assert [a for batch in taker.batches for a in batch] == EXPECTED
    assert len(taker.batches) == 1 and taker.single == []


async def test_a_failing_batch_names_the_record_and_the_rest_still_arrives() -> None:
    bus = EventBus()
    taker = BatchTaker(fail_on=("a3", "a7"))
    bus.subscribe(taker)
    for i in range(10):
        bus.publish(record(i))
    await bus.drain()
    handled = [a for batch in taker.batches for a in batch]
    assert handled == [f"a{i}" for i in range(10) if i not in (3, 7)]
    assert [e.record.address for e in bus.subscriber_errors] == ["a3", "a7"]
    assert [e.error for e in bus.subscriber_errors] == [
        "ValueError: cannot take a3",
        "ValueError: cannot take a7",
    ]


async def test_a_batch_method_that_takes_nothing_falls_back_to_single_calls() -> None:
    bus = EventBus()
    taker = BatchTaker(lazy=True)
    bus.subscribe(taker)
    for i in range(3):
        bus.publish(record(i))
    await asyncio.wait_for(bus.drain(), timeout=5)
    assert taker.single == ["a0", "a1", "a2"]


async def test_a_batch_method_failing_before_popping_reports_each_record_once() -> None:
    bus = EventBus()

    class Broken:
        def __call__(self, record: BusEvent) -> None:
            raise AssertionError("never called: the batch method is")

        def handle_batch(self, queue: Any) -> None:
            raise RuntimeError("down")

    bus.subscribe(Broken())
    for i in range(3):
        bus.publish(record(i))
    await asyncio.wait_for(bus.drain(), timeout=5)
    assert [e.record.address for e in bus.subscriber_errors] == ["a0", "a1", "a2"]


async def test_a_subscriber_may_publish_and_unsubscribe_from_inside_its_handler() -> None:
    bus = EventBus()
    seen: list[str] = []
    other: list[str] = []

    def echo(r: BusEvent) -> None:
        seen.append(r.address)
        if r.address == "a0":
            bus.publish(record(99))  # re-entrant publish: queued behind what is already there
        if r.address == "a2":
            bus.unsubscribe(echo)  # stops right here: a3 never reaches it

    bus.subscribe(echo)
    bus.subscribe(lambda r: other.append(r.address))
    for i in range(4):
        bus.publish(record(i))
    await asyncio.wait_for(bus.drain(), timeout=5)
    assert seen == ["a0", "a1", "a2"]
    assert other == ["a0", "a1", "a2", "a3", "a99"]
    await bus.close()


async def test_a_batch_subscriber_may_publish_from_inside_its_batch() -> None:
    bus = EventBus()

    class Chatty(BatchTaker):
        def handle_batch(self, queue: Any) -> None:
            batch: list[str] = []
            self.batches.append(batch)
            while queue:
                r = queue.popleft()
                batch.append(r.address)
                if r.address == "a1":
                    bus.publish(record(50))  # lands in this very queue, handled in order

    taker = Chatty()
    bus.subscribe(taker)
    for i in range(3):
        bus.publish(record(i))
    await asyncio.wait_for(bus.drain(), timeout=5)
    assert [a for batch in taker.batches for a in batch] == ["a0", "a1", "a2", "a50"]
    await bus.close()


# --- early delivery (deliver_pending) -------------------------------------------------------


async def test_deliver_pending_feeds_sync_subscribers_at_once_and_in_order() -> None:
    bus = EventBus()
    seen: list[str] = []
    taker = BatchTaker()
    later: list[str] = []

    async def slow(r: BusEvent) -> None:
        await asyncio.sleep(0)  # (an eager task factory runs its feeder up to here at once)
        later.append(r.address)

    bus.subscribe(lambda r: seen.append(r.address))
    bus.subscribe(taker)
    bus.subscribe(slow)
    for i in range(3):
        bus.publish(record(i))
    bus.deliver_pending()  # no loop turn yet: only the synchronous ones can have them
    assert seen == ["a0", "a1", "a2"]
    assert taker.batches == [["a0", "a1", "a2"]]
    assert later == []
    bus.publish(record(3))  # their scheduled callbacks are still due, and deliver the rest
    await asyncio.wait_for(bus.drain(), timeout=5)
    assert seen == ["a0", "a1", "a2", "a3"]
    assert [a for batch in taker.batches for a in batch] == ["a0", "a1", "a2", "a3"]
    assert later == ["a0", "a1", "a2", "a3"]
    await bus.close()


async def test_a_subscriber_turning_async_during_early_delivery_keeps_its_order() -> None:
    bus = EventBus()
    subscriber = TurnsAsync()
    handled, gate = subscriber.handled, subscriber.gate
    bus.subscribe(subscriber.handler)
    for i in range(4):
        bus.publish(record(i))
    bus.deliver_pending()  # a1 turns it async: from then on a task feeds it, not its callback
    bus.publish(record(4))
    for _ in range(5):
        await asyncio.sleep(0)
    assert handled == ["a0"]
    gate.set()
    await asyncio.wait_for(bus.drain(), timeout=5)
    assert handled == ["a0", "a1", "a2", "a3", "a4"]
    await bus.close()


async def test_deliver_pending_from_inside_a_handler_keeps_records_one_at_a_time() -> None:
    bus = EventBus()
    handled: list[str] = []
    inside = False

    def handler(r: BusEvent) -> None:
        nonlocal inside
        assert not inside, f"{r.address} handed over while an earlier record was in hand"
        inside = True
        try:
            handled.append(r.address)
            bus.deliver_pending()  # the records after this one wait for it to return
        finally:
            inside = False

    bus.subscribe(handler)
    for i in range(3):
        bus.publish(record(i))
    bus.deliver_pending()
    assert handled == ["a0", "a1", "a2"]
    assert bus.subscriber_errors == []
    await asyncio.wait_for(bus.close(), timeout=5)


async def test_a_busy_group_hands_records_over_while_it_runs(state: ExecutionState) -> None:
    # 3,000 members that never wait, on 100 workers: the loop runs every worker's chunk in one
    # turn, so without early delivery the subscriber's queue would hold thousands of records.
    # (Records wait in the group's batch or in the subscriber's queue: count what the
    # subscriber has not been handed yet, of the members that finished so far.)
    bus = state.event_bus
    handled = ran = most_pending = 0

    def handler(r: BusEvent) -> None:
        nonlocal handled
        if isinstance(r, MemberFinished):
            handled += 1

    bus.subscribe(handler)

    async def member() -> None:
        nonlocal ran, most_pending
        most_pending = max(most_pending, ran - handled)
        ran += 1

    async with state.parallel(max_workers=100) as p:
        for _ in range(3_000):
            p.add(member())
    assert len(await p.gather()) == 3_000
    assert 0 < most_pending <= 150  # 128 members (one record each) and a few more


async def test_members_finishing_in_one_loop_turn_hand_records_over_as_they_go(
    state: ExecutionState,
) -> None:
    # 1,000 members on 1,000 workers each wait once, so all of them resume and finish in the
    # same loop turn: their finish records reach the subscriber every 128 members, not all
    # after the last one.
    finished = 0
    seen_at: list[int] = []  # members finished when the subscriber got each finish record

    def handler(r: BusEvent) -> None:
        if isinstance(r, MemberFinished):
            seen_at.append(finished)

    state.event_bus.subscribe(handler)

    async def member() -> None:
        nonlocal finished
        await asyncio.sleep(0)
        finished += 1

    async with state.parallel(max_workers=1_000) as p:
        for _ in range(1_000):
            p.add(member())
    assert len(await p.gather()) == 1_000
    await asyncio.wait_for(state.event_bus.drain(), timeout=5)
    assert len(seen_at) == 1_000
    # The k-th finish record was handled before 128 more members had finished.
    assert max(at - k for k, at in enumerate(seen_at)) <= 128


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_unsubscribed_handler_is_not_kept_by_the_bus(kind: str) -> None:
    # unsubscribe() kept every removed subscription, and its handler with whatever it held,
    # until the bus closed: a service subscribing a collector per request grew for ever.
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    refs: list[weakref.ref[Any]] = []
    for _ in range(20):
        seen: list[str] = []
        if kind == "async":

            async def collect(record: BusEvent, seen: list[str] = seen) -> None:
                seen.append(type(record).__name__)

        else:

            def collect(record: BusEvent, seen: list[str] = seen) -> None:  # type: ignore[misc]
                seen.append(type(record).__name__)

        subscription = bus.subscribe(collect)
        async with state.parallel(name="request") as p:
            p.add(asyncio.sleep(0))
        await bus.drain()
        bus.unsubscribe(subscription)
        assert "GroupCompleted" in seen
        refs.append(weakref.ref(collect))
        del collect, subscription
    await until(lambda: not bus._retired)  # (a feeder task ending lets go of its subscription)
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
    await state.close()


def test_an_async_subscriber_goes_on_after_a_loop_closed_under_its_feeder() -> None:
    # A loop closed without cancelling its tasks (new_event_loop, run_until_complete,
    # close: not asyncio.run) leaves the subscriber's feeder pending there for good; the next
    # loop's records must still reach the subscriber (they piled up, and drain() hung).
    bus = EventBus()
    got: list[str] = []

    async def subscriber(record: BusEvent) -> None:
        got.append(record.kind)

    bus.subscribe(subscriber)
    state = ExecutionState(event_bus=bus, watchdog=None)

    async def run() -> None:
        async with state.parallel(name="g") as p:
            p.add(asyncio.sleep(0))
        await asyncio.wait_for(bus.drain(), timeout=5)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    first = len(got)
    assert first > 0
    asyncio.run(run())
    assert got[first:] == got[:first]  # the same records again


async def test_a_stream_nobody_reads_keeps_every_record_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import rh_agents.core.bus as bus_module

    monkeypatch.setattr(bus_module, "_STREAM_BACKLOG", 5)
    bus = EventBus()
    stream = bus.stream()
    with caplog.at_level(logging.WARNING, logger="rh_agents.bus"):
        for i in range(12):
            bus.publish(record(i))
    warned = [r.getMessage() for r in caplog.records if "bus.stream()" in r.getMessage()]
    assert len(warned) == 1 and "holds 5 records" in warned[0]
    await bus.close()
    assert addresses([r async for r in stream]) == [f"a{i}" for i in range(12)]  # none lost


async def test_publish_can_be_awaited_as_the_spec_writes_it(recorder: Recorder) -> None:
    # The spec's bus had `async def publish(...)`: `await bus.publish(r)` works here too, and
    # waits for nothing (publish never waits for a subscriber).
    bus = EventBus()
    bus.subscribe(recorder)
    await bus.publish(record(0))
    bus.publish(record(1))  # (or not awaited: the same)
    await bus.close()
    assert addresses(recorder.records) == ["a0", "a1"]


async def test_subscribers_lists_the_handlers_in_order_as_a_copy() -> None:
    bus = EventBus()

    def first(record: BusEvent) -> None: ...

    async def second(record: BusEvent) -> None: ...

    assert bus.subscribers == []
    bus.subscribe(first)
    bus.subscribe(second, kinds=[GroupCompleted])
    listed = bus.subscribers
    assert listed == [first, second]
    listed.clear()  # a copy: nobody is unsubscribed by it
    assert bus.subscribers == [first, second]
    bus.unsubscribe(first)
    assert bus.subscribers == [second]
    await bus.close()


async def test_a_subscriber_failing_on_an_object_that_is_no_record_is_reported() -> None:
    # bus.publish(anything) is allowed; reporting a subscriber's failure on it read the
    # record's kind and address, and the report itself failed inside the loop's callback.
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    bus = EventBus()

    def raiser(record: Any) -> None:
        raise RuntimeError("no")

    bus.subscribe(raiser)
    await bus.publish({"custom": 1})  # type: ignore[arg-type]
    await bus.drain()
    assert loop_errors == []
    assert [e.error for e in bus.subscriber_errors] == ["RuntimeError: no"]
    assert bus.subscriber_errors[0].record == {"custom": 1}


class _OwnStop(BaseException):
    """What a test framework raises for a failed check (pytest's Failed is one)."""


@pytest.mark.parametrize("kind", ["sync", "batch", "async"])
@pytest.mark.parametrize("error", [asyncio.CancelledError, _OwnStop, GeneratorExit])
async def test_a_subscribers_own_base_exception_is_its_failure_not_the_runs(
    kind: str, error: type[BaseException]
) -> None:
    # A synchronous subscriber's CancelledError, raised as a busy group's worker handed it
    # records (every 128 members), cancelled the group; another BaseException ended the
    # worker (or an async subscriber's feeder) with an error nobody retrieved, unreported.
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    bus = EventBus()
    seen: list[BusEvent] = []

    def handle(record: BusEvent) -> None:
        seen.append(record)
        if len(seen) == 200:
            raise error()

    if kind == "sync":
        bus.subscribe(handle)
    elif kind == "batch":

        class Batched:
            def __call__(self, record: BusEvent) -> None:
                handle(record)

            def handle_batch(self, queue: Any) -> None:
                while queue:
                    handle(queue.popleft())

        bus.subscribe(Batched())
    else:

        async def handle_async(record: BusEvent) -> None:
            handle(record)

        bus.subscribe(handle_async)

    async def quick(i: int) -> int:
        return i

    state = ExecutionState(event_bus=bus)
    async with state.parallel(name="g", max_workers=2) as p:
        for i in range(600):
            p.add(lambda i=i: quick(i))
    results = await p.gather()
    await bus.drain()
    assert all(r.ok for r in results)
    assert [type(e.exception) for e in bus.subscriber_errors] == [error]
    assert len(seen) > 200  # it kept receiving records
    assert loop_errors == [] and state.internal_errors == []
