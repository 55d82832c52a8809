"""Slots: ``SlotArbiter`` hands out the slots of one limit; ``MemberSlot`` is what a member holds.

There is one arbiter per limit: one for each group's ``max_workers`` and one for the state's
``global_max_workers``. Whoever wants a slot of that limit waits in that arbiter, and nowhere
else: a member coming back from a retry backoff, a member coming back from waiting on its own
nested group, a group's member waiting for the global limit. A group's ready members (members
that have no task yet) are the arbiter's other kind of waiter: when a slot frees and no task
waits for it, the arbiter calls the group back (``on_free``) to start a worker for them::

    pool = SlotArbiter(10)
    await pool.acquire()
    try:
        ...
    finally:
        pool.release()

The liveness rule, enforced by ``release`` and ``limit_changed`` below: **a slot is never idle
while anyone waits for it.** Equivalently, at every moment between two steps of the loop:

- ``waiting > 0`` implies ``in_use >= limit`` (a task waits only while every slot is held);
- a released slot goes straight to the oldest task waiting (``in_use`` stays the same), so a
  task that releases and re-acquires cannot overtake tasks already waiting; only with no task
  waiting does ``in_use`` drop, and then ``on_free`` gives the slot to ready members.

A ``MemberSlot`` lets a running member lend its slots back while it only waits (a retry
backoff lends both; a wait on its own nested group lends the global one) and take them back
through the same arbiters before it works again, so waiting never holds capacity and nested
groups cannot deadlock on the global limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from rh_agents.core.context import running_frame
from rh_agents.core.deadlines import member_ending
from rh_agents.errors import ConfigurationError

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.scheduler import WorkerPool

__all__ = [
    "MemberSlot",
    "SharedCallSlot",
    "SlotArbiter",
    "SlotReturn",
    "in_own_task",
    "member_slot_of",
    "wait_lending",
]

T = TypeVar("T")


class SlotArbiter:
    """At most ``limit`` holders at once, and no slot idle while someone waits for one.

    ``limit`` is an int, or an object whose ``current`` is read each time (an adaptive limit;
    call ``limit_changed()`` when it grows). ``on_free`` is called when a slot is freed with no
    task waiting for it (a group starts a worker for its ready members there).
    """

    __slots__ = ("_dynamic", "_fixed", "_in_use", "_on_free", "_waiters", "high_water")

    def __init__(self, limit: int | Any, on_free: Callable[[], None] | None = None) -> None:
        if hasattr(limit, "current"):
            self._dynamic: Any = limit
            self._fixed = 0
        else:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                # (A group's max_workers is checked before it gets here: this is the state's.)
                raise ConfigurationError(
                    f"a worker limit (global_max_workers) must be an int >= 1, got {limit!r}"
                )
            self._dynamic = None
            self._fixed = limit
        self._on_free = on_free
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.high_water = 0

    @property
    def limit(self) -> int:
        dynamic = self._dynamic
        return self._fixed if dynamic is None else int(dynamic.current)

    @property
    def in_use(self) -> int:
        """Slots held now (by tasks, or by workers about to take a ready member)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Tasks waiting in ``acquire`` for a slot."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for it (never overtakes a waiter)."""
        if self._in_use < self.limit and not self._waiters:
            self._take()
            return True
        return False

    def take_unchecked(self) -> None:
        """Count a slot taken by a decision made elsewhere (a group starting its workers)."""
        self._take()

    def _take(self) -> None:
        in_use = self._in_use = self._in_use + 1
        if in_use > self.high_water:
            self.high_water = in_use

    async def acquire(self, *, count_if_cancelled: bool = False) -> None:
        """Wait for a slot: the oldest waiter gets the next one released.

        ``count_if_cancelled``: if the wait is cancelled before a slot is handed over, count
        one anyway. A worker uses it when its member takes its group slot back: the worker's
        own exit releases one slot, whatever happened to the member, so the count stays
        balanced (for that moment the count may pass the limit; nothing runs under it).
        """
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just as we were cancelled.
                if not count_if_cancelled:
                    self.release()  # pass it on: someone else may be waiting
            else:
                # Cancelled while waiting. ``release`` may already have dropped this
                # (cancelled, so done) future from the queue while skipping it.
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
                if count_if_cancelled:
                    self._take()
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest waiting task, else to ready work (``on_free``)."""
        # The liveness rule lives here: while the limit has room for this slot and a task
        # waits, the slot is handed over without ever being free.
        if self._in_use <= self.limit:
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():  # skip a waiter cancelled meanwhile
                    waiter.set_result(None)
                    return
        # Nobody waits (or the limit shrank under the slots in use: this slot retires).
        self._in_use -= 1
        assert self._in_use >= 0, "SlotArbiter released more often than acquired"
        if self._on_free is not None:
            self._on_free()

    def pass_on(self) -> bool:
        """Hand the caller's slot to a waiting task if there is one; whether it was handed.

        For a worker between two members: a task waiting to take its slot back goes before
        the next ready member, since it has started already. A slot over the limit (the limit
        shrank, or a worker counted one while its member was cancelled) is never handed on:
        the caller then releases it, which retires it.
        """
        if self._in_use > self.limit:
            return False
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def limit_changed(self) -> None:
        """The limit grew: hand the new slots to waiting tasks, then to ready work."""
        waiters = self._waiters
        while waiters and self._in_use < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)
        if self._in_use < self.limit and self._on_free is not None:
            self._on_free()


class SlotReturn:
    """See ``MemberSlot.returning_after``: counted in its pool's ``returning`` from ``due``
    to ``end``."""

    __slots__ = ("_counted", "_ended", "pool")

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._counted = False
        self._ended = False

    def due(self, _done: object = None) -> None:
        if not self._ended and not self._counted:
            self._counted = True
            self.pool.returning += 1

    def end(self) -> None:
        self._ended = True
        if self._counted:
            self._counted = False
            pool = self.pool
            pool.returning -= 1
            if not pool.returning:
                pool.kick()  # the ready members held back get their workers


class MemberSlot:
    """The slots a running member holds: one of its group, maybe one of the global limit.

    A member can lend them back while it only waits (a retry backoff, a nested group) and
    reclaim them afterwards, through the same arbiters as everyone else.

    Invariants: ``_waits`` counts the waits on groups under way in this member (its own task
    or tasks of its own: ``asyncio.gather(g1.gather(), g2.gather())``); the first lends the
    global slot (``_waits_lent``) and the last to end takes it back, so two waits at once
    lend it once and never take it back while the other still waits. Once the member has
    ended (``ended``), nothing takes a global slot for it any more: a wait that outlives it
    (a reader in another task) has nothing to take back.
    """

    __slots__ = (
        "_joins",
        "_taking_back",
        "_waits",
        "_waits_lent",
        "ended",
        "global_held",
        "pool",
    )

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool  # the worker pool of the member's group
        self.global_held = False
        self.ended = False
        self._waits = 0
        self._waits_lent = False
        self._joins: dict[int | None, int] | None = None  # (see begin_join)
        # Members whose join account is settling (see end_join); made on first use.
        self._taking_back: set[int | None] | None = None

    @property
    def group(self) -> ParallelExecutionManager[Any]:
        """The group of the member that holds this slot."""
        return self.pool.group

    @property
    def plain(self) -> bool:
        """Whether the member's group runs its members directly (no policy applies)."""
        return self.pool.plain

    def lend_global(self) -> bool:
        pool = self.pool.global_slots
        if pool is None or not self.global_held:
            return False
        self.global_held = False
        pool.release()
        return True

    async def reclaim_global(self) -> None:
        pool = self.pool.global_slots
        if pool is None or self.global_held or self.ended:
            return
        await pool.acquire()
        if self.ended or self.global_held:
            # The member ended meanwhile (it has no use for the slot), or another of its
            # tasks took one back first (a member holds one global slot, never two).
            pool.release()
            return
        self.global_held = True

    async def reclaim_global_after_token(self) -> None:
        """The member's own task got its rate-limit token: it takes its global slot back,
        unless a wait on a group (a task of its own) still goes on, whose it is then to
        take back as it ends."""
        if self._waits:
            self._waits_lent = self._waits_lent or not self.global_held
            return
        if self._joins:
            return  # the group slot's lender takes both back, the group's first
        await self.reclaim_global()
        self._lend_again()

    def _lend_again(self) -> None:
        """The global slot was just taken back: give it out again to a lender that began
        while it was being taken (it found nothing to lend). A wait on a group keeps it
        until it ends; a lender of the group slot takes it back after the group slot."""
        if not self.global_held:
            return
        if self._waits:
            self._waits_lent = self.lend_global() or self._waits_lent
        elif self._joins:
            self.lend_global()

    def begin_wait(self) -> None:
        """A wait on a group begins in this member: the first of its waits lends the global
        slot, which the member does not use while it only waits (this is what keeps nested
        groups from deadlocking on the global limit)."""
        self._waits += 1
        if self._waits == 1 and not self._waits_lent:
            self._waits_lent = self.lend_global()

    async def end_wait(self) -> None:
        """A wait begun by ``begin_wait`` ended: the last one takes the global slot back."""
        self._waits -= 1
        if self._waits == 0 and self._waits_lent:
            await self._take_back_lent()

    def end_wait_cancelled(self) -> None:
        """A wait begun by ``begin_wait`` was cancelled: the global slot stays lent (the
        group's members may hold every slot until its block is left and they are stopped, so
        waiting for one here could wait forever). The slot is then owed (``owes``): taken
        back by ``take_back`` as the member reads again or leaves a block."""
        self._waits -= 1

    @property
    def owes(self) -> bool:
        """Whether a cancelled wait left the global slot lent, and no wait still lends it."""
        return self._waits == 0 and self._waits_lent

    async def take_back(self) -> None:
        """Take back the global slot a cancelled wait left lent (unless a wait under way
        still lends it: that one takes it back as it ends)."""
        if self.owes:
            await self._take_back_lent()

    async def _take_back_lent(self) -> None:
        if self._joins:
            # The group slot is lent too (a join, a backoff): its lender takes both back,
            # the group's first (see reclaim); taking the global one now would wait for it
            # without the group slot, the one order that can deadlock.
            return
        self._waits_lent = False
        try:
            await self.reclaim_global()
        except asyncio.CancelledError:
            if not self.global_held:
                self._waits_lent = True  # still owed: cut short, it took nothing back
            raise
        self._lend_again()

    def lend(self) -> None:
        """Give back the group slot (and the global one) while this member only waits."""
        self.lend_global()
        self.pool.slots.release()

    # Everything that lends a member's group slot (a retry backoff of its own task, its
    # tasks' waits for calls other members run) is counted per member: the first lends the
    # slots, the last takes them back (two lenders of one member released its one group
    # slot twice). Keyed by the member's index: without a global limit, the members of a
    # group share one MemberSlot. A member that ends with its slots lent counts its group
    # slot back (its worker releases one as it leaves) and its lenders take nothing back.

    def begin_join(self, index: int | None) -> bool:
        """A task of member ``index`` begins to wait without working (a backoff, a call
        another member runs); whether it counts (``False``: the member has ended, and has
        no slot to lend)."""
        if self.ended or not any(m.index == index for m in self.pool.running.values()):
            return False
        joins = self._joins
        if joins is None:
            joins = self._joins = {}
        count = joins.get(index)
        joins[index] = (count or 0) + 1
        if count is None:  # (0: lent still, being taken back; see end_join)
            self.lend()
        return True

    async def end_join(self, index: int | None, *, cancelled: bool) -> None:
        """A wait begun by ``begin_join`` ended: the member's last one takes its slots back
        (a member being stopped for good counts its group slot back, and waits for none)."""
        joins = self._joins
        if joins is None or index not in joins:
            return  # the member ended meanwhile (see member_ended): nothing to take back
        count = joins[index] - 1
        joins[index] = count
        if count:
            return
        taking_back = self._taking_back
        if taking_back is None:
            taking_back = self._taking_back = set()
        elif index in taking_back:
            return  # a take-back under way ends the account (see below)
        if cancelled and member_ending(self.group):
            del joins[index]
            self.take_back_ending()  # ending: not held up by a slot someone else holds
            return
        # Lent still, being taken back (count 0): a lender beginning meanwhile finds it lent
        # (and lends nothing twice, nor starts a take-back of its own), and a member ending
        # meanwhile finds it to count back.
        taking_back.add(index)
        try:
            await self.reclaim()  # (its group slot counted even if this is cancelled)
        finally:
            taking_back.discard(index)
            now = joins.get(index)
            if now is None:
                # The member ended while this took its slots back: they are no longer its
                # (its group slot was counted back for its worker's release).
                self.pool.slots.release()
            elif now == 0:
                del joins[index]
            else:
                self.lend()  # a lender began while the slots came back: lent again

    @asynccontextmanager
    async def lent(self, index: int | None) -> AsyncIterator[None]:
        """Member ``index``'s slots lent for the block (``begin_join``/``end_join``; nothing
        lent if the member has ended)::

            async with slot.lent(frame.parallel_index):
                await asyncio.sleep(delay)        # a backoff: others run meanwhile
        """
        if not self.begin_join(index):
            yield
            return
        pool = self.pool
        now = pool.group._now
        since = now()
        cancelled = False
        try:
            yield
        except asyncio.CancelledError:
            cancelled = True  # (a stop or a timeout is not held up by a slot)
            raise
        finally:
            try:
                await self.end_join(index, cancelled=cancelled)
            finally:
                # Lent until taken back: the member's worker did no work meanwhile (its
                # group's efficiency leaves the time out). Known for a member its worker
                # runs; one waiting in a task of its own is not found, and not counted.
                member = pool.running.get(asyncio.current_task())  # type: ignore[arg-type]
                if member is not None and member.index == index:
                    member.lent += now() - since

    def returning_after(self, done: asyncio.Future[Any]) -> SlotReturn:
        """A member about to lend its slot while it waits for ``done`` (work another member
        runs: a call the cache shares) will want it back the moment ``done`` completes, and
        before its group starts any new member. Call before awaiting ``done``; ``end()`` the
        returned ticket once the slot is back (or the wait given up), as ``wait_lending``
        does::

            ticket = slot.returning_after(flight)
            try:
                async with slot.lent(index):
                    value = await asyncio.shield(flight)
            finally:
                ticket.end()

        Why: the member running ``done``'s work wakes first, ends, and its worker would give
        its slot to a ready member; the waiting member, woken just after, would then wait
        for a whole member's run (a timeout could end it, its value in hand). From
        ``done``'s completion until ``end()`` the group's workers take no new member, so the
        freed slot is there for it.
        """
        ticket = SlotReturn(self.pool)
        # Registered before the member awaits: this runs before its wake-up, and before the
        # wake-up of the member that ran the work (one more hop away, through a shield).
        done.add_done_callback(ticket.due)
        return ticket

    def member_ended(self, index: int | None) -> None:
        """Member ``index`` ended: if its slots are lent (a task of its own still waits for a
        call, say), its group slot is counted back, for its worker releases one as it leaves,
        and nothing will take them back for it."""
        joins = self._joins
        if joins and joins.pop(index, None) is not None:
            self.take_back_ending()

    def take_back_ending(self) -> None:
        """The member ends while it has its slots lent (its group stops, its timeout): its
        group slot is counted back at once, since its worker's exit releases one (the count
        may pass the limit for that moment; nothing runs under it), and its global slot
        stays lent (it has nothing to release). No wait: a stop is never held up by a slot
        that another group's member holds."""
        self.pool.slots.take_unchecked()

    async def reclaim(self) -> None:
        """Take the slots back before doing work again: the group's first, then the global.

        Holding nothing while waiting for the group slot, and waiting for the global slot
        only while holding a group slot, keeps the order of acquisition one way (group, then
        global) for every member, so two members can never each hold what the other needs.
        """
        pool = self.pool
        await pool.slots.acquire(count_if_cancelled=True)
        pool.note_held()
        if self._waits:
            # A wait on a group still goes on: the global slot stays lent, and is that
            # wait's to take back as it ends.
            self._waits_lent = self._waits_lent or not self.global_held
            return
        self._waits_lent = False  # (a slot owed after a cancelled wait comes back too)
        await self.reclaim_global()
        if self._waits:  # a wait began while the global slot came back: it keeps it lent
            self._lend_again()


