"""``check_policy``: the one check that a policy given anywhere is the policy it should be;
``check_number``, ``check_exception_types`` and ``check_predicate``: the checks of the
policies' own fields; ``is_seconds``: what a timeout option takes.

Every place that takes a policy (the state, a group, an actor, an event, ``p.add``) checks it
as it is given, so a wrong value fails there, naming the option, rather than when a call
first needs it::

    check_policy("retry", RetryPolicy(max_attempts=3), RetryPolicy)   # fine
    check_policy("retry", 3, RetryPolicy)    # ConfigurationError: retry must be a RetryPolicy ...
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

from rh_agents.errors import ConfigurationError

__all__ = [
    "check_exception_types",
    "check_number",
    "check_policy",
    "check_predicate",
    "is_seconds",
]


def check_policy(label: str, value: Any, expected: type) -> None:
    """A ``ConfigurationError`` unless ``value`` is ``None`` or an ``expected`` policy."""
    if value is not None and not isinstance(value, expected):
        raise ConfigurationError(
            f"{label} must be a {expected.__name__} (from rh_agents.resilience), got {value!r}"
        )


def check_number(
    label: str, value: Any, *, minimum: float, inclusive: bool = True, hint: str = ""
) -> float:
    """``value`` as a float: a finite int or float (not a bool) above ``minimum``, else a
    ``ConfigurationError`` naming ``label`` and the value.

    A bool is refused though it is an int (``increase=True`` is a mistake, not 1.0), and so
    are ``nan`` (every comparison with it is false, so it would slip past the range check and
    break the arithmetic later) and infinities (no wait, rate or factor means them; where "none"
    is meant, the field takes ``None``: ``hint`` says so).
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        try:
            ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        except OverflowError:  # an int too large for a float
            ok = False
    if not ok:
        sign = ">=" if inclusive else ">"
        raise ConfigurationError(
            f"{label} must be a finite number {sign} {minimum:g}, got {value!r}{hint}"
        )
    return float(value)


def is_seconds(value: Any) -> bool:
    """Whether ``value`` is a timeout in seconds: an int or float (not a bool) above 0 that a
    float can hold (``inf`` too: no timeout). ``nan`` is not, nor is an int too large for a
    float (``10**400``), which would only fail, as an ``OverflowError``, once the timeout is
    armed (the loop's time plus it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return float(value) > 0
    except OverflowError:
        return False


def check_exception_types(label: str, value: Any) -> tuple[type[BaseException], ...]:
    """``value`` as a tuple of exception classes: one class, or a tuple of them; else a
    ``ConfigurationError`` naming ``label`` (a list, a string or an instance is a mistake that
    would only fail, as a ``TypeError`` of ``isinstance``, when a call first fails)."""
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        return value
    raise ConfigurationError(
        f"{label} must be an exception class or a tuple of exception classes "
        f"(e.g. (TimeoutError, ConnectionError)), got {value!r}"
    )


def check_predicate(label: str, value: Any) -> None:
    """A ``ConfigurationError`` naming ``label`` unless ``value`` is a plain callable: not
    callable at all, or async (an ``async def`` function or method, an object whose
    ``__call__`` is one, a ``functools.partial`` of either, an async generator function).

    A predicate is called, never awaited: an async one would hand back a coroutine (or an
    async generator), which is true whatever it would have said, and a coroutine that is
    never awaited.
    """
    if not callable(value):
        raise ConfigurationError(f"{label} must be callable, got {value!r}")
    if _is_async(value):
        raise ConfigurationError(
            f"{label} must be a plain function (def or lambda), got the async {value!r}: it "
            "is called, not awaited, so what it returns (a coroutine) would count as true "
            "every time. Make it a plain def that returns a bool"
        )


def _is_async(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    # A function or method as it is; any other callable by its class's __call__.
    call = fn if inspect.isroutine(fn) else getattr(type(fn), "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
