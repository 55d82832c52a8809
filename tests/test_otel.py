"""OpenTelemetry spans and metrics follow the execution tree (in-memory SDK exporters)."""

from __future__ import annotations

import asyncio
import sys
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.context import current_frame
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy
from rh_agents.core.records import (
    BusEvent,
    EventReplayed,
    EventRetrying,
    MemberFinished,
    MemberStarted,
)
from rh_agents.errors import ConfigurationError, MissingDependencyError
from rh_agents.integrations.otel import (
    OpenTelemetryExporter,
    instrument,
    keeps_event,
    parent_address,
    uninstrument,
)
from rh_agents.recovery import ActorCache
from rh_agents.resilience.retry import RetryPolicy


class Doc(BaseModel):
    text: str


async def read(input: Doc, context: str, state: ExecutionState) -> int:
    if input.text == "bad":
        raise RuntimeError("bad doc")
    return len(input.text)


reader = Tool(name="reader", input_model=Doc, handler=read, cacheable=True)


async def work(input: Doc, context: str, state: ExecutionState) -> int:
    async with state.parallel(max_workers=2, name="inner") as p:
        for part in input.text.split():
            p.add(ExecutionEvent(actor=reader)(Doc(text=part), "", state))
        results = await p.gather()
    return sum(r.result for r in results if r.ok)


worker = Agent(name="worker", input_model=Doc, handler=work)


class Telemetry:
    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])

    def spans(self) -> dict[str, ReadableSpan]:
        out: dict[str, ReadableSpan] = {}
        for span in self.spans_out.get_finished_spans():
            address = span.attributes["rh_agents.address"] if span.attributes else None
            assert isinstance(address, str)
            assert address not in out
            out[address] = span
        return out

    def metric_names(self) -> set[str]:
        """Every metric that has data points."""
        data = self.metric_reader.get_metrics_data()
        assert data is not None
        return {
            metric.name
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.data.data_points
        }

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        data = self.metric_reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return {
                            tuple(sorted((p.attributes or {}).items())): p
                            for p in metric.data.data_points
                        }
        raise AssertionError(f"no metric {name}")

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        return {key: p.value for key, p in self.points(name).items()}


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


async def run_nested(telemetry: Telemetry, **options: Any) -> None:
    bus = EventBus()
    state = ExecutionState(event_bus=bus, cache=ActorCache())
    instrument(state, telemetry.tracer_provider, telemetry.meter_provider, **options)
    async with state.parallel(max_workers=2, name="outer") as p:
        p.add(ExecutionEvent(actor=worker)(Doc(text="a bb"), "", state))
        p.add(ExecutionEvent(actor=worker)(Doc(text="ccc bad"), "", state))
        await p.gather()
    await bus.close()


def nested_addresses(*, member_spans: bool) -> set[str]:
    """Every span address of ``run_nested``: groups and events, members only if asked."""
    expected = {"outer"}
    for i in (0, 1):
        member = f"outer[{i}]"
        expected |= {f"{member}::worker", f"{member}::worker::inner"}
        if member_spans:
            expected |= {member}
        for j in (0, 1):
            expected |= {f"{member}::worker::inner[{j}]::reader"}
            if member_spans:
                expected |= {f"{member}::worker::inner[{j}]"}
    return expected


def parent_of(span: ReadableSpan, spans: dict[str, ReadableSpan]) -> str | None:
    """The address of the span that ``span`` names as its parent."""
    if span.parent is None:
        return None
    for address, candidate in spans.items():
        assert candidate.context is not None
        if candidate.context.span_id == span.parent.span_id:
            return address
    raise AssertionError(f"{span.name}: parent is not one of the exported spans")


