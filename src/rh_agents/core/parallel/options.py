"""Checks of a group's options, so a bad one fails at ``state.parallel(...)`` with its name.

::

    limit, strategy = check_group_options(max_workers=5, error_strategy="fail_fast", ...)
"""

from __future__ import annotations

from rh_agents.core.parallel.strategy import ErrorStrategy
from rh_agents.errors import ConfigurationError

__all__ = ["check_group_options", "parse_strategy"]


def parse_strategy(value: ErrorStrategy | str) -> ErrorStrategy:
    """An ``ErrorStrategy`` from itself, its value (``"fail_fast"``) or its name."""
    try:
        return ErrorStrategy(value)
    except ValueError:
        if not isinstance(value, str):
            raise
        return ErrorStrategy[value.upper()]


def check_group_options(
    *,
    max_workers: object,
    name: str | None,
    error_strategy: ErrorStrategy | str,
    timeout: float | None,
    member_timeout: float | None,
    failure_threshold: float | None,
    quorum: int | None,
) -> tuple[int, ErrorStrategy]:
    """The group's worker limit and strategy; raises ``ConfigurationError`` naming a bad one."""
    if (
        type(max_workers) is int
        and max_workers >= 1
        and type(error_strategy) is ErrorStrategy
        and error_strategy is not ErrorStrategy.FAIL_THRESHOLD
        and timeout is None
        and member_timeout is None
        and failure_threshold is None
        and quorum is None
        and name is None
    ):
        return max_workers, error_strategy  # the defaults: nothing to check (a common case)
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigurationError(f"max_workers must be an int >= 1, got {max_workers!r}")
    try:
        strategy = parse_strategy(error_strategy)
    except (ValueError, KeyError, AttributeError):
        choices = ", ".join(sorted({s.name for s in ErrorStrategy}))
        raise ConfigurationError(
            f"unknown error_strategy {error_strategy!r}; use one of {choices}"
        ) from None
    for label, value in (("timeout", timeout), ("member_timeout", member_timeout)):
        if value is not None and (
            isinstance(value, bool) or not (isinstance(value, int | float) and value > 0)
        ):
            raise ConfigurationError(f"{label} must be a number of seconds > 0, got {value!r}")
    if strategy is ErrorStrategy.FAIL_THRESHOLD and failure_threshold is None:
        raise ConfigurationError(
            "FAIL_THRESHOLD needs failure_threshold: a count (3) or a fraction (0.25)"
        )
    if failure_threshold is not None and not (
        (
            isinstance(failure_threshold, int)
            and not isinstance(failure_threshold, bool)
            and failure_threshold >= 1
        )
        or (isinstance(failure_threshold, float) and 0 < failure_threshold <= 1)
    ):
        raise ConfigurationError(
            f"failure_threshold must be an int >= 1 or a fraction in (0, 1], "
            f"got {failure_threshold!r}"
        )
    if quorum is not None and (
        isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1
    ):
        raise ConfigurationError(f"quorum must be an int >= 1, got {quorum!r}")
    if name is not None and (not name or any(c in name for c in ":[]#\n")):
        raise ConfigurationError(
            f"group name {name!r} must be non-empty and free of ':', '[', ']', '#'"
        )
    return max_workers, strategy
