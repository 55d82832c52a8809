"""Regressions found by using the parallel API the wrong way on purpose (hostile probes)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import threading
import types
import warnings
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from parallel_support import Doc, _echo, assert_no_leftover_tasks, closed, own_tasks, value
from rh_agents import ExecutionEvent, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ParallelExecutionManager
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import (
    ConfigurationError,
    DependencyError,
    GroupClosedError,
    InvalidMemberError,
    OversizedGroupWarning,
    ParallelError,
    UnusedGroupWarning,
)
from rh_agents.recovery import Recovery, SQLiteBackend

pytestmark = pytest.mark.timeout(10)  # (asyncio_mode is "auto")


class StopEverything(BaseException):
    """What a test framework raises (pytest.fail's ``Failed`` is a BaseException too)."""


async def forever(started: asyncio.Event) -> None:
    started.set()
    await asyncio.Event().wait()


async def raise_after(started: asyncio.Event, exc: BaseException) -> None:
    await started.wait()
    raise exc


async def in_a_thread(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a thread of its own (as asyncio.to_thread does: in a copy of this
    task's context); what it raised, if anything."""

    def caught() -> BaseException | None:
        try:
            call()
        except BaseException as exc:
            return exc
        return None

    return await asyncio.to_thread(caught)


@pytest.mark.parametrize("options", [{}, {"member_timeout": 30}], ids=["inline", "run_member"])
@pytest.mark.parametrize(
    "exc", [StopEverything("stop"), GeneratorExit(), KeyboardInterrupt(), SystemExit(3)]
)
async def test_member_raising_a_base_exception_stops_the_group_and_raises_it(
    options: dict[str, Any], exc: BaseException
) -> None:
    # It used to escape the worker as an "internal error", leaving the member without a
    # result: the group then waited for it forever.
    before = own_tasks()
    state = ExecutionState()
    started = asyncio.Event()
    with pytest.raises(type(exc)) as raised:
        async with state.parallel(max_workers=3, **options) as p:
            p.add(value(0))
            p.add(forever(started))
            p.add(raise_after(started, exc))
    assert raised.value is exc
    statuses = [r.status for r in p._tally.collected()]
    assert statuses == [ResultStatus.COMPLETED, ResultStatus.CANCELLED, ResultStatus.FAILED]
    assert p._tally.collected()[2].exception is exc
    assert "raised" in (p._tally.collected()[1].error or "")
    with pytest.raises(type(exc)):
        await p.gather()  # read again after the block: the same error
    assert state.internal_errors == []
    assert_no_leftover_tasks(before)


@contextlib.asynccontextmanager
async def nothing_left_unretrieved() -> AsyncIterator[None]:
    """Fail if a task ends, in the block, with an exception nobody retrieves (the loop's
    exception handler is told when the task is collected)."""
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        yield
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)


class _Number(BaseModel):
    n: int


def _exits_on_one(input: _Number, context: str, state: ExecutionState) -> int:
    if input.n == 1:
        raise GeneratorExit("from the handler's thread")
    return input.n


async def _awaits_a_failed_future(exc: BaseException) -> None:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_soon(future.set_exception, exc)  # (while the member waits for it)
    await future


@pytest.mark.parametrize("limits", [{}, {"global_max_workers": 3}], ids=["inline", "run_member"])
async def test_a_generator_exit_from_a_thread_handler_reaches_the_block_as_raised(
    limits: dict[str, Any],
) -> None:
    # Set as a future's exception, a GeneratorExit is thrown into the worker's coroutine,
    # which the interpreter takes as a close of the coroutines under it: the handler's own
    # exception was lost (the block raised an empty GeneratorExit) and the worker task died
    # with it ("Task exception was never retrieved").
    before = own_tasks()
    state = ExecutionState(**limits)
    event = ExecutionEvent(actor=Tool(name="exits", input_model=_Number, handler=_exits_on_one))
    async with nothing_left_unretrieved():
        with pytest.raises(GeneratorExit) as raised:
            async with state.parallel(max_workers=3) as p:
                for i in range(3):
                    p.add(event(_Number(n=i), "", state))
        assert raised.value.args == ("from the handler's thread",)
        assert state.internal_errors == []
        assert_no_leftover_tasks(before)
        await state.close()


async def test_a_generator_exit_from_a_members_own_future_ends_its_worker_cleanly() -> None:
    # The same through a future of the member's own (run_in_executor, a thread's future): the
    # member's run records the close, the group stops and raises a GeneratorExit, and no
    # worker task is left holding an exception nobody retrieves.
    before = own_tasks()
    state = ExecutionState(global_max_workers=3)
    async with nothing_left_unretrieved():
        with pytest.raises(GeneratorExit):
            async with state.parallel(max_workers=3) as p:
                p.add(value(0))
                p.add(_awaits_a_failed_future(GeneratorExit("from a future")))
        statuses = [r.status for r in p._tally.collected()]
        assert ResultStatus.FAILED in statuses
        assert_no_leftover_tasks(before)
        await state.close()


async def test_base_exception_of_a_member_ends_a_stream() -> None:
    state = ExecutionState()
    started = asyncio.Event()
    seen: list[int | None] = []
    with pytest.raises(StopEverything):
        async with state.parallel(max_workers=3) as p:
            p.add(forever(started))
            p.add(raise_after(started, StopEverything()))
            async for result in p.stream():
                seen.append(result.index)
    assert seen == []  # as under FAIL_FAST: the stream raises at the member that stopped it


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"name": 5}, "group name 5"),  # used to be a TypeError from inside the check
        ({"name": b"docs"}, "group name b'docs'"),
        ({"name": ["docs"]}, "group name ['docs']"),  # used to fail only on entering
        ({"raise_exception_group": "yes"}, "raise_exception_group"),  # was taken as True
        ({"raise_exception_group": None}, "raise_exception_group"),
    ],
)
def test_wrong_option_types_are_configuration_errors_naming_them(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(named)):
        ExecutionState().parallel(**options)