@given(
    st.lists(
        st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_#]{0,8}", fullmatch=True), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.integers(min_value=0, max_value=99),
)
def test_parent_address_walks_back_up_any_path(steps: list[tuple[str, bool]], index: int) -> None:
    # Build a path of events and groups (a group is followed by one of its members).
    path: list[str] = []
    address: str | None = None
    for name, is_group in steps:
        address = name if address is None else f"{address}::{name}"
        path.append(address)
        if is_group:
            address = f"{address}[{index}]"
            path.append(address)
    walked: list[str] = []
    node: str | None = path[-1]
    while node is not None:
        walked.append(node)
        node = parent_address(node)
    assert walked == path[::-1]


def test_parent_address() -> None:
    assert parent_address("outer") is None
    assert parent_address("outer[1]") == "outer"
    assert parent_address("outer[1]::worker") == "outer[1]"
    assert parent_address("outer[1]::worker::inner") == "outer[1]::worker"
    assert parent_address("a::g#2[0]") == "a::g#2"


@pytest.mark.parametrize("member_spans", [False, True])
async def test_span_tree_matches_nested_groups(telemetry: Telemetry, member_spans: bool) -> None:
    await run_nested(telemetry, member_spans=member_spans)
    spans = telemetry.spans()
    assert set(spans) == nested_addresses(member_spans=member_spans)
    root = spans["outer"]
    assert root.parent is None
    for address, span in spans.items():
        assert span.context is not None and root.context is not None
        assert span.context.trace_id == root.context.trace_id
        if address == "outer":
            continue
        # The parent is the nearest enclosing address that has a span.
        parent = parent_address(address)
        while parent not in spans:
            assert parent is not None, address
            parent = parent_address(parent)
        assert parent_of(span, spans) == parent, address
        # A child lies inside its parent in time.
        parent_span = spans[parent]
        assert parent_span.start_time is not None and span.start_time is not None
        assert parent_span.end_time is not None and span.end_time is not None
        assert parent_span.start_time <= span.start_time <= span.end_time <= parent_span.end_time


async def test_span_tree_shape_without_member_spans(telemetry: Telemetry) -> None:
    await run_nested(telemetry)
    spans = telemetry.spans()
    # Event spans hang from their group; a nested group from the event that opened it.
    assert parent_of(spans["outer[0]::worker"], spans) == "outer"
    assert parent_of(spans["outer[0]::worker::inner"], spans) == "outer[0]::worker"
    assert parent_of(spans["outer[1]::worker::inner[0]::reader"], spans) == (
        "outer[1]::worker::inner"
    )
    assert {s.name for s in spans.values()} == {"group outer", "group inner", "worker", "reader"}


async def test_span_tree_shape_with_member_spans(telemetry: Telemetry) -> None:
    await run_nested(telemetry, member_spans=True)
    spans = telemetry.spans()
    assert parent_of(spans["outer[0]"], spans) == "outer"
    assert parent_of(spans["outer[0]::worker"], spans) == "outer[0]"
    assert parent_of(spans["outer[0]::worker::inner"], spans) == "outer[0]::worker"
    assert parent_of(spans["outer[1]::worker::inner[0]"], spans) == "outer[1]::worker::inner"
    assert parent_of(spans["outer[1]::worker::inner[0]::reader"], spans) == (
        "outer[1]::worker::inner[0]"
    )
    assert spans["outer[1]::worker::inner[0]"].name == "member inner[0]"


@pytest.mark.parametrize("mode", ["default", "member_metrics", "member_spans"])
async def test_attributes_and_errors(telemetry: Telemetry, mode: str) -> None:
    member_spans = mode == "member_spans"
    await run_nested(telemetry, member_spans=member_spans, member_metrics=mode == "member_metrics")
    spans = telemetry.spans()
    group = spans["outer[1]::worker::inner"]
    assert group.name == "group inner"
    assert group.attributes is not None
    assert group.attributes["rh_agents.group.name"] == "inner"
    assert group.attributes["rh_agents.group_id"] == "outer"
    assert group.attributes["rh_agents.parallel_index"] == 1
    assert group.attributes["rh_agents.group.failed"] == 1
    assert group.status.status_code is StatusCode.ERROR

    failed = spans["outer[1]::worker::inner[1]::reader"]
    assert failed.attributes is not None
    assert failed.attributes["rh_agents.actor.name"] == "reader"
    assert failed.attributes["rh_agents.actor.kind"] == "tool"
    assert failed.attributes["rh_agents.attempts"] == 1
    assert failed.attributes["rh_agents.group_id"] == "outer[1]::worker::inner"
    assert failed.attributes["rh_agents.parallel_index"] == 1
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError: bad doc"
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.type"] == "RuntimeError"

    ok = spans["outer[0]::worker::inner[1]::reader"]
    assert ok.attributes is not None
    assert ok.status.status_code is StatusCode.UNSET
    assert ok.attributes["rh_agents.cache_hit"] is False
    assert ok.attributes["rh_agents.attempts"] == 1
    assert ok.attributes["rh_agents.source"] == "run"
    assert ok.events == ()  # no span events on the happy path
    assert spans["outer"].status.status_code is StatusCode.UNSET  # both workers completed
    assert spans["outer"].events == ()

    if member_spans:
        member = spans["outer[1]::worker::inner[1]"]
        assert member.attributes is not None
        assert member.attributes["rh_agents.group_id"] == "outer[1]::worker::inner"
        assert member.attributes["rh_agents.parallel_index"] == 1
        assert member.attributes["rh_agents.status"] == "failed"
        assert member.status.status_code is StatusCode.ERROR
        assert group.events == ()
    elif mode == "default":
        # No member records at all: the failure is on the event span (above) and counted in
        # the group's status and attributes.
        assert group.events == ()
    else:
        # Member records but no member span: the failed member's error is an event on its
        # group's span.
        (event,) = group.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["rh_agents.address"] == "outer[1]::worker::inner[1]"
        assert event.attributes["rh_agents.parallel_index"] == 1
        assert event.attributes["exception.message"] == "RuntimeError: bad doc"


async def test_cache_hit_is_an_attribute(telemetry: Telemetry) -> None:
    bus = EventBus()
    state = ExecutionState(event_bus=bus, cache=ActorCache())
    instrument(state, telemetry.tracer_provider, telemetry.meter_provider)
    await ExecutionEvent(actor=reader)(Doc(text="x"), "", state)
    await ExecutionEvent(actor=reader)(Doc(text="x"), "", state)
    await bus.close()
    spans = telemetry.spans()
    assert spans["reader"].attributes is not None
    assert spans["reader#2"].attributes is not None
    assert spans["reader"].attributes["rh_agents.cache_hit"] is False
    assert spans["reader#2"].attributes["rh_agents.cache_hit"] is True
    assert spans["reader#2"].attributes["rh_agents.source"] == "cache"


@pytest.mark.parametrize("member_metrics", [False, True])
async def test_metrics_count_members_and_durations(
    telemetry: Telemetry, member_metrics: bool
) -> None:
    await run_nested(telemetry, member_metrics=member_metrics)
    assert telemetry.counts("rh_agents.members") == {
        (("rh_agents.group", "outer"), ("rh_agents.status", "completed")): 2,
        (("rh_agents.group", "inner"), ("rh_agents.status", "completed")): 3,
        (("rh_agents.group", "inner"), ("rh_agents.status", "failed")): 1,
    }
    events = telemetry.points("rh_agents.events")
    assert {key: p.value for key, p in events.items()} == {
        (("rh_agents.actor", "reader"), ("rh_agents.status", "completed")): 3,
        (("rh_agents.actor", "reader"), ("rh_agents.status", "failed")): 1,
        (("rh_agents.actor", "worker"), ("rh_agents.status", "completed")): 2,
    }
    if member_metrics:
        durations = telemetry.points("rh_agents.member.duration")
        assert sum(p.count for p in durations.values()) == 6
        waits = telemetry.points("rh_agents.member.queue_wait")
        assert sum(p.count for p in waits.values()) == 6
    else:  # per-member histograms are opt-in
        names = telemetry.metric_names()
        assert "rh_agents.member.duration" not in names
        assert "rh_agents.member.queue_wait" not in names
    events_durations = telemetry.points("rh_agents.event.duration")
    assert sum(p.count for p in events_durations.values()) == 6
    groups = telemetry.points("rh_agents.group.duration")
    assert sum(p.count for p in groups.values()) == 3


async def test_uninstrument_stops_spans(telemetry: Telemetry) -> None:
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    exporter = instrument(state, telemetry.tracer_provider, telemetry.meter_provider)
    uninstrument(state, exporter)
    await ExecutionEvent(actor=reader)(Doc(text="x"), "", state)
    await bus.close()
    assert telemetry.spans_out.get_finished_spans() == ()


async def test_missing_opentelemetry_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes any import of the module raise ImportError.
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    state = ExecutionState(event_bus=EventBus())
    with pytest.raises(MissingDependencyError, match=r"rh-agents\[otel\]"):
        instrument(state)
    assert not state.event_bus.has_listeners  # nothing was left half-installed
    result = await ExecutionEvent(actor=reader)(Doc(text="abc"), "", state)
    assert result.unwrap() == 3


class SteppingClock:
    def __init__(self) -> None:
        self.t = 10.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


async def run_stepping(
    telemetry: Telemetry, *, member_spans: bool, member_metrics: bool = False
) -> list[BusEvent]:
    """Two members in a one-worker group on a stepping clock; each takes 2.5 s and publishes a
    retry 0.25 s in. Returns every record the bus carried."""
    clock = SteppingClock()
    bus = EventBus()
    state = ExecutionState(event_bus=bus, clock=clock)
    instrument(
        state,
        telemetry.tracer_provider,
        telemetry.meter_provider,
        member_spans=member_spans,
        member_metrics=member_metrics,
    )
    records: list[BusEvent] = []
    bus.subscribe(records.append)

    async def slow() -> str:
        frame = current_frame(state)
        bus.publish(
            EventRetrying(
                address=frame.address,
                timestamp=clock.t + 0.25,
                group_id=frame.group_id,
                parallel_index=frame.parallel_index,
                is_parallel=True,
                attempt=1,
                delay=0.25,
                error="RuntimeError: 503",
                error_type="RuntimeError",
            )
        )
        clock.t += 2.5
        return "done"

    async with state.parallel(max_workers=1, name="g") as p:
        p.add(slow)
        p.add(slow)
        await p.gather()
    await bus.close()
    return records


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


async def test_span_times_come_from_the_records_clock(telemetry: Telemetry) -> None:
    await run_stepping(telemetry, member_spans=True)
    spans = telemetry.spans()
    first, second, group = spans["g[0]"], spans["g[1]"], spans["g"]
    assert times(first)[1] - times(first)[0] == 2_500_000_000
    assert times(second)[0] - times(first)[0] == 2_500_000_000
    assert times(group)[1] - times(group)[0] == 5_000_000_000
    assert second.attributes is not None
    assert second.attributes["rh_agents.queue_wait"] == 2.5
    (retry,) = first.events
    assert retry.name == "retry"
    assert retry.timestamp - times(first)[0] == 250_000_000


async def test_member_retries_land_on_the_group_without_member_spans(
    telemetry: Telemetry,
) -> None:
    await run_stepping(telemetry, member_spans=False)
    spans = telemetry.spans()
    assert set(spans) == {"g"}
    group = spans["g"]
    assert times(group)[1] - times(group)[0] == 5_000_000_000
    retries = [(e.name, (e.attributes or {}).get("rh_agents.address")) for e in group.events]
    assert retries == [("retry", "g[0]"), ("retry", "g[1]")]
    assert group.events[1].timestamp - times(group)[0] == 2_750_000_000


@pytest.mark.parametrize("member_spans", [False, True])
async def test_histograms_get_every_value(telemetry: Telemetry, member_spans: bool) -> None:
    await run_stepping(telemetry, member_spans=member_spans, member_metrics=True)
    members = telemetry.points("rh_agents.members")
    assert {key: p.value for key, p in members.items()} == {
        (("rh_agents.group", "g"), ("rh_agents.status", "completed")): 2,
    }
    (duration,) = telemetry.points("rh_agents.member.duration").values()
    assert (duration.count, duration.sum, duration.min, duration.max) == (2, 5.0, 2.5, 2.5)
    (wait,) = telemetry.points("rh_agents.member.queue_wait").values()
    assert (wait.count, wait.sum, wait.min, wait.max) == (2, 2.5, 0.0, 2.5)
    (group,) = telemetry.points("rh_agents.group.duration").values()
    assert (group.count, group.sum) == (1, 5.0)


async def test_member_span_from_its_finish_record_alone(telemetry: Telemetry) -> None:
    # A member that finishes without suspending may publish no MemberStarted: its span is
    # built from MemberFinished, starting execution_time before it.
    replayed = Telemetry()
    records = await run_stepping(replayed, member_spans=True)
    exporter = OpenTelemetryExporter(
        clock_now=10.0,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        member_spans=True,
        member_metrics=True,
    )
    for record in records:
        if not isinstance(record, MemberStarted):
            exporter(record)
    spans = telemetry.spans()
    assert set(spans) == {"g", "g[0]", "g[1]"}
    for address in ("g[0]", "g[1]"):
        original = replayed.spans()[address]
        assert times(spans[address])[1] - times(spans[address])[0] == 2_500_000_000
        assert parent_of(spans[address], spans) == "g"
        assert spans[address].attributes is not None
        assert spans[address].attributes["rh_agents.status"] == "completed"
        assert original.attributes is not None
        assert (
            spans[address].attributes["rh_agents.parallel_index"]
            == (original.attributes["rh_agents.parallel_index"])
        )
    # The retries, published before a start record could be, land on the group.
    assert [e.name for e in spans["g"].events] == ["retry", "retry"]
    (duration,) = telemetry.points("rh_agents.member.duration").values()
    assert (duration.count, duration.sum) == (2, 5.0)
    replayed.tracer_provider.shutdown()
    replayed.meter_provider.shutdown()


@pytest.mark.parametrize(("member_spans", "member_metrics"), [(False, False), (True, True)])
async def test_cancelled_and_skipped_members(
    telemetry: Telemetry, member_spans: bool, member_metrics: bool
) -> None:
    never = asyncio.Event()

    async def hang(input: Doc, context: str, state: ExecutionState) -> int:
        await never.wait()
        return 0

    hanging = Tool(name="hang", input_model=Doc, handler=hang)
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    instrument(
        state,
        telemetry.tracer_provider,
        telemetry.meter_provider,
        member_spans=member_spans,
        member_metrics=member_metrics,
    )
    async with state.parallel(max_workers=2, name="q", quorum=1) as p:
        p.add(ExecutionEvent(actor=hanging)(Doc(text="x"), "", state))
        p.add(ExecutionEvent(actor=reader)(Doc(text="ok"), "", state))
        p.add(ExecutionEvent(actor=hanging)(Doc(text="y"), "", state))  # still queued
        await p.gather()
    await bus.close()
    spans = telemetry.spans()
    assert "q[1]::reader" in spans
    cancelled = spans["q[0]::hang"]  # cancelled by its group: a reason, not an error
    assert cancelled.status.status_code is StatusCode.UNSET
    assert cancelled.events == ()
    assert cancelled.attributes is not None
    assert cancelled.attributes["rh_agents.reason"] == "cancelled"
    assert "q[2]::hang" not in spans  # never started: no event
    members = telemetry.points("rh_agents.members")
    statuses = {dict(key)["rh_agents.status"]: p.value for key, p in members.items()}
    assert statuses == {"completed": 1, "cancelled": 2}
    if member_metrics:
        durations = telemetry.points("rh_agents.member.duration")
        # The queued member never ran: no duration (nor queue wait) for it.
        assert {dict(key)["rh_agents.status"]: p.count for key, p in durations.items()} == {
            "completed": 1,
            "cancelled": 1,
        }
        (waits,) = telemetry.points("rh_agents.member.queue_wait").values()
        assert waits.count == 2
    else:
        assert "rh_agents.member.duration" not in telemetry.metric_names()
    events = telemetry.points("rh_agents.events")
    assert {key: p.value for key, p in events.items()} == {
        (("rh_agents.actor", "hang"), ("rh_agents.status", "cancelled")): 1,
        (("rh_agents.actor", "reader"), ("rh_agents.status", "completed")): 1,
    }
    group = spans["q"]
    assert group.status.status_code is StatusCode.UNSET  # cancelled by quorum: no error
    if member_spans:
        assert {"q[0]", "q[1]"} <= set(spans) and "q[2]" not in spans
        member = spans["q[0]"]
        assert member.attributes is not None
        assert member.attributes["rh_agents.status"] == "cancelled"
        assert "rh_agents.reason" in member.attributes
        assert member.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("member_spans", [False, True])
async def test_events_a_fail_fast_cancels_carry_a_reason_not_an_error(
    telemetry: Telemetry, member_spans: bool
) -> None:
    started = asyncio.Event()

    async def handle(input: Doc, context: str, state: ExecutionState) -> int:
        if input.text == "bad":
            await started.wait()
            raise ValueError("one fails")
        started.set()
        await asyncio.Event().wait()
        return 0

    event = ExecutionEvent(actor=Tool(name="h", input_model=Doc, handler=handle))
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    instrument(state, telemetry.tracer_provider, member_spans=member_spans)
    with pytest.raises(ValueError, match="one fails"):
        async with state.parallel(
            max_workers=2, name="g", error_strategy=ErrorStrategy.FAIL_FAST
        ) as p:
            p.add(event(Doc(text="x"), "", state))
            p.add(event(Doc(text="bad"), "", state))
    await bus.close()
    spans = telemetry.spans()
    failed, cancelled = spans["g[1]::h"], spans["g[0]::h"]
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert cancelled.status.status_code is StatusCode.UNSET
    assert cancelled.events == ()
    assert cancelled.attributes is not None
    assert cancelled.attributes["rh_agents.reason"] == "cancelled"
    assert "rh_agents.reason" not in (failed.attributes or {})
    if member_spans:
        member = spans["g[0]"]
        assert member.status.status_code is StatusCode.UNSET
        assert member.attributes is not None and "rh_agents.reason" in member.attributes


async def test_a_call_cut_short_by_its_member_timeout_is_a_timed_out_event(
    telemetry: Telemetry,
) -> None:
    never = asyncio.Event()

    async def hang(input: Doc, context: str, state: ExecutionState) -> int:
        await never.wait()
        return 0

    hanging = ExecutionEvent(actor=Tool(name="hang", input_model=Doc, handler=hang))
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    instrument(state, telemetry.tracer_provider, telemetry.meter_provider)
    async with state.parallel(max_workers=1, name="t", member_timeout=0.01) as p:
        p.add(hanging(Doc(text="x"), "", state))
    await bus.close()
    span = telemetry.spans()["t[0]::hang"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == (
        "ParallelTimeoutError: tool 'hang' at t[0]::hang was cut short by its member's timeout"
    )
    assert [e.name for e in span.events] == ["exception"]
    assert telemetry.counts("rh_agents.events") == {
        (("rh_agents.actor", "hang"), ("rh_agents.status", "timed_out")): 1
    }


@pytest.mark.parametrize("member_spans", [False, True])
async def test_actor_retries_are_events_on_the_event_span(
    telemetry: Telemetry, member_spans: bool
) -> None:
    calls: list[str] = []

    async def flaky(input: Doc, context: str, state: ExecutionState) -> int:
        calls.append(input.text)
        if len(calls) < 3:
            raise ValueError(f"attempt {len(calls)}")
        return len(calls)

    tool = Tool(name="flaky", input_model=Doc, handler=flaky)
    policy = RetryPolicy(max_attempts=4, initial_delay=1, multiplier=2, jitter=0)
    bus = EventBus()
    state = ExecutionState(event_bus=bus, clock=SteppingClock())
    instrument(
        state, telemetry.tracer_provider, telemetry.meter_provider, member_spans=member_spans
    )
    async with state.parallel(max_workers=1, name="r") as p:
        p.add(ExecutionEvent(actor=tool, retry=policy)(Doc(text="x"), "", state))
        await p.gather()
    await bus.close()
    spans = telemetry.spans()
    event = spans["r[0]::flaky"]
    assert event.attributes is not None
    assert event.attributes["rh_agents.attempts"] == 3
    assert event.status.status_code is StatusCode.UNSET
    assert [e.name for e in event.events] == ["retry", "retry"]
    assert [(e.attributes or {}).get("rh_agents.delay") for e in event.events] == [1.0, 2.0]
    start, end = times(event)
    assert end - start == 3_000_000_000  # the two waits, on the state's clock
    assert all(start <= e.timestamp <= end for e in event.events)
    assert spans["r"].events == ()
    assert parent_of(event, spans) == ("r[0]" if member_spans else "r")


# --- what is subscribed to -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "member_kinds"),
    [
        ({}, set()),
        ({"member_metrics": True}, {MemberFinished}),
        ({"member_spans": True}, {MemberStarted, MemberFinished}),
    ],
)
async def test_member_records_are_subscribed_to_only_when_asked(
    telemetry: Telemetry,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, bool],
    member_kinds: set[type[BusEvent]],
) -> None:
    built: list[str] = []

    def spy(cls: type[BusEvent]) -> Any:
        original = cls.of_member  # type: ignore[attr-defined]

        def of_member(*args: Any) -> Any:
            built.append(cls.__name__)
            return original(*args)

        return staticmethod(of_member)

    monkeypatch.setattr(MemberStarted, "of_member", spy(MemberStarted))
    monkeypatch.setattr(MemberFinished, "of_member", spy(MemberFinished))
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    exporter = instrument(state, telemetry.tracer_provider, telemetry.meter_provider, **options)
    assert {MemberStarted, MemberFinished} & set(exporter.kinds) == member_kinds
    assert bus.wants(MemberStarted) is (MemberStarted in member_kinds)
    assert bus.wants(MemberFinished) is (MemberFinished in member_kinds)

    async def waits(i: int) -> int:
        await asyncio.sleep(0)  # suspends: a MemberStarted is due if anyone wants it
        return i

    async with state.parallel(max_workers=2, name="g") as p:
        for i in range(4):
            p.add(waits(i))
        await p.gather()
    await bus.close()
    expected = {"MemberStarted": 0, "MemberFinished": 0}
    for kind in member_kinds:
        expected[kind.__name__] = 4
    assert {name: built.count(name) for name in expected} == expected
    # The counters are right either way.
    assert telemetry.counts("rh_agents.members") == {
        (("rh_agents.group", "g"), ("rh_agents.status", "completed")): 4
    }


