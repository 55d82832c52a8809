"""``execute_parallel``: give a group every member at once and get what its batch mode says.

The functions here are ``ParallelExecutionManager``'s methods (bound in its class body, each
taking the group first) that run a whole batch in one call, with or without ``async with``::

    manager = ParallelExecutionManager(execution_state, max_workers=5,
                                       batch_mode=BatchMode.GATHER)
    results = await manager.execute_parallel(events, dependencies={1: [0]})

``events`` are the members (event calls, coroutines or zero-argument callables), as a list
or as a dict by name; ``dependencies`` says which run after which, by position (a list) or
by name or position (a dict), and is checked before anything runs (see ``dependencies``).
The group's ``batch_mode`` decides the return value (see ``BatchMode``).

Invariants:

- A group runs once: outside ``async with``, ``execute_parallel`` opens the group, adds the
  members, gathers and closes it; a second call is a ``GroupClosedError``. Inside
  ``async with``, it adds the members to the open group and gathers it.
- Whatever is rejected before the group opens (bad dependencies, a used group, a group that
  cannot open: a closed state) closes every member given, so none leaves a "never awaited"
  warning behind.
- A stream (``STREAM``, ``AS_COMPLETED``) opens the group when it is first iterated and
  closes it when it ends; ``aclose()`` before the end cancels the members still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rh_agents.core.parallel.advising import warn_never_iterated
from rh_agents.core.parallel.dependencies import (
    dependency_order,
    index_dependencies,
    name_dependencies,
)
from rh_agents.core.parallel.strategy import BatchMode
from rh_agents.errors import ConfigurationError, GroupClosedError

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.results import ExecutionResult

__all__ = [
    "BatchStream",
    "batch_mode",
    "checked_batch",
    "close_abandoned",
    "execute_parallel",
    "join_closings",
]

_STREAMS = (BatchMode.STREAM, BatchMode.AS_COMPLETED)


def batch_mode(group: ParallelExecutionManager[Any]) -> BatchMode:
    """What ``execute_parallel`` returns (see ``BatchMode``)."""
    return group.options.batch_mode


async def execute_parallel(
    group: ParallelExecutionManager[Any],
    events: Iterable[Any] | Mapping[str, Any],
    dependencies: Mapping[Any, Iterable[Any]] | None = None,
) -> Any:
    """Run ``events`` in this group, each after its ``dependencies``, and return what
    the group's ``batch_mode`` says:

    - ``GATHER`` (default): a list of results in the order of ``events``;
    - ``GATHER_DICT``: ``{name: result}`` (a dict of events) or ``{position: result}``;
    - ``STREAM`` / ``AS_COMPLETED``: an async iterator of results in completion order.

    ``dependencies={1: [0]}`` runs the member at position 1 once the one at position 0
    completed (a failed one skips it); with a dict of events, names work too
    (``{"report": ["fetch"]}``). An unknown member, a member depending on itself and a
    cycle are each a ``DependencyError`` before anything runs.

    Works without ``async with``: the call opens the group, runs it and closes it (a
    group runs once: make a new one for the next batch). Inside ``async with``, the
    members join the open group, and the whole group is gathered.
    """
    batch = checked_batch(group, events, dependencies)
    mode = group.options.batch_mode
    if mode in _STREAMS:
        if group._entered:
            batch.add()
            return group.stream()
        return BatchStream(group, batch)
    if group._entered:
        positions = batch.add()
        results = await group._gather_all()
    else:
        try:
            async with group:
                positions = batch.add()
                results = await group._gather_all()
        finally:
            # The members the group never took: all of them when it could not open (a
            # closed state, another loop's), none once added.
            batch.close()
    mine = [results[index] for index in positions]
    if mode is BatchMode.GATHER_DICT:
        if batch.keys:
            return dict(zip(batch.keys, mine, strict=True))
        return dict(enumerate(mine))
    return mine


def checked_batch(
    group: ParallelExecutionManager[Any],
    events: Iterable[Any] | Mapping[str, Any],
    dependencies: Mapping[Any, Iterable[Any]] | None,
) -> _Batch:
    """``events`` and ``dependencies``, checked now (nothing is added yet)."""
    group._used = True  # whatever happens next, the group was not forgotten
    if isinstance(events, Mapping):
        keys = list(events)
        sources = [events[key] for key in keys]
    elif isinstance(events, Iterable) and not isinstance(events, str | bytes):
        keys = []
        sources = list(events)
    else:
        _close_all([events])
        raise ConfigurationError(
            f"execute_parallel() takes a list (or a dict by name) of members, got {events!r}"
        )
    try:
        if group._entered and group._sealed:
            raise GroupClosedError(
                "this parallel group was already used: a group runs once; make a new one "
                "(state.parallel(...) or ParallelExecutionManager(...)) for the next batch"
            )
        if keys:
            bad = [key for key in keys if not isinstance(key, str) or not key]
            if bad:
                raise ConfigurationError(
                    f"a dict of members is keyed by their names (non-empty str); got {bad[0]!r}"
                )
            needs = name_dependencies(keys, dependencies)
            order = dependency_order(keys, needs)
            return _Batch(group, sources, keys, order=order, needs=needs)
        graph = index_dependencies(len(sources), dependencies)
        return _Batch(group, sources, keys, graph=graph)
    except BaseException:
        _close_all(sources)
        raise


class _Batch:
    """Members given to ``execute_parallel``, checked, waiting to be added to the group."""

    __slots__ = ("graph", "keys", "manager", "needs", "order", "sources")

    def __init__(
        self,
        manager: ParallelExecutionManager[Any],
        sources: list[Any],
        keys: list[str],
        *,
        order: list[str] | None = None,
        needs: dict[str, list[str]] | None = None,
        graph: dict[int, tuple[int, ...]] | None = None,
    ) -> None:
        self.manager = manager
        self.sources = sources
        self.keys = keys
        self.order = order
        self.needs = needs or {}
        self.graph = graph or {}

    def add(self) -> list[int]:
        """Add the members; returns each one's index, in the order they were given."""
        manager, sources = self.manager, self.sources
        self.sources = []
        if self.keys:
            # By name: each added after the ones it needs (in dependency order).
            by_key = dict(zip(self.keys, sources, strict=True))
            order = self.order or self.keys
            indices = manager.add_many((key, by_key[key], self.needs.get(key, ())) for key in order)
            at = dict(zip(order, indices, strict=True))
            return [at[key] for key in self.keys]
        if self.graph:
            return manager._add_graph(sources, self.graph)
        return manager.add_many((None, source) for source in sources)

    def close(self) -> None:
        """Close the members that were never added."""
        sources, self.sources = self.sources, []
        _close_all(sources)


