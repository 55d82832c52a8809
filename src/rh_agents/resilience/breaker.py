"""Circuit breakers: stop calling a dependency that keeps failing, probe it, come back.

A ``CircuitBreaker`` is a policy (set it on an event, an actor, a group or the state; the
nearest wins). Calls with the same key share one ``Circuit`` in ``state.breakers``, across
every group of the state; the key defaults to the actor's name::

    breaker = CircuitBreaker(failure_threshold=5, cooldown=30, half_open_max_calls=1)
    llm = LLM(name="gpt", ..., circuit_breaker=breaker)
    ...
    state.breakers["gpt"].state          # "closed", "open" or "half_open"

``closed`` -> ``open`` after ``failure_threshold`` consecutive failures. While open, calls fail
at once with ``CircuitOpenError`` (whose ``retry_after`` is the rest of the cool-down) and the
handler is not called. After ``cooldown`` seconds (on the state's clock) the circuit is
``half_open`` and lets ``half_open_max_calls`` probes through; a probe's success closes it, a
probe's failure opens it again for another cool-down. Every change publishes
``CircuitStateChanged``.

Why our own: ``purgatory`` was evaluated. It keys circuits by name like we do, but it reads
wall time itself (no injectable clock, so tests of the cool-down would have to sleep), it has
no limit on concurrent half-open probes (a burst of parallel members would all be "the probe"),
and it reports state changes through its own message bus and async unit-of-work store rather
than returning them to the caller, who here must publish them with the call's address on our
bus. The state machine needed is a few dozen lines, so it is owned here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from rh_agents.errors import ActorInputError, CircuitOpenError, ConfigurationError
from rh_agents.resilience.checks import check_exception_types, check_number
from rh_agents.resilience.retry import NEVER_RETRIED, TimeSource

__all__ = ["BreakerRegistry", "Circuit", "CircuitBreaker", "CircuitState", "Transition"]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Transition = tuple[str, str, int]  # (old state, new state, consecutive failures)


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """A breaker policy; see the module docstring. ``key`` overrides the default key."""

    failure_threshold: int = 5
    cooldown: float = 30.0
    half_open_max_calls: int = 1
    key: str | None = None
    failure_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        for label in ("failure_threshold", "half_open_max_calls"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"CircuitBreaker.{label} must be an int >= 1, got {value!r}"
                )
        # (An infinite cool-down would never let a probe through, and its refusals would ask
        # a retrying call to wait forever.)
        check_number("CircuitBreaker.cooldown", self.cooldown, minimum=0)
        object.__setattr__(
            self,
            "failure_on",
            check_exception_types("CircuitBreaker.failure_on", self.failure_on),
        )
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConfigurationError(
                f"CircuitBreaker.key must be a non-empty str, got {self.key!r}"
            )

    def counts(self, exc: BaseException) -> bool:
        """Whether ``exc`` counts as a failure of the dependency (bad input does not)."""
        return (
            isinstance(exc, self.failure_on)
            and not isinstance(exc, NEVER_RETRIED)
            and not isinstance(exc, CircuitOpenError)
            and not isinstance(exc, ActorInputError)  # (a callable member's nested call)
        )


class Circuit:
    """The live state of one key. Used by one event loop; methods never await.

    ``epoch`` counts the times the circuit opened. A caller reads it once ``acquire`` let its
    call through and hands it back to ``release``: a call let through before the circuit
    last opened (a straggler) then neither closes it nor fails it, nor frees a probe.
    """

    __slots__ = (
        "_clock",
        "_opened_at",
        "_probes",
        "_state",
        "epoch",
        "failures",
        "key",
        "policy",
    )

    def __init__(self, key: str, policy: CircuitBreaker, clock: TimeSource) -> None:
        self.key = key
        self.policy = policy
        self._clock = clock
        self._state = CircuitState.CLOSED
        self.failures = 0
        self.epoch = 0
        self._opened_at = 0.0
        self._probes = 0

    @property
    def state(self) -> CircuitState:
        """``closed``, ``open`` or ``half_open``: an open circuit whose cool-down has passed
        reads ``half_open`` (its next call is a probe), before any call asks."""
        state = self._state
        if state is CircuitState.OPEN and self._cooled_down():
            return CircuitState.HALF_OPEN
        return state

    def _cooled_down(self) -> bool:
        return self._clock.now() - self._opened_at >= self.policy.cooldown

    def _move(self, new: CircuitState) -> Transition:
        old, self._state = self._state, new
        if new is CircuitState.OPEN:
            self._opened_at = self._clock.now()
            self.epoch += 1
        if new is not CircuitState.HALF_OPEN:
            self._probes = 0
        return (old.value, new.value, self.failures)

    def acquire(self) -> Transition | None:
        """Ask to make a call; raises ``CircuitOpenError`` when it must not be made.

        Returns the transition it caused (open -> half_open), if any. A caller that got
        through must call ``release`` exactly once (with ``epoch``, read now).
        """
        change: Transition | None = None
        if self._state is CircuitState.OPEN:
            remaining = self.policy.cooldown - (self._clock.now() - self._opened_at)
            if remaining > 0:
                raise CircuitOpenError(self.key, retry_after=remaining)
            change = self._move(CircuitState.HALF_OPEN)
        if self._state is CircuitState.HALF_OPEN:
            if self._probes >= self.policy.half_open_max_calls:
                raise CircuitOpenError(self.key, retry_after=None)
            self._probes += 1
        return change

    def release(
        self, error: BaseException | None, *, finished: bool = True, epoch: int | None = None
    ) -> Transition | None:
        """Report the outcome of a call let through by ``acquire``.

        ``finished=False`` (a cancelled call) frees a probe without judging the dependency.
        ``epoch``: the circuit's when the call was let through; a call from before the
        circuit last opened is not judged at all.
        """
        if epoch is not None and epoch != self.epoch:
            return None  # a straggler: the cool-down and its probes decide, not it
        was_probe = self._state is CircuitState.HALF_OPEN
        if was_probe:
            self._probes = max(0, self._probes - 1)
        if not finished or (error is not None and not self.policy.counts(error)):
            return None
        if error is None:
            if self._state is CircuitState.OPEN:
                # A call let through before the circuit opened, ending late: the cool-down and
                # its probes decide, not a straggler.
                return None
            self.failures = 0
            if self._state is not CircuitState.CLOSED:
                return self._move(CircuitState.CLOSED)
            return None
        self.failures += 1
        if was_probe or (
            self._state is CircuitState.CLOSED and self.failures >= self.policy.failure_threshold
        ):
            return self._move(CircuitState.OPEN)
        return None


class BreakerRegistry:
    """Every circuit of one ``ExecutionState``, by key (``state.breakers``)."""

    __slots__ = ("_circuits", "_clock")

    def __init__(self, clock: TimeSource) -> None:
        self._clock = clock
        self._circuits: dict[str, Circuit] = {}

    def circuit(self, key: str, policy: CircuitBreaker) -> Circuit:
        """The circuit for ``key``, made with ``policy`` on first use (later policies for the
        same key share that circuit and its settings)."""
        found = self._circuits.get(key)
        if found is None:
            found = self._circuits[key] = Circuit(key, policy, self._clock)
        return found

    def __getitem__(self, key: str) -> Circuit:
        return self._circuits[key]

    def __contains__(self, key: object) -> bool:
        return key in self._circuits

    def __iter__(self) -> Iterator[str]:
        return iter(self._circuits)

    def __len__(self) -> int:
        return len(self._circuits)
