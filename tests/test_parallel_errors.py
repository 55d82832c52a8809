"""Error strategies, quorum, timeouts, cancellation and bad input."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from parallel_support import assert_no_leftover_tasks, boom, closed, echo_tool, own_tasks, value
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy, GroupStatus
from rh_agents.core.results import Raised, ResultStatus
from rh_agents.errors import (
    ConfigurationError,
    DependencyError,
    DuplicateMemberError,
    FailureThresholdError,
    GroupClosedError,
    GroupFailedError,
    InvalidMemberError,
    MemberCancelledError,
    ParallelTimeoutError,
    UnusedGroupWarning,
)

pytestmark = pytest.mark.asyncio


async def forever(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.Event().wait()


# --- error strategies -------------------------------------------------------------------------


async def test_fail_slow_never_raises() -> None:
    state = ExecutionState()
    async with state.parallel(max_workers=2) as p:
        for i in range(6):
            p.add(boom(f"e{i}") if i % 2 else value(i))
        results = await p.gather()
    assert [r.ok for r in results] == [True, False] * 3
    assert results[1].error == "ValueError: e1"
    assert p.status is GroupStatus.PARTIAL


async def test_collect_all_is_fail_slow() -> None:
    assert ErrorStrategy.COLLECT_ALL is ErrorStrategy.FAIL_SLOW
    state = ExecutionState()
    group = state.parallel(error_strategy="FAIL_FAST")  # a name works like the enum
    assert group.error_strategy is ErrorStrategy.FAIL_FAST
    with pytest.warns(UnusedGroupWarning, match="never run"):
        del group  # never run
        gc.collect()


async def test_fail_fast_cancels_rest_and_reraises_first() -> None:
    state = ExecutionState()
    before = own_tasks()
    started = asyncio.Event()
    running = forever(started)
    unstarted = [value(i) for i in range(5)]
    first = ValueError("first")

    async def fail_after_start() -> None:
        await started.wait()
        raise first

    with pytest.raises(ValueError) as info:
        async with state.parallel(max_workers=2, error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(running)
            p.add(fail_after_start())
            for c in unstarted:
                p.add(c)
            await p.gather()
    assert info.value is first
    stats = p.statistics()
    assert (stats.failed, stats.cancelled, stats.succeeded) == (1, 6, 0)
    assert closed(running) and all(closed(c) for c in unstarted)
    assert p.status is GroupStatus.FAILED
    assert_no_leftover_tasks(before)


@pytest.mark.parametrize("threshold", [2, 0.5])
async def test_fail_threshold_count_and_fraction(threshold: float) -> None:
    state = ExecutionState()
    block = asyncio.Event()

    async def slow() -> None:
        await block.wait()

    with pytest.raises(FailureThresholdError) as info:
        async with state.parallel(
            max_workers=4,
            error_strategy=ErrorStrategy.FAIL_THRESHOLD,
            failure_threshold=threshold,
        ) as p:
            p.add(boom("a"))
            p.add(slow())
            p.add(boom("b"))
            p.add(slow())
    results = info.value.results
    assert [r.status for r in results] == [
        ResultStatus.FAILED,
        ResultStatus.CANCELLED,
        ResultStatus.FAILED,
        ResultStatus.CANCELLED,
    ]
    assert "2 failures" in str(info.value)


async def test_fraction_threshold_waits_until_members_are_all_added() -> None:
    # One failure among one member added so far is 100%, but the group is not sealed yet:
    # the fraction applies to the final count (1 of 4 < 0.5), so nothing stops.
    state = ExecutionState()
    async with state.parallel(
        error_strategy=ErrorStrategy.FAIL_THRESHOLD, failure_threshold=0.5
    ) as p:
        p.add(boom())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for i in range(3):
            p.add(value(i))
        results = await p.gather()
    assert [r.ok for r in results] == [False, True, True, True]


async def test_fail_threshold_needs_threshold() -> None:
    with pytest.raises(ConfigurationError, match="failure_threshold"):
        ExecutionState().parallel(error_strategy=ErrorStrategy.FAIL_THRESHOLD)


async def test_exception_group_keeps_partial_results() -> None:
    state = ExecutionState()
    with pytest.raises(GroupFailedError) as info:
        async with state.parallel(raise_exception_group=True) as p:
            p.add(value(1))
            p.add(boom("x"))
            p.add(boom("y"))
    eg = info.value
    assert isinstance(eg, ExceptionGroup)
    assert [str(e) for e in eg.exceptions] == ["x", "y"]
    assert [r.result for r in eg.results if r.ok] == [1]
    assert len(eg.results) == 3


async def test_quorum_cancels_the_others() -> None:
    state = ExecutionState()
    before = own_tasks()
    slow = [forever(), forever()]
    async with state.parallel(max_workers=4, quorum=2) as p:
        p.add(slow[0])
        p.add(value("a"))
        p.add(slow[1])
        p.add(value("b"))
        results = await p.gather()
    assert [r.status for r in results] == [
        ResultStatus.CANCELLED,
        ResultStatus.COMPLETED,
        ResultStatus.CANCELLED,
        ResultStatus.COMPLETED,
    ]
    assert isinstance(results[0].exception, MemberCancelledError)
    assert "quorum of 2" in (results[0].error or "")
    assert all(closed(c) for c in slow)
    assert_no_leftover_tasks(before)


# --- timeouts ------------------------------------------------------------------------------------


async def test_group_timeout_keeps_finished_results() -> None:
    state = ExecutionState()
    before = own_tasks()
    async with state.parallel(max_workers=2, timeout=0.05, name="t") as p:
        p.add(value("done"))
        p.add(forever())
        p.add(forever())  # never gets a worker before the timeout
        results = await p.gather()
    assert results[0].ok and results[0].result == "done"
    assert [r.status for r in results[1:]] == [ResultStatus.TIMED_OUT] * 2
    assert isinstance(results[1].exception, ParallelTimeoutError)
    assert p.status is GroupStatus.TIMED_OUT
    assert_no_leftover_tasks(before)


async def test_group_timeout_raises_outside_fail_slow() -> None:
    state = ExecutionState()
    with pytest.raises(ParallelTimeoutError, match="timed out"):
        async with state.parallel(timeout=0.02, error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(forever())


async def test_member_timeout() -> None:
    state = ExecutionState()
    async with state.parallel(member_timeout=0.02) as p:
        p.add(value(1))
        p.add(forever())
        p.add(forever(), timeout=0.01, name="own")
        results = await p.gather()
    assert results[0].ok
    assert results[1].status is ResultStatus.TIMED_OUT
    assert results[2].status is ResultStatus.TIMED_OUT and "own" in (results[2].error or "")
    assert p.statistics().timed_out == 2


async def test_member_timeout_counts_for_fail_fast() -> None:
    state = ExecutionState()
    with pytest.raises(ParallelTimeoutError):
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(forever(), timeout=0.01)
            p.add(forever())


# --- cancellation --------------------------------------------------------------------------------


async def test_outside_cancellation_leaves_nothing_behind() -> None:
    state = ExecutionState()
    before = own_tasks()
    started = asyncio.Event()
    running = [forever(started), forever()]
    unstarted = [value(i) for i in range(4)]
    reached_gather = asyncio.Event()

    async def body() -> None:
        async with state.parallel(max_workers=2) as p:
            for c in [*running, *unstarted]:
                p.add(c)
            reached_gather.set()
            await p.gather()

    task = asyncio.create_task(body())
    await started.wait()
    await reached_gather.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(closed(c) for c in running + unstarted)
    assert_no_leftover_tasks(before)


async def test_outside_cancellation_while_block_body_waits() -> None:
    state = ExecutionState()
    before = own_tasks()
    started = asyncio.Event()
    group: list[Any] = []

    async def body() -> None:
        async with state.parallel(max_workers=1) as p:
            group.append(p)
            p.add(forever(started))
            p.add(value(1))
            await asyncio.Event().wait()  # the block itself is cancelled, not gather()

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert group[0].status is GroupStatus.CANCELLED
    assert [r.status for r in await group[0].gather()] == [ResultStatus.CANCELLED] * 2
    assert_no_leftover_tasks(before)


async def test_p_cancel_keeps_results_so_far() -> None:
    state = ExecutionState()
    before = own_tasks()
    started = asyncio.Event()
    never = value("never")
    async with state.parallel(max_workers=1) as p:
        p.add(value("kept"))
        p.add(forever(started))
        p.add(never)
        await started.wait()
        p.cancel()
        results = await p.gather()
        with pytest.raises(GroupClosedError):
            p.add(value(1))
    assert results[0].ok and results[0].result == "kept"
    assert [r.status for r in results[1:]] == [ResultStatus.CANCELLED] * 2
    assert closed(never)
    assert p.status is GroupStatus.CANCELLED
    assert_no_leftover_tasks(before)


async def test_stream_cancelled_from_outside() -> None:
    state = ExecutionState()
    before = own_tasks()
    first = asyncio.Event()

    async def body() -> None:
        async with state.parallel(max_workers=2) as p:
            p.add(value(0))
            p.add(forever())
            async for _ in p.stream():
                first.set()

    task = asyncio.create_task(body())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_no_leftover_tasks(before)


# --- bad input -----------------------------------------------------------------------------------


async def test_bad_input_errors_name_the_problem() -> None:
    state = ExecutionState()
    event = ExecutionEvent(actor=echo_tool)
    async with state.parallel(name="g") as p:
        with pytest.raises(InvalidMemberError, match="int 42"):
            p.add(42)
        with pytest.raises(InvalidMemberError, match="'echo' itself"):
            p.add(event)
        with pytest.raises(InvalidMemberError, match="needs arguments"):
            p.add(value)
        with pytest.raises(InvalidMemberError, match="needs arguments"):
            p.add(lambda x: value(x))
        p.add("a", value(1))
        dup = value(2)
        with pytest.raises(DuplicateMemberError, match="'a'"):
            p.add("a", dup)
        assert closed(dup)
        unknown = value(3)
        with pytest.raises(DependencyError, match="'missing'"):
            p.add("b", unknown, after="missing")
        assert closed(unknown)
        await p.gather()
        late = value(4)
        with pytest.raises(GroupClosedError, match="already gathered"):
            p.add(late)
        assert closed(late)
    assert p.total == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
async def test_max_workers_must_be_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_workers"):
        ExecutionState().parallel(max_workers=bad)


async def test_add_outside_block_and_reuse() -> None:
    state = ExecutionState()
    group = state.parallel()
    coro = value(1)
    with pytest.raises(GroupClosedError, match="async with"):
        group.add(coro)
    assert closed(coro)
    async with group:
        pass
    with pytest.raises(GroupClosedError, match="already used"):
        async with group:
            pass


async def test_option_d_rejection_closes_every_member() -> None:
    state = ExecutionState()
    coros = [value(1), value(2)]
    async with state.parallel() as p:
        with pytest.raises(InvalidMemberError):
            await p.gather([coros[0], "not awaitable", coros[1]])
    assert closed(coros[1])
    after = [value(3), value(4)]
    with pytest.raises(GroupClosedError):
        await p.gather(after)
    assert all(closed(c) for c in after)


async def test_callable_returning_non_awaitable_fails_that_member() -> None:
    state = ExecutionState()
    async with state.parallel() as p:
        p.add(lambda: 5)
    result = (await p.gather())[0]
    assert not result.ok and "returned int, not an awaitable" in (result.error or "")


async def test_members_own_timeout_error_is_a_failure_not_a_member_timeout() -> None:
    state = ExecutionState()

    async def raises_timeout() -> None:
        raise TimeoutError("upstream said so")

    async with state.parallel(member_timeout=30) as p:
        p.add(raises_timeout())
    result = (await p.gather())[0]
    assert result.status is ResultStatus.FAILED
    assert result.error == "TimeoutError: upstream said so"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": "high"}, "priority must be an int"),
        ({"priority": None}, "priority must be an int"),
        ({"timeout": 0}, "timeout must be seconds > 0"),
        ({"timeout": True}, "timeout must be seconds > 0"),
        ({"name": ""}, "non-empty str"),
    ],
)
async def test_bad_add_options_close_the_member(options: dict[str, Any], message: str) -> None:
    state = ExecutionState()
    coro = value(1)
    async with state.parallel() as p:
        with pytest.raises(ConfigurationError, match=message):
            p.add(coro, **options)
    assert closed(coro)
    assert p.total == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": True}, "timeout"),
        ({"member_timeout": -1}, "member_timeout"),
        ({"error_strategy": "sometimes"}, "unknown error_strategy 'sometimes'"),
        ({"error_strategy": "fail_threshold", "failure_threshold": True}, "failure_threshold"),
        ({"error_strategy": "fail_threshold", "failure_threshold": 1.5}, "failure_threshold"),
        ({"quorum": 0}, "quorum"),
        ({"name": "a::b"}, "group name"),
        ({"name": "two\u2028lines"}, "group name"),  # (any line break: str.splitlines's)
        ({"name": "cr\r"}, "group name"),
    ],
)
async def test_bad_group_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ExecutionState().parallel(**options)


async def test_add_after_fail_fast_stopped_the_group_closes_the_member() -> None:
    state = ExecutionState()
    late = value("late")
    with pytest.raises(ValueError, match="early"):
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(boom("early"))
            for _ in range(3):
                await asyncio.sleep(0)  # let the worker run the failing member
            assert p.statistics().failed == 1
            p.add(late)  # the group is stopped: this member ends at once, never run
    assert closed(late)
    assert p.statistics().cancelled == 1


async def test_outer_asyncio_timeout_around_a_group() -> None:
    state = ExecutionState()
    before = own_tasks()
    unstarted = value(1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02), state.parallel(max_workers=1) as p:
            p.add(forever())
            p.add(unstarted)
    assert closed(unstarted)
    assert p.status is GroupStatus.CANCELLED
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert_no_leftover_tasks(before)


async def test_fail_fast_on_a_failed_result_without_exception() -> None:
    from rh_agents.core.results import ExecutionResult
    from rh_agents.errors import MemberFailedError

    state = ExecutionState()
    failed: ExecutionResult[Any] = ExecutionResult(
        ok=False, error="quota", status=ResultStatus.FAILED
    )
    expected = "member bad of group 'parallel' failed: quota"
    with pytest.raises(MemberFailedError, match=expected) as info:
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add("bad", value(failed))
            p.add(forever())
    result = info.value.result
    assert (result.error, result.status, result.name) == ("quota", ResultStatus.FAILED, "bad")
    assert failed.name is None  # placed on a copy: the member's own object stays as it was


async def test_dependencies_need_kept_results() -> None:
    from rh_agents.core.parallel import ParallelExecutionManager

    state = ExecutionState()
    coro = value(2)
    async with ParallelExecutionManager(state, retain_results=False) as p:
        p.add("a", value(1))
        with pytest.raises(ConfigurationError, match="keeps results"):
            p.add("b", coro, after="a")
        results = [r.result async for r in p.stream()]
    assert results == [1]
    assert closed(coro)


# --- what a reader's loop and a second read see of a member's exception ---------------------


async def _empty_source() -> Any:
    return
    yield


async def take_first() -> Any:
    """A member that takes the first item of an empty async source: StopAsyncIteration."""
    await asyncio.sleep(0)
    return await anext(_empty_source())


@pytest.mark.parametrize("reader", ["stream", "as_completed", "parallel_map"])
async def test_a_members_stop_async_iteration_does_not_end_a_stream_quietly(reader: str) -> None:
    # Out of __anext__, a StopAsyncIteration ends the reader's loop as if every result had
    # come: the failure would be lost. As an async generator does, it becomes a RuntimeError.
    state = ExecutionState()
    before = own_tasks()
    seen: list[Any] = []
    with pytest.raises(RuntimeError, match="raised StopAsyncIteration") as info:
        if reader == "parallel_map":

            def member(i: int) -> Any:
                return take_first() if i == 1 else value(i)

            async for r in state.parallel_map(member, range(3), error_strategy="fail_fast"):
                seen.append(r.result)
        else:
            async with state.parallel(error_strategy="fail_fast") as p:
                members = [value("a"), take_first(), forever()]
                if reader == "stream":
                    for member in members:
                        p.add(member)
                    results = p.stream()
                else:
                    results = p.as_completed(members)
                async for r in results:
                    seen.append(r.result)
    assert type(info.value.__cause__) is StopAsyncIteration
    # What completed before the failure was read as usual (item 2 of the map may or may not
    # have been taken before the failure stopped it).
    if reader == "parallel_map":
        assert seen in ([0], [0, 2])
    else:
        assert seen == ["a"]
    assert_no_leftover_tasks(before)


async def test_gather_raises_a_members_stop_async_iteration_as_is() -> None:
    state = ExecutionState()
    with pytest.raises(StopAsyncIteration):
        async with state.parallel(error_strategy="fail_fast") as p:
            p.add(take_first())
            await p.gather()


def _depth(error: BaseException) -> int:
    depth, tb = 0, error.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


@pytest.mark.parametrize("error", [ValueError("first"), SystemExit(3)])
async def test_reading_a_failed_group_again_does_not_grow_the_traceback(
    error: BaseException,
) -> None:
    # The group keeps the member's exception and raises it at every read: each read must
    # start from the traceback of the first, not add its own frames to the last one's.
    state = ExecutionState()

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    with pytest.raises(type(error)):
        async with state.parallel(error_strategy="fail_fast") as p:
            p.add(fail())
            await p.gather()
    depths = []
    for read in (p.gather, p.gather_dict, p.gather, p.gather_dict):
        with pytest.raises(type(error)) as info:
            await read()
        assert info.value is error
        depths.append(_depth(error))
    assert depths[0] == depths[2] and depths[1] == depths[3]
    assert max(depths) <= depths[0] + 2  # (gather_dict goes through one more frame)


async def test_an_exception_carried_to_several_callers_keeps_its_own_traceback() -> None:
    # A call the cache shares (or a thread's handler) carries a BaseException to every caller
    # as a Raised: each raises it with the traceback it had, not with the last caller's frames.
    def fail() -> None:
        raise KeyboardInterrupt

    try:
        fail()
    except KeyboardInterrupt as error:
        carried = Raised(error)
    depths = []
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt) as info:
            carried.raise_again()
        depths.append(_depth(info.value))
    assert depths == [depths[0]] * 3
    assert carried.exception.__traceback__ is not None
    assert carried.exception.__traceback__.tb_next is not None  # (fail's own frame kept)
