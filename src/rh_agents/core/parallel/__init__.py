"""Parallel execution: groups of independent members run concurrently under limits.

Layering: ``strategy`` and ``group`` are plain types; ``member`` turns what ``add`` receives
into awaitables; ``slots`` holds the arbiter of each limit (a group's, the global one);
``manager`` is the scheduler that owns the workers and results of one group.
``ExecutionState.parallel()`` is the way in.
"""

from rh_agents.core.parallel.group import GroupStatistics, ParallelEventGroup
from rh_agents.core.parallel.manager import ParallelExecutionManager
from rh_agents.core.parallel.member import Member
from rh_agents.core.parallel.metrics import Distribution, GroupMetrics
from rh_agents.core.parallel.slots import MemberSlot, SlotArbiter
from rh_agents.core.parallel.strategy import BatchMode, ErrorStrategy, GroupStatus
from rh_agents.resilience.retry import RetryPolicy

__all__ = [
    "BatchMode",
    "Distribution",
    "ErrorStrategy",
    "GroupMetrics",
    "GroupStatistics",
    "GroupStatus",
    "Member",
    "MemberSlot",
    "ParallelEventGroup",
    "ParallelExecutionManager",
    "RetryPolicy",
    "SlotArbiter",
]
