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


class _BrokenMessage(Exception):
    def __str__(self) -> str:
        return f"code {self.detail}"  # type: ignore[attr-defined]  # (never set: a user bug)


async def test_an_exception_whose_str_fails_is_still_a_failed_result() -> None:
    # str(exc) raised inside the bookkeeping: an event call raised AttributeError instead of
    # returning its result, and a group's worker died with it (the group hung).
    from pydantic import BaseModel

    from rh_agents.core.actors import Tool
    from rh_agents.core.events import ExecutionEvent

    class Empty(BaseModel):
        pass

    async def handler(input: Empty, context: str, state: ExecutionState) -> None:
        raise _BrokenMessage()

    async def member() -> None:
        raise _BrokenMessage()

    state = ExecutionState(watchdog=None)
    event = ExecutionEvent(actor=Tool(name="api", input_model=Empty, handler=handler))
    called = await event(Empty(), "", state)
    assert called.status is ResultStatus.FAILED
    assert called.error == "_BrokenMessage: <str() raised AttributeError>"
    async with state.parallel(name="docs") as p:
        p.add(member)
    (result,) = await asyncio.wait_for(p.gather(), 10)
    assert result.status is ResultStatus.FAILED and isinstance(result.exception, _BrokenMessage)
    assert state.internal_errors == []
