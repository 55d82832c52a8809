"""ExecutionResult: ``ok`` is true only for COMPLETED, however the result was made."""

from __future__ import annotations

import asyncio

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import MemberFailedError


def test_a_result_made_with_ok_false_is_a_failure() -> None:
    assert ExecutionResult(ok=False, error="nope").status is ResultStatus.FAILED
    assert ExecutionResult(ok=False, status=ResultStatus.SKIPPED).status is ResultStatus.SKIPPED
    assert ExecutionResult(ok=True, result=1).status is ResultStatus.COMPLETED


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_member_returning_a_failed_result_stops_a_fail_fast_group() -> None:
    state = ExecutionState()
    slow_ran_to_the_end = False

    async def refuses() -> ExecutionResult[None]:
        return ExecutionResult(ok=False, error="nope")

    async def slow() -> int:
        nonlocal slow_ran_to_the_end
        await asyncio.sleep(5)
        slow_ran_to_the_end = True
        return 1

    with pytest.raises(MemberFailedError, match="nope"):
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(refuses)
            p.add(slow)
    assert [r.status for r in p._tally.results if r] == [
        ResultStatus.FAILED,
        ResultStatus.CANCELLED,
    ]
    assert not slow_ran_to_the_end