async def run_every_status(*telemetries: tuple[Telemetry, dict[str, Any]]) -> None:
    """Two groups whose members end in every status; one exporter per telemetry."""
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    for telemetry, options in telemetries:
        instrument(state, telemetry.tracer_provider, telemetry.meter_provider, **options)
    never = asyncio.Event()

    async def ok() -> str:
        return "ok"

    async def fail() -> str:
        raise RuntimeError("no")

    async def hang() -> str:
        await never.wait()
        return "never"

    async with state.parallel(max_workers=4, name="mix") as p:
        p.add(ok(), name="a")
        p.add(fail(), name="b")
        p.add(ok(), name="c", after="b")  # its dependency failed: skipped
        p.add(hang, name="d", timeout=0.01)
        await p.gather()
    async with state.parallel(max_workers=1, name="q", quorum=1) as p:
        p.add(ok())
        p.add(hang)  # queued, then cancelled by the quorum
        p.add(hang)
        await p.gather()
    await bus.close()


async def test_member_counters_are_exact_from_group_completed(telemetry: Telemetry) -> None:
    live = Telemetry()
    try:
        await run_every_status((telemetry, {}), (live, {"member_metrics": True}))
        expected = {
            (("rh_agents.group", "mix"), ("rh_agents.status", "completed")): 1,
            (("rh_agents.group", "mix"), ("rh_agents.status", "failed")): 1,
            (("rh_agents.group", "mix"), ("rh_agents.status", "skipped")): 1,
            (("rh_agents.group", "mix"), ("rh_agents.status", "timed_out")): 1,
            (("rh_agents.group", "q"), ("rh_agents.status", "completed")): 1,
            (("rh_agents.group", "q"), ("rh_agents.status", "cancelled")): 2,
        }
        # Per group (from GroupCompleted) and live (a record per member) agree exactly.
        assert telemetry.counts("rh_agents.members") == expected
        assert live.counts("rh_agents.members") == expected
        assert "rh_agents.member.duration" not in telemetry.metric_names()
        durations = live.points("rh_agents.member.duration")
        # Only members that ran have a duration: a, b, d in "mix" and the first of "q".
        assert sum(p.count for p in durations.values()) == 4
        (group,) = (s for s in telemetry.spans().values() if s.name == "group mix")
        assert group.status.status_code is StatusCode.ERROR
        assert group.status.description == "2 of 4 members failed"
    finally:
        live.tracer_provider.shutdown()
        live.meter_provider.shutdown()


