"""Every form of ``p.add``: the fast path takes what it can, and rejects nothing it should not.

``p.add(coro)``, ``p.add(fn)``, ``p.add("name", coro)`` and ``p.add(fn, name=...)`` with no
other option skip the per-member checks that cannot fail (a plain function's arguments are
read from its code object, not from ``inspect.signature``); everything else still gets its
clear error.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel.member import check_member, takes_no_arguments
from rh_agents.errors import DuplicateMemberError, InvalidMemberError


async def value(x: int) -> int:
    await asyncio.sleep(0)
    return x


def _no_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspect.signature called on the fast path")

    monkeypatch.setattr(inspect, "signature", refuse)


async def test_every_form_runs_without_a_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_signature(monkeypatch)
    state = ExecutionState()
    async with state.parallel(max_workers=3) as p:
        p.add(value(0))
        p.add(lambda: value(1))
        p.add("two", value(2))
        p.add(lambda: value(3), name="three")
        p.add("four", lambda: value(4))
        p.add(lambda x=5: value(x))
        results = await p.gather()
    assert [r.result for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r.name for r in results] == [None, None, "two", "three", "four", None]


async def test_a_callable_that_needs_arguments_is_rejected_in_every_form() -> None:
    def positional(x: int) -> Any:
        return value(x)

    def keyword_only(*, x: int) -> Any:
        return value(x)

    @functools.wraps(positional)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return positional(*args, **kwargs)

    class Client:
        def fetch(self, x: int) -> Any:
            return value(x)

    state = ExecutionState()
    async with state.parallel() as p:
        for bad in (positional, keyword_only, wrapper, Client().fetch, lambda x: value(x)):
            with pytest.raises(InvalidMemberError, match="needs arguments"):
                p.add(bad)
            with pytest.raises(InvalidMemberError, match="needs arguments"):
                p.add("named", bad)
            with pytest.raises(InvalidMemberError, match="needs arguments"):
                p.add(bad, name="named")
        with pytest.raises(InvalidMemberError, match="needs arguments"):
            p.add(functools.partial(lambda x, y: value(x + y), 1))
    assert p.total == 0


async def test_zero_argument_callables_of_every_kind_are_accepted() -> None:
    class Client:
        def fetch(self, x: int = 7) -> Any:
            return value(x)

        def __call__(self) -> Any:
            return value(8)

    state = ExecutionState()
    async with state.parallel() as p:
        p.add(Client().fetch)
        p.add(Client())
        p.add(functools.partial(value, 9))
        p.add(functools.partial(lambda x, y: value(x + y), 4, y=6))
        results = await p.gather()
    assert [r.result for r in results] == [7, 8, 9, 10]


async def test_the_fast_path_still_checks_names() -> None:
    state = ExecutionState()
    async with state.parallel() as p:
        p.add("a", value(1))
        dup = value(2)
        with pytest.raises(DuplicateMemberError, match="'a'"):
            p.add("a", dup)
        assert dup.cr_frame is None  # closed, never awaited
        with pytest.raises(DuplicateMemberError, match="'a'"):
            p.add(lambda: value(3), name="a")
        with pytest.raises(Exception, match="non-empty str"):
            p.add(lambda: value(3), name="")
        results = await p.gather()
    assert [r.result for r in results] == [1]


def test_takes_no_arguments_reads_the_code_object() -> None:
    def f(a: int, b: int = 2) -> None: ...

    assert takes_no_arguments(lambda: None)
    assert takes_no_arguments(lambda a=1, b=2: None)
    assert not takes_no_arguments(lambda a: None)
    assert not takes_no_arguments(f)
    # Not surely: a wrapper or keyword-only parameters go to the full check.
    assert not takes_no_arguments(lambda *a: None)
    assert not takes_no_arguments(lambda *, k=1: None)
    check_member(lambda *a: None)  # accepted by the full check
    check_member(lambda *, k=1: None)
    with pytest.raises(InvalidMemberError, match="needs arguments"):
        check_member(lambda *, k: None)


def test_a_member_sets_every_field_of_the_frame_it_is() -> None:
    # Member.__init__ does not call Frame.__init__ (it is made per member): a field added to
    # Frame must be set there too.
    from rh_agents.core.context import Frame
    from rh_agents.core.parallel.member import Member

    member = Member(3, None)
    for field in Frame.__slots__:
        getattr(member, field)  # never an unset slot
    assert member.parallel_index == 3
    assert member.attempts == 1


async def test_a_member_is_the_frame_its_calls_run_under() -> None:
    from rh_agents.core.context import current_frame

    state = ExecutionState()
    seen: list[Any] = []

    async def where() -> str:
        frame = current_frame(state)
        seen.append(frame)
        await asyncio.sleep(0)
        return frame.child_address("call")

    async with state.parallel(name="g") as p:
        p.add(where())
        p.add(lambda: where(), name="named")
        results = await p.gather()
    assert [r.result for r in results] == ["g[0]::call", "g[1]::call"]
    assert [f.parallel_index for f in seen] == [0, 1]
    assert all(f.group_id == "g" and f.state is state for f in seen)
    assert current_frame(state) is state.root_frame


async def test_the_suite_runs_on_the_loop_it_was_asked_for(running_loop_kind: str) -> None:
    # make test-uvloop sets RH_AGENTS_TEST_LOOP=uvloop, make test-eager eager (conftest.py).
    loop = asyncio.get_running_loop()
    if running_loop_kind == "eager":
        assert loop.get_task_factory() is asyncio.eager_task_factory  # type: ignore[attr-defined]
    else:
        assert type(loop).__module__.split(".")[0] == running_loop_kind


def test_plain_group_options_are_checked_once_and_shared() -> None:
    from rh_agents.core.parallel.options import GroupOptions
    from rh_agents.errors import ConfigurationError

    first = GroupOptions.of(max_workers=7, name="docs")
    assert GroupOptions.of(max_workers=7, name="docs") is first
    assert GroupOptions.of(max_workers=7) is not first
    assert GroupOptions.of(max_workers=7, name="docs", timeout=1.0) is not first
    for bad in (0, -1):
        with pytest.raises(ConfigurationError, match="max_workers"):
            GroupOptions.of(max_workers=bad)
    with pytest.raises(ConfigurationError, match="group name"):
        GroupOptions.of(max_workers=7, name="a:b")
    with pytest.raises(ConfigurationError, match="line breaks"):  # the message names them too
        GroupOptions.of(max_workers=7, name="two\nlines")
