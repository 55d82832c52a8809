"""``ProcessExecutor``: members run in a pool of worker processes (``executor="processes"``).

For CPU-bound work, which the event loop runs one member at a time whatever ``max_workers``
says::

    async with state.parallel(max_workers=4, executor="processes") as p:
        for n in sizes:
            p.add(functools.partial(crunch, n))       # a function of a module, pickled
    results = await state.parallel_execute([solve(q, "", state) for q in qs],
                                           executor=ProcessExecutor(max_processes=2))

``executor="processes"`` shares one pool per driver process, of ``os.cpu_count()``
processes; ``ProcessExecutor(max_processes=...)`` makes a pool of its own (``close()`` it, or
use it as a context manager). Processes start when first needed (``start()`` starts them
now) and are kept for the next members.

Invariants:

- A process runs one request at a time; more requests wait here, in order, not in a process.
- A request that is cancelled (a timeout, a stop, the group left by an exception) before it
  reached a process never runs; one that is running has its process killed at once (a
  process, unlike a thread, can be), and a new process replaces it when one is needed. So no
  work outlives its group. A process that answered takes the next request only once the
  member has taken the reply (``after_outcome_taken``): the requests a stop caused by that
  reply cancels (``FAIL_FAST``, a quorum) never start.
- Replies are read on the driver's event loop (``add_reader``, no thread of ours). A pool
  may serve the loops of several threads (each with its ExecutionState): a request is handed
  to a process, and its pipe watched, only from its own loop's thread (another thread's
  dispatch wakes that loop instead), and the pool's state changes under one lock.
- Workers never outlive the driver: each ends when its pipe closes (``close()``, the
  driver's exit, or its death), and ``close()`` kills those that do not end in time.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import multiprocessing
import multiprocessing.util  # (its exit handler first: ours, registered later, runs before it)
import os
import signal
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from rh_agents.core.handing_over import after_outcome_taken
from rh_agents.errors import ConfigurationError, InvalidMemberError, RemoteExecutionError
from rh_agents.executors.base import RemoteExecutor
from rh_agents.executors.worker import process_main

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

__all__ = ["ProcessExecutor"]

_WORKER_MODULE = "rh_agents.executors.worker"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _default_start_method() -> str:
    # forkserver: a fresh, single-threaded parent for every worker (fork from a driver with
    # threads can deadlock), and fast to start once the server runs.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _how_ended(code: int | None) -> str:
    """``exit code 3``, or ``killed by SIGSEGV`` for a process a signal ended."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


def _kill_orphaned_group(process: BaseProcess) -> None:
    """Kill what is left of the process group of ``process``, a worker that ended by itself.

    Its group's id is its pid (``process_main`` makes it a group leader). The group lives on
    while a process it started does, though the worker itself may be reaped already (by the
    forkserver, its parent): so the group is killed by its id, without looking it up.
    """
    pid = process.pid
    if pid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:  # no such group left (nothing was started), or not ours
        pass


def _kill_group(process: BaseProcess) -> None:
    """Kill ``process`` and what its members started: a worker leads a process group of its
    own (``process_main``), which the processes they start join."""
    pid = process.pid
    if pid is not None and hasattr(os, "killpg"):
        try:
            # (The worker is not reaped yet, so its pid, and its group's id, are still its:
            # a worker that died is a zombie until joined, its group alive while any
            # process it started lives.)
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
                return
        except OSError:  # gone already, or not a group leader yet (still starting)
            pass
    if process.exitcode is None:
        process.kill()


class _Job:
    __slots__ = ("future", "label", "loop", "request", "task", "worker")

    def __init__(
        self,
        request: bytes,
        future: asyncio.Future[bytes],
        loop: asyncio.AbstractEventLoop,
        label: str,
    ) -> None:
        self.request = request
        self.future = future
        self.loop = loop
        self.label = label
        self.task = asyncio.current_task(loop)  # the caller, which awaits ``future``
        self.worker: _Worker | None = None  # the process running it, while it runs


class _Worker:
    __slots__ = ("answered", "connection", "fd", "job", "process", "resting")

    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self.fd = connection.fileno()
        self.job: _Job | None = None
        self.answered = False  # whether it ever replied (one that never did died starting)
        # The loop of the request it answered last, until its member took the reply (see
        # ProcessExecutor._free): neither idle nor running meanwhile.
        self.resting: asyncio.AbstractEventLoop | None = None