# --- sampling --------------------------------------------------------------------------------


def hash_keeps(address: str, rate: float) -> bool:
    """The documented rule, computed independently of the module."""
    return zlib.crc32(address.encode("utf-8")) < int(rate * 2**32)


async def run_sampled(telemetry: Telemetry, rate: float) -> tuple[set[str], set[str], set[str]]:
    """An outer group of jobs (each with an inner group of readers) and of flaky tools.

    Returns (event addresses, failed event addresses, retried event addresses).
    """
    texts = ["a bb ccc", "dd e", "a bad", "ff gg", "hh", "ii jj", "k", "ll mm nn"]
    # One job that the hash drops fails after its inner group: kept, but its children were
    # already attached above it.
    dropped = [i for i in range(len(texts)) if not hash_keeps(f"outer[{i}]::job", rate)]
    boom = dropped[0] if dropped else 0
    texts[boom] += " boom"
    calls: dict[str, int] = {}

    async def job(input: Doc, context: str, state: ExecutionState) -> int:
        total = await work(input, context, state)
        if "boom" in input.text:
            raise RuntimeError("boom")
        return total

    async def flaky(input: Doc, context: str, state: ExecutionState) -> int:
        calls[input.text] = calls.get(input.text, 0) + 1
        if calls[input.text] == 1:
            raise ValueError("first attempt")
        return 1

    job_actor = Agent(name="job", input_model=Doc, handler=job)
    flaky_tool = Tool(name="flaky", input_model=Doc, handler=flaky)
    policy = RetryPolicy(max_attempts=2, initial_delay=1, jitter=0)
    bus = EventBus()
    state = ExecutionState(event_bus=bus, clock=SteppingClock())
    instrument(state, telemetry.tracer_provider, telemetry.meter_provider, sample_events=rate)
    async with state.parallel(max_workers=2, name="outer") as p:
        for text in texts:
            p.add(ExecutionEvent(actor=job_actor)(Doc(text=text), "", state))
        for i in range(4):
            p.add(ExecutionEvent(actor=flaky_tool, retry=policy)(Doc(text=f"f{i}"), "", state))
        await p.gather()
    await bus.close()

    events: set[str] = set()
    failed = {f"outer[{boom}]::job"}
    for i, text in enumerate(texts):
        events.add(f"outer[{i}]::job")
        for j, part in enumerate(text.split()):
            reader_address = f"outer[{i}]::job::inner[{j}]::reader"
            events.add(reader_address)
            if part == "bad":
                failed.add(reader_address)
    retried = {f"outer[{i}]::flaky" for i in range(len(texts), len(texts) + 4)}
    return events | retried, failed, retried


