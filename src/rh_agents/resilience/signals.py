"""What a failure says about the service behind it: a ``Retry-After`` hint, an overload.

Providers say "slow down" in several ways: an HTTP 429 or 503, a ``Retry-After`` header, a
timeout. These helpers read all of them from any exception, so the retry policy and the
adaptive limit understand errors raised by ``httpx``, ``openai`` or your own code alike::

    try:
        await call()
    except Exception as exc:
        wait = retry_after_of(exc)      # seconds, or None
        if is_overload(exc):
            limit.on_overload()
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from typing import Any

__all__ = ["OVERLOAD_STATUSES", "is_overload", "retry_after_of", "status_of"]

#: HTTP statuses that mean "too much load", not "your request is wrong".
OVERLOAD_STATUSES = frozenset({429, 503})


def status_of(exc: BaseException) -> int | None:
    """The HTTP status carried by ``exc`` (``status_code``, ``status`` or its response)."""
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(value: float) -> float | None:
    # Only a finite, non-negative wait is one a service can mean: ``Infinity`` or ``1e999``
    # would make a retrying call wait forever on one broken header; ``nan`` or ``-5`` mean
    # nothing. Such a hint is ignored (the backoff alone decides).
    return value if math.isfinite(value) and value >= 0 else None


def _parse_retry_after(raw: Any) -> float | None:
    """RFC 9110 ``Retry-After``: delay-seconds (a fraction accepted) or an HTTP date; ``None``
    for anything else (a value that cannot be a wait is ignored, as if there were no hint)."""
    if raw is None or isinstance(raw, bool):
        return None
    try:
        if isinstance(raw, int | float):
            return _seconds(float(raw))  # (an int too large for a float overflows)
        return _seconds(float(str(raw).strip()))
    except (ValueError, OverflowError):
        pass
    text = str(raw).strip()
    try:  # an HTTP date
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        # An HTTP date is always GMT (RFC 9110), also when it does not say so: the asctime
        # form ("Sun Nov  6 08:49:37 1994") and "-0000" parse without a zone, and
        # ``timestamp()`` would read them as local time (hours off, away from UTC).
        when = when.replace(tzinfo=datetime.UTC)
    return _seconds(max(0.0, when.timestamp() - time.time()))


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the service asked us to wait, from ``exc.retry_after`` or a response header.

    Reads the ``retry_after`` attribute first, then ``retry-after-ms`` and ``retry-after``
    headers of ``exc.response`` (httpx and openai errors carry one). ``None`` when absent, or
    when the hint is no finite, non-negative wait (``Infinity``, ``nan``, ``-5``: ignored).
    """
    direct = _parse_retry_after(getattr(exc, "retry_after", None))
    if direct is not None:
        return direct
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        millis = _header(headers, "retry-after-ms")
        if millis is not None:
            parsed = _parse_retry_after(millis)
            if parsed is not None:
                return parsed / 1000.0
        return _parse_retry_after(_header(headers, "retry-after"))
    except (AttributeError, TypeError):
        return None


def _header(headers: Any, name: str) -> Any:
    # httpx headers ignore case; a plain mapping may use either spelling.
    value = headers.get(name)
    return value if value is not None else headers.get(name.title())


def is_overload(exc: BaseException) -> bool:
    """Whether ``exc`` says the service is overloaded: 429/503, a rate-limit error, a timeout."""
    from rh_agents.errors import RateLimitedError

    if isinstance(exc, TimeoutError | RateLimitedError):
        return True
    return status_of(exc) in OVERLOAD_STATUSES
