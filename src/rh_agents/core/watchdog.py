"""The watchdog: what a run watches while its groups run, at no cost per member.

While a group runs on an event loop, the loop itself runs a beat every ``BEAT_EVERY``
seconds (one timer, ``loop.call_later``): how late each beat runs is the loop's lag, one
value for every group running then, and every ``RESOURCES_EVERY`` seconds the beat reads
the process's memory and open files (``rh_agents.core.resources``).

One thread of the process (``rh_agents watchdog``, a daemon; it sleeps while no group runs)
wakes every ``BEAT_EVERY`` seconds and only reads the time of the loop's next beat. A beat
overdue by more than ``POLL`` means something holds the loop: the thread then looks every
``POLL`` seconds at the task the loop is running and, through the running groups, at the
member that task runs, until the beat runs; a member seen holding the loop longer than
``Watchdog.block_threshold`` is reported (``LoopBlockedWarning``), shorter holds add up per
group, for ``SequentialGroupWarning``.

Why the loop beats and the thread only reads: each time a second thread takes the GIL, the
loop's thread pays for the hand-over (it signals the waiter at every poll of its selector
until the waiter gets in, up to the switch interval), and every system call the thread makes
is one more hand-over. A thread that sent probes and read files itself took the GIL some
twenty times per period and slowed a loop running short groups back to back by 15 to 20 %;
now it takes it once per period while the loop is free.

A group's ``Window`` collects what was seen while it ran; ``Window.usage()`` makes its
``ResourceUsage`` (``GroupMetrics.resources``) when someone reads it. Members pay nothing:
the thread reads the groups' own bookkeeping (which task runs which member). It watches
loops on the real clock only (a test loop on virtual time would see every beat as instant or
as hours late)::

    state = ExecutionState(watchdog=Watchdog(block_threshold=0.25))   # or watchdog=None: off
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rh_agents.core.advice import run_warning
from rh_agents.core.parallel.metrics import Distribution, Durations, ResourceUsage
from rh_agents.core.resources import ResourceSample, read_sample
from rh_agents.errors import ConfigurationError, LoopBlockedWarning

if TYPE_CHECKING:
    from rh_agents.core.parallel.manager import ParallelExecutionManager
    from rh_agents.core.parallel.member import Member

__all__ = [
    "BEAT_EVERY",
    "POLL",
    "RESOURCES_EVERY",
    "LoopMonitor",
    "RunResources",
    "Watchdog",
    "Window",
    "blocked_text",
    "open_window",
]

BEAT_EVERY = 0.025  # seconds between two beats of a watched loop (and two looks at it)
POLL = 0.01  # seconds a beat may be late before the loop counts as held, and between two
# looks at a held loop
LOOK_CREDIT = 0.03  # the most one look credits a member beyond the loop thread's CPU time
RESOURCES_EVERY = 0.05  # seconds between two readings of memory and open files
IDLE_GRACE = 1.0  # seconds a loop stays watched after its last group: back-to-back groups
# then cost no wake-up of the thread each
LAG_SAMPLE = 2048  # lag values a group keeps (a uniform sample past that)

logger = logging.getLogger("rh_agents")

_NO_LAG = Distribution(0, 0.0, 0.0)
_NO_BLOCKS: dict[str, list[float]] = {}  # (shared while empty: never written)
_NO_ADDRESSES: set[str] = set()


@dataclass(frozen=True, slots=True)
class Watchdog:
    """What the watchdog warns about (``ExecutionState(watchdog=...)``; ``None`` turns it off,
    with the resource figures).

    - ``block_threshold``: seconds a member may hold the event loop without awaiting before
      a ``LoopBlockedWarning`` (measured short, never long: by up to ``BEAT_EVERY`` and a
      look, about 40 ms, since a hold counts from when the beat was due);
    - ``sequential_threshold``: a group with ``max_workers > 1`` whose members held the loop
      for at least half of its time, and that took at least this long, gets a
      ``SequentialGroupWarning``: its members ran one at a time.
    """

    block_threshold: float = 0.1
    sequential_threshold: float = 0.5

    def __post_init__(self) -> None:
        for label in ("block_threshold", "sequential_threshold"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"Watchdog {label} must be seconds > 0, got {value!r}")


class Window:
    """What the watchdog saw while one group ran.

    The watchdog thread only appends to ``seen`` (which member held the loop, per look);
    everything else is read and written on the event loop's thread, where ``settle()`` turns
    what was seen into holds: per hold of the loop and member, the time it held it.
    """

    __slots__ = (
        "_usage",
        "blocks",
        "closed",
        "fds_peak",
        "fds_start",
        "group",
        "held",
        "hwm_start",
        "lags",
        "monitor",
        "opened",
        "options",
        "published",
        "rss_peak",
        "rss_start",
        "samples",
        "seen",
    )

    def __init__(
        self,
        monitor: LoopMonitor,
        manager: ParallelExecutionManager[Any],
        options: Watchdog,
        start: ResourceSample | None,
    ) -> None:
        self.monitor = monitor
        # Weakly: a group dropped without ending (a bug its UnusedGroupWarning reports) must
        # still be collected; its window then goes at the next beat.
        self.group = weakref.ref(manager)
        self.options = options
        self.rss_start = self.rss_peak = start.rss if start is not None else None
        self.hwm_start = start.rss_peak if start is not None else None
        self.fds_start = self.fds_peak = start.fds if start is not None else None
        self.samples = 0
        self.lags: Durations | None = None  # made with the first value (most groups get few)
        # (hold number, member, seconds): appended by the watchdog thread, read by settle().
        self.seen: list[tuple[int, Member, float]] = []
        # Members seen holding the loop past the threshold: address -> [times, total, longest]
        self.blocks: dict[str, list[float]] = _NO_BLOCKS
        self.published: set[str] = _NO_ADDRESSES  # the blocks whose RunWarning is out already
        self.held = 0.0  # seconds the loop was seen held by this group's other members
        self._usage: ResourceUsage | None = None
        self.opened = time.perf_counter()
        self.closed: float | None = None

    def add_sample(self, sample: ResourceSample) -> None:
        self.samples += 1
        peak = self.rss_peak
        rss = sample.rss
        if rss is not None and (peak is None or rss > peak):
            peak = rss
        high = sample.rss_peak
        if (
            high is not None
            and (self.hwm_start is None or high > self.hwm_start)
            and (peak is None or high > peak)
        ):
            # The process's own high-water mark rose while the group ran: a spike between
            # two samples still counts.
            peak = high
        self.rss_peak = peak
        fds = sample.fds
        if fds is not None and (self.fds_peak is None or fds > self.fds_peak):
            self.fds_peak = fds

    def add_lag(self, seconds: float) -> None:
        lags = self.lags
        if lags is None:
            lags = self.lags = Durations(LAG_SAMPLE)
        lags.add(seconds)

    def settle(self, *, publish: bool) -> None:
        """Turn what the watchdog saw into holds: a member's time in one hold of the loop;
        one past the threshold is a block (its ``RunWarning`` published now if ``publish``),
        shorter ones add up in ``held``."""
        seen = self.seen
        if not seen:
            return
        self.seen = []
        holds: dict[tuple[int, Member], float] = {}
        for hold, member, seconds in seen:
            key = (hold, member)
            holds[key] = holds.get(key, 0.0) + seconds
        manager = self.group()
        threshold = self.options.block_threshold
        for (_, member), held in holds.items():
            if held < threshold:
                self.held += held
                continue
            group_id = manager.group_id if manager is not None else ""
            address = member.address or f"{group_id}[{member.index}]"
            if self.blocks is _NO_BLOCKS:
                self.blocks, self.published = {}, set()
            block = self.blocks.get(address)
            if block is None:
                self.blocks[address] = [1, held, held]
            else:
                block[0] += 1
                block[1] += held
                block[2] = max(block[2], held)
            if publish and manager is not None and address not in self.published:
                self.published.add(address)
                state = manager.execution_state
                bus = state.event_bus
                if bus.has_listeners:
                    message, hint = blocked_text(address, group_id, held, self.options)
                    bus.publish(
                        run_warning(
                            LoopBlockedWarning,
                            message,
                            hint,
                            address=address,
                            timestamp=state.clock.now(),
                            group_id=group_id,
                            parallel_index=member.index,
                        )
                    )

    def close(self) -> None:
        """The group ended: no more readings. It may end while the loop is held (its members
        ran without suspending, to its end): the beat overdue meanwhile counts as far as it
        got, and what was seen holding the loop is settled now."""
        now = self.closed = time.perf_counter()
        monitor = self.monitor
        monitor.windows.pop(self, None)
        due = monitor.due
        if due is not None and now > due:
            # (from when the group opened, if the beat was due before)
            self.add_lag(now - max(due, self.opened))
        self.settle(publish=False)  # the group's own end warns about the rest

    @property
    def wall(self) -> float:
        """Seconds (on the real clock) from the group's start to its end, or to now."""
        end = self.closed if self.closed is not None else time.perf_counter()
        return end - self.opened

    def usage(self) -> ResourceUsage:
        """This window's figures (made once the group ended, then kept)."""
        usage = self._usage
        if usage is not None:
            return usage
        lags = self.lags
        usage = ResourceUsage(
            rss_start=self.rss_start,
            rss_peak=self.rss_peak,
            fds_start=self.fds_start,
            fds_peak=self.fds_peak,
            loop_lag=lags.distribution() if lags is not None else _NO_LAG,
            samples=self.samples,
            lag_sample=tuple(lags.sample) if lags is not None else (),
        )
        if self.closed is not None:
            self._usage = usage
        return usage


