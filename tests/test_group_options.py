"""A group's options: one frozen object, checked (policies included) before anything runs."""

from __future__ import annotations

import dataclasses
import gc

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import ErrorStrategy, ParallelExecutionManager, RetryPolicy
from rh_agents.core.parallel.options import GroupOptions
from rh_agents.errors import ConfigurationError, UnusedGroupWarning
from rh_agents.resilience import AdaptiveLimit


def test_options_are_normalised_and_frozen() -> None:
    options = GroupOptions.of(max_workers=3, error_strategy="fail_fast", timeout=2)
    assert (options.limit, options.error_strategy, options.timeout) == (
        3,
        ErrorStrategy.FAIL_FAST,
        2,
    )
    assert not options.has_policies
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.limit = 4  # type: ignore[misc]
    auto = GroupOptions.of(max_workers="auto")
    assert isinstance(auto.adaptive, AdaptiveLimit) and auto.limit == auto.adaptive.current
    assert auto.has_policies


@pytest.mark.parametrize(
    ("option", "value"),
    [("retry", 3), ("circuit_breaker", "svc"), ("rate_limit", RetryPolicy(max_attempts=2))],
)
def test_a_policy_of_the_wrong_type_is_refused_when_the_group_is_made(
    option: str, value: object
) -> None:
    state = ExecutionState()
    with pytest.raises(ConfigurationError, match=f"{option} must be a"):
        state.parallel(**{option: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=f"{option} must be a"):
        ExecutionState(**{option: value})  # type: ignore[arg-type]


def test_a_manager_takes_its_options_or_its_settings_not_both() -> None:
    state = ExecutionState()
    options = GroupOptions.of(max_workers=2, name="docs")
    manager: ParallelExecutionManager[object] = ParallelExecutionManager(state, options)
    assert manager.options is options and manager.max_workers == 2
    by_settings: ParallelExecutionManager[object] = ParallelExecutionManager(state, max_workers=4)
    assert by_settings.options == GroupOptions.of(max_workers=4)
    with pytest.raises(ConfigurationError, match="not both"):
        ParallelExecutionManager(state, options, max_workers=3)
    # Neither ever ran: dropped, each says so.
    with pytest.warns(UnusedGroupWarning, match="was made and never run"):
        del manager, by_settings
        gc.collect()
