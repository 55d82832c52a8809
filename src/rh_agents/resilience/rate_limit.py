"""``RateLimit``: ``calls`` per ``period`` seconds on average (bursts of up to ``calls``),
per group or shared by key.

Built on ``aiolimiter`` (a leaky bucket): a burst of up to ``calls`` may start at once, then
calls start at ``calls / period`` per second on average. The limit is taken before every
attempt of a call, retries included::

    async with state.parallel(max_workers=20, rate_limit=RateLimit(60, 60)) as p:
        ...                                       # this group: 60 calls a minute
    shared = RateLimit(500, 60, key="openai")     # every group naming "openai" shares it
    state = ExecutionState(rate_limit=shared)     # ... or the whole run

Without ``key`` each group gets its own bucket (dropped when the group ends); with a key,
every group and the state share one bucket (in ``state.rate_limiters``). One key is one limit:
a ``RateLimit`` naming a key already given other ``calls`` or ``period`` is refused with a
``ConfigurationError`` where it is given (``ExecutionState(...)``, ``state.parallel(...)``).
The bucket follows the event loop's time, so it is not driven by an injected clock.

An ``AsyncLimiter`` belongs to the loop that first used it (aiolimiter warns, and its waiters'
futures and wake-up timer would be the old loop's, when it is used on another). A state used by
one loop after another (``asyncio.run`` twice) therefore gets a new ``AsyncLimiter`` for a key
(or for its own keyless limit) when it is first used on a new loop, and it starts with what
the old one had not yet drained (by the old loop's time): the limit holds across the change, a
second ``asyncio.run`` right after a burst does not get a second burst.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from rh_agents.errors import ConfigurationError
from rh_agents.resilience.checks import check_number

__all__ = ["STATE_SCOPE", "RateLimit", "RateLimiterRegistry"]

#: The scope of the state's own keyless rate limit (``ExecutionState(rate_limit=...)``): no
#: group id can be it (a name cannot hold "::"), so a group named "state" neither shares nor
#: drops the state's bucket. Like a keyed bucket it lasts as long as the state does.
STATE_SCOPE = "::state"


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
    """The buckets of one ``ExecutionState`` (``state.rate_limiters``), by key or scope.

    One key, one limit: the first ``RateLimit`` naming a key sets that key's ``calls`` and
    ``period`` for the state's lifetime, and a different one naming the same key is refused
    (``claim``): with first-made-wins, a group's larger limit would lift the state's. A
    keyless limit's bucket belongs to its scope (a group) and is dropped when the group ends
    (``drop_scope``); keyed buckets, and the state's own keyless one (``STATE_SCOPE``), stay
    for the state's lifetime. A bucket is used on one event loop: such a lasting bucket used on
    a new loop gets a new ``AsyncLimiter`` there, carrying over the level the old one had left
    (see the module's docstring).
    """

    __slots__ = ("_claimed", "_limiters")

    def __init__(self) -> None:
        # Each bucket with the loop it is used on.
        self._limiters: dict[str, tuple[asyncio.AbstractEventLoop, AsyncLimiter]] = {}
        self._claimed: dict[str, RateLimit] = {}  # the limit each key was first given

    def check(self, limit: RateLimit, where: str) -> None:
        """A ``ConfigurationError`` if ``limit`` names a key claimed with other settings.

        ``where`` names who gives ``limit`` (``"state.parallel(rate_limit=...)"``), for the
        message.
        """
        key = limit.key
        if key is None:
            return
        claimed = self._claimed.get(key)
        if claimed is not None and (claimed.calls, claimed.period) != (limit.calls, limit.period):
            raise ConfigurationError(
                f"rate limit key {key!r} already has RateLimit({claimed.calls!r}, "
                f"{claimed.period!r}); {where} gives it RateLimit({limit.calls!r}, "
                f"{limit.period!r}). One key is one bucket with one limit: give every "
                f"RateLimit(key={key!r}) the same calls and period, or use another key (a "
                "group's own narrower limit, keyless or keyed apart, adds up with the state's)"
            )

    def claim(self, limit: RateLimit, where: str) -> None:
        """``check``, then fix ``limit``'s settings for its key (if it has one)."""
        self.check(limit, where)
        if limit.key is not None:
            self._claimed.setdefault(limit.key, limit)

    def limiter(self, limit: RateLimit, scope: str) -> AsyncLimiter:
        """The bucket for ``limit`` on the running loop: shared by its key, else private to
        ``scope``. Called on the loop that takes the tokens."""
        loop = asyncio.get_running_loop()
        if limit.key is not None:
            name = f"key:{limit.key}"
            if limit is not self._claimed.get(limit.key):
                self.claim(limit, f"a call's rate limit (scope {scope!r})")
        else:
            name = f"scope:{scope}"
        found = self._limiters.get(name)
        if found is not None and found[0] is loop:
            return found[1]
        calls, period = limit.calls, limit.period
        if calls < 1:
            # Fewer than one call per period (RateLimit(0.5, 1.0)): the same rate as one
            # call per period / calls; a bucket smaller than one call would refuse them all.
            calls, period = 1, period / calls
        made = AsyncLimiter(calls, period)
        if found is not None and (limit.key is not None or scope == STATE_SCOPE):
            # The key (or the state's own keyless limit, which lasts as long as the state) was
            # used on another loop (the state's previous asyncio.run). A group's bucket starts
            # afresh: a group runs on one loop, so this is another group.
            _carry_level(found[0], found[1], loop, made)
        self._limiters[name] = (loop, made)
        return made

    def drop_scope(self, scope: str) -> None:
        """Forget the private bucket of ``scope`` (its group ended; nothing takes from it
        again). Buckets shared by key stay: other groups and the state use them."""
        self._limiters.pop(f"scope:{scope}", None)

    def __len__(self) -> int:
        return len(self._limiters)


def _carry_level(
    old_loop: asyncio.AbstractEventLoop,
    old: AsyncLimiter,
    loop: asyncio.AbstractEventLoop,
    new: AsyncLimiter,
) -> None:
    """Start ``new`` (on ``loop``) with the level ``old`` (on ``old_loop``) has not drained.

    The level ``old`` had at its last check drains at the bucket's rate by ``old_loop``'s time
    (a closed loop still tells the time; one that cannot drains nothing: the safe side). Each
    loop's readings are only compared with its own, so loops on different clocks are fine.
    aiolimiter has no public way to read or set a level: its attributes are read with care,
    and a bucket whose level cannot be read leaves ``new`` full (a fresh burst).
    """
    level = getattr(old, "_level", None)
    checked = getattr(old, "_last_check", None)
    if not isinstance(level, int | float) or not isinstance(checked, int | float) or level <= 0:
        return
    try:
        elapsed = max(old_loop.time() - checked, 0.0)
    except Exception:
        elapsed = 0.0
    left = level - elapsed * (new.max_rate / new.time_period)
    if left > 0:
        new._level = min(left, float(new.max_rate))
        new._last_check = loop.time()