# Closings of abandoned streams under way, by the state they belong to: the loop holds
# tasks only weakly, and ``ExecutionState.close`` waits for its own (``join_closings``).
_closing: dict[asyncio.Task[None], ExecutionState] = {}


async def close_abandoned(manager: ParallelExecutionManager[Any]) -> None:
    """End the group of a stream nobody reads to its end (dropped, or still held as its
    state closes): its running members are cancelled, its results so far kept."""
    stop = asyncio.CancelledError("the stream was dropped before its end")
    try:
        await manager.__aexit__(asyncio.CancelledError, stop, None)
    except asyncio.CancelledError as exc:
        if exc is not stop:
            raise
    except Exception as exc:  # nobody awaits this task to be told: the run's report has it
        manager.execution_state.report_internal_error(exc)


def _start_closing(manager: ParallelExecutionManager[Any]) -> None:
    task = asyncio.get_running_loop().create_task(close_abandoned(manager))
    _closing[task] = manager.execution_state
    task.add_done_callback(_closing.pop)


async def join_closings(state: ExecutionState) -> None:
    """Wait for the closings of ``state``'s abandoned streams still under way."""
    mine = [task for task, owner in _closing.items() if owner is state]
    if mine:
        await asyncio.gather(*mine, return_exceptions=True)


def _close_later(manager: ParallelExecutionManager[Any]) -> None:
    """Close ``manager``'s group from its loop, soon (called from ``__del__``: any thread)."""
    loop = manager._loop
    if loop is None or loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(_start_closing, manager)
    except RuntimeError:  # the loop closed meanwhile
        pass


class BatchStream:
    """The results of ``execute_parallel`` in a ``STREAM`` or ``AS_COMPLETED`` group, in
    completion order. The group opens on the first ``async for`` step and closes at the end;
    ``aclose()`` (or ``contextlib.aclosing``) before the end cancels what still runs::

        stream = await manager.execute_parallel(events)
        async with contextlib.aclosing(stream):
            async for result in stream:
                ...
    """

    __slots__ = ("_batch", "_closed", "_manager", "_stream")

    def __init__(self, manager: ParallelExecutionManager[Any], batch: _Batch) -> None:
        self._manager = manager
        manager._stream_owned = True  # (a state's close() ends it if it is still open)
        self._batch: _Batch | None = batch
        self._stream: AsyncIterator[ExecutionResult[Any]] | None = None
        self._closed = False

    def __aiter__(self) -> BatchStream:
        return self

    async def __anext__(self) -> ExecutionResult[Any]:
        if self._closed:
            raise StopAsyncIteration
        manager = self._manager
        if self._stream is None:
            batch, self._batch = self._batch, None
            assert batch is not None
            try:
                await manager.__aenter__()
            except BaseException:
                self._closed = True
                batch.close()
                raise
            try:
                batch.add()
                self._stream = manager.stream()
            except BaseException as exc:
                self._closed = True
                await manager.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._closed = True
            await manager.__aexit__(None, None, None)
            raise
        except BaseException as exc:
            self._closed = True
            await manager.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    def __del__(self) -> None:
        if getattr(self, "_stream", None) is not None and not self._closed:
            # Dropped mid-way without aclose() (a `break`): as for an async generator, the
            # loop closes it, so its members stop and its group ends rather than running on
            # unowned (and staying open forever).
            _close_later(self._manager)
            return
        # Dropped before its first step: its members never ran. Close them (no "coroutine
        # was never awaited" warning, one per member) and say what was lost, once.
        batch = getattr(self, "_batch", None)
        if batch is None:
            return
        self._batch = None
        count = len(batch.sources)
        batch.close()
        warn_never_iterated(self._manager, count)

    async def aclose(self) -> None:
        """Stop here: members still running are cancelled, and the group is closed."""
        if self._closed:
            return
        self._closed = True
        if self._stream is None:
            batch, self._batch = self._batch, None
            if batch is not None:
                batch.close()  # never started: the members given are closed unrun
            return
        stop = asyncio.CancelledError("the stream was closed before its end")
        try:
            await self._manager.__aexit__(asyncio.CancelledError, stop, None)
        except asyncio.CancelledError as exc:
            if exc is not stop:
                raise


def _close_all(members: Iterable[Any]) -> None:
    for member in members:
        if isinstance(member, Coroutine):  # a coroutine or an event call
            member.close()