class SharedCallSlot:
    """Whose slots a call the cache shares with other callers runs on: those of the member
    whose call started it (``member_slot``), until that member leaves it (``leave()``: its
    timeout, a cancelled group) while the call goes on for the others::

        frame.slot = SharedCallSlot(member_slot)   # the starter's call runs with this
        ...
        slot.leave()                               # the starter leaves; the call goes on

    The call holds the member's slots through its backoffs and its waits for other shared
    calls (see ``engines.policy_runner._lendable`` and ``wait_lending``); a wait on a group
    inside it counts as the member's own until the member leaves (see
    ``gathering.wait_lending``). Not a ``MemberSlot``: nothing lends through it.
    """

    __slots__ = ("_left", "member_slot")

    def __init__(self, member_slot: MemberSlot) -> None:
        self.member_slot = member_slot
        self._left = False

    @property
    def left(self) -> bool:
        """Whether the member left the call (which uses none of its slots since)."""
        return self._left

    def leave(self) -> None:
        """The member leaves while the call goes on."""
        self._left = True


def member_slot_of(slot: object) -> MemberSlot | None:
    """The member a call in a frame with ``slot`` runs for: ``slot`` itself, or the member
    that started a call the cache shares (whose group's policies and executor are still that
    call's); ``None`` outside any member."""
    if isinstance(slot, MemberSlot):
        return slot
    if isinstance(slot, SharedCallSlot):
        return slot.member_slot
    return None


