"""``ExecutionState.parallel_map``: a lazy input streamed through a group in bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel_support import steps
from rh_agents.core.bus import EventBus
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import GroupCompleted


class Source:
    """An instrumented input: counts items pulled, and items pulled but not yet read back."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0
        self.read = 0
        self.most_ahead = 0

    def items(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            self.most_ahead = max(self.most_ahead, self.pulled - self.read)
            yield i

    async def aitems(self) -> AsyncIterator[int]:
        for i in self.items():
            await asyncio.sleep(0)
            yield i


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 120),
    workers=st.integers(1, 12),
    delays=st.lists(st.integers(0, 4), min_size=1, max_size=16),
    use_async=st.booleans(),
)
def test_every_item_once_with_its_index_and_bounded_lookahead(
    n: int, workers: int, delays: list[int], use_async: bool
) -> None:
    async def scenario() -> None:
        state = ExecutionState()
        source = Source(n)

        async def work(i: int) -> int:
            await steps(delays[i % len(delays)])
            return i * 10

        items = source.aitems() if use_async else source.items()
        seen: list[tuple[int | None, int]] = []
        async with asyncio.timeout(3):  # a hang fails fast instead of shrinking for minutes
            async for result in state.parallel_map(work, items, max_workers=workers):
                source.read += 1
                assert result.ok
                seen.append((result.index, result.result))
        assert sorted(seen) == [(i, i * 10) for i in range(n)]
        # Items in flight: running (<= workers) plus results not yet read (<= 2 x workers).
        assert source.most_ahead <= 3 * workers + 1
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


async def test_stopping_early_with_aclosing_leaves_no_task() -> None:
    state = ExecutionState()

    async def work(i: int) -> int:
        await asyncio.sleep(0)
        return i

    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    results = state.parallel_map(work, endless(), max_workers=8)
    async with asyncio.timeout(10), contextlib.aclosing(results):
        async for result in results:
            if result.index is not None and result.index >= 50:
                break
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_failing_input_fails_the_stream() -> None:
    state = ExecutionState()

    async def work(i: int) -> int:
        return i

    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("input broke")

    got: list[int] = []
    with pytest.raises(ValueError, match="input broke"):
        async with asyncio.timeout(10):
            async for result in state.parallel_map(work, broken(), max_workers=1):
                got.append(result.index or 0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_member_failures_are_results_not_errors() -> None:
    state = ExecutionState()

    async def work(i: int) -> int:
        if i % 3 == 0:
            raise RuntimeError(f"item {i}")
        return i

    async with asyncio.timeout(10):
        results = [r async for r in state.parallel_map(work, range(9), max_workers=4)]
    failed = sorted(r.index or 0 for r in results if not r.ok)
    assert failed == [0, 3, 6]
    assert all("RuntimeError: item" in (r.error or "") for r in results if not r.ok)


async def test_map_members_that_fail_to_start_fail_alone_with_a_clear_error() -> None:
    from rh_agents.errors import InvalidMemberError

    state = ExecutionState()

    def not_async(n: int) -> int:  # a plain function: its calls are not awaitable
        return n

    async def picky(n: int) -> int:
        return n

    def raises_when_called(n: int) -> Any:
        if n == 1:
            raise KeyError(n)  # raises before making a coroutine
        return picky(n)

    async with state.parallel(max_workers=2) as p:
        p.map(not_async, range(2))
    results = await p.gather()
    assert [r.ok for r in results] == [False, False]
    assert all(isinstance(r.exception, InvalidMemberError) for r in results)
    assert "not_async" in (results[0].error or "") and "not an awaitable" in (
        results[0].error or ""
    )

    async with state.parallel(max_workers=2) as p:
        p.map(raises_when_called, range(3))
    results = await p.gather()
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].exception, KeyError)


async def test_a_threshold_stopping_the_stream_hands_every_unread_result_in_its_error() -> None:
    # The stream raised on reaching the result that crossed the threshold; that result and
    # every one after it were in neither the stream nor the error's .results.
    from rh_agents.core.parallel import ErrorStrategy
    from rh_agents.errors import FailureThresholdError

    state = ExecutionState(watchdog=None)
    gate = asyncio.Event()

    async def fn(i: int) -> int:
        if i in (1, 2):
            await gate.wait()  # both fail once the first result has been read
            raise ValueError(f"bad {i}")
        if i == 0:
            return i
        await asyncio.Event().wait()  # cancelled by the threshold
        return i

    yielded: list[int | None] = []
    with pytest.raises(FailureThresholdError) as info:
        async for r in state.parallel_map(
            fn,
            range(6),
            max_workers=6,
            error_strategy=ErrorStrategy.FAIL_THRESHOLD,
            failure_threshold=2,
        ):
            yielded.append(r.index)
            gate.set()
    in_error = [r.index for r in info.value.results]
    assert sorted(yielded + in_error) == list(range(6))  # each result exactly once
    statuses = {r.index: r.status.value for r in info.value.results}
    assert all(statuses[i] == "cancelled" for i in (3, 4, 5))


