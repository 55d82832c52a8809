"""``execute_parallel`` and ``BatchMode``, and dependencies by position wherever names work."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents import BatchMode, DependencyError, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.parallel import ParallelExecutionManager
from rh_agents.errors import ConfigurationError, GroupClosedError, UnusedGroupWarning

pytestmark = pytest.mark.asyncio


class Doc(BaseModel):
    name: str
    delay: float = 0.0


def make_tool(log: list[str]) -> Tool:
    async def process(input: Doc, context: str, state: ExecutionState) -> str:
        log.append(f"start {input.name}")
        await asyncio.sleep(input.delay)
        if input.name.startswith("bad"):
            raise RuntimeError(f"{input.name} is unreadable")
        log.append(f"end {input.name}")
        return f"processed {input.name}"

    return Tool(name="process_doc", description="stub", input_model=Doc, handler=process)


async def test_the_manager_sketch_as_written() -> None:
    log: list[str] = []
    execution_state = ExecutionState()
    event = ExecutionEvent(actor=make_tool(log))
    events = [
        event(Doc(name="fetch", delay=0.03), "", execution_state),
        event(Doc(name="summarize"), "", execution_state),
        event(Doc(name="other", delay=0.01), "", execution_state),
    ]

    manager = ParallelExecutionManager(execution_state, max_workers=5, batch_mode=BatchMode.GATHER)
    results = await manager.execute_parallel(events, dependencies={1: [0]})

    assert [r.result for r in results] == [
        "processed fetch",
        "processed summarize",
        "processed other",
    ]
    assert [r.index for r in results] == [0, 1, 2]
    # 1 started only once 0 had ended; 2 ran alongside 0.
    assert log.index("start summarize") > log.index("end fetch")
    assert log.index("start other") < log.index("end fetch")
    assert manager.max_workers == 5 and manager.batch_mode is BatchMode.GATHER
    assert manager.statistics().succeeded == 3

    # The default: no dependencies.
    again = ParallelExecutionManager(execution_state, max_workers=5)
    plain = await again.execute_parallel([event(Doc(name="x"), "", execution_state)])
    assert [r.result for r in plain] == ["processed x"]


@pytest.mark.parametrize("mode", list(BatchMode))
async def test_each_batch_mode_returns_its_shape(mode: BatchMode) -> None:
    state = ExecutionState()

    async def work(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return value

    members = [work(0, 0.03), work(1, 0.0), work(2, 0.015)]
    manager = ParallelExecutionManager(state, max_workers=3, batch_mode=mode)
    out: Any = await manager.execute_parallel(members)
    if mode is BatchMode.GATHER:
        assert [r.result for r in out] == [0, 1, 2]
    elif mode is BatchMode.GATHER_DICT:
        assert {key: r.result for key, r in out.items()} == {0: 0, 1: 1, 2: 2}
    else:
        seen = [(r.index, r.event_id) async for r in out]
        assert [index for index, _ in seen] == [1, 2, 0]  # completion order
        assert seen[0][1] == "parallel[1]"
    assert manager.status.value == "completed"


async def test_a_dict_of_members_gives_names_and_takes_dependencies_by_name_or_position() -> None:
    log: list[str] = []
    state = ExecutionState()
    event = ExecutionEvent(actor=make_tool(log))
    manager = state.parallel(batch_mode="gather_dict")
    results = await manager.execute_parallel(
        {
            "report": event(Doc(name="report"), "", state),
            "fetch": event(Doc(name="fetch", delay=0.01), "", state),
        },
        dependencies={0: [1]},  # report (position 0) after fetch (position 1)
    )
    assert list(results) == ["report", "fetch"]
    assert log.index("start report") > log.index("end fetch")

    by_name = await state.parallel_execute(
        {"a": event(Doc(name="a", delay=0.01), "", state), "b": event(Doc(name="b"), "", state)},
        dependencies={"b": ["a"]},
    )
    assert [r.result for r in by_name.values()] == ["processed a", "processed b"]


async def test_parallel_execute_takes_dependencies_by_position_for_a_list() -> None:
    log: list[str] = []
    state = ExecutionState()
    event = ExecutionEvent(actor=make_tool(log))
    results = await state.parallel_execute(
        [
            event(Doc(name="merge"), "", state),
            event(Doc(name="left", delay=0.02), "", state),
            event(Doc(name="bad-right"), "", state),
            event(Doc(name="after-left"), "", state),
        ],
        dependencies={0: [1, 2], 3: [1]},
    )
    assert [r.status.value for r in results] == ["skipped", "completed", "failed", "completed"]
    assert [r.index for r in results] == [0, 1, 2, 3]  # positions are indices, whatever the order
    assert "start merge" not in log
    assert log.index("start after-left") > log.index("end left")
    assert "bad-right" in (results[0].error or "")


@pytest.mark.parametrize(
    ("dependencies", "message"),
    [
        ({1: [1]}, "member 1 depends on itself"),
        ({0: [1], 1: [2], 2: [0]}, "dependencies form a cycle: 0 -> 1 -> 2 -> 0"),
        ({1: [7]}, "member 1 depends on member 7, but there are 3 members (positions 0 to 2)"),
        ({5: [0]}, "dependencies name member 5, but there are 3 members"),
        ({1: ["a"]}, "'a' is not a position"),
        ({-1: [0]}, "dependencies name member -1"),
    ],
)
async def test_bad_dependencies_by_position_are_rejected_before_anything_runs(
    dependencies: dict[Any, list[Any]], message: str
) -> None:
    log: list[str] = []
    state = ExecutionState()
    event = ExecutionEvent(actor=make_tool(log))
    calls = [event(Doc(name=str(i)), "", state) for i in range(3)]
    with pytest.raises(DependencyError) as caught:
        await state.parallel_execute(calls, dependencies=dependencies)
    assert message in str(caught.value)
    assert log == []
    assert all(call.started for call in calls)  # closed: no "never awaited" warning

    manager = ParallelExecutionManager(state, max_workers=2)
    calls = [event(Doc(name=str(i)), "", state) for i in range(3)]
    with pytest.raises(DependencyError, match=r"nothing was run|not a position"):
        await manager.execute_parallel(calls, dependencies=dependencies)
    assert log == [] and all(call.started for call in calls)


@pytest.mark.parametrize(
    ("dependencies", "message"),
    [
        ({"a": ["a"]}, "member 'a' depends on itself"),
        ({"a": ["b"], "b": ["a"]}, "dependencies form a cycle: a -> b -> a"),
        ({"a": ["zz"]}, "member 'a' depends on 'zz', which is not a member"),
        ({0: [3]}, "depends on member 3, but there are 2 members"),
    ],
)
async def test_bad_dependencies_by_name_are_rejected_before_anything_runs(
    dependencies: dict[Any, list[Any]], message: str
) -> None:
    log: list[str] = []
    state = ExecutionState()
    event = ExecutionEvent(actor=make_tool(log))
    calls = {"a": event(Doc(name="a"), "", state), "b": event(Doc(name="b"), "", state)}
    with pytest.raises(DependencyError) as caught:
        await state.parallel_execute(calls, dependencies=dependencies)
    assert message in str(caught.value)
    assert log == [] and all(call.started for call in calls.values())


async def test_add_takes_dependencies_by_index() -> None:
    order: list[int] = []
    state = ExecutionState()

    async def work(value: int, delay: float = 0.0) -> int:
        await asyncio.sleep(delay)
        order.append(value)
        return value

    async with state.parallel(max_workers=4) as p:
        p.add(work(0, 0.02))
        p.add(work(1))
        p.add("named", work(2, 0.01), after=1)
        p.add(work(3), after=[0, "named"])
        p.add(lambda: work(4), after=(2,))
        with pytest.raises(DependencyError, match="depends on member 9, which is not a member"):
            p.add(work(99), after=9)
        with pytest.raises(DependencyError, match="after= takes member names or indices"):
            p.add(work(98), after=[1.5])  # type: ignore[list-item]
    assert order.index(3) > order.index(0) and order.index(3) > order.index(2)
    assert order.index(2) > order.index(1)
    assert order.index(4) > order.index(2)


async def test_a_dependency_by_index_on_a_finished_member() -> None:
    state = ExecutionState()

    async def fail() -> None:
        raise ValueError("no")

    async def ok() -> int:
        return 1

    async with state.parallel() as p:
        p.add(fail())
        p.add(ok())
        await asyncio.sleep(0.01)  # both have finished
        p.add(ok(), after=0)
        p.add(ok(), after=1)
    results = await p.gather()
    assert [r.status.value for r in results] == ["failed", "completed", "skipped", "completed"]


async def test_execute_parallel_inside_an_open_group_adds_and_gathers() -> None:
    state = ExecutionState()

    async def value(v: int) -> int:
        return v

    async with state.parallel() as p:
        p.add(value(10))
        mine = await p.execute_parallel([value(1), value(2)], dependencies={1: [0]})
    assert [r.result for r in mine] == [1, 2]
    assert [r.result for r in await p.gather()] == [10, 1, 2]


async def test_a_group_runs_once() -> None:
    state = ExecutionState()

    async def value(v: int) -> int:
        return v

    manager = ParallelExecutionManager(state)
    assert [r.result for r in await manager.execute_parallel([value(1)])] == [1]
    second = value(2)
    with pytest.raises(GroupClosedError, match="a group runs once; make a new one"):
        await manager.execute_parallel([second])
    assert second.cr_frame is None  # closed


async def test_a_stream_closed_early_cancels_what_still_runs() -> None:
    state = ExecutionState()
    finished: list[int] = []

    async def work(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        finished.append(value)
        return value

    manager = state.parallel(max_workers=3, batch_mode=BatchMode.AS_COMPLETED)
    stream = await manager.execute_parallel([work(0, 0.0), work(1, 5), work(2, 5)])
    async with contextlib.aclosing(stream):
        async for result in stream:
            assert result.result == 0
            break
    assert finished == [0]
    assert manager.status.value == "cancelled"
    counts = manager.statistics()
    assert (counts.succeeded, counts.cancelled) == (1, 2)

    # A stream never iterated closes its members unrun.
    unrun = work(9, 0)
    never = await state.parallel(batch_mode="stream").execute_parallel([unrun])
    await never.aclose()  # type: ignore[attr-defined]
    assert unrun.cr_frame is None


async def test_batch_mode_is_checked_with_the_other_options() -> None:
    state = ExecutionState()
    with pytest.raises(ConfigurationError, match="unknown batch_mode 'list'; use one of GATHER"):
        state.parallel(batch_mode="list")
    group = state.parallel(batch_mode="STREAM")
    assert group.batch_mode is BatchMode.STREAM
    with pytest.warns(UnusedGroupWarning, match="never run"):
        del group  # never run
        gc.collect()
    with pytest.raises(ConfigurationError, match="keyed by their names"):
        await state.parallel().execute_parallel({1: asyncio.sleep(0)})  # type: ignore[dict-item]


async def test_a_stream_dropped_mid_way_without_aclose_is_closed_by_the_loop() -> None:
    # It left its group open forever, its members running unowned, and at exit an
    # UnusedGroupWarning said its results were never read.
    from parallel_support import until
    from rh_agents.core.bus import EventBus
    from rh_agents.core.records import GroupCompleted

    bus = EventBus()
    ended: list[GroupCompleted] = []
    bus.subscribe(lambda r: ended.append(r) if isinstance(r, GroupCompleted) else None)
    state = ExecutionState(event_bus=bus, watchdog=None)
    group = state.parallel(max_workers=3, batch_mode="stream")

    async def work(i: int) -> int:
        if i:
            await asyncio.Event().wait()
        return i

    with warnings_recorded() as caught:
        stream = await group.execute_parallel([work(i) for i in range(3)])
        async for result in stream:
            assert result.index == 0
            break
        del stream
        gc.collect()
        await until(lambda: group.status.value != "running")
        await until(lambda: len(ended) == 1)
    assert group.status.value == "cancelled"
    assert len(state.open_groups) == 0
    assert group.statistics().cancelled == 2
    assert not [w for w in caught if issubclass(w.category, UnusedGroupWarning)]
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@contextlib.contextmanager
def warnings_recorded() -> Any:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


async def test_closing_the_state_waits_for_a_dropped_streams_group_to_end() -> None:
    state = ExecutionState(watchdog=None)
    group = state.parallel(max_workers=2, batch_mode="stream")

    async def work(i: int) -> int:
        if i:
            await asyncio.Event().wait()
        return i

    stream = await group.execute_parallel([work(0), work(1)])
    async for _ in stream:
        break
    del stream
    gc.collect()
    await asyncio.sleep(0)  # the loop's callback starts the closing
    await state.close()  # and the state waits for it
    assert group.status.value == "cancelled"
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@pytest.mark.parametrize(
    ("members", "dependencies"),
    [("list", {1: None}), ("list", {1: 0.5}), ("dict", {"b": None}), ("dict", {"b": {"a": 1}})],
)
async def test_dependencies_of_the_wrong_shape_are_named(
    members: str, dependencies: dict[Any, Any]
) -> None:
    # They raised a bare TypeError ('NoneType' object is not iterable).
    async def value(i: int) -> int:
        return i

    state = ExecutionState(watchdog=None)
    given: Any = [value(0), value(1)] if members == "list" else {"a": value(0), "b": value(1)}
    with pytest.raises(DependencyError, match=r"must be a member .* or a list of them"):
        await state.parallel_execute(given, dependencies=dependencies)


async def test_state_parallel_takes_retain_results() -> None:
    state = ExecutionState(watchdog=None)
    async with state.parallel(max_workers=2, retain_results=False) as p:
        p.add(asyncio.sleep(0, result=1))
        assert [r.result async for r in p.stream()] == [1]
    with pytest.raises(ConfigurationError, match="does not keep results"):
        await p.gather()


async def _read_all(stream: Any) -> None:
    async for _ in stream:
        pass


# Every way to give a group its members at once, without `async with`: (members) -> awaitable.
GIVEN_AT_ONCE: dict[str, Any] = {
    "parallel_execute([...])": lambda state, members: state.parallel_execute(members),
    "parallel_execute({...})": lambda state, members: state.parallel_execute(
        {f"m{i}": member for i, member in enumerate(members)}
    ),
    "execute_parallel([...])": lambda state, members: state.parallel().execute_parallel(members),
    "manager.execute_parallel([...])": lambda state, members: ParallelExecutionManager(
        state
    ).execute_parallel(members),
    "gather([...])": lambda state, members: state.parallel().gather(members),
    "gather(generator)": lambda state, members: state.parallel().gather(m for m in members),
    "gather_dict({...})": lambda state, members: state.parallel().gather_dict(
        {f"m{i}": member for i, member in enumerate(members)}
    ),
    "as_completed([...])": lambda state, members: _read_all(state.parallel().as_completed(members)),
}


@pytest.mark.parametrize("give", GIVEN_AT_ONCE.values(), ids=list(GIVEN_AT_ONCE))
async def test_members_given_to_a_closed_state_are_closed_unrun(give: Any) -> None:
    # The group cannot open on a closed state: its members never ran, and each one left a
    # "never awaited" warning (an event call's UnawaitedCallWarning) when it was collected.
    state = ExecutionState()
    await state.close()
    ran: list[str] = []

    async def value() -> int:
        ran.append("value")
        return 1

    coroutine = value()
    call = ExecutionEvent(actor=make_tool(ran))(Doc(name="a"), "", state)
    with pytest.raises(ConfigurationError, match="this ExecutionState was closed"):
        await give(state, [coroutine, call])
    assert coroutine.cr_frame is None  # closed, not merely never started
    assert call.started  # (closed: it can no longer be awaited)
    assert ran == []
