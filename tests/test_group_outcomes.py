"""What a group raises, and where, when several ways of ending meet: a strategy's error read
and handled inside the block, ``raise_exception_group`` with a strategy that stops early, a
member asking the program to stop while the block leaves by its own exception or a
cancellation, a cancellation landing while the group joins its members."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from parallel_support import Doc, assert_no_leftover_tasks, until, value
from rh_agents import ErrorStrategy, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.results import ResultStatus
from rh_agents.errors import FailureThresholdError, GroupFailedError, OversizedGroupWarning

pytestmark = pytest.mark.timeout(10)  # (asyncio_mode is "auto")


async def fail(message: str = "boom") -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


async def forever(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.Event().wait()


async def exits(code: int) -> None:
    await asyncio.sleep(0)
    raise SystemExit(code)


# --- a strategy's error handled where it was read ----------------------------------------


@pytest.mark.parametrize("read", ["gather", "stream"])
async def test_a_fail_fast_error_handled_in_the_block_is_not_raised_again_on_leaving(
    read: str,
) -> None:
    # Leaving the block raised the same ValueError a second time: the program died on an
    # error it had handled.
    state = ExecutionState()
    handled: list[str] = []
    async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
        p.add(fail("first"))
        p.add(forever())
        try:
            if read == "gather":
                await p.gather()
            else:
                async for _ in p.stream():
                    pass
        except ValueError as exc:
            handled.append(str(exc))
    assert handled == ["first"]
    stats = p.statistics()
    assert (stats.failed, stats.cancelled) == (1, 1)
    with pytest.raises(ValueError, match="first"):  # a later read still says it
        await p.gather()


async def test_a_fail_fast_error_never_read_is_still_raised_by_leaving() -> None:
    state = ExecutionState()
    with pytest.raises(ValueError, match="first"):
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(fail("first"))
            p.add(forever())


# --- raise_exception_group with every strategy ----------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"error_strategy": ErrorStrategy.FAIL_FAST},
        {"error_strategy": ErrorStrategy.FAIL_THRESHOLD, "failure_threshold": 1},
        {"error_strategy": ErrorStrategy.FAIL_SLOW},
    ],
    ids=["fail_fast", "threshold", "fail_slow"],
)
async def test_raise_exception_group_is_what_the_end_raises_whatever_the_strategy(
    options: dict[str, Any],
) -> None:
    # Under FAIL_FAST the flag was accepted and ignored: a bare ValueError came out, and the
    # partial results could not be reached.
    state = ExecutionState()
    started = asyncio.Event()
    with pytest.raises(GroupFailedError) as caught:
        async with state.parallel(raise_exception_group=True, **options) as p:
            p.add(value(1))
            p.add(forever(started))
            await started.wait()
            p.add(fail("second"))
            if options["error_strategy"] is ErrorStrategy.FAIL_SLOW:
                p.cancel()  # (nothing else would end the member that waits for ever)
    error = caught.value
    assert [r.index for r in error.results] == [0, 1, 2]
    assert error.results[0].ok
    statuses = [r.status for r in error.results]
    assert ResultStatus.CANCELLED in statuses
    assert any(isinstance(e, ValueError) and str(e) == "second" for e in error.exceptions) or (
        options["error_strategy"] is ErrorStrategy.FAIL_SLOW
    )
    assert len(error.exceptions) == sum(1 for r in error.results if not r.ok)


async def test_a_threshold_without_the_flag_still_raises_its_own_error() -> None:
    state = ExecutionState()
    with pytest.raises(FailureThresholdError):
        async with state.parallel(
            error_strategy=ErrorStrategy.FAIL_THRESHOLD, failure_threshold=1
        ) as p:
            p.add(fail())
            p.add(forever())


# --- a member's request to stop meets the block's own way out ------------------------------


async def test_a_members_system_exit_goes_before_the_bodys_exception() -> None:
    # The block's ValueError came out and the SystemExit was lost (only the member's result
    # held it); asyncio.TaskGroup raises it first.
    state = ExecutionState()
    before = set(asyncio.all_tasks())
    with pytest.raises(SystemExit) as caught:
        async with state.parallel(max_workers=2) as p:
            p.add(exits(3))
            p.add(forever())
            # (the block's own code goes on: a stop never interrupts it)
            await until(lambda: p.statistics().done > 0)
            raise ValueError("body")
    assert caught.value.code == 3
    assert isinstance(caught.value.__context__, ValueError)  # the body's, not lost either
    assert_no_leftover_tasks(before)


async def test_a_members_keyboard_interrupt_goes_before_an_outer_timeout() -> None:
    state = ExecutionState()
    entered = asyncio.Event()

    async def interrupts() -> None:
        await entered.wait()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        async with asyncio.timeout(0.05), state.parallel(max_workers=2) as p:
            p.add(interrupts())
            p.add(forever())
            entered.set()
            await asyncio.sleep(5)


async def test_a_system_exit_the_block_read_and_handled_is_not_raised_again() -> None:
    state = ExecutionState()
    async with state.parallel() as p:
        p.add(exits(4))
        with pytest.raises(SystemExit):
            await p.gather()
    assert p.statistics().failed == 1


# --- a cancellation landing while the group joins its members -------------------------------


async def test_a_cancellation_during_the_join_keeps_its_message() -> None:
    # join_workers raised a fresh CancelledError: the caller's message was lost.
    state = ExecutionState()
    cleaning = asyncio.Event()
    finish_cleanup = asyncio.Event()

    async def slow_cleanup() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await finish_cleanup.wait()
            raise

    async def block() -> None:
        async with state.parallel() as p:
            p.add(slow_cleanup())
            await asyncio.sleep(0)
            raise ValueError("body")  # leaving by an exception: the group joins the member

    task = asyncio.create_task(block())
    await cleaning.wait()
    task.cancel("why")
    await asyncio.sleep(0)
    finish_cleanup.set()
    with pytest.raises(asyncio.CancelledError) as caught:
        await task
    assert caught.value.args == ("why",)


# --- the history of a group that keeps nothing -----------------------------------------------


async def echo(input: Doc, context: str, state: ExecutionState) -> str:
    await asyncio.sleep(0)
    return input.text


echo_event = ExecutionEvent(actor=Tool(name="echo", input_model=Doc, handler=echo))


async def test_parallel_map_over_an_event_keeps_no_history_of_its_calls() -> None:
    # Every call's input and result stayed in state.history: memory grew with the input
    # (20 MB for 1,000 documents of 20 kB) though the stream keeps nothing once read.
    state = ExecutionState()
    docs = (Doc(text=f"{i}") for i in range(200))
    seen = [r.result async for r in state.parallel_map(echo_event, docs, max_workers=4)]
    assert sorted(seen, key=int) == [str(i) for i in range(200)]
    assert len(state.history) == 0
    # A group that keeps its results keeps its calls' history, before and after.
    async with state.parallel(name="kept") as p:
        p.add(echo_event(Doc(text="a"), "", state))
    await echo_event(Doc(text="b"), "", state)
    assert sorted(e.result.result for e in state.history) == ["a", "b"]
    assert [e.address for e in state.history.get_group("kept")] == ["kept[0]::echo"]


async def test_a_warning_made_an_error_does_not_replace_a_cancellation_leaving_the_block() -> None:
    # Under -W error, the OversizedGroupWarning of the group's end replaced the
    # CancelledError of the task leaving it: a cancellation swallowed.
    state = ExecutionState(watchdog=None)
    started = asyncio.Event()

    async def block() -> None:
        async with state.parallel(max_workers=100) as p:
            p.add(forever(started))
            await asyncio.Event().wait()

    with warnings.catch_warnings():
        warnings.simplefilter("error", OversizedGroupWarning)
        task = asyncio.create_task(block())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
    assert any("OversizedGroupWarning" in note for note in caught.value.__notes__)


async def test_a_warning_made_an_error_does_not_replace_a_cancellation_inside_gather() -> None:
    # The same, with the block cancelled while it waits in gather(): the group's end there
    # raised the warning in place of the CancelledError (and of an outer timeout's).
    state = ExecutionState(watchdog=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OversizedGroupWarning)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05), state.parallel(max_workers=100) as p:
                p.add(forever())
                await p.gather()


async def test_an_input_failing_as_it_is_closed_early_is_not_lost() -> None:
    # parallel_map closed early (aclosing + break), or a block left by its own exception:
    # the error the input's `finally` raised vanished.
    def items() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            raise OSError("cleanup of the input failed")

    state = ExecutionState()
    with pytest.raises(OSError, match="cleanup of the input failed"):
        async with contextlib.aclosing(state.parallel_map(value, items(), max_workers=1)) as rs:
            async for _ in rs:
                break
    with pytest.raises(KeyError) as caught:
        async with state.parallel(max_workers=1) as p:
            p.map(value, items())
            async for _ in p.stream():
                raise KeyError("body")
    assert any("cleanup of the input failed" in note for note in caught.value.__notes__)


async def test_a_member_cancelled_by_something_else_than_its_group_says_so() -> None:
    # It read "the group was cancelled", which it was not, and lost the message.
    async def gives_up() -> None:
        await asyncio.sleep(0)
        raise asyncio.CancelledError("member gave up")

    state = ExecutionState()
    async with state.parallel() as p:
        p.add(gives_up())
        p.add(value(1))
    results = await p.gather()
    assert results[0].status is ResultStatus.CANCELLED
    assert "not by its group" in (results[0].error or "")
    assert "member gave up" in (results[0].error or "")
    assert results[1].ok
