"""Dependencies between members given to a group all at once, checked before anything runs.

``state.parallel_execute`` and ``p.execute_parallel`` take them by position for a list of
members (``{1: [0]}``: the member at position 1 runs once the one at position 0 completed)
and by name or by position for a dict of members (``{"report": ["fetch"]}``)::

    results = await state.parallel_execute([fetch(a), fetch(b), merge()],
                                           dependencies={2: [0, 1]})

A dependency that is not a member, a member that depends on itself, and a cycle are each a
``DependencyError`` naming what is wrong, raised before any member starts (and every member
given is closed, so none leaves a "never awaited" warning behind).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from rh_agents.errors import DependencyError

__all__ = ["dependency_order", "index_dependencies", "name_dependencies"]


def _position(value: Any, count: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DependencyError(
            f"{what} {value!r} is not a position: the members were given as a list, so "
            "dependencies are positions in it ({1: [0]}); give the members as a dict to "
            "name them"
        )
    if not 0 <= value < count:
        positions = f"positions 0 to {count - 1}" if count else "no positions"
        raise DependencyError(
            f"{what} {value}, but there are {count} members ({positions}); nothing was run"
        )
    return value


def _needs(needs: Any, whose: Any) -> Iterable[Any]:
    """What one member depends on: one member (a position or a name) or several."""
    if isinstance(needs, int | str):
        return (needs,)
    if isinstance(needs, Iterable) and not isinstance(needs, bytes | Mapping):
        return needs
    raise DependencyError(
        f"dependencies of member {whose!r} must be a member (a position or a name) or a list "
        f"of them, got {needs!r}"
    )


def index_dependencies(
    count: int, dependencies: Mapping[Any, Iterable[Any]] | None
) -> dict[int, tuple[int, ...]]:
    """``dependencies`` between ``count`` members given by position, checked: each key and
    each dependency a position below ``count``, none depending on itself, no cycle.

    Returns ``{position: (positions it needs, ...)}`` without duplicates or empty entries.
    """
    if not dependencies:
        return {}
    if not isinstance(dependencies, Mapping):
        raise DependencyError(
            f"dependencies must be a dict of positions ({{1: [0]}}), got {dependencies!r}"
        )
    graph: dict[int, tuple[int, ...]] = {}
    for key, needs in dependencies.items():
        position = _position(key, count, "dependencies name member")
        wanted: list[int] = []
        for need in _needs(needs, key):
            need_at = _position(need, count, f"member {position} depends on member")
            if need_at == position:
                raise DependencyError(
                    f"member {position} depends on itself; nothing was run (a member runs "
                    "after the members it names, never after itself)"
                )
            if need_at not in wanted:
                wanted.append(need_at)
        if wanted:
            graph[position] = tuple(wanted)
    _check_acyclic({key: list(needs) for key, needs in graph.items()}, range(count))
    return graph


def name_dependencies(
    names: Sequence[str], dependencies: Mapping[Any, Iterable[Any]] | None
) -> dict[str, list[str]]:
    """``dependencies`` between named members as names: a position (an ``int``) stands for
    the name at that position of ``names``, so ``{1: [0]}`` and ``{"b": ["a"]}`` say the
    same of members ``a`` and ``b``. Unknown names are left for ``dependency_order``."""
    if not dependencies:
        return {}
    if not isinstance(dependencies, Mapping):
        raise DependencyError(
            f"dependencies must be a dict ({{'b': ['a']}} or {{1: [0]}}), got {dependencies!r}"
        )

    def as_name(value: Any, what: str) -> str:
        if isinstance(value, str):
            return value
        return names[_position(value, len(names), what)]

    out: dict[str, list[str]] = {}
    for key, needs in dependencies.items():
        name = as_name(key, "dependencies name member")
        out.setdefault(name, []).extend(
            as_name(need, f"{name!r} depends on member") for need in _needs(needs, key)
        )
    return out


def dependency_order(
    members: Iterable[str], dependencies: Mapping[str, Iterable[str]]
) -> list[str]:
    """Names in an order where each comes after its dependencies; rejects unknown names,
    self-dependencies and cycles with a ``DependencyError``."""
    keys = list(members)
    known = set(keys)
    deps = {key: list(dependencies.get(key, ())) for key in keys}
    for key in dependencies:
        if key not in known:
            raise DependencyError(
                f"dependencies name {key!r}, which is not a member; members are {sorted(known)}"
            )
    for key, needs in deps.items():
        for need in needs:
            if need not in known:
                raise DependencyError(
                    f"member {key!r} depends on {need!r}, which is not a member; members are "
                    f"{sorted(known)}"
                )
            if need == key:
                raise DependencyError(
                    f"member {key!r} depends on itself; nothing was run (a member runs after "
                    "the members it names, never after itself)"
                )
    return _check_acyclic(deps, keys)


def _check_acyclic(deps: Mapping[Any, list[Any]], keys: Iterable[Any]) -> list[Any]:
    """``keys`` in dependency order; a cycle is a ``DependencyError`` that shows it."""
    order: list[Any] = []
    state: dict[Any, int] = {}  # 1 = visiting, 2 = done
    for root in keys:
        if state.get(root) == 2:
            continue
        # Iterative depth-first search: a long chain must not hit the recursion limit.
        path: list[Any] = [root]
        stack: list[Iterator[Any]] = [iter(deps.get(root, ()))]
        state[root] = 1
        while stack:
            need = next(stack[-1], _DONE)
            if need is _DONE:
                stack.pop()
                done = path.pop()
                state[done] = 2
                order.append(done)
                continue
            mark = state.get(need)
            if mark == 2:
                continue
            if mark == 1:
                cycle = [*path[path.index(need) :], need]
                raise DependencyError(
                    "dependencies form a cycle: "
                    + " -> ".join(str(item) for item in cycle)
                    + "; nothing was run"
                )
            state[need] = 1
            path.append(need)
            stack.append(iter(deps.get(need, ())))
    return order


_DONE: Any = object()