def span_tree(telemetry: Telemetry) -> dict[str, tuple[str, str | None]]:
    spans = telemetry.spans()
    return {address: (span.name, parent_of(span, spans)) for address, span in spans.items()}


async def test_sampling_keeps_hashed_failed_and_retried_events(telemetry: Telemetry) -> None:
    rate = 0.5
    events, failed, retried = await run_sampled(telemetry, rate)
    groups = {"outer"} | {f"outer[{i}]::job::inner" for i in range(8)}
    hashed = {a for a in events if hash_keeps(a, rate)}
    # The run is a real test of the rule: some events dropped, some kept, and the failures
    # and retries include events that the hash alone would drop.
    assert hashed and events - hashed
    assert failed - hashed and retried - hashed
    assert {a for a in events if keeps_event(a, rate)} == hashed

    spans = telemetry.spans()
    assert set(spans) == groups | hashed | failed | retried
    for address in failed:
        assert spans[address].status.status_code is StatusCode.ERROR
    for address in retried:
        assert [e.name for e in spans[address].events] == ["retry"]

    # A span's parent is its nearest ancestor that is a group or an event the hash keeps:
    # unsampled events are skipped (even a failed one, decided only after its children).
    def expected_parent(address: str) -> str | None:
        parent = parent_address(address)
        while parent is not None and not (parent in groups or parent in hashed):
            parent = parent_address(parent)
        return parent

    for address, span in spans.items():
        assert parent_of(span, spans) == expected_parent(address), address
    skipped_over = [a for a in spans if expected_parent(a) != parent_address(a)]
    assert any(a.endswith("::inner") for a in skipped_over)  # a group under a dropped job

    # Metrics are never sampled.
    assert sum(telemetry.counts("rh_agents.events").values()) == len(events)


