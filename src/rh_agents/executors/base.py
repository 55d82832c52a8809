"""``RemoteExecutor``: what every executor does on the driver, whatever runs its requests.

A subclass says how one request reaches a worker and its reply comes back (``_send``,
cancellable: cancelling it must stop the remote work) and how bodies are pickled; this class
does the rest, which is the same for a process pool and a Ray cluster:

- ``check_member`` / ``check_function``: whether a member can be sent, checked when it is
  added, so that one that cannot gets an ``InvalidMemberError`` naming it before anything
  runs;
- ``run_handler`` / ``run_callable``: one attempt, as a request; the reply's records are
  published on the driver's bus (in order, timestamps moved onto the driver's clock), the
  calls finished over there join the driver's history and checkpoints, the frame's numbering
  goes on from where the worker left it, and the value is returned or the error raised.
  Retries, timeouts and the group's strategy stay with the caller (the policy runner and the
  group), on the driver.
"""

from __future__ import annotations

import inspect
import pickle
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from rh_agents.core.parallel.member import describe_member, is_event_call
from rh_agents.core.watch import call_ended
from rh_agents.errors import ActorInputError, InvalidMemberError, RemoteExecutionError
from rh_agents.executors.wire import (
    CALL,
    HANDLER,
    PROTOCOL,
    dumps,
    load_value,
    referenced,
    unimportable_module,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from rh_agents.core.actors import BaseActor
    from rh_agents.core.context import Frame
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import ExecutionState

__all__ = ["RemoteExecutor"]

# A checked member's pickled bytes are kept for its first attempt when they are at most this
# big (else they are pickled again when sent).
_KEEP_BODY = 64 * 1024


class RemoteExecutor:
    """The driver's side of an executor (see the module docstring); subclassed, not used."""

    name = "remote"

    def __init__(self) -> None:
        # Actors pickled lately: a group sends one actor with each of its members.
        self._actor_bytes: OrderedDict[int, tuple[BaseActor, bytes]] = OrderedDict()
        # Callable members pickled by check_member, not sent yet (by id; see _keep).
        self._checked: dict[int, tuple[weakref.ref[Any], bytes]] = {}

    # --- what subclasses provide ------------------------------------------------------------

    async def _send(self, request: bytes, label: str) -> bytes:
        """Have a worker run ``request``; its reply. Cancelling this stops the remote work."""
        raise NotImplementedError

    def _dumps(self, obj: Any) -> bytes:
        """``obj`` as a body (states sent as tokens; see ``wire``)."""
        return dumps(obj)

    # --- checks, when a member is added --------------------------------------------------------

    def check_member(self, source: Any, label: str) -> None:
        """An ``InvalidMemberError`` naming ``label`` if ``source`` cannot be sent."""
        if is_event_call(source):
            self._check_call(source, label)
        elif inspect.isawaitable(source):
            raise InvalidMemberError(
                f"{label} cannot run on executor {self.name!r}: it is a coroutine "
                f"({describe_member(source)}), which cannot be sent to another process; add "
                "a zero-argument callable instead (functools.partial(fn, x)), or an event call "
                "(event(input, context, state))"
            )
        else:
            body = self._body(source, label)
            if len(body) <= _KEEP_BODY:
                self._keep(source, body)

    def _keep(self, source: Any, body: bytes) -> None:
        """Keep ``source``'s pickled bytes for its first attempt (pickled once, not twice),
        for as long as ``source`` lives: the entry goes with it, sent or not."""
        key = id(source)
        checked = self._checked
        try:
            ref = weakref.ref(source, lambda _: checked.pop(key, None))
        except TypeError:  # (an object that takes no weak reference: pickled again)
            return
        checked[key] = (ref, body)

    def check_function(self, fn: Any, label: str) -> None:
        """The same for a ``map()`` function (each item is checked as it is sent)."""
        self._body(fn, label)

    def _check_call(self, call: Any, label: str) -> None:
        event = call.event
        actor = event.actor
        self._actor_data(actor, label)
        try:
            validated = actor.validate_input(call.input)
        except ActorInputError:
            return  # the call itself reports a bad input, as it would on the loop
        try:
            validated.model_dump_json()
        except Exception as exc:
            raise InvalidMemberError(
                f"{label} cannot run on executor {self.name!r}: its input for "
                f"{actor.kind} {actor.name!r} cannot cross as JSON ({exc})"
            ) from exc

    def _actor_data(self, actor: BaseActor, label: str) -> bytes:
        key = id(actor)
        known = self._actor_bytes.get(key)
        if known is not None and known[0] is actor:
            self._actor_bytes.move_to_end(key)
            return known[1]
        for part in (actor.handler, actor.input_model, actor.output_model):
            if part is not None:
                self._sendable(part, label, f"{actor.kind} {actor.name!r}")
        try:
            data = self._dumps(actor)
        except Exception as exc:
            raise InvalidMemberError(
                f"{label} cannot run on executor {self.name!r}: {actor.kind} {actor.name!r} "
                f"cannot be sent to another process ({type(exc).__name__}: {exc}); define "
                "its handler and models at the top level of a module"
            ) from exc
        self._actor_bytes[key] = (actor, data)
        if len(self._actor_bytes) > 256:
            self._actor_bytes.popitem(last=False)
        return data

    def _sendable(self, obj: Any, label: str, what: str) -> None:
        """Raise if function or class ``obj`` cannot reach the workers (sent by reference, its
        module must be importable there). An executor that can send it otherwise says so."""
        module = unimportable_module(obj)
        if module is not None:
            raise InvalidMemberError(
                f"{label} cannot run on executor {self.name!r}: {what} uses "
                f"{describe_member(obj)}, defined in module {module!r}, which the worker "
                "processes cannot import; define it in a module of your project (a file)"
            )

    def _body(self, fn: Any, label: str) -> bytes:
        for part in referenced(fn):
            self._sendable(part, label, describe_member(fn))
        try:
            return self._dumps(fn)
        except Exception as exc:
            raise InvalidMemberError(
                f"{label} cannot run on executor {self.name!r}: {describe_member(fn)} cannot "
                f"be sent to another process ({type(exc).__name__}: {exc}); use a function "
                "defined at the top level of a module, or functools.partial of one, with "
                "arguments that pickle"
            ) from exc

    # --- one attempt ---------------------------------------------------------------------------

    async def run_handler(
        self,
        state: ExecutionState,
        event: ExecutionEvent[Any],
        validated: BaseModel,
        context: str,
        frame: Frame,
    ) -> Any:
        """One call of ``event``'s handler in a worker, at ``frame``'s address."""
        label = f"the call at {frame.address}"
        actor_data = self._actor_data(event.actor, label)
        body = pickle.dumps((actor_data, validated.model_dump_json(), context), PROTOCOL)
        return await self._attempt(state, frame, HANDLER, body, label)

    async def run_callable(self, state: ExecutionState, frame: Frame, fn: Any) -> Any:
        """One call of the callable member ``fn`` in a worker, at ``frame``'s address."""
        label = f"member {frame.address}"
        checked = self._checked.pop(id(fn), None)
        body = checked[1] if checked is not None and checked[0]() is fn else self._body(fn, label)
        return await self._attempt(state, frame, CALL, body, label)

    async def _attempt(
        self, state: ExecutionState, frame: Frame, kind: str, body: bytes, label: str
    ) -> Any:
        bus = state.event_bus
        request = pickle.dumps(
            (
                kind,
                frame.address,
                frame.group_id,
                frame.parallel_index,
                frame.numbering(),
                bus.has_listeners,
                body,
            ),
            PROTOCOL,
        )
        reply = await self._send(request, label)
        ok, outcome, records, numbering, calls, ended = pickle.loads(reply)
        if numbering is not None:  # (None: nothing was called over there)
            frame.continue_numbering(numbering)
        if records and bus.has_listeners:
            # Onto the driver's clock: the reply left the worker (about) now.
            shift = state.clock.now() - ended
            for record in records:
                record.timestamp += shift
            bus.publish_many(records)
        if calls:
            # The calls made over there join the driver's history and its checkpoints.
            history = state.history
            hooked = state.has_event_hooks
            watch = state.watch  # the run viewer's log (see rh_agents.core.watch)
            for event, address, group_id, index, input, result in calls:
                history.record(event, address, group_id, index, input, result)
                if watch is not None:
                    call_ended(
                        watch, address, group_id, index, event.actor,
                        state.clock.now(), result, event.detail_chars,
                    )  # fmt: skip
                if hooked:
                    await state.on_event_finished(address, event.actor, input, result)
        try:
            rebuilt = pickle.loads(outcome)
        except Exception as exc:
            what = "result" if ok else "error"
            raise RemoteExecutionError(
                f"the {what} of {label} came back from executor {self.name!r} but cannot be "
                f"rebuilt here ({type(exc).__name__}: {exc}); return a value (or raise an "
                "exception) whose class can be made again from what it pickles: a pydantic "
                "model, plain data, or an exception whose __init__ takes its message"
            ) from exc
        if ok:
            return load_value(rebuilt)
        raise rebuilt