def in_own_task(slot: MemberSlot, parallel_index: int | None) -> bool:
    """Whether the calling task is the worker running member ``parallel_index`` of the
    group ``slot`` belongs to: the member's own task, not a task of its own (whose siblings
    may work meanwhile) nor the instant lane (which holds no slot)."""
    task = asyncio.current_task()
    if task is None or task is slot.pool.instant_task:
        return False
    member = slot.pool.running.get(task)
    return member is not None and member.index == parallel_index


async def wait_lending(done: asyncio.Future[T]) -> T:
    """The outcome of ``done``, work done elsewhere, awaited with the running member's slots
    lent, and taken back first thing once ``done`` completes (``returning_after``).

    For a member that only waits on someone else's work (an identical call already running,
    which the cache shares): holding its slots meanwhile could leave the work it waits for
    without one (the shared call, between two attempts, waits to take a slot back), and
    nobody would ever release it. ``done`` is shielded: a cancelled wait leaves the work
    going. Outside a member, or in a group's instant lane (which holds no slot), it simply
    awaits.
    """
    frame = running_frame()
    slot = frame.slot if frame is not None else None
    # (Inside a call the cache shares, the slot is a SharedCallSlot: the call holds its
    # starter's slots while it waits, as through its backoffs.)
    if not isinstance(slot, MemberSlot) or asyncio.current_task() is slot.pool.instant_task:
        return await asyncio.shield(done)
    assert frame is not None
    ticket = slot.returning_after(done)
    try:
        async with slot.lent(frame.parallel_index):
            return await asyncio.shield(done)
    finally:
        ticket.end()
