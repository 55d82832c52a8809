"""``RateLimit``: ``calls`` per ``period`` seconds on average (bursts of up to ``calls``),
per group or shared by key.

Built on ``aiolimiter`` (a leaky bucket): a burst of up to ``calls`` may start at once, then
calls start at ``calls / period`` per second on average. The limit is taken before every
attempt of a call, retries included::

    async with state.parallel(max_workers=20, rate_limit=RateLimit(60, 60)) as p:
        ...                                       # this group: 60 calls a minute
    shared = RateLimit(500, 60, key="openai")     # every group naming "openai" shares it
    state = ExecutionState(rate_limit=shared)     # ... or the whole run

Without ``key`` each group gets its own bucket; with a key, every group and the state share
one bucket (in ``state.rate_limiters``). The bucket follows the event loop's time, so it is
not driven by an injected clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from rh_agents.errors import ConfigurationError
from rh_agents.resilience.checks import check_number

__all__ = ["RateLimit", "RateLimiterRegistry"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``calls`` per ``period`` seconds on average, after a first burst of up to ``calls``
    (``RateLimit(1, 0.2)`` spaces calls evenly); ``key`` shares one bucket between users."""

    calls: float
    period: float = 1.0
    key: str | None = None

    def __post_init__(self) -> None:
        for label in ("calls", "period"):
            check_number(f"RateLimit.{label}", getattr(self, label), minimum=0, inclusive=False)
        if not (
            math.isfinite(self.calls / self.period) and math.isfinite(self.period / self.calls)
        ):
            # Each finite, yet their ratio is not (RateLimit(1e-320)): the bucket would divide
            # by it.
            raise ConfigurationError(
                f"RateLimit(calls={self.calls!r}, period={self.period!r}) is no rate a bucket can "
                "keep: choose calls and period nearer each other"
            )
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConfigurationError(f"RateLimit.key must be a non-empty str, got {self.key!r}")


class RateLimiterRegistry:
    """The buckets of one ``ExecutionState`` (``state.rate_limiters``), by key or scope."""

    __slots__ = ("_limiters",)

    def __init__(self) -> None:
        self._limiters: dict[str, AsyncLimiter] = {}

    def limiter(self, limit: RateLimit, scope: str) -> AsyncLimiter:
        """The bucket for ``limit``: shared by its key, else private to ``scope``."""
        name = f"key:{limit.key}" if limit.key is not None else f"scope:{scope}"
        found = self._limiters.get(name)
        if found is None:
            calls, period = limit.calls, limit.period
            if calls < 1:
                # Fewer than one call per period (RateLimit(0.5, 1.0)): the same rate as one
                # call per period / calls; a bucket smaller than one call would refuse them all.
                calls, period = 1, period / calls
            found = self._limiters[name] = AsyncLimiter(calls, period)
        return found

    def __len__(self) -> int:
        return len(self._limiters)
