"""Warnings that help, about one group: what its run showed, and a group never used.

The functions here are ``ParallelExecutionManager``'s methods (bound in its class body, each
taking the group first) that look, when the group ends, at what its run showed, and warn
(``rh_agents.core.advice``: ``warnings.warn`` with a category
of ``rh_agents.errors``, and a ``RunWarning`` on the bus), each warning naming the member or
group and what to do:

- ``LoopBlockedWarning``: a member held the event loop past ``Watchdog.block_threshold``
  (seen by the watchdog, which published the record as soon as the loop was free again, if
  the group still ran then);
- ``SequentialGroupWarning``: the members held the loop for most of the group's time, so a
  group with ``max_workers > 1`` ran them one at a time;
- ``OversizedGroupWarning``: ``max_workers`` at least 50 and over ten times the members;
- ``CoroutineResultWarning``: a member returned a coroutine instead of awaiting it (the first
  ``_RESULTS_CHECKED`` results are looked at: the mistake is made in code every member
  shares);
- ``UnusedGroupWarning``: a group dropped without ever running, or entered by hand, given
  members and dropped without being gathered or left (when the group is collected).

Nothing here runs per member: the checks read counters the group keeps anyway, once.
"""

from __future__ import annotations

import warnings
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from rh_agents.core.advice import advise, place_of, publish_soon, run_warning
from rh_agents.core.event_call import EventCall
from rh_agents.core.watchdog import blocked_text
from rh_agents.errors import (
    CoroutineResultWarning,
    LoopBlockedWarning,
    OversizedGroupWarning,
    SequentialGroupWarning,
    UnusedGroupWarning,
)

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.watchdog import Window

__all__ = [
    "OVERSIZED_FACTOR",
    "OVERSIZED_LIMIT",
    "advise_after_run",
    "advise_group",
    "advise_loop",
    "advise_results",
    "warn_if_unused",
    "warn_never_iterated",
]

# max_workers at least OVERSIZED_LIMIT and over OVERSIZED_FACTOR times the members: a warning.
OVERSIZED_LIMIT = 50
OVERSIZED_FACTOR = 10
# The results looked at for a member that returned a coroutine.
_RESULTS_CHECKED = 32
# The members of a sequential group held the loop for at least this share of its time.
_SEQUENTIAL_SHARE = 0.5


def advise_after_run(group: ParallelExecutionManager[Any]) -> None:
    """Warn about what the group's run showed (called once, as it ends)."""
    window = group._window
    if window is not None and (window.blocks or window.held):
        advise_loop(group, window)
    limit = group._final_limit or 0
    total = group._tally.total
    if (
        group._adaptive is None
        and total
        and limit >= OVERSIZED_LIMIT
        and limit > OVERSIZED_FACTOR * total
    ):
        advise_group(
            group,
            OversizedGroupWarning,
            f"group {group.group_id!r} ran {total} member{'s' if total != 1 else ''} with "
            f"max_workers={limit}: the limit never came into play",
            "Size max_workers to the members you expect; to bound the whole run, set "
            "ExecutionState(global_max_workers=...) instead",
        )
    if group._retain and total:
        advise_results(group)


def advise_loop(group: ParallelExecutionManager[Any], window: Window) -> None:
    state, group_id = group._state, group.group_id
    for address, (times, _, longest) in window.blocks.items():
        message, hint = blocked_text(address, group_id, longest, window.options, int(times))
        index = address[len(group_id) + 1 : -1]
        advise(
            state,
            LoopBlockedWarning,
            message,
            hint,
            address=address,
            group_id=group_id,
            parallel_index=int(index) if index.isdigit() else None,
            # (published by the watchdog when it saw it, if the group still ran then)
            publish=address not in window.published,
        )
    wall = window.wall  # the real clock's, as the watchdog's (the state's may be fake)
    limit = group._final_limit or 1
    if (
        limit > 1
        and group._tally.total >= 2
        and wall >= window.options.sequential_threshold
        and window.held >= _SEQUENTIAL_SHARE * wall
    ):
        advise_group(
            group,
            SequentialGroupWarning,
            f"the {group._tally.total} members of group {group_id!r} held the event loop for "
            f"{min(window.held, wall):.2f} s of its {wall:.2f} s without awaiting: with "
            f"max_workers={limit} they still ran one at a time",
            "Await their I/O, or move their blocking or CPU-bound work to a thread "
            "(`await asyncio.to_thread(fn, *args)`) or a process pool "
            "(`loop.run_in_executor`), so that they overlap",
        )


