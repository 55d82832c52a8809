"""Members of a group: what was added, and how it is turned into an awaitable."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import Context
from types import CoroutineType, FunctionType, GeneratorType, MethodType
from typing import TYPE_CHECKING, Any

from rh_agents.core.context import Frame
from rh_agents.core.event_call import EventCall
from rh_agents.core.results import ExecutionResult
from rh_agents.errors import InvalidMemberError

if TYPE_CHECKING:
    from rh_agents.resilience.retry import RetryPolicy

__all__ = [
    "Member",
    "MemberFactory",
    "check_member",
    "describe_member",
    "is_event_call",
    "reused_coroutine",
    "takes_no_arguments",
]

MemberFactory = Coroutine[Any, Any, Any] | Awaitable[Any] | Callable[[], Awaitable[Any]]


async def reused_coroutine(member: Member, coroutine: Any) -> Any:
    """What a member runs in place of a coroutine that has started already: the same
    coroutine object added as two members (or awaited elsewhere before). Awaiting it would
    raise Python's bare ``RuntimeError`` ("cannot reuse already awaited coroutine", or "is
    being awaited already", depending on timing); this says what happened and what to do.
    (Checked as a worker takes the member: ``cr_frame`` is gone once it ended, ``cr_await``
    is set while another member awaits it.)"""
    raise InvalidMemberError(
        f"member {member.name or member.index}: the coroutine "
        f"{getattr(coroutine, '__qualname__', '?')} was already started or closed (the same "
        "coroutine object added twice, or awaited before it was added); a coroutine runs "
        "once: add a new call for each member, or a zero-argument callable "
        "(p.add(lambda: fn(x)))"
    )


def is_event_call(obj: Any) -> bool:
    """Whether ``obj`` is an ``ExecutionEvent`` call (an ``EventCall``: it retries inside)."""
    return type(obj) is EventCall


def describe_member(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{type(obj).__name__} {name}" if name else repr(obj)[:80]


def check_member(obj: Any) -> None:
    """Reject what can never run, with a hint for the common mistakes."""
    if inspect.iscoroutine(obj) or inspect.isawaitable(obj):
        return
    from rh_agents.core.events import ExecutionEvent

    if isinstance(obj, ExecutionEvent):
        raise InvalidMemberError(
            f"p.add() got the event of {obj.actor.name!r} itself; add a call of it: "
            "p.add(event(input, context, state))"
        )
    if callable(obj):
        if _required_parameters(obj) > 0:
            raise InvalidMemberError(
                f"p.add() got {describe_member(obj)}, which needs arguments; pass a call "
                "(p.add(fn(x))) or a zero-argument callable (p.add(lambda: fn(x)))"
            )
        return
    raise InvalidMemberError(
        f"p.add() takes a coroutine, an awaitable or a zero-argument callable returning one; "
        f"got {type(obj).__name__} {obj!r:.60}"
    )


# A function taking *args or **kwargs may be a wrapper whose real parameters are those of the
# function it wraps (``functools.wraps``): for it, ``inspect.signature`` decides.
_VARIADIC = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS
_NEEDED_KINDS = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


def takes_no_arguments(fn: FunctionType) -> bool:
    """Whether plain function ``fn`` surely runs with no argument, read from its code object.

    ``False`` means "not surely": ``check_member`` then decides. This is what makes
    ``p.add(lambda: call(x))`` cost what ``p.add(call(x))`` costs: a few attribute reads
    instead of an ``inspect.signature`` per member.
    """
    code = fn.__code__
    if code.co_flags & _VARIADIC or code.co_kwonlyargcount:
        return False
    count = code.co_argcount
    if count == 0:
        return True
    defaults = fn.__defaults__
    return defaults is not None and len(defaults) >= count


def _required_parameters(fn: Callable[..., Any]) -> int:
    """How many arguments ``fn`` needs (positional, or keyword-only without a default)."""
    kind = type(fn)
    bound = 0
    if kind is MethodType and type(fn.__func__) is FunctionType:  # type: ignore[attr-defined]
        fn, bound = fn.__func__, 1  # type: ignore[attr-defined]
        kind = FunctionType
    if kind is FunctionType:
        code = fn.__code__
        if not code.co_flags & _VARIADIC:
            # The code object says it all (no wrapper): no signature object to build.
            positional = code.co_argcount - len(fn.__defaults__ or ())
            keyword = code.co_kwonlyargcount - len(fn.__kwdefaults__ or {})
            return max(positional - bound, 0) + keyword
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    empty = inspect.Parameter.empty
    return sum(1 for p in params if p.default is empty and p.kind in _NEEDED_KINDS)


class Member(Frame):
    """One member of a group. Owned by its manager; never shared between groups.

    ``source`` is the coroutine, awaitable or zero-argument callable given to ``add``; it is
    dropped as soon as the member has run, so finished members hold only their result.

    A member is also the ``Frame`` it runs in (its node of the execution tree, at
    ``group[index]``): the worker that takes it fills in the frame's place (state, group,
    slot, address) and makes it the current frame. One object per member rather than two: a
    group of a hundred thousand members allocates, and has the garbage collector walk, half
    as many.
    """

    __slots__ = (
        "context",
        "enqueued",
        "index",
        "is_call",
        "lent",
        "name",
        "pending_deps",
        "priority",
        "result",
        "retry",
        "source",
        "started",
        "timeout",
    )

    def __init__(
        self,
        index: int,
        source: Any,
        name: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        # The Frame's fields: its address is "" until it starts to run. Not
        # Frame.__init__: this is made per member (tests/test_add_forms.py checks that every
        # field of a Frame is set).
        self.address = ""
        self.attempts = 1  # calls started so far (the retry loop counts them)
        self._child_counts = None
        self._calls_at = None
        self.key = None
        self.children_running = 0
        self.state = None
        self.group_id = None
        self.parallel_index = index
        self.slot = None
        self.index = index
        self.source = source
        self.name = name
        self.priority = priority
        self.timeout = timeout
        self.retry = retry
        self.pending_deps = 0  # dependencies not completed yet (the group has the dependents)
        self.enqueued = 0.0
        self.started: float | None = None
        self.result: ExecutionResult[Any] | None = None
        # The context variables it runs with, when they are not the block's: taken at add()
        # (see adding.add); None, the usual case, runs it in its worker's copy of the block's.
        self.context: Context | None = None
        # Whether it is an event call (given, or made by its callable): that call's retries
        # are then the member's attempts (see engines.policy_runner).
        self.is_call = False
        # Seconds it ran with its worker slot lent (retry backoffs: see MemberSlot.lent): not
        # work its group's efficiency counts.
        self.lent = 0.0

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def rerunnable(self) -> bool:
        """A zero-argument callable can be called again for a retry; a coroutine cannot."""
        source = self.source
        return callable(source) and not inspect.isawaitable(source)

    def open(self) -> Awaitable[Any]:
        """The awaitable to run now (calls the factory for a callable member)."""
        source = self.source
        kind = type(source)
        # (A function is never awaitable: no isawaitable() for the common lambda.)
        if kind is CoroutineType or (kind is not FunctionType and inspect.isawaitable(source)):
            self.source = None  # a coroutine runs once
            if kind is CoroutineType:
                if source.cr_frame is None or source.cr_await is not None:
                    return reused_coroutine(self, source)  # (started already)
            elif kind is GeneratorType:  # a @types.coroutine generator: the same rule
                if inspect.getgeneratorstate(source) != inspect.GEN_CREATED:
                    return reused_coroutine(self, source)
            else:
                self.is_call = is_event_call(source)
            return source  # type: ignore[no-any-return,unused-ignore]
        made = source()
        if type(made) is CoroutineType:
            return made
        if is_event_call(made):
            self.is_call = True
        elif not inspect.isawaitable(made):
            raise InvalidMemberError(
                f"member {self.name or self.index}: the callable {describe_member(source)} "
                f"returned {type(made).__name__}, not an awaitable; make it async or return "
                "a coroutine"
            )
        return made  # type: ignore[no-any-return]

    def discard(self) -> None:
        """Close a member that will never run, so no 'coroutine was never awaited' warning."""
        source, self.source = self.source, None
        if isinstance(source, Coroutine):  # a coroutine or an event call
            source.close()
        elif inspect.isawaitable(source) and hasattr(source, "cancel"):
            source.cancel()
