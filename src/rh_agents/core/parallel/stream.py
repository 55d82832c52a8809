"""``ResultStream``: the iterator behind ``p.stream()`` and ``p.as_completed()``.

It walks one group's results in completion order (or, for a group that keeps nothing, takes
them off the queue the workers fill), waiting for the next one without holding any slot::

    async for result in p.stream():
        print(result.index, result.ok)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rh_agents.core.parallel.strategy import GroupStatus
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import GroupClosedError

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager

__all__ = ["ResultIterator", "ResultStream"]

T = TypeVar("T")


class ResultIterator(Protocol[T]):
    """What ``p.stream()``, ``p.as_completed()`` and ``p.gather_stream([...])`` return, for
    type checkers: an async iterator of results that ``contextlib.aclosing`` can close::

        async with contextlib.aclosing(p.as_completed([a, b])) as results:
            async for result in results:
                ...
    """

    def __aiter__(self) -> ResultIterator[T]: ...

    async def __anext__(self) -> ExecutionResult[T]: ...

    async def aclose(self) -> None: ...


class ResultStream(AsyncIterator[ExecutionResult[Any]]):
    """The iterator behind ``p.stream()``: walks the completion order of one group.

    ``only``: the indexes of the members given to ``as_completed([...])`` or
    ``gather_stream([...])``: only their results are yielded, and the stream ends with the
    last of them (the group's other members go on, and are gathered with the block).
    """

    __slots__ = ("_cursor", "_finished", "_left", "_manager")

    def __init__(
        self, manager: ParallelExecutionManager[Any], only: Iterable[int] | None = None
    ) -> None:
        self._manager = manager
        self._cursor = 0
        self._finished = False
        self._left: set[int] | None = None if only is None else set(only)

    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> ExecutionResult[Any]:
        if self._finished:
            raise StopAsyncIteration
        manager = self._manager
        if manager._stream_owned:
            manager._reader = id(asyncio.current_task())  # (see ExecutionState.close)
        try:
            return await self._next()
        except StopAsyncIteration as stop:
            self._finished = True
            if stop is manager._stop_error or (
                manager._trigger is not None and stop is manager._trigger.exception
            ):
                # A member raised StopAsyncIteration and the strategy raises it here: out of
                # __anext__ it would end the reader's loop as if every result had come, and
                # the failure would be lost (the block takes it as raised where read). As
                # an async generator does (PEP 479), it becomes a RuntimeError.
                raise RuntimeError(
                    f"a member of group {manager.group_id!r} raised StopAsyncIteration, "
                    "which would end this stream as if it were done; it is the cause of this "
                    "error (gather() raises it as is)"
                ) from stop
            raise
        except BaseException:
            self._finished = True  # a strategy error or a cancellation
            raise

    async def aclose(self) -> None:
        self._finished = True

    async def _next(self) -> ExecutionResult[Any]:
        m = self._manager
        left = self._left
        try:
            while True:
                if left is not None and not left:
                    raise StopAsyncIteration  # every member asked for was yielded
                result = self._take()
                if result is not None:
                    if result is m._trigger:
                        # The error strategy stopped the group: join it, then raise its error.
                        await m._wait_all()
                        m._finalize()
                        m._raise_for_strategy(m._collected() if m._retain else self._unread(result))
                    if left is not None:
                        if result.index not in left:
                            continue  # another member's: not asked for here
                        left.discard(result.index)
                    return result
                if not m._unfinished():
                    break
                # Shared by every reader: shielded, so a cancelled reader leaves the others'
                # wait alone (the group's stop, below, then wakes them with its results).
                await m._wait_lending(asyncio.shield(m._readers.next_result()))
            await m._wait_all()
            m._finalize()
            if m._ended_by_close:
                # Never a quietly shortened stream: its state was closed under it.
                raise GroupClosedError(
                    f"the stream of group {m.group_id!r} was ended by its state's close() "
                    "before its end (its running members were cancelled); read it to its end, "
                    "or close it, before closing the state"
                )
            if m._retain:
                m._raise_for_strategy(m._collected())
        except asyncio.CancelledError:
            m._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)
            raise
        raise StopAsyncIteration

    def _unread(self, trigger: ExecutionResult[Any]) -> list[ExecutionResult[Any]]:
        """In a group that keeps no results, what the stream has not handed out when the
        strategy stops it: the trigger and every result after it, by index (the error's
        ``.results``; the others were yielded already)."""
        tally = self._manager._tally
        rest = [trigger, *tally.unretained]
        tally.unretained.clear()
        return sorted(rest, key=lambda r: r.index if r.index is not None else -1)

    def _take(self) -> ExecutionResult[Any] | None:
        m = self._manager
        tally = m._tally
        if not tally.retain:
            if not tally.unretained:
                return None
            m._readers.result_taken()  # a worker may wait for room to pull the next item
            return tally.unretained.popleft()
        order = tally.completion_order
        if self._cursor >= len(order):
            return None
        result = tally.results[order[self._cursor]]
        self._cursor += 1
        return result
