"""Actors: the things an ``ExecutionEvent`` runs.

An actor has a name, a description, a pydantic ``input_model``, an optional ``output_model`` and
a handler ``(input, context, state) -> output``: an async function, or a plain ``def`` (a
synchronous SDK, a parser), which runs in a worker thread of the state (see
``rh_agents.core.threads``). ``Agent``, ``Tool`` and ``LLM`` differ only in their ``kind``,
which the printer shows::

    class Doc(BaseModel):
        text: str

    async def summarize_doc(input: Doc, context: str, state: ExecutionState) -> str:
        return input.text[:40]

    summarize = Tool(name="summarize", description="First words", input_model=Doc,
                     handler=summarize_doc)

    @tool(description="Count words")           # the input model comes from the annotation
    async def count_words(input: Doc, context: str, state: ExecutionState) -> int:
        return len(input.text.split())

    @tool                                       # a plain def: runs in a worker thread
    def parse(input: Doc, context: str, state: ExecutionState) -> list[str]:
        return input.text.split()
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, ClassVar, Protocol, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rh_agents.errors import (
    ActorDefinitionError,
    ActorInputError,
    ActorOutputError,
    ConfigurationError,
)
from rh_agents.resilience.breaker import CircuitBreaker
from rh_agents.resilience.checks import check_policy
from rh_agents.resilience.retry import RetryPolicy

__all__ = [
    "LLM",
    "Agent",
    "BaseActor",
    "Handler",
    "Tool",
    "agent",
    "describe_unknown",
    "describe_validation",
    "llm",
    "name_problem",
    "tool",
]

# An async function, or a plain one (run in a worker thread).
Handler = Callable[[Any, str, Any], Awaitable[Any]] | Callable[[Any, str, Any], Any]

_A = TypeVar("_A", bound="BaseActor")
_A_co = TypeVar("_A_co", bound="BaseActor", covariant=True)


class _ActorDecorator(Protocol[_A_co]):
    """The type of ``agent``, ``tool`` and ``llm``: ``@tool`` gives a ``Tool``, and
    ``@tool(name=..., ...)`` a decorator giving one (for type checkers: at run time they are
    plain functions)."""

    @overload
    def __call__(
        self,
        fn: Handler,
        *,
        name: str | None = None,
        description: str | None = None,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        **options: Any,
    ) -> _A_co: ...

    @overload
    def __call__(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        **options: Any,
    ) -> Callable[[Handler], _A_co]: ...


# Characters that would make an address ambiguous: "::" separates levels, "[i]" marks a
# parallel member and "#n" numbers repeated calls. A single ':' inside a name is fine, but not
# at either end: "a:" + "::" + "b" and "a" + "::" + ":b" would both be "a:::b".
_BAD_NAME = re.compile(r"::|[\[\]#\n]|^:|:$")

_NAME_RULE = (
    "a non-empty str without '::', '[', ']', '#', a newline, or a ':' at either end "
    "(these build execution addresses)"
)


def _is_async_callable(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _signature_problem(handler: Any) -> str | None:
    """Why ``handler`` cannot take ``(input, context, state)`` (``None`` when it can, or when
    its signature cannot be read). Checked at definition: otherwise every call would fail
    with the same ``TypeError``."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return None  # a builtin without a readable signature: its first call will tell
    try:
        signature.bind(None, "", None)
    except TypeError as exc:
        return f"{getattr(handler, '__qualname__', type(handler).__name__)}{signature}: {exc}"
    return None


def name_problem(name: Any, what: str) -> str | None:
    """Why ``name`` cannot be a segment of an address (``None`` when it can).

    The one rule for every name that goes into an address as written: actor names and event
    tags. ``what`` says which (``"actor name"``, ``"tag"``) in the message.
    """
    if not isinstance(name, str) or not name.strip() or _BAD_NAME.search(name):
        return f"{what} {name!r} is not allowed: it must be {_NAME_RULE}"
    return None


