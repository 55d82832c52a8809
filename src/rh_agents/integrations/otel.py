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
      event  Orchestrator::docs[3]::Summarizer          (member 3 of the group)
        event  Orchestrator::docs[3]::Summarizer::llm
        group  Orchestrator::docs[3]::Summarizer::parts (a nested group: under its event)

``instrument(state, member_spans=True)`` adds a ``member docs[3]`` span between a group and
its member's events. It is off by default because an event span already carries its group id
and member index, and every span costs the SDK tens of microseconds.

Every span carries ``rh_agents.address``; spans inside a group carry ``rh_agents.group_id``
and ``rh_agents.parallel_index``; event spans carry the actor's name and kind, the number of
attempts, ``rh_agents.source`` and ``rh_agents.cache_hit``. A failure sets the span's status
to ``ERROR`` with the error message and adds an ``exception`` span event; retries are
``retry`` span events. Without member spans, a member's own failure or retry becomes an event
on the nearest enclosing span (its group), with the member's address among its attributes.

Cost: an SDK span is made only once it is needed, normally when it ends, with all of its
attributes in one mapping and explicit times; a span that a child or a retry needs earlier
starts then, and gets its final attributes when it ends. A parent's context is built once and
shared by its children. No span events or status unless something failed or retried.

Metrics (instrument names): ``rh_agents.members`` and ``rh_agents.events`` (observable
counters by status, read from local totals when the SDK collects), ``rh_agents.member.duration``,
``rh_agents.member.queue_wait``, ``rh_agents.event.duration`` and ``rh_agents.group.duration``
(histograms, seconds, every value recorded). Attributes are low-cardinality (group name, actor
name, status), never addresses; each series' attributes mapping is built once and reused.

A member that finishes without ever suspending may publish no ``MemberStarted``: its member
span then starts at ``timestamp - execution_time`` of its ``MemberFinished``, and its queue
wait is taken from that record. A member that never ran (skipped, or stopped while queued) is
counted but gets no duration and no span.

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


# A member that finished without a start record of its own still ran if it completed, failed,
# or used any time; skipped members and members stopped while queued (0 s) never did.
_RAN_STATUSES = frozenset({"completed", "failed"})


@dataclass(slots=True)
class _Instruments:
    member_duration: Any
    queue_wait: Any
    event_duration: Any
    group_duration: Any


class _Open:
    """A span that has started but not ended.

    The SDK span is made only when needed (``span is None`` until then): when the span ends
    (then with every attribute at once), or earlier when a child or a retry needs it. A leaf
    (most events) thus costs one ``start_span`` with one attributes mapping and one ``end``.
    """

    __slots__ = ("attributes", "context", "name", "span", "start_ns")

    def __init__(self, name: str, attributes: dict[str, Any], start_ns: int) -> None:
        self.name = name
        self.attributes = attributes
        self.start_ns = start_ns
        self.span: Any = None
        self.context: Any = None  # made once, for the first child, and shared by all of them


class _Series:
    """One attribute set of a counter: its total, and the mapping shared by every record."""

    __slots__ = ("attributes", "count")

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.count = 0


