"""``WorkerPool``: a group's workers, its slots, and which task runs which member when.

The pool starts and stops worker tasks, hands them ready members (highest priority, then
submission order), pulls the ``map()`` input as workers free up, lends and reclaims group
slots for members that only wait, and runs the members the cache answers in a lane of their
own. Each group owns one; nothing here is called directly, it is what runs under::

    async with state.parallel(max_workers=3) as p:
        for doc in docs:
            p.add(summarize(doc))    # kick(): a worker now, more at the loop's next turn
        p.statistics()               # running and queued come from the pool's statistics()

Invariants (the pool is the one owner of this state; only its workers and the task driving
the ``async with`` block touch it, on one event loop):

- Every worker holds one slot of the group's ``SlotArbiter`` (``slots``), from the moment it
  is started until it exits, except while its member has lent the slot (a retry backoff) and
  not yet taken it back through the arbiter. ``high_water`` counts only slots held by
  members, never idle workers.
- The arbiter's liveness rule (see ``slots``): a slot is never idle while anyone waits for
  it. A slot freed with no task waiting reaches ready members through ``kick`` (the
  arbiter's ``on_free``); a worker between two members first hands its slot to a task
  waiting to take one back (``pass_on``), and only then takes the next ready member.
- A worker takes its member when it first runs (``unstarted`` holds those that have not), so
  contended members start by priority; a worker cancelled before it ran held no member, and
  ``_worker_done`` gives its slot back.
- Every task started here (workers and the instant lane) is in ``workers`` until it ends (a
  worker leaving normally removes itself as its body returns), with ``_worker_done`` as its
  done callback; the group joins them all before it ends. A worker or the lane cancelled by
  anyone but the group's own stop stops the group (``_cancelled_from_outside``).
- A cache hit or a replay takes no worker slot: the instant lane runs them one after
  another, outside the limit, and never waits for the global limit.
- The one exception to the liveness rule, brief and on purpose: while a replay waits in the
  instant lane (``replays``), or a member's lent slot is due back (``returning``), no worker
  takes a ready member, and none starts; whoever clears the last of them kicks the pool.
- For a group that keeps no results, pulling the ``map()`` input waits while twice the limit
  of results are unread, so memory stays O(max_workers) however long the input.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
from collections import deque
from contextvars import copy_context
from dataclasses import dataclass
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from rh_agents.core.context import (
    ADDRESS_SEPARATOR,
    Frame,
    InContext,
    context_changed,
    enter_frame,
    exit_frame,
)
from rh_agents.core.parallel.member import describe_member, is_event_call, reused_coroutine
from rh_agents.core.parallel.ready import ReadyQueue
from rh_agents.core.parallel.running import returned_result
from rh_agents.core.parallel.slots import MemberSlot, SlotArbiter
from rh_agents.core.parallel.strategy import GroupStatus
from rh_agents.core.results import ExecutionResult, ResultStatus
from rh_agents.errors import ActorInputError, InvalidMemberError

if TYPE_CHECKING:
    from contextvars import Token

    from rh_agents.core.parallel.lazy_source import LazySource, Pulled
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member
    from rh_agents.resilience.adaptive import AdaptiveLimit

__all__ = ["EAGER_WORKERS", "PoolStatistics", "WorkerPool"]

# Python 3.12+ starts tasks eagerly: a worker started from spawn runs its first member at once
# instead of a loop turn later, and gather() starts the first workers without waiting for
# that turn (see kick, spawn and the group's _wait_all).
EAGER_WORKERS = sys.version_info >= (3, 12)
# Workers started at once for a lazy input of unknown length (more follow, doubling, while it
# still yields items): an input shorter than this pays for a few idle tasks at most.
_LAZY_START = 64
# A pool lets the event loop run at least once per this many members run in one loop turn
# (or twice its limit, if more), whichever workers ran them (see _turn_is_full).
_YIELD_EVERY = 256
# A group hands its synchronous subscribers their records every this many finished members
# (see EventBus.deliver_pending): records left queued for a whole loop turn, one where a
# thousand members finish, outlive a garbage-collector generation and cost more than their
# handling does.
_DELIVER_EVERY = 128


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A frozen snapshot of a worker pool: its limit, the slots held, tasks waiting to take
    one back, worker tasks, members holding a slot (``running``: not those that lent theirs,
    in a retry backoff say) and waiting for a worker, the most members ever running at once,
    and cache hits and replays waiting for the instant lane (``cache_hits_queued``)."""

    limit: int
    slots_in_use: int
    waiting_for_slot: int
    workers: int
    running: int
    queued: int
    high_water: int
    cache_hits_queued: int


