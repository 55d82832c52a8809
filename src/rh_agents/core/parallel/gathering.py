"""Reading a group's results: ``gather``, ``gather_dict``, ``stream`` and ``as_completed``.

The functions here are ``ParallelExecutionManager``'s methods (bound in its class body, each
taking the group first) that wait for the group and hand its results out, in submission
order (``gather``) or completion order (``stream``)::

    async with state.parallel(max_workers=5) as p:
        by_name = await p.gather_dict({"a": fetch(a), "b": fetch(b)})  # {"a": result, ...}

    async with state.parallel(max_workers=5) as p:
        async for result in p.as_completed(fetch(url) for url in urls):  # completion order
            print(result.index, result.ok)

Invariants:

- Reading seals the group (``_seal``): no ``add()`` after it, so the member count is final and
  a fractional ``failure_threshold`` can apply.
- Every wait for the whole group (``_wait_all``) ends with ``_join_workers``: no worker task
  outlives it, even if the waiting task is cancelled meanwhile (that cancels the group, joins
  it, then re-raises).
- A member waiting on a group (its own nested group, or any other) lends its global slot for
  the wait (``_wait_lending``), which is what keeps nested groups from deadlocking on the
  global limit. The slot lent is the waiting member's own, never the opener's: a sibling
  reading a group another member opened lends nothing of that member, which may be working.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from rh_agents.core.context import running_frame
from rh_agents.core.deadlines import member_ending
from rh_agents.core.parallel import stopping
from rh_agents.core.parallel.adding import close_refused
from rh_agents.core.parallel.slots import MemberSlot, SharedCallSlot
from rh_agents.core.parallel.strategy import GroupStatus
from rh_agents.core.parallel.stream import ResultIterator, ResultStream
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import ConfigurationError, GroupClosedError

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager

__all__ = [
    "as_completed",
    "check_not_inside",
    "close_input",
    "collected",
    "gather",
    "gather_all",
    "gather_dict",
    "gather_stream",
    "join_workers",
    "owed_slot",
    "seal",
    "stream",
    "take_back_owed",
    "wait_all",
    "wait_lending",
]

T = TypeVar("T")


async def gather_all(group: ParallelExecutionManager[Any]) -> list[ExecutionResult[Any]]:
    if not group._entered:
        group._used = True  # (told now: no UnusedGroupWarning later)
        raise GroupClosedError("gather() needs 'async with state.parallel(...) as p:' first")
    await wait_all(group)
    group._finalize()
    results = collected(group)
    group._raise_for_strategy(results)
    return results


def collected(group: ParallelExecutionManager[Any]) -> list[ExecutionResult[Any]]:
    if not group._retain:
        raise ConfigurationError(
            "this group does not keep results (retain_results=False); read them with "
            "stream() as they complete"
        )
    return group._tally.collected()


async def join_workers(group: ParallelExecutionManager[Any]) -> None:
    # Wait for every worker, even if we are cancelled meanwhile: no orphan may survive.
    cancelled: asyncio.CancelledError | None = None  # the first, raised at the end (its message)
    workers = group._pool.workers
    while workers:
        try:
            done, _ = await asyncio.wait(set(workers))
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
            group._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
        else:
            # (A worker leaves the set as it ends; one that ended without, by a bug, must
            # not make this loop spin for ever.)
            workers.difference_update(done)
    try:
        await close_input(group)
    except asyncio.CancelledError as exc:
        cancelled = cancelled or exc
    if cancelled is not None:
        raise cancelled


async def close_input(group: ParallelExecutionManager[Any]) -> None:
    """Close the group's ``map()`` input, if it has one (once its workers are gone): what
    closing it raises is the group's input error (see stopping.input_close_failed)."""
    source = group._source
    if source is None:
        return
    try:
        await source.aclose()
    except asyncio.CancelledError:
        raise  # (the close is cut short; the group is finalized all the same)
    except BaseException as exc:
        stopping.input_close_failed(group, exc)


def check_not_inside(group: ParallelExecutionManager[Any], what: str) -> None:
    """Refuse to wait for ``group`` from another event loop, or from inside one of its
    own members (at any depth).

    The group ends only once that member has; its wait could never end, and nor could
    a cancellation of it (stopping the group waits for every worker, its own included).
    """
    if asyncio.get_running_loop() is not group._loop:
        # Its workers, futures and timers belong to that loop: a wait from here would be
        # woken from another thread, or never.
        raise GroupClosedError(
            f"{what} of group {group.group_id!r} was called from another event loop than "
            "the one the group runs on (another thread?); read it where it was opened"
        )
    frame = running_frame()
    if (
        frame is not None
        and frame.state is group._state
        and frame.address.startswith(f"{group.group_id}[")
    ):
        raise GroupClosedError(
            f"{what} of group {group.group_id!r} was called from inside its own member "
            f"{frame.address!r}: it would wait for itself. Read the group where it was "
            "opened (after adding), or give the member what it needs as an argument"
        )


