"""``after_outcome_taken``: hand a freed worker on only once its last outcome was taken.

The thread pool (``rh_agents.core.threads``) and the process pool
(``rh_agents.executors.processes``) both keep calls waiting for a worker on the loop's side.
When a worker ends a call, the next waiting call must not start before the caller of the
ended one has seen its outcome: that outcome may stop the caller's group (``FAIL_FAST``, a
quorum), and the stop cancels waiting calls that must then never run::

    future.set_result(value)                       # the worker's outcome, on the loop
    after_outcome_taken(loop, task, future, hand_to_next_call)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["after_outcome_taken"]

# The loop turns more a worker is held when its call's caller was a task of its own that
# ended taking the outcome: the turn its end's callbacks run in, and the one the task
# awaiting it steps in (see after_outcome_taken).
_TASK_TURNS = 2


def after_outcome_taken(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any] | None,
    future: asyncio.Future[Any],
    callback: Callable[[], Any],
) -> None:
    """Call ``callback`` on ``loop`` once the outcome just put into ``future`` has been taken
    by its caller (``task``, which awaits it), and the calls still waiting for a worker have
    been told of what that caller did with it: what frees a worker (a thread of ``ThreadRunner``, a
    process in ``ProcessExecutor``) hands it to the next waiting call only then.

    A member's failure under ``FAIL_FAST`` (or a success reaching a quorum) stops its group
    in the member's own step, which cancels the other members, and with them their calls
    waiting for a worker: a worker handed on sooner would start a call its group has just
    given up (docs/executors.md: a call still waiting for a worker never runs). So:

    - ``callback`` runs two loop turns after this (called in the turn the outcome was set):
      the first is the caller's step, the second the step of a task that awaits a waiting
      call through a task of its own (``asyncio.wait_for`` on 3.11, the shared call of a
      cacheable actor), which passes a cancellation on to it.
    - Should the caller's task have ended in its step (it was such a task itself), the task
      awaiting it takes the outcome ``_TASK_TURNS`` turns later: so much later ``callback``.

    Deeper nestings of tasks are not followed. A loop busy (or blocked) meanwhile makes the
    turns, and so the handing on, later.
    """
    loop.call_soon(_taken, loop, task, future, callback, -1)


def _taken(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any] | None,
    future: asyncio.Future[Any],
    callback: Callable[[], Any],
    turns: int,
) -> None:
    if turns < 0:  # the caller's step has run (woken before this was scheduled)
        ended = task is not None and task.done() and not future.cancelled()
        turns = 1 + (_TASK_TURNS if ended else 0)
    if turns:
        loop.call_soon(_taken, loop, task, future, callback, turns - 1)
    else:
        callback()
