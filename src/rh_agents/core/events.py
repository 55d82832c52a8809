"""``ExecutionEvent``: one call of an actor, with an address in the execution tree.

An event is a reusable description (which actor, which policies); calling it runs the actor
once and returns an ``ExecutionResult``. The call never raises for a failure of the actor: the
result says ``ok=False`` with the error. Cancellation is never swallowed::

    event = ExecutionEvent(actor=summarize)
    result = await event(Doc(text="..."), "", state)        # ExecutionResult
    async with state.parallel(max_workers=5) as p:
        for doc in docs:
            p.add(event(doc, "", state))                      # one call per member

Each call publishes ``EventStarted`` then ``EventCompleted`` or ``EventFailed`` on the state's
bus, and records a bound copy of the event (with its ``address``, ``group_id``,
``parallel_index`` and ``is_parallel`` filled in) in ``state.history``.
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rh_agents.core.actors import BaseActor, describe_unknown, describe_validation, name_problem
from rh_agents.core.context import Frame, current_frame, enter_frame, exit_frame
from rh_agents.core.deadlines import member_timed_out
from rh_agents.core.event_call import EventCall
from rh_agents.core.records import (
    EventCompleted,
    EventFailed,
    EventReplayed,
    EventStarted,
    _placed,
)
from rh_agents.core.results import ExecutionResult, ResultStatus, describe_error
from rh_agents.core.watch import CALL_ENDED, CALL_STARTED, call_ended
from rh_agents.errors import ConfigurationError, ParallelTimeoutError
from rh_agents.resilience.breaker import CircuitBreaker
from rh_agents.resilience.checks import check_policy
from rh_agents.resilience.retry import RetryPolicy

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState

__all__ = ["ExecutionEvent", "ExecutionResult", "ResultStatus", "event_timed_out", "truncate"]

if TYPE_CHECKING:
    # Defaulted for type checkers only: ``ExecutionEvent(actor=...)`` (the output type is not
    # inferable from an actor) is ``ExecutionEvent[Any]`` instead of an error asking for an
    # annotation. At run time the plain TypeVar (pydantic's generic model sees no change).
    from typing_extensions import TypeVar as _DefaultedTypeVar

    OutT = _DefaultedTypeVar("OutT", default=Any)
else:
    OutT = TypeVar("OutT")

DETAIL_CHARS = 120

# Filled on the bound copy of each call, never passed by a caller.
_BOUND_FIELDS = frozenset({"address", "group_id", "parallel_index", "is_parallel"})


def truncate(value: Any, limit: int = DETAIL_CHARS) -> str:
    """A one-line ``repr``-like text of ``value``, cut to ``limit`` characters."""
    try:
        text = _text(value)
    except Exception:  # a detail line must never fail the call it describes
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        try:
            return value.model_dump_json()
        except Exception:  # arbitrary types that JSON cannot hold
            return repr(value)
    return repr(value)


def event_timed_out(actor: BaseActor, address: str, seconds: float) -> ParallelTimeoutError:
    """The error of a call of ``actor`` at ``address`` that ran past its event's ``timeout``
    (what its result says, and each retry's record)."""
    return ParallelTimeoutError(
        f"{actor.kind} {actor.name!r} at {address} timed out after {seconds}s; raise the "
        "event's timeout or make the call faster",
        address=address,
    )


def _cut_short(actor: BaseActor, address: str) -> ParallelTimeoutError:
    """What the record of a call of ``actor`` at ``address`` says when its member's timeout
    (``member_timeout=``, ``p.add(..., timeout=)``) cancelled it: a timeout (the cancellation
    itself goes on; the member's result has the member's own timeout error)."""
    return ParallelTimeoutError(
        f"{actor.kind} {actor.name!r} at {address} was cut short by its member's timeout"
    )


class ExecutionEvent(BaseModel, Generic[OutT]):
    """A call of ``actor``; see the module docstring.

    ``tag`` replaces the actor's name in the address (useful when one actor is called in
    several roles) and follows the rule of actor names, so that no tag can forge an address
    (``tag="x#2"`` is refused); ``timeout`` bounds each call; ``retry`` and ``circuit_breaker``
    override the actor's policies for calls made through this event. An unknown keyword is a
    ``ConfigurationError`` naming it.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    actor: BaseActor
    tag: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    retry: RetryPolicy | None = None
    circuit_breaker: CircuitBreaker | None = None
    detail_chars: int = Field(default=DETAIL_CHARS, ge=8)

    # Filled on the bound copy of each call (where the call sits in parallel groups).
    address: str | None = None
    group_id: str | None = None
    parallel_index: int | None = None
    is_parallel: bool = False

    def __init__(self, **data: Any) -> None:
        # A bad option is the caller's mistake: report it in the library's own hierarchy.
        actor = data.get("actor")
        which = f" of {actor.name!r}" if isinstance(actor, BaseActor) else ""
        problem = describe_unknown(data, type(self).options())
        if problem is None and data.get("tag") is not None:
            problem = name_problem(data["tag"], "tag")
        timeout = data.get("timeout")
        if (
            problem is None
            and timeout is not None
            and not (isinstance(timeout, int | float) and not isinstance(timeout, bool))
        ):
            # As p.add(timeout=...) says: pydantic would read True as 1.0 and "5" as 5.0.
            problem = f"timeout must be seconds > 0, got {timeout!r}"
        if problem is None and "actor" in data and not isinstance(actor, BaseActor | dict):
            problem = f"actor= takes an actor (a Tool, Agent or LLM), got {actor!r}" + (
                "; make the function one with @tool (or Tool(name=..., input_model=..., "
                "handler=fn)) and pass that"
                if callable(actor)
                else ""
            )
        if problem is not None:
            raise ConfigurationError(f"ExecutionEvent{which}: {problem}")
        try:
            check_policy("retry", data.get("retry"), RetryPolicy)
            check_policy("circuit_breaker", data.get("circuit_breaker"), CircuitBreaker)
        except ConfigurationError as exc:
            raise ConfigurationError(f"ExecutionEvent{which}: {exc}") from None
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(f"ExecutionEvent{which}: {describe_validation(exc)}") from exc

    @classmethod
    def options(cls) -> list[str]:
        """The keywords a caller may pass (the other fields are filled on each bound copy)."""
        return [name for name in cls.model_fields if name not in _BOUND_FIELDS]

    def __call__(
        self, input: Any, context: str = "", state: ExecutionState | None = None
    ) -> EventCall[OutT]:
        """The call, as an awaitable value (``EventCall``): nothing runs until it is awaited."""
        # Duck-typed: this module may not import the state's (that would be an import cycle).
        if state is None or not hasattr(state, "root_frame"):
            given = "" if state is None else f", got {state!r}"
            raise ConfigurationError(
                f"calling the event of {self.actor.name!r} needs the ExecutionState as its "
                f"third argument{given}: event(input, context, state)"
            )
        return EventCall(self, input, context, state)

    def bind(self, frame: Frame) -> ExecutionEvent[OutT]:
        """A copy of this event carrying the call's address and parallel metadata."""
        return self.model_copy(
            update={
                "address": frame.address,
                "group_id": frame.group_id,
                "parallel_index": frame.parallel_index,
                "is_parallel": frame.group_id is not None,
            }
        )

    async def _invoke(
        self, input: Any, context: str, state: ExecutionState
    ) -> ExecutionResult[OutT]:
        if state._closed:  # (made before the state closed, awaited after)
            state.check_open()
        actor = self.actor
        tag = self.tag
        parent = current_frame(state)
        frame = parent.child(parent.child_address(tag or actor.name))
        address = frame.address
        bus = state.event_bus
        clock = state.clock
        group_id, index = frame.group_id, frame.parallel_index

        # Without recovery (and the hook not overridden) there is nothing to look up: the
        # call is skipped on this hot path.
        hooked = state.has_event_hooks
        recovered = None
        if hooked:
            # What the hooks know the call by: its address, or its key when it repeats a
            # call at its address (a retried parent's next attempt: see CALL_MARK).
            key = frame.key = parent.call_key(address)
            stored_as = key or address
            recovered = state.recovered_result(stored_as, actor, input)
            if recovered is not None and recovered.address != address:
                answered = recovered.address
                if answered is not None and answered != stored_as:
                    parent.answered_by(address, stored_as, answered)  # a later stored call
                recovered = copy.copy(recovered)  # (the hook's own object is left as it is)
                recovered.address = address
        watch = state.watch  # the run viewer's log (see core/watch.py), if it watches
        if recovered is not None:
            state.history.record(self, address, group_id, index, None, recovered)
            if watch is not None:  # (as the bus tells it: republished as completed, or not)
                republished = state.replay_publishes
                watch.log += (
                    CALL_ENDED, address, group_id, index, actor.name, actor.kind, clock.now(),
                    0.0 if republished else recovered.execution_time,
                    1 if republished else recovered.attempts, recovered.status._value_,
                    recovered.error, None, "replay" if republished else "replayed",
                    self.detail_chars,
                )  # fmt: skip
            if bus.call_records:
                if state.replay_publishes:
                    bus.publish(
                        _completed(
                            frame,
                            actor,
                            tag,
                            clock.now(),
                            0.0,
                            truncate(recovered.result, self.detail_chars),
                            1,
                            "replay",
                        )
                    )
                else:
                    bus.publish(_replayed(frame, actor, tag, clock.now(), recovered))
            return recovered

        started = clock.now()
        if bus.call_records:
            bus.publish(_started(frame, actor, tag, started, truncate(input, self.detail_chars)))
        if watch is not None:
            watch.log += (
                (CALL_STARTED, address, group_id, index, actor.name, actor.kind, started,
                 self.detail_chars)
            )  # fmt: skip
            watch.inputs.append(input)
        parent.children_running += 1
        running_calls = state.running_calls
        running_calls.add(frame)  # (close() refuses while a call runs outside its groups)
        token = enter_frame(frame)
        validated: BaseModel | None = None
        attempts = 1
        source = "run"
        try:
            validated = actor.validate_input(input)
            cache = state.cache
            if (
                cache is not None
                and actor.cacheable
                # (A validating resume runs every call: a hit would hide a changed result.)
                and (state.recovery is None or not state.recovery.runs_everything)
            ):  # a hit or a shared call skips the handler
                value, attempts, source = await cache.run(
                    actor,
                    validated,
                    lambda: state.invoke_actor(self, validated, context, frame),
                    join_timeout=self.timeout,
                )
            else:
                value, attempts = await state.invoke_actor(self, validated, context, frame)
            value = actor.validate_output(value)
        except Exception as exc:
            elapsed = clock.now() - started
            if (
                self.timeout is not None
                and isinstance(exc, TimeoutError)
                and not isinstance(exc, ParallelTimeoutError)
            ):
                # The event's own deadline: say which one. A TimeoutError the handler raised
                # by itself (no event timeout) is kept as it is.
                timed_out = event_timed_out(actor, address, self.timeout)
                timed_out.__cause__ = exc
                exc = timed_out.with_traceback(exc.__traceback__)
            status = (
                ResultStatus.TIMED_OUT if isinstance(exc, TimeoutError) else ResultStatus.FAILED
            )
            result: ExecutionResult[OutT] = ExecutionResult(
                ok=False,
                error=describe_error(exc),
                exception=exc,
                execution_time=elapsed,
                status=status,
                index=index,
                address=address,
                # This call's own count: an exception from a nested call may carry another.
                attempts=frame.attempts,
            )
            if bus.call_records:
                bus.publish(
                    _failed(
                        frame,
                        actor,
                        tag,
                        clock.now(),
                        elapsed,
                        result.error or "",
                        type(exc).__name__,
                        result.attempts,
                    )
                )
        except BaseException as exc:
            # A cancellation, KeyboardInterrupt, SystemExit...: it goes on, but the call's
            # EventStarted gets its end record first (a display or a trace never shows it
            # running forever).
            ended = clock.now()
            cancelled = isinstance(exc, asyncio.CancelledError)
            ending: BaseException = exc
            if cancelled and member_timed_out():
                # Cut short by its member's timeout: the call ran too long, a failure (a
                # timeout) as its member's result, its breaker and its group's adaptive
                # limit say, not a call a stop cancelled.
                ending = _cut_short(actor, address)
                cancelled = False
            tries = 1 if cancelled else frame.attempts
            watch = state.watch
            if watch is not None:
                call_ended(
                    watch, address, group_id, index, actor, ended, ending, self.detail_chars,
                    started, tries,
                )  # fmt: skip
            if bus.call_records:
                bus.publish(
                    _failed(
                        frame,
                        actor,
                        tag,
                        ended,
                        ended - started,
                        "cancelled" if cancelled else describe_error(ending),
                        type(ending).__name__,
                        tries,
                        cancelled=cancelled,
                    )
                )
            raise
        else:
            elapsed = clock.now() - started
            # Positional: keyword parsing costs more than the object (every call's hot path).
            result = ExecutionResult(
                True,
                value,
                None,
                None,
                elapsed,
                ResultStatus.COMPLETED,
                index,
                None,
                address,
                attempts,
                source,
            )
            if bus.call_records:
                bus.publish(
                    _completed(
                        frame,
                        actor,
                        tag,
                        clock.now(),
                        elapsed,
                        truncate(value, self.detail_chars),
                        attempts,
                        source,
                    )
                )
        finally:
            exit_frame(token)
            parent.children_running -= 1
            running_calls.discard(frame)
        watch = state.watch  # (again: a watch may have come since the call started)
        if watch is not None:
            if result.ok:  # (inline: every call's path; call_ended says the same)
                watch.log += (
                    (CALL_ENDED, address, group_id, index, actor.name, actor.kind,
                     started + elapsed, elapsed, attempts, "completed", None, None, source,
                     self.detail_chars)
                )  # fmt: skip
            else:
                call_ended(
                    watch, address, group_id, index, actor, started + elapsed, result,
                    self.detail_chars,
                )  # fmt: skip
        state.history.record(self, address, group_id, index, validated, result)
        if hooked:  # checkpoints, or a subclass's hook; nothing to await otherwise
            await state.on_event_finished(frame.key or address, actor, validated, result)
        return result


def _completed(
    frame: Frame,
    actor: BaseActor,
    tag: str | None,
    timestamp: float,
    elapsed: float,
    detail: str,
    attempts: int,
    source: str,
) -> EventCompleted:
    """The ``EventCompleted`` record of a call in ``frame`` (``source``: run, cache, replay)."""
    record = _call_record(EventCompleted, frame, actor, tag, timestamp)
    record.execution_time = elapsed
    record.detail = detail
    record.attempts = attempts
    record.source = source
    return record


def _replayed(
    frame: Frame,
    actor: BaseActor,
    tag: str | None,
    timestamp: float,
    recovered: ExecutionResult[Any],
) -> EventReplayed:
    """The ``EventReplayed`` record of a call in ``frame`` answered from a checkpoint."""
    record = _call_record(EventReplayed, frame, actor, tag, timestamp)
    record.execution_time = recovered.execution_time
    record.attempts = recovered.attempts
    return record


def _started(
    frame: Frame, actor: BaseActor, tag: str | None, timestamp: float, detail: str
) -> EventStarted:
    """The ``EventStarted`` record of a call in ``frame``."""
    record = _call_record(EventStarted, frame, actor, tag, timestamp)
    record.detail = detail
    return record


_CallRecord = TypeVar("_CallRecord", EventStarted, EventCompleted, EventFailed, EventReplayed)


def _call_record(
    cls: type[_CallRecord],
    frame: Frame,
    actor: BaseActor,
    tag: str | None,
    timestamp: float,
) -> _CallRecord:
    """A call's record placed in the tree at ``frame`` (by ``_placed``, as every record is)
    with the fields every call record has; the caller sets the rest.

    Field by field rather than by keywords: every call publishes two (keyword parsing costs
    more than the record). A test reads every field of every record back.
    """
    # _placed rather than _placed_in: one call fewer, on a path every call takes twice.
    record = _placed(cls, frame.address, timestamp, frame.group_id, frame.parallel_index)
    record.actor = actor.name
    record.actor_kind = actor.kind
    record.tag = tag
    return record


def _failed(
    frame: Frame,
    actor: BaseActor,
    tag: str | None,
    timestamp: float,
    elapsed: float,
    error: str,
    error_type: str,
    attempts: int,
    *,
    cancelled: bool = False,
) -> EventFailed:
    """The ``EventFailed`` record of a call in ``frame``."""
    record = _call_record(EventFailed, frame, actor, tag, timestamp)
    record.execution_time = elapsed
    record.error = error
    record.error_type = error_type
    record.attempts = attempts
    record.cancelled = cancelled
    return record
