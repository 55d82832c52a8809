"""Member deadlines seen from inside a member: was this cancellation its timeout, or a stop?

``parallel.running.run_member`` puts each member timeout (``member_timeout=``,
``p.add(..., timeout=)``) in a context variable while the member runs, innermost last. Code
handling a ``CancelledError`` inside a member reads it to tell a member that is ending for
good (its timeout fired, its group stops) from one cancelled by a timeout of its own, which
its code may catch and go on from::

    except asyncio.CancelledError:
        if member_ending(group):      # a stop or its timeout: take nothing back, just end
            ...
        raise

Kept apart from ``parallel.running`` so that the slots (``parallel/slots.py``), which
``running`` uses, can ask too, and outside the ``parallel`` package so that an
``ExecutionEvent`` call (``events.py``, which that package imports) can: its record says a
call its member's timeout cut short timed out.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager

__all__ = ["member_deadlines", "member_ending", "member_timed_out"]

#: The deadlines of the members (with a timeout) the running code is inside, innermost last:
#: a call cancelled by one of them ran too long, which its circuit breaker and its group's
#: adaptive limit count as a failure (a timeout), not as a call that never finished. Set only
#: around a member that has a timeout, so members without one pay nothing.
member_deadlines: ContextVar[tuple[asyncio.Timeout, ...]] = ContextVar(
    "rh_agents_member_deadlines", default=()
)


def member_timed_out() -> bool:
    """Whether a member timeout around the running code has expired (it is being cancelled).

    Called while handling a ``CancelledError``: true when that cancellation is a member's
    timeout (``member_timeout=`` or ``p.add(..., timeout=)``) rather than a stop.
    """
    return any(deadline.expired() for deadline in member_deadlines.get())


def member_ending(group: ParallelExecutionManager[Any]) -> bool:
    """Called while handling a ``CancelledError`` in a member of ``group``: whether the
    member is being stopped for good (its group stops, or a member timeout around it
    expired), rather than by a cancellation its own code may catch and go on from."""
    return group._stop_status is not None or member_timed_out()