def _check_name(name: Any) -> None:
    # Checked here rather than by a field validator, whose ValueError pydantic would wrap in a
    # ValidationError outside the library's error hierarchy.
    problem = name_problem(name, "actor name")
    if problem is not None:
        raise ActorDefinitionError(problem)


def describe_validation(error: ValidationError) -> str:
    """``"field.sub: message; other: message"``: a pydantic error on one line."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(input)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def describe_unknown(data: Mapping[str, Any], options: Collection[str]) -> str | None:
    """``"unknown option 'tga' (did you mean 'tag'?); the options are: ..."`` or ``None``.

    A constructor's keywords that are not among ``options``: a misspelt option must fail
    loudly, naming itself, rather than be ignored.
    """
    unknown = [key for key in data if key not in options]
    if not unknown:
        return None
    named = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), options, n=1)
        named.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown option{plural} {', '.join(named)}; the options are: {', '.join(options)}"


class BaseActor(BaseModel):
    """Something an ``ExecutionEvent`` can run. Use ``Agent``, ``Tool`` or ``LLM``.

    ``cacheable`` actors may have their results reused for an identical input (keyed by
    name, ``version`` and input); ``retry`` and ``circuit_breaker`` are policies that apply to
    every call of this actor unless the event sets its own.
    """

    # extra="forbid": a misspelt option (cachable=True) is an error naming it, not ignored.
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    kind: ClassVar[str] = "actor"

    name: str
    description: str = ""
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None = None
    handler: Handler
    cacheable: bool = False
    version: str = "1"
    retry: RetryPolicy | None = None
    circuit_breaker: CircuitBreaker | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        # Any field pydantic rejects (cacheable="maybe", version=None, ...) is a definition
        # error too, reported in the library's own hierarchy.
        unknown = describe_unknown(data, type(self).model_fields)
        if unknown is not None:
            raise ActorDefinitionError(f"actor {data.get('name')!r}: {unknown}")
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ActorDefinitionError(
                f"actor {data.get('name')!r}: {describe_validation(exc)}"
            ) from exc

    @model_validator(mode="before")
    @classmethod
    def _check_definition(cls, data: Any) -> Any:
        # Raised before pydantic's own checks so the message names the actor and the fix.
        if not isinstance(data, dict):
            return data
        name = data.get("name")
        _check_name(name)
        try:
            check_policy("retry", data.get("retry"), RetryPolicy)
            check_policy("circuit_breaker", data.get("circuit_breaker"), CircuitBreaker)
        except ConfigurationError as exc:
            raise ActorDefinitionError(f"actor {name!r}: {exc}") from None
        handler = data.get("handler")
        if handler is None or not callable(handler):
            raise ActorDefinitionError(
                f"actor {name!r} needs a handler: a function (input, context, state), async "
                "or plain (a plain one runs in a worker thread)"
            )
        if inspect.isasyncgenfunction(handler) or inspect.isasyncgenfunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an object's __call__
        ):
            raise ActorDefinitionError(
                f"actor {name!r}: its handler is an async generator (it yields); a handler "
                "returns its result. Collect what it yields and return that, or call the "
                "generator from inside an async def handler"
            )
        problem = _signature_problem(handler)
        if problem is not None:
            raise ActorDefinitionError(
                f"actor {name!r}: its handler cannot be called as handler(input, context, "
                f"state) ({problem}); give it those three parameters"
            )
        model = data.get("input_model")
        if model is None:
            raise ActorDefinitionError(
                f"actor {name!r} has no input_model: pass a pydantic BaseModel subclass "
                "describing its input"
            )
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ActorDefinitionError(
                f"actor {name!r}: input_model must be a pydantic BaseModel subclass, got {model!r}"
            )
        out = data.get("output_model")
        if out is not None and not (isinstance(out, type) and issubclass(out, BaseModel)):
            raise ActorDefinitionError(
                f"actor {name!r}: output_model must be a pydantic BaseModel subclass or None, "
                f"got {out!r}"
            )
        return data

    @functools.cached_property
    def runs_in_thread(self) -> bool:
        """Whether the handler is a plain function, run in a worker thread of the state.

        (A cached property: read on every call, it lives in the instance's dict after the
        first read, which costs what reading a field does.)
        """
        return not _is_async_callable(self.handler)

    def invoke(self, input: BaseModel, context: str, state: Any) -> Awaitable[Any]:
        """One call of the handler, as an awaitable: the handler's own coroutine, or its
        run in one of ``state``'s worker threads (``ExecutionState.threads``) for a plain
        function. No policy, no record: ``ExecutionEvent`` calls go through the state."""
        if self.runs_in_thread:
            runner: Any = state.threads
            return runner.run(self.handler, input, context, state)  # type: ignore[no-any-return]
        return self.handler(input, context, state)

    def validate_input(self, value: Any) -> BaseModel:
        """``value`` as an instance of ``input_model`` (dicts and other models are validated)."""
        if type(value) is self.input_model:
            return value
        try:
            if isinstance(value, BaseModel):
                value = value.model_dump()
            return self.input_model.model_validate(value)
        except ValidationError as exc:
            raise ActorInputError(
                f"input for {self.kind} {self.name!r} does not fit "
                f"{self.input_model.__name__}: {describe_validation(exc)}"
            ) from exc

    def validate_output(self, value: Any) -> Any:
        """The handler's return value, validated against ``output_model`` when there is one."""
        model = self.output_model
        if model is None or type(value) is model:
            return value
        try:
            if isinstance(value, BaseModel):
                value = value.model_dump()
            return model.model_validate(value)
        except ValidationError as exc:
            raise ActorOutputError(
                f"{self.kind} {self.name!r} returned a value that does not fit "
                f"{model.__name__}: {describe_validation(exc)}"
            ) from exc

    def __hash__(self) -> int:
        return hash((type(self), self.name, self.version))


