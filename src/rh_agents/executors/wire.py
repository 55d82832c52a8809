"""What crosses between the driver and a worker: one request out, one reply back.

A request is one attempt of one member, as bytes::

    (kind, address, group_id, parallel_index, numbering, wants_records, body)

``kind`` is ``HANDLER`` (the body is ``(actor, input as JSON, context)``: a member that is an
event call, whose handler runs over there) or ``CALL`` (the body is the member's zero-argument
callable). ``address``, ``group_id``, ``parallel_index`` and ``numbering`` place the work in
the execution tree, so that what it calls over there gets the address it would have had
here. A reply is::

    (ok, value or error, records, numbering, calls, ended)

``calls`` are the event calls finished over there (nested in the member), for the driver's
history and checkpoints.

Values cross as pydantic JSON when they are models (the class by reference, the content as
its JSON), and by the engine's own serialisation (pickle) otherwise. An ``ExecutionState``
inside a body (``functools.partial(fn, x, state)``) is not sent: it arrives as the worker's
state for that request, whose records come home (``state_pickler``).
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
from typing import Any

from pydantic import BaseModel

from rh_agents.core.execution import ExecutionState
from rh_agents.errors import RemoteExecutionError
from rh_agents.executors.request import current_state

__all__ = [
    "CALL",
    "HANDLER",
    "dump_error",
    "dump_reply",
    "dump_value",
    "dumps",
    "load_value",
    "referenced",
    "state_pickler",
    "unimportable_module",
]

HANDLER = "handler"
CALL = "call"

_MODEL = 0
_PLAIN = 1

PROTOCOL = pickle.HIGHEST_PROTOCOL


class _StatePickler(pickle.Pickler):
    """Pickles an ``ExecutionState`` as "the worker's state" (see the module docstring)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, ExecutionState):
            return (current_state, ())
        return NotImplemented


def dumps(obj: Any, pickler: type[pickle.Pickler] = _StatePickler) -> bytes:
    """``obj`` pickled by ``pickler`` (by default the standard pickle, states as tokens)."""
    buffer = io.BytesIO()
    pickler(buffer, PROTOCOL).dump(obj)
    return buffer.getvalue()


def state_pickler(base: type[pickle.Pickler]) -> type[pickle.Pickler]:
    """A subclass of ``base`` (cloudpickle's, say) that sends states as tokens too."""

    class StatePickler(base):  # type: ignore[valid-type,misc]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, ExecutionState):
                return (current_state, ())
            return super().reducer_override(obj)

    return StatePickler


def dump_reply(message: Any) -> bytes:
    """A worker's reply as bytes (records with their metrics included)."""
    return pickle.dumps(message, PROTOCOL)


def dump_value(value: Any) -> tuple[Any, ...]:
    """A value as it crosses: a model as its class and JSON, anything else as it is."""
    if isinstance(value, BaseModel):
        try:
            return (_MODEL, type(value), value.model_dump_json())
        except Exception:  # content JSON cannot hold: the engine's serialisation, then
            pass
    return (_PLAIN, value)


def load_value(wired: tuple[Any, ...]) -> Any:
    if wired[0] == _MODEL:
        cls: type[BaseModel] = wired[1]
        return cls.model_validate_json(wired[2])
    return wired[1]


def dump_error(exc: BaseException, where: str) -> BaseException:
    """``exc`` as it can cross: itself if it pickles both ways (with its traceback as text in
    ``remote_traceback``), else a ``RemoteExecutionError`` that names it."""
    text = "".join(traceback.format_exception(exc))
    try:
        exc.remote_traceback = text  # type: ignore[attr-defined]
    except AttributeError:  # an exception class with __slots__
        pass
    try:
        pickle.loads(pickle.dumps(exc, PROTOCOL))
    except Exception:
        return RemoteExecutionError(
            f"{type(exc).__name__}: {exc} (raised {where}; the error itself could not be "
            "sent back)",
            remote_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            remote_traceback=text,
        )
    return exc


def unimportable_module(obj: Any) -> str | None:
    """The module of function or class ``obj`` if another process could not import it (a
    module made at run time, the ``__main__`` of ``python -c`` or of a notebook)."""
    name = getattr(obj, "__module__", None)
    if not isinstance(name, str):
        return None
    module = sys.modules.get(name)
    if module is None:
        return name
    if name == "__main__":
        return None if getattr(module, "__file__", None) else name
    return None if getattr(module, "__spec__", None) is not None else name


def referenced(fn: Any) -> list[Any]:
    """The functions and classes that ``fn`` (a callable member) is sent by reference as:
    itself, what a ``functools.partial`` wraps, a bound method's function, an instance's
    class."""
    import functools
    import types

    found: list[Any] = []
    seen = 0
    while seen < 8:
        seen += 1
        if isinstance(fn, functools.partial):
            found.extend(arg for arg in (*fn.args, *fn.keywords.values()) if callable(arg))
            fn = fn.func
            continue
        if isinstance(fn, types.MethodType):
            found.append(type(fn.__self__))
            fn = fn.__func__
        if isinstance(fn, types.FunctionType | type | types.BuiltinFunctionType):
            found.append(fn)
        else:
            found.append(type(fn))
        break
    return found
