"""The group API: add() forms, gather, gather_dict, stream, as_completed, Option D."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from parallel_support import (
    Doc,
    assert_no_leftover_tasks,
    boom,
    closed,
    echo_tool,
    own_tasks,
    value,
)
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import DependencyError, GroupClosedError

pytestmark = pytest.mark.asyncio


async def gated(gate: asyncio.Event, x: Any) -> Any:
    await gate.wait()
    return x


async def test_add_three_forms_and_submission_order() -> None:
    state = ExecutionState()
    async with state.parallel(max_workers=2) as p:
        i0 = p.add(value("coro"))
        i1 = p.add(lambda: value("callable"), name="second")
        i2 = p.add("third", value("named"))
        results = await p.gather()
    assert (i0, i1, i2) == (0, 1, 2)
    assert [r.result for r in results] == ["coro", "callable", "named"]
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.name for r in results] == [None, "second", "third"]
    assert all(r.ok and r.status is ResultStatus.COMPLETED for r in results)


async def test_gather_order_is_submission_not_completion() -> None:
    state = ExecutionState()
    gates = [asyncio.Event() for _ in range(3)]
    async with state.parallel(max_workers=3) as p:
        for i in range(3):
            p.add(gated(gates[i], i))
        for gate in reversed(gates):  # finish 2, then 1, then 0
            gate.set()
            await asyncio.sleep(0)
        results = await p.gather()
    assert [r.result for r in results] == [0, 1, 2]


async def test_gather_after_block_returns_same_results() -> None:
    state = ExecutionState()
    async with state.parallel() as p:
        p.add(value(1))
        p.add(value(2))
        inside = await p.gather()
    after = await p.gather()
    assert [r.result for r in after] == [1, 2]
    assert all(a is b for a, b in zip(inside, after, strict=True))


async def test_leaving_block_gathers() -> None:
    state = ExecutionState()
    gate = asyncio.Event()
    async with state.parallel() as p:
        p.add(gated(gate, "late"))
        gate.set()
    # No gather inside: the block waited for the member on the way out.
    results = await p.gather()
    assert results[0].ok and results[0].result == "late"


async def test_gather_dict_uses_names_and_indices() -> None:
    state = ExecutionState()
    async with state.parallel() as p:
        p.add("a", value(1))
        p.add(value(2))
        p.add("c", value(3))
        named = await p.gather_dict()
    assert list(named) == ["a", 1, "c"]
    assert named["a"].result == 1 and named[1].result == 2 and named["c"].result == 3


async def test_stream_and_as_completed_yield_in_completion_order() -> None:
    for method in ("stream", "as_completed"):
        state = ExecutionState()
        gates = [asyncio.Event() for _ in range(3)]
        then = {2: 0, 0: 1}
        seen: list[tuple[int | None, str | None, str | None]] = []
        async with state.parallel(max_workers=3, name="g") as p:
            for i in range(3):
                p.add(f"m{i}", gated(gates[i], i))
            gates[2].set()
            async for r in getattr(p, method)():
                seen.append((r.index, r.name, r.event_id))
                if r.index in then:
                    gates[then[r.index]].set()
        assert seen == [(2, "m2", "g[2]"), (0, "m0", "g[0]"), (1, "m1", "g[1]")], method


async def test_option_d_forms() -> None:
    state = ExecutionState()
    event = ExecutionEvent(actor=echo_tool)
    async with state.parallel(max_workers=2, name="d") as p:
        listed = await p.gather([event(Doc(text="a"), "", state), value("b")])
    assert [r.result for r in listed] == ["A", "b"]

    async with state.parallel(name="dd") as p:
        named = await p.gather_dict({"x": event(Doc(text="x"), "", state), "y": value("y")})
    assert {k: r.result for k, r in named.items()} == {"x": "X", "y": "y"}

    async with state.parallel(name="s") as p:
        streamed = [r.result async for r in p.gather_stream([value(1), value(2)])]
    assert sorted(streamed) == [1, 2]

    async with state.parallel(name="ac") as p:
        ids = [r.event_id async for r in p.as_completed([event(Doc(text="q"), "", state)])]
    assert ids == ["ac[0]::echo"]


async def test_option_d_forms_work_without_a_block_as_the_spec_writes_them() -> None:
    # The spec's Option D: `results = await parallel.gather([...])`, no `async with`. Each
    # call opens the group, runs the members given and closes it (as execute_parallel).
    state = ExecutionState()
    event = ExecutionEvent(actor=echo_tool)
    before = own_tasks()
    parallel = state.parallel(max_workers=2, name="d")
    listed = await parallel.gather([event(Doc(text="a"), "", state), value("b")])
    assert [(r.index, r.result) for r in listed] == [(0, "A"), (1, "b")]
    assert parallel.group.status.value == "completed"
    with pytest.raises(GroupClosedError):  # a group runs once
        await parallel.gather([value("again")])

    named = await state.parallel(name="dd").gather_dict(
        {"x": event(Doc(text="x"), "", state), "y": value("y")}
    )
    assert {k: r.result for k, r in named.items()} == {"x": "X", "y": "y"}

    stream = state.parallel(name="s").gather_stream([value(1), value(2)])
    assert sorted([r.result async for r in stream]) == [1, 2]

    completed = state.parallel(name="ac").as_completed([event(Doc(text="q"), "", state)])
    assert [r.event_id async for r in completed] == ["ac[0]::echo"]
    assert_no_leftover_tasks(before)
    await state.close()


async def test_event_member_contributes_its_own_result() -> None:
    state = ExecutionState()
    event = ExecutionEvent(actor=echo_tool)
    async with state.parallel(name="docs") as p:
        p.add(event(Doc(text="ok"), "", state))
        p.add(event(Doc(text="fail-1"), "", state))
        results = await p.gather()
    good, bad = results
    assert isinstance(good.result, str) and good.result == "OK"  # not a result in a result
    assert good.address == "docs[0]::echo" and good.index == 0
    assert not bad.ok and bad.status is ResultStatus.FAILED
    assert isinstance(bad.exception, ValueError)
    assert p.statistics().failed == 1


async def test_event_member_failure_triggers_fail_fast() -> None:
    state = ExecutionState()
    event = ExecutionEvent(actor=echo_tool)
    never = asyncio.Event()
    waiting = gated(never, "never")
    with pytest.raises(ValueError, match="cannot process fail-x"):
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(event(Doc(text="fail-x"), "", state))
            p.add(waiting)
    stats = p.statistics()
    assert (stats.failed, stats.cancelled, stats.succeeded) == (1, 1, 0)
    assert closed(waiting)


async def test_parallel_execute_list_and_dict() -> None:
    state = ExecutionState()
    listed = await state.parallel_execute([value(1), value(2), value(3)], max_workers=2)
    assert [r.result for r in listed] == [1, 2, 3]
    named = await state.parallel_execute({"b": value("B"), "a": value("A")}, max_workers=3)
    assert list(named) == ["b", "a"]
    assert named["a"].result == "A" and named["b"].result == "B"


async def test_parallel_execute_dependencies_order() -> None:
    state = ExecutionState()
    order: list[str] = []

    async def step(name: str) -> str:
        order.append(name)
        return name

    results = await state.parallel_execute(
        {"c": step("c"), "b": step("b"), "a": step("a")},
        max_workers=3,
        dependencies={"c": ["b"], "b": ["a"]},
    )
    assert order == ["a", "b", "c"]
    assert list(results) == ["c", "b", "a"]


@pytest.mark.parametrize(
    ("deps", "message"),
    [
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, "cycle: a -> b -> c -> a"),
        ({"a": ["zzz"]}, "'zzz', which is not a member"),
        ({"nope": ["a"]}, "'nope', which is not a member"),
    ],
)
async def test_parallel_execute_bad_dependencies_rejected_before_running(
    deps: dict[str, list[str]], message: str
) -> None:
    state = ExecutionState()
    ran: list[str] = []

    async def step(name: str) -> str:
        ran.append(name)
        return name

    coros = {k: step(k) for k in ("a", "b", "c")}
    with pytest.raises(DependencyError, match=message):
        await state.parallel_execute(coros, dependencies=deps)
    assert ran == []
    assert all(closed(c) for c in coros.values())


async def test_parallel_execute_bad_option_closes_members() -> None:
    state = ExecutionState()
    coros = [value(1), value(2)]
    with pytest.raises(ValueError, match="max_workers"):
        await state.parallel_execute(coros, max_workers=0)
    assert all(closed(c) for c in coros)


async def test_parallel_execute_fail_fast_and_exception_group() -> None:
    state = ExecutionState()
    with pytest.raises(ValueError, match="first"):
        await state.parallel_execute(
            [boom("first"), value(2)], error_strategy=ErrorStrategy.FAIL_FAST
        )
    with pytest.raises(ExceptionGroup) as info:
        await state.parallel_execute([boom("x"), value(2), boom("y")], raise_exception_group=True)
    assert sorted(str(e) for e in info.value.exceptions) == ["x", "y"]


async def test_empty_group() -> None:
    state = ExecutionState()
    before = own_tasks()
    async with state.parallel() as p:
        assert await p.gather() == []
    assert await p.gather_dict() == {}
    assert [r async for r in p.stream()] == []
    assert_no_leftover_tasks(before)


async def test_member_returning_execution_result_is_not_wrapped() -> None:
    state = ExecutionState()
    own: ExecutionResult[int] = ExecutionResult(ok=True, result=7, execution_time=1.5)
    async with state.parallel() as p:
        p.add(value(own))
    [result] = await p.gather()
    # As is (its value, status and time, not a result in a result), placed at the member on
    # a copy: the caller's object is left as it was.
    assert (result.result, result.status, result.execution_time) == (7, own.status, 1.5)
    assert (result.index, result.address) == (0, "parallel[0]")
    assert (own.index, own.address) == (None, None)


async def test_leaving_stream_early_leaves_no_task_and_gathers_the_rest() -> None:
    state = ExecutionState()
    before = own_tasks()
    async with state.parallel(max_workers=2) as p:
        for i in range(4):
            p.add(value(i))
        stream = p.stream()
        first = await anext(stream)
        async for _ in stream:
            break  # abandon the iterator with results still to come
    await asyncio.sleep(0)  # an abandoned async generator would schedule its aclose() here
    assert_no_leftover_tasks(before)
    assert first.ok
    assert [r.result for r in await p.gather()] == [0, 1, 2, 3]


async def test_stream_raises_fail_fast_error_after_earlier_results() -> None:
    state = ExecutionState()
    seen: list[Any] = []
    with pytest.raises(ValueError, match="late"):
        async with state.parallel(max_workers=1, error_strategy="fail_fast") as p:
            p.add(value("early"))
            p.add(boom("late"))
            p.add(value("never"))
            async for r in p.stream():
                seen.append(r.result)
    assert seen == ["early"]


async def test_stream_needs_an_open_group() -> None:
    from rh_agents.errors import GroupClosedError

    with pytest.raises(GroupClosedError, match="async with"):
        ExecutionState().parallel().stream()


async def test_parallel_execute_rejected_member_closes_the_others() -> None:
    from rh_agents.errors import InvalidMemberError

    state = ExecutionState()
    before = own_tasks()
    first, last = value(1), value(3)
    with pytest.raises(InvalidMemberError, match="int 42"):
        await state.parallel_execute({"a": first, "b": 42, "c": last})
    assert closed(first) and closed(last)
    listed = [value(1), value(2)]
    with pytest.raises(InvalidMemberError):
        await state.parallel_execute([listed[0], None, listed[1]])
    assert all(closed(c) for c in listed)
    assert_no_leftover_tasks(before)


async def test_members_that_never_suspend_still_let_other_tasks_run() -> None:
    # A thousand members that never await would otherwise hold the loop for the whole group
    # (one worker runs them back to back): the worker yields every few hundred members.
    state = ExecutionState()
    turns = 0
    stop = False

    async def ticker() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    seen: list[int] = []  # the ticker's count as each member ran

    async def instant(i: int) -> int:
        seen.append(turns)
        return i

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running
    async with state.parallel(max_workers=4) as p:
        for i in range(1000):
            p.add(instant(i))
        results = await p.gather()
    stop = True
    await asyncio.wait_for(task, timeout=5)
    assert [r.result for r in results] == list(range(1000))
    # 1000 members, a yield every 256: the ticker ran between the batches.
    assert seen[-1] - seen[0] >= 2  # (without the yields, every member sees one count)


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda p, c: p.gather_dict([c(), c()]), "gather_dict\\(\\) takes a dict"),
        (lambda p, c: p.gather_dict([("a", c()), ("b", c())]), "gather_dict\\(\\) takes a dict"),
        (lambda p, c: p.gather_dict({None: c()}), "non-empty str keys, got None"),
        (lambda p, c: p.gather({"x": c()}), "gather\\(\\) takes members in a list.*a dict"),
        (lambda p, c: p.gather("ab"), "gather\\(\\) takes members in a list.*got str"),
        (lambda p, c: p.gather_stream(5), "gather_stream\\(\\) takes members.*got int 5"),
        (lambda p, c: p.as_completed(5), "as_completed\\(\\) takes members.*got int 5"),
    ],
)
async def test_members_given_in_the_wrong_container_are_refused_by_name(
    read: Any, message: str
) -> None:
    # A bare AttributeError, KeyError or TypeError, and coroutines left un-awaited.
    import warnings

    from rh_agents.errors import ConfigurationError

    async def c() -> int:
        return 1

    state = ExecutionState(watchdog=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with state.parallel() as p:
            with pytest.raises(ConfigurationError, match=message):
                outcome = read(p, c)
                if asyncio.iscoroutine(outcome):
                    await outcome
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