def advise_results(group: ParallelExecutionManager[Any]) -> None:
    for result in group._tally.results[:_RESULTS_CHECKED]:
        value: Any = result.result if result is not None else None
        kind = type(value)
        if kind is CoroutineType or kind is EventCall:
            assert result is not None
            what = (
                f"the event call of {value.event.actor.name!r}"
                if kind is EventCall
                else f"coroutine {getattr(value, '__qualname__', '?')!r}"
            )
            address = result.address or f"{group.group_id}[{result.index}]"
            advise(
                group._state,
                CoroutineResultWarning,
                f"member {address} returned {what} instead of its result: the member did "
                "not await it, so that work never ran",
                "Write `return await fn(...)`, not `return fn(...)`",
                address=address,
                group_id=group.group_id,
                parallel_index=result.index,
            )
            return


def advise_group(
    group: ParallelExecutionManager[Any], category: type[Warning], message: str, hint: str
) -> None:
    parent = group._parent_frame
    advise(
        group._state,
        category,
        message,
        hint,
        address=group.group_id,
        group_id=parent.group_id if parent is not None else None,
        parallel_index=parent.parallel_index if parent is not None else None,
    )


def warn_if_unused(group: ParallelExecutionManager[Any]) -> None:
    try:
        if group._finalized:
            return  # (nearly every group)
        entered, total, used, state = group._entered, group._tally.total, group._used, group._state
    except AttributeError:  # __init__ refused its options: there never was a group
        return
    if (entered and not total) or (used and not entered):
        return
    if not entered:
        name = group.options.name
        message = f"a parallel group{f' named {name!r}' if name else ''} was made and never run"
        hint = (
            "Run it with `async with state.parallel(...) as p:` or "
            "`await p.execute_parallel(events)`"
        )
        address = name or "parallel"
    elif group._stream_owned:
        # (parallel_map's generator, an execute_parallel stream: read in part, then kept
        # until the loop ended, which never closed it)
        message = (
            f"the stream of results of group {group.group_id!r} was neither read to its end "
            "nor closed: the members still running when the event loop ended never finished"
        )
        hint = (
            "Close it when you stop reading early: "
            "`async with contextlib.aclosing(stream) as results: ...`"
        )
        address = group.group_id
    else:
        message = (
            f"group {group.group_id!r} was given {total} member{'s' if total != 1 else ''} "
            "but never gathered nor left: its results were never read"
        )
        hint = "Use `async with state.parallel(...) as p:`, which gathers as the block ends"
        address = group.group_id
    publish_soon(
        state.event_bus,
        run_warning(
            UnusedGroupWarning, message, hint, address=address, timestamp=state.clock.now()
        ),
    )
    warnings.warn(place_of(f"{message}. {hint}"), UnusedGroupWarning, stacklevel=2)


def warn_never_iterated(group: ParallelExecutionManager[Any], count: int) -> None:
    """The stream ``execute_parallel`` gave for ``group`` was dropped before its first step:
    its ``count`` members never ran (they were closed)."""
    name = group.options.name
    message = (
        f"the stream of results of a parallel group{f' named {name!r}' if name else ''} was "
        f"dropped without being iterated: its {count} member{'s' if count != 1 else ''} "
        "never ran"
    )
    hint = "Iterate it: `async for result in await p.execute_parallel(events): ...`"
    state = group.execution_state
    publish_soon(
        state.event_bus,
        run_warning(
            UnusedGroupWarning,
            message,
            hint,
            address=name or "parallel",
            timestamp=state.clock.now(),
        ),
    )
    warnings.warn(f"{message}. {hint}", UnusedGroupWarning, stacklevel=2)
