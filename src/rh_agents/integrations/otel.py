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

Options (all off or "everything" by default, so the defaults trace every group and event)::

    instrument(state, member_spans=True)     # + a span "member docs[3]" per group member
    instrument(state, member_metrics=True)   # + per-member histograms, live member counters
    instrument(state, sample_events=0.1)     # keep 10 % of successful event spans

By default the exporter subscribes only to event and group records (``kinds=``): it never
receives ``MemberStarted``/``MemberFinished``, and a group with no other subscriber that wants
them does not even build them. ``member_spans`` or ``member_metrics`` subscribe to them.

Every span carries ``rh_agents.address``; spans inside a group carry ``rh_agents.group_id``
and ``rh_agents.parallel_index``; event spans carry the actor's name and kind, the number of
attempts, ``rh_agents.source`` and ``rh_agents.cache_hit``. A failure sets the span's status
to ``ERROR`` with the error message and adds an ``exception`` span event; retries are
``retry`` span events. A group span's status is ``ERROR`` when members failed or timed out,
with the count. A member's own failure (one that is not an actor call's, which has its event
span) is an ``exception`` event on its member span, or, with member records but no member
spans (``member_metrics=True``), on its group's span; by default it is only counted.

Sampling: ``sample_events=rate`` (``0 < rate <= 1``) keeps the span of a successful event only
when ``crc32(address) < rate * 2**32`` (``keeps_event``): deterministic, so a rerun traces
the same events. A failed or retried event is always kept; groups and members always are. An
event that is not kept costs no SDK call at all, and its children hang from its nearest kept
ancestor. Metrics are never sampled.

Cost: an SDK span is made only once it is needed, normally when it ends, with all of its
attributes in one mapping and explicit times; a span that a child or a retry needs earlier
starts then, and gets its final attributes when it ends. A parent's context is built once and
shared by its children. No span events or status unless something failed or retried.

Metrics (instrument names):

- ``rh_agents.events`` (observable counter by actor and status; live, per event) and
  ``rh_agents.event.duration`` (histogram, every event).
- ``rh_agents.group.duration`` (histogram, one value per group, when it completes).
- ``rh_agents.members`` (observable counter by group name and status): by default added from
  ``GroupCompleted``'s counts when each group completes (exact totals, no per-member work);
  with ``member_metrics=True`` counted live as each member finishes.
- ``rh_agents.member.duration`` and ``rh_agents.member.queue_wait`` (histograms, seconds):
  only with ``member_metrics=True``, a value per member that ran.

Counters are read from local totals when the SDK collects; histogram attributes are
low-cardinality (group name, actor name, status), never addresses, each series' mapping built
once and reused.

A member that finishes without ever suspending may publish no ``MemberStarted``: its member
span then starts at ``timestamp - execution_time`` of its ``MemberFinished``, and its queue
wait is taken from that record. A member that never ran (skipped, or stopped while queued) is
counted but gets no duration and no span.

Without OpenTelemetry installed, importing this module works; ``instrument()`` raises
``MissingDependencyError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
import math
import time
import weakref
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rh_agents.core.parallel.metrics import GroupMetrics
from rh_agents.core.records import (
    BusEvent,
    EventCompleted,
    EventFailed,
    EventReplayed,
    EventRetrying,
    EventStarted,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
)
from rh_agents.errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from rh_agents.core.bus import Subscription
    from rh_agents.core.execution import ExecutionState

__all__ = [
    "OpenTelemetryExporter",
    "instrument",
    "keeps_event",
    "parent_address",
    "uninstrument",
]

INSTRUMENTATION_NAME = "rh_agents"

_HASH_SPACE = 1 << 32  # crc32 values are in [0, 2**32)


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


def _check_rate(rate: object) -> float:
    # bool is an int: sample_events=True is a mistake, not a rate of 1.
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigurationError(
            f"sample_events must be a number in (0, 1], got {rate!r} ({type(rate).__name__})"
        )
    if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise ConfigurationError(
            f"sample_events must be in (0, 1] (the share of successful events whose span is "
            f"kept; 1 keeps all), got {rate!r}"
        )
    return float(rate)


