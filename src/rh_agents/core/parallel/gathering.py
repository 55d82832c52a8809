"""Reading a group's results: ``gather``, ``gather_dict``, ``stream`` and ``as_completed``.

``_Gathering`` is the part of ``ParallelExecutionManager`` that waits for the group and hands
its results out, in submission order (``gather``) or completion order (``stream``)::

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
- A member waiting on its own nested group lends its global slot for the wait
  (``_wait_lending``), which is what keeps nested groups from deadlocking on the global limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from rh_agents.core.parallel.scheduler import EAGER_WORKERS
from rh_agents.core.parallel.slots import MemberSlot
from rh_agents.core.parallel.strategy import GroupStatus
from rh_agents.core.parallel.stream import ResultStream
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import ConfigurationError, GroupClosedError

if TYPE_CHECKING:
    from rh_agents.core.context import Frame
    from rh_agents.core.parallel.lazy_source import LazySource
    from rh_agents.core.parallel.manager import ParallelExecutionManager

__all__ = ["_Gathering"]

T = TypeVar("T")


class _Gathering(Generic[T]):
    """``ParallelExecutionManager``'s result-reading methods (a mixin, no state)."""

    if not TYPE_CHECKING:
        # No fields of its own: they are all slots of ParallelExecutionManager. (Hidden
        # from mypy, which would otherwise reject assignments to fields declared below.)
        __slots__ = ()

    if TYPE_CHECKING:
        # Fields of ParallelExecutionManager (see its __init__) and the sibling methods used.
        _entered: bool
        _used: bool
        _sealed: bool
        _retain: bool
        _results: list[ExecutionResult[Any] | None]
        _names: dict[str, int]
        _workers: set[asyncio.Task[None]]
        _source: LazySource | None
        _done_waiters: list[asyncio.Future[None]]
        _parent_frame: Frame | None
        _stop_status: ResultStatus | None
        _last_failure: ExecutionResult[Any] | None
        _trigger: ExecutionResult[Any] | None
        _spawn_pending: bool

        def add_many(self, entries: Iterable[tuple[Any, ...]]) -> list[int]: ...
        def _unfinished(self) -> bool: ...
        def _finalize(self) -> None: ...
        def _spawn(self) -> None: ...
        def _stop(self, status: ResultStatus, group_status: GroupStatus | None) -> None: ...
        def _threshold_reached(self) -> bool: ...
        def _raise_for_strategy(self, results: list[ExecutionResult[Any]]) -> None: ...

    async def _gather_all(self) -> list[ExecutionResult[Any]]:
        if not self._entered:
            self._used = True  # (told now: no UnusedGroupWarning later)
            raise GroupClosedError("gather() needs 'async with state.parallel(...) as p:' first")
        await self._wait_all()
        self._finalize()
        results = self._collected()
        self._raise_for_strategy(results)
        return results

    def _collected(self) -> list[ExecutionResult[Any]]:
        if not self._retain:
            raise ConfigurationError(
                "this group does not keep results (retain_results=False); read them with "
                "stream() as they complete"
            )
        return list(self._results)  # type: ignore[arg-type]  # every slot is filled

    async def _join_workers(self) -> None:
        # Wait for every worker, even if we are cancelled meanwhile: no orphan may survive.
        cancelled = False
        while self._workers:
            try:
                await asyncio.wait(set(self._workers))
            except asyncio.CancelledError:
                cancelled = True
                self._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
        if self._source is not None:
            await self._source.aclose()
        if cancelled:
            raise asyncio.CancelledError

    async def _wait_all(self) -> None:
        """Wait until every member has a result; a cancelled waiter cancels the group."""
        self._seal()
        if EAGER_WORKERS and self._spawn_pending:
            # No more members will come: start the workers now rather than at the loop's
            # next turn (each runs its member up to its first wait, right here).
            self._spawn()
        if not self._unfinished() and not self._workers:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done_waiters.append(waiter)
        try:
            await self._wait_lending(waiter)
        except asyncio.CancelledError:
            self._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
            try:
                await self._join_workers()
            finally:
                self._finalize()
            raise
        await self._join_workers()

    async def _wait_lending(self, waiter: asyncio.Future[None]) -> None:
        """Wait for ``waiter``, lending the global slot of the member we run inside, if any.

        A member waiting on its own nested group does no work, so it gives its global slot
        back meanwhile; that is what keeps nested groups from deadlocking on the global limit.
        If the wait is cancelled the slot stays lent: the member's own ``finally`` then has
        nothing to release, and waiting for a slot only to give it back would be pointless.
        """
        parent_slot = self._parent_frame.slot if self._parent_frame is not None else None
        lent = isinstance(parent_slot, MemberSlot) and parent_slot.lend_global()
        await waiter  # our own future: cancelling it disturbs no other waiter
        if lent:
            assert isinstance(parent_slot, MemberSlot)
            await parent_slot.reclaim_global()

    def _seal(self) -> None:
        """No more add(): the member count is now known, so a fractional threshold can apply."""
        if self._sealed:
            return
        self._sealed = True
        if (
            self._stop_status is None
            and self._last_failure is not None
            and self._threshold_reached()
        ):
            self._trigger = self._last_failure
            self._stop(ResultStatus.CANCELLED, GroupStatus.FAILED)

    async def gather(self, members: Iterable[Any] | None = None) -> list[ExecutionResult[T]]:
        """Every result in submission order (waits for all). FAIL_SLOW never raises.

        With ``members`` (members given directly), those are added first and only their
        results are returned.
        """
        if members is None:
            return await self._gather_all()
        indices = self.add_many((None, m) for m in members)
        results = await self._gather_all()
        return [results[i] for i in indices]

    async def gather_dict(
        self, members: Mapping[str, Any] | None = None
    ) -> dict[str | int, ExecutionResult[T]]:
        """Results by member name (unnamed members by index), in submission order."""
        if members is not None:
            self.add_many(members.items())
        results = await self._gather_all()
        if members is not None:
            return {key: results[self._names[key]] for key in members}
        return {(r.name if r.name is not None else r.index or 0): r for r in results}

    def stream(self) -> AsyncIterator[ExecutionResult[T]]:
        """Results in completion order, as soon as each member finishes::

            async for result in p.stream():
                print(result.index, result.ok)

        Leaving the loop early is fine: the rest still runs and is gathered with the block.
        (The iterator is a plain object, not an async generator, so abandoning it leaves no
        finalizer task behind.)
        """
        if not self._entered:
            self._used = True  # (told now: no UnusedGroupWarning later)
            raise GroupClosedError("stream() needs 'async with state.parallel(...) as p:' first")
        self._seal()
        return ResultStream(cast("ParallelExecutionManager[T]", self))

    def gather_stream(self, members: Iterable[Any]) -> AsyncIterator[ExecutionResult[T]]:
        """Add ``members``, then stream every result in completion order."""
        self.add_many((None, m) for m in members)
        return self.stream()

    def as_completed(
        self, members: Iterable[Any] | None = None
    ) -> AsyncIterator[ExecutionResult[T]]:
        """Results in completion order with ``index``, ``name`` and ``event_id`` set."""
        if members is not None:
            self.add_many((None, m) for m in members)
        return self.stream()
