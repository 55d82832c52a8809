"""Where a group's members run: ``executor=`` on ``state.parallel``, ``parallel_execute`` and
``parallel_map``.

::

    state.parallel(max_workers=4)                              # the event loop (default)
    state.parallel(max_workers=4, executor="processes")        # a shared pool of processes
    state.parallel(max_workers=4, executor=ProcessExecutor(max_processes=2))
    state.parallel(max_workers=16, executor=RayExecutor(address="auto"))   # extra `ray`

The group stays on the driver whatever the executor: its limits, retries, timeouts, error
strategy, dependencies, priorities and results, the records and checkpoints of the calls it
makes. What goes to the executor is one attempt at a time of each member: an event call's
handler (its input as pydantic JSON), or a zero-argument callable. Records published over
there come home with the addresses they would have had here. See ``docs/executors.md``.

Importing this package (importing ``rh_agents`` does) installs the resolver that core calls
for ``executor=`` (``rh_agents.core.hooks``).
"""

from __future__ import annotations

from typing import Any

from rh_agents.core import hooks
from rh_agents.errors import ConfigurationError
from rh_agents.executors.base import RemoteExecutor
from rh_agents.executors.processes import ProcessExecutor
from rh_agents.executors.ray_executor import RayExecutor

__all__ = ["ProcessExecutor", "RayExecutor", "RemoteExecutor", "resolve", "shared_processes"]

_shared: dict[str, Any] = {}


def shared_processes() -> ProcessExecutor:
    """The pool that ``executor="processes"`` names: one per driver process, made on first use
    (``os.cpu_count()`` processes, started as members need them, closed at exit)."""
    pool = _shared.get("processes")
    if pool is None or pool._closed:
        pool = _shared["processes"] = ProcessExecutor()
    assert isinstance(pool, ProcessExecutor)
    return pool


def resolve(spec: Any) -> hooks.MemberExecutor | None:
    """The executor ``executor=spec`` names (installed as core's resolver)."""
    if isinstance(spec, RemoteExecutor):
        return spec
    if spec == "processes":
        return shared_processes()
    if spec == "ray":
        ray = _shared.get("ray")
        if ray is None:
            ray = _shared["ray"] = RayExecutor()
        assert isinstance(ray, RayExecutor)
        return ray
    if all(hasattr(spec, name) for name in ("check_member", "run_handler", "run_callable")):
        mine: hooks.MemberExecutor = spec  # an executor of your own
        return mine
    raise ConfigurationError(
        f"unknown executor {spec!r}; use None or 'loop' (the event loop), 'processes', 'ray', "
        "or an executor object: ProcessExecutor(...), RayExecutor(address=...)"
    )


hooks.install_executor_resolver(resolve)