def keeps_event(address: str, rate: float) -> bool:
    """Whether ``sample_events=rate`` keeps the span of a *successful* event at ``address``.

    ``crc32(address as UTF-8) < rate * 2**32``: the same address is always kept or always
    dropped, so reruns trace the same events. (Failed and retried events are always kept.)
    """
    rate = _check_rate(rate)
    return rate >= 1.0 or zlib.crc32(address.encode()) < int(rate * _HASH_SPACE)


# A member that finished without a start record of its own still ran if it completed, failed,
# or used any time; skipped members and members stopped while queued (0 s) never did.
_RAN_STATUSES = frozenset({"completed", "failed"})

# GroupCompleted's counts, by the member status each one counts.
_GROUP_COUNTS = (
    ("completed", "succeeded"),
    ("failed", "failed"),
    ("cancelled", "cancelled"),
    ("skipped", "skipped"),
    ("timed_out", "timed_out"),
)

# The errors of a call that timed out (its event's timeout, its member's, or a TimeoutError
# of its own: its result's status is timed_out), as the run viewer reads them too.
_TIMEOUT_TYPES = frozenset({"TimeoutError", "ParallelTimeoutError"})

_EVENT_KINDS: tuple[type[BusEvent], ...] = (
    EventStarted,
    EventCompleted,
    EventFailed,
    EventReplayed,
    EventRetrying,
    GroupStarted,
    GroupCompleted,
)


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

    ``sampled`` is ``False`` for an event that sampling would drop if it succeeds: children
    look past it (while it has no span) to the nearest kept ancestor. Its attributes are
    built only if it is kept after all (``attributes is None`` and ``started`` holds the
    start record until then).
    """

    __slots__ = ("attributes", "context", "name", "sampled", "span", "start_ns", "started")

    def __init__(
        self,
        name: str,
        attributes: dict[str, Any] | None,
        start_ns: int,
        sampled: bool = True,
        started: EventStarted | None = None,
    ) -> None:
        self.name = name
        self.attributes = attributes
        self.start_ns = start_ns
        self.sampled = sampled
        self.started = started
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

    Owned by the bus's feeder for this subscriber (records arrive one at a time, in
    order), so its dicts of open spans and totals are never touched concurrently. The two
    counters are observable instruments read from the local totals when the SDK collects:
    counting costs an integer increment, not a call into the SDK. Histograms get every value,
    each recorded with an attributes mapping built once per series.

    ``kinds`` is the record classes it needs: subscribe with ``bus.subscribe(exporter,
    kinds=exporter.kinds)`` (``instrument`` does) so that member records are neither
    delivered nor built unless ``member_spans`` or ``member_metrics`` asks for them.
    """

    def __init__(
        self,
        *,
        clock_now: float,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        member_spans: bool = False,
        member_metrics: bool = False,
        sample_events: float = 1.0,
    ) -> None:
        rate = _check_rate(sample_events)  # before anything is set up
        trace = _require("opentelemetry.trace")
        metrics = _require("opentelemetry.metrics")
        self._trace = trace
        # The parent of the spans that have none by address (a top-level group or event):
        # whatever span is current here, as the exporter is made (a request's, say), or none
        # (each starts a trace of its own); never the span current wherever the exporter
        # happens to run, a member's or another request's.
        self._root_context = _require("opentelemetry.context").get_current()
        self.member_spans = member_spans
        self.member_metrics = member_metrics
        self.sample_events = rate
        # None: keep every event without hashing its address.
        self._threshold: int | None = None if rate >= 1.0 else int(rate * _HASH_SPACE)
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
        # One lookup per record instead of a chain of isinstance tests.
        handlers: dict[type, Callable[[Any], None]] = {
            EventStarted: self._event_started,
            EventCompleted: self._event_finished,
            EventFailed: self._event_finished,
            EventReplayed: self._event_replayed,
            EventRetrying: self._event_retrying,
            GroupStarted: self._group_started,
            GroupCompleted: self._group_completed,
        }
        kinds = list(_EVENT_KINDS)
        if member_spans or member_metrics:
            handlers[MemberFinished] = self._member_finished
            kinds.append(MemberFinished)
        if member_spans:
            # The queue wait comes with MemberFinished; a start matters only to a member span.
            handlers[MemberStarted] = self._member_started
            kinds.append(MemberStarted)
        self._handlers = handlers
        self.kinds: tuple[type[BusEvent], ...] = tuple(kinds)

    # --- helpers --------------------------------------------------------------------------

    def _ns(self, timestamp: float) -> int:
        return int(timestamp * 1e9) + self._offset_ns

    def _span_of(self, address: str, entry: _Open) -> Any:
        """The SDK span of ``entry``, started now (with its own start time) if not yet."""
        span = entry.span
        if span is None:
            attributes = entry.attributes
            if attributes is None:  # an unsampled event kept after all
                assert entry.started is not None
                attributes = entry.attributes = self._event_attributes(entry.started)
                entry.started = None
            span = entry.span = self.tracer.start_span(
                entry.name,
                context=self._context_for(address),
                attributes=attributes,
                start_time=entry.start_ns,
            )
        return span

    def _open_ancestor(self, address: str) -> tuple[str, _Open] | None:
        """The nearest open span above ``address`` that is kept (has a span already, or is
        not an unsampled event), or ``None`` at the root."""
        parent = parent_address(address)
        open_spans = self._open
        while parent is not None:
            entry = open_spans.get(parent)
            if entry is not None and (entry.sampled or entry.span is not None):
                return parent, entry
            parent = parent_address(parent)
        return None

    def _context_for(self, address: str) -> Any:
        """The context of the nearest kept open span above ``address`` (at the root, the one
        current when the exporter was made)."""
        found = self._open_ancestor(address)
        if found is None:
            return self._root_context
        parent, entry = found
        context = entry.context
        if context is None:  # one context per parent, shared by its children
            context = entry.context = self._trace.set_span_in_context(self._span_of(parent, entry))
        return context

    def _finalize(self, address: str, entry: _Open, final: dict[str, Any]) -> Any:
        """Give ``entry`` its ``final`` attributes; returns its span, for the caller to end
        (after setting an error status if there is one)."""
        span = entry.span
        if span is None:  # never needed before: one start_span with every attribute
            attributes = entry.attributes
            if attributes is None:
                assert entry.started is not None
                attributes = entry.attributes = self._event_attributes(entry.started)
                entry.started = None
            attributes.update(final)
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

    def _member_series_for(self, name: str, status: str) -> _Series:
        key = (name, status)
        series = self._member_series.get(key)
        if series is None:
            series = self._member_series[key] = _Series(
                {"rh_agents.group": name, "rh_agents.status": status}
            )
        return series

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
        status = record.status
        entry = self._open.pop(record.address, None) if self.member_spans else None
        # A member that never ran (skipped, or stopped while queued) is counted, but has no
        # duration and no span.
        ran = entry is not None or status in _RAN_STATUSES or record.execution_time > 0.0
        wait = record.queue_wait
        if self.member_metrics:
            group = self._group(record.group_id)
            series = group.by_status.get(status)
            if series is None:
                series = group.by_status[status] = self._member_series_for(group.name, status)
            series.count += 1
            if ran:
                instruments = self._instruments
                instruments.member_duration.record(record.execution_time, series.attributes)
                if wait is not None:
                    instruments.queue_wait.record(wait, group.wait_attributes)
        if not ran:
            return
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
        threshold = self._threshold
        address = record.address
        if threshold is None or zlib.crc32(address.encode()) < threshold:
            entry = _Open(record.actor, self._event_attributes(record), self._ns(record.timestamp))
        else:  # dropped if it succeeds: its attributes are built only if it is kept after all
            entry = _Open(record.actor, None, self._ns(record.timestamp), False, record)
        self._open[address] = entry

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
        address = record.address
        entry = self._open.pop(address, None)
        if isinstance(record, EventCompleted):
            status = "completed"
            # Dropped by sampling: not kept by the hash, no span made for a child or a retry,
            # and a single attempt. No SDK call at all.
            keep = (
                entry.sampled or entry.span is not None
                if entry is not None
                else self._threshold is None or zlib.crc32(address.encode()) < self._threshold
            ) or record.attempts > 1
            if keep:
                if entry is None:  # a replayed result: no EventStarted; show it as an instant
                    entry = _Open(record.actor, self._event_attributes(record), end_ns)
                source = record.source
                span = self._finalize(
                    address,
                    entry,
                    {
                        "rh_agents.attempts": record.attempts,
                        "rh_agents.source": source,
                        "rh_agents.cache_hit": source == "cache",
                    },
                )
                span.end(end_time=end_ns)
        else:
            status = (
                "cancelled"
                if record.cancelled
                else "timed_out"
                if record.error_type in _TIMEOUT_TYPES
                else "failed"
            )
            if entry is None:
                entry = _Open(record.actor, self._event_attributes(record), end_ns)
            final: dict[str, Any] = {
                "rh_agents.attempts": record.attempts,
                "rh_agents.cache_hit": False,
            }
            if record.cancelled:  # stopped (by its group, its caller): not an error of its own
                final["rh_agents.reason"] = record.error
            span = self._finalize(address, entry, final)
            if not record.cancelled:  # failed or timed out
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

    def _event_replayed(self, record: EventReplayed) -> None:
        """A call a resumed run answered from its checkpoint, in the default replay mode
        (``replay="skip"``: this record only): the same instant span, and the same count, as
        its ``EventCompleted(source="replay")`` in the ``republish`` mode."""
        self._event_finished(
            EventCompleted(
                address=record.address,
                timestamp=record.timestamp,
                group_id=record.group_id,
                parallel_index=record.parallel_index,
                is_parallel=record.is_parallel,
                actor=record.actor,
                actor_kind=record.actor_kind,
                tag=record.tag,
                execution_time=0.0,  # (no time was spent now: as republish has it)
                source="replay",
            )
        )

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
        """The span of ``address`` (made now if need be: a retried event is always kept) or,
        when it has none (a member without a member span), of its nearest kept ancestor, with
        ``address`` added to ``attributes`` to say whose."""
        entry = self._open.get(address)
        if entry is not None:
            return self._span_of(address, entry)
        attributes["rh_agents.address"] = address
        found = self._open_ancestor(address)
        return None if found is None else self._span_of(*found)

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
        if not self.member_metrics:
            # Member counts per group, added when the group completes: exact totals without
            # a record per member.
            for status, field in _GROUP_COUNTS:
                count = getattr(record, field)
                if count:
                    self._member_series_for(record.name, status).count += count
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
    member_metrics: bool = False,
    sample_events: float = 1.0,
) -> OpenTelemetryExporter:
    """Emit OpenTelemetry spans and metrics for everything ``state`` runs from now on.

    ``tracer_provider``/``meter_provider`` default to the global ones (which do nothing until
    an SDK is configured). By default: a span per group and per event, event and group
    metrics, and member counters added per group when it completes; no member records are
    delivered (nor built, if nobody else wants them).

    - ``member_spans=True``: a span per group member between the group and its events.
    - ``member_metrics=True``: ``rh_agents.member.duration``/``.queue_wait`` histograms (a
      value per member) and member counters updated live as each member finishes.
    - ``sample_events``: the share, in (0, 1], of *successful* event spans kept (see
      ``keeps_event``); failed and retried events are always kept. 1 keeps every span.

    Returns the subscriber; ``uninstrument`` or ``state.event_bus.unsubscribe(exporter)``
    stops it. Raises ``ConfigurationError`` for a bad ``sample_events``, or when the state is
    instrumented already for the same providers (every span would be sent twice), and
    ``MissingDependencyError`` when OpenTelemetry is not installed.
    """
    providers = (tracer_provider, meter_provider)
    for current, used in _instrumented.get(state, ()):
        subscription = current.subscription
        if used == providers and subscription is not None and not subscription.closed:
            # A second exporter to the same providers would send every span and metric
            # twice, silently. (Exporters to other providers are fine: one per backend.)
            raise ConfigurationError(
                "this state is instrumented already for these providers; call "
                "uninstrument(state, exporter) on the exporter instrument() returned first, "
                "or keep using that one"
            )
    exporter = OpenTelemetryExporter(
        clock_now=state.clock.now(),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        member_spans=member_spans,
        member_metrics=member_metrics,
        sample_events=sample_events,
    )
    exporter.subscription = state.event_bus.subscribe(exporter, kinds=exporter.kinds)
    _instrumented.setdefault(state, []).append((exporter, providers))
    return exporter


# The exporters instrument() attached to each state, with the providers each was given
# (weakly: a state ended and dropped goes).
_instrumented: weakref.WeakKeyDictionary[
    ExecutionState, list[tuple[OpenTelemetryExporter, tuple[Any, Any]]]
] = weakref.WeakKeyDictionary()


def uninstrument(state: ExecutionState, exporter: OpenTelemetryExporter) -> None:
    """Stop ``exporter``; spans still open are never ended, so never exported."""
    state.event_bus.unsubscribe(exporter)
