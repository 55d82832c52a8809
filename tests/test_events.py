"""ExecutionEvent: one actor call, its result, its records and its history entry."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel, ConfigDict

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent, ExecutionResult, ResultStatus, truncate
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventCompleted, EventFailed, EventStarted
from rh_agents.errors import (
    ActorInputError,
    ActorOutputError,
    ConfigurationError,
    MemberFailedError,
    ParallelTimeoutError,
)

if TYPE_CHECKING:
    from conftest import Recorder


class Doc(BaseModel):
    text: str


class Count(BaseModel):
    words: int


async def count_words(input: Doc, context: str, state: ExecutionState) -> int:
    return len(input.text.split())


async def explode(input: Doc, context: str, state: ExecutionState) -> int:
    raise RuntimeError(f"cannot read {input.text!r}")


counter = Tool(name="counter", input_model=Doc, handler=count_words)
broken = Tool(name="broken", input_model=Doc, handler=explode)


async def test_call_returns_an_ok_result(state: ExecutionState) -> None:
    result = await ExecutionEvent(actor=counter)(Doc(text="one two three"), "", state)
    assert isinstance(result, ExecutionResult)
    assert result.ok is True
    assert result.result == 3
    assert result.status is ResultStatus.COMPLETED
    assert result.error is None and result.exception is None
    assert result.execution_time >= 0.0
    assert result.address == "counter" == result.event_id
    assert result.unwrap() == 3


async def test_a_dict_input_is_validated(state: ExecutionState) -> None:
    result = await ExecutionEvent(actor=counter)({"text": "a b"}, "", state)
    assert result.ok and result.result == 2


async def test_call_without_state_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"'counter'.*ExecutionState"):
        ExecutionEvent(actor=counter)(Doc(text="x"), "")


async def test_raising_handler_gives_a_failed_result_and_record(
    state: ExecutionState, recorder: Recorder
) -> None:
    result = await ExecutionEvent(actor=broken)(Doc(text="scroll"), "", state)
    assert result.ok is False
    assert result.status is ResultStatus.FAILED
    assert isinstance(result.exception, RuntimeError)
    assert result.error == "RuntimeError: cannot read 'scroll'"
    with pytest.raises(RuntimeError, match="cannot read"):
        result.unwrap()
    await state.event_bus.drain()
    assert recorder.kinds() == ["event.started", "event.failed"]
    failed = recorder.records[1]
    assert isinstance(failed, EventFailed)
    assert failed.address == "broken"
    assert failed.error == "RuntimeError: cannot read 'scroll'"
    assert failed.error_type == "RuntimeError"
    assert failed.cancelled is False
    assert failed.actor == "broken" and failed.actor_kind == "tool"


async def test_bad_input_gives_a_failed_result_with_actor_input_error(
    state: ExecutionState, recorder: Recorder
) -> None:
    called = False

    async def handler(input: Doc, context: str, state: ExecutionState) -> None:
        nonlocal called
        called = True

    actor = Tool(name="strict", input_model=Doc, handler=handler)
    result = await ExecutionEvent(actor=actor)({"txt": "typo"}, "", state)
    assert result.ok is False
    assert isinstance(result.exception, ActorInputError)
    assert "'strict'" in (result.error or "") and "text" in (result.error or "")
    assert called is False
    entry = state.history["strict"]
    assert entry.input is None and entry.result is result
    await state.event_bus.drain()
    assert recorder.kinds() == ["event.started", "event.failed"]


async def test_output_model_violation_gives_actor_output_error(state: ExecutionState) -> None:
    async def wrong(input: Doc, context: str, state: ExecutionState) -> dict[str, str]:
        return {"words": "many"}

    async def right(input: Doc, context: str, state: ExecutionState) -> dict[str, int]:
        return {"words": 2}

    bad = Tool(name="bad", input_model=Doc, output_model=Count, handler=wrong)
    good = Tool(name="good", input_model=Doc, output_model=Count, handler=right)
    result = await ExecutionEvent(actor=bad)(Doc(text="x"), "", state)
    assert not result.ok and isinstance(result.exception, ActorOutputError)
    ok = await ExecutionEvent(actor=good)(Doc(text="x"), "", state)
    assert ok.result == Count(words=2)


async def test_event_timeout_gives_timed_out(state: ExecutionState, recorder: Recorder) -> None:
    never = asyncio.Event()

    async def stuck(input: Doc, context: str, state: ExecutionState) -> None:
        await never.wait()

    actor = Tool(name="stuck", input_model=Doc, handler=stuck)
    result = await ExecutionEvent(actor=actor, timeout=0.01)(Doc(text="x"), "", state)
    assert result.ok is False
    assert result.status is ResultStatus.TIMED_OUT
    assert isinstance(result.exception, ParallelTimeoutError)
    assert isinstance(result.exception.__cause__, TimeoutError)
    assert "'stuck'" in (result.error or "") and "0.01s" in (result.error or "")
    await state.event_bus.drain()
    assert isinstance(recorder.records[-1], EventFailed)
    assert recorder.records[-1].error_type == "ParallelTimeoutError"


async def test_handler_own_timeout_error_is_timed_out_without_inventing_a_deadline(
    state: ExecutionState,
) -> None:
    async def slow_backend(input: Doc, context: str, state: ExecutionState) -> None:
        raise TimeoutError("backend did not answer")

    actor = Tool(name="backend", input_model=Doc, handler=slow_backend)
    result = await ExecutionEvent(actor=actor)(Doc(text="x"), "", state)
    assert result.status is ResultStatus.TIMED_OUT
    assert result.error == "TimeoutError: backend did not answer"
    assert "None" not in (result.error or "")


async def test_cancellation_propagates_and_is_published(
    state: ExecutionState, recorder: Recorder
) -> None:
    entered = asyncio.Event()
    never = asyncio.Event()

    async def waits(input: Doc, context: str, state: ExecutionState) -> None:
        entered.set()
        await never.wait()

    actor = Tool(name="waits", input_model=Doc, handler=waits)
    task = asyncio.create_task(ExecutionEvent(actor=actor)(Doc(text="x"), "", state))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    await state.event_bus.drain()
    assert recorder.kinds() == ["event.started", "event.failed"]
    failed = recorder.records[1]
    assert isinstance(failed, EventFailed)
    assert failed.cancelled is True and failed.error_type == "CancelledError"
    assert "waits" not in state.history


async def test_records_carry_truncated_detail(state: ExecutionState, recorder: Recorder) -> None:
    async def echo(input: Doc, context: str, state: ExecutionState) -> str:
        return input.text.upper()

    actor = Tool(name="echo", input_model=Doc, handler=echo)
    text = "word " * 40
    result = await ExecutionEvent(actor=actor, detail_chars=12)(Doc(text=text), "", state)
    assert result.ok
    await state.event_bus.drain()
    started, completed = recorder.records
    assert isinstance(started, EventStarted) and isinstance(completed, EventCompleted)
    assert started.detail == '{"text":"wo…'
    assert len(started.detail) == 12
    assert completed.detail == "WORD WORD W…"
    assert started.actor == completed.actor == "echo"
    assert completed.source == "run" and completed.attempts == 1


def test_truncate_is_one_line_and_bounded() -> None:
    assert truncate("a\n  b\tc") == "a b c"
    assert truncate("x" * 20, 10) == "x" * 9 + "…"
    assert truncate([1, 2]) == "[1, 2]"


def test_truncate_never_raises_on_unprintable_values() -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    class Holder(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        thing: Unprintable

    assert "Unprintable" in truncate(Unprintable())
    assert truncate(Holder(thing=Unprintable()))  # not JSON-serialisable, still some text


async def test_unserialisable_input_still_runs(state: ExecutionState) -> None:
    class Handle:
        pass

    class Job(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        handle: Handle

    async def use(input: Job, context: str, state: ExecutionState) -> str:
        return "used"

    actor = Tool(name="use", input_model=Job, handler=use)
    result = await ExecutionEvent(actor=actor)(Job(handle=Handle()), "", state)
    assert result.ok and result.result == "used"


async def test_history_keyed_by_address_with_bound_event(state: ExecutionState) -> None:
    event = ExecutionEvent(actor=counter)
    await event(Doc(text="a b"), "", state)
    entry = state.history["counter"]
    assert entry.address == "counter"
    assert entry.event is not event  # a bound copy; the reusable event is untouched
    assert event.address is None
    assert entry.event.address == "counter"
    assert entry.event.group_id is None
    assert entry.event.parallel_index is None
    assert entry.event.is_parallel is False
    assert entry.input == Doc(text="a b")
    assert entry.result.result == 2
    assert state.history.addresses() == ["counter"]
    with pytest.raises(KeyError, match="no finished event at address 'missing'"):
        state.history["missing"]


async def test_nested_calls_get_nested_addresses(state: ExecutionState, recorder: Recorder) -> None:
    inner_event = ExecutionEvent(actor=counter)

    async def outer_handler(input: Doc, context: str, state: ExecutionState) -> int:
        first = await inner_event(input, context, state)
        second = await inner_event(input, context, state)
        return first.unwrap() + second.unwrap()

    outer = Agent(name="Outer", input_model=Doc, handler=outer_handler)
    result = await ExecutionEvent(actor=outer)(Doc(text="a b"), "", state)
    assert result.result == 4
    assert state.history.addresses() == ["Outer::counter", "Outer::counter#2", "Outer"]
    await state.event_bus.drain()
    assert [(r.kind, r.address, r.depth) for r in recorder.records] == [
        ("event.started", "Outer", 0),
        ("event.started", "Outer::counter", 1),
        ("event.completed", "Outer::counter", 1),
        ("event.started", "Outer::counter#2", 1),
        ("event.completed", "Outer::counter#2", 1),
        ("event.completed", "Outer", 0),
    ]


async def test_repeated_root_calls_are_numbered_and_tag_renames(state: ExecutionState) -> None:
    event = ExecutionEvent(actor=counter)
    results = [await event(Doc(text="x"), "", state) for _ in range(3)]
    assert [r.address for r in results] == ["counter", "counter#2", "counter#3"]
    tagged = await ExecutionEvent(actor=counter, tag="tally")(Doc(text="x"), "", state)
    assert tagged.address == "tally"


async def test_member_of_a_group_has_group_metadata(state: ExecutionState) -> None:
    event = ExecutionEvent(actor=counter)
    async with state.parallel(max_workers=2, name="docs") as p:
        p.add(event(Doc(text="a"), "", state))
        p.add(event(Doc(text="a b"), "", state))
        results = await p.gather()
    assert [r.result for r in results] == [1, 2]
    entry = state.history["docs[1]::counter"]
    assert entry.event.group_id == "docs"
    assert entry.event.parallel_index == 1
    assert entry.event.is_parallel is True


async def test_unwrap_of_a_failure_without_exception_raises_member_failed() -> None:
    result: ExecutionResult[Any] = ExecutionResult(ok=False, error="nope")
    with pytest.raises(MemberFailedError, match="nope"):
        result.unwrap()


@pytest.mark.parametrize(
    ("options", "field"),
    [({"timeout": 0}, "timeout"), ({"detail_chars": 2}, "detail_chars"), ({"tag": 5}, "tag")],
)
def test_bad_event_options_are_configuration_errors(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"ExecutionEvent of 'counter': {field}"):
        ExecutionEvent(actor=counter, **options)


@pytest.mark.parametrize("tag", ["counter#2", "a::b", "docs[3]", "x]", "two\nlines", "", " ", ":x"])
def test_a_tag_follows_the_rule_of_actor_names(tag: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ExecutionEvent(actor=counter, tag=tag)
    assert str(info.value) == (
        f"ExecutionEvent of 'counter': tag {tag!r} is not allowed: it must be a non-empty str "
        "without '::', '[', ']', '#', a newline, or a ':' at either end "
        "(these build execution addresses)"
    )


async def test_a_tag_cannot_forge_an_address(state: ExecutionState) -> None:
    # A tag such as "counter#2" would have taken the address of the second plain call; the
    # allowed tags are numbered with the names they share, so every call keeps its own address.
    event = ExecutionEvent(actor=counter)
    like_the_name = ExecutionEvent(actor=broken, tag="counter")
    namespaced = ExecutionEvent(actor=counter, tag="ns:counter")
    calls = [event, like_the_name, event, namespaced, namespaced]
    results = [await call(Doc(text="x"), "", state) for call in calls]
    addresses = [r.address for r in results]
    assert addresses == ["counter", "counter#2", "counter#3", "ns:counter", "ns:counter#2"]
    assert [state.history[a].event.actor.name for a in addresses] == [
        "counter",
        "broken",
        "counter",
        "counter",
        "counter",
    ]


async def test_the_records_of_a_tagged_call_carry_the_tag(
    state: ExecutionState, recorder: Recorder
) -> None:
    await ExecutionEvent(actor=counter, tag="tally")(Doc(text="x"), "", state)
    await ExecutionEvent(actor=broken, tag="mishap")(Doc(text="x"), "", state)
    await ExecutionEvent(actor=counter)(Doc(text="x"), "", state)
    await state.event_bus.drain()
    calls = [
        r for r in recorder.records if isinstance(r, EventStarted | EventCompleted | EventFailed)
    ]
    assert [(type(r).__name__, r.address, r.actor, r.tag) for r in calls] == [
        ("EventStarted", "tally", "counter", "tally"),
        ("EventCompleted", "tally", "counter", "tally"),
        ("EventStarted", "mishap", "broken", "mishap"),
        ("EventFailed", "mishap", "broken", "mishap"),
        ("EventStarted", "counter", "counter", None),
        ("EventCompleted", "counter", "counter", None),
    ]


def test_an_unknown_keyword_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        ExecutionEvent(actor=counter, tga="typo")
    assert str(info.value) == (
        "ExecutionEvent of 'counter': unknown option 'tga' (did you mean 'tag'?); "
        "the options are: actor, tag, timeout, retry, circuit_breaker, detail_chars"
    )
    # The fields filled on each call's bound copy are not options either.
    with pytest.raises(ConfigurationError, match="unknown option 'address'"):
        ExecutionEvent(actor=counter, address="counter#2")


def test_an_event_needs_an_actor() -> None:
    with pytest.raises(ConfigurationError, match="ExecutionEvent: actor"):
        ExecutionEvent(actor="counter")


def test_an_event_of_a_plain_function_says_how_to_make_it_an_actor() -> None:
    # pydantic's "Input should be a valid dictionary or instance of BaseActor" named no fix.
    async def fetch(input: Doc, context: str, state: ExecutionState) -> str:
        return input.text

    with pytest.raises(
        ConfigurationError, match=r"takes an actor .* make the function one with @tool"
    ):
        ExecutionEvent(actor=fetch)