class RunResources:
    """A run's figures over its outermost groups (``ExecutionState.resource_usage()``)."""

    __slots__ = ("fds_peak", "fds_start", "lags", "rss_peak", "rss_start", "samples", "seen")

    def __init__(self) -> None:
        self.seen = False
        self.rss_start: int | None = None
        self.rss_peak: int | None = None
        self.fds_start: int | None = None
        self.fds_peak: int | None = None
        self.samples = 0
        self.lags = Durations(LAG_SAMPLE)

    def add(self, window: Window) -> None:
        if not self.seen:
            self.seen = True
            self.rss_start, self.fds_start = window.rss_start, window.fds_start
        self.rss_peak = _most(self.rss_peak, window.rss_peak)
        self.fds_peak = _most(self.fds_peak, window.fds_peak)
        self.samples += window.samples
        if window.lags is not None:
            add = self.lags.add
            for value in window.lags.sample:  # (every value, or a uniform part of them)
                add(value)

    def usage(self) -> ResourceUsage | None:
        if not self.seen:
            return None
        return ResourceUsage(
            rss_start=self.rss_start,
            rss_peak=self.rss_peak,
            fds_start=self.fds_start,
            fds_peak=self.fds_peak,
            loop_lag=self.lags.distribution(),
            samples=self.samples,
            lag_sample=tuple(self.lags.sample),
        )


