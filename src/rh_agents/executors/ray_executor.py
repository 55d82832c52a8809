"""``RayExecutor``: members run on Ray, on one machine or a cluster (extra ``ray``).

::

    executor = RayExecutor()                          # a local Ray, started on first use
    executor = RayExecutor(address="auto")            # the cluster this machine belongs to
    executor = RayExecutor(address="ray://head:10001")   # a remote cluster (Ray Client)
    async with state.parallel(max_workers=16, executor=executor) as p:
        ...

By default members run on a pool of long-lived Ray *actors* (``actors=True``): one actor runs
one request at a time, and an attempt of a member is one call of an idle actor: no lease of a
worker, no scheduling, per member. The pool grows as members need actors, up to
``max_actors`` (default: as many as the cluster's resources hold when Ray is connected, each
actor asking ``num_cpus`` and ``resources``, which it holds while it lives); more requests
wait here, in order, holding no actor. An actor idle for ``idle_timeout`` seconds is ended,
giving its CPUs back to Ray (``release()`` ends the idle ones now); a new one is made when
needed.

``actors=False`` sends each attempt as one Ray task instead (``max_retries=0``), which Ray
schedules wherever it has room; each task holds its CPUs only while it runs.

Either way retries are the group's, decided here, and each is a new call. Cancelling a
member (a timeout, fail-fast, leaving the block by an exception) stops its work: an actor
running Python cannot be interrupted (``ray.cancel`` cannot stop a running actor call), so
the actor is killed with ``ray.kill`` and a new one replaces it when one is needed; a task is
cancelled with ``ray.cancel`` (``force=True`` by default: its worker killed). A request still
waiting for an actor never runs. So no work outlives its group. An actor that dies (a
segfault, ``os._exit``) fails its member with a ``RemoteExecutionError`` and is replaced.

Ray is imported, and connected to, when the first member is sent (``connect()`` does it
before): ``address`` and ``init_options`` go to ``ray.init`` unless Ray is initialised
already, in which case that connection is used (a new connection, after ``ray.shutdown()``,
gets new actors). Members are sent with Ray's cloudpickle: unlike the process pool, functions
defined in ``__main__`` or a notebook can be sent.

Invariants of the pool (actors are created and ended on the event loop's thread, and ended
by the idle reaper's thread, under one lock): an actor is idle, or runs exactly one request,
or is being made for the request that will run on it; ``live_actors`` counts them all and
never exceeds the limit.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
import time
from collections import deque
from typing import Any

from rh_agents.errors import ConfigurationError, MissingDependencyError, RemoteExecutionError
from rh_agents.executors.base import RemoteExecutor
from rh_agents.executors.wire import dumps, state_pickler, unimportable_module
from rh_agents.executors.worker import run_request

__all__ = ["RayExecutor"]


class _MemberActor:
    """The Ray actor of ``RayExecutor``'s pool: runs requests, one at a time."""

    def run(self, request: bytes) -> bytes:
        return run_request(request)


class _Actor:
    """One actor of the pool: its handle (``None`` while it is being made)."""

    __slots__ = ("handle", "idle_since")

    def __init__(self) -> None:
        self.handle: Any = None
        self.idle_since = 0.0