async def wait_all(group: ParallelExecutionManager[Any]) -> None:
    """Wait until every member has a result; a cancelled waiter cancels the group."""
    check_not_inside(group, "waiting for the results")
    seal(group)
    pool = group._pool
    pool.start_all()  # no more members will come: their workers start now
    if not group._unfinished() and not pool.workers:
        if group._source is not None:
            # Every worker has ended already (a stop, then a stream read to the end): the
            # map() input is closed here, as join_workers would have. (Tested first: every
            # group that ends here passes this point, and most have no input.)
            await close_input(group)
        owed = owed_slot()
        if owed is not None:
            await take_back_owed(owed)  # the member reads on: it works again
        return
    waiter = group._readers.end()
    try:
        await wait_lending(group, waiter)
    except asyncio.CancelledError as cancelled:
        group._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
        try:
            await join_workers(group)
        finally:
            group._finalize_under(cancelled)
        raise
    try:
        await join_workers(group)
    except asyncio.CancelledError as cancelled:
        # Cut short while closing the map() input (the workers had all ended): the group is
        # over all the same, and must not stay open.
        group._finalize_under(cancelled)
        raise


async def wait_lending(group: ParallelExecutionManager[Any], waiter: asyncio.Future[None]) -> None:
    """Wait for ``waiter``, lending the global slot of the member we run inside, if any.

    A member waiting on a group does no work, so it gives its global slot back meanwhile;
    that is what keeps nested groups from deadlocking on the global limit. Several waits of
    one member at once lend the slot once (see ``MemberSlot.begin_wait``). If the wait is
    cancelled the slot stays lent for now: the nested group's members may still hold every
    slot until the block is left and they are stopped, so waiting for one here could wait
    forever. The member takes it back as it reads a group again or leaves a block
    (``take_back_owed``), unless it is being stopped for good (its group stops, its timeout:
    its ``finally`` then has nothing to release).
    """
    slot = _waiting_slot()
    if slot is None:
        await waiter  # our own future: cancelling it disturbs no other waiter
        return
    slot.begin_wait()
    try:
        await waiter
    except asyncio.CancelledError:
        slot.end_wait_cancelled()
        raise
    await slot.end_wait()


def _waiting_slot() -> MemberSlot | None:
    """The slots of the member the calling task runs in (its own task or one of its own), if
    it runs in one."""
    frame = running_frame()
    slot = frame.slot if frame is not None else None
    if isinstance(slot, SharedCallSlot):
        # Inside a call the member started and the cache shares: the member's own slots
        # (one account with its other waits), until the member leaves the call.
        return None if slot.left else slot.member_slot
    return slot if isinstance(slot, MemberSlot) else None


def owed_slot() -> MemberSlot | None:
    """The slots of the member the calling task works for, if a cancelled wait left its
    global slot lent and the member is not being stopped for good (see
    core.deadlines.member_ending): then it takes the slot back (``take_back_owed``)."""
    slot = _waiting_slot()
    if slot is None or not slot.owes or member_ending(slot.group):
        return None
    return slot


async def take_back_owed(slot: MemberSlot) -> None:
    """Take back the global slot a cancelled wait left lent (see wait_lending): as the
    member reads a group again, or leaves a block. Only the member's own tasks do: a
    sibling that read a group it was handed owes its own slot, never the opener's."""
    await slot.take_back()


def seal(group: ParallelExecutionManager[Any]) -> None:
    """No more add(): the member count is now known, so a fractional threshold can apply."""
    if group._sealed:
        return
    group._sealed = True
    group._check_threshold()


async def gather(
    group: ParallelExecutionManager[T], members: Iterable[Any] | None = None
) -> list[ExecutionResult[T]]:
    """Every result in submission order (waits for all). FAIL_SLOW never raises.

    With ``members`` (members given directly), those are added first and only their
    results are returned. Without ``async with`` (the spec's ``await parallel.gather([...])``)
    the call opens the group, runs them and closes it, as ``execute_parallel`` does.
    """
    if members is None:
        return await gather_all(group)
    members = _member_list(members, "gather")
    opened = False
    try:
        async with _opened(group):
            opened = True
            indices = group.add_many((None, m) for m in members)
            results = await gather_all(group)
    except BaseException:
        if not opened:
            _close_given(members)
        raise
    return [results[i] for i in indices]


def _opened(group: ParallelExecutionManager[Any]) -> AbstractAsyncContextManager[Any]:
    """The group to enter, for members given directly without ``async with`` (the call then
    opens, runs and closes it); nothing to enter inside its block."""
    return contextlib.nullcontext() if group._entered else group


