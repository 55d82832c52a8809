"""What runs in a worker: one request in, one reply out (``run_request``).

A worker process of ``ProcessExecutor`` loops on ``process_main``; a Ray worker runs
``run_request`` as a Ray task. Both run one request at a time, on their main thread:

- an event call's handler is called with the request's input (validated from its JSON) and
  a state of the worker's own, placed at the call's address: what the handler calls
  (events, groups) is numbered and addressed as it would be on the driver;
- a callable member is called; an ``ExecutionState`` it was sent with arrives as that state;
- a coroutine either returns is run on the worker's event loop (one per worker, kept);
- the records published on that state (when the driver's bus has listeners) go back in the
  reply, in order, with the value or the error.

Nothing here is cancelled from inside: the driver kills the worker (processes) or cancels the
Ray task instead, so a request is either answered or lost with its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from rh_agents.core.actors import BaseActor
from rh_agents.core.records import BusEvent, GroupCompleted
from rh_agents.executors import request as requests
from rh_agents.executors.request import Request
from rh_agents.executors.wire import HANDLER, dump_error, dump_reply, dump_value

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["process_main", "run_request"]

_loop: asyncio.AbstractEventLoop | None = None
# Actors unpickled lately, by their bytes: a group calls one actor many times.
_actors: OrderedDict[bytes, BaseActor] = OrderedDict()


def _actor(data: bytes) -> BaseActor:
    actor = _actors.get(data)
    if actor is None:
        actor = pickle.loads(data)
        _actors[data] = actor
        if len(_actors) > 64:
            _actors.popitem(last=False)
    else:
        _actors.move_to_end(data)
    return actor


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


async def _settle(request: Request, value: Any) -> Any:
    try:
        return await value
    finally:
        if request.state is not None:
            await request.state.event_bus.drain()


def _run(request: Request, kind: str, body: bytes) -> Any:
    if kind == HANDLER:
        actor_data, input_json, context = pickle.loads(body)
        actor = _actor(actor_data)
        validated = actor.input_model.model_validate_json(input_json)
        value = actor.handler(validated, context, request.make_state())
    else:
        value = pickle.loads(body)()  # a sent state becomes request.make_state()
    if inspect.isawaitable(value):
        return _event_loop().run_until_complete(_settle(request, value))
    return value


def _records(request: Request) -> list[BusEvent] | None:
    state = request.state
    if state is None:
        return None
    if request.wants:
        _event_loop().run_until_complete(state.event_bus.drain())
    state.threads.shutdown()
    records = request.records
    for record in records:
        if isinstance(record, GroupCompleted):
            _resolve_sources(record)
    return records or None


def _resolve_sources(record: BusEvent) -> None:
    """Replace a record's lazy ``x_source`` fields (a group's bound method, which cannot be
    sent) by the value its ``x`` property makes of them: what a reader would get here."""
    for field in dataclasses.fields(record):
        name = field.name
        if name.endswith("_source") and callable(getattr(record, name)):
            try:
                getattr(record, name[: -len("_source")])  # resolves and keeps it
            except Exception:
                setattr(record, name, None)
            if callable(getattr(record, name)):
                setattr(record, name, None)


def _sendable(records: list[BusEvent] | None) -> list[BusEvent] | None:
    """The records that can be sent (a record holding what cannot is left out)."""
    if not records:
        return records
    return [record for record in records if _pickles(record)]


def _pickles(value: Any) -> bool:
    try:
        dump_reply(value)
    except Exception:
        return False
    return True


def _calls(request: Request) -> list[tuple[Any, ...]] | None:
    """The calls finished over there, in order, as the driver's history and checkpoints
    take them: ``(event, address, group_id, parallel_index, input, result)``."""
    state = request.state
    if state is None or not len(state.history):
        return None
    calls = []
    for entry in state.history:
        result = entry.result
        if result.exception is not None:  # (sent as itself when it pickles, else named)
            result.exception = dump_error(result.exception, f"at {entry.address}")
        calls.append(
            (entry.event, entry.address, entry.group_id, entry.parallel_index, entry.input, result)
        )
    return calls


def run_request(data: bytes) -> bytes:
    """Run one request (see ``rh_agents.executors.wire``) and return its reply."""
    kind, address, group_id, index, numbering, wants, body = pickle.loads(data)
    request = Request(address, group_id, index, numbering, wants)
    requests.begin(request)
    try:
        try:
            reply: tuple[Any, ...] = (True, dump_value(_run(request, kind, body)))
        except (Exception, SystemExit, KeyboardInterrupt, GeneratorExit) as exc:
            # A member's sys.exit() (or KeyboardInterrupt, or a GeneratorExit it raised) is its
            # own outcome, raised where the member was awaited, as a member on the event loop
            # raising it would be (and as concurrent.futures does): this process is a worker
            # of the pool, and stays.
            reply = (False, dump_error(exc, f"at {address}"))
        records = _records(request)
        calls = _calls(request)
        state = request.state
        numbering = state.root_frame.numbering() if state is not None else None
        # The outcome travels as bytes of its own, inside the reply: should the driver fail
        # to rebuild it (a class that pickles here and not there), the records and calls
        # still come home, and the member fails with an error that says so.
        try:
            outcome = dump_reply(reply[1])
        except Exception as exc:  # the value cannot be sent back
            reply = (
                False,
                dump_error(
                    TypeError(f"the result of the member at {address} cannot be sent back: {exc}"),
                    f"at {address}",
                ),
            )
            outcome = dump_reply(reply[1])
        message = (reply[0], outcome, records, numbering, calls, time.perf_counter())
        try:
            return dump_reply(message)
        except Exception:
            pass
        calls = [call for call in calls or () if _pickles(call)] or None
        message = (reply[0], outcome, _sendable(records), numbering, calls, time.perf_counter())
        return dump_reply(message)
    finally:
        requests.end()


def _watch_driver(driver: int) -> None:
    """A thread of a worker process: end the worker, and what its members started (its
    process group), once the driver that started it has died. A driver killed outright
    (SIGKILL, the OOM killer) runs no cleanup, and a worker busy in a handler would otherwise
    finish it, side effects and all, while the resumed run runs it again. (The pool's
    fork server, the worker's parent, outlives the driver: the parent cannot tell.)"""
    try:
        handle: int | None = os.pidfd_open(driver)  # Linux 5.3+: readable once it exits
    except (AttributeError, OSError):
        handle = None
    if handle is not None:
        select.select([handle], [], [])  # (blocks without waking: no cost while it lives)
    else:
        while True:
            time.sleep(0.5)
            try:
                os.kill(driver, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass  # (alive, another user's: not ours to check)
    try:
        os.killpg(os.getpid(), signal.SIGKILL)  # a group leader (see process_main)
    finally:
        os._exit(1)


def process_main(connection: Connection, driver: int | None = None) -> None:
    """A worker process of ``ProcessExecutor``: answer requests until the pipe closes, or
    until ``driver`` (the pid of the process that started it) dies."""
    # Ctrl-C is the driver's to handle: it stops the group and kills what still runs here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A process group of its own, so that the driver killing this worker (a timeout, a stop)
    # kills the processes its members started too (a subprocess, a nested pool): none of them
    # outlives the member.
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    if driver is not None:
        threading.Thread(target=_watch_driver, args=(driver,), daemon=True).start()
    try:
        while True:
            try:
                data = connection.recv_bytes()
            except (EOFError, OSError):
                return  # the driver closed the pool, or died: nothing may outlive it
            reply = run_request(data)
            try:
                connection.send_bytes(reply)
            except OSError:
                return
    finally:
        _end_group()


def _end_group() -> None:
    """As the worker ends: kill what its members started and left running (a subprocess, a
    forked helper: they joined its process group), which would otherwise outlive the pool,
    and the driver. The worker itself then ends as usual (its exit handlers run), where it
    can tell its group's processes from itself (Linux's /proc); elsewhere it ends with them."""
    if not hasattr(os, "killpg"):
        return
    me = os.getpid()
    others = _group_processes(me)
    if others is None:
        # (No way to tell them apart here: the whole group, this worker with it, once what
        # it printed is out.)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            os.killpg(me, signal.SIGKILL)
        return
    for _ in range(3):  # (one may fork while the others are killed: look again)
        if not others:
            return
        for pid in others:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        others = _group_processes(me) or []


def _group_processes(group: int) -> list[int] | None:
    """The processes of process group ``group`` other than this one (``None``: no /proc)."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # (ended meanwhile)
        # After the name: state, ppid, pgrp. A zombie is dead already (its parent reaps it).
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == group:
            found.append(int(entry))
    return found
