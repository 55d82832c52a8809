"""Leases: one writer per run.

::

    lease = backend.acquire_lease("nightly")     # RunLockedError if a live process holds it
    ...                                          # this process is the run's one writer
    lease.release()

``Recovery`` takes the lease when it attaches to a state (before anything runs) and releases
it in ``close()``. A second process that creates or resumes the run meanwhile is refused at
once with ``RunLockedError``, which names the holder (pid, host, since when). A lease left by
a process that died is taken over by the next taker; two takers never both win.

How each backend keeps it, and why:

- ``SQLiteBackend``: a row in the table ``leases`` (owner pid, host, process start time, a
  random token, since, heartbeat), taken and taken over inside one ``BEGIN IMMEDIATE``
  transaction: SQLite's write lock serialises the takers, so the check "is the holder dead?"
  and the write of the new owner are one atomic step. Whether a holder is dead is decided
  without waiting whenever its pid can be checked: on the same machine (same boot and pid
  namespace), a holder whose pid no longer runs, is a zombie, or is now another process (its
  start time differs: pid reuse) is dead, however it died (``kill -9`` included); a holder
  in this very process is dead once its lease object was released or garbage collected.
  From another machine or container a pid means nothing, so there the heartbeat decides: a
  thread of the lease (never the event loop) renews it every ``stale_after / 4`` seconds on
  its own connection, and a heartbeat older than ``stale_after`` marks the holder dead (keep
  the clocks of the machines within a few seconds of each other). Every checkpoint write also
  checks, in its transaction, that the row still holds this lease's token, so a writer whose
  lease was taken over can never write again.
- ``JSONBackend``: an exclusive ``fcntl.flock`` on a sidecar file ``<run_id>.lock`` held open
  for the lease's life. The kernel drops the lock the moment the holder dies, so a takeover
  needs no guess about staleness, and two takers cannot both get it. The file holds the
  owner's pid, host and time, for the error message only. It is removed on release (while
  still locked; a taker checks that the file it locked is still the one at the path, so an
  unlink never lets two holders in). A child made with ``fork()`` (not ``exec``) inherits the
  lock while it lives.
"""

from __future__ import annotations

import abc
import datetime
import functools
import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rh_agents.errors import RunLockedError

__all__ = [
    "DEFAULT_STALE_AFTER",
    "Heartbeat",
    "LeaseOwner",
    "NoLease",
    "RunLease",
    "locked_error",
    "lost_error",
    "owner_is_dead",
]

logger = logging.getLogger("rh_agents.recovery")

DEFAULT_STALE_AFTER = 60.0

# Tokens of the leases this process holds (taken, not released, not garbage collected).
_LIVE_TOKENS: set[str] = set()


@functools.cache
def this_scope() -> str:
    """Where pid numbers mean the same process: host name, boot id and pid namespace."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}|{boot}|{pidns}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of ``pid`` from ``/proc``, or ``None`` when it cannot be read
    (no ``/proc``, a process hidden from this user, or one that just ended)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def _start_time(pid: int) -> str:
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else ""


def _pid_alive(pid: int, started: str) -> bool:
    """Whether ``pid`` still runs the process that took the lease. When in doubt: alive (a
    lease is never taken from a process that might still write)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return True  # os.kill would end the process there: the heartbeat decides instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return True  # it answered the signal; its details cannot be read
    state, start = stat
    if state in ("Z", "X"):
        return False  # ended, not yet reaped by its parent
    return not started or start == started


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """Who holds a lease. ``since`` and ``heartbeat`` are wall-clock seconds."""

    pid: int
    host: str
    scope: str
    started: str
    token: str
    since: float
    heartbeat: float

    @classmethod
    def current(cls, token: str, now: float) -> LeaseOwner:
        """This process, holding ``token`` from ``now``."""
        pid = os.getpid()
        return cls(
            pid=pid,
            host=socket.gethostname(),
            scope=this_scope(),
            started=_start_time(pid),
            token=token,
            since=now,
            heartbeat=now,
        )

    def describe(self, now: float) -> str:
        """``pid 412 on host 'build-3' since 2024-06-01 12:00:03 (heartbeat 2s ago)``."""
        when = datetime.datetime.fromtimestamp(self.since).isoformat(sep=" ", timespec="seconds")
        return (
            f"pid {self.pid} on host {self.host!r} since {when} "
            f"(heartbeat {max(0.0, now - self.heartbeat):.0f}s ago)"
        )