def _close_given(members: Iterable[Any]) -> None:
    """Close the coroutines among ``members`` given to a group that did not open (a closed
    state, another loop's): none was added, none ran, none may warn "never awaited"."""
    for member in members:
        close_refused(member)


def _member_list(members: Any, what: str) -> Iterable[Any]:
    """``members`` given directly to ``what``, checked to be an iterable of members (a
    refused one has its coroutines closed: no "never awaited" warning)."""
    if isinstance(members, Mapping):
        close_refused(members.values())
        raise ConfigurationError(
            f"{what}() takes members in a list (or any iterable), got a dict: for named "
            "members use gather_dict({name: member, ...})"
        )
    if not isinstance(members, Iterable) or isinstance(members, str | bytes):
        close_refused(members)
        raise ConfigurationError(
            f"{what}() takes members in a list (or any iterable), got "
            f"{type(members).__name__} {members!r:.60}"
        )
    return members


def _member_dict(members: Any) -> Mapping[str, Any]:
    """``members`` given to ``gather_dict``, checked to be ``{name: member}`` with str names."""
    if not isinstance(members, Mapping):
        iterable = isinstance(members, Iterable) and not isinstance(members, str | bytes)
        close_refused(list(members) if iterable else members)  # ((name, member) pairs too)
        raise ConfigurationError(
            "gather_dict() takes a dict of {name: member}, got "
            f"{type(members).__name__}: for unnamed members use gather([...])"
        )
    bad = [key for key in members if not isinstance(key, str) or not key]
    if bad:
        close_refused(members.values())
        raise ConfigurationError(
            f"gather_dict() takes member names as non-empty str keys, got {bad[0]!r:.60}"
        )
    return members


async def gather_dict(
    group: ParallelExecutionManager[T], members: Mapping[str, Any] | None = None
) -> dict[str | int, ExecutionResult[T]]:
    """Results by member name (unnamed members by index), in submission order. With
    ``members`` ({name: member}), only theirs; without ``async with``, the call opens the
    group, runs them and closes it (see ``gather``)."""
    if members is not None:
        members = _member_dict(members)
        opened = False
        try:
            async with _opened(group):
                opened = True
                group.add_many(members.items())
                results = await gather_all(group)
        except BaseException:
            if not opened:
                _close_given(members.values())
            raise
        return {key: results[group._names[key]] for key in members}
    results = await gather_all(group)
    return {(r.name if r.name is not None else r.index or 0): r for r in results}


def stream(group: ParallelExecutionManager[T]) -> ResultIterator[T]:
    """Results in completion order, as soon as each member finishes::

        async for result in p.stream():
            print(result.index, result.ok)

    Leaving the loop early is fine: the rest still runs and is gathered with the block.
    (The iterator is a plain object, not an async generator, so abandoning it leaves no
    finalizer task behind.)
    """
    return _open_stream(group, None)


def _open_stream(
    group: ParallelExecutionManager[T], only: Iterable[int] | None
) -> ResultIterator[T]:
    if not group._entered:
        group._used = True  # (told now: no UnusedGroupWarning later)
        raise GroupClosedError("stream() needs 'async with state.parallel(...) as p:' first")
    check_not_inside(group, "stream()")
    seal(group)
    return ResultStream(group, only)


def gather_stream(group: ParallelExecutionManager[T], members: Iterable[Any]) -> ResultIterator[T]:
    """Add ``members``, then stream their results in completion order (as ``gather([...])``
    returns only theirs; the group's other members go on and are gathered with the block)."""
    return _stream_of(group, members, "gather_stream")


def as_completed(
    group: ParallelExecutionManager[T], members: Iterable[Any] | None = None
) -> ResultIterator[T]:
    """Results in completion order with ``index``, ``name`` and ``event_id`` set: every
    member's, or with ``members``, those added now only."""
    if members is None:
        return stream(group)
    return _stream_of(group, members)


def _stream_of(
    group: ParallelExecutionManager[T], members: Iterable[Any], what: str | None = None
) -> ResultIterator[T]:
    members = _member_list(members, "as_completed" if what is None else what)
    if not group._entered and group._retain:
        # Without ``async with`` (the spec's ``async for r in parallel.as_completed([...])``):
        # the stream opens the group at its first step and closes it at its end.
        from rh_agents.core.parallel.executing import BatchStream, checked_batch

        return BatchStream(group, checked_batch(group, list(members), None))
    if not group._retain:
        # Its results are handed out once: skipping the other members' would lose them.
        close_refused(list(members))  # (refused: closed, so that none warns "never awaited")
        raise ConfigurationError(
            "as_completed([...]) and gather_stream([...]) need a group that keeps its results: "
            "this one does not (retain_results=False); add the members with add() and read "
            "every result with stream()"
        )
    indices = group.add_many((None, m) for m in members)
    return _open_stream(group, indices)
