"""The spec's examples, written as in the spec, with small stub actors.

Each test body keeps the spec's code (names included: ``execution_state``, ``parallel``,
``process_doc``, ``event1``...) and then checks what the spec says it gives.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent, ExecutionResult
from rh_agents.core.execution import EventBus, ExecutionState
from rh_agents.core.parallel import ErrorStrategy

pytestmark = pytest.mark.asyncio


class DocIn(BaseModel):
    name: str


async def _process(input: DocIn, context: str, state: ExecutionState) -> str:
    if input.name.startswith("bad"):
        raise RuntimeError(f"{input.name} is unreadable")
    return f"processed {input.name}"


process_tool = Tool(name="process_doc", description="stub", input_model=DocIn, handler=_process)


def make_state() -> ExecutionState:
    return ExecutionState(event_bus=EventBus())


def process_doc(execution_state: ExecutionState, name: str) -> Any:
    return ExecutionEvent(actor=process_tool)(DocIn(name=name), "", execution_state)


async def test_basic_parallel_execution() -> None:
    execution_state = make_state()

    def process_doc1(*_: Any) -> Any:
        return process_doc(execution_state, "doc1")

    def process_doc2(*_: Any) -> Any:
        return process_doc(execution_state, "doc2")

    def process_doc3(*_: Any) -> Any:
        return process_doc(execution_state, "doc3")

    # Execute multiple independent tool calls
    async with execution_state.parallel(max_workers=5) as parallel:
        parallel.add(process_doc1(...))
        parallel.add(process_doc2(...))
        parallel.add(process_doc3(...))

    results = await parallel.gather()
    assert [r.result for r in results] == ["processed doc1", "processed doc2", "processed doc3"]


async def test_named_results() -> None:
    execution_state = make_state()
    names = iter(["doc1", "doc2"])

    def process_doc_(*_: Any) -> Any:
        return process_doc(execution_state, next(names))

    async with execution_state.parallel(max_workers=3) as parallel:
        parallel.add("doc1", process_doc_(...))
        parallel.add("doc2", process_doc_(...))

    results = await parallel.gather_dict()
    # Access: results["doc1"], results["doc2"]
    assert results["doc1"].result == "processed doc1"
    assert results["doc2"].result == "processed doc2"


async def test_streaming_results() -> None:
    execution_state = make_state()
    documents = [f"d{i}" for i in range(12)]
    printed: list[str] = []

    def print(text: str) -> None:
        printed.append(text)

    async with execution_state.parallel(max_workers=10) as parallel:
        for doc in documents:
            parallel.add(process_doc(execution_state, doc))

        async for result in parallel.stream():
            # Process each result as soon as it's available
            print(f"Processed: {result}")
    assert len(printed) == 12
    assert all(p.startswith("Processed: ExecutionResult(ok=True") for p in printed)


async def test_context_manager_api_with_auto_gather_and_one_liner() -> None:
    state = make_state()
    context = ""
    event1 = event2 = event3 = ExecutionEvent(actor=process_tool)
    input1, input2, input3 = DocIn(name="a"), DocIn(name="b"), DocIn(name="c")
    execution_state = state

    async with execution_state.parallel(max_workers=3) as parallel:
        parallel.add(event1(input1, context, state))
        parallel.add(event2(input2, context, state))
        parallel.add(event3(input3, context, state))
        # Automatically gathers on context exit
    assert [r.result for r in await parallel.gather()] == [
        "processed a",
        "processed b",
        "processed c",
    ]

    # Or one-liner
    results = await execution_state.parallel_execute(
        [event1(input1, context, state), event2(input2, context, state)], max_workers=3
    )
    assert [r.ok for r in results] == [True, True]


async def test_option_d_gathering_strategies() -> None:
    state = make_state()
    event = ExecutionEvent(actor=process_tool)
    seen: list[str] = []

    async with state.parallel(max_workers=4, name="list") as parallel:
        # List mode (default)
        results = await parallel.gather([event(DocIn(name="x"), "", state)])
    assert results[0].result == "processed x"

    async with state.parallel(name="dict") as parallel:
        # Dict mode
        results_by_name = await parallel.gather_dict({"name": event(DocIn(name="y"), "", state)})
    assert results_by_name["name"].result == "processed y"

    async with state.parallel(name="stream") as parallel:
        # Stream mode
        async for result in parallel.gather_stream([event(DocIn(name="z"), "", state)]):
            seen.append(result.result)
    assert seen == ["processed z"]

    async with state.parallel(name="done") as parallel:
        # As completed (with metadata)
        async for result in parallel.as_completed([event(DocIn(name="w"), "", state)]):
            seen.append(f"Event {result.event_id} completed")
    assert seen[-1] == "Event done[0]::process_doc completed"


async def test_option_a_and_b_result_shapes() -> None:
    state = make_state()
    event = ExecutionEvent(actor=process_tool)
    parallel_execute = state.parallel_execute
    event1 = event(DocIn(name="1"), "", state)
    event2 = event(DocIn(name="2"), "", state)
    event3 = event(DocIn(name="3"), "", state)

    results = await parallel_execute([event1, event2, event3])
    # results[0] = event1 result ... results[2] = event3 result
    assert [r.result for r in results] == ["processed 1", "processed 2", "processed 3"]

    named = await parallel_execute(
        {
            "doc1": event(DocIn(name="1"), "", state),
            "doc2": event(DocIn(name="2"), "", state),
            "doc3": event(DocIn(name="3"), "", state),
        }
    )
    # results["doc1"] = event1 result
    assert named["doc1"].result == "processed 1"


async def test_error_strategies_fail_fast_fail_slow_configurable() -> None:
    state = make_state()
    event = ExecutionEvent(actor=process_tool)
    parallel_execute = state.parallel_execute

    def three() -> list[Any]:
        return [event(DocIn(name=n), "", state) for n in ("ok1", "bad2", "ok3")]

    # If one fails, all are cancelled
    caught: list[Exception] = []
    try:
        results = await parallel_execute(three(), error_strategy=ErrorStrategy.FAIL_FAST)
    except Exception as e:
        caught.append(e)
    assert isinstance(caught[0], RuntimeError) and "bad2 is unreadable" in str(caught[0])

    # Fail slow (the default): every result, failures included
    results = await parallel_execute(three())
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "RuntimeError: bad2 is unreadable"

    results = await parallel_execute(
        three(),
        error_strategy=ErrorStrategy.COLLECT_ALL,  # or FAIL_FAST, FAIL_THRESHOLD
    )
    assert isinstance(results[0], ExecutionResult) and len(results) == 3


async def test_exception_groups_keep_partial_results() -> None:
    state = make_state()
    event = ExecutionEvent(actor=process_tool)
    parallel_execute = state.parallel_execute
    errors: list[str] = []
    try:
        await parallel_execute(
            [event(DocIn(name=n), "", state) for n in ("bad1", "ok", "bad3")],
            raise_exception_group=True,
        )
    except ExceptionGroup as eg:
        for error in eg.exceptions:
            errors.append(f"Error: {error}")
        # Still have partial results
        partial = eg.results  # type: ignore[attr-defined]
    assert errors == ["Error: bad1 is unreadable", "Error: bad3 is unreadable"]
    assert [r.ok for r in partial] == [False, True, False]


async def test_with_custom_printer() -> None:
    import io

    from rich.console import Console

    from rh_agents.bus_handlers import ParallelEventPrinter

    out = io.StringIO()
    printer = ParallelEventPrinter(
        parallel_mode="progress",
        show_progress=True,
        collapse_parallel=False,
        console=Console(file=out, width=120, force_terminal=False),
    )

    bus = EventBus()
    bus.subscribe(printer)
    execution_state = ExecutionState(event_bus=bus)

    async with execution_state.parallel(max_workers=5) as p:
        for name in ("doc1", "doc2", "bad3"):
            p.add(process_doc(execution_state, name))
        results = await p.gather()
    await bus.close()
    printer.close()

    assert [r.ok for r in results] == [True, True, False]
    text = out.getvalue()
    assert "\x1b" not in text
    assert "parallel" in text  # the group is shown
    assert "RuntimeError: bad3 is unreadable" in text  # and its failure, with the error


async def test_the_parallel_execution_manager_sketch() -> None:
    from rh_agents.core.parallel import BatchMode, ParallelExecutionManager

    execution_state = make_state()
    event = ExecutionEvent(actor=process_tool)
    events = [event(DocIn(name=n), "", execution_state) for n in ("a", "b", "c")]

    manager = ParallelExecutionManager(execution_state, max_workers=5, batch_mode=BatchMode.GATHER)
    results: list[Any] = await manager.execute_parallel(events, dependencies={1: [0]})
    """Execute events in parallel respecting dependencies."""
    assert [r.result for r in results] == ["processed a", "processed b", "processed c"]
    assert manager.execution_state is execution_state
    assert manager.batch_mode is BatchMode.GATHER


async def test_the_parallel_event_group_model() -> None:
    import uuid

    from rh_agents.core.parallel import GroupStatus, ParallelEventGroup

    group = ParallelEventGroup()
    assert uuid.UUID(group.group_id)  # default_factory=lambda: str(uuid.uuid4())
    assert (group.name, group.events, group.total, group.completed, group.failed) == (
        "Parallel Group",
        [],
        0,
        0,
        0,
    )
    assert group.status is GroupStatus.PENDING
    assert group.start_time is None and group.end_time is None

    # A group's own description lists the calls its members made, in member order.
    execution_state = make_state()
    event = ExecutionEvent(actor=process_tool)

    async def two_calls() -> None:
        await event(DocIn(name="x1"), "", execution_state)
        async with execution_state.parallel(name="inner") as inner:
            inner.add(event(DocIn(name="nested"), "", execution_state))

    async with execution_state.parallel(name="doc_processing") as p:
        p.add(event(DocIn(name="d0"), "", execution_state))
        p.add(two_calls())
        p.add(event(DocIn(name="bad2"), "", execution_state))
    described = p.group
    assert described is not None
    assert [e.address for e in described.events] == [
        "doc_processing[0]::process_doc",
        "doc_processing[1]::process_doc",
        "doc_processing[2]::process_doc",
    ]
    assert [e.parallel_index for e in described.events] == [0, 1, 2]
    assert all(isinstance(e, ExecutionEvent) and e.is_parallel for e in described.events)
    assert all(e.actor is process_tool for e in described.events)  # references, not copies
    result = execution_state.history[described.events[2].address].result
    assert not result.ok and "bad2" in (result.error or "")
    assert (described.total, described.completed, described.failed) == (3, 2, 1)


async def test_the_progress_aware_printer_sketch() -> None:
    import io
    from collections.abc import Mapping

    from rich.console import Console

    from rh_agents.bus_handlers import EventPrinter, ParallelEventPrinter
    from rh_agents.bus_handlers.group_view import ParallelGroupState

    assert issubclass(ParallelEventPrinter, EventPrinter)
    kwargs: dict[str, Any] = {"console": Console(file=io.StringIO(), width=100)}
    printer = ParallelEventPrinter(show_progress=True, collapse_parallel=False, **kwargs)
    assert printer.show_progress is True
    assert printer.collapse_parallel is False
    assert dict(printer.parallel_groups) == {}  # nothing tracked yet

    bus = EventBus()
    bus.subscribe(printer)
    execution_state = ExecutionState(event_bus=bus)
    async with execution_state.parallel(max_workers=2, name="docs") as p:
        for name in ("a", "bad-b", "c"):
            p.add(process_doc(execution_state, name))
        await bus.drain()
        state = printer.parallel_groups["docs"]  # a live view, taken while the group runs
    await bus.drain()
    groups: Mapping[str, ParallelGroupState] = printer.parallel_groups
    assert list(groups) == ["docs"] and state.group_id == "docs"
    assert (state.status, state.total, state.done, state.succeeded, state.failed) == (
        "partial",
        3,
        3,
        2,
        1,
    )
    assert [issue.tag for issue in state.issues] == ["docs#1"]
    with pytest.raises(AttributeError):
        state.done = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        groups["other"] = state  # type: ignore[index]
    await bus.close()


async def test_the_collapsed_display() -> None:
    """The collapsed summary of a group of three documents, as sketched:

    ▶ 📦 Parallel Group: Document Processing (3 events)
      [████████████████████] 100% (2.1s)
      ✔ 3 completed, 0 failed
      └─ View details: execution_state.history.get_group("doc_processing")
    """
    import io

    from rich.console import Console

    from rh_agents.bus_handlers import ParallelEventPrinter

    class Clock:
        """2.1 s from the group's start to its end."""

        def __init__(self) -> None:
            self.readings = 0

        def now(self) -> float:
            self.readings += 1
            return 0.0 if self.readings == 1 else 2.1

        async def sleep(self, seconds: float) -> None:
            return None

    out = io.StringIO()
    printer = ParallelEventPrinter(
        parallel_mode="collapsed", console=Console(file=out, width=120), slowest=0
    )
    bus = EventBus()
    bus.subscribe(printer)
    execution_state = ExecutionState(event_bus=bus, clock=Clock())
    async with execution_state.parallel(max_workers=3, name="doc_processing") as p:
        for name in ("doc1", "doc2", "doc3"):
            p.add(process_doc(execution_state, name))
    await bus.close()
    printer.close()

    lines = out.getvalue().splitlines()
    assert lines[0] == "✔ 📦 doc_processing: 3 finished · 3 ok · 0 failed · 2.10s"
    assert lines[-1] == ('    └─ View details: execution_state.history.get_group("doc_processing")')
    # The line runs as written, and gives the group's three calls.
    call = lines[-1].split("View details: ", 1)[1]
    entries = eval(call, {"execution_state": execution_state})
    assert [entry.result.result for entry in entries] == [
        "processed doc1",
        "processed doc2",
        "processed doc3",
    ]


