"""A group's options: one frozen ``GroupOptions``, checked when it is made.

A bad option fails at ``state.parallel(...)``, with its name, before anything runs::

    options = GroupOptions.of(max_workers=5, error_strategy="fail_fast", timeout=30)
    options.error_strategy          # ErrorStrategy.FAIL_FAST
    options.limit                   # 5 (an adaptive limit's starting value)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rh_agents.core import hooks
from rh_agents.core.parallel.strategy import BatchMode, ErrorStrategy
from rh_agents.errors import ConfigurationError
from rh_agents.resilience.adaptive import AdaptiveLimit, as_adaptive
from rh_agents.resilience.breaker import CircuitBreaker
from rh_agents.resilience.checks import check_policy, is_seconds
from rh_agents.resilience.rate_limit import RateLimit
from rh_agents.resilience.retry import RetryPolicy

__all__ = [
    "GroupOptions",
    "check_group_options",
    "parse_batch_mode",
    "parse_strategy",
]


@dataclass(frozen=True, slots=True)
class GroupOptions:
    """Every option of one group, checked and normalised (see ``ExecutionState.parallel``).

    ``adaptive`` is the ``AdaptiveLimit`` of ``max_workers="auto"`` or of an instance, and
    ``limit`` the fixed limit (an adaptive one's starting value). ``retain_results=False``
    is for streams that keep nothing (``parallel_map``): read them with ``stream()`` inside
    the block; leaving it drops the results no reader took. ``batch_mode`` is what
    ``execute_parallel`` returns (see ``BatchMode``). ``executor`` is where the members run:
    ``None`` for the event loop, else the ``MemberExecutor`` that ``executor=`` named
    (``"processes"``, a ``RayExecutor``; see ``rh_agents.executors``).
    """

    limit: int = 5
    adaptive: AdaptiveLimit | None = None
    name: str | None = None
    error_strategy: ErrorStrategy = ErrorStrategy.FAIL_SLOW
    timeout: float | None = None
    member_timeout: float | None = None
    failure_threshold: float | None = None
    quorum: int | None = None
    raise_exception_group: bool = False
    retry: RetryPolicy | None = None
    circuit_breaker: CircuitBreaker | None = None
    rate_limit: RateLimit | None = None
    retain_results: bool = True
    batch_mode: BatchMode = BatchMode.GATHER
    executor: hooks.MemberExecutor | None = None

    @classmethod
    def of(
        cls,
        *,
        max_workers: int | str | AdaptiveLimit = 5,
        name: str | None = None,
        error_strategy: ErrorStrategy | str = ErrorStrategy.FAIL_SLOW,
        timeout: float | None = None,
        member_timeout: float | None = None,
        failure_threshold: float | None = None,
        quorum: int | None = None,
        raise_exception_group: bool = False,
        retry: RetryPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        retain_results: bool = True,
        batch_mode: BatchMode | str = BatchMode.GATHER,
        executor: Any = None,
    ) -> GroupOptions:
        """The options, checked; a ``ConfigurationError`` names the first bad one."""
        plain = (
            type(max_workers) is int
            and (name is None or type(name) is str)
            and error_strategy is ErrorStrategy.FAIL_SLOW
            and timeout is None
            and member_timeout is None
            and failure_threshold is None
            and quorum is None
            and raise_exception_group is False
            and retry is None
            and circuit_breaker is None
            and rate_limit is None
            and retain_results is True
            and batch_mode is BatchMode.GATHER
            and executor is None
        )
        if plain:
            # A group made in a loop (state.parallel(max_workers=5)) checks its options once:
            # the options are frozen, so one instance serves every group that asks for them.
            cached = _PLAIN.get((max_workers, name))
            if cached is not None:
                return cached
        adaptive = as_adaptive(max_workers)
        limit, strategy = check_group_options(
            max_workers=adaptive.current if adaptive is not None else max_workers,
            name=name,
            error_strategy=error_strategy,
            timeout=timeout,
            member_timeout=member_timeout,
            failure_threshold=failure_threshold,
            quorum=quorum,
        )
        for label, flag in (
            ("raise_exception_group", raise_exception_group),
            ("retain_results", retain_results),
        ):
            if type(flag) is not bool:  # "no" would be true: say so rather than guess
                raise ConfigurationError(f"{label} must be True or False, got {flag!r}")
        if retry is not None or circuit_breaker is not None or rate_limit is not None:
            check_policy("retry", retry, RetryPolicy)
            check_policy("circuit_breaker", circuit_breaker, CircuitBreaker)
            check_policy("rate_limit", rate_limit, RateLimit)
        if type(batch_mode) is not BatchMode:
            batch_mode = parse_batch_mode(batch_mode)
        if executor is not None:
            executor = hooks.resolve_executor(executor)
        options = cls(
            limit,
            adaptive,
            name,
            strategy,
            timeout,
            member_timeout,
            failure_threshold,
            quorum,
            raise_exception_group,
            retry,
            circuit_breaker,
            rate_limit,
            retain_results,
            batch_mode,
            executor,
        )
        if plain and len(_PLAIN) < _PLAIN_KEPT:
            _PLAIN[(max_workers, name)] = options
        return options

    @property
    def has_policies(self) -> bool:
        """Whether a retry, breaker, rate limit or adaptive limit is set on the group, or
        an executor: then every member goes through the state's call runner (none runs
        plainly on the loop)."""
        return not (
            self.adaptive is None
            and self.retry is None
            and self.circuit_breaker is None
            and self.rate_limit is None
            and self.executor is None
        )


def parse_batch_mode(value: BatchMode | str) -> BatchMode:
    """A ``BatchMode`` from itself, its value (``"stream"``) or its name (``"STREAM"``)."""
    try:
        return BatchMode(value)
    except ValueError:
        if isinstance(value, str) and value.upper() in BatchMode.__members__:
            return BatchMode[value.upper()]
    choices = ", ".join(mode.name for mode in BatchMode)
    raise ConfigurationError(f"unknown batch_mode {value!r}; use one of {choices}")


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
        if value is not None and not is_seconds(value):
            raise ConfigurationError(f"{label} must be a number of seconds > 0, got {value!r:.60}")
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
    if name is not None and (
        not isinstance(name, str)
        or not name
        or any(c in name for c in ":[]#")
        or name.splitlines() != [name]  # any line break (\n, \r, U+2028...)
    ):
        raise ConfigurationError(
            f"group name {name!r} must be a non-empty str free of ':', '[', ']', '#' and "
            "line breaks (they would break the addresses of its members)"
        )
    return max_workers, strategy


# The checked options of plain groups (a limit and maybe a name, nothing else), by
# (max_workers, name); bounded, so groups named per item do not grow it without end.
_PLAIN: dict[tuple[Any, str | None], GroupOptions] = {}
_PLAIN_KEPT = 256
