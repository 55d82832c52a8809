"""Resilience policies: retries, circuit breakers, rate limits and adaptive concurrency.

Each policy can be set on an event, an actor, a group or the state; the nearest wins::

    from rh_agents.resilience import AdaptiveLimit, CircuitBreaker, RateLimit, RetryPolicy

    state = ExecutionState(retry=RetryPolicy(max_attempts=3),
                           circuit_breaker=CircuitBreaker(failure_threshold=5, cooldown=30))
    async with state.parallel(max_workers=AdaptiveLimit(2, 64),
                              rate_limit=RateLimit(100, 60, key="openai")) as p:
        ...
"""

from rh_agents.resilience.adaptive import AdaptiveLimit
from rh_agents.resilience.breaker import BreakerRegistry, Circuit, CircuitBreaker, CircuitState
from rh_agents.resilience.rate_limit import RateLimit, RateLimiterRegistry
from rh_agents.resilience.retry import RetryPolicy
from rh_agents.resilience.signals import is_overload, retry_after_of

__all__ = [
    "AdaptiveLimit",
    "BreakerRegistry",
    "Circuit",
    "CircuitBreaker",
    "CircuitState",
    "RateLimit",
    "RateLimiterRegistry",
    "RetryPolicy",
    "is_overload",
    "retry_after_of",
]