def _most(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


# Seconds spent in the garbage collector so far (and when the running collection began): a
# collection holds the loop too, but it is no member's doing, so a member's hold leaves it out.
_gc_time = [0.0, 0.0]


def _note_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_time[1] = time.perf_counter()
    else:
        _gc_time[0] += time.perf_counter() - _gc_time[1]


def _waited(thread: int | None) -> tuple[float, float] | None:
    """Seconds thread ``thread`` (a native id) has run on a CPU, and spent runnable but not
    running, waiting for one (Linux's schedstat; ``None`` where it is not to be had)."""
    if thread is None:
        return None
    try:
        with open(f"/proc/self/task/{thread}/schedstat", "rb") as stat:
            ran, waited = stat.read().split()[:2]
            return int(ran) / 1e9, int(waited) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class _Hold:
    """The thread's view of one hold of a loop: the loop's beat ``number`` is overdue, so
    the loop has been held since the beat was due; ``since`` is how far the holding time
    was handed out to members, ``gc`` the collector's total time then and ``waited`` the
    loop thread's time waiting for a CPU then; ``task`` the task the last look saw, and
    ``pending`` the time up to that look, credited to it if the next look sees it again."""

    __slots__ = ("gc", "monitor", "number", "pending", "since", "task", "waited")

    def __init__(self, monitor: LoopMonitor, number: int, due: float) -> None:
        self.monitor = monitor
        self.number = number
        self.since = due
        # (read after the number: a beat running meanwhile ends this hold at the first look)
        self.gc = monitor.gc_at_beat
        self.waited = monitor.waited_at_beat
        self.task: asyncio.Task[Any] | None = None
        self.pending = 0.0


class LoopMonitor:
    """The watchdog's side of one event loop: the windows of the groups running on it and
    the loop's beat."""

    __slots__ = (
        "__weakref__",
        "_generation",
        "_loop",
        "active",
        "beats",
        "due",
        "gc_at_beat",
        "idle_since",
        "latest",
        "thread",
        "waited_at_beat",
        "windows",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        # The running groups' windows, in the order they opened (a dict: O(1) removal).
        self.windows: dict[Window, None] = {}
        self.latest: ResourceSample | None = None
        # The pending beat's number: a beat whose number is no longer this one was run
        # early (see open) and does nothing. No handle is kept: a handle holds its loop, and
        # a loop closed with a beat pending would never be collected (it is this monitor's
        # weak key).
        self._generation = 0
        # Read by the thread, written on the loop. Invariant: `due` is when the pending beat
        # should run (None while a beat runs or none is pending), and `beats` counts the
        # beats run so far and moves last in a beat, so a thread that read `beats` and then
        # an overdue `due` sees `beats` move if that beat ran since.
        self.due: float | None = None
        self.beats = 0
        self.gc_at_beat = 0.0  # the collector's total time at the last beat
        # The loop thread's time on a CPU and waiting for one then.
        self.waited_at_beat: tuple[float, float] | None = None
        # Watched by the thread (set under its lock, read here: see _Watchdog._watched).
        self.active = False
        self.idle_since: float | None = None
        # The loop's thread (its native id), whose waits for a CPU are nobody's hold either.
        self.thread: int | None = (
            threading.get_native_id() if sys.platform.startswith("linux") else None
        )

    def open(self, manager: ParallelExecutionManager[Any], options: Watchdog) -> Window:
        now = time.perf_counter()
        due = self.due
        if due is not None and now - due > POLL and not self.windows:
            # The loop was held until now by code outside any group: the late beat runs
            # here, so that this group's lag and holds leave it out. (Inside a running group
            # it may be a member opening a nested group in the middle of a hold, which goes
            # on: the beat waits, and each window counts only from when it opened.)
            self._on_beat(self._generation)
        latest = self.latest
        if latest is None or now - latest.taken > 2 * RESOURCES_EVERY:
            # No beat read it lately: a fresh start, read here (once per wake-up).
            latest = self.latest = _sample()
        window = Window(self, manager, options, latest)
        self.windows[window] = None
        if self.due is None:
            self._arm()
        if not self.active:  # read after adding the window (see _Watchdog._watched)
            _WATCHDOG.activate(self)
        return window

    # --- on the loop ------------------------------------------------------------------------

    def _arm(self) -> None:
        loop = self._loop()
        if loop is None:  # (opened on it: it lives while its group runs)
            return
        self.gc_at_beat = _gc_time[0]
        self.waited_at_beat = _waited(self.thread)
        self.due = time.perf_counter() + BEAT_EVERY
        self._generation += 1
        # In an empty context: the beat goes on across groups and must not keep the first
        # one's context variables (its frames, whatever the block had set) alive. (A new
        # one each time: a context may not be entered by two loops' threads at once.)
        loop.call_later(BEAT_EVERY, self._on_beat, self._generation, context=contextvars.Context())

    def _on_beat(self, generation: int) -> None:
        if generation != self._generation:
            return  # run early by open(); another beat is pending, or none is needed
        self._generation += 1
        now = time.perf_counter()
        due = self.due
        self.due = None
        # (the loop's timer clock and perf_counter may round apart: never below zero)
        lag = now - due if due is not None and now > due else 0.0
        sample = None
        latest = self.latest
        if latest is None or now - latest.taken >= RESOURCES_EVERY:
            sample = _sample()
            if sample is not None:
                self.latest = sample
        try:
            gone = None
            for window in self.windows:
                if window.group() is None:
                    gone = [*(gone or ()), window]
                    continue
                # (a window opened while the loop was already late counts from its opening)
                window.add_lag(min(lag, now - window.opened))
                if sample is not None:
                    window.add_sample(sample)
                if window.seen:
                    window.settle(publish=True)
            if gone:
                for window in gone:
                    del self.windows[window]
        except Exception:  # (a bug here must not stop the beat for the loop's life)
            logger.exception("the watchdog's beat failed; it goes on")
        finally:
            if self.windows:
                self._arm()  # (else the next group to open starts the beat again)
            self.beats += 1

    # --- called from the watchdog thread ----------------------------------------------------

    def held(self, now: float) -> _Hold | None:
        """A hold of the loop, if its beat is overdue by more than ``POLL``."""
        number = self.beats
        due = self.due
        if due is None or now - due <= POLL or not self.windows:
            return None
        loop = self._loop()
        if loop is None or not loop.is_running():
            return None  # stopped, closed or gone: late, but nobody holds it
        return _Hold(self, number, due)

    def loop_closed(self) -> bool:
        """Whether this monitor's loop is closed or gone (its windows will never close)."""
        loop = self._loop()
        return loop is None or loop.is_closed()

    def look(self, hold: _Hold, now: float) -> bool:
        """Note which member holds the loop since the last look (less the garbage
        collector's share and the time the loop's thread waited for a CPU: a busy machine,
        not the member); ``False`` once the hold is over."""
        if self.beats != hold.number or not self.windows:
            return False
        loop = self._loop()
        if loop is None or not loop.is_running():
            return False
        elapsed = now - hold.since
        hold.since = now
        collected = _gc_time[0]
        elapsed -= collected - hold.gc
        hold.gc = collected
        waited = _waited(self.thread)
        if waited is not None and hold.waited is not None:
            ran = waited[0] - hold.waited[0]
            elapsed -= waited[1] - hold.waited[1]
            if elapsed > LOOK_CREDIT and ran < elapsed:
                # The look came late and the loop's thread neither ran nor waited for a
                # CPU meanwhile: it waited for the GIL, which this thread (preempted while
                # holding it, on a busy machine) or another one kept. Not the member's doing
                # past what a look is worth. (A member blocked in a call that keeps the GIL
                # runs on the CPU; one blocked in a call that lets it go is looked at on time.)
                elapsed = max(ran, LOOK_CREDIT)
        hold.waited = waited
        try:
            task = asyncio.current_task(loop)
        except RuntimeError:
            task = None
        elapsed = max(elapsed, 0.0)
        previous, hold.task = hold.task, task
        if task is None or task is not previous:
            # A loop held by one task shows it at every look; one busy with many short steps
            # in one turn (a long turn of its ready queue: thousands of members) shows
            # another one each time, none of which held it. A task is credited only once a
            # second look in a row sees it: then with the time up to the first one too.
            hold.pending = elapsed if task is not None else 0.0
            return True
        elapsed += hold.pending
        hold.pending = 0.0
        if elapsed <= 0:
            return True
        for window in list(self.windows):
            group = window.group()
            if group is None:
                continue
            member = group._pool.member_of(task)
            if member is not None:
                # (a hold that began before the group opened is not its members' doing)
                window.seen.append((hold.number, member, min(elapsed, now - window.opened)))
                break
        return True


def _sample() -> ResourceSample | None:
    try:
        return read_sample()
    except Exception:  # a platform that refuses: no figures, still a watchdog
        return None


def blocked_text(
    address: str, group_id: str, held: float, options: Watchdog, times: int = 1
) -> tuple[str, str]:
    """The message and the hint of a ``LoopBlockedWarning``."""
    how_long = _millis(held)
    how_long = f"{times} times, the longest for {how_long}" if times > 1 else f"for {how_long}"
    message = (
        f"member {address} held the event loop {how_long} without awaiting (the threshold is "
        f"{_millis(options.block_threshold)}): nothing else ran meanwhile, not even the other "
        f"members of group {group_id!r}"
    )
    hint = (
        "Make its blocking call async, or run it in a thread: "
        "`await asyncio.to_thread(fn, *args)` (or an executor, `loop.run_in_executor`)"
    )
    return message, hint


def _millis(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


class _Watchdog:
    """The one watchdog thread of the process and the loops it watches."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._active: set[LoopMonitor] = set()
        self._thread: threading.Thread | None = None
        self._monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMonitor] = (
            weakref.WeakKeyDictionary()
        )

    def monitor(self, loop: asyncio.AbstractEventLoop) -> LoopMonitor:
        monitor = self._monitors.get(loop)
        if monitor is None:
            monitor = self._monitors[loop] = LoopMonitor(loop)
        return monitor

    def activate(self, monitor: LoopMonitor) -> None:
        """``monitor`` has a group running: watch its loop (start the thread if need be)."""
        if _note_gc not in gc.callbacks:
            gc.callbacks.append(_note_gc)
        with self._lock:
            monitor.active = True
            monitor.idle_since = None
            self._active.add(monitor)
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = self._thread = threading.Thread(
                    target=self._run, name="rh_agents watchdog", daemon=True
                )
                thread.start()
            self._wake.set()

    def _watched(self) -> tuple[list[LoopMonitor], bool]:
        """The loops with groups running now, and whether any loop is still watched (a loop
        stays watched ``IDLE_GRACE`` seconds after its last group)."""
        now = time.perf_counter()
        running = []
        with self._lock:
            for monitor in list(self._active):
                if monitor.loop_closed():
                    # A group left open on a closed loop: nothing more to see there.
                    monitor.active = False
                    self._active.discard(monitor)
                    continue
                if monitor.windows:
                    monitor.idle_since = None
                    running.append(monitor)
                elif monitor.idle_since is None:
                    monitor.idle_since = now
                elif now - monitor.idle_since > IDLE_GRACE:
                    # Unwatched first, then looked at again: a group opening meanwhile either
                    # sees the flag down (and activates) or is seen here.
                    monitor.active = False
                    if monitor.windows:
                        monitor.active = True
                        monitor.idle_since = None
                        running.append(monitor)
                    else:
                        self._active.discard(monitor)
            if not self._active:
                self._wake.clear()
            return running, bool(self._active)

    def _run(self) -> None:
        holds: dict[LoopMonitor, _Hold] = {}  # the loops held now
        while True:
            monitors, watching = self._watched()
            if not watching:
                holds.clear()
                self._wake.wait()
                continue
            try:
                self._look_at(monitors, holds)
            except Exception:  # never let the watchdog die of a bad reading
                logger.exception("the watchdog failed a cycle; it goes on")
                holds.clear()
            time.sleep(POLL if holds else BEAT_EVERY)

    @staticmethod
    def _look_at(monitors: list[LoopMonitor], holds: dict[LoopMonitor, _Hold]) -> None:
        """Follow the held loops, and find the loops held since the last look. A free loop
        costs one read of its ``due``: no system call, so the thread takes the GIL once per
        ``BEAT_EVERY`` while every loop is free."""
        for monitor in monitors:
            now = time.perf_counter()
            hold = holds.get(monitor) or monitor.held(now)
            if hold is not None and monitor.look(hold, now):
                holds[monitor] = hold
            else:
                holds.pop(monitor, None)
        for monitor in [monitor for monitor in holds if monitor not in monitors]:
            del holds[monitor]  # its groups ended


_WATCHDOG = _Watchdog()


def _after_fork() -> None:
    # A forked child has no watchdog thread: it starts its own when a group runs there.
    _WATCHDOG._reset()
    _last.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _real_time(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` runs on the real clock (a loop on virtual time is not watched)."""
    kind = type(loop)
    return kind.time is asyncio.BaseEventLoop.time or kind.__module__.startswith("uvloop")


# The loop of the last group opened and its monitor (None off the real clock): most groups
# open on the loop the one before did.
_last: list[tuple[weakref.ref[asyncio.AbstractEventLoop], LoopMonitor | None]] = []


def open_window(manager: ParallelExecutionManager[Any], options: Watchdog) -> Window | None:
    """Start watching for ``manager``'s group (on the running loop); ``None`` when its loop
    is not on the real clock."""
    loop = asyncio.get_running_loop()
    last = _last[0] if _last else None
    if last is not None and last[0]() is loop:
        monitor = last[1]
    else:
        monitor = _WATCHDOG.monitor(loop) if _real_time(loop) else None
        _last[:] = [(weakref.ref(loop), monitor)]
    return monitor.open(manager, options) if monitor is not None else None
