"""What core asks of the layers above it: small protocols, and where their engines plug in.

Core runs calls and groups; it does not apply retry policies, write checkpoints or cache
results itself. Those engines live above it (``rh_agents.engines``, ``rh_agents.recovery``)
and reach core through the three protocols below, so that nothing in core imports them::

    CallRunner     runs one actor call or one group member under its policies
    RecoveryHook   answers calls from a stored run and checkpoints finished ones
    ResultCache    answers cacheable calls from earlier identical ones

A state is given its recovery and cache objects directly (``ExecutionState(recovery=...,
cache=...)``). The call runner is installed once per process by the engine that provides it
(``install_call_runner``; importing ``rh_agents`` installs the policy engine), and a state
without one runs every call plainly, with no policy applied::

    from rh_agents.core import hooks
    hooks.install_call_runner(MyRunner())     # every state made afterwards uses it
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
    "CallRunner",
    "PlainCallRunner",
    "RecoveryHook",
    "ResultCache",
    "ResumeFactory",
    "call_runner",
    "install_call_runner",
    "install_resume_factory",
    "resume_factory",
]


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
    """Checkpoints and replay for one run (``rh_agents.recovery.Recovery``)."""

    def attach(self, state: ExecutionState) -> str:
        """Bind to ``state``; returns the run id."""
        ...

    def recovered_result(self, address: str, actor: BaseActor) -> ExecutionResult[Any] | None:
        """The stored result of the call at ``address``, if it is to be replayed."""
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
    ) -> Awaitable[tuple[Any, int, str]]:
        """``(value, attempts, source)``: from the cache, a shared call, or ``call()``."""
        ...


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
