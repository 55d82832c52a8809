"""The request a worker is running, and the state made for it: ``current_state()``.

A member sent with an ``ExecutionState`` (``functools.partial(fn, x, state)``) does not carry
the driver's state, which cannot leave its process: the state arrives as a token that
``current_state()`` resolves, while the worker runs the request, into a state of the worker's
own, placed at the member's address. What the member calls with it (events, groups) is then
addressed as it would be on the driver, and its records go home with the reply.
"""

from __future__ import annotations

from rh_agents.core.bus import EventBus
from rh_agents.core.context import Frame
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import BusEvent

__all__ = ["Request", "begin", "current_state", "end"]


class Request:
    """The request being run: where it sits, and the state made for it (if any)."""

    __slots__ = ("address", "group_id", "index", "numbering", "records", "state", "wants")

    def __init__(
        self,
        address: str,
        group_id: str | None,
        index: int | None,
        numbering: dict[str, int] | None,
        wants: bool,
    ) -> None:
        self.address = address
        self.group_id = group_id
        self.index = index
        self.numbering = numbering
        self.wants = wants  # whether the driver's bus has listeners (else no record is kept)
        self.state: ExecutionState | None = None
        self.records: list[BusEvent] = []

    def make_state(self) -> ExecutionState:
        """The request's state, made on first use: its root is the request's frame."""
        state = self.state
        if state is None:
            bus = EventBus()
            if self.wants:
                bus.subscribe(self.records.append)
            state = self.state = ExecutionState(event_bus=bus)
            # Every call made here goes home in the reply (the driver's history and its
            # checkpoints), a stream-only group's too: the driver decides what it keeps.
            state.history.keep_every_call = True
            root = Frame(state, self.address, self.group_id, self.index)
            root.continue_numbering(self.numbering)
            state.root_frame = root
        return state


_current: Request | None = None


def begin(request: Request) -> None:
    """``request`` is the one running now (a worker runs one at a time)."""
    global _current
    _current = request


def end() -> None:
    global _current
    _current = None


def current_state() -> ExecutionState:
    """The worker's state for the request being run (what a sent ``ExecutionState`` becomes)."""
    request = _current
    if request is None:
        raise RuntimeError(
            "an ExecutionState arrived outside a member's request; only members may send one"
        )
    return request.make_state()