async def test_sampling_is_deterministic_across_runs(telemetry: Telemetry) -> None:
    again = Telemetry()
    try:
        await run_sampled(telemetry, 0.3)
        await run_sampled(again, 0.3)
        first = span_tree(telemetry)
        assert first == span_tree(again)
        assert len(first) < 9 + 12 + 20  # something was dropped
    finally:
        again.tracer_provider.shutdown()
        again.meter_provider.shutdown()


async def test_sampling_rate_one_keeps_every_event(telemetry: Telemetry) -> None:
    events, _, _ = await run_sampled(telemetry, 1.0)
    groups = {"outer"} | {f"outer[{i}]::job::inner" for i in range(8)}
    assert set(telemetry.spans()) == events | groups


@pytest.mark.parametrize("rate", [0, 0.0, -0.5, 1.01, 2, float("nan"), float("inf"), True, "0.5"])
def test_bad_sample_rate_is_rejected(telemetry: Telemetry, rate: Any) -> None:
    state = ExecutionState(event_bus=EventBus())
    with pytest.raises(ConfigurationError, match="sample_events"):
        instrument(state, telemetry.tracer_provider, telemetry.meter_provider, sample_events=rate)
    assert not state.event_bus.has_listeners
    with pytest.raises(ConfigurationError, match="sample_events"):
        keeps_event("a", rate)


