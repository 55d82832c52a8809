"""What core asks of the layers above it: small protocols, and where their engines plug in.

Core runs calls and groups; it does not apply retry policies, write checkpoints, cache
results or run members in other processes itself. Those engines live above it
(``rh_agents.engines``, ``rh_agents.recovery``, ``rh_agents.executors``) and reach core
through the protocols below, so that nothing in core imports them::

    CallRunner       runs one actor call or one group member under its policies
    RecoveryHook     answers calls from a stored run and checkpoints finished ones
    ResultCache      answers cacheable calls from earlier identical ones
    MemberExecutor   runs a group's members somewhere else (``executor=``: processes, Ray)

A state is given its recovery and cache objects directly (``ExecutionState(recovery=...,
cache=...)``). The call runner is installed once per process by the engine that provides it
(``install_call_runner``; importing ``rh_agents`` installs the policy engine), and a state
without one runs every call plainly, with no policy applied::

    from rh_agents.core import hooks
    hooks.install_call_runner(MyRunner())     # every state made afterwards uses it

A group's ``executor=`` is turned into a ``MemberExecutor`` by the resolver that
``rh_agents.executors`` installs (``install_executor_resolver``): ``"processes"``, a
``RayExecutor(...)``. ``None`` (or ``"loop"``) is the event loop, and needs no resolver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from rh_agents.errors import ConfigurationError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from rh_agents.core.actors import BaseActor
    from rh_agents.core.context import Frame
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member
    from rh_agents.core.results import ExecutionResult

__all__ = [
    "NO_INPUT",
    "CallRunner",
    "ExecutorResolver",
    "MemberExecutor",
    "PlainCallRunner",
    "RecoveryHook",
    "ResultCache",
    "ResumeFactory",
    "call_runner",
    "install_call_runner",
    "install_executor_resolver",
    "install_resume_factory",
    "resolve_executor",
    "resume_factory",
]


class _NoInput:
    """The type of ``NO_INPUT``."""

    def __repr__(self) -> str:
        return "NO_INPUT"


# What ``recovered_result`` gets when its caller does not pass the call's input (an input
# may be anything, ``None`` included): the stored result is then matched without it.
NO_INPUT: Any = _NoInput()


class CallRunner(Protocol):
    """Runs calls under their policies (retries, circuit breakers, rate limits)."""

    def invoke_actor(
        self,
        state: ExecutionState,
        event: ExecutionEvent[Any],
        validated: BaseModel,
        context: str,
        frame: Frame,
    ) -> Awaitable[tuple[Any, int]]:
        """Run ``event``'s handler; gives ``(value, attempts)``."""
        ...

    def run_member(
        self,
        state: ExecutionState,
        group: ParallelExecutionManager[Any],
        member: Member,
        frame: Frame,
    ) -> Awaitable[Any]:
        """Run one member of ``group`` (a callable member may be called again to retry)."""
        ...


class RecoveryHook(Protocol):
    """Checkpoints and replay for one run (``rh_agents.recovery.Recovery``).

    Each call is known by its key: its address, or for a call a retried parent repeats at
    its address, ``address::#n`` (and what it makes, under that key: see
    ``core.context.CALL_MARK``). ``recovered_result`` may answer with a later stored call at
    the address than the key asked for (a failed one passed over): its result's ``address``
    then names that call's key, and the caller counts on from it."""

    def attach(self, state: ExecutionState) -> str:
        """Bind to ``state``; returns the run id."""
        ...

    def recovered_result(
        self, address: str, actor: BaseActor, input: Any = ...
    ) -> ExecutionResult[Any] | None:
        """The stored result of the call at ``address``, if it is to be replayed (given
        ``input``, the call's input as passed: only if it is the input of the stored call)."""
        ...

    @property
    def can_replay(self) -> bool:
        """Whether any call may be replayed at all (a resumed run with results stored): when
        not, callers skip ``replays`` and what its address costs to make."""
        ...

    def replays(self, address: str, actor: BaseActor, input: Any) -> bool:
        """Whether a call of ``actor`` with ``input`` at ``address`` would be replayed
        (``recovered_result`` would answer it), changing nothing."""
        ...

    @property
    def runs_everything(self) -> bool:
        """Whether every call must run (a validating resume): no stored result, and no
        cached one, may stand in for it."""
        ...

    async def on_event_finished(
        self,
        address: str,
        actor: BaseActor,
        validated: BaseModel | None,
        result: ExecutionResult[Any],
    ) -> None:
        """Checkpoint one finished call."""
        ...

    async def save_checkpoint(self) -> None:
        """Write what is pending now."""
        ...

    def mark_failed(self) -> None:
        """The run ended by an exception."""
        ...

    def mark_interrupted(self) -> str:
        """The run was stopped by Ctrl-C (``rh_agents.run``); returns how to resume it."""
        ...

    async def aclose(self) -> None:
        """Write the rest and record the run's final status."""
        ...


