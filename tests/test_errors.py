"""Error types that carry data: messages, partial results, ExceptionGroup behaviour."""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import pickle
import pkgutil
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

import rh_agents
from rh_agents import errors
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
    RateLimitedError,
    RemoteExecutionError,
    RHAgentsError,
    RunLockedError,
    UnknownRunError,
)
from rh_agents.ui.store import StoreProblem

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


# --- pickling and copying -------------------------------------------------------------------


def _public_exceptions() -> list[type[BaseException]]:
    """Every exception class of rh_agents.errors, and every other one a module exports."""
    found = {
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    for info in pkgutil.walk_packages(rh_agents.__path__, "rh_agents."):
        if info.name.endswith("__main__"):
            continue  # runs the command line when imported
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, BaseException):
                found.add(value)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


EXCEPTIONS = _public_exceptions()

# The arguments of the classes that take more than a message (a class missing here that needs
# them fails below at its construction: add it).
SAMPLE_ARGS: dict[type[BaseException], tuple[tuple[Any, ...], dict[str, Any]]] = {
    MemberFailedError: (("member 1 failed", RESULTS[1]), {}),
    ParallelTimeoutError: (("the group ran out of time", RESULTS), {}),
    FailureThresholdError: (("2 of 4 failed", RESULTS), {}),
    GroupFailedError: (("2 members failed", [ValueError("a"), KeyError("b")], RESULTS), {}),
    RemoteExecutionError: (("the worker died", "pkg.Boom", "Traceback: ..."), {}),
    CircuitOpenError: (("svc", 2.5), {}),
    RateLimitedError: (("slow down", 0.8, 503), {}),
    RunLockedError: (("run 'r' is locked",), {"run_id": "r", "pid": 12, "host": "h", "since": 1.0}),
    StoreProblem: (("no such run", 404), {}),
}

TRIPS: dict[str, Callable[[Any], Any]] = {
    "pickle": lambda value: pickle.loads(pickle.dumps(value)),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


def _same(a: Any, b: Any) -> bool:
    """Equal; exceptions and results (which compare by identity) field by field."""
    if isinstance(a, ExecutionResult):
        return type(a) is type(b) and all(
            _same(getattr(a, field.name), getattr(b, field.name)) for field in fields(a)
        )
    if isinstance(a, BaseException):
        return (
            type(a) is type(b)
            and str(a) == str(b)
            and _same(a.args, b.args)
            and _same(vars(a), vars(b))
        )
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return bool(a == b)


def test_the_round_trip_covers_the_errors_that_carry_data() -> None:
    assert set(SAMPLE_ARGS) <= set(EXCEPTIONS)
    assert RHAgentsError in EXCEPTIONS and len(EXCEPTIONS) > len(errors.__all__)


@pytest.mark.parametrize("trip", list(TRIPS))
@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda cls: cls.__name__)
def test_every_public_error_pickles_and_copies_as_itself(
    cls: type[BaseException], trip: str
) -> None:
    # executor="processes" brings a member's error home pickled: its message and its data
    # (results, key, retry_after...) must come back as they were.
    args, kwargs = SAMPLE_ARGS.get(cls, (("what went wrong; what to do",), {}))
    error = cls(*args, **kwargs)
    error.remote_traceback = "Traceback: over there"  # type: ignore[attr-defined]
    error.add_note("a note")
    again = TRIPS[trip](error)
    assert again is not error
    assert type(again) is cls
    assert str(again) == str(error)
    assert _same(again, error), f"{vars(again)} != {vars(error)}"


def test_an_error_holding_a_failed_threshold_pickles_inside_a_result() -> None:
    # A member whose nested group reached its threshold: its result holds the error, which
    # holds the results of the nested group.
    inner = FailureThresholdError("1 of 1 failed", RESULTS)
    outer = [ExecutionResult.failure(inner, index=0), ExecutionResult(ok=True, result=1)]
    again = pickle.loads(pickle.dumps(outer))
    assert isinstance(again[0].exception, FailureThresholdError)
    assert _same(again, outer)
