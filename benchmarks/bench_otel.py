"""OpenTelemetry overhead: a 10,000-member group with tracing and metrics on, against the same
group without them, side by side in one process (modes alternate within each round; best of
the rounds, and the median of per-round ratios). Each time includes draining the bus, so every
span has been ended when the clock stops; spans go through a ``BatchSpanProcessor`` to an
exporter that drops them (its queue is big enough that no span is dropped unexported);
metrics go to an SDK ``MeterProvider`` with an in-memory reader.

Modes: "OpenTelemetry" is ``instrument()`` with its defaults (a span per group and per actor
call, event and group metrics, member counters per group; no member records at all);
"full per-member" is ``instrument(..., member_spans=True, member_metrics=True)`` (a span and
two histogram values per member as well); "sample_events=0.1" keeps one successful event span
in ten (ExecutionEvent workload only).

Three workloads: members that do nothing (the worst case: all that is measured is overhead),
``ExecutionEvent`` members (one actor call each: a span and a histogram value), and members
that wait 10 ms (a stand-in for I/O; real LLM calls wait far longer).

A last table times the SDK alone, with no rh_agents code: a span made and ended, and a
histogram value, with and without the attributes ours carry. That is the floor under any
exporter that keeps a span per event.

Run: ``.venv/bin/python -m benchmarks.bench_otel``
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent
from rh_agents.integrations.otel import instrument

MEMBERS = 10_000
WORKERS = 100


class NullExporter(SpanExporter):
    """Drops every span (what is measured is making them, not shipping them)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Item(BaseModel):
    i: int


async def _square(item: Item, context: str, state: ExecutionState) -> int:
    return item.i * item.i


EVENT: ExecutionEvent[Any] = ExecutionEvent(
    actor=Tool(name="square", input_model=Item, handler=_square)
)


async def _nothing(i: int) -> int:
    return i


async def _sleepy(i: int) -> int:
    await asyncio.sleep(0.01)
    return i


def _add_plain(state: ExecutionState, p: Any, i: int) -> None:
    p.add(_nothing(i))


def _add_event(state: ExecutionState, p: Any, i: int) -> None:
    p.add(EVENT(Item(i=i), "", state))


def _add_sleepy(state: ExecutionState, p: Any, i: int) -> None:
    p.add(_sleepy(i))


def _ignore(record: BusEvent) -> None:
    return None


async def _group(add: Callable[[ExecutionState, Any, int], None], mode: str) -> float:
    bus = EventBus()
    state = ExecutionState(event_bus=bus)
    providers: tuple[TracerProvider, MeterProvider] | None = None
    if mode == "no-op subscriber":
        bus.subscribe(_ignore)
    elif mode in OPTIONS:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(
            BatchSpanProcessor(NullExporter(), max_queue_size=4 * MEMBERS)
        )
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        providers = (tracer_provider, meter_provider)
        instrument(state, tracer_provider, meter_provider, **OPTIONS[mode])
    started = time.perf_counter()
    async with state.parallel(max_workers=WORKERS, name="members") as p:
        for i in range(MEMBERS):
            add(state, p, i)
        results = await p.gather()
    await bus.drain()
    elapsed = time.perf_counter() - started
    await bus.close()
    if providers is not None:
        providers[0].shutdown()
        providers[1].shutdown()
    assert all(r.ok for r in results)
    return elapsed


# The instrument() options of each OpenTelemetry mode.
OPTIONS: dict[str, dict[str, Any]] = {
    "OpenTelemetry": {},
    "full per-member": {"member_spans": True, "member_metrics": True},
    "sample_events=0.1": {"sample_events": 0.1},
}

BASE_MODES = ["no telemetry", "no-op subscriber", "OpenTelemetry", "full per-member"]

# workload label, how a member is added, modes, rounds (fewer for the slow 10 ms members).
WORKLOADS: list[tuple[str, Callable[[ExecutionState, Any, int], None], list[str], int]] = [
    ("no-op members", _add_plain, BASE_MODES, 7),
    ("ExecutionEvent members", _add_event, [*BASE_MODES, "sample_events=0.1"], 5),
    ("10 ms members", _add_sleepy, BASE_MODES, 3),
]


def main() -> None:
    print(f"{MEMBERS} members per group, max_workers={WORKERS}")
    print(
        "| workload               | mode              | rounds | best s | µs/member "
        "| ratio (best) | ratio (paired median) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, add, modes, rounds in WORKLOADS:
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(rounds):
            for mode in modes:  # alternate so that drift hits every mode alike
                times[mode].append(asyncio.run(_group(add, mode)))
        base = times[modes[0]]
        for mode in modes:
            best = min(times[mode])
            paired = statistics.median(t / b for t, b in zip(times[mode], base, strict=True))
            print(
                f"| {label:<22} | {mode:<17} | {rounds:>6} | {best:>6.3f} "
                f"| {best / MEMBERS * 1e6:>9.1f} | {best / min(base):>12.2f} | {paired:>21.2f} |",
                flush=True,
            )
    sdk_floor()


# The attributes an event span ends up with, and those of an event-duration histogram value.
_SPAN_ATTRIBUTES: dict[str, Any] = {
    "rh_agents.address": "members[1]::square",
    "rh_agents.actor.name": "square",
    "rh_agents.actor.kind": "tool",
    "rh_agents.group_id": "members",
    "rh_agents.parallel_index": 1,
    "rh_agents.attempts": 1,
    "rh_agents.source": "run",
    "rh_agents.cache_hit": False,
}
_HISTOGRAM_ATTRIBUTES: dict[str, Any] = {
    "rh_agents.actor": "square",
    "rh_agents.status": "completed",
}


def sdk_floor(calls: int = 50_000) -> None:
    """What the OpenTelemetry SDK alone costs per span and per histogram value (no rh_agents
    code at all): the floor under any exporter that keeps a span per event."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=calls))
    tracer = tracer_provider.get_tracer("bench")
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = meter_provider.get_meter("bench").create_histogram("bench.duration")

    def span(attributes: dict[str, Any] | None) -> Callable[[], None]:
        def make() -> None:
            tracer.start_span("square", attributes=attributes, start_time=1).end(end_time=2)

        return make

    def value(attributes: dict[str, Any] | None) -> Callable[[], None]:
        return lambda: histogram.record(0.001, attributes)

    print(f"\nthe SDK alone (timeit, best of 3 x {calls} calls), µs per call:")
    for label, call in (
        ("span, no attribute", span(None)),
        (f"span, {len(_SPAN_ATTRIBUTES)} attributes (an event span)", span(_SPAN_ATTRIBUTES)),
        ("histogram value, no attribute", value(None)),
        (f"histogram value, {len(_HISTOGRAM_ATTRIBUTES)} attributes", value(_HISTOGRAM_ATTRIBUTES)),
    ):
        best = min(timeit.repeat(call, number=calls, repeat=3)) / calls
        print(f"  {label:<40} {best * 1e6:6.1f}")
    tracer_provider.shutdown()
    meter_provider.shutdown()


if __name__ == "__main__":
    main()