def _locked(
    method: Callable[Concatenate[ProcessExecutor, _P], _R],
) -> Callable[Concatenate[ProcessExecutor, _P], _R]:
    """``method``, run holding its pool's lock (see ``ProcessExecutor._lock``)."""

    def locked(self: ProcessExecutor, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    functools.update_wrapper(locked, method)
    return locked


def _fail(job: _Job, error: BaseException) -> None:
    """Fail ``job``'s request with ``error``, on its loop's thread (a future is its loop's:
    another thread may not set it), unless it is over or its loop closed."""
    if job.loop.is_closed():
        return
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if job.loop is here:
        _set_failed(job.future, error)
        return
    with contextlib.suppress(RuntimeError):  # (closed meanwhile)
        job.loop.call_soon_threadsafe(_set_failed, job.future, error)


def _set_failed(future: asyncio.Future[bytes], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class ProcessExecutor(RemoteExecutor):
    """A pool of ``max_processes`` worker processes (default ``os.cpu_count()``).

    ``start_method`` is multiprocessing's (default ``"forkserver"`` where there is one, else
    ``"spawn"``). Members and their arguments are sent with the standard ``pickle``: see
    ``docs/executors.md`` for what can be sent.
    """

    name = "processes"

    def __init__(self, max_processes: int | None = None, *, start_method: str | None = None):
        super().__init__()
        if max_processes is None:
            max_processes = os.cpu_count() or 1
        if isinstance(max_processes, bool) or not isinstance(max_processes, int):
            raise ConfigurationError(f"max_processes must be an int >= 1, got {max_processes!r}")
        if max_processes < 1:
            raise ConfigurationError(f"max_processes must be an int >= 1, got {max_processes!r}")
        method = start_method or _default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                f"start_method {method!r} is not available here; use one of "
                f"{', '.join(multiprocessing.get_all_start_methods())}"
            )
        self.max_processes = max_processes
        self.start_method = method
        self._context: BaseContext = multiprocessing.get_context(method)
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._resting: list[_Worker] = []  # answered, not idle yet (see _free)
        self._queue: deque[_Job] = deque()
        self._starting = 0  # processes being started (in a thread), not arrived yet
        self._arrived: deque[_Worker | Exception] = deque()  # started, not taken yet
        # Every process started and not ended, the ones starting included: close() ends them.
        self._every: set[_Worker] = set()
        self._closed = False
        # Held by every step that reads or changes the pool's state: a pool may serve the
        # loops of several threads (one ExecutionState each), whose callbacks run at once.
        # (Re-entrant: a step calls another, a reply frees its worker and dispatches.)
        self._lock = threading.RLock()
        _pools.add(self)

    def check_member(self, source: Any, label: str) -> None:
        self._check_main_script(label)
        super().check_member(source, label)

    def check_function(self, fn: Any, label: str) -> None:
        self._check_main_script(label)
        super().check_function(fn, label)

    def _check_main_script(self, label: str) -> None:
        """Refuse at ``add()`` what no worker could run: a worker started by ``spawn`` or
        ``forkserver`` runs the main script again, from its file; a script read from stdin
        (``python - < script.py``) names a file that does not exist, and every worker would
        die as it starts."""
        if self.start_method == "fork":
            return
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if isinstance(path, str) and not os.path.isfile(path):
            raise InvalidMemberError(
                f"{label} cannot run on executor {self.name!r}: its worker processes run the "
                f"main script again from its file, and this program's ({path!r}) is not a file "
                "(read from stdin?); save the script to a file and run that, or make the "
                "executor with start_method='fork'"
            )

    def __repr__(self) -> str:
        return (
            f"ProcessExecutor(max_processes={self.max_processes}, "
            f"start_method={self.start_method!r})"
        )

    # --- the processes -------------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        """The process ids of the worker processes alive now."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    @property
    def running(self) -> int:
        """Requests running in a process now."""
        return sum(1 for w in self._workers if w.job is not None)

    @property
    def waiting(self) -> int:
        """Requests waiting for a process."""
        return len(self._queue)

    @_locked
    def start(self, count: int | None = None) -> None:
        """Start processes now (``count``, default all), rather than when members need them.

        It waits for them to start (outside the event loop that is what members do: see
        ``_dispatch``); their first request is answered as soon as they have imported the
        worker's modules.
        """
        self._check_open()
        wanted = self.max_processes if count is None else min(count, self.max_processes)
        while len(self._workers) + self._starting < wanted:
            self._add(self._new_worker())

    def _new_worker(self) -> _Worker:
        """A new worker process (blocks while it starts: called in a thread by members)."""
        if self.start_method == "forkserver":
            # The server imports the worker's modules once; each worker is forked from it.
            self._context.set_forkserver_preload([_WORKER_MODULE])
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=process_main,
            args=(child, os.getpid()),  # (the worker ends if this process dies)
            name="rh-agents-worker",
            daemon=False,  # a worker may start processes of its own (a nested group)
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._every.add(worker)  # (from a thread: one set.add, atomic)
        return worker

    def _add(self, worker: _Worker) -> None:
        if self._closed:
            self._kill(worker)
            return
        self._workers.append(worker)
        self._idle.append(worker)

    def _start_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a process (in a thread of its own), then tell ``loop``'s thread.

        What started (or why not) waits in ``_arrived`` (a deque: appended here, taken on
        the loop's thread): should the loop have closed meanwhile (the group that wanted the
        process is gone), the next dispatch, from any loop, takes it.
        """
        try:
            worker = self._new_worker()
        except Exception as exc:
            self._arrived.append(exc)
        else:
            if self._closed:  # closed while it started: nobody will take it
                self._every.discard(worker)
                worker.process.kill()
                worker.process.join(2)
                worker.connection.close()
                return
            self._arrived.append(worker)
        # Tell the loop that asked, or, should it have closed meanwhile, the loop of a
        # request still waiting (a new loop's, after asyncio.run ended the first): else that
        # request would wait for a process that arrived unseen.
        for target in (loop, *(job.loop for job in list(self._queue))):
            try:
                target.call_soon_threadsafe(self._dispatch)
            except RuntimeError:  # closed
                continue
            return

    def _take_arrivals(self) -> None:
        """The processes started since the last look, as idle workers (on the loop's thread)."""
        arrived = self._arrived
        while arrived:
            item = arrived.popleft()
            self._starting -= 1
            if isinstance(item, Exception):
                # No process: the requests waiting for one fail with the reason.
                while self._queue:
                    _fail(
                        self._queue.popleft(),
                        RemoteExecutionError(f"could not start a worker process: {item}"),
                    )
            else:
                self._add(item)

    def _kill(self, worker: _Worker) -> None:
        """End ``worker`` now (its request, if any, is lost: the caller says how)."""
        if worker in self._workers:
            self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if worker.resting is not None:
            worker.resting = None
            self._resting.remove(worker)
        worker.job = None
        self._every.discard(worker)
        process = worker.process
        if process.is_alive():
            _kill_group(process)
        process.join(2)
        worker.connection.close()

    # --- requests ------------------------------------------------------------------------------

    async def _send(self, request: bytes, label: str) -> bytes:
        self._check_open()
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop, label)
        self._queue.append(job)
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job)
            raise

    @_locked
    def _dispatch(self) -> None:
        """Hand waiting requests to idle processes, starting processes up to the limit.

        A process is started in a thread (starting one takes milliseconds, the first of a
        forkserver much longer): the event loop goes on meanwhile, and the request waits.
        """
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if self._arrived:
            self._take_arrivals()
        if self._resting:
            # A loop that closed before its member took the reply never frees its worker.
            for worker in [w for w in self._resting if w.resting and w.resting.is_closed()]:
                self._free(worker)
        for worker in [w for w in self._workers if w.job is not None and w.job.loop.is_closed()]:
            # Its request's loop closed while it ran: the loop's readers went with it, so its
            # reply would never be read and the process never be free again. Killed, as a
            # cancelled request's process is (another replaces it when needed).
            self._kill(worker)
        queue = self._queue
        while queue:
            if not self._idle:
                # A resting process takes a waiting request in a loop turn or two: new
                # processes only for the requests beyond them (a member after another on
                # one process would otherwise start a second process, for nothing).
                wanted = min(
                    len(queue) - len(self._resting), self.max_processes - len(self._workers)
                )
                while self._starting < wanted:
                    self._starting += 1
                    threading.Thread(
                        target=self._start_in_thread,
                        args=(queue[0].loop,),
                        name="rh-agents-process-start",
                        daemon=True,
                    ).start()
                return
            job = queue[0]
            if job.future.done() or job.loop.is_closed():
                # Its caller gave up (a timeout, a group's stop), or went with its loop: a
                # reply could never reach it (nor could an error: its future is that loop's).
                queue.popleft()
                continue
            if job.loop is not here:
                # Another thread's loop: the pipe is watched from that loop's own thread
                # (a selector is not shared across threads), so that loop hands it over.
                try:
                    job.loop.call_soon_threadsafe(self._dispatch)
                except RuntimeError:  # closed meanwhile: dropped at the next look
                    continue
                return
            queue.popleft()
            worker = self._idle.pop()
            try:
                # Blocking, whatever a loop made of the pipe (uvloop leaves a watched fd
                # non-blocking): a message is written and read whole, never half.
                os.set_blocking(worker.fd, True)
                worker.connection.send_bytes(job.request)
            except OSError:
                # The process died while idle: the request never reached it. Try another.
                queue.appendleft(job)
                self._kill(worker)
                continue
            worker.job = job
            job.worker = worker
            job.loop.add_reader(worker.fd, self._on_reply, worker)
            job.loop.add_reader(worker.process.sentinel, self._on_exit, worker)

    @staticmethod
    def _unwatch(job: _Job, worker: _Worker) -> None:
        """Stop watching ``worker``'s pipe and its end (see ``_dispatch``)."""
        job.loop.remove_reader(worker.fd)
        job.loop.remove_reader(worker.process.sentinel)

    @_locked
    def _on_exit(self, worker: _Worker) -> None:
        """``worker``'s process ended while running a request. Its pipe says so too (EOF),
        unless a process the member started (forked) holds the pipe open: then only this
        tells, and the group would wait for as long as that process lives."""
        job = worker.job
        if job is None:
            return
        if worker.connection.poll(0):
            self._on_reply(worker)  # it replied before it ended: the reply goes first
            return
        self._on_reply(worker, ended=True)

    @_locked
    def _on_reply(self, worker: _Worker, ended: bool = False) -> None:
        job = worker.job
        if job is None:  # (killed meanwhile)
            return
        self._unwatch(job, worker)
        try:
            if ended:
                raise EOFError  # (the process ended without a reply: see _on_exit)
            os.set_blocking(worker.fd, True)  # (see _dispatch)
            reply = worker.connection.recv_bytes()
        except (EOFError, OSError):
            # What it started (a forked helper holding the pipe open) goes with it.
            _kill_orphaned_group(worker.process)
            code = worker.process.exitcode
            self._kill(worker)
            job.worker = None
            if not job.future.done():
                if code is None:
                    code = worker.process.exitcode
                # A Python error while the worker started (an import, a script without
                # `if __name__ == '__main__':`) exits with status 1: only then the hint.
                hint = (
                    "; it had answered no request yet: if it died while starting, check "
                    "that a script which starts processes keeps its program under "
                    "`if __name__ == '__main__':`, and that the workers can import the "
                    "modules the members come from"
                    if not worker.answered and code == 1
                    else ""
                )
                job.future.set_exception(
                    RemoteExecutionError(
                        f"the worker process running {job.label} died ({_how_ended(code)}){hint}"
                    )
                )
            after_outcome_taken(job.loop, job.task, job.future, self._dispatch)
            return
        worker.job = None
        worker.answered = True
        job.worker = None
        if not job.future.done():
            job.future.set_result(reply)
        # The process goes to the next request once the member took this reply: had it
        # stopped its group (FAIL_FAST, a quorum), the requests waiting were cancelled.
        worker.resting = job.loop
        self._resting.append(worker)
        after_outcome_taken(job.loop, job.task, job.future, functools.partial(self._rested, worker))

    @_locked
    def _rested(self, worker: _Worker) -> None:
        if worker.resting is not None:  # (else killed, closed or freed meanwhile)
            self._free(worker)
            self._dispatch()

    def _free(self, worker: _Worker) -> None:
        """``worker``, which answered, is idle (see ``_on_reply``)."""
        worker.resting = None
        self._resting.remove(worker)
        self._idle.append(worker)

    @_locked
    def _cancel(self, job: _Job) -> None:
        worker = job.worker
        if worker is None:  # still waiting (or already answered): it never runs
            try:
                self._queue.remove(job)
            except ValueError:
                pass
            return
        # Running: a process can be stopped, unlike a thread. It goes, with its work.
        job.worker = None
        self._unwatch(job, worker)
        self._kill(worker)
        # A new process for the next request, at the loop's next turn: a stop cancels the
        # group's members one after the other, and the others' requests then too.
        job.loop.call_soon(self._dispatch)

    # --- lifetime ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError(f"{self!r} was closed; make a new one")

    @_locked
    def close(self) -> None:
        """End every worker process; requests still waiting or running fail."""
        if self._closed:
            return
        self._closed = True
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        while self._queue:
            _fail(self._queue.popleft(), RemoteExecutionError(f"{self!r} was closed"))
        workers = list(self._every)
        for worker in workers:
            running = worker.job
            if running is not None:
                if not running.loop.is_closed():
                    if running.loop is here:
                        self._unwatch(running, worker)
                    else:
                        with contextlib.suppress(RuntimeError):  # (its loop's thread does it)
                            running.loop.call_soon_threadsafe(self._unwatch, running, worker)
                    _fail(running, RemoteExecutionError(f"{self!r} was closed"))
                _kill_group(worker.process)
            worker.connection.close()  # an idle worker reads the end of its pipe, and exits
        for worker in workers:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
        self._workers.clear()
        self._idle.clear()
        for worker in self._resting:
            worker.resting = None
        self._resting.clear()
        self._every.clear()

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# Every pool, so that none outlives the driver (closed at exit, before multiprocessing's own
# exit handler would wait for the workers).
_pools: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pool in list(_pools):
        pool.close()
