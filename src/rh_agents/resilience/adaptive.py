"""``AdaptiveLimit``: a worker limit that finds the provider's capacity by itself (AIMD).

::

    async with state.parallel(max_workers=AdaptiveLimit(2, 64)) as p:   # or max_workers="auto"
        for doc in docs:
            p.add(summarize(doc, "", state))

The group reads ``limit.current`` whenever it decides whether to start another member. Each
finished attempt of a member reports back:

- success: the limit grows. Below the level where the last overload happened it grows by one
  per success (it doubles every round trip, so a cut is won back quickly); above that level it
  grows by ``increase`` per round trip (one per ``current`` successes), probing gently.
- overload (a 429 or other rate-limit error, a timeout, or a latency above
  ``latency_tolerance`` times the best seen): the limit is multiplied by ``decrease`` (halved).
  Only attempts that started after the last cut (at a later clock reading), with a signal more
  than one smoothed latency after it, can cut again, so one burst of 429s (and the retries it
  causes) counts once, the way TCP reacts once per round trip.

The limit never leaves ``[min, max]``. One instance belongs to one event loop; it may be shared
by several groups, which then adapt together: each running group using it is told when it grows
(``attach``), so a group whose members did not succeed themselves starts more members as well.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from rh_agents.errors import ConfigurationError
from rh_agents.resilience.checks import check_number

__all__ = ["AdaptiveLimit", "LimitListener", "as_adaptive"]


class LimitListener(Protocol):
    """What an ``AdaptiveLimit`` tells when it grows (a parallel group: it starts more)."""

    def limit_changed(self) -> None: ...


class AdaptiveLimit:
    """Additive-increase, multiplicative-decrease concurrency; see the module docstring."""

    __slots__ = (
        "_best_latency",
        "_cut_at",
        "_latency",
        "_listeners",
        "_recover_to",
        "_value",
        "decrease",
        "decreases",
        "increase",
        "latency_tolerance",
        "max",
        "min",
        "patience",
        "peak",
    )

    def __init__(
        self,
        min: int = 1,
        max: int = 64,
        *,
        initial: int | None = None,
        increase: float = 1.0,
        decrease: float = 0.5,
        latency_tolerance: float | None = 3.0,
        patience: int = 8,
    ) -> None:
        for label, value in (("min", min), ("max", max)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"AdaptiveLimit {label} must be an int >= 1, got {value!r}"
                )
        if max < min:
            raise ConfigurationError(f"AdaptiveLimit max ({max}) must be >= min ({min})")
        start = min if initial is None else initial
        if isinstance(start, bool) or not isinstance(start, int) or not min <= start <= max:
            raise ConfigurationError(
                f"AdaptiveLimit initial must be an int between {min} and {max}, got {initial!r}"
            )
        check_number("AdaptiveLimit increase", increase, minimum=0, inclusive=False)
        if check_number("AdaptiveLimit decrease", decrease, minimum=0, inclusive=False) >= 1:
            raise ConfigurationError(f"AdaptiveLimit decrease must be in (0, 1), got {decrease!r}")
        if latency_tolerance is not None:
            check_number(
                "AdaptiveLimit latency_tolerance",
                latency_tolerance,
                minimum=1,
                inclusive=False,
                hint="; pass None to ignore latency",
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigurationError(
                f"AdaptiveLimit patience must be an int >= 1, got {patience!r}"
            )
        self.min = min
        self.max = max
        self.patience = patience
        self.increase = float(increase)
        self.decrease = float(decrease)
        self.latency_tolerance = latency_tolerance
        self._value = float(start)
        self._recover_to = float("inf")  # the level of the last overload (none seen yet)
        self._cut_at = float("-inf")
        self._best_latency: float | None = None
        self._latency: float | None = None  # smoothed latency of recent successes
        self.peak = start
        self.decreases = 0
        # The groups using this limit now. Weak: a group that never ends properly (dropped
        # unentered, or its loop gone) must not be kept alive by the limit it shared.
        self._listeners: weakref.WeakSet[LimitListener] = weakref.WeakSet()

    def attach(self, listener: LimitListener) -> None:
        """Tell ``listener`` (a group that starts using this limit) whenever it grows."""
        self._listeners.add(listener)

    def detach(self, listener: LimitListener) -> None:
        """Stop telling ``listener`` (its group ended)."""
        self._listeners.discard(listener)

    @property
    def current(self) -> int:
        """The limit now: an int in ``[min, max]``."""
        return int(self._value)

    def on_success(
        self,
        latency: float | None = None,
        *,
        started: float | None = None,
        now: float | None = None,
        level: int | None = None,
    ) -> bool:
        """Record a successful attempt; returns whether ``current`` grew (then every attached
        group has been told).

        ``latency`` (seconds) feeds the rising-latency signal; ``started`` (when the attempt
        began) and ``now`` are readings of one clock, used as in ``on_overload``.
        """
        if latency is not None and self._latency_overloaded(latency):
            self.on_overload(started=started, now=now, level=level)
            return False
        before = self.current
        value, ceiling = self._value, self._recover_to
        if value < ceiling - 1.0:
            self._value += 1.0  # well below the last overload: win the cut back quickly
        elif value < ceiling:
            self._value += self.increase / (value * self.patience)  # near it: probe gently
        else:
            self._value += self.increase / value  # past it: capacity grew, additive increase
        self._value = min(self._value, float(self.max))
        grown = self.current
        if grown > self.peak:
            self.peak = grown
        if grown > before:
            # Every group sharing the limit may start more now, not only the one whose member
            # succeeded: the others would wait for a member of their own to end first.
            for listener in list(self._listeners):
                listener.limit_changed()
            return True
        return False

    def on_overload(
        self, *, started: float | None = None, now: float | None = None, level: int | None = None
    ) -> bool:
        """Record an overload signal; returns whether ``current`` was cut.

        One cut per round trip: an attempt that ``started`` before the last cut (or at the same
        clock reading), or a signal at most one (smoothed) latency after it, cannot cut again;
        that cut already answered the load it was part of. ``started`` and ``now`` are readings
        of one clock; ``level`` is the limit when the overloaded attempt started (it is
        remembered as the level that overloads, so the limit regrows quickly to just below it,
        then probes).
        """
        # "Before the cut" includes the cut's own clock reading: on a coarse clock (or a
        # ManualClock) a burst's attempts, and the cut their first 429 caused, share one
        # reading; strictly before would let each of them cut again. (The first cut still
        # happens: _cut_at starts at -inf.)
        if (started is not None and started <= self._cut_at) or self._holding(now):
            if level is not None and started is not None and started > self._cut_at:
                # Overloaded at a level set after the cut: that level is too high as well.
                self._recover_to = min(self._recover_to, float(level))
            return False
        self._recover_to = self._value if level is None else min(self._value, float(level))
        self._value = max(float(self.min), self._value * self.decrease)
        self._cut_at = now if now is not None else float("-inf")
        self.decreases += 1
        return True

    def _holding(self, now: float | None) -> bool:
        # For one smoothed latency after a cut, the cut has not taken effect yet; a signal at
        # the cut's own reading is part of the load that cut answered (with no latency seen
        # yet, that instant is all the holding there is).
        return now is not None and now <= self._cut_at + (self._latency or 0.0)

    def _latency_overloaded(self, latency: float) -> bool:
        if latency <= 0:
            return False
        best = self._best_latency
        self._best_latency = latency if best is None else min(best, latency)
        smooth = latency if self._latency is None else 0.8 * self._latency + 0.2 * latency
        self._latency = smooth
        tolerance = self.latency_tolerance
        return tolerance is not None and smooth > tolerance * self._best_latency

    def __repr__(self) -> str:
        return f"AdaptiveLimit(min={self.min}, max={self.max}, current={self.current})"


def as_adaptive(max_workers: object) -> AdaptiveLimit | None:
    """The adaptive limit meant by a ``max_workers`` value (``"auto"`` or an instance)."""
    if type(max_workers) is int:
        return None  # the common case, first
    if isinstance(max_workers, AdaptiveLimit):
        return max_workers
    if max_workers == "auto":
        return AdaptiveLimit(1, 64)
    if isinstance(max_workers, str):
        raise ConfigurationError(
            f"max_workers must be an int >= 1, 'auto' or an AdaptiveLimit, got {max_workers!r}"
        )
    return None
