"""Promises of docs/parallel.md that the code once broke where features met (found by an
audit of the docs against the code); each test names what it guards against."""

from __future__ import annotations

import asyncio

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import FailureThresholdError, GroupFailedError

pytestmark = pytest.mark.timeout(30)


async def _item(x: int) -> int:
    """Item 0 fails at once; the others finish a little later."""
    await asyncio.sleep(0 if x == 0 else 0.001)
    if x == 0:
        raise ValueError("only item 0 fails")
    return x


@pytest.mark.parametrize("threshold", [0.5, 0.04])
async def test_a_fractional_threshold_on_map_applies_to_the_whole_input(threshold: float) -> None:
    # "A fraction applies to the final member count": with map(), it was checked against the
    # items pulled so far, so one early failure in twenty stopped the group at 0.5.
    state = ExecutionState()
    stopped: FailureThresholdError | None = None
    try:
        async with state.parallel(
            max_workers=2, error_strategy="fail_threshold", failure_threshold=threshold
        ) as p:
            p.map(_item, range(20))
    except FailureThresholdError as exc:
        stopped = exc
    if threshold == 0.5:  # 1 failure in 20 is 5 %: no stop
        assert stopped is None
        results = await p.gather()
        assert [r.status for r in results].count(ResultStatus.COMPLETED) == 19
    else:  # 5 % >= 4 %: it stops, once the input's end shows the fraction is reached
        assert stopped is not None


async def test_a_fractional_threshold_on_an_async_map_input_waits_for_its_end() -> None:
    async def items():  # type: ignore[no-untyped-def]
        for x in range(20):
            yield x

    state = ExecutionState()
    async with state.parallel(
        max_workers=2, error_strategy="fail_threshold", failure_threshold=0.5
    ) as p:
        p.map(_item, items())
    assert len(await p.gather()) == 20


async def test_a_result_handed_back_from_a_nested_group_stays_that_groups() -> None:
    # "Any member returning an ExecutionResult is taken as is": the outer group wrote its own
    # index and name onto the nested group's stored result (two results at index 1 there,
    # and its gather_dict lost "first").
    state = ExecutionState()
    nested: list[object] = []

    async def delegate() -> ExecutionResult[float]:
        async with state.parallel(name="steps") as q:
            nested.append(q)
            q.add("first", asyncio.sleep(0.001, 1.0))
            q.add("second", asyncio.sleep(0.002, 2.0))
        return (await q.gather())[0]

    async with state.parallel(name="docs") as p:
        p.add(asyncio.sleep(0, 0.0), name="zero")
        p.add(delegate, name="outer1")
    outer = await p.gather()
    assert (outer[1].index, outer[1].name, outer[1].result) == (1, "outer1", 1.0)
    (q,) = nested
    inner = await q.gather()  # type: ignore[attr-defined]
    assert [(r.index, r.name) for r in inner] == [(0, "first"), (1, "second")]
    assert list(await q.gather_dict()) == ["first", "second"]  # type: ignore[attr-defined]


async def test_one_result_returned_by_two_members_is_each_ones_own() -> None:
    shared: ExecutionResult[int] = ExecutionResult(ok=True, result=7)

    async def give() -> ExecutionResult[int]:
        return shared

    state = ExecutionState()
    async with state.parallel() as p:
        p.add("a", give())
        p.add("b", give())
    a, b = await p.gather()
    assert (a.index, a.name, b.index, b.name) == (0, "a", 1, "b")
    assert a.result == b.result == 7


@pytest.mark.parametrize("form", ["as_completed", "gather_stream"])
async def test_streaming_the_members_given_yields_only_theirs(form: str) -> None:
    # "gather([a, b]) adds a, b and returns their results; the same for the other forms":
    # as_completed([a, b]) and gather_stream([a, b]) yielded every member of the group.
    state = ExecutionState()
    async with state.parallel() as p:
        p.add("other", asyncio.sleep(0, "other"))
        given = [asyncio.sleep(0.002, "a"), asyncio.sleep(0.001, "b")]
        streamed = getattr(p, form)(given)
        got = [r.result async for r in streamed]
    assert got == ["b", "a"]  # completion order, theirs only
    assert [r.result for r in await p.gather()] == ["other", "a", "b"]


async def test_raise_exception_group_works_for_a_group_that_keeps_no_results() -> None:
    # It did nothing in parallel_map (or any retain_results=False group): its results were
    # only streamed, and the error was built from an empty list.
    state = ExecutionState()

    async def item(x: int) -> int:
        await asyncio.sleep(0)
        if x % 2:
            raise ValueError(f"bad {x}")
        return x

    seen: list[str] = []
    with pytest.raises(GroupFailedError) as raised:
        async for result in state.parallel_map(item, range(6), raise_exception_group=True):
            seen.append(result.status.value)
    assert sorted(seen) == ["completed"] * 3 + ["failed"] * 3  # every result was streamed first
    assert sorted(str(e) for e in raised.value.exceptions) == ["bad 1", "bad 3", "bad 5"]
    assert "3 of 6 members" in str(raised.value)


async def test_a_named_event_members_result_is_its_calls_own() -> None:
    # The copy that keeps another group's result intact must not touch a member's own call:
    # its result is the one in the state's history, under the member's name.
    from pydantic import BaseModel

    from rh_agents.core.actors import Tool
    from rh_agents.core.events import ExecutionEvent

    class Doc(BaseModel):
        text: str

    async def echo(input: Doc, context: str, state: ExecutionState) -> str:
        return input.text

    event = ExecutionEvent(actor=Tool(name="echo", input_model=Doc, handler=echo))
    state = ExecutionState()
    async with state.parallel(name="g") as p:
        p.add("first", event(Doc(text="x"), "", state))
    (result,) = await p.gather()
    entry = state.history.get("g[0]::echo")
    assert entry is not None and entry.result is result and result.name == "first"


async def test_streaming_given_members_is_refused_where_results_are_not_kept() -> None:
    # Skipping the other members' results would lose them: they are handed out once.
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.errors import ConfigurationError

    state = ExecutionState()
    async with ParallelExecutionManager(state, retain_results=False) as p:
        p.add("other", asyncio.sleep(0, "other"))
        with pytest.raises(ConfigurationError, match="retain_results=False"):
            p.as_completed([asyncio.sleep(0, "a")])  # closed: no "never awaited" warning
        assert [r.result async for r in p.stream()] == ["other"]