class ResultCache(Protocol):
    """Answers cacheable calls from earlier identical ones (``rh_agents.recovery.ActorCache``)."""

    def holds(self, actor: BaseActor, validated: BaseModel) -> bool:
        """Whether a call of ``actor`` with ``validated`` input is answered without running."""
        ...

    def run(
        self,
        actor: BaseActor,
        validated: BaseModel,
        call: Callable[[], Awaitable[tuple[Any, int]]],
        *,
        join_timeout: float | None = None,
    ) -> Awaitable[tuple[Any, int, str]]:
        """``(value, attempts, source)``: from the cache, a shared call, or ``call()``.
        ``join_timeout`` is the event's own ``timeout`` (which ``call()`` applies): it bounds
        a wait for an identical call already running too."""
        ...


class MemberExecutor(Protocol):
    """Runs a group's members somewhere other than the event loop (``executor=``).

    The group itself stays on the driver (the process that opened it): its limits, retries,
    timeouts, error strategy, dependencies and results, and the records and checkpoints of
    the calls it makes. One *attempt* goes to the executor at a time, as an awaitable that
    cancelling cancels the remote work: a member that is an event call sends its actor's
    handler (``run_handler``), a zero-argument callable member is sent whole
    (``run_callable``). Records published over there come home with the reply, with the
    addresses they would have had here.
    """

    name: str

    def check_member(self, source: Any, label: str) -> None:
        """Raise an ``InvalidMemberError`` naming ``label`` if ``source`` cannot be sent."""
        ...

    def check_function(self, fn: Any, label: str) -> None:
        """The same for a ``map()`` function, called with each item."""
        ...

    def run_handler(
        self,
        state: ExecutionState,
        event: ExecutionEvent[Any],
        validated: BaseModel,
        context: str,
        frame: Frame,
    ) -> Awaitable[Any]:
        """One call of ``event``'s handler over there; gives its value (or raises its error)."""
        ...

    def run_callable(self, state: ExecutionState, frame: Frame, fn: Any) -> Awaitable[Any]:
        """One call of the member ``fn`` over there (awaited there if it returns an awaitable)."""
        ...


ExecutorResolver = Callable[[Any], "MemberExecutor | None"]


class ResumeFactory(Protocol):
    """Makes the ``RecoveryHook`` that resumes a stored run (``ExecutionState.resume``)."""

    def __call__(self, backend: Any, **options: Any) -> RecoveryHook: ...


class PlainCallRunner:
    """Runs every call as it is, with no policy: what core does with no engine installed."""

    __slots__ = ()

    async def invoke_actor(
        self,
        state: ExecutionState,
        event: ExecutionEvent[Any],
        validated: BaseModel,
        context: str,
        frame: Frame,
    ) -> tuple[Any, int]:
        actor = event.actor
        if event.timeout is None:
            return await actor.invoke(validated, context, state), 1
        async with asyncio.timeout(event.timeout):
            return await actor.invoke(validated, context, state), 1

    async def run_member(
        self,
        state: ExecutionState,
        group: ParallelExecutionManager[Any],
        member: Member,
        frame: Frame,
    ) -> Any:
        return await member.open()


# One of each per process, installed by the engines when they are imported.
_call_runner: CallRunner = PlainCallRunner()
_resume_factory: ResumeFactory | None = None
_executor_resolver: ExecutorResolver | None = None
_LOOP = ("loop", "local")


def install_call_runner(runner: CallRunner) -> None:
    """Make ``runner`` run the calls of every state made from now on."""
    global _call_runner
    _call_runner = runner


def call_runner() -> CallRunner:
    """The call runner installed now (``PlainCallRunner`` if no engine installed one)."""
    return _call_runner


def install_resume_factory(factory: ResumeFactory) -> None:
    """Make ``factory`` build the recovery of ``ExecutionState.resume``."""
    global _resume_factory
    _resume_factory = factory


def resume_factory() -> ResumeFactory:
    """The installed resume factory; an error saying what to import if there is none."""
    if _resume_factory is None:
        raise ConfigurationError(
            "resuming needs the recovery engine: import rh_agents (or rh_agents.recovery) first"
        )
    return _resume_factory


def install_executor_resolver(resolver: ExecutorResolver) -> None:
    """Make ``resolver`` turn a group's ``executor=`` into a ``MemberExecutor``."""
    global _executor_resolver
    _executor_resolver = resolver


def resolve_executor(spec: Any) -> MemberExecutor | None:
    """The ``MemberExecutor`` of ``executor=spec``; ``None`` for the event loop.

    ``None``, ``"loop"`` and ``"local"`` are the event loop; anything else goes to the
    installed resolver (a ``ConfigurationError`` if there is none, or if it knows nothing of
    ``spec``).
    """
    if spec is None or (type(spec) is str and spec in _LOOP):
        return None
    if _executor_resolver is None:
        raise ConfigurationError(
            f"executor={spec!r} needs the executors: import rh_agents (or rh_agents.executors) "
            "first"
        )
    return _executor_resolver(spec)
