"""``RayExecutor``: members run as Ray tasks, on one machine or a cluster (extra ``ray``).

::

    executor = RayExecutor()                          # a local Ray, started on first use
    executor = RayExecutor(address="auto")            # the cluster this machine belongs to
    executor = RayExecutor(address="ray://head:10001")   # a remote cluster (Ray Client)
    async with state.parallel(max_workers=16, executor=executor) as p:
        ...

Each attempt of a member is one Ray task (``max_retries=0``: retries are the group's, decided
here, and each is a new task). Cancelling a member (a timeout, fail-fast, leaving the block by
an exception) cancels its task with ``ray.cancel`` (``force=True`` by default: the worker
running it is killed, as a process pool's would be), so no task outlives its group.

Ray is imported, and connected to, when the first member is sent (``connect()`` does it
before): ``address`` and ``init_options`` go to ``ray.init`` unless Ray is initialised
already, in which case that connection is used. ``num_cpus`` (and ``resources``) is what each
task asks of the cluster. Members are sent with Ray's cloudpickle: unlike the process pool,
functions defined in ``__main__`` or a notebook can be sent.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any

from rh_agents.errors import ConfigurationError, MissingDependencyError, RemoteExecutionError
from rh_agents.executors.base import RemoteExecutor
from rh_agents.executors.wire import dumps, state_pickler, unimportable_module
from rh_agents.executors.worker import run_request

__all__ = ["RayExecutor"]


class RayExecutor(RemoteExecutor):
    """Members as Ray tasks (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1,
        resources: dict[str, float] | None = None,
        init_options: dict[str, Any] | None = None,
        force_cancel: bool = True,
    ) -> None:
        super().__init__()
        if address is not None and not isinstance(address, str):
            raise ConfigurationError(
                f"RayExecutor address must be None, 'auto' or 'ray://host:port', got {address!r}"
            )
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int | float) or num_cpus < 0:
            raise ConfigurationError(f"num_cpus must be a number >= 0, got {num_cpus!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.init_options = dict(init_options or {})
        self.force_cancel = force_cancel
        self._ray: Any = None
        self._task: Any = None
        self._pickler: Any = None
        self._cloudpickle: Any = None
        self._exported = False

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, num_cpus={self.num_cpus})"

    def connect(self) -> Any:
        """Import Ray and connect (``ray.init``) if that is not done yet; returns ``ray``."""
        if self._ray is not None:
            return self._ray
        try:
            ray = importlib.import_module("ray")
        except ImportError as exc:
            raise MissingDependencyError(
                "RayExecutor needs Ray: pip install 'rh-agents[ray]'"
            ) from exc
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_options)
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "max_retries": 0}
        if self.resources:
            options["resources"] = self.resources
        self._task = ray.remote(**options)(run_request)
        cloudpickle = importlib.import_module("ray.cloudpickle")
        self._pickler = state_pickler(cloudpickle.Pickler)
        self._cloudpickle = cloudpickle
        self._ray = ray
        return ray

    def _sendable(self, obj: Any, label: str, what: str) -> None:
        # A function of a module the workers cannot import (one made at run time) goes by
        # value, with its module (cloudpickle sends __main__'s by value by itself).
        module = unimportable_module(obj)
        if module is not None and module != "__main__":
            self.connect()
            self._cloudpickle.register_pickle_by_value(sys.modules[module])

    def _dumps(self, obj: Any) -> bytes:
        self.connect()
        return dumps(obj, self._pickler)

    async def _send(self, request: bytes, label: str) -> bytes:
        ray = self.connect()
        if self._exported:
            ref = self._task.remote(request)
        else:
            # The first submission sends the task's function to the cluster (tens to hundreds
            # of milliseconds): in a thread, so that the event loop goes on meanwhile.
            submit = asyncio.get_running_loop().run_in_executor(None, self._task.remote, request)
            try:
                ref = await asyncio.shield(submit)
            except asyncio.CancelledError:
                submit.add_done_callback(self._cancel_submitted)
                raise
            self._exported = True
        try:
            reply: bytes = await ref
        except asyncio.CancelledError:
            ray.cancel(ref, force=self.force_cancel)
            raise
        except ray.exceptions.RayError as exc:
            raise RemoteExecutionError(f"Ray could not run {label}: {exc}") from exc
        return reply

    def _cancel_submitted(self, submit: asyncio.Future[Any]) -> None:
        if not submit.cancelled() and submit.exception() is None:
            self._ray.cancel(submit.result(), force=self.force_cancel)