def test_retain_results_must_be_a_bool() -> None:
    state = ExecutionState()
    with pytest.raises(ConfigurationError, match="retain_results"):
        ParallelExecutionManager(state, retain_results="no")


def test_a_bad_global_limit_names_global_max_workers() -> None:
    with pytest.raises(ConfigurationError, match="global_max_workers"):
        ExecutionState(global_max_workers=0)


@pytest.mark.parametrize("after", [1.0, object()], ids=["float", "object"])
async def test_after_that_is_neither_a_name_an_index_nor_a_list_is_a_dependency_error(
    after: Any,
) -> None:
    # It used to be a TypeError: "'float' object is not iterable".
    state = ExecutionState()
    member = value(1)
    async with state.parallel() as p:
        p.add(value(0), name="first")
        with pytest.raises(DependencyError, match="after= takes a member name or index"):
            p.add(member, after=after)
    assert closed(member)


@pytest.mark.parametrize(
    "entries",
    [
        lambda m: [m],  # a member without its name
        lambda m: [("a", m, (), "extra")],
        lambda m: [("a",), ("b", m)],  # a bad entry before a good one: that one is closed
        lambda m: [None, ("b", m)],
        lambda m: {"a": m},  # a dict: its items() were meant
        lambda m: m,  # not iterable at all
    ],
    ids=["bare", "four", "one", "none", "dict", "not-iterable"],
)
async def test_add_many_refuses_malformed_entries_and_closes_their_members(
    entries: Any,
) -> None:
    # They used to raise TypeError or IndexError and leave the coroutine never awaited.
    state = ExecutionState()
    member = value(1)
    async with state.parallel() as p:
        with pytest.raises(ConfigurationError, match=r"add_many\(\) takes"):
            p.add_many(entries(member))
    assert closed(member)
    assert p.total == 0


async def test_add_with_the_name_second_says_the_name_comes_first() -> None:
    state = ExecutionState()
    member = value(1)
    async with state.parallel() as p:
        with pytest.raises(ConfigurationError, match=r"the name comes first: p.add\('n'"):
            p.add(member, "n")
    assert closed(member)


@pytest.mark.parametrize("read", ["gather", "gather_dict", "stream", "nested"])
async def test_a_member_reading_its_own_group_is_refused_rather_than_waiting_forever(
    read: str,
) -> None:
    # It used to wait for itself: a hang that not even cancelling the task could end
    # (stopping the group waits for every worker, the waiting one included).
    before = own_tasks()
    state = ExecutionState()

    async def reader() -> Any:
        if read == "gather":
            return await p.gather()
        if read == "gather_dict":
            return await p.gather_dict()
        if read == "stream":
            return [r async for r in p.stream()]
        async with state.parallel(name="inner") as inner:  # deeper down: the same
            inner.add(lambda: p.gather())
        return (await inner.gather())[0].unwrap()

    async with state.parallel(max_workers=2) as p:
        p.add(reader)
        p.add(value(1))
    results = await p.gather()
    assert results[0].status is ResultStatus.FAILED
    assert isinstance(results[0].exception, GroupClosedError)
    assert "from inside its own member" in (results[0].error or "")
    assert results[1].ok
    assert_no_leftover_tasks(before)