def owner_is_dead(owner: LeaseOwner, now: float, stale_after: float) -> bool:
    """Whether ``owner``'s lease may be taken over (see the module docstring)."""
    if owner.scope != this_scope():
        return now - owner.heartbeat > stale_after
    if owner.pid == os.getpid() and owner.started in ("", _start_time(owner.pid)):
        return owner.token not in _LIVE_TOKENS
    return not _pid_alive(owner.pid, owner.started)


def locked_error(run_id: str, owner: LeaseOwner | None, where: str, now: float) -> RunLockedError:
    """The refusal of a second writer, naming the holder."""
    holder = owner.describe(now) if owner is not None else "a process that has not said who"
    if owner is not None and owner.pid == os.getpid() and owner.scope == this_scope():
        who = (
            "this process, through another Recovery that is still open (close its state "
            "first; a state whose close gave up on a busy store holds the run until its last "
            "writes land)"
        )
    else:
        who = "another process"
    return RunLockedError(
        f"run {run_id!r} is being written by {who}: {holder}; its lease is in {where}. Only "
        "one process may write a run: wait for it to finish or stop it (a lease left by a dead "
        "process is taken over automatically), or use another run id.",
        run_id=run_id,
        pid=owner.pid if owner is not None else None,
        host=owner.host if owner is not None else None,
        since=owner.since if owner is not None else None,
    )


def lost_error(run_id: str, holder: str, where: str) -> RunLockedError:
    """This process's lease was taken over: it must not write the run any more."""
    return RunLockedError(
        f"run {run_id!r}: this process no longer holds the run's lease in {where} (held now "
        f"by {holder}): another process judged it abandoned (its heartbeat was older than "
        "lease_stale_after) and took the run over, so this write was refused and nothing of "
        "it was stored. Let the new holder finish the run.",
        run_id=run_id,
    )


class RunLease(abc.ABC):
    """A held lease; ``release()`` is idempotent and never raises (failures are logged: a
    lease that could not be released is taken over once this process is gone)."""

    def __init__(self, run_id: str, owner: LeaseOwner) -> None:
        self.run_id = run_id
        self.owner = owner
        self.released = False
        _LIVE_TOKENS.add(owner.token)
        # A lease dropped without release (a Recovery that was never closed) stops counting
        # as live in this process, so the run can be taken over.
        self._finalizer = weakref.finalize(self, _LIVE_TOKENS.discard, owner.token)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._finalizer()
        try:
            self._release()
        except Exception:
            logger.warning("could not release the lease of run %r", self.run_id, exc_info=True)

    @abc.abstractmethod
    def _release(self) -> None:
        """Give the lease back in the store."""


class NoLease(RunLease):
    """What a backend without leases returns: it keeps no other process out."""

    def _release(self) -> None:
        pass


class Heartbeat:
    """Calls ``beat()`` every ``interval`` seconds on a daemon thread (never the event loop)
    until ``stop()`` or until ``beat()`` returns ``False``, then calls ``done()``. Errors of
    ``beat()`` are logged and the beating goes on."""

    def __init__(
        self, beat: Callable[[], bool], done: Callable[[], None], interval: float, name: str
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_beat_loop, args=(beat, done, interval, self._stop), name=name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it does not wait for it)."""
        self._stop.set()


def _beat_loop(
    beat: Callable[[], bool], done: Callable[[], None], interval: float, stop: threading.Event
) -> None:
    try:
        while not stop.wait(interval):
            try:
                if not beat():
                    return
            except Exception:
                logger.warning("lease heartbeat failed", exc_info=True)
    finally:
        done()