class WorkerPool:
    """One group's workers and slots; see the module docstring."""

    __slots__ = (
        "_check_at",
        "_deliver_at",
        "_group",
        "_spawn_pending",
        "_streak",
        "_turn_ending",
        "_yield_at",
        "context",
        "group_slot",
        "high_water",
        "instant",
        "instant_task",
        "plain",
        "ready",
        "replays",
        "returning",
        "running",
        "slots",
        "unstarted",
        "workers",
    )

    def __init__(self, group: ParallelExecutionManager[Any], limit: int | AdaptiveLimit) -> None:
        self._group = group
        self.ready = ReadyQueue()
        self.instant: deque[Member] = deque()  # cache hits and replays for the instant lane
        # The indexes of the replays among them: while any waits, no worker takes a member
        # (see answered_at_once).
        self.replays: set[int] = set()
        # Members whose lent slot is due back (what they waited for is done: see
        # MemberSlot.returning_after): they take it before any new member starts.
        self.returning = 0
        self.instant_task: asyncio.Task[None] | None = None
        self.workers: set[asyncio.Task[None]] = set()
        self.running: dict[asyncio.Task[None], Member] = {}
        self.unstarted: set[asyncio.Task[None]] = set()
        # The one arbiter of this group's slots; a slot freed with no task waiting for it
        # goes to ready members (kick).
        self.slots = SlotArbiter(limit, self.kick)
        # Shared by the members when there is no global limit (see the group's _run_member).
        self.group_slot = MemberSlot(self)
        self.high_water = 0
        self._spawn_pending = False  # a spawn is scheduled for the loop's next turn
        self._deliver_at = _DELIVER_EVERY
        self._streak = 0  # members run (by any worker) in this loop turn, roughly
        self._turn_ending = False  # _next_turn is scheduled
        self._yield_at = max(_YIELD_EVERY, 2 * self.slots.limit)
        self._check_at = self._yield_at // 2  # when _turn_is_full needs to look
        # Set as the group is entered: no policy applies, members run directly; and the
        # context of the task that opened the block (each worker runs in a copy of it).
        self.plain = False
        self.context = contextvars.copy_context()

    @property
    def group(self) -> ParallelExecutionManager[Any]:
        """The group this pool runs the members of."""
        return self._group

    @property
    def global_slots(self) -> SlotArbiter | None:
        """The state's global limit, if it has one."""
        return self._group.execution_state.global_slots

    def member_of(self, task: asyncio.Task[Any]) -> Member | None:
        """The member ``task`` (a worker) is running now, if any."""
        return self.running.get(task)

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool."""
        slots = self.slots
        return PoolStatistics(
            limit=slots.limit,
            slots_in_use=slots.in_use,
            waiting_for_slot=slots.waiting,
            workers=len(self.workers),
            running=self.holding(),
            queued=len(self.ready),
            high_water=self.high_water,
            cache_hits_queued=len(self.instant),
        )

    def holding(self) -> int:
        """Members holding a slot of the group now: those running, less those that lent
        theirs (a retry backoff, a wait for a call another member runs) and have not taken it
        back yet (so never more than the limit)."""
        holding = len(self.running)
        for member in self.running.values():
            slot = member.slot
            joins = slot._joins if type(slot) is MemberSlot else None
            if joins and member.index in joins:
                holding -= 1
        return holding

    def note_held(self) -> None:
        """A member took its slot back: count it towards the high-water mark."""
        held = self.slots._in_use - len(self.unstarted)
        if held > self.high_water:
            self.high_water = held

    def cancel_all(self) -> None:
        """Cancel every task of the pool but the caller's own (the group stops)."""
        current = asyncio.current_task()
        for task in list(self.running):
            if task is not current:
                task.cancel()
        for task in self.workers:  # workers between members or pulling the lazy input
            if task is not current and task not in self.running:
                task.cancel()

    # --- starting workers -------------------------------------------------------------------

    def kick(self) -> None:
        """See that ready members get workers while slots are free.

        With no worker running, one starts at once. Otherwise more are started at the event
        loop's next turn (``spawn``), and only if members are still waiting then: members
        that finish without ever suspending are thus all run by the worker already there,
        instead of paying for a task each, while members that wait get their workers one
        loop turn later.

        A worker chooses its member only when it first runs, so members added in one go are
        started by priority, not by the order of the add() calls.
        """
        if self._group._stop_status is not None or self.unstarted or self._spawn_pending:
            return
        slots = self.slots
        if slots._in_use == 0:
            if self._has_work():
                if EAGER_WORKERS:
                    # At the loop's next turn too, but then started eagerly (see spawn);
                    # gather() does not wait for that turn.
                    self._spawn_pending = True
                    asyncio.get_running_loop().call_soon(self.spawn)
                else:
                    self._start_worker()
        elif self._has_work() and slots._in_use < slots.limit and not slots._waiters:
            self._spawn_pending = True
            asyncio.get_running_loop().call_soon(self.spawn)

    # Members that never suspend would hold the event loop for as long as there are members:
    # the pool lets it run once at least every _yield_at members run in one loop turn,
    # counted for the whole pool (workers started together would otherwise each run their
    # share in that one turn). Knowing where a turn ends costs a callback, scheduled only
    # once half of that many ran since the last one: members that suspend, one per worker
    # per turn, never fill a turn, since _yield_at is at least twice the limit.

    def _turn_is_full(self, streak: int) -> bool:
        """Whether the worker that just ran the ``streak``-th member should yield."""
        if not self._turn_ending:
            # Half-way: learn where this turn ends (_next_turn runs before any worker that
            # yields now resumes).
            self._turn_ending = True
            self._check_at = self._yield_at
            asyncio.get_running_loop().call_soon(self._next_turn)
        return streak >= self._yield_at

    def _next_turn(self) -> None:
        self._streak = 0
        self._turn_ending = False
        self._yield_at = max(_YIELD_EVERY, 2 * self.slots.limit)  # (an adaptive limit moves)
        self._check_at = self._yield_at // 2

    def start_all(self) -> None:
        """No more members will come (the group is read): start the workers its ready members
        need now, rather than one now and the others at the loop's next turn.

        ``kick`` starts one worker and waits a turn to see whether members suspend at all
        (members that never do all run on that one worker); once the group is sealed, the
        members that are ready are all there is, and a turn spent waiting is a turn lost.
        """
        if EAGER_WORKERS:
            if self._spawn_pending:
                self.spawn()  # each worker runs its member up to its first wait, right here
            return
        group = self._group
        slots = self.slots
        if group._stop_status is not None or group._source is not None or slots._waiters:
            return  # (a lazy input's workers are started as it is read)
        if self.replays or self.returning:
            return  # (see _has_work)
        # Each worker not started yet will take one of the ready members.
        wanted = min(len(self.ready) - len(self.unstarted), slots.limit - slots._in_use)
        for _ in range(wanted):
            self._start_worker()

    def _has_work(self) -> bool:
        if self.replays or self.returning:
            # (The instant lane kicks the pool once they are answered, a member that took
            # its slot back once the last is back.)
            return False
        source = self._group._source
        return bool(self.ready) or (source is not None and not source.exhausted)

    def spawn(self) -> None:
        """Start a worker for each member still waiting, up to the free slots."""
        self._spawn_pending = False
        if self._group._stop_status is not None:
            return
        source = self._group._source
        # A lazy input's length is unknown: then fill every free slot.
        lazy = source is not None and not source.exhausted
        slots = self.slots
        limit = slots.limit
        if slots._waiters:
            return  # tasks waiting to take a slot back go first (they hold the free ones)
        if not EAGER_WORKERS:
            # A lazy input's length is unknown: every free slot up to _LAZY_START workers,
            # then as many new ones as there are (doubling each turn that still finds
            # items), never `limit` at once (max_workers=10**6 over a two-item input made a
            # million tasks). Each new worker asks for the next spawn as it takes its first
            # item (see _worker's kick).
            wanted = max(_LAZY_START, len(self.workers)) if lazy else len(self.ready)
            for _ in range(min(wanted, limit - slots._in_use)):
                self._start_worker()
            return
        # Each worker runs its first member right here, up to that member's first wait: the
        # next one is started only if members are still waiting then and this one waits in
        # its member (members that never wait all run on the first, which lets the loop run
        # every few hundred). Workers starting now ask for no other spawn: the conditions
        # are checked again after each (a member may have lent its slot back meanwhile).
        self._spawn_pending = True
        try:
            while self._has_work() and slots._in_use < slots.limit and not slots._waiters:
                if self._start_worker(eager=True) not in self.running:
                    break
        finally:
            self._spawn_pending = False

    def _start_worker(self, eager: bool = False) -> asyncio.Task[None]:
        """Start a worker task; ``eager`` (Python 3.12+): its first step runs now, inside this
        call, so only from a loop callback or a wait of the block's own task (never from
        inside another worker's bookkeeping)."""
        self.slots.take_unchecked()  # the callers checked there is room
        # In a copy of the group's own context, never of whatever member's context asked
        # for the worker (a member lending its slot in a backoff): context variables that
        # a member sets for itself must not leak into the members the new worker runs.
        loop = asyncio.get_running_loop()
        if eager:
            # It registers itself in workers as it starts (before this call returns), and
            # does what _worker_done does as it ends: it never is a task not yet started.
            return asyncio.Task(  # type: ignore[call-arg,unused-ignore]
                self._worker(None), loop=loop, context=self.context.copy(), eager_start=True
            )
        # The worker learns its task from this cell, filled before its first step (on 3.11
        # asyncio.current_task() is Python code, about 0.5 us).
        cell: list[asyncio.Task[None]] = []
        task = loop.create_task(self._worker(cell), context=self.context.copy())
        cell.append(task)
        self.workers.add(task)
        self.unstarted.add(task)
        task.add_done_callback(self._worker_done)
        return task

    def _take_next(self) -> Member | None:
        slots = self.slots
        # (The arbiter's fields rather than its limit property: read per member.)
        dynamic = slots._dynamic
        limit = slots._fixed if dynamic is None else dynamic.current
        if (
            self._group._stop_status is not None
            or slots._in_use > limit
            or self.replays
            or self.returning
        ):
            return None
        return self.ready.pop()

    # --- a worker -----------------------------------------------------------------------------

    async def _worker(self, cell: list[asyncio.Task[None]] | None) -> None:
        """Run ready members one after another; ``cell`` holds this worker's task, or is
        ``None`` for a worker started eagerly (it has no done callback)."""
        if cell is None:
            task = asyncio.current_task()
            assert task is not None
        else:
            task = cell[0]
            # Started: from here on this worker's own ``finally`` does what _worker_done
            # would (as an eager worker's does), a loop callback less per worker. The done
            # callback only ever served a worker cancelled before its first step.
            task.remove_done_callback(self._worker_done)
            self.unstarted.discard(task)
        self.workers.add(task)  # (already there, unless started eagerly)
        group = self._group
        running = self.running
        slots = self.slots
        tally = group._tally
        records = group._records
        state = group.execution_state
        bus = state.event_bus
        now = group._now
        group_id = group.group_id
        group_key = group._key
        group_slot = self.group_slot
        completed = ResultStatus.COMPLETED
        # Members with no policy, no timeout and no global limit run right here (see below).
        direct = self.plain and state.global_slots is None and group.member_timeout is None
        handed_over = False
        by_cancel = False  # it ends by a cancellation (see the except below)
        isolated = False  # a member set a context variable here: the next run in a copy
        first = True
        # The token of the first member frame this worker entered: between two members run
        # here the frame stays that of the last one (each member sets its own over it, one
        # contextvar write per member instead of two), and this token restores the worker's
        # own frame before anything else runs here (input pulls, subscribers, the end).
        token: Token[Frame | None] | None = None
        try:
            while True:
                member = self._take_next()
                if member is None:
                    if token is not None:
                        exit_frame(token)
                        token = None
                    source = group._source
                    if (
                        source is None
                        or source.exhausted
                        or group._stop_status is not None
                        or slots._in_use > slots.limit
                    ):
                        break
                    # The input is the block's code: read in its own context (see
                    # LazySource), never a member's, and what it sets reaches no member.
                    if source.async_items is None and (
                        tally.retain or len(tally.unretained) < 2 * slots.limit
                    ):
                        # A plain iterable with room for its results: read it right here.
                        member = source.context.run(self._pull_now, source)
                    else:
                        pulled = await InContext(self._pull(source), source.context)
                        if pulled is None and source.exhausted:
                            group._check_threshold()  # (the member count is final now)
                        member = (
                            None
                            if pulled is None
                            else group._register(
                                functools.partial(pulled[0], pulled[1]), None, 0, None, None
                            )
                        )
                        if member is not None and slots._waiters and slots.pass_on():
                            # While this worker waited for the input, a member came back
                            # from its backoff and waits for a slot: it has started, so it
                            # goes first (as after any member); the item waits its turn.
                            self.ready.push(member)
                            handed_over = True
                            return
                    if member is None:
                        break
                if first:
                    first = False
                    self.kick()  # more workers, should this member wait (see kick)
                running[task] = member
                # The high-water mark counts slots held by members (not idle workers).
                held = slots._in_use - len(self.unstarted)
                if held > self.high_water:
                    self.high_water = held
                if isolated and member.context is None:
                    # (See below: this worker's context holds a value an earlier member set.)
                    member.context = self.context.copy()
                if (
                    direct
                    and member.retry is None
                    and member.timeout is None
                    and member.context is None
                ):
                    # The group's _run_member, plain case, inline: no coroutine of our own
                    # per member and one frame less on every resumption of it (every
                    # member's hot path).
                    index = member.index
                    address = member.address = f"{group_id}[{index}]"
                    if group_key is not None:
                        member.key = f"{group_key}[{index}]"
                    member.state = state  # the member is its own frame (see Member)
                    member.group_id = group_id
                    member.slot = group_slot
                    entered = enter_frame(member)
                    if token is None:
                        token = entered
                    before = copy_context()  # (one pointer: compared after the member)
                    started = member.started = now()
                    if bus.version != records.bus_version:
                        records.listen()
                    if records.starts_wanted:
                        # (records.started, inline; no local kept: a worker's local would
                        # hold the batch, and every member in it, until its next member.)
                        if not records.batch:
                            bus.defer(records, records)
                        records.batch.append(member)
                    result: ExecutionResult[Any]
                    try:
                        run = member.source
                        if type(run) is not CoroutineType:
                            run = member.open()  # calls a function: nothing calls it again
                        elif run.cr_frame is None or run.cr_await is not None:
                            run = reused_coroutine(member, run)  # (started already)
                        member.source = None  # runs once
                        value = await run
                    except asyncio.CancelledError:
                        cancelled = group._cancelled_result(member, started)
                        if cancelled is None:
                            raise  # not a cancellation of ours: recorded, and it goes on
                        result = cancelled
                    except Exception as exc:
                        result = group._failed_result(member, exc, started, address)
                    except BaseException as exc:  # KeyboardInterrupt, SystemExit...
                        # Its one result all the same; the group stops and raises it.
                        result = group._failed_result(member, exc, started, address)
                        group._member_raised_base(result)
                    else:
                        if isinstance(value, ExecutionResult):
                            result = returned_result(value, group_id, index)
                        else:
                            # Positional: keyword parsing costs more than the object.
                            result = ExecutionResult(
                                True,
                                value,
                                None,
                                None,
                                now() - started,
                                completed,
                                None,
                                None,
                                address,
                            )
                    if member.result is None:
                        group._finish(member, result)
                    if group_slot._joins:
                        # A task of its own still waits with the member's slot lent: the
                        # slot is counted back, this worker holding it on.
                        group_slot.member_ended(index)
                    # Each member sees the block's context variables, as a task of its own
                    # would, never what an earlier member set (a logging library's bound
                    # request id; decimal's context, made on first use): once a member has set
                    # one in this worker's context, the members after it here each run in a
                    # fresh copy of the block's (see running.run_member).
                    isolated = context_changed(before)
                else:
                    if token is not None:
                        exit_frame(token)
                        token = None
                    seen = None if isolated else copy_context()
                    try:
                        await group._run_member(member)
                    except GeneratorExit:
                        # A member awaited a future whose exception is a GeneratorExit (a
                        # thread's or an executor's): the task throws it in here, and the
                        # interpreter then closes the coroutines below instead of raising it in
                        # them, so the member's run records a GeneratorExit of the close and
                        # stops the group (see running.run_member), and this one is left over.
                        # The worker ends; nothing is lost. (The same when the worker itself is
                        # being closed: a coroutine may end normally then.)
                        return
                    if seen is not None:
                        isolated = context_changed(seen)
                del running[task]
                if tally.done >= self._deliver_at:
                    if token is not None:
                        exit_frame(token)
                        token = None
                    # Subscribers get what is queued now, not after every other worker's
                    # members of this loop turn (see _DELIVER_EVERY).
                    self._deliver_at = tally.done + _DELIVER_EVERY
                    bus.deliver_pending()
                streak = self._streak = self._streak + 1
                if streak >= self._check_at and self._turn_is_full(streak):
                    # Members that never suspend would otherwise hold the event loop for the
                    # whole group: let other tasks (subscribers, live displays, timers) run.
                    await asyncio.sleep(0)
                if slots._waiters and slots.pass_on():
                    # A member that lent its slot wants it back: it has ours, and we stop.
                    handed_over = True
                    return
        except asyncio.CancelledError:
            # Ending by a cancellation: its group's stop (then _stop_status is set), or
            # someone else's (see _cancelled_from_outside). A member's own CancelledError
            # never gets here (its run records it), nor does a cancel request the member
            # left pending and swallowed (task.cancelling() alone would count those: 3.11's
            # TaskGroup leaves one after a late child failure).
            by_cancel = True
            raise
        except Exception as exc:
            state.report_internal_error(exc)  # a bug in the scheduler
        finally:
            # Off its group's loop, the worker is being closed by the garbage collector (its
            # loop was closed with it pending): its context, slot and group went with that
            # loop, and nothing here could run there.
            if asyncio._get_running_loop() is group._loop:
                self._leave(task, token, handed_over, by_cancel)

    def _leave(
        self,
        task: asyncio.Task[None],
        token: Token[Frame | None] | None,
        handed_over: bool,
        cancelled: bool = False,
    ) -> None:
        """A worker ends (normally, handing its slot over, or cancelled)."""
        if token is not None:
            exit_frame(token)
        self.running.pop(task, None)
        group = self._group
        if cancelled and group._stop_status is None:
            self._cancelled_from_outside()
        if not handed_over:
            # To a task waiting for a slot, else to ready members (via kick).
            try:
                self.slots.release()
            except Exception as exc:  # a bug in the slots' accounting: the worker still
                # leaves the pool below, or the group would wait for it for ever
                self._group.execution_state.report_internal_error(exc)
        # Nothing runs in this task any more, so the group may end now rather than a loop
        # turn later, in a done callback.
        self.workers.discard(task)
        group._readers.result_landed()
        group._check_all_done()

    def _cancelled_from_outside(self) -> None:
        """A worker's task was cancelled by someone other than its group (asyncio.run
        cancelling every task as it shuts down, a shutdown handler's ``all_tasks()`` loop):
        the group is cancelled with it. Were it not, the slot the worker frees would start
        another worker, made after the canceller took its list of tasks (at a shutdown,
        destroyed pending), and the members still waiting would never be closed."""
        self._group._stop(ResultStatus.CANCELLED, GroupStatus.CANCELLED)

    def _pull_now(self, source: LazySource) -> Member | None:
        """The next member of a plain iterable ``map()`` input, read without awaiting.

        With no policy to re-run it, the member is the call's coroutine itself (made now, as
        a worker is about to run it); otherwise a callable, which a retry can call again.
        """
        group = self._group
        try:
            item = next(source.items)
        except StopIteration:
            source.exhausted = True
            group._check_threshold()  # (the member count is final now)
            return None
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # (a KeyboardInterrupt too: it stops the group)
            group._input_failed(source, exc)
            return None
        call = source.call
        if not (self.plain and group.retry is None):
            return group._register(functools.partial(call, item), None, 0, None, None)
        try:
            made: Any = call(item)
        except Exception as exc:  # the member fails with it, as if it had raised when run
            made = functools.partial(_raise, exc)
        else:
            if type(made) is not CoroutineType and not inspect.isawaitable(made):
                made = functools.partial(
                    _raise,
                    InvalidMemberError(
                        f"map() called {describe_member(call)}, which returned "
                        f"{type(made).__name__}, not an awaitable; give it an async function"
                    ),
                )
        return group._register(made, None, 0, None, None)

    async def _pull(self, source: LazySource) -> Pulled | None:
        """The next item of the map() input; an error of the input stops the group."""
        group = self._group
        tally = group._tally
        if not tally.retain:
            # Backpressure towards the stream's reader: results not yet read are bounded by
            # twice the limit, so memory stays O(max_workers) however long the input.
            while len(tally.unretained) >= 2 * self.slots.limit and group._stop_status is None:
                await asyncio.shield(group._readers.room())
            if group._stop_status is not None:
                return None
        try:
            pulled = await source.next_item()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # (a KeyboardInterrupt too: it stops the group)
            group._input_failed(source, exc)
            return None
        if group._stop_status is not None:
            # Stopped while the input was read (an input that swallowed the cancellation
            # of its read and gave an item anyway): no member starts once its group stopped.
            return None
        return pulled

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        """A done callback: of a worker cancelled before its first step (a started one
        drops it), and of the instant lane."""
        self.workers.discard(task)
        if task is self.instant_task:
            self.instant_task = None  # (cancelled before its first step: no finally ran)
        if task.cancelled() and self._group._stop_status is None:
            self._cancelled_from_outside()  # (it stops the group: see there)
        if task in self.unstarted:
            # Cancelled before its first step: the worker body never ran, nor took a member.
            self.unstarted.discard(task)
            self.slots.release()
        group = self._group
        if not task.cancelled() and task.exception() is not None:  # a bug in the scheduler
            group.execution_state.report_internal_error(task.exception())
        # A worker that leaves may be the one that found the lazy input exhausted, after the
        # last result: a reader waiting for more must learn that nothing more will come.
        group._readers.result_landed()
        group._check_all_done()

    # --- the instant lane: members answered without running, run without a worker slot ------

    def answered_at_once(self, member: Member) -> bool:
        """Whether ``member`` is an event call answered without running its handler: a
        result the state's cache already holds, or one the resumed run replays.

        Such members go to the instant lane, without a worker slot. Replays go first: while
        one waits there, no worker takes a member, so that on a resume a quorum or a failure
        among the stored results stops the group before the members still to run start
        (they would be cancelled at once, their handlers' work lost)."""
        source = member.source
        if not is_event_call(source):
            return False
        state = self._group.execution_state
        if source.state is not state:
            return False
        event = source.event
        actor = event.actor
        recovery = state.recovery
        if recovery is not None and recovery.can_replay:
            # The address the call will have: the first child of its member's frame.
            group = self._group
            address = (
                f"{group._key or group.group_id}[{member.index}]{ADDRESS_SEPARATOR}"
                f"{event.tag or actor.name}"
            )
            if recovery.replays(address, actor, source.input):
                self.replays.add(member.index)
                return True
        cache = state.cache
        if cache is None or not actor.cacheable:
            return False
        try:
            validated = actor.validate_input(source.input)
        except ActorInputError:
            return False  # the call itself reports the bad input
        held: bool = cache.holds(actor, validated)
        return held

    def run_at_once(self, member: Member) -> None:
        """Queue ``member`` (``answered_at_once``) for the instant lane (started if need be)."""
        self.instant.append(member)
        if self.instant_task is None and self._group._stop_status is None:
            task = asyncio.get_running_loop().create_task(
                self._instant_lane(), context=self.context.copy()
            )
            if task.done():
                # An eager task factory ran the lane to its end in create_task: what its
                # done callback would do (an error of the lane is reported).
                self._worker_done(task)
                return
            self.instant_task = task  # (an eager lane that suspended set it already)
            self.workers.add(task)  # owned like a worker: joined before the group ends
            task.add_done_callback(self._worker_done)

    async def _instant_lane(self) -> None:
        """Run cache hits and replays one after another; they never wait for a handler or a
        slot."""
        task = asyncio.current_task()
        assert task is not None
        self.instant_task = task  # (set here too: an eager task factory runs this at once)
        group = self._group
        streak = 0
        try:
            while self.instant and group._stop_status is None:
                streak += 1
                if streak > _YIELD_EVERY:
                    # Thousands of replays (a big resumed group) or cache hits are answered
                    # without waiting: let the loop run between chunks of them, as workers do.
                    streak = 0
                    await asyncio.sleep(0)
                    if not self.instant or group._stop_status is not None:
                        break
                member = self.instant.popleft()
                if self.replays:
                    self.replays.discard(member.index)
                    if not self.replays:
                        # The members to run get their workers, from the loop's next turn
                        # (kick starts none in this step): the replay below lands first.
                        # (Taken off before it runs: a replay that turns out to run after
                        # all, its input changed since, holds no worker back.)
                        self.kick()
                self.running[task] = member
                await group._run_member(member, holds_slot=False)
                del self.running[task]
        except asyncio.CancelledError:
            if group._stop_status is None:
                self._cancelled_from_outside()  # (see there; it finishes the members left)
            raise
        finally:
            self.running.pop(task, None)
            self.instant_task = None
            if self.replays:  # (stopped, or cancelled: nothing waits for them any more)
                self.replays.clear()
                self.kick()


def _raise(exc: Exception) -> Any:
    raise exc