async def test_the_managers_constructor_as_the_spec_writes_it() -> None:
    # ParallelExecutionManager(execution_state, max_workers=5, batch_mode=BatchMode.GATHER):
    # by position, by name, or mixed.
    from rh_agents.core.parallel import BatchMode, ParallelExecutionManager
    from rh_agents.errors import ConfigurationError

    state = ExecutionState()

    async def double(x: int) -> int:
        return 2 * x

    made = [
        ParallelExecutionManager(state, 3),
        ParallelExecutionManager(state, 3, BatchMode.GATHER_DICT),
        ParallelExecutionManager(execution_state=state, max_workers=3),
        ParallelExecutionManager(state, 3, batch_mode=BatchMode.GATHER),
    ]
    assert [(m.max_workers, m.batch_mode) for m in made] == [
        (3, BatchMode.GATHER),
        (3, BatchMode.GATHER_DICT),
        (3, BatchMode.GATHER),
        (3, BatchMode.GATHER),
    ]
    named = await made[1].execute_parallel({"a": double(1), "b": double(2)})
    assert {key: result.result for key, result in named.items()} == {"a": 2, "b": 4}
    for manager in (made[0], *made[2:]):  # (each runs once)
        assert [r.result for r in await manager.execute_parallel([double(1), double(2)])] == [2, 4]
    with pytest.raises(ConfigurationError, match="given twice"):
        ParallelExecutionManager(state, 3, max_workers=4)
    with pytest.raises(ConfigurationError, match="at most those two by position"):
        ParallelExecutionManager(state, 3, BatchMode.GATHER, 4)
    with pytest.raises(ConfigurationError, match="takes an ExecutionState first, got int"):
        ParallelExecutionManager(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_workers must be an int >= 1"):
        ParallelExecutionManager(state, 0)
    await state.close()