class _Group:
    """What the members of one open group share: the mappings their metrics are recorded with."""

    __slots__ = ("by_status", "name", "wait_attributes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.wait_attributes = {"rh_agents.group": name}
        self.by_status: dict[str, _Series] = {}


class OpenTelemetryExporter:
    """A bus subscriber that emits spans and metrics; made by ``instrument()``.

    Owned by the bus's feeder task for this subscriber (records arrive one at a time, in
    order), so its dicts of open spans and totals are never touched concurrently. The two
    counters are observable instruments read from the local totals when the SDK collects:
    counting a member costs an integer increment, not a call into the SDK. Histograms get
    every value, each recorded with an attributes mapping built once per series.
    """

    def __init__(
        self,
        *,
        clock_now: float,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        member_spans: bool = False,
    ) -> None:
        trace = _require("opentelemetry.trace")
        metrics = _require("opentelemetry.metrics")
        self._trace = trace
        self.member_spans = member_spans
        self.subscription: Subscription | None = None
        tracer_provider = tracer_provider or trace.get_tracer_provider()
        meter_provider = meter_provider or metrics.get_meter_provider()
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME)
        self._member_series: dict[tuple[str, str], _Series] = {}
        self._event_series: dict[tuple[str, str], _Series] = {}
        observation = metrics.Observation

        def observe(series: dict[tuple[str, str], _Series]) -> Callable[[Any], Iterable[Any]]:
            def callback(options: Any) -> Iterable[Any]:
                # list() copies in one C call: safe against the loop adding series meanwhile.
                return [observation(s.count, s.attributes) for s in list(series.values())]

            return callback

        meter.create_observable_counter(
            "rh_agents.members",
            [observe(self._member_series)],
            unit="1",
            description="Group members finished, by group name and status",
        )
        meter.create_observable_counter(
            "rh_agents.events",
            [observe(self._event_series)],
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
        self._groups: dict[str, _Group] = {}
        self._group_labels: dict[tuple[str, str], dict[str, str]] = {}
        # One lookup per record instead of a chain of isinstance tests. MemberStarted is only
        # needed for member spans, or for the queue wait when MemberFinished lacks it.
        handlers: dict[type, Callable[[Any], None]] = {
            MemberFinished: self._member_finished,
            EventStarted: self._event_started,
            EventCompleted: self._event_finished,
            EventFailed: self._event_finished,
            EventRetrying: self._event_retrying,
            GroupStarted: self._group_started,
            GroupCompleted: self._group_completed,
        }
        if member_spans:
            # The queue wait comes with MemberFinished; a start matters only to a member span.
            handlers[MemberStarted] = self._member_started
        self._handlers = handlers

    # --- helpers --------------------------------------------------------------------------

    def _ns(self, timestamp: float) -> int:
        return int(timestamp * 1e9) + self._offset_ns

    def _span_of(self, address: str, entry: _Open) -> Any:
        """The SDK span of ``entry``, started now (with its own start time) if not yet."""
        span = entry.span
        if span is None:
            span = entry.span = self.tracer.start_span(
                entry.name,
                context=self._context_for(address),
                attributes=entry.attributes,
                start_time=entry.start_ns,
            )
        return span

    def _context_for(self, address: str) -> Any:
        """The context of the nearest open span above ``address`` (``None`` at the root)."""
        parent = parent_address(address)
        open_spans = self._open
        while parent is not None:
            entry = open_spans.get(parent)
            if entry is not None:
                context = entry.context
                if context is None:  # one context per parent, shared by its children
                    context = entry.context = self._trace.set_span_in_context(
                        self._span_of(parent, entry)
                    )
                return context
            parent = parent_address(parent)
        return None

    def _finalize(self, address: str, entry: _Open, final: dict[str, Any]) -> Any:
        """Give ``entry`` its ``final`` attributes; returns its span, for the caller to end
        (after setting an error status if there is one)."""
        span = entry.span
        if span is None:  # never needed before: one start_span with every attribute
            entry.attributes.update(final)
            span = self._span_of(address, entry)
        else:
            span.set_attributes(final)
        return span

    def _fail(self, span: Any, error: str, error_type: str, timestamp: float) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.add_event(
            "exception",
            {"exception.type": error_type, "exception.message": error},
            timestamp=self._ns(timestamp),
        )

    def _group(self, group_id: str | None) -> _Group:
        group = self._groups.get(group_id or "")
        if group is None:  # instrumented while the group ran: its name is unknown
            group = self._groups[group_id or ""] = _Group("")
        return group

    # --- the subscriber -------------------------------------------------------------------

    def __call__(self, record: BusEvent) -> None:
        handler = self._handlers.get(type(record))
        if handler is not None:
            handler(record)

    def _member_started(self, record: MemberStarted) -> None:
        self._open[record.address] = _Open(
            f"member {record.address.rsplit('::', 1)[-1]}",
            self._member_attributes(record, record.queue_wait),
            self._ns(record.timestamp),
        )

    @staticmethod
    def _member_attributes(record: MemberStarted | MemberFinished, wait: float) -> dict[str, Any]:
        return {
            "rh_agents.address": record.address,
            "rh_agents.group_id": record.group_id,
            "rh_agents.parallel_index": record.parallel_index,
            "rh_agents.queue_wait": wait,
        }

    def _member_finished(self, record: MemberFinished) -> None:
        group = self._group(record.group_id)
        status = record.status
        series = group.by_status.get(status)
        if series is None:
            key = (group.name, status)
            series = self._member_series.get(key)
            if series is None:
                series = self._member_series[key] = _Series(
                    {"rh_agents.group": group.name, "rh_agents.status": status}
                )
            group.by_status[status] = series
        series.count += 1
        entry = self._open.pop(record.address, None) if self.member_spans else None
        if not (entry is not None or status in _RAN_STATUSES or record.execution_time > 0.0):
            return  # never ran (skipped, or stopped while queued): no duration, no span
        instruments = self._instruments
        instruments.member_duration.record(record.execution_time, series.attributes)
        wait = record.queue_wait
        if wait is not None:
            instruments.queue_wait.record(wait, group.wait_attributes)
        if not self.member_spans:
            error = record.error
            if error is not None and status in ("failed", "timed_out"):
                # No member span to carry it: the group span gets the exception event.
                self._member_error_on_group(record, error)
            return
        end_ns = self._ns(record.timestamp)
        if entry is None:  # finished without suspending: no MemberStarted came
            entry = _Open(
                f"member {record.address.rsplit('::', 1)[-1]}",
                self._member_attributes(record, wait or 0.0),
                end_ns - int(record.execution_time * 1e9),
            )
        final: dict[str, Any] = {"rh_agents.status": status, "rh_agents.attempts": record.attempts}
        error = record.error
        failed = error is not None and status in ("failed", "timed_out")
        if error is not None and not failed:  # cancelled by the group: not its own error
            final["rh_agents.reason"] = error
        span = self._finalize(record.address, entry, final)
        if failed:
            assert error is not None
            error_type = error.split(":", 1)[0] if ":" in error else "Error"
            self._fail(span, error, error_type, record.timestamp)
        span.end(end_time=end_ns)

    def _member_error_on_group(self, record: MemberFinished, error: str) -> None:
        attributes: dict[str, Any] = {
            "exception.type": error.split(":", 1)[0] if ":" in error else "Error",
            "exception.message": error,
            "rh_agents.parallel_index": record.index,
            "rh_agents.status": record.status,
        }
        span = self._nearest_span(record.address, attributes)
        if span is not None:
            span.add_event("exception", attributes, timestamp=self._ns(record.timestamp))

    def _event_started(self, record: EventStarted) -> None:
        self._open[record.address] = _Open(
            record.actor, self._event_attributes(record), self._ns(record.timestamp)
        )

    @staticmethod
    def _event_attributes(record: EventStarted | EventCompleted | EventFailed) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "rh_agents.address": record.address,
            "rh_agents.actor.name": record.actor,
            "rh_agents.actor.kind": record.actor_kind,
        }
        if record.group_id is not None:
            attributes["rh_agents.group_id"] = record.group_id
            attributes["rh_agents.parallel_index"] = record.parallel_index
        return attributes

    def _event_finished(self, record: EventCompleted | EventFailed) -> None:
        end_ns = self._ns(record.timestamp)
        entry = self._open.pop(record.address, None)
        if entry is None:  # a replayed result: no EventStarted; show it as an instant
            entry = _Open(record.actor, self._event_attributes(record), end_ns)
        if isinstance(record, EventCompleted):
            status = "completed"
            source = record.source
            span = self._finalize(
                record.address,
                entry,
                {
                    "rh_agents.attempts": record.attempts,
                    "rh_agents.source": source,
                    "rh_agents.cache_hit": source == "cache",
                },
            )
        else:
            status = "cancelled" if record.cancelled else "failed"
            span = self._finalize(
                record.address,
                entry,
                {"rh_agents.attempts": record.attempts, "rh_agents.cache_hit": False},
            )
            self._fail(span, record.error, record.error_type, record.timestamp)
        span.end(end_time=end_ns)
        key = (record.actor, status)
        series = self._event_series.get(key)
        if series is None:
            series = self._event_series[key] = _Series(
                {"rh_agents.actor": record.actor, "rh_agents.status": status}
            )
        series.count += 1
        self._instruments.event_duration.record(record.execution_time, series.attributes)

    def _event_retrying(self, record: EventRetrying) -> None:
        attributes: dict[str, Any] = {
            "rh_agents.attempt": record.attempt,
            "rh_agents.delay": record.delay,
            "exception.type": record.error_type,
            "exception.message": record.error,
        }
        span = self._nearest_span(record.address, attributes)
        if span is not None:
            span.add_event("retry", attributes, timestamp=self._ns(record.timestamp))

    def _nearest_span(self, address: str, attributes: dict[str, Any]) -> Any:
        """The span of ``address`` or, when it has none (a member without a member span), of
        its nearest open ancestor, with ``address`` added to ``attributes`` to say whose."""
        entry = self._open.get(address)
        if entry is not None:
            return self._span_of(address, entry)
        attributes["rh_agents.address"] = address
        parent = parent_address(address)
        while parent is not None:
            entry = self._open.get(parent)
            if entry is not None:
                return self._span_of(parent, entry)
            parent = parent_address(parent)
        return None

    def _group_started(self, record: GroupStarted) -> None:
        self._groups[record.address] = _Group(record.name)
        attributes: dict[str, Any] = {
            "rh_agents.address": record.address,
            "rh_agents.group.name": record.name,
            "rh_agents.group.max_workers": record.max_workers or 0,
        }
        if record.group_id is not None:
            attributes["rh_agents.group_id"] = record.group_id
            attributes["rh_agents.parallel_index"] = record.parallel_index
        self._open[record.address] = _Open(
            f"group {record.name}", attributes, self._ns(record.timestamp)
        )

    def _group_completed(self, record: GroupCompleted) -> None:
        self._groups.pop(record.address, None)
        key = (record.name, record.status)
        labels = self._group_labels.get(key)
        if labels is None:
            labels = self._group_labels[key] = {
                "rh_agents.group": record.name,
                "rh_agents.status": record.status,
            }
        self._instruments.group_duration.record(record.wall_time, labels)
        entry = self._open.pop(record.address, None)
        if entry is None:
            return
        final: dict[str, Any] = {
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
            final["rh_agents.group.run_time_p95"] = metrics.run_time.p95
            final["rh_agents.group.queue_wait_p95"] = metrics.queue_wait.p95
            final["rh_agents.group.efficiency"] = metrics.efficiency
            final["rh_agents.group.retries"] = metrics.retries
        end_ns = self._ns(record.timestamp)
        span = self._finalize(record.address, entry, final)
        if record.failed or record.timed_out or record.status in ("failed", "timed_out"):
            span.set_status(
                self._trace.Status(
                    self._trace.StatusCode.ERROR,
                    f"{record.failed + record.timed_out} of {record.total} members failed",
                )
            )
        span.end(end_time=end_ns)


def instrument(
    state: ExecutionState,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    *,
    member_spans: bool = False,
) -> OpenTelemetryExporter:
    """Emit OpenTelemetry spans and metrics for everything ``state`` runs from now on.

    ``tracer_provider``/``meter_provider`` default to the global ones (which do nothing until
    an SDK is configured). ``member_spans=True`` adds a span per group member between the group
    and the member's events (off by default: an event span already names its group and member
    index, and a span costs the SDK tens of microseconds). Returns the subscriber;
    ``uninstrument`` or ``state.event_bus.unsubscribe(exporter)`` stops it. Raises
    ``MissingDependencyError`` when OpenTelemetry is not installed.
    """
    exporter = OpenTelemetryExporter(
        clock_now=state.clock.now(),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        member_spans=member_spans,
    )
    exporter.subscription = state.event_bus.subscribe(exporter)
    return exporter


def uninstrument(state: ExecutionState, exporter: OpenTelemetryExporter) -> None:
    """Stop ``exporter``; spans still open are never ended, so never exported."""
    state.event_bus.unsubscribe(exporter)
