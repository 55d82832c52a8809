"""Warnings that help: each one issued with ``warnings.warn`` and recorded on the bus.

A warning about a run names what it is about (a member's or a group's address) and what to
do, and it goes two ways: ``warnings.warn`` with a category of our own (``rh_agents.errors``,
so it can be filtered or turned into an error by class), pointing at the user's line that
led to it; and a ``RunWarning`` record on the state's bus, for printers and other
subscribers::

    advise(state, LoopBlockedWarning, "member docs[3] held the event loop for 250 ms",
           "make it async, or await asyncio.to_thread(fn, ...)", address="docs[3]")
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import warnings
from typing import TYPE_CHECKING

from rh_agents.core.records import RunWarning, _placed

if TYPE_CHECKING:
    from rh_agents.core.bus import EventBus
    from rh_agents.core.execution import ExecutionState

__all__ = ["advise", "place_of", "publish_soon", "run_warning", "user_stacklevel"]

# The "#2" a repeated name gets (docs, docs#2, docs#3...), at the end of an address part.
_NUMBERING = re.compile(r"(?<=[^\s#'\"(])#\d+(?=$|[\s'\"\[:.,;)])")


def place_of(text: str) -> str:
    """``text`` with the numbering of repeated names taken out of its addresses
    (``"group 'docs#7' ran..."`` -> ``"group 'docs' ran..."``).

    What ``warnings.warn`` is given: Python shows a warning once per distinct text (and
    line), keeping each text in the caller's ``__warningregistry__``. A group opened again
    and again (a service's request) gets a new number each time; with it in the text, every
    group would warn anew and the registry would grow by one entry per group, for ever.
    The bus's ``RunWarning`` keeps the exact address.
    """
    return _NUMBERING.sub("", text)


# This package's folder: frames in files below it are ours, not the user's.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by the caller of this function that
    points at the first frame outside this package: the user's line that led to it."""
    frame = sys._getframe(1)  # the function that will call warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def run_warning(
    category: type[Warning],
    message: str,
    hint: str,
    *,
    address: str,
    timestamp: float,
    group_id: str | None = None,
    parallel_index: int | None = None,
) -> RunWarning:
    """The bus record of a warning."""
    record = _placed(RunWarning, address, timestamp, group_id, parallel_index)
    record.category = category.__name__
    record.message = message
    record.hint = hint
    return record


def advise(
    state: ExecutionState,
    category: type[Warning],
    message: str,
    hint: str,
    *,
    address: str,
    group_id: str | None = None,
    parallel_index: int | None = None,
    publish: bool = True,
) -> None:
    """Publish a ``RunWarning`` on ``state``'s bus (unless ``publish=False``: it already
    was), then ``warnings.warn(f"{message}: {hint}", category)`` at the user's line."""
    if publish:
        bus = state.event_bus
        if bus.has_listeners:
            bus.publish(
                run_warning(
                    category,
                    message,
                    hint,
                    address=address,
                    timestamp=state.clock.now(),
                    group_id=group_id,
                    parallel_index=parallel_index,
                )
            )
    warnings.warn(place_of(f"{message}. {hint}"), category, stacklevel=user_stacklevel())


def publish_soon(bus: EventBus, record: RunWarning) -> None:
    """Publish ``record`` from the event loop's next turn: for code that cannot publish where
    it is (a finalizer, which may run in the middle of any other code). Dropped when no loop
    runs here."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    try:
        loop.call_soon_threadsafe(_publish, bus, record)
    except RuntimeError:  # the loop is closing
        return


def _publish(bus: EventBus, record: RunWarning) -> None:
    if bus.has_listeners:
        bus.publish(record)
