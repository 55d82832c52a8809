"""Error types that carry data: messages, partial results, ExceptionGroup behaviour."""

from __future__ import annotations

import asyncio

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import (
    CircuitOpenError,
    ConfigurationError,
    FailureThresholdError,
    GroupClosedError,
    GroupFailedError,
    MemberFailedError,
    ParallelError,
    ParallelTimeoutError,
    RHAgentsError,
    UnknownRunError,
)

RESULTS = [
    ExecutionResult(ok=True, result=1, index=0),
    ExecutionResult(ok=False, error="ValueError: bad", status=ResultStatus.FAILED, index=1),
]


def test_standard_bases_keep_working() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ParallelTimeoutError, TimeoutError)
    assert issubclass(UnknownRunError, KeyError)
    assert str(UnknownRunError("no run 'x'")) == "no run 'x'"


async def test_a_closed_group_raises_a_runtime_error_like_a_finished_task_group() -> None:
    assert issubclass(GroupClosedError, RuntimeError)

    async def member() -> int:
        return 1

    async with asyncio.TaskGroup() as tg:
        pass
    late = member()
    with pytest.raises(RuntimeError):  # asyncio's own closed group
        tg.create_task(late)
    late.close()

    async with ExecutionState().parallel() as p:
        await p.gather()
    late = member()
    with pytest.raises(RuntimeError) as info:  # the same except clause catches ours
        p.add(late)
    assert isinstance(info.value, GroupClosedError)
    assert "already gathered" in str(info.value)


def test_group_failed_error_is_an_exception_group_that_keeps_results() -> None:
    errors = [ValueError("a"), KeyError("b")]
    group = GroupFailedError("2 members failed", errors, RESULTS)
    assert isinstance(group, ExceptionGroup) and isinstance(group, ParallelError)
    assert isinstance(group, RHAgentsError)
    assert list(group.exceptions) == errors
    assert group.results == RESULTS
    values, rest = group.split(ValueError)
    assert isinstance(values, GroupFailedError) and isinstance(rest, GroupFailedError)
    assert values.results == RESULTS and rest.results == RESULTS
    with pytest.raises(GroupFailedError):
        try:
            raise group
        except* KeyError as caught:
            assert isinstance(caught, GroupFailedError)
            assert caught.results == RESULTS


def test_threshold_and_member_errors_carry_results() -> None:
    threshold = FailureThresholdError("2 of 4 failed", RESULTS)
    assert threshold.results == RESULTS and threshold.results is not RESULTS
    failed = MemberFailedError("member 1 failed", RESULTS[1])
    assert failed.result is RESULTS[1]


def test_circuit_open_error_names_the_key_and_the_wait() -> None:
    error = CircuitOpenError("openai", retry_after=2.5)
    assert error.key == "openai" and error.retry_after == 2.5
    assert "circuit 'openai' is open for about 2.5s more" in str(error)
    assert "for about" not in str(CircuitOpenError("db"))