def ours(telemetry: Telemetry) -> dict[str, ReadableSpan]:
    """The spans of the run, by address (the test's own spans left out)."""
    return {
        str(span.attributes["rh_agents.address"]): span
        for span in telemetry.spans_out.get_finished_spans()
        if span.attributes and "rh_agents.address" in span.attributes
    }


async def _group_under_member_span(telemetry: Telemetry) -> None:
    bus = EventBus()
    state = ExecutionState(event_bus=bus, watchdog=None)
    instrument(
        state,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )
    tracer = telemetry.tracer_provider.get_tracer("test")

    async def member() -> int:
        with tracer.start_as_current_span("member-own"):
            result = await ExecutionEvent(actor=reader)(Doc(text="abc"), "", state)
            await asyncio.sleep(0)
        return result.result

    async with state.parallel(max_workers=1, name="g") as p:
        p.add(member)
        await p.gather()
    await bus.drain()


async def test_a_top_level_span_never_takes_a_members_span_as_parent(
    telemetry: Telemetry,
) -> None:
    # The exporter started a top-level span in whatever context it ran in: the group's span
    # became a child of its own member's span.
    await _group_under_member_span(telemetry)
    by_address = ours(telemetry)
    assert by_address["g"].parent is None
    assert by_address["g[0]::reader"].parent.span_id == by_address["g"].context.span_id


async def test_top_level_spans_hang_from_the_span_current_where_instrument_was_called(
    telemetry: Telemetry,
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        await _group_under_member_span(telemetry)
    group = ours(telemetry)["g"]
    assert group.parent is not None
    assert group.parent.span_id == request.get_span_context().span_id


def test_a_call_replayed_in_the_default_mode_is_an_instant_span(telemetry: Telemetry) -> None:
    # replay="skip" publishes EventReplayed only (no start, no completion): the call is still
    # a span (an instant, as with replay="republish") and counted as completed.
    exporter = OpenTelemetryExporter(
        clock_now=10.0,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )
    exporter(
        EventReplayed(
            address="fetch", timestamp=10.0, actor="fetch", actor_kind="tool", execution_time=3.0
        )
    )
    span = telemetry.spans()["fetch"]
    start, end = times(span)
    assert start == end
    assert span.attributes is not None and span.attributes["rh_agents.source"] == "replay"
    assert telemetry.counts("rh_agents.events") == {
        (("rh_agents.actor", "fetch"), ("rh_agents.status", "completed")): 1
    }
