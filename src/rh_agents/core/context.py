"""The execution path of the running task, kept in a ``contextvars`` context.

Every ``ExecutionEvent`` call and every parallel member runs inside a ``Frame``. Frames form a
tree that mirrors the execution tree; the current one is found through a ``ContextVar``, so two
concurrent tasks always see their own path and can never corrupt each other's addresses (there
is no shared mutable stack).

Invariant: a frame's ``_child_counts`` is only touched by code running inside that frame, which
is a single task unless the user starts tasks of their own inside an actor; in that case names
are still unique, only their numbering follows the order in which the calls start.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator
from contextvars import Context, ContextVar, Token, copy_context
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState

__all__ = [
    "CALL_MARK",
    "Frame",
    "InContext",
    "address_of_key",
    "context_changed",
    "current_frame",
    "enclosing_member",
    "enter_frame",
    "exit_frame",
    "repeat_key",
    "running_frame",
    "split_key",
]

ADDRESS_SEPARATOR = "::"

# A retried call (an agent's attempts, a member's) calls its children again at the addresses
# its first attempt used. What recovery stores each call under, its key, tells them apart:
# the n-th call at an address within one call of its parent is ``address::#n`` (n >= 2), and
# everything below a call is keyed under that call's key (``plan::search::#2::fetch``). No
# actor name or tag contains '#', so no address reads so. A frame's key is None while it is
# its address (no call above it, nor itself, repeated): nearly always.
CALL_MARK = ADDRESS_SEPARATOR + "#"


_CALL_NUMBER = re.compile(r"::#\d+(?=::|\[|$)")


def repeat_key(key: str, number: int) -> str:
    """The key of the ``number``-th call at the call keyed ``key``: ``key`` itself for the
    first, ``key::#number`` after."""
    return key if number == 1 else f"{key}{CALL_MARK}{number}"


def split_key(key: str) -> tuple[str, int]:
    """``(key of the first call there, number)``: ``a::t::#3`` gives ``("a::t", 3)``,
    ``a::t`` gives ``("a::t", 1)`` (the inverse of ``repeat_key``)."""
    base, mark, number = key.rpartition(CALL_MARK)
    return (base, int(number)) if mark and number.isdigit() else (key, 1)


def address_of_key(key: str) -> str:
    """The address of the call stored under ``key``: ``a::s::#2::t::#3`` gives ``a::s::t``,
    and ``a::g::#2[0]::t`` (in the second opening of group ``a::g``) ``a::g[0]::t``."""
    if CALL_MARK not in key:
        return key
    return _CALL_NUMBER.sub("", key)


def enclosing_member(address: str) -> tuple[str, int] | None:
    """The innermost group member ``address`` is (or runs inside), as (group id, index):
    ``a::docs[3]::tool`` and ``docs[3]`` give ``("a::docs", 3)`` and ``("docs", 3)``;
    ``None`` outside every group. (Names and tags cannot hold brackets.)"""
    open_ = address.rfind("[")
    if open_ <= 0:
        return None
    close = address.find("]", open_)
    number = address[open_ + 1 : close]
    return (address[:open_], int(number)) if close > 0 and number.isdigit() else None


