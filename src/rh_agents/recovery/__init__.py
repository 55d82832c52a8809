"""State recovery and caching: checkpoints by address, resume after a crash, actor caches.

::

    from rh_agents.recovery import CheckpointPolicy, Recovery

    state = ExecutionState(run_id="nightly", recovery=Recovery(
        checkpoint=CheckpointPolicy.batched(count=500, seconds=1.0)))   # the default store
    ...                                            # the process dies half-way through a group
    state = ExecutionState.resume("nightly")
    ...                                            # same code: finished events are skipped
    state = ExecutionState(run_id="nightly", recovery=Recovery(resume="auto"))  # either

Runs are kept in ``default_state_path()`` unless a path is given: ``$RH_AGENTS_STATE``, else
``~/.local/state/rh_agents/state.db`` (see ``rh_agents.recovery.backend``).

See ``docs/recovery.md`` for the guarantees and the loss window. Importing this package
installs ``Recovery`` as the engine behind ``ExecutionState.resume`` (a hook of core's).
"""

from typing import Any

from rh_agents.core import hooks
from rh_agents.recovery.backend import STATE_ENV_VAR, StateBackend, default_state_path
from rh_agents.recovery.cache import ActorCache, MemoryCacheStore, SQLiteCacheStore, cache_key
from rh_agents.recovery.json_backend import JSONBackend
from rh_agents.recovery.opening import open_backend
from rh_agents.recovery.policy import CheckpointPolicy
from rh_agents.recovery.records import (
    CheckpointRecord,
    ReplayDifference,
    ReplayMode,
    RunInfo,
    RunStatus,
)
from rh_agents.recovery.session import Recovery
from rh_agents.recovery.sqlite_backend import SQLiteBackend

__all__ = [
    "STATE_ENV_VAR",
    "ActorCache",
    "CheckpointPolicy",
    "CheckpointRecord",
    "JSONBackend",
    "MemoryCacheStore",
    "Recovery",
    "ReplayDifference",
    "ReplayMode",
    "RunInfo",
    "RunStatus",
    "SQLiteBackend",
    "SQLiteCacheStore",
    "StateBackend",
    "cache_key",
    "default_state_path",
    "open_backend",
]


def _resume(backend: Any, **options: Any) -> Recovery:
    return Recovery(backend, resume=True, **options)


hooks.install_resume_factory(_resume)
