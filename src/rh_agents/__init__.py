"""rh_agents: multi-agent AI workflows with parallel execution done right.

The names users need are importable from here as well as from their home modules::

    from rh_agents import ExecutionState, ExecutionEvent, Tool, ErrorStrategy

``rh_agents.run(main())`` runs a program's ``main()`` as ``asyncio.run`` does, with a clean
stop on Ctrl-C (see ``rh_agents.core.interrupt``).
"""

# The engines core runs through its hooks: policies on every call, recovery for resume().
import rh_agents.engines
import rh_agents.recovery  # noqa: F401  (installs the resume factory)
from rh_agents.bus_handlers import EventPrinter, ParallelEventPrinter
from rh_agents.core.actors import LLM, Agent, BaseActor, Tool, agent, llm, tool
from rh_agents.core.bus import EventBus
from rh_agents.core.clock import Clock, SystemClock
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.interrupt import interrupt_requested, run
from rh_agents.core.parallel import (
    BatchMode,
    ErrorStrategy,
    GroupStatistics,
    GroupStatus,
    ParallelEventGroup,
    ParallelExecutionManager,
)
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.core.watchdog import Watchdog
from rh_agents.errors import (
    ActorDefinitionError,
    ActorInputError,
    ActorOutputError,
    CheckpointWarning,
    CircuitOpenError,
    ConfigurationError,
    CoroutineResultWarning,
    CorruptStateError,
    DependencyError,
    DuplicateMemberError,
    FailureThresholdError,
    GroupClosedError,
    GroupFailedError,
    InvalidMemberError,
    InvalidRunIdError,
    LoopBlockedWarning,
    MemberCancelledError,
    MemberFailedError,
    MemberSkippedError,
    MissingDependencyError,
    OversizedGroupWarning,
    ParallelError,
    ParallelTimeoutError,
    RateLimitedError,
    RecoveryError,
    RemoteExecutionError,
    ResultSchemaError,
    RetryPolicyError,
    RHAgentsError,
    RHAgentsWarning,
    RunLockedError,
    SequentialGroupWarning,
    SubscriberShutdownWarning,
    UnawaitedCallWarning,
    UnknownRunError,
    UnusedGroupWarning,
)
from rh_agents.executors import ProcessExecutor, RayExecutor  # (installs executor=)
from rh_agents.resilience import AdaptiveLimit, CircuitBreaker, RateLimit, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "ActorDefinitionError",
    "ActorInputError",
    "ActorOutputError",
    "AdaptiveLimit",
    "Agent",
    "BaseActor",
    "BatchMode",
    "CheckpointWarning",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConfigurationError",
    "CoroutineResultWarning",
    "CorruptStateError",
    "DependencyError",
    "DuplicateMemberError",
    "ErrorStrategy",
    "EventBus",
    "EventPrinter",
    "ExecutionEvent",
    "ExecutionResult",
    "ExecutionState",
    "FailureThresholdError",
    "GroupClosedError",
    "GroupFailedError",
    "GroupStatistics",
    "GroupStatus",
    "InvalidMemberError",
    "InvalidRunIdError",
    "LoopBlockedWarning",
    "MemberCancelledError",
    "MemberFailedError",
    "MemberSkippedError",
    "MissingDependencyError",
    "OversizedGroupWarning",
    "ParallelError",
    "ParallelEventGroup",
    "ParallelEventPrinter",
    "ParallelExecutionManager",
    "ParallelTimeoutError",
    "ProcessExecutor",
    "RHAgentsError",
    "RHAgentsWarning",
    "RateLimit",
    "RateLimitedError",
    "RayExecutor",
    "RecoveryError",
    "RemoteExecutionError",
    "ResultSchemaError",
    "ResultStatus",
    "RetryPolicy",
    "RetryPolicyError",
    "RunLockedError",
    "SequentialGroupWarning",
    "SubscriberShutdownWarning",
    "SystemClock",
    "Tool",
    "UnawaitedCallWarning",
    "UnknownRunError",
    "UnusedGroupWarning",
    "Watchdog",
    "__version__",
    "agent",
    "interrupt_requested",
    "llm",
    "run",
    "tool",
]