class Frame:
    """One node of the execution path.

    ``address`` is the full path (``"Orchestrator::docs[3]::Summarizer"``); ``group_id`` and
    ``parallel_index`` say which parallel member (if any) this frame runs inside; ``slot`` is the
    global-limit slot held by that member, so that a nested group can lend it back while it waits.
    ``attempts`` counts the attempts of the call this frame runs, kept current by the retry
    loop: however the call ends, its result reports its own attempts, never those of a
    nested call whose exception passed through it. ``key`` is what recovery stores the call
    under when it is not its address (a call a retried parent repeats: see ``CALL_MARK``).
    """

    __slots__ = (
        "_calls_at",
        "_child_counts",
        "address",
        "attempts",
        "children_running",
        "group_id",
        "key",
        "parallel_index",
        "slot",
        "state",
    )

    def __init__(
        self,
        state: ExecutionState | None,
        address: str,
        group_id: str | None = None,
        parallel_index: int | None = None,
        slot: Any = None,
    ) -> None:
        self.state = state
        self.address = address
        self.group_id = group_id
        self.parallel_index = parallel_index
        self.slot = slot
        self.attempts = 1
        # Made on the first child: most member frames (plain coroutines) never have one.
        self._child_counts: dict[str, int] | None = None
        # Calls and groups under this frame that have not ended yet: the retry loop numbers
        # an attempt's children afresh only when the last attempt left none running (two
        # calls must never run at one address).
        self.children_running = 0
        # Recovery's key for the call this frame runs (see CALL_MARK; None: its address),
        # and the calls made at each child address so far, over all its attempts (counted
        # only under recovery: see call_key).
        self.key: str | None = None
        self._calls_at: dict[str, int] | None = None

    @property
    def is_parallel(self) -> bool:
        return self.group_id is not None

    def child_name(self, name: str) -> str:
        """A name unique among this frame's children: ``name``, then ``name#2``, ``name#3``..."""
        counts = self._child_counts
        if counts is None:
            counts = self._child_counts = {}
        count = counts.get(name, 0) + 1
        counts[name] = count
        return name if count == 1 else f"{name}#{count}"

    def child_address(self, name: str) -> str:
        unique = self.child_name(name)
        return f"{self.address}{ADDRESS_SEPARATOR}{unique}" if self.address else unique

    def numbering(self) -> dict[str, int] | None:
        """How many children of each name this frame has had (a copy; ``None`` for none).

        With ``continue_numbering``, what lets a call made in another process go on numbering
        this frame's children (``name#2``...) as a call made here would (see
        ``rh_agents.executors``)."""
        counts = self._child_counts
        return dict(counts) if counts else None

    def continue_numbering(self, counts: dict[str, int] | None) -> None:
        """Number this frame's next children after ``counts`` (from ``numbering()``)."""
        self._child_counts = dict(counts) if counts else None

    def call_key(self, address: str) -> str | None:
        """Count a call (or a group's opening) at ``address``, a child of this frame, and
        give its key (``None``: its address): the n-th one there within this frame's call
        (its retry attempts call their children again at the same addresses) is
        ``address::#n``, under this frame's own key (a group's members: ``id::#n[i]``). At
        the top nothing is ever repeated: nothing is counted there."""
        if not self.address:
            return None
        calls = self._calls_at
        if calls is None:
            calls = self._calls_at = {}
        number = calls[address] = calls.get(address, 0) + 1
        key = self.key
        if key is None:
            return None if number == 1 else repeat_key(address, number)
        return repeat_key(key + address[len(self.address) :], number)

    def answered_by(self, address: str, asked: str, key: str) -> None:
        """The call just counted at ``address`` (key ``asked``) was answered by the stored
        call ``key``, a later one there (failed ones passed over): count on from it."""
        later, number = split_key(key)
        calls = self._calls_at
        if calls is not None and later == split_key(asked)[0] and number > calls[address]:
            calls[address] = number

    def child(self, address: str) -> Frame:
        """A frame below this one that stays inside the same parallel member."""
        return Frame(self.state, address, self.group_id, self.parallel_index, self.slot)


_current: ContextVar[Frame | None] = ContextVar("rh_agents_frame", default=None)


def current_frame(state: ExecutionState) -> Frame:
    """The running task's frame for ``state`` (the state's root frame outside any call)."""
    frame = _current.get()
    if frame is None or frame.state is not state:
        return state.root_frame
    return frame


def running_frame() -> Frame | None:
    """The running task's frame, whatever its state (``None`` outside any call)."""
    return _current.get()


# Make a frame current (returns the token for ``exit_frame``) and restore the previous one.
# The ContextVar's own methods, not wrappers: every member enters and exits a frame.
enter_frame: Callable[[Frame | None], Token[Frame | None]] = _current.set
exit_frame: Callable[[Token[Frame | None]], None] = _current.reset


def context_changed(before: Context) -> bool:
    """Whether a context variable was set in the running task since ``before`` was copied
    from it. (The same variables, unchanged, share one mapping: one pointer compared. A
    value whose ``==`` fails counts as a change.)"""
    try:
        return copy_context() != before
    except Exception:
        return True


class InContext:
    """Await ``awaitable`` with each of its steps run in ``context``, inside the current task.

    What a task of its own would give a coroutine (its own context), without a task: a
    member added while the block's context variables held other values than when it was
    entered sees the values of its ``add()``, as ``asyncio.create_task`` would give it, though
    a shared worker runs it::

        value = await InContext(member_coroutine, contextvars.copy_context())

    Cancellation and errors are passed in as they come; closing it closes the awaitable.
    """

    __slots__ = ("_awaitable", "_context")

    def __init__(self, awaitable: Awaitable[Any], context: Context) -> None:
        self._awaitable = awaitable
        self._context = context

    def __await__(self) -> Generator[Any, Any, Any]:
        context = self._context
        # (In the context too: an awaitable's __await__ may do work of its own.)
        inner = context.run(self._awaitable.__await__)
        # (An awaitable's __await__ may give a plain iterator: no send, no throw.)
        send = getattr(inner, "send", None) or (lambda _value: next(inner))
        throw = getattr(inner, "throw", None)
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    if error is None:
                        yielded = context.run(send, value)
                    else:
                        raised, error = error, None
                        if throw is None:
                            raise raised
                        yielded = context.run(throw, raised)
                except StopIteration as stop:
                    return stop.value
                try:
                    value = yield yielded
                except GeneratorExit:
                    raise
                except BaseException as exc:  # a cancellation, passed on to the awaitable
                    error, value = exc, None
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                context.run(close)  # (a no-op once it has finished)