def _open_groups_at_once() -> list[str]:
    """Two threads, each with its own loop, open a group of one state at the same moment:
    what became of each ("ran" or "refused")."""
    state = ExecutionState()
    barrier = threading.Barrier(2)
    ended = [threading.Event(), threading.Event()]
    outcomes = ["", ""]

    async def open_group(i: int) -> None:
        barrier.wait()  # (both threads at the door at once)
        try:
            async with state.parallel(name=f"g{i}") as p:
                # Open until the other thread's attempt ended (5 s: a failure, not a hang, if
                # both got in).
                p.add(lambda: asyncio.to_thread(ended[1 - i].wait, 5))
            outcomes[i] = "ran"
        except ConfigurationError as error:
            assert "another event loop" in str(error)
            outcomes[i] = "refused"
        finally:
            ended[i].set()

    threads = [threading.Thread(target=asyncio.run, args=(open_group(i),)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


async def test_two_threads_opening_groups_on_one_state_at_once_one_is_refused() -> None:
    # The check that no other loop runs groups of the state and the group's registration
    # were two steps: two threads opening groups at the same moment both passed the check
    # (in four trials of five), and two loops then shared the state's slots, bus and store.
    for _ in range(5):
        assert sorted(await asyncio.to_thread(_open_groups_at_once)) == ["ran", "refused"]


async def test_reading_a_group_from_another_event_loop_is_refused() -> None:
    # It used to hang the other thread, with an "internal error" from a worker that woke a
    # future of the other loop.
    state = ExecutionState()

    async def read() -> None:
        await p.gather()

    async with state.parallel() as p:
        p.add(value(1))
        error = await in_a_thread(lambda: asyncio.run(read()))
    assert isinstance(error, GroupClosedError)
    assert "another event loop" in str(error)
    assert [r.result for r in await p.gather()] == [1]
    assert state.internal_errors == []


@pytest.mark.parametrize("form", ["coroutine", "callable", "named", "with-timeout"])
async def test_adding_from_another_thread_is_refused_and_adds_nothing(form: str) -> None:
    # It used to register the member, then fail in the thread with asyncio's "no running
    # event loop" (or, from a thread copying the block's context, add it silently on the
    # wrong thread): the member ran or not by chance.
    state = ExecutionState()
    coroutine = value(7)

    def add() -> None:
        if form == "coroutine":
            p.add(coroutine)
        elif form == "callable":
            coroutine.close()
            p.add(lambda: value(7))
        elif form == "named":
            p.add("seven", coroutine)
        else:
            p.add(coroutine, timeout=5)

    async with state.parallel() as p:
        p.add(value(1))
        # (asyncio.to_thread runs it in a copy of this task's context: the fast path's case)
        error = await in_a_thread(add)
        assert isinstance(error, GroupClosedError)
        assert "another thread or event loop" in str(error)
        assert p.statistics().total == 1
    assert [r.result for r in await p.gather()] == [1]
    assert closed(coroutine)  # refused members are closed, never left unawaited
    assert state.internal_errors == []


async def test_one_state_used_by_two_running_loops_at_once_is_refused() -> None:
    # Its slots, bus and groups would be shared by two threads unsynchronised (a waiter's
    # future of one loop woken from the other's thread): refused with a clear error, while
    # one loop after another keeps working.
    state = ExecutionState(global_max_workers=1)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> int:
        inside.set()
        await release.wait()
        return 1

    async def other() -> None:
        async with state.parallel() as q:
            q.add(value(2))

    async with state.parallel() as p:
        p.add(hold())
        await inside.wait()
        error = await in_a_thread(lambda: asyncio.run(other()))
        release.set()
    assert isinstance(error, ConfigurationError)
    assert "not thread-safe" in str(error) and p.group_id in str(error)
    assert [r.result for r in await p.gather()] == [1]
    # Once this loop's groups are done, another loop may use the state.
    assert await in_a_thread(lambda: asyncio.run(other())) is None


async def test_closing_a_state_while_another_task_runs_its_group_is_refused() -> None:
    # The bus and the store stopped under the running group: its members' records were
    # dropped and their checkpoints came after the run's final status.
    seen: list[str] = []
    bus = EventBus()
    bus.subscribe(lambda record: seen.append(type(record).__name__))
    state = ExecutionState(event_bus=bus)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> int:
        inside.set()
        await release.wait()
        return 1

    async def run_group() -> list[Any]:
        async with state.parallel(name="busy") as p:
            p.add(hold())
            return [r.result for r in await p.gather()]

    task = asyncio.create_task(run_group())
    await inside.wait()
    with pytest.raises(ParallelError, match="still run: busy"):
        await state.close()
    release.set()
    assert await task == [1]
    await state.close()  # now it closes, with every record delivered
    assert seen.count("MemberFinished") == 1 and seen[-1] == "GroupCompleted"
    assert bus.closed


async def test_leaving_the_states_block_by_an_exception_still_closes_it() -> None:
    # The exception goes on; the close is not refused over a group it is passing through.
    state = ExecutionState()
    with pytest.raises(KeyError):
        async with state, state.parallel() as p:
            p.add(value(1))
            raise KeyError("body")
    assert state.event_bus.closed


@pytest.mark.parametrize("read", [0, 3], ids=["unread", "read-a-few"])
async def test_a_group_keeping_no_results_can_be_left_without_reading_them_all(
    read: int,
) -> None:
    # With retain_results=False its workers stop pulling map() items while 2 x max_workers
    # results wait for a reader; leaving the block without one used to wait forever.
    state = ExecutionState()
    p: ParallelExecutionManager[Any] = ParallelExecutionManager(
        state, max_workers=2, retain_results=False
    )
    async with p:
        p.map(value, range(50))
        if read:
            taken = 0
            async for _ in p.stream():
                taken += 1
                if taken == read:
                    break
    assert p.statistics().succeeded == 50
    assert p._tally.statistics().unread == 0  # nobody can read them after the block
    assert [r async for r in p.stream()] == []


def test_a_batch_stream_dropped_before_iterating_closes_its_members_and_says_so() -> None:
    # Its members used to be left as coroutines never awaited, with no word of the batch.
    members = [value(1), value(2)]

    async def main() -> None:
        state = ExecutionState()
        stream = await state.parallel(batch_mode="stream").execute_parallel(members)
        with pytest.warns(UnusedGroupWarning, match="its 2 members never ran"):
            del stream
            gc.collect()

    asyncio.run(main())
    assert all(closed(m) for m in members)


async def test_parallel_map_says_it_keeps_no_results_when_asked_to() -> None:
    # It was a bare TypeError: retain_results given twice to the group.
    state = ExecutionState()
    results = state.parallel_map(value, range(3), retain_results=True)
    with pytest.raises(ConfigurationError, match="keeps no results"):
        await anext(results)


async def test_a_member_depending_on_itself_is_told_so() -> None:
    state = ExecutionState()
    async with state.parallel() as p:
        p.add("a", value(1))
        with pytest.raises(DependencyError, match="depends on itself"):
            p.add("b", value(2), after="b")
        with pytest.raises(DependencyError, match="which is itself"):
            p.add(value(3), after=1)  # the next index: this very member
    assert [r.result for r in await p.gather()] == [1]


async def test_a_handler_raising_a_base_exception_ends_its_call_record_first() -> None:
    from pydantic import BaseModel

    from rh_agents.core.actors import Tool
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.records import BusEvent, EventFailed

    class In(BaseModel):
        x: int = 0

    async def interrupted(input: In, context: str, state: ExecutionState) -> None:
        raise KeyboardInterrupt

    records: list[BusEvent] = []
    state = ExecutionState()
    state.event_bus.subscribe(records.append)
    tool = Tool(name="stopper", input_model=In, handler=interrupted)
    with pytest.raises(KeyboardInterrupt):
        await ExecutionEvent(actor=tool)(In(), "", state)
    state.event_bus.deliver_pending()
    ends = [r for r in records if isinstance(r, EventFailed)]
    assert [(r.address, r.error_type) for r in ends] == [("stopper", "KeyboardInterrupt")]


async def test_leaving_the_states_block_right_after_breaking_out_of_parallel_map() -> None:
    # The dropped generator is closed by the loop a turn or two later: close() called its
    # group still running and refused to close.
    state = ExecutionState()
    async with state:
        async for result in state.parallel_map(value, range(10), max_workers=2):
            assert result.ok
            break
    assert state.event_bus.closed
    assert state.open_groups.get("parallel") is None


async def test_closing_the_state_ends_a_parallel_map_still_held_after_a_break() -> None:
    # Held in a variable, the generator is not closed at the break: close() called its
    # group still running and refused, leaving the bus, the store and its lease open.
    state = ExecutionState()
    before = set(asyncio.all_tasks())
    async with state:
        results = state.parallel_map(value, range(100), max_workers=2)
        async for result in results:
            assert result.ok
            break
    assert state.event_bus.closed
    assert list(state.open_groups) == []
    assert_no_leftover_tasks(before)
    await results.aclose()  # (closing the generator afterwards is quiet)


async def test_a_group_whose_exit_was_cancelled_while_closing_its_input_still_ends() -> None:
    # A cancellation landing as the exit closed a map() input (its cleanup awaits) left
    # the group open for ever, and state.close() then waited for it for ever.
    state = ExecutionState()
    closing = asyncio.Event()

    async def items() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closing.set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    async def fails(i: int) -> int:
        await asyncio.sleep(0)
        raise ValueError(i)

    async def block() -> None:
        async with state.parallel(max_workers=2, name="g", error_strategy="fail_fast") as p:
            p.map(fails, items())

    task = asyncio.create_task(block())
    await closing.wait()
    task.cancel()
    with pytest.raises((asyncio.CancelledError, ValueError)):
        await task
    assert list(state.open_groups) == []
    await asyncio.wait_for(state.close(), 5)


async def test_closing_the_state_from_another_loop_while_its_groups_run_is_refused() -> None:
    state = ExecutionState()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> int:
        inside.set()
        await release.wait()
        return 1

    async with state.parallel(name="A") as p:
        p.add(hold())
        await inside.wait()
        error = await in_a_thread(lambda: asyncio.run(state.close()))
        release.set()
    assert isinstance(error, ParallelError) and "another event loop" in str(error)
    assert not state.event_bus.closed
    await state.close()


async def test_a_lazy_input_starts_workers_as_it_yields_items_not_max_workers_of_them() -> None:
    # With no eager tasks (Python 3.11), map() started one worker per slot up front:
    # max_workers=10**6 over a two-item input made a million tasks (15 s, a gigabyte).
    loop = asyncio.get_running_loop()
    created = [0]

    async def pause_then_value(x: int) -> int:
        await asyncio.sleep(0)
        return x

    previous = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        created[0] += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        state = ExecutionState(watchdog=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OversizedGroupWarning)
            async with state.parallel(max_workers=1_000_000) as p:
                p.map(pause_then_value, [1, 2])
                results = await p.gather()
    finally:
        loop.set_task_factory(previous)
    assert [r.result for r in results] == [1, 2]
    assert created[0] < 200  # (up to 64 at once, then doubling while items come)


@pytest.mark.parametrize(
    "options",
    [{}, {"member_timeout": 30}, {"max_workers": "auto"}],
    ids=["inline", "run_member", "with-a-policy"],
)
async def test_one_coroutine_object_added_twice_fails_its_second_member_clearly(
    options: dict[str, Any],
) -> None:
    # The second member failed with Python's bare RuntimeError ("coroutine is being awaited
    # already", or "cannot reuse already awaited coroutine", by timing).
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "page"

    state = ExecutionState()
    twice = fetch()
    done = fetch()
    await done  # (awaited before it was added)
    async with state.parallel(**options) as p:
        p.add(twice)
        p.add(twice)
        p.add(done)
    first, second, third = await p.gather()
    assert first.result == "page"
    for result in (second, third):
        assert isinstance(result.exception, InvalidMemberError)
        assert "already started or closed" in str(result.exception)


async def test_cancel_from_another_thread_is_refused() -> None:
    # It cancelled the group's tasks from a thread that does not run their loop.
    state = ExecutionState()
    started = asyncio.Event()

    async with state.parallel() as p:
        p.add(forever(started))
        await started.wait()
        error = await in_a_thread(p.cancel)
        assert isinstance(error, GroupClosedError) and "call_soon_threadsafe" in str(error)
        assert p.statistics().running == 1  # untouched
        asyncio.get_running_loop().call_soon_threadsafe(p.cancel)  # the documented way
    assert p.statistics().cancelled == 1


async def test_close_from_inside_a_member_is_refused_not_a_deadlock() -> None:
    # A member closing the state waited for its own group to end: for ever.
    state = ExecutionState()
    errors: list[BaseException] = []

    async def closes(x: int) -> int:
        if x == 1:
            try:
                await state.close()
            except ParallelError as exc:
                errors.append(exc)
        await asyncio.sleep(0)
        return x

    results = [r.result async for r in state.parallel_map(closes, range(4), max_workers=2)]
    async with state.parallel(max_workers=2, name="left") as p:  # (its block being left)
        p.add(closes(1))
    assert sorted(results) == [0, 1, 2, 3]
    assert len(errors) == 2 and all("from inside " in str(e) for e in errors)
    await state.close()


async def test_close_while_a_task_reads_a_stream_is_refused_and_ends_nothing() -> None:
    state = ExecutionState()
    reading = asyncio.Event()

    async def slow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async def consume() -> list[int]:
        got = []
        async for result in state.parallel_map(slow, range(20), max_workers=4):
            got.append(result.result)
            reading.set()
        return got

    task = asyncio.create_task(consume())
    await reading.wait()
    with pytest.raises(ParallelError, match="still run"):
        await state.close()
    assert sorted(await task) == list(range(20))  # nothing was cut short
    await state.close()


async def test_a_held_stream_ended_by_close_raises_when_read_or_closed_later() -> None:
    # Read after the state ended it, it raises rather than stopping short; an input that
    # failed as it was closed then is raised by the generator's aclose().
    def items() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            raise OSError("input cleanup failed")

    state = ExecutionState()
    held = state.parallel_map(value, items(), max_workers=2)
    async for _ in held:
        break
    await state.close()
    with pytest.raises(OSError, match="input cleanup failed"):
        await held.aclose()
    other = ExecutionState()
    again = other.parallel_map(value, range(100), max_workers=2)
    async for _ in again:
        break
    await other.close()
    with pytest.raises(GroupClosedError, match="ended by its state's close"):
        async for _ in again:
            pass


async def test_leaving_the_states_block_by_an_exception_ends_held_streams_first() -> None:
    finished_after = 0
    closed = False

    async def slow(x: int) -> int:
        nonlocal finished_after
        await asyncio.sleep(0.01)
        finished_after += closed
        return x

    with pytest.raises(KeyError):
        async with ExecutionState() as state:
            held = state.parallel_map(slow, range(50), max_workers=5)
            async for _ in held:
                break
            raise KeyError("body")
    closed = True
    assert list(state.open_groups) == []
    await asyncio.sleep(0.03)
    assert finished_after == 0
    await held.aclose()


async def test_a_generator_based_coroutine_added_twice_fails_its_second_member() -> None:
    @types.coroutine
    def legacy() -> Generator[None, None, int]:
        yield
        return 7

    state = ExecutionState(retry=None)
    twice = legacy()
    async with state.parallel() as p:
        p.add(twice)
        p.add(twice)
    first, second = await p.gather()
    assert first.result == 7
    assert isinstance(second.exception, InvalidMemberError)


async def test_close_from_inside_a_call_or_a_subscriber_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # From a handler: the call's own record and checkpoint came after the store stopped (a
    # resume ran it again). From an async subscriber: the store was closed and the run
    # marked completed before the bus refused, then later checkpoints were lost.
    class Item(BaseModel):
        i: int

    refused: list[BaseException] = []

    async def closes(input: Item, context: str, state: ExecutionState) -> int:
        try:
            await state.close()
        except ParallelError as exc:
            refused.append(exc)
        return input.i

    async def subscriber(record: Any) -> None:
        if record.kind == "event.completed" and len(refused) == 1:
            try:
                await state.close()
            except ConfigurationError as exc:
                refused.append(exc)

    backend = SQLiteBackend(tmp_path / "state.db")
    bus = EventBus()
    bus.subscribe(subscriber)
    event = ExecutionEvent(actor=Tool(name="t", input_model=Item, handler=closes))
    state = ExecutionState(event_bus=bus, run_id="r", recovery=Recovery(backend))
    async with state:
        await event(Item(i=1), "", state)
        await bus.drain()
        assert not state.closed and backend.get_run("r").status.value == "running"
        await event(Item(i=2), "", state)
    assert len(refused) == 3
    assert "from inside 't'" in str(refused[0])
    assert "its own subscriber" in str(refused[1])
    assert sorted(backend.load("r")) == ["t", "t#2"]


async def test_a_closed_state_runs_nothing_more() -> None:
    # Calls and groups still ran on it, leaving no record and no checkpoint, and no word.
    state = ExecutionState()
    await state.close()
    assert state.closed
    with pytest.raises(ConfigurationError, match="was closed"):
        async with state.parallel() as p:
            p.add(value(1))
    event = ExecutionEvent(actor=Tool(name="echo", input_model=Doc, handler=_echo))
    with pytest.raises(ConfigurationError, match="was closed"):
        await event(Doc(text="x"), "", state)
    with pytest.raises(ConfigurationError, match="this ExecutionState was closed"):
        async with state:
            pass


async def test_close_while_a_task_is_inside_its_stream_loop_is_refused() -> None:
    # A reader busy with a result (not waiting for the next one) counted as a stream held
    # after a break: close() ended it under that task.
    state = ExecutionState()
    handling = asyncio.Event()
    go_on = asyncio.Event()

    async def consume() -> list[int]:
        got = []
        async for result in state.parallel_map(value, range(10), max_workers=2):
            got.append(result.result)
            if len(got) == 1:
                handling.set()
                await go_on.wait()  # handling the result, in the loop's body
        return got

    task = asyncio.create_task(consume())
    await handling.wait()
    with pytest.raises(ParallelError, match="still run"):
        await state.close()
    go_on.set()
    assert sorted(await task) == list(range(10))
    await state.close()


async def test_a_held_stream_whose_members_open_groups_is_ended_at_once() -> None:
    # close() waited for the members' nested groups (the stream went on starting members
    # meanwhile) or refused over them.
    state = ExecutionState()
    started_after: list[int] = []
    closing = False

    async def member(x: int) -> int:
        if closing:
            started_after.append(x)
        if x:
            async with state.parallel(name=f"inner{x}") as p:
                p.add(asyncio.Event().wait())
                await p.gather()
        return x

    held = state.parallel_map(member, range(8), max_workers=3)
    async for _ in held:
        break
    closing = True
    await state.close()
    assert started_after == []
    assert list(state.open_groups) == []
    with pytest.raises(GroupClosedError):
        async for _ in held:
            pass


async def test_close_from_a_task_a_finished_call_started_is_not_refused() -> None:
    # The task copied the call's context: close() read the call's frame there and refused
    # ("from inside 'starter'") though the call had returned.
    state = ExecutionState()
    go = asyncio.Event()
    later: list[asyncio.Task[None]] = []

    async def starter(input: Doc, context: str, state: ExecutionState) -> str:
        async def finish_run() -> None:
            await go.wait()
            await state.close()

        later.append(asyncio.create_task(finish_run()))
        return input.text

    event = ExecutionEvent(actor=Tool(name="starter", input_model=Doc, handler=starter))
    await event(Doc(text="x"), "", state)
    go.set()
    await later[0]
    assert state.closed


async def test_close_while_another_task_runs_a_call_is_refused_and_a_late_call_refused() -> None:
    # Not in any group, the other task's call had its record and checkpoint after the bus
    # and the store stopped; a call made before close() and awaited after still ran.
    state = ExecutionState()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def waits(input: Doc, context: str, state: ExecutionState) -> str:
        inside.set()
        await release.wait()
        return input.text

    event = ExecutionEvent(actor=Tool(name="waits", input_model=Doc, handler=waits))
    task = asyncio.create_task(event(Doc(text="x"), "", state))
    await inside.wait()
    with pytest.raises(ParallelError, match="a call of this run still runs"):
        await state.close()
    release.set()
    assert (await task).result == "x"
    late = event(Doc(text="y"), "", state)
    await state.close()
    with pytest.raises(ConfigurationError, match="was closed"):
        await late


async def test_a_stream_stepped_through_wait_for_by_a_live_task_is_not_ended() -> None:
    # On 3.11 wait_for steps it from a helper task, done between steps: the stream counted
    # as held by a finished task and was ended under its live reader.
    state = ExecutionState()
    stepped = asyncio.Event()
    go_on = asyncio.Event()

    async def read() -> list[int]:
        results = state.parallel_map(value, range(6), max_workers=2)
        got = []
        while True:
            try:
                result = await asyncio.wait_for(anext(results), 5)
            except StopAsyncIteration:
                return got
            got.append(result.result)
            stepped.set()
            await go_on.wait()

    task = asyncio.create_task(read())
    await stepped.wait()
    with pytest.raises(ParallelError, match="still run"):
        await state.close()
    go_on.set()
    assert sorted(await task) == list(range(6))
    await state.close()


async def test_close_counts_calls_started_by_calls_and_not_a_gathered_block() -> None:
    # A call started by a call that had returned ran on unrecorded (only the root's own
    # calls were counted); a close in a group's block after gather() was refused as "a call
    # still runs" (the gathered group had left the open groups, not its parent's count).
    state = ExecutionState()
    release = asyncio.Event()
    background: list[asyncio.Task[Any]] = []

    async def slow(input: Doc, context: str, state: ExecutionState) -> str:
        await release.wait()
        return input.text

    slow_event = ExecutionEvent(actor=Tool(name="slow", input_model=Doc, handler=slow))

    async def spawn(input: Doc, context: str, state: ExecutionState) -> str:
        background.append(asyncio.create_task(slow_event(input, "", state)))
        return input.text

    spawn_event = ExecutionEvent(actor=Tool(name="spawn", input_model=Doc, handler=spawn))
    await spawn_event(Doc(text="x"), "", state)
    await asyncio.sleep(0)  # (the background call has started)
    with pytest.raises(ParallelError, match=r"still runs in another task \(spawn::slow\)"):
        await state.close()
    release.set()
    assert (await background[0]).result == "x"
    async with state.parallel() as p:
        p.add(value(1))
        await p.gather()
        await state.close()  # in the block, after gather(): nothing runs
    assert state.closed


def test_a_worker_collected_after_its_loop_was_closed_leaves_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A loop closed with a group's worker still pending (asyncio says the task was destroyed);
    # the garbage collector then closes the worker's coroutine, off any loop: it must not
    # try to give its slot back there (it raised from resetting its frame in a context that
    # no longer exists, "Exception ignored in WorkerPool._worker").
    unraisable: list[Any] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    running = asyncio.Event()

    async def member() -> None:
        running.set()
        await asyncio.sleep(100)

    async def background(state: ExecutionState) -> None:
        async with state.parallel(name="left") as p:
            p.add(member())

    async def main() -> None:
        state = ExecutionState(watchdog=None)
        asyncio.get_running_loop().create_task(background(state))
        await running.wait()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
    del loop
    gc.collect()
    assert [u for u in unraisable if "_worker" in repr(u.object)] == []


async def test_close_while_another_task_leaves_its_block_gathering_is_refused_not_awaited() -> None:
    # The other task's block has no gather(): leaving it gathers, for as long as its members
    # run (an hour, as well). close() refuses at once, as for any block not left yet.
    state = ExecutionState()
    started = asyncio.Event()
    release = asyncio.Event()

    async def member() -> str:
        started.set()
        await release.wait()
        return "done"

    async def other() -> list[str]:
        async with state.parallel(name="bg") as p:
            p.add(member())
        return [r.result for r in await p.gather()]

    task = asyncio.create_task(other())
    # (A member starts only once the block's task waits: in leaving its block, gathering.)
    await started.wait()
    with pytest.raises(ParallelError, match="still run: bg"):
        await asyncio.wait_for(state.close(), timeout=5)
    assert not task.done()
    release.set()
    assert await task == ["done"]
    await state.close()


@pytest.mark.parametrize("turns", [1, 3, 20])
async def test_close_while_another_task_runs_a_block_is_refused_whatever_its_members_take(
    turns: int,
) -> None:
    # close() gives a dropped stream's generator a few loop turns to be closed by its
    # finalizer; it waited those turns for any open block, so a block whose members needed
    # fewer ended meanwhile, the close went through, and the other task's next group failed
    # on a closed state. Refused either way now.
    state = ExecutionState()

    async def member() -> int:
        for _ in range(turns):
            await asyncio.sleep(0)
        return turns

    async def other() -> list[int]:
        async with state.parallel(name="bg") as p:
            for _ in range(3):
                p.add(member())
            first = [r.result for r in await p.gather()]
        async with state.parallel(name="next") as p:  # the run goes on
            p.add(member())
        return first + [r.result for r in await p.gather()]

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # (the block is open)
    with pytest.raises(ParallelError, match="still run: bg"):
        await state.close()
    assert await task == [turns] * 4
    await state.close()


async def test_a_result_members_return_is_placed_as_a_copy_of_it() -> None:
    # Members returning an ExecutionResult they did not make (one the caller built, shared
    # by two members, or one the caller had from an earlier call): each member's result is
    # placed (index, name, address) on a copy; the caller's object is left as it was (it
    # was written in place: the second member got the first one's address).
    shared: ExecutionResult[int] = ExecutionResult(ok=True, result=7)
    earlier = await ExecutionEvent(actor=Tool(name="up", input_model=Doc, handler=_echo))(
        Doc(text="x"), "", ExecutionState()
    )

    async def returns(result: ExecutionResult[Any]) -> ExecutionResult[Any]:
        return result

    state = ExecutionState()
    async with state.parallel(name="g") as p:
        p.add(returns(shared), name="a")
        p.add(lambda: returns(shared), name="b")
        p.add(returns(earlier), name="c")
    results = await p.gather()
    assert [(r.index, r.name, r.address) for r in results] == [
        (0, "a", "g[0]"),
        (1, "b", "g[1]"),
        (2, "c", "up"),
    ]
    assert (shared.index, shared.name, shared.address) == (None, None, None)
    assert (earlier.index, earlier.name, earlier.address) == (None, None, "up")