class Agent(BaseActor):
    """An actor that decides and delegates (usually calls other events)."""

    kind: ClassVar[str] = "agent"


class Tool(BaseActor):
    """An actor that does one concrete thing (search, parse, compute)."""

    kind: ClassVar[str] = "tool"


class LLM(BaseActor):
    """An actor that calls a language model."""

    kind: ClassVar[str] = "llm"


def _decorator(actor_cls: type[_A]) -> _ActorDecorator[_A]:
    def decorate(
        fn: Handler | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        **options: Any,
    ) -> Any:
        def build(handler: Handler) -> _A:
            actor_name = name or getattr(handler, "__name__", "")
            model = input_model
            if model is None:
                model = _first_parameter_model(handler)
                if model is None:
                    raise ActorDefinitionError(
                        f"actor {actor_name!r}: cannot infer input_model from the first "
                        "parameter's annotation; annotate it with a pydantic BaseModel "
                        "subclass importable at module level, or pass input_model=..."
                    )
            return actor_cls(
                name=actor_name,
                description=description
                if description is not None
                else (inspect.getdoc(handler) or ""),
                input_model=model,
                output_model=output_model,
                handler=handler,
                **options,
            )

        if fn is not None and not callable(fn):
            # @tool("name") rather than @tool(name="name"): say so, not "cannot infer".
            raise ActorDefinitionError(
                f"{actor_cls.__name__.lower()}() takes the handler function, and its options "
                f"by keyword (@{actor_cls.__name__.lower()}(name=...)); got {fn!r}"
            )
        return build(fn) if fn is not None else build

    decorate.__name__ = actor_cls.__name__.lower()
    decorate.__doc__ = (
        f"Turn a function (async, or plain: run in a worker thread) into a "
        f"``{actor_cls.__name__}``; usable bare or with options."
    )
    return decorate


def _first_parameter_model(handler: Any) -> type[BaseModel] | None:
    try:
        params = list(inspect.signature(handler).parameters.values())
        hints = get_type_hints(handler)
    except (TypeError, ValueError, NameError):
        return None
    if not params:
        return None
    hint = hints.get(params[0].name)
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


agent = _decorator(Agent)
tool = _decorator(Tool)
llm = _decorator(LLM)
