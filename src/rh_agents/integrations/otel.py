"""OpenTelemetry traces and metrics that follow the execution tree (extra ``otel``).

Opt-in, one call; nothing runs on the execution hot path. The integration is a bus subscriber
that turns records into spans after the fact, with explicit start and end times taken from
the records' own timestamps, so concurrent members never share or race over a "current span"::

    from rh_agents.integrations.otel import instrument

    state = ExecutionState(event_bus=bus)
    telemetry = instrument(state)            # global providers, or pass your own
    ...                                      # run as usual
    await bus.drain()                        # spans are ended as records arrive

Span tree (parents derived from addresses, never from the task that published)::

    group  Orchestrator::docs
      member  Orchestrator::docs[3]
        event  Orchestrator::docs[3]::Summarizer
          event  Orchestrator::docs[3]::Summarizer::llm

Every span carries ``rh_agents.address``; group and member spans carry ``rh_agents.group_id``
and ``rh_agents.parallel_index``; event spans carry the actor's name and kind, the number of
attempts and ``rh_agents.cache_hit``. A failure sets the span's status to ``ERROR`` with the
error message and adds an ``exception`` span event. Retries are span events on the event span.

Metrics (instrument names): ``rh_agents.members`` and ``rh_agents.events`` (counters by
status), ``rh_agents.member.duration``, ``rh_agents.member.queue_wait``,
``rh_agents.event.duration`` and ``rh_agents.group.duration`` (histograms, seconds).
Attributes are low-cardinality (group name, actor name, status), never addresses.

Without OpenTelemetry installed, importing this module works; ``instrument()`` raises
``MissingDependencyError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rh_agents.core.parallel.metrics import GroupMetrics
from rh_agents.core.records import (
    BusEvent,
    EventCompleted,
    EventFailed,
    EventRetrying,
    EventStarted,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
)
from rh_agents.errors import MissingDependencyError

if TYPE_CHECKING:
    from rh_agents.core.bus import Subscription
    from rh_agents.core.execution import ExecutionState

__all__ = ["OpenTelemetryExporter", "instrument", "parent_address", "uninstrument"]

INSTRUMENTATION_NAME = "rh_agents"


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the OpenTelemetry integration needs the package that provides {module!r}; "
            "install it with: pip install 'rh-agents[otel]'"
        ) from exc


def parent_address(address: str) -> str | None:
    """The address one level up: a member ``g[3]`` belongs to its group ``g``; anything else
    to the part before its last ``::``. ``None`` at the root."""
    if address.endswith("]"):
        bracket = address.rfind("[")
        if bracket > 0:
            return address[:bracket]
    cut = address.rfind("::")
    return address[:cut] if cut >= 0 else None


@dataclass(slots=True)
class _Instruments:
    member_duration: Any
    queue_wait: Any
    event_duration: Any
    group_duration: Any


class _Open:
    """An open span and, once a child has asked for it, the context that makes it a parent."""

    __slots__ = ("context", "span")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.context: Any = None


_Key = tuple[tuple[str, str], ...]


class OpenTelemetryExporter:
    """A bus subscriber that emits spans and metrics; made by ``instrument()``.

    Owned by the bus's feeder task for this subscriber (records arrive one at a time, in
    order), so its dict of open spans is never touched concurrently. The two counters are
    observable instruments read from the local totals when the SDK collects: counting a member
    costs a dict increment, not a call into the SDK.
    """

    def __init__(
        self,
        *,
        clock_now: float,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        trace = _require("opentelemetry.trace")
        metrics = _require("opentelemetry.metrics")
        self._trace = trace
        self.subscription: Subscription | None = None
        tracer_provider = tracer_provider or trace.get_tracer_provider()
        meter_provider = meter_provider or metrics.get_meter_provider()
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME)
        self._member_counts: dict[_Key, int] = {}
        self._event_counts: dict[_Key, int] = {}
        observation = metrics.Observation

        def observe(counts: dict[_Key, int]) -> Callable[[Any], Iterable[Any]]:
            def callback(options: Any) -> Iterable[Any]:
                # dict() copies in one C call: safe against the loop adding keys meanwhile.
                return [observation(n, dict(key)) for key, n in dict(counts).items()]

            return callback

        meter.create_observable_counter(
            "rh_agents.members",
            [observe(self._member_counts)],
            unit="1",
            description="Group members finished, by group name and status",
        )
        meter.create_observable_counter(
            "rh_agents.events",
            [observe(self._event_counts)],
            unit="1",
            description="Actor calls finished, by actor name and status",
        )
        self._instruments = _Instruments(
            member_duration=meter.create_histogram(
                "rh_agents.member.duration", unit="s", description="Member run time"
            ),
            queue_wait=meter.create_histogram(
                "rh_agents.member.queue_wait", unit="s", description="Wait for a worker"
            ),
            event_duration=meter.create_histogram(
                "rh_agents.event.duration", unit="s", description="Actor call duration"
            ),
            group_duration=meter.create_histogram(
                "rh_agents.group.duration", unit="s", description="Group wall time"
            ),
        )
        # Records carry the state's monotonic clock; spans need epoch nanoseconds. One offset,
        # taken once, keeps every span of the run on one consistent scale.
        self._offset_ns = time.time_ns() - int(clock_now * 1e9)
        self._open: dict[str, _Open] = {}
        self._group_names: dict[str, str] = {}
        self._labels: dict[_Key, dict[str, str]] = {}  # attribute dicts, built once per key

    # --- helpers --------------------------------------------------------------------------

    def _ns(self, timestamp: float) -> int:
        return int(timestamp * 1e9) + self._offset_ns

    def _label(self, key: _Key) -> dict[str, str]:
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = dict(key)
        return labels

    def _context_for(self, address: str) -> Any:
        """The context of the nearest open span above ``address`` (``None`` at the root)."""
        parent = parent_address(address)
        open_spans = self._open
        while parent is not None:
            entry = open_spans.get(parent)
            if entry is not None:
                if entry.context is None:  # one context per parent, shared by its children
                    entry.context = self._trace.set_span_in_context(entry.span)
                return entry.context
            parent = parent_address(parent)
        return None

    def _start(self, name: str, record: BusEvent, attributes: dict[str, Any]) -> Any:
        attributes["rh_agents.address"] = record.address
        if record.group_id is not None:
            attributes["rh_agents.group_id"] = record.group_id
        if record.parallel_index is not None:
            attributes["rh_agents.parallel_index"] = record.parallel_index
        span = self.tracer.start_span(
            name,
            context=self._context_for(record.address),
            attributes=attributes,
            start_time=self._ns(record.timestamp),
        )
        self._open[record.address] = _Open(span)
        return span

    def _pop(self, address: str) -> Any:
        entry = self._open.pop(address, None)
        return entry.span if entry is not None else None

    def _fail(self, span: Any, error: str, error_type: str, timestamp: float) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.add_event(
            "exception",
            {"exception.type": error_type, "exception.message": error},
            timestamp=self._ns(timestamp),
        )

    # --- the subscriber -------------------------------------------------------------------

    def __call__(self, record: BusEvent) -> None:
        if isinstance(record, MemberStarted):
            self._start(
                f"member {record.address.rsplit('::', 1)[-1]}",
                record,
                {"rh_agents.queue_wait": record.queue_wait},
            )
            group = self._group_names.get(record.group_id or "", "")
            self._instruments.queue_wait.record(
                record.queue_wait,
                self._label((("rh_agents.group", group),)),
            )
        elif isinstance(record, MemberFinished):
            self._end_member(record)
        elif isinstance(record, EventStarted):
            self._start(
                record.actor,
                record,
                {"rh_agents.actor.name": record.actor, "rh_agents.actor.kind": record.actor_kind},
            )
        elif isinstance(record, EventCompleted | EventFailed):
            self._end_event(record)
        elif isinstance(record, EventRetrying):
            entry = self._open.get(record.address)
            if entry is not None:
                entry.span.add_event(
                    "retry",
                    {
                        "rh_agents.attempt": record.attempt,
                        "rh_agents.delay": record.delay,
                        "exception.type": record.error_type,
                        "exception.message": record.error,
                    },
                    timestamp=self._ns(record.timestamp),
                )
        elif isinstance(record, GroupStarted):
            self._group_names[record.address] = record.name
            self._start(
                f"group {record.name}",
                record,
                {
                    "rh_agents.group.name": record.name,
                    "rh_agents.group.max_workers": record.max_workers or 0,
                },
            )
        elif isinstance(record, GroupCompleted):
            self._end_group(record)

    def _end_member(self, record: MemberFinished) -> None:
        group = self._group_names.get(record.group_id or "", "")
        key = (("rh_agents.group", group), ("rh_agents.status", record.status))
        counts = self._member_counts
        counts[key] = counts.get(key, 0) + 1
        span = self._pop(record.address)
        if span is None:  # finished without starting: skipped or cancelled while queued
            return
        self._instruments.member_duration.record(record.execution_time, self._label(key))
        span.set_attributes(
            {"rh_agents.status": record.status, "rh_agents.attempts": record.attempts}
        )
        if record.error is not None:
            if record.status in ("failed", "timed_out"):
                error_type = record.error.split(":", 1)[0] if ":" in record.error else "Error"
                self._fail(span, record.error, error_type, record.timestamp)
            else:  # cancelled by the group: not an error of this member's own
                span.set_attribute("rh_agents.reason", record.error)
        span.end(end_time=self._ns(record.timestamp))

    def _end_event(self, record: EventCompleted | EventFailed) -> None:
        span = self._pop(record.address)
        if span is None:  # a replayed result: no EventStarted; show it as an instant
            span = self._start(
                record.actor,
                record,
                {"rh_agents.actor.name": record.actor, "rh_agents.actor.kind": record.actor_kind},
            )
            self._pop(record.address)
        if isinstance(record, EventCompleted):
            status = "completed"
            span.set_attributes(
                {
                    "rh_agents.attempts": record.attempts,
                    "rh_agents.source": record.source,
                    "rh_agents.cache_hit": record.source == "cache",
                }
            )
        else:
            status = "cancelled" if record.cancelled else "failed"
            span.set_attributes(
                {"rh_agents.attempts": record.attempts, "rh_agents.cache_hit": False}
            )
            self._fail(span, record.error, record.error_type, record.timestamp)
        key = (("rh_agents.actor", record.actor), ("rh_agents.status", status))
        counts = self._event_counts
        counts[key] = counts.get(key, 0) + 1
        self._instruments.event_duration.record(record.execution_time, self._label(key))
        span.end(end_time=self._ns(record.timestamp))

    def _end_group(self, record: GroupCompleted) -> None:
        self._group_names.pop(record.address, None)
        self._instruments.group_duration.record(
            record.wall_time, {"rh_agents.group": record.name, "rh_agents.status": record.status}
        )
        span = self._pop(record.address)
        if span is None:
            return
        attributes: dict[str, Any] = {
            "rh_agents.status": record.status,
            "rh_agents.group.total": record.total,
            "rh_agents.group.succeeded": record.succeeded,
            "rh_agents.group.failed": record.failed,
            "rh_agents.group.cancelled": record.cancelled,
            "rh_agents.group.skipped": record.skipped,
            "rh_agents.group.timed_out": record.timed_out,
        }
        metrics = record.metrics
        if isinstance(metrics, GroupMetrics):
            attributes["rh_agents.group.run_time_p95"] = metrics.run_time.p95
            attributes["rh_agents.group.queue_wait_p95"] = metrics.queue_wait.p95
            attributes["rh_agents.group.efficiency"] = metrics.efficiency
            attributes["rh_agents.group.retries"] = metrics.retries
        span.set_attributes(attributes)
        if record.failed or record.timed_out or record.status in ("failed", "timed_out"):
            span.set_status(
                self._trace.Status(
                    self._trace.StatusCode.ERROR,
                    f"{record.failed + record.timed_out} of {record.total} members failed",
                )
            )
        span.end(end_time=self._ns(record.timestamp))


def instrument(
    state: ExecutionState,
    tracer_provider: Any = None,
    meter_provider: Any = None,
) -> OpenTelemetryExporter:
    """Emit OpenTelemetry spans and metrics for everything ``state`` runs from now on.

    ``tracer_provider``/``meter_provider`` default to the global ones (which do nothing until
    an SDK is configured). Returns the subscriber; ``uninstrument`` or
    ``state.event_bus.unsubscribe(exporter)`` stops it. Raises ``MissingDependencyError``
    when OpenTelemetry is not installed.
    """
    exporter = OpenTelemetryExporter(
        clock_now=state.clock.now(),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    exporter.subscription = state.event_bus.subscribe(exporter)
    return exporter


def uninstrument(state: ExecutionState, exporter: OpenTelemetryExporter) -> None:
    """Stop ``exporter``; spans still open stay unended (nothing more will close them)."""
    state.event_bus.unsubscribe(exporter)
