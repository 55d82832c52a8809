"""Adding members to a group: ``add``, ``add_many`` and ``map``.

``_Adding`` is the part of ``ParallelExecutionManager`` that checks what it is given, turns it
into a ``Member``, wires its dependencies, and hands it to the scheduler (or to the cache
lane, when the cache already holds its result)::

    async with state.parallel(max_workers=5) as p:
        p.add("fetch", fetch(url))                             # a name, then a coroutine
        p.add(lambda: report(url), after="fetch", priority=1)  # runs once "fetch" completed
        p.map(summarize, docs)                                 # one member per item, lazily

Invariants:

- A member is numbered in submission order (``_total`` before it was added) and that index
  never changes; names are unique within the group.
- Whatever ``add`` rejects (bad options, a closed group, an unknown dependency) is closed if
  it is a coroutine, so a refused member never leaves a "never awaited" warning; ``add_many``
  closes the entries after a refused one too.
- A member added after the group stopped, or after one of its dependencies failed, is
  finished at once (as the stop says, or skipped) and never runs.
- ``p.add(coro)``, ``p.add(fn)`` and ``p.add("name", coro)`` with no options take a fast path
  that skips the checks nothing could fail: a coroutine, or a plain function whose code object
  says it takes no argument (no ``inspect.signature`` per member), with a new name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from types import CoroutineType, FunctionType
from typing import TYPE_CHECKING, Any

from rh_agents.core.parallel.lazy_source import LazySource
from rh_agents.core.parallel.member import (
    Member,
    check_member,
    is_event_call,
    takes_no_arguments,
)
from rh_agents.errors import (
    ConfigurationError,
    DependencyError,
    DuplicateMemberError,
    GroupClosedError,
)

if TYPE_CHECKING:
    import asyncio
    from collections import deque

    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.options import GroupOptions
    from rh_agents.core.parallel.ready import ReadyQueue
    from rh_agents.core.results import ExecutionResult, ResultStatus

__all__ = ["_Adding"]

_NO_DEPENDENCIES: tuple[str, ...] = ()
_NO_INDICES: list[int] = []  # (never modified)


class _Adding:
    """``ParallelExecutionManager``'s member-adding methods (a mixin, no state)."""

    if not TYPE_CHECKING:
        # No fields of its own: they are all slots of ParallelExecutionManager. (Hidden
        # from mypy, which would otherwise reject assignments to fields declared below.)
        __slots__ = ()

    if TYPE_CHECKING:
        # Fields of ParallelExecutionManager (see its __init__) and the sibling methods used.
        group_id: str
        retry: Any
        options: GroupOptions
        _state: ExecutionState
        _now: Callable[[], float]
        _entered: bool
        _used: bool
        _sealed: bool
        _retain: bool
        _members: dict[int, Member]
        _dependents: dict[int, list[Member]]
        _names: dict[str, int]
        _results: list[ExecutionResult[Any] | None]
        _ready: ReadyQueue
        _source: LazySource | None
        _instant: deque[Member]
        _unstarted: set[asyncio.Task[None]]
        _stop_status: ResultStatus | None
        _total: int

        def _kick(self) -> None: ...
        def _served_by_cache(self, source: Any) -> bool: ...
        def _start_instant_lane(self) -> None: ...
        def _finish(self, member: Member, result: ExecutionResult[Any]) -> None: ...
        def _stopped_result(self, member: Member, elapsed: float = ...) -> ExecutionResult[Any]: ...
        def _skipped_result(
            self, member: Member, dep: ExecutionResult[Any]
        ) -> ExecutionResult[Any]: ...

    def add(
        self,
        *args: Any,
        name: str | None = None,
        after: Iterable[str | int] | str | int = _NO_DEPENDENCIES,
        priority: int = 0,
        timeout: float | None = None,
        retry: Any = None,
    ) -> int:
        """Add a member; returns its index. Three forms::

            p.add(event(input, context, state))          # a coroutine
            p.add(lambda: call(doc), name="doc2")        # a zero-argument callable
            p.add("doc3", event(input3, context, state)) # name first

        ``after`` names members that must complete first, by name or by index (a failed
        one skips this member);
        ``priority`` orders members waiting for a worker (higher first); ``timeout`` bounds
        this member alone.
        """
        if (
            after is _NO_DEPENDENCIES
            and timeout is None
            and retry is None
            and type(priority) is int
            and priority == 0
            and self.retry is None
            and self._entered
            and not self._sealed
            and self.options.executor is None
        ):
            # No option but a name: the forms of every member of a big group. Nothing below
            # could reject a coroutine, or a plain function that surely takes no argument
            # (read from its code object, not from a signature), under a new name: skip
            # straight to adding it.
            nargs = len(args)
            if nargs == 1:
                source, member_name = args[0], name
            elif nargs == 2 and name is None:
                member_name, source = args
            else:
                source = member_name = None
            kind = type(source)
            if (
                kind is CoroutineType or (kind is FunctionType and takes_no_arguments(source))
            ) and (
                member_name is None
                or (type(member_name) is str and member_name and member_name not in self._names)
            ):
                if self._stop_status is None and self._state.cache is None:
                    # Nothing to decide about it before a worker takes it: it waits as
                    # itself, and its Member is made then (see ReadyQueue).
                    index = self._total
                    self._total = index + 1
                    if self._retain:
                        self._results.append(None)
                    if member_name is not None:
                        self._names[member_name] = index
                    self._ready.push_bare(source, index, self._now(), member_name)
                    if not self._unstarted:  # else the worker starting now will kick
                        self._kick()
                    return index
                return self._add_member(source, member_name, _NO_INDICES, 0, None, None)
        if len(args) == 2 and isinstance(args[0], str):
            if name is not None:
                _close_quietly(args[1])
                raise ConfigurationError("give the member's name once: p.add('x', coro)")
            name, source = args
        elif len(args) == 1:
            source = args[0]
        else:
            for arg in args:
                _close_quietly(arg)
            raise ConfigurationError(
                "p.add() takes one member, or a name and a member: "
                f"got {len(args)} positional arguments"
            )
        try:
            self._check_can_add()
            check_member(source)
            if self.options.executor is not None:  # can it be sent there? (said now)
                self.options.executor.check_member(source, self._label(name, self._total))
            if name is not None:
                if not isinstance(name, str) or not name:
                    raise ConfigurationError(f"a member name must be a non-empty str, got {name!r}")
                if name in self._names:
                    raise DuplicateMemberError(
                        f"group {self.group_id!r} already has a member named {name!r} "
                        f"(index {self._names[name]}); names must be unique"
                    )
            if timeout is not None and not (
                isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0
            ):
                raise ConfigurationError(f"timeout must be seconds > 0, got {timeout!r}")
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise ConfigurationError(f"priority must be an int, got {priority!r}")
            if isinstance(after, str | int):
                after = (after,)
            deps: list[int] = []
            if after and not self._retain:
                # Dependents are found through the kept members; without them none would run.
                raise ConfigurationError("after= needs a group that keeps results")
            for dep in after:
                deps.append(self._dependency_index(dep, name))
            self._check_retry(source, retry)
        except BaseException:
            _close_quietly(source)
            raise
        return self._add_member(source, name, deps, priority, timeout, retry)

    def add_many(
        self,
        entries: Iterable[tuple[Any, ...]],
    ) -> list[int]:
        """Add ``(name, member)`` or ``(name, member, after)`` entries; returns their indices.

        If one is rejected, the error is raised and every coroutine not added yet is closed,
        so a bad entry never leaves a "coroutine was never awaited" warning behind.
        """
        entries_iter = iter(entries)
        indices: list[int] = []
        try:
            for entry in entries_iter:
                name, member = entry[0], entry[1]
                after: Iterable[str | int] = entry[2] if len(entry) > 2 else ()
                if name is None:
                    indices.append(self.add(member, after=after))
                else:
                    indices.append(self.add(name, member, after=after))
        except BaseException:
            for rest in entries_iter:
                _close_quietly(rest[1])
            raise
        return indices

    def _dependency_index(self, dep: Any, name: str | None) -> int:
        """The index of the member ``dep`` names (a name, or an index already added)."""
        if isinstance(dep, str):
            index = self._names.get(dep)
            if index is None:
                known = ", ".join(sorted(self._names)) or "none yet"
                raise DependencyError(
                    f"member {name or self._total!r} depends on {dep!r}, which is "
                    f"not a member of group {self.group_id!r} (known: {known}); add the "
                    "dependency first"
                )
            return index
        if isinstance(dep, int) and not isinstance(dep, bool):
            if 0 <= dep < self._total:
                return dep
            raise DependencyError(
                f"member {name or self._total!r} depends on member {dep}, which is not a member "
                f"of group {self.group_id!r} ({self._total} added so far); add the dependency "
                "first"
            )
        raise DependencyError(f"after= takes member names or indices, got {dep!r}")

    def _add_graph(
        self, sources: list[Any], dependencies: Mapping[int, Sequence[int]]
    ) -> list[int]:
        """Add ``sources`` at once, the one at position ``i`` after those at the positions
        ``dependencies[i]`` gives (checked by ``index_dependencies``: no cycle, none unknown).

        Member ``i`` gets the next index plus ``i`` whichever way its dependencies point (a
        member may depend on one given after it): every member is registered before any of
        them is handed to a worker.
        """
        try:
            self._check_can_add()
            if not self._retain:
                raise ConfigurationError("dependencies need a group that keeps results")
            executor = self.options.executor
            for position, source in enumerate(sources):
                check_member(source)
                self._check_retry(source, None)
                if executor is not None:
                    executor.check_member(source, self._label(None, self._total + position))
        except BaseException:
            for source in sources:
                _close_quietly(source)
            raise
        first = self._total
        members = [self._register(source, None, 0, None, None) for source in sources]
        if self._stop_status is not None:
            for member in members:
                self._finish(member, self._stopped_result(member))
            return [member.index for member in members]
        for position, needs in dependencies.items():
            member = members[position]
            member.pending_deps = len(needs)
            self._members[member.index] = member  # waiting: a stop must find it
            for need in needs:
                self._dependents.setdefault(first + need, []).append(member)
        for member in members:
            if not member.pending_deps:
                self._enqueue(member)
        return [member.index for member in members]

    def _label(self, name: str | None, index: int) -> str:
        """How an error names the member at ``index`` (``member 3 ('doc3') of group 'g'``)."""
        named = f" ({name!r})" if name is not None else ""
        return f"member {index}{named} of group {self.group_id!r}"

    def _check_can_add(self) -> None:
        if not self._entered:
            self._used = True  # (told now: no UnusedGroupWarning later)
            raise GroupClosedError(
                "add() needs an open group: use 'async with state.parallel(...) as p:'"
            )
        if self._sealed:
            raise GroupClosedError(
                f"group {self.group_id!r} was already gathered or closed; add members "
                "before calling gather()/stream(), or open a new group"
            )

    def _check_retry(self, source: Any, retry: Any) -> None:
        # A bare coroutine cannot run twice: reject a policy that would need it to, now.
        policy = retry if retry is not None else self.retry
        if policy is None:
            return
        attempts = getattr(policy, "max_attempts", 1)
        if attempts > 1 and inspect.iscoroutine(source) and not is_event_call(source):
            from rh_agents.errors import RetryPolicyError

            raise RetryPolicyError(
                f"a retry policy with max_attempts={attempts} cannot re-run a bare coroutine "
                f"({source.__qualname__}); add a zero-argument callable instead: "
                "p.add(lambda: fn(x))"
            )

    def _add_member(
        self,
        source: Any,
        name: str | None,
        deps: list[int],
        priority: int,
        timeout: float | None,
        retry: Any,
    ) -> int:
        member = self._register(source, name, priority, timeout, retry)
        index = member.index
        if self._stop_status is not None:
            self._finish(member, self._stopped_result(member))
            return index
        pending = 0
        if deps:
            results = self._results  # (kept: after= needs a group that keeps results)
            for dep_index in deps:
                dep = results[dep_index]
                if dep is None:
                    pending += 1
                    self._dependents.setdefault(dep_index, []).append(member)
                elif not dep.ok:
                    self._finish(member, self._skipped_result(member, dep))
                    return index
            member.pending_deps = pending
            if pending:
                self._members[index] = member  # waiting: a stop must find it
                return index
        self._enqueue(member)
        return index

    def _enqueue(self, member: Member) -> None:
        """Hand ``member``, ready to run, to the cache lane or to the workers."""
        if self._state.cache is not None and self._served_by_cache(member.source):
            self._instant.append(member)  # a cache hit takes no worker slot
            self._start_instant_lane()
        else:
            self._ready.push(member)
            if not self._unstarted:  # else the worker starting now will kick (see _kick)
                self._kick()

    def _register(
        self, source: Any, name: str | None, priority: int, timeout: float | None, retry: Any
    ) -> Member:
        index = self._total
        member = Member(index, source, name, priority, timeout, retry)
        member.enqueued = self._now()
        if self._retain:
            self._results.append(None)
        self._total += 1
        if name is not None:
            self._names[name] = index
        return member

    def map(
        self,
        func: Callable[[Any], Awaitable[Any]] | Any,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        context: str = "",
    ) -> None:
        """Add one member per item of ``items``, pulled only as workers free up.

        ``func`` is an async function of one item, or an ``ExecutionEvent`` (called as
        ``event(item, context, state)``). A sync or async iterable of any length works:
        items are read lazily, so a million-item input never sits in memory.
        """
        self._check_can_add()
        if self._source is not None:
            raise ConfigurationError("a group takes one map() input; open another group")
        from rh_agents.core.events import ExecutionEvent

        call: Callable[[Any], Awaitable[Any]]
        if isinstance(func, ExecutionEvent):
            call = functools.partial(_call_event, func, context=context, state=self._state)
        elif callable(func):
            call = func
            if self.options.executor is not None:  # each item is checked as it is sent
                self.options.executor.check_function(func, f"map() of group {self.group_id!r}")
        else:
            raise ConfigurationError(f"map() needs an async function or an event, got {func!r}")
        if isinstance(items, AsyncIterable):
            self._source = LazySource(call, async_items=aiter(items))
        elif isinstance(items, Iterable):
            self._source = LazySource(call, items=iter(items))
        else:
            raise ConfigurationError(f"map() needs an iterable or async iterable, got {items!r}")
        self._kick()


def _call_event(event: Any, item: Any, *, context: str, state: ExecutionState) -> Awaitable[Any]:
    return event(item, context, state)  # type: ignore[no-any-return]


def _close_quietly(obj: Any) -> None:
    if isinstance(obj, Coroutine):  # a coroutine or an event call
        obj.close()
