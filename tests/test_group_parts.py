"""The parts a group is composed of, each the one owner of its state: the worker pool, the
tally of results, the waits of readers. Each says what it holds through ``statistics()``."""

from __future__ import annotations

import asyncio
from dataclasses import FrozenInstanceError

import pytest

from parallel_support import until
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel.member import Member
from rh_agents.core.parallel.readers import ReaderStatistics, ReaderWaits
from rh_agents.core.parallel.scheduler import PoolStatistics
from rh_agents.core.parallel.tally import ResultTally, TallyStatistics
from rh_agents.core.results import ExecutionResult, ResultStatus

pytestmark = pytest.mark.timeout(10)


def _result(status: ResultStatus) -> ExecutionResult[int]:
    return ExecutionResult(ok=status is ResultStatus.COMPLETED, result=1, status=status)


def _landed(tally: ResultTally, status: ResultStatus) -> ExecutionResult[int]:
    member = Member(tally.expect(), None)
    result = _result(status)
    tally.land(member, result)
    return result


def test_a_tally_counts_each_result_by_status_and_keeps_them_by_index() -> None:
    tally = ResultTally(retain=True)
    waiting = tally.expect()  # numbered, its result still to come
    landed = [_landed(tally, status) for status in ResultStatus]  # one of each
    assert tally.statistics() == TallyStatistics(
        total=len(landed) + 1,
        done=len(landed),
        succeeded=1,
        failed=1,
        cancelled=1,
        timed_out=1,
        skipped=1,
        unread=0,
    )
    assert tally.results[waiting] is None
    assert tally.results[1:] == landed
    assert tally.completion_order == list(range(1, len(landed) + 1))
    assert tally.failures == 2
    timed_out = landed[list(ResultStatus).index(ResultStatus.TIMED_OUT)]
    assert tally.last_failure is timed_out  # the last failure landed


def test_a_tally_that_keeps_nothing_queues_results_for_the_reader_only() -> None:
    tally = ResultTally(retain=False)
    first = _landed(tally, ResultStatus.COMPLETED)
    _landed(tally, ResultStatus.FAILED)
    assert tally.results == [] and tally.completion_order == []
    assert tally.statistics().unread == 2
    assert tally.unretained.popleft() is first
    assert tally.statistics().unread == 1


def test_statistics_are_frozen_snapshots() -> None:
    tally = ResultTally(retain=True)
    before = tally.statistics()
    _landed(tally, ResultStatus.COMPLETED)
    assert before.done == 0 and tally.statistics().done == 1
    with pytest.raises(FrozenInstanceError):
        before.done = 5  # type: ignore[misc]


async def test_reader_waits_wake_each_kind_of_waiter() -> None:
    waits = ReaderWaits()
    assert waits.statistics() == ReaderStatistics(0, False, False)
    end_a, end_b = waits.end(), waits.end()
    progress = waits.next_result()
    assert waits.next_result() is progress  # shared by every stream reader
    room = waits.room()
    assert waits.statistics() == ReaderStatistics(2, True, True)

    waits.result_landed()
    assert progress.done() and waits.progress is None
    assert waits.next_result() is not progress  # a new wait never sees an old wake
    waits.result_taken()
    assert room.done() and waits.room() is not room
    end_b.cancel()  # one waiter gave up: the other is still woken
    waits.group_ended()
    assert end_a.done() and not end_a.cancelled()
    assert waits.statistics().waiting_for_end == 0


async def test_the_pool_reports_running_queued_and_slots_while_the_group_runs() -> None:
    state = ExecutionState()
    gate = asyncio.Event()

    async def blocked(i: int) -> int:
        await gate.wait()
        return i

    async with asyncio.timeout(5), state.parallel(max_workers=2) as p:
        for i in range(5):
            p.add(blocked(i))
        await until(lambda: p._pool.statistics().running == 2)
        running = p._pool.statistics()
        assert running == PoolStatistics(
            limit=2,
            slots_in_use=2,
            waiting_for_slot=0,
            workers=2,
            running=2,
            queued=3,
            high_water=2,
            cache_hits_queued=0,
        )
        assert p._tally.statistics().done == 0
        gate.set()
        results = await p.gather()
    assert [r.result for r in results] == [0, 1, 2, 3, 4]
    after = p._pool.statistics()
    assert (after.slots_in_use, after.workers, after.running, after.queued) == (0, 0, 0, 0)
    assert after.high_water == 2
    assert p._tally.statistics().succeeded == 5
    assert p._readers.statistics() == ReaderStatistics(0, False, False)


async def test_a_stream_reader_waits_in_the_reader_waits_and_is_woken_per_result() -> None:
    state = ExecutionState()
    gates = [asyncio.Event() for _ in range(2)]

    async def member(i: int) -> int:
        await gates[i].wait()
        return i

    async with asyncio.timeout(5), state.parallel(max_workers=2) as p:
        p.add(member(0))
        p.add(member(1))
        stream = p.stream()
        read = asyncio.ensure_future(anext(stream))
        await until(lambda: p._readers.statistics().waiting_for_result)
        gates[1].set()
        assert (await read).result == 1
        gates[0].set()
        assert [r.result async for r in stream] == [0]