async def test_a_member_back_from_its_backoff_goes_before_the_item_pulled_meanwhile() -> None:
    # A worker pulling the next item of a slow input held the one slot; once the item came,
    # it ran that item first, and the member back from its backoff waited behind it.
    from parallel_support import until
    from rh_agents.resilience import RetryPolicy

    state = ExecutionState(watchdog=None)
    more = asyncio.Event()
    starts: list[tuple[int, int]] = []

    async def items() -> AsyncIterator[int]:
        yield 0
        await more.wait()
        yield 1

    async def fn(i: int) -> int:
        starts.append((i, sum(1 for s in starts if s[0] == i) + 1))
        if starts == [(0, 1)]:
            raise ConnectionError("once")
        return i

    async with state.parallel(
        max_workers=1, retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)
    ) as p:
        p.map(fn, items())
        gathering = asyncio.ensure_future(p.gather())
        # Item 0 backs off and waits for the slot, which a worker waiting for item 1 holds.
        await until(lambda: p._pool.slots.waiting == 1)
        more.set()
        results = await asyncio.wait_for(gathering, 5)
    assert [r.result for r in results] == [0, 1]
    assert starts == [(0, 1), (0, 2), (1, 1)]


class _InputGaveUp(BaseException):
    """What a test framework's failure is: a BaseException, not an Exception."""


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_base_exception_of_the_input_stops_the_group_and_is_raised(kind: str) -> None:
    # It was caught nowhere: the worker's task died with it, logged as never retrieved, and
    # gather() returned the results as if the input had simply ended.
    def items() -> Iterator[int]:
        yield 0
        yield 1
        raise _InputGaveUp("the input gave up")

    async def async_items() -> AsyncIterator[int]:
        for item in items():
            yield item

    async def work(i: int) -> int:
        await asyncio.sleep(0)
        return i

    state = ExecutionState(watchdog=None)
    with pytest.raises(_InputGaveUp, match="gave up"):
        async with state.parallel(max_workers=2) as p:
            p.map(work, items() if kind == "sync" else async_items())
            await p.gather()
    assert p.status.value == "failed"


@pytest.mark.parametrize("strategy", ["fail_fast", "fail_slow"])
async def test_an_input_raising_as_it_is_closed_still_ends_the_group(strategy: str) -> None:
    # The close's error skipped the group's end: still "running", still open, no
    # GroupCompleted, and a later gather() raised another error.
    def items() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            raise RuntimeError("the input's finally raised")

    async def work(i: int) -> int:
        await asyncio.sleep(0)
        if i == 1:
            raise ValueError("member 1 failed")
        return i

    state = ExecutionState(watchdog=None)
    with pytest.raises(Exception) as raised:
        async with state.parallel(max_workers=2, error_strategy=strategy) as p:
            p.map(work, items())
    assert p.status.value == "failed"
    assert p.group_id not in state.open_groups
    if strategy == "fail_fast":  # the strategy's error, the close's kept as its context
        assert isinstance(raised.value, ValueError)
        assert isinstance(raised.value.__context__, RuntimeError)
    else:  # FAIL_SLOW raises nothing of its own: the close's error is the group's
        assert isinstance(raised.value, RuntimeError)
    with pytest.raises(type(raised.value)):
        await p.gather()  # the same error again


async def test_no_item_runs_once_the_group_stopped_during_its_read() -> None:
    # An input swallowed the cancellation of its read and gave an item anyway: it ran as a
    # member after p.cancel().
    reading = asyncio.Event()
    ran: list[int] = []

    async def items() -> AsyncIterator[int]:
        for i in range(10):
            try:
                reading.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass  # (misbehaving: it goes on)
            yield i

    async def work(i: int) -> int:
        ran.append(i)
        return i

    state = ExecutionState(watchdog=None)
    async with state.parallel(max_workers=1) as p:
        p.map(work, items())
        await reading.wait()
        p.cancel()
    assert ran == []
    assert await p.gather() == []


@pytest.mark.parametrize("read", ["gather", "stream"])
async def test_a_stopped_groups_input_is_closed_however_it_is_read(read: str) -> None:
    # A quorum stopped the group, then a stream read it to its end after every worker had
    # gone: the input was never closed (only the join of running workers closed it), and
    # what its close raised was lost. Read with gather(), it was.
    closed: list[bool] = []
    ended: list[GroupCompleted] = []
    bus = EventBus()
    bus.subscribe(ended.append, kinds=[GroupCompleted])
    state = ExecutionState(event_bus=bus)
    never = asyncio.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            closed.append(True)
            raise OSError("closing the input failed")

    async def member(i: int) -> int:
        if i:
            await never.wait()
        return i

    with pytest.raises(OSError, match="closing the input failed"):
        async with state.parallel(max_workers=3, quorum=1) as p:
            p.map(member, items())
            if read == "gather":
                await p.gather()
            else:
                indexes = [r.index async for r in p.stream()]
                assert indexes[:1] == [0]  # (then the cancelled ones)
    assert closed == [True]
    await bus.drain()
    assert ended[-1].input_error == "OSError: closing the input failed"
