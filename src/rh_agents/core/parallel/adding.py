"""Adding members to a group: ``add``, ``add_many`` and ``map``.

The functions here are ``ParallelExecutionManager``'s methods (bound in its class body, each
taking the group first) that check what they are given, turn it into a ``Member``, wire its
dependencies, and hand it to the worker pool (or to the instant lane, when the cache already
holds its result or a resumed run replays it)::

    async with state.parallel(max_workers=5) as p:
        p.add("fetch", fetch(url))                             # a name, then a coroutine
        p.add(lambda: report(url), after="fetch", priority=1)  # runs once "fetch" completed
        p.map(summarize, docs)                                 # one member per item, lazily

Invariants:

- A member is numbered in submission order (``ResultTally.expect``) and that index never
  changes; names are unique within the group.
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
from asyncio import _get_running_loop
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
    ValuesView,
)
from contextvars import copy_context
from types import CoroutineType, FunctionType
from typing import TYPE_CHECKING, Any

from rh_agents.core.context import context_changed
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
from rh_agents.resilience.checks import check_policy, is_seconds
from rh_agents.resilience.retry import RetryPolicy

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.manager import ParallelExecutionManager

__all__ = [
    "add",
    "add_graph",
    "add_many",
    "add_member",
    "check_can_add",
    "check_retry",
    "close_refused",
    "dependency_index",
    "enqueue",
    "label",
    "map",
    "register",
    "take_context",
]

_NO_DEPENDENCIES: tuple[str, ...] = ()
_NO_INDICES: list[int] = []  # (never modified)


def add(
    group: ParallelExecutionManager[Any],
    *args: Any,
    name: str | None = None,
    after: Iterable[str | int] | str | int = _NO_DEPENDENCIES,
    priority: int = 0,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
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
        and group.retry is None
        and group._entered
        and not group._sealed
        and group.options.executor is None
        and _get_running_loop() is group._loop
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
        if (kind is CoroutineType or (kind is FunctionType and takes_no_arguments(source))) and (
            member_name is None
            or (type(member_name) is str and member_name and member_name not in group._names)
        ):
            pool = group._pool
            if (
                group._stop_status is None
                and group._state.cache is None
                and not context_changed(pool.context)
            ):
                # Nothing to decide about it before a worker takes it: it waits as
                # itself, and its Member is made then (see ReadyQueue). (Its context is the
                # block's, as its worker's is: the comparison is of one pointer when no
                # variable was set since the block was entered.)
                index = group._tally.expect()
                if member_name is not None:
                    group._names[member_name] = index
                pool.ready.push_bare(source, index, group._now(), member_name)
                if not pool.unstarted:  # else the worker starting now will kick
                    pool.kick()
                return index
            return add_member(group, source, member_name, _NO_INDICES, 0, None, None)
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
        hint = ""
        if len(args) == 2:
            hint = (
                f" (the name comes first: p.add({args[1]!r}, member))"
                if isinstance(args[1], str)
                else f" (a member's name must be a non-empty str, got {args[0]!r})"
            )
        raise ConfigurationError(
            "p.add() takes one member, or a name and a member: "
            f"got {len(args)} positional arguments{hint}"
        )
    try:
        check_can_add(group)
        check_member(source)
        if group.options.executor is not None:  # can it be sent there? (said now)
            group.options.executor.check_member(source, label(group, name, group._tally.total))
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"a member name must be a non-empty str, got {name!r}")
            if name in group._names:
                raise DuplicateMemberError(
                    f"group {group.group_id!r} already has a member named {name!r} "
                    f"(index {group._names[name]}); names must be unique"
                )
        if timeout is not None and not is_seconds(timeout):
            raise ConfigurationError(f"timeout must be seconds > 0, got {timeout!r:.60}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigurationError(f"priority must be an int, got {priority!r}")
        check_policy("retry", retry, RetryPolicy)
        if isinstance(after, str | int):
            after = (after,)
        elif not isinstance(after, Iterable):  # after=1.0: not "not iterable", but why
            raise DependencyError(
                f"after= takes a member name or index, or a list of them, got {after!r}"
            )
        deps: list[int] = []
        if after and not group._retain:
            # Dependents are found through the kept members; without them none would run.
            raise ConfigurationError("after= needs a group that keeps results")
        for dep in after:
            deps.append(dependency_index(group, dep, name))
        check_retry(group, source, retry)
    except BaseException:
        _close_quietly(source)
        raise
    return add_member(group, source, name, deps, priority, timeout, retry)


def add_many(
    group: ParallelExecutionManager[Any],
    entries: Iterable[tuple[Any, ...]],
) -> list[int]:
    """Add ``(name, member)`` or ``(name, member, after)`` entries; returns their indices.

    If one is rejected, the error is raised and every coroutine not added yet is closed,
    so a bad entry never leaves a "coroutine was never awaited" warning behind.
    """
    if isinstance(entries, Mapping) or not isinstance(entries, Iterable):
        close_refused(entries.values() if isinstance(entries, Mapping) else entries)
        raise ConfigurationError(
            "add_many() takes an iterable of (name, member) or (name, member, after) "
            f"tuples, got {type(entries).__name__}"
            + (": pass d.items() for a dict" if isinstance(entries, Mapping) else "")
        )
    entries_iter = iter(entries)
    indices: list[int] = []
    try:
        for entry in entries_iter:
            if not isinstance(entry, tuple | list) or not 2 <= len(entry) <= 3:
                close_refused(entry)
                raise ConfigurationError(
                    "add_many() takes (name, member) or (name, member, after) tuples "
                    f"(name may be None), got {entry!r:.80}"
                )
            name, member = entry[0], entry[1]
            after: Iterable[str | int] = entry[2] if len(entry) > 2 else ()
            if name is None:
                indices.append(add(group, member, after=after))
            else:
                indices.append(add(group, name, member, after=after))
    except BaseException:
        for rest in entries_iter:
            close_refused(rest)
        raise
    return indices


def close_refused(refused: Any) -> None:
    """Close every coroutine in what was refused, whatever its shape: a member, an
    ``add_many`` entry ``(name, member, after)``, or a list (or dict values) of those, so that
    a refused member never leaves a "coroutine was never awaited" warning behind."""
    if isinstance(refused, tuple | list | ValuesView):
        for part in refused:
            close_refused(part)
    else:
        _close_quietly(refused)


def dependency_index(group: ParallelExecutionManager[Any], dep: Any, name: str | None) -> int:
    """The index of the member ``dep`` names (a name, or an index already added)."""
    if isinstance(dep, str):
        index = group._names.get(dep)
        if index is None and dep == name:
            raise DependencyError(
                f"member {name!r} of group {group.group_id!r} depends on itself: it could "
                "never run; name the members it needs"
            )
        if index is None:
            known = ", ".join(sorted(group._names)) or "none yet"
            raise DependencyError(
                f"member {name or group._tally.total!r} depends on {dep!r}, which is "
                f"not a member of group {group.group_id!r} (known: {known}); add the "
                "dependency first"
            )
        return index
    if isinstance(dep, int) and not isinstance(dep, bool):
        if 0 <= dep < group._tally.total:
            return dep
        if dep == group._tally.total:
            raise DependencyError(
                f"member {name or dep!r} of group {group.group_id!r} depends on member {dep}, "
                "which is itself: it could never run; give the indices of the members it needs"
            )
        raise DependencyError(
            f"member {name or group._tally.total!r} depends on member {dep}, which is not a member "
            f"of group {group.group_id!r} ({group._tally.total} added so far); add the dependency "
            "first"
        )
    raise DependencyError(f"after= takes member names or indices, got {dep!r}")


def add_graph(
    group: ParallelExecutionManager[Any],
    sources: list[Any],
    dependencies: Mapping[int, Sequence[int]],
) -> list[int]:
    """Add ``sources`` at once, the one at position ``i`` after those at the positions
    ``dependencies[i]`` gives (checked by ``index_dependencies``: no cycle, none unknown).

    Member ``i`` gets the next index plus ``i`` whichever way its dependencies point (a
    member may depend on one given after it): every member is registered before any of
    them is handed to a worker.
    """
    try:
        check_can_add(group)
        if not group._retain:
            raise ConfigurationError("dependencies need a group that keeps results")
        executor = group.options.executor
        for position, source in enumerate(sources):
            check_member(source)
            check_retry(group, source, None)
            if executor is not None:
                executor.check_member(source, label(group, None, group._tally.total + position))
    except BaseException:
        for source in sources:
            _close_quietly(source)
        raise
    first = group._tally.total
    members = [register(group, source, None, 0, None, None) for source in sources]
    for member in members:
        take_context(group, member)
    if group._stop_status is not None:
        for member in members:
            group._finish(member, group._stopped_result(member))
        return [member.index for member in members]
    for position, needs in dependencies.items():
        member = members[position]
        member.pending_deps = len(needs)
        group._members[member.index] = member  # waiting: a stop must find it
        for need in needs:
            group._dependents.setdefault(first + need, []).append(member)
    for member in members:
        if not member.pending_deps:
            enqueue(group, member)
    return [member.index for member in members]


def take_context(group: ParallelExecutionManager[Any], member: Member) -> None:
    """If context variables changed since the block was entered (or this is another task),
    ``member`` runs with the values it is added under, as a task made here would."""
    if group._entered and context_changed(group._pool.context):
        member.context = copy_context()


def label(group: ParallelExecutionManager[Any], name: str | None, index: int) -> str:
    """How an error names the member at ``index`` (``member 3 ('doc3') of group 'g'``)."""
    named = f" ({name!r})" if name is not None else ""
    return f"member {index}{named} of group {group.group_id!r}"


def check_can_add(group: ParallelExecutionManager[Any]) -> None:
    if not group._entered:
        group._used = True  # (told now: no UnusedGroupWarning later)
        raise GroupClosedError(
            "add() needs an open group: use 'async with state.parallel(...) as p:'"
        )
    if group._sealed:
        raise GroupClosedError(
            f"group {group.group_id!r} was already gathered or closed; add members "
            "before calling gather()/stream(), or open a new group"
        )
    if _get_running_loop() is not group._loop:
        # Its queues, workers and timers belong to that loop's thread, which nothing
        # here may touch from another (a member added so would run, or not, by chance).
        raise GroupClosedError(
            f"add() to group {group.group_id!r} was called from another thread or event "
            "loop than the one the group runs on; add from the block's own loop (from a "
            "thread: loop.call_soon_threadsafe(p.add, ...))"
        )


def check_retry(
    group: ParallelExecutionManager[Any], source: Any, retry: RetryPolicy | None
) -> None:
    # A bare coroutine cannot run twice: reject a policy that would need it to, now.
    policy = retry if retry is not None else group.retry
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


def add_member(
    group: ParallelExecutionManager[Any],
    source: Any,
    name: str | None,
    deps: list[int],
    priority: int,
    timeout: float | None,
    retry: RetryPolicy | None,
) -> int:
    member = register(group, source, name, priority, timeout, retry)
    index = member.index
    take_context(group, member)
    if group._stop_status is not None:
        group._finish(member, group._stopped_result(member))
        return index
    pending = 0
    if deps:
        results = group._tally.results  # (kept: after= needs a group that keeps results)
        for dep_index in deps:
            dep = results[dep_index]
            if dep is None:
                pending += 1
                group._dependents.setdefault(dep_index, []).append(member)
            elif not dep.ok:
                group._finish(member, group._skipped_result(member, dep))
                return index
        member.pending_deps = pending
        if pending:
            group._members[index] = member  # waiting: a stop must find it
            return index
    enqueue(group, member)
    return index


def enqueue(group: ParallelExecutionManager[Any], member: Member) -> None:
    """Hand ``member``, ready to run, to the instant lane or to the workers."""
    pool = group._pool
    state = group._state
    if (state.cache is not None or state.recovery is not None) and pool.answered_at_once(member):
        pool.run_at_once(member)  # a cache hit or a replay takes no worker slot
    else:
        pool.ready.push(member)
        if not pool.unstarted:  # else the worker starting now will kick (see kick)
            pool.kick()


def register(
    group: ParallelExecutionManager[Any],
    source: Any,
    name: str | None,
    priority: int,
    timeout: float | None,
    retry: RetryPolicy | None,
) -> Member:
    index = group._tally.expect()
    member = Member(index, source, name, priority, timeout, retry)
    member.enqueued = group._now()
    if name is not None:
        group._names[name] = index
    return member


def map(
    group: ParallelExecutionManager[Any],
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
    check_can_add(group)
    if group._source is not None:
        raise ConfigurationError("a group takes one map() input; open another group")
    from rh_agents.core.events import ExecutionEvent

    call: Callable[[Any], Awaitable[Any]]
    if isinstance(func, ExecutionEvent):
        call = functools.partial(_call_event, func, context=context, state=group._state)
    elif callable(func):
        call = func
        if group.options.executor is not None:  # each item is checked as it is sent
            group.options.executor.check_function(func, f"map() of group {group.group_id!r}")
    else:
        raise ConfigurationError(f"map() needs an async function or an event, got {func!r}")
    if isinstance(items, AsyncIterable):
        group._source = LazySource(call, async_items=aiter(items))
    elif isinstance(items, Iterable):
        group._source = LazySource(call, items=iter(items))
    else:
        raise ConfigurationError(f"map() needs an iterable or async iterable, got {items!r}")
    group._pool.kick()


def _call_event(event: Any, item: Any, *, context: str, state: ExecutionState) -> Awaitable[Any]:
    return event(item, context, state)  # type: ignore[no-any-return]


def _close_quietly(obj: Any) -> None:
    if isinstance(obj, Coroutine):  # a coroutine or an event call
        obj.close()
