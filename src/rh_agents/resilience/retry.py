"""``RetryPolicy``: how many attempts, how long to wait between them, and what is worth it.

A policy can sit on an event, an actor, a group or the state; the nearest one wins::

    policy = RetryPolicy(max_attempts=4, initial_delay=0.5, multiplier=2, max_delay=10,
                         jitter=0.1, deadline=30, retry_on=(TimeoutError, RateLimitedError))
    event = ExecutionEvent(actor=summarize, retry=policy)
    async with state.parallel(max_workers=5, retry=RetryPolicy(max_attempts=3)) as p:
        p.add(lambda: fetch(url))                 # a callable member is re-called

Waits are exponential (``initial_delay * multiplier ** (attempt - 1)``, at most ``max_delay``)
plus a random jitter of up to ``jitter`` seconds, computed with tenacity's wait primitives. A
``Retry-After`` hint (an exception's ``retry_after`` or a response header) lengthens the wait
to what the service asked for. ``deadline`` bounds the whole call: no attempt starts after it
(a wait that would end after it is not made, and an attempt that could only start late, after
a wait for a rate-limit token or a worker slot, is not made either).

Each call gets its own ``RetryAttempts`` (``policy.start(clock)``), so concurrent calls never
share retry state; the policy itself is immutable and can be shared freely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import tenacity

from rh_agents.errors import (
    ActorDefinitionError,
    ConfigurationError,
    InvalidMemberError,
    RetryPolicyError,
)
from rh_agents.resilience.checks import check_exception_types, check_number, check_predicate
from rh_agents.resilience.signals import retry_after_of

__all__ = ["NEVER_RETRIED", "RetryAttempts", "RetryPolicy", "TimeSource"]


class TimeSource(Protocol):
    """What a policy reads of time: a monotonic ``now()`` (``rh_agents.core.clock.Clock`` has
    it). Policies sit below core, so they name only what they use."""

    def now(self) -> float: ...


#: Errors that describe a bug or bad input: running again cannot fix them.
NEVER_RETRIED: tuple[type[BaseException], ...] = (
    ConfigurationError,
    ActorDefinitionError,
    InvalidMemberError,
    RetryPolicyError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """An immutable retry policy; see the module docstring.

    - ``max_attempts``: attempts in all, the first one included (1 = no retry).
    - ``initial_delay``, ``multiplier``, ``max_delay``: the exponential backoff, in seconds.
    - ``jitter``: up to this many random seconds added to each wait (spreads retries out).
    - ``deadline``: seconds from the first attempt after which no new attempt starts.
    - ``retry_on``: exception types worth another attempt (default: every ``Exception``
      except rh_agents' configuration errors, which no retry can fix).
    - ``retry_if_result``: a predicate on a successful value; true means "try again" (the
      last value is returned when attempts run out). A plain function: it is not awaited.
    - ``respect_retry_after``: wait at least what a ``Retry-After`` hint asks.
    """

    max_attempts: int = 3
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    deadline: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_if_result: Callable[[Any], bool] | None = field(default=None, compare=False)
    respect_retry_after: bool = True

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be an int >= 1, got {attempts!r}"
            )
        check_number("RetryPolicy.initial_delay", self.initial_delay, minimum=0)
        check_number("RetryPolicy.multiplier", self.multiplier, minimum=1)
        check_number("RetryPolicy.max_delay", self.max_delay, minimum=0)
        check_number("RetryPolicy.jitter", self.jitter, minimum=0)
        if self.deadline is not None:
            check_number(
                "RetryPolicy.deadline",
                self.deadline,
                minimum=0,
                inclusive=False,
                hint="; pass None for no deadline",
            )
        object.__setattr__(
            self, "retry_on", check_exception_types("RetryPolicy.retry_on", self.retry_on)
        )
        if self.retry_if_result is not None:
            check_predicate("RetryPolicy.retry_if_result", self.retry_if_result)
        if not isinstance(self.respect_retry_after, bool):
            # ("no" is truthy: it would quietly mean yes.)
            raise ConfigurationError(
                "RetryPolicy.respect_retry_after must be True or False, "
                f"got {self.respect_retry_after!r}"
            )

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt under this policy."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, NEVER_RETRIED)

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based), before any hint."""
        return RetryAttempts(self, None).backoff(attempt)

    def start(self, clock: TimeSource | None) -> RetryAttempts:
        """Fresh retry state for one call (never share it between calls)."""
        return RetryAttempts(self, clock)


class RetryAttempts:
    """The retry state of one call: which attempt this is, when it started, the next wait."""

    __slots__ = ("_call_state", "_clock", "_started", "_stop", "_wait", "attempt", "policy")

    def __init__(self, policy: RetryPolicy, clock: TimeSource | None) -> None:
        self.policy = policy
        self.attempt = 0
        self._clock = clock
        self._started = clock.now() if clock is not None else 0.0
        # tenacity's primitives: exponential backoff capped at max_delay, plus random jitter
        # (on top of the cap: callers that all reached it must not retry at the same instant).
        # No exponential part without an initial delay: 0 * multiplier ** n is 0 at every
        # attempt, but tenacity's wait_exponential answers its max (max_delay) once the power
        # overflows a float (2.0 ** 1024, from attempt 1025 at the default multiplier).
        exponential: tenacity.wait.wait_base = (
            tenacity.wait_exponential(
                multiplier=policy.initial_delay, exp_base=policy.multiplier, max=policy.max_delay
            )
            if policy.initial_delay > 0
            else tenacity.wait_none()
        )
        self._wait = exponential + tenacity.wait_random(0, policy.jitter)
        self._stop = tenacity.stop_after_attempt(policy.max_attempts)
        self._call_state = tenacity.RetryCallState(
            tenacity.AsyncRetrying(stop=self._stop, wait=self._wait), None, (), {}
        )

    def begin(self) -> int:
        """Count a new attempt; returns its number (1-based)."""
        self.attempt += 1
        return self.attempt

    def backoff(self, attempt: int) -> float:
        state = self._call_state
        state.attempt_number = attempt
        return float(self._wait(state))  # (the exponential part is capped at max_delay)

    def next_delay(self, exc: BaseException | None) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when there is none.

        ``exc`` is the failure of the attempt just made (``None`` when a result predicate
        asked for another attempt).
        """
        policy = self.policy
        state = self._call_state
        state.attempt_number = self.attempt
        if self._stop(state):
            return None
        if exc is not None and not policy.retries(exc):
            return None
        delay = self.backoff(self.attempt)
        if exc is not None and policy.respect_retry_after:
            hint = retry_after_of(exc)
            if hint is not None:
                delay = max(delay, hint)
        if policy.deadline is not None and self._clock is not None:
            elapsed = self._clock.now() - self._started
            if elapsed + delay > policy.deadline:
                return None  # the next attempt could only start after the deadline
        return delay

    def past_deadline(self) -> bool:
        """Whether the deadline has passed, so that no attempt may start now.

        ``next_delay`` only knows the backoff: the next attempt may still start later than it
        planned (a wait for a rate-limit token, or for the worker slot the backoff lent), so
        the caller asks again right before the attempt starts.
        """
        deadline = self.policy.deadline
        if deadline is None or self._clock is None:
            return False
        return self._clock.now() - self._started > deadline