class RayExecutor(RemoteExecutor):
    """Members on Ray: a pool of actors, or one task per attempt (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1,
        resources: dict[str, float] | None = None,
        init_options: dict[str, Any] | None = None,
        force_cancel: bool = True,
        actors: bool = True,
        max_actors: int | None = None,
        idle_timeout: float = 2.0,
    ) -> None:
        super().__init__()
        if address is not None and not isinstance(address, str):
            raise ConfigurationError(
                f"RayExecutor address must be None, 'auto' or 'ray://host:port', got {address!r}"
            )
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int | float) or num_cpus < 0:
            raise ConfigurationError(f"num_cpus must be a number >= 0, got {num_cpus!r}")
        if max_actors is not None and (
            isinstance(max_actors, bool) or not isinstance(max_actors, int) or max_actors < 1
        ):
            raise ConfigurationError(f"max_actors must be None or an int >= 1, got {max_actors!r}")
        if (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, int | float)
            or idle_timeout < 0
        ):
            raise ConfigurationError(f"idle_timeout must be a number >= 0, got {idle_timeout!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.init_options = dict(init_options or {})
        self.force_cancel = force_cancel
        self.actors = bool(actors)
        self.max_actors = max_actors
        self.idle_timeout = float(idle_timeout)
        self._ray: Any = None
        self._task: Any = None
        self._pickler: Any = None
        self._cloudpickle: Any = None
        self._exported = False
        # The pool of actors (see the module docstring's invariants).
        self._lock = threading.Lock()
        self._live: set[_Actor] = set()
        self._idle: list[_Actor] = []
        # Requests waiting for an actor: each gets one, or None ("room: make one").
        self._waiting: deque[asyncio.Future[_Actor | None]] = deque()
        self._limit = 1
        self._job: Any = None  # the Ray job the pool's actors belong to
        self._actor_class: Any = None
        self._class_exported = False
        self._reaper: threading.Thread | None = None
        self._connections = 0  # the connections connect() made (see _session)
        self._client_module: Any = None

    def __repr__(self) -> str:
        how = f"max_actors={self.max_actors}" if self.actors else "actors=False"
        return f"RayExecutor(address={self.address!r}, num_cpus={self.num_cpus}, {how})"

    @property
    def live_actors(self) -> int:
        """The actors of the pool alive now (idle, running a member, or being made)."""
        return len(self._live)

    def connect(self) -> Any:
        """Import Ray and connect (``ray.init``) if that is not done yet; returns ``ray``."""
        ray = self._ray
        if ray is not None:
            if not ray.is_initialized():
                ray.init(address=self.address, **self.init_options)
                self._connections += 1
            return ray
        try:
            ray = importlib.import_module("ray")
        except ImportError as exc:
            raise MissingDependencyError(
                "RayExecutor needs Ray: pip install 'rh-agents[ray]'"
            ) from exc
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_options)
            self._connections += 1
        try:
            self._client_module = importlib.import_module("ray.util.client")
        except ImportError:  # pragma: no cover - every Ray has it
            self._client_module = None
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resources:
            options["resources"] = self.resources
        self._task = ray.remote(max_retries=0, **options)(run_request)
        self._actor_class = ray.remote(max_restarts=0, max_task_retries=0, **options)(_MemberActor)
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
        if not self.actors:
            return await self._send_task(ray, request, label)
        job = self._session(ray)
        if job != self._job:
            self._new_pool(ray, job)
        actor = await self._acquire(label)
        try:
            reply: bytes = await actor.handle.run.remote(request)
        except asyncio.CancelledError:
            # A running actor call cannot be interrupted: the actor goes, with its work.
            self._drop(actor, kill=True)
            raise
        except ray.exceptions.RayActorError as exc:
            self._drop(actor, kill=True)
            first = str(exc).strip().splitlines()[:1]
            raise RemoteExecutionError(
                f"the Ray actor running {label} died ({type(exc).__name__}: "
                f"{first[0] if first else 'no reason given'})"
            ) from exc
        except ray.exceptions.RayError as exc:
            self._drop(actor, kill=True)
            raise RemoteExecutionError(f"Ray could not run {label}: {exc}") from exc
        except BaseException:
            self._drop(actor, kill=True)
            raise
        self._release(actor)
        return reply

    # --- tasks (actors=False) ------------------------------------------------------------------

    async def _send_task(self, ray: Any, request: bytes, label: str) -> bytes:
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

    # --- the pool of actors --------------------------------------------------------------------

    def _new_pool(self, ray: Any, job: Any) -> None:
        """A new connection (the first, or one made after ``ray.shutdown()``): the old actors
        went with the old one."""
        with self._lock:
            self._live.clear()
            self._idle.clear()
            waiting = list(self._waiting)
            self._waiting.clear()
            self._job = job
            self._class_exported = False
            self._limit = self.max_actors or self._room(ray)
        for waiter in waiting:  # (room now: they make actors of the new connection)
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)

    def _session(self, ray: Any) -> Any:
        """What names the connection the pool's actors belong to: its job (a local call). Through
        Ray Client that would be a round trip per member: there, the connections this executor
        made stand for it (one made by ``ray.init`` elsewhere is not seen)."""
        if self._client_module is not None and self._client_module.ray.is_connected():
            return ("client", self._connections)
        return ray.get_runtime_context().get_job_id()

    def _room(self, ray: Any) -> int:
        """How many actors the cluster's resources hold (each asks num_cpus and resources)."""
        total = ray.cluster_resources()
        asks = {"CPU": self.num_cpus, **self.resources}
        counts = [int(total.get(name, 0) // ask) for name, ask in asks.items() if ask > 0]
        if not counts:  # (actors that ask nothing: one per CPU)
            counts = [int(total.get("CPU", 1))]
        return max(1, min(counts))

    async def _acquire(self, label: str) -> _Actor:
        """An idle actor, a new one if there is room, or the next one freed (in order)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
                if len(self._live) < self._limit and not self._waiting_alive():
                    actor = _Actor()
                    self._live.add(actor)
                    break
                waiter: asyncio.Future[_Actor | None] = loop.create_future()
                self._waiting.append(waiter)
            try:
                got = await waiter
            except asyncio.CancelledError:
                # Cancelled while waiting: it never runs. What it was handed goes on.
                if not waiter.cancelled():
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed)
                    else:
                        self._wake()
                raise
            if got is not None:
                return got
            # None: there is room for a new actor now.
        try:
            await self._make(actor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._drop(actor, kill=False)
            raise RemoteExecutionError(f"could not start a Ray actor for {label}: {exc}") from exc
        return actor

    def _waiting_alive(self) -> bool:
        """Whether requests wait for an actor (they go first); drops the cancelled ones."""
        waiting = self._waiting
        while waiting and (waiting[0].done() or waiting[0].get_loop().is_closed()):
            waiting.popleft()
        return bool(waiting)

    async def _make(self, actor: _Actor) -> None:
        if self._class_exported:
            actor.handle = self._actor_class.remote()
            return
        # The first actor sends its class to the cluster (tens to hundreds of milliseconds):
        # in a thread, so that the event loop goes on meanwhile.
        made = asyncio.get_running_loop().run_in_executor(None, self._actor_class.remote)
        try:
            actor.handle = await asyncio.shield(made)
        except asyncio.CancelledError:
            made.add_done_callback(lambda future: self._made_late(actor, future))
            raise
        self._class_exported = True

    def _made_late(self, actor: _Actor, made: asyncio.Future[Any]) -> None:
        """An actor whose request was cancelled while it was made: it joins the pool."""
        if made.cancelled() or made.exception() is not None:
            self._drop(actor, kill=False)
            return
        actor.handle = made.result()
        self._class_exported = True
        self._release(actor)

    def _release(self, actor: _Actor) -> None:
        """``actor`` is free: to the first request waiting, else idle."""
        with self._lock:
            if actor not in self._live:  # (a connection gone meanwhile)
                return
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done() and not waiter.get_loop().is_closed():
                    waiter.set_result(actor)
                    return
            actor.idle_since = time.monotonic()
            self._idle.append(actor)
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="rh-agents-ray-reaper", daemon=True
                )
                self._reaper.start()

    def _drop(self, actor: _Actor, *, kill: bool) -> None:
        """``actor`` leaves the pool (killed if ``kill``); a request waiting may make one."""
        with self._lock:
            self._live.discard(actor)
        if kill:
            self._kill(actor)
        self._wake()

    def _wake(self) -> None:
        """Tell the first request waiting that there is room for a new actor."""
        with self._lock:
            if len(self._live) >= self._limit:
                return
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done() and not waiter.get_loop().is_closed():
                    waiter.set_result(None)
                    return

    def _kill(self, actor: _Actor) -> None:
        ray = self._ray
        # After ray.shutdown() the actor went with it; and ray.kill would start a new Ray.
        if actor.handle is None or ray is None or not ray.is_initialized():
            return
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:  # (a handle of an earlier connection: gone with it)
            pass

    def _reap(self) -> None:
        """The reaper's thread: ends the actors idle for ``idle_timeout``; it ends itself
        when none is idle (``_release`` starts it again)."""
        while True:
            with self._lock:
                now = time.monotonic()
                expired = [a for a in self._idle if now - a.idle_since >= self.idle_timeout]
                for actor in expired:
                    self._idle.remove(actor)
                    self._live.discard(actor)
                last = not self._idle
                if last:
                    self._reaper = None
                else:
                    delay = min(a.idle_since for a in self._idle) + self.idle_timeout - now
            for actor in expired:
                self._kill(actor)
            if last:
                return
            time.sleep(max(delay, 0.01))

    def release(self) -> None:
        """End the idle actors now, giving their resources back to Ray (those running a
        member end when it does, after ``idle_timeout``); new ones are made when needed."""
        with self._lock:
            idle, self._idle = self._idle, []
            for actor in idle:
                self._live.discard(actor)
        for actor in idle:
            self._kill(actor)
