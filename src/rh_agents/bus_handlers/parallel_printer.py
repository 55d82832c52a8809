"""``ParallelEventPrinter``: a terminal that stays readable when forty things run at once.

A bus subscriber with four modes (``parallel_mode``):

- ``realtime``: every record as it comes, each line tagged with its group and member index
  (``[notes#3]``), so interleaved lines still say where they belong;
- ``progress``: a header per group with a bar ``[finished/total] percent elapsed failures`` and its
  members beneath it;
- ``collapsed``: one summary line per group (counts, time), with every failure and its error;
- ``smart`` (default): on a terminal, ``progress`` for groups up to ``smart_threshold``
  members and ``collapsed`` above; anywhere else, ``collapsed``.

On a terminal the bars are drawn by ``rich.live`` and redrawn at most ``refresh_per_second``
times a second, from the records themselves (no refresh thread); what that limit held back is
drawn when it allows, by a timer on the event loop. Anywhere else (CI, a log file, a pipe) the
output is plain append-only lines, with a progress line every ``progress_interval`` seconds
while a group runs (the same timer writes it when no record comes), and never a control code.
An error shows its first ``ERROR_CHARS`` characters at most (a result keeps it whole). The
size of a group comes from its own records (``MemberStarted``/``MemberFinished`` carry
``total``, ``GroupCompleted`` the final counts), never from how many members happened to start.
When the outermost group completes (or on ``close()``) a summary follows: per group, members
finished, ok and failed, retries, wall time and the slowest members, with nested same-named
groups merged (``steps ×30``)::

    with ParallelEventPrinter(parallel_mode="progress") as printer:
        bus.subscribe(printer)
        async with ExecutionState(event_bus=bus) as state:
            ...
    print(printer.summary())
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any, Final, Literal, get_args

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from rh_agents.bus_handlers.group_view import (
    MILLIS,
    GroupView,
    ParallelGroupStates,
    bar,
    descendants,
    interrupted_lines,
    interrupted_text,
    issue_line,
    outcome_text,
    percent,
    quorum_text,
    seconds,
    summarize,
    summary_lines,
)
from rh_agents.bus_handlers.live_view import elapsed, render_live
from rh_agents.bus_handlers.printer import EventPrinter, check_output
from rh_agents.bus_handlers.wrapping import wrap
from rh_agents.core.context import ADDRESS_SEPARATOR, enclosing_member
from rh_agents.core.interrupt import interrupt_requested
from rh_agents.core.records import (
    BusEvent,
    CircuitStateChanged,
    EventCompleted,
    EventFailed,
    EventReplayed,
    EventRetrying,
    EventStarted,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
    MemberStarted,
    RunInterrupted,
    RunWarning,
    is_member_call,
)
from rh_agents.core.safe_text import clipped, one_line
from rh_agents.errors import ConfigurationError

__all__ = ["PARALLEL_MODES", "ParallelEventPrinter", "ParallelMode"]

ParallelMode = Literal["realtime", "progress", "collapsed", "smart"]
PARALLEL_MODES: Final[tuple[str, ...]] = get_args(ParallelMode)

_FLUSH_EVERY: Final = 0.2
_DETAILS: Final = "└─ View details: "
_FLUSH_CHUNKS: Final = 1024  # about 512 lines
# The shortest wait of the printer's timer: a tiny progress_interval must not spin the loop.
_MIN_WAIT: Final = 0.01
ICONS: Final = {"agent": "🤖", "tool": "🔧", "llm": "🧠", "actor": "⚙", "group": "📦"}
_STYLES: Final = {
    "▶": "cyan",
    "✔": "green",
    "✘": "red",
    "⚠": "yellow",
    "↻": "yellow",
    "⚡": "magenta",
    "⏹": "yellow",
    "↺": "magenta",
    "○": "dim",
}


class ParallelEventPrinter(EventPrinter):
    """Show parallel groups as live bars (terminal) or plain lines (anything else).

    An ``EventPrinter`` (a subscriber like it, with its ``console`` and ``indent``) that knows
    parallel groups: ``parallel_groups`` maps each group it tracks, by group id, to a
    read-only ``ParallelGroupState`` view (counts, status, time, failures), live as records
    arrive. Each outermost group's summary ends with where its calls are kept::

        └─ View details: execution_state.history.get_group("doc_processing")

    Options:

    - ``show_progress``: draw bars (terminal) and periodic progress lines (elsewhere);
    - ``collapse_parallel``: fold groups nested inside a member into their outer group (their
      failures are still shown, and counted apart: ``0 failed · 2 failed in nested groups``);
    - ``show_parallel_details``: show what happens inside members (the actor events in
      ``realtime``; in plain ``progress`` output, one line per finished member of a group of
      at most ``smart_threshold`` members, or of a group whose size is not known yet while at
      most that many finished: a bigger group shows its progress line every
      ``progress_interval`` seconds and its failures, so a log stays readable);
    - ``show_summary``: print the summary when the outermost group completes;
    - ``console``: where to write (tests pass ``Console(file=StringIO(), width=100)``);
      ``clock``: the time source for rate limiting (tests pass a fake one).
    """

    def __init__(
        self,
        parallel_mode: ParallelMode = "smart",
        *,
        console: Console | None = None,
        file: IO[str] | None = None,
        show_progress: bool = True,
        collapse_parallel: bool = False,
        show_parallel_details: bool = True,
        show_summary: bool = True,
        refresh_per_second: float = 8.0,
        progress_interval: float = 5.0,
        smart_threshold: int = 50,
        max_members_shown: int = 8,
        slowest: int = 3,
        indent: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if parallel_mode not in PARALLEL_MODES:
            raise ConfigurationError(
                f"parallel_mode must be one of {', '.join(PARALLEL_MODES)}; got {parallel_mode!r}"
            )
        for label, value in (
            ("refresh_per_second", refresh_per_second),
            ("progress_interval", progress_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"{label} must be a number > 0, got {value!r}")
        for label, number in (
            ("smart_threshold", smart_threshold),
            ("max_members_shown", max_members_shown),
            ("slowest", slowest),
            ("indent", indent),
        ):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ConfigurationError(f"{label} must be an int >= 0, got {number!r}")
        for label, flag in (
            ("show_progress", show_progress),
            ("collapse_parallel", collapse_parallel),
            ("show_parallel_details", show_parallel_details),
            ("show_summary", show_summary),
        ):
            if not isinstance(flag, bool):
                # (collapse_parallel="no" is true: it collapsed.)
                raise ConfigurationError(f"{label} must be True or False, got {flag!r:.40}")
        check_output(console, file)
        if not callable(clock):
            raise ConfigurationError(
                f"clock must be a function returning seconds (time.monotonic), got {clock!r:.40}"
            )
        if console is None:
            console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
        super().__init__(console, show_details=show_parallel_details, indent=indent)
        self.parallel_mode: ParallelMode = parallel_mode
        self.show_progress = show_progress
        self.collapse_parallel = collapse_parallel
        self.show_parallel_details = show_parallel_details
        self.show_summary = show_summary
        self.refresh_per_second = refresh_per_second
        self.progress_interval = progress_interval
        self.smart_threshold = smart_threshold
        self.max_members_shown = max_members_shown
        self.slowest = slowest
        self.clock = clock
        self.live_display = console.is_terminal and parallel_mode != "realtime"
        # What plain output does: ``smart`` away from a terminal means ``collapsed``.
        self._mode: ParallelMode = (
            "collapsed" if parallel_mode == "smart" and not console.is_terminal else parallel_mode
        )
        # Not a terminal: lines are plain text, batched into one write per flush (a log gets
        # every line, at most ``_FLUSH_EVERY`` seconds late while records keep coming).
        self._plain = not console.is_terminal
        self._write = console.file.write
        self._buffer: list[str] = []  # text chunks; every line ends with its own newline
        self._next_flush = 0.0
        # The earliest of the flush and progress deadlines: one comparison per record.
        self._next_tick = 0.0
        self.groups: dict[str, GroupView] = {}
        self.roots: list[GroupView] = []
        self._summarized: set[str] = set()
        self._active_roots = 0
        self._live: Live | None = None
        self._next_refresh = 0.0
        # Whether records may redraw the live view (checked before reading the clock).
        self._redraws = self.live_display and show_progress
        # Whether plain output gets a periodic progress line.
        self._progress_lines = self._mode != "realtime" and show_progress
        # Whether each member that completes gets its own line (plain ``progress``, details on).
        self._done_lines = self._mode == "progress" and show_parallel_details
        self._next_progress = 0.0
        self._closed = False
        self._latest = 0.0
        # ``clock()`` when ``_latest`` was last set from records (plain output only): a
        # progress line written by the timer adds the time since to its elapsed times.
        self._latest_read_at = 0.0
        # At most one loop timer (no thread), for what no record comes to do: the frame the
        # rate limit held back (terminal), or a batched line's write and the next progress
        # line (plain output). ``_timer_due`` is when it fires, on ``clock``.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._timer_due = math.inf
        self._handlers: dict[type[BusEvent], Callable[[Any], None]] = {
            GroupStarted: self._group_started,
            MemberStarted: self._member_started,
            GroupCompleted: self._group_completed,
            EventStarted: self._event_started,
            EventCompleted: self._event_completed,
            EventFailed: self._event_failed,
            EventReplayed: self._event_replayed,
            EventRetrying: self._retrying,
            CircuitStateChanged: self._circuit_changed,
            RunInterrupted: self._run_interrupted,
            RunWarning: self._run_warning,
        }
        # Whether a replayed member call was seen (a resumed run): only then do fresh calls
        # need checking against the members marked as replayed.
        self._replays = False

    @property
    def parallel_groups(self) -> ParallelGroupStates:
        """Every group seen so far, by group id (its address), as a read-only mapping of
        ``ParallelGroupState`` views: ``printer.parallel_groups["docs"].done``. The views are
        live (they read the printer's state when asked) and cannot change it."""
        return ParallelGroupStates(self.groups)

    # --- subscriber protocol --------------------------------------------------------------

    def __call__(self, record: BusEvent) -> None:
        self.handle_batch(deque((record,)))

    def handle_batch(self, records: deque[BusEvent]) -> None:
        """Handle every record of ``records``, oldest first, popping each (the bus calls this
        with its queue, so a group's records cost no call each; see ``EventBus``)."""
        pop = records.popleft
        groups = self.groups
        handlers = self._handlers
        live, mode, done_lines = self.live_display, self._mode, self._done_lines
        finished = False  # a MemberFinished came: the rate limits may be due
        # The newest MemberFinished of a run of them for one group: its counts are copied to
        # the group's view once, when the run ends, instead of once per member.
        view: GroupView | None = None
        view_id: str | None = None
        latest: MemberFinished | None = None
        latest_view: GroupView | None = None  # whose counts ``latest`` carries
        record: BusEvent | None = None
        while records:
            record = pop()
            if type(record) is not MemberFinished:
                if latest is not None and latest_view is not None:
                    _copy_counts(latest_view, latest)
                    latest = None
                self._latest = record.timestamp  # "now" on the run's clock, for elapsed times
                handler = handlers.get(type(record))
                if handler is not None:
                    handler(record)
                view_id = None  # a handler may have added or replaced views
                continue
            finished = True
            # MemberFinished, one per member (with or without a MemberStarted before it), is
            # the hot path of a big group and is handled right here, with no further call:
            # counters only, unless the member failed, is among the slowest or gets a line.
            if record.group_id != view_id or view_id is None:
                if latest is not None and latest_view is not None:
                    _copy_counts(latest_view, latest)
                    latest = None
                view_id = record.group_id
                view = groups.get(view_id or "")
                if view is None and view_id:
                    view = self._adopt(view_id, record.timestamp, record.total)
            if view is None:
                continue
            latest, latest_view = record, view
            replays = view.replays
            if replays and record.index in replays:
                replays.discard(record.index)
                if record.status == "completed":
                    # Answered from a resumed run's checkpoint: counted apart, and its stored
                    # time is not this run's (left out of the slowest).
                    view.replayed += 1
                    if live:
                        view.running.pop(record.index, None)
                    elif done_lines or (mode == "realtime" and self._shows_nested(view)):
                        _copy_counts(view, record)
                        latest = None
                        self._line(self._replayed_line(view, record), view.level + 1)
                    continue
            took = record.execution_time
            if record.status == "cancelled" and interrupt_requested():
                # Ctrl-C: not a failure. Counted (the summary says how many were running and
                # how many never started), never listed one by one, and not among the slowest.
                _copy_counts(view, record)
                latest = None
                if record.queue_wait is None:
                    view.never_started += 1
                if live:
                    view.running.pop(record.index, None)
                continue
            if record.status != "completed":
                _copy_counts(view, record)
                latest = None
                cancelled = record.status == "cancelled"
                if record.queue_wait is None and cancelled:
                    view.unstarted += 1  # never started (counted if its group was cancelled)
                quorum = view.quorum
                if cancelled and quorum is not None and record.succeeded >= quorum:
                    # Cancelled because the group reached its quorum: not needed, no failure.
                    # Shown where a member that succeeded would be.
                    view.not_needed += 1
                    view.note_issue(
                        record.index, record.status, record.error or "", not_needed=True
                    )
                    if live:
                        view.running.pop(record.index, None)
                    elif (mode == "realtime" and self._shows_nested(view)) or (
                        done_lines and self._lists_done(view, record)
                    ):
                        self._line(self._not_needed_line(view, record), view.level + 1)
                    continue
                # Written so that a NaN still reaches note_duration, as every value once did.
                if not took <= view.slowest_floor:
                    view.note_duration(record.index, took, self.slowest)
                view.note_issue(record.index, record.status, record.error or "")
                if live:
                    view.running.pop(record.index, None)
                elif mode != "collapsed":
                    self._line(self._member_line(view, record, False), view.level + 1)
                continue
            if not took <= view.slowest_floor:
                view.note_duration(record.index, took, self.slowest)
            if live:
                view.running.pop(record.index, None)
            elif done_lines:
                total = record.total if record.total is not None else view.total
                done = record.done
                # A group of at most smart_threshold members; while its size is unknown (a
                # lazy map() input still read), as long as no more than that have finished.
                if (
                    view.parent is None
                    and (done if total is None else total) <= self.smart_threshold
                ):
                    # Formatted inline and batched (see flush()): a line per member. The
                    # duration as seconds(took) would give it; sub-millisecond needs no rounding.
                    millis = took * 1000
                    if 0 < millis < 0.5:
                        took_text = "0ms"
                    elif 0 < millis < 1000:
                        took_text = MILLIS[round(millis)]
                    else:
                        took_text = seconds(took)
                    name = record.name
                    if total is None:
                        tail = " finished]\n"  # [4 finished]: no size to show yet
                    elif total >= done:
                        if total != view.tail_total:
                            view.tail_total = total
                            view.tail = f"/{total}]\n"
                        tail = view.tail
                    else:
                        tail = f"/{done}]\n"
                    buffer = self._buffer
                    # Two chunks: the shared prefix as is, and the rest (no copy of the prefix).
                    buffer.append(view.done_prefix)
                    buffer.append(
                        f"{record.index}{' ' + one_line(name) if name else ''} done "
                        f"({took_text}) [{done}{tail}"
                    )
                    if len(buffer) >= _FLUSH_CHUNKS:
                        self._next_tick = -math.inf  # flush at the end of this batch
            elif mode == "realtime" and self._shows_nested(view):
                _copy_counts(view, record)
                latest = None
                self._line(self._member_line(view, record, True), view.level + 1)
        if latest is not None and latest_view is not None:
            _copy_counts(latest_view, latest)
        if record is None:
            return
        self._latest = record.timestamp
        # The rate limits, once per batch: the clock is read once, not once per member.
        if live:
            if finished and self._redraws:
                now = self.clock()
                if now >= self._next_refresh:
                    self._refresh(now)
                elif self._timer is None:
                    self._wake_at(self._next_refresh, now)  # drawn when the limit allows
        elif self._plain:
            now = self.clock()
            self._latest_read_at = now
            if now >= self._next_tick:
                self._tick(now)
            self._wake_for_plain(now)

    def __enter__(self) -> ParallelEventPrinter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display and print the summary of any group not summarized yet."""
        if self._closed:
            return
        self._closed = True
        self._redraws = False
        self._cancel_timer()
        self._stop_live()
        if self.show_summary:
            for root in self.roots:
                if root.group_id not in self._summarized:
                    self._print_summary(root)
        self.flush()

    def flush(self) -> None:
        """Write the plain lines still batched (done on group boundaries, failures and close)."""
        buffer = self._buffer
        if buffer:
            try:
                self._write("".join(buffer))
            except BrokenPipeError:
                # The reader went away (``rh-agents demo | head``): stop writing, quietly, the
                # way command-line tools do; the run itself goes on.
                self._write = _discard
            buffer.clear()

    def summary(self) -> str:
        """Plain text: every outermost group seen so far, as a tree of summary lines."""
        lines: list[str] = []
        for root in self.roots:
            lines.extend(one_line(line) for line in self._summary_lines(root))
        return "\n".join(lines)

    # --- group records --------------------------------------------------------------------

    def _adopt(
        self, group_id: str, timestamp: float, total: int | None, name: str | None = None
    ) -> GroupView:
        """The view of a group this printer did not see start (subscribed after it opened):
        made from what its address tells (its parent group, its member index), as its start
        would have made it, so that its members, failures and end are shown all the same."""
        last = group_id.rpartition(ADDRESS_SEPARATOR)[2]
        # The member it runs in (maybe inside that member's calls: "outer[3]::agent::steps").
        member = enclosing_member(group_id)
        parent_id, index = member if member is not None else (None, None)
        if parent_id is not None and parent_id not in self.groups:
            self._adopt(parent_id, timestamp, None)
        self._group_started(
            GroupStarted(
                address=group_id,
                timestamp=timestamp,
                group_id=parent_id,
                parallel_index=index,
                is_parallel=parent_id is not None,
                name=name or last or group_id,
                total=total or 0,
                max_workers=None,
                parent_group_id=parent_id,
            )
        )
        return self.groups[group_id]

    def _group_started(self, record: GroupStarted) -> None:
        parent_id = record.parent_group_id
        if parent_id and parent_id not in self.groups:
            self._adopt(parent_id, record.timestamp, None)  # (subscribed after it opened)
        parent = self.groups.get(parent_id) if parent_id else None
        index = record.parallel_index
        tag = f"{parent.member_tag(index)}/{record.name}" if parent else record.name
        view = GroupView(
            group_id=record.address,
            name=record.name,
            tag=tag,
            parent=parent,
            parent_index=index,
            level=record.depth,
            max_workers=record.max_workers,
            started_at=record.timestamp,
            last_seen=record.timestamp,
            total=record.total or None,
            position=() if parent is None or index is None else (*parent.position, index),
            quorum=record.quorum,
        )
        # Made safe once here: the per-member "done" lines are written without _line().
        view.done_prefix = one_line(f"{self._pad(view.level + 1)}✔ {tag}#")
        self.groups[record.address] = view
        if parent is not None:
            parent.children.append(view)
        else:
            self.roots.append(view)
            self._active_roots += 1
            self._next_progress = self.clock() + self.progress_interval
            self._next_tick = min(self._next_tick, self._next_progress)
        workers = f" (max_workers={view.max_workers})" if view.max_workers else ""
        if self._mode == "realtime":
            if parent is None or not self.collapse_parallel:
                self._line(f"{self._prefix(record)}▶ 📦 {record.name} started{workers}", view.level)
        elif self.live_display:
            # Rate-limited like any record: a member opening a nested group is no reason to
            # redraw at once (400 of them drew 400 frames).
            self._refresh()
        elif parent is None and self._mode == "progress":
            self._line(f"▶ 📦 {tag} started{workers}", view.level)

    def _member_started(self, record: MemberStarted) -> None:
        group_id = record.group_id
        if not group_id:
            return
        view = self.groups.get(group_id)
        if view is None:
            view = self._adopt(group_id, record.timestamp, record.total)
        view.last_seen = record.timestamp
        if record.total is not None:
            view.total = record.total
        if self.live_display:
            view.running[record.index] = record
            if self._redraws:
                now = self.clock()
                if now >= self._next_refresh:
                    self._refresh(now)
                elif self._timer is None:
                    self._wake_at(self._next_refresh, now)  # drawn when the limit allows
        elif self._mode == "realtime" and self._shows_nested(view):
            name = f" {record.name}" if record.name else ""
            self._line(f"[{view.member_tag(record.index)}] ▶ member{name} started", view.level + 1)

    def _tick(self, now: float) -> None:
        """Plain output: a progress line and a flush, each when due."""
        if now >= self._next_progress and self._progress_lines:
            self._next_progress = now + self.progress_interval
            for root in self.roots:
                if not root.finished:
                    self._line(self._progress_text(root), root.level)
        if now >= self._next_flush or len(self._buffer) >= _FLUSH_CHUNKS:
            self._next_flush = now + _FLUSH_EVERY
            self.flush()
        self._next_tick = self._next_flush
        if self._progress_lines:
            self._next_tick = min(self._next_tick, self._next_progress)

    def _group_completed(self, record: GroupCompleted) -> None:
        view = self.groups.get(record.address)
        if view is None:
            view = self._adopt(record.address, record.timestamp, record.total, record.name)
        view.status = record.status
        view.wall_time = record.wall_time
        view.last_seen = record.timestamp
        view.total = record.total
        view.succeeded = record.succeeded
        view.failed = record.failed + record.cancelled + record.skipped + record.timed_out
        view.done = view.succeeded + view.failed
        view.timed_out = record.timed_out
        view.cancelled = record.cancelled
        view.skipped = record.skipped
        view.running.clear()
        view.resources = record.resources
        view.input_error = record.input_error
        view.settle_quorum(record.quorum, record.quorum_reached)
        if record.status == "cancelled":
            if interrupt_requested():
                view.stopped = "interrupted"
            else:
                # Cancelled by its caller (task.cancel(), p.cancel()): told as Ctrl-C's is.
                view.stopped = "cancelled"
                view.never_started = view.unstarted
        mode = self._mode
        if view.parent is not None:
            if mode == "realtime" and self._shows_nested(view):
                self._line(f"{self._prefix(record)}{self._completed_text(view)}", view.level)
                self._input_line(view)
            elif self.live_display:
                self._refresh()
            return
        self._active_roots -= 1
        if self.live_display:
            if self._active_roots <= 0:
                self._stop_live()  # first, so the summary lands below the run, not in a frame
            else:
                self._refresh(force=True)
        if mode == "realtime" and not self.show_summary:
            self._line(self._completed_text(view), view.level)
            self._input_line(view)
        if self.show_summary:
            self._print_summary(view)

    # --- actor, retry and breaker records -------------------------------------------------

    def _event_started(self, record: EventStarted) -> None:
        if self._replays and is_member_call(record):
            # The member runs a call of its own: it is not replayed (whatever it replayed).
            view = self.groups.get(record.group_id or "")
            if view is not None:
                view.replays.discard(record.parallel_index)
        if self._shows_event(record):
            icon = ICONS.get(record.actor_kind, "⚙")
            self._line(f"{self._prefix(record)}▶ {icon} {_call_name(record)} STARTED", record.depth)

    def _event_completed(self, record: EventCompleted) -> None:
        if record.source == "replay":
            self._note_replay(record)
        if self._shows_event(record):
            icon = ICONS.get(record.actor_kind, "⚙")
            source = "" if record.source == "run" else f" ({record.source})"
            self._line(
                f"{self._prefix(record)}✔ {icon} {_call_name(record)} COMPLETED "
                f"({seconds(record.execution_time)}){source}",
                record.depth,
            )

    def _event_replayed(self, record: EventReplayed) -> None:
        self._note_replay(record)
        if self._shows_event(record):
            icon = ICONS.get(record.actor_kind, "⚙")
            self._line(
                f"{self._prefix(record)}↺ {icon} {_call_name(record)} replayed (stored result)",
                record.depth,
            )

    def _note_replay(self, record: EventReplayed | EventCompleted) -> None:
        """A member's own call was answered from a checkpoint: mark the member replayed."""
        if not is_member_call(record):
            return
        view = self.groups.get(record.group_id or "")
        if view is not None and record.parallel_index is not None:
            view.replays.add(record.parallel_index)
            self._replays = True

    def _event_failed(self, record: EventFailed) -> None:
        if record.cancelled and interrupt_requested():
            # Ctrl-C: a call outside any group says it was interrupted; inside groups the
            # summary counts what was stopped.
            if record.group_id is None:
                icon = ICONS.get(record.actor_kind, "⚙")
                self._line(
                    f"⏹ {icon} {_call_name(record)} interrupted ({seconds(record.execution_time)})",
                    record.depth,
                )
            return
        if self._shows_event(record):
            icon = ICONS.get(record.actor_kind, "⚙")
            view = self.groups.get(record.group_id or "") if record.cancelled else None
            if view is not None and view.quorum_reached():
                # Cancelled because its group reached its quorum: not needed, no failure.
                self._line(
                    f"{self._prefix(record)}○ {icon} {_call_name(record)} cancelled "
                    f"({seconds(record.execution_time)}): not needed, "
                    f"quorum of {view.quorum} reached",
                    record.depth,
                )
                return
            label = "CANCELLED" if record.cancelled else "FAILED"
            self._line(
                f"{self._prefix(record)}✘ {icon} {_call_name(record)} {label} "
                f"({seconds(record.execution_time)}): {clipped(record.error)}",
                record.depth,
            )

    def _retrying(self, record: EventRetrying) -> None:
        view = self.groups.get(record.group_id or "")
        if view is not None:
            view.retried += 1
        if self._mode == "collapsed" or self.live_display:
            if self.live_display:
                self._refresh()
            return  # counted in the bar and the summary
        actor = record.address.rsplit("::", 1)[-1]
        # A member's own retry (a callable member: its address is the member's) sits with
        # the member's lines, one level under its group, as a call's retry does.
        level = record.depth if view is None else max(record.depth, view.level + 1)
        self._line(
            f"{self._prefix(record)}↻ {actor} retry {record.attempt} in "
            f"{seconds(record.delay)}: {clipped(record.error)}",
            level,
        )

    def _run_interrupted(self, record: RunInterrupted) -> None:
        """Ctrl-C: the last lines, what finished, what was stopped, and how to resume."""
        self._stop_live()
        if self.show_summary:
            for root in self.roots:
                if root.group_id not in self._summarized:
                    self._print_summary(root)
        head, *rest = _interrupted_lines(self.roots, record)
        self._line(head, 0, hang=2)
        for line in rest:
            self._line(line, 0)  # never wrapped: a command to copy
        self.flush()

    def _run_warning(self, record: RunWarning) -> None:
        # Rare and important: shown in every mode, where it happens.
        hint = f". {record.hint}" if record.hint else ""
        self._line(f"⚠ {record.message}{hint}", 0, hang=2)

    def _circuit_changed(self, record: CircuitStateChanged) -> None:
        # Rare and important: shown in every mode.
        self._line(
            f"⚡ circuit {record.key}: {record.old_state} → {record.new_state} "
            f"({record.failures} failures)",
            0,
        )

    # --- text -----------------------------------------------------------------------------

    def _prefix(self, record: BusEvent) -> str:
        """``[notes#3] `` for a record inside a group, empty outside."""
        view = self.groups.get(record.group_id) if record.group_id else None
        return "" if view is None else f"[{view.member_tag(record.parallel_index)}] "

    def _shows_event(self, record: BusEvent) -> bool:
        if record.group_id is None:
            return True  # outside any group: the plain execution tree, in every mode
        if self._mode != "realtime" or not self.show_parallel_details:
            return False
        view = self.groups.get(record.group_id)
        return view is None or self._shows_nested(view)

    def _shows_nested(self, view: GroupView) -> bool:
        """Whether records of ``view`` are drawn: nested groups fold away with collapse_parallel."""
        return view.parent is None or not self.collapse_parallel

    def _member_line(self, view: GroupView, record: MemberFinished, ok: bool) -> str:
        tag = view.member_tag(record.index)
        name = f" {record.name}" if record.name else ""
        took = seconds(record.execution_time)
        total = view.known_total()
        count = f"[{record.done} finished]" if total is None else f"[{record.done}/{total}]"
        error = clipped(record.error or "")
        if self._mode == "realtime":
            mark = "✔" if ok else "✘"
            if ok:
                return f"[{tag}] {mark} member{name} done ({took}) {count}"
            return f"[{tag}] {mark} member{name} {record.status.upper()} ({took}) {count}: {error}"
        if ok:
            return f"✔ {tag}{name} done ({took}) {count}"
        return f"✘ {tag}{name} {record.status.upper()} ({took}) {count}: {error}"

    def _not_needed_line(self, view: GroupView, record: MemberFinished) -> str:
        """A member cancelled because its group reached its quorum: no failure, a dim line."""
        tag = view.member_tag(record.index)
        name = f" {record.name}" if record.name else ""
        took = seconds(record.execution_time)
        total = view.known_total()
        count = f"[{record.done} finished]" if total is None else f"[{record.done}/{total}]"
        why = f"not needed, quorum of {view.quorum} reached"
        if self._mode == "realtime":
            return f"[{tag}] ○ member{name} cancelled ({took}) {count}: {why}"
        return f"○ {tag}{name} cancelled ({took}) {count}: {why}"

    def _lists_done(self, view: GroupView, record: MemberFinished) -> bool:
        """Whether plain ``progress`` gives ``record``'s member a line of its own when it
        succeeds: an outermost group of at most ``smart_threshold`` members (while its size
        is unknown, as long as no more than that have finished)."""
        total = record.total if record.total is not None else view.total
        return view.parent is None and (record.done if total is None else total) <= (
            self.smart_threshold
        )

    def _input_line(self, view: GroupView) -> None:
        """Under a group's line in ``realtime``: its ``map()`` input failed, and with what."""
        failed_input = view.input_issue()
        if failed_input is not None:
            self._line(issue_line(failed_input), view.level + 1, hang=2)

    def _replayed_line(self, view: GroupView, record: MemberFinished) -> str:
        tag = view.member_tag(record.index)
        name = f" {record.name}" if record.name else ""
        total = view.known_total()
        count = f"[{record.done} finished]" if total is None else f"[{record.done}/{total}]"
        if self._mode == "realtime":
            return f"[{tag}] ↺ member{name} replayed {count}"
        return f"↺ {tag}{name} replayed {count}"

    def _progress_text(self, view: GroupView) -> str:
        total = view.known_total()
        # With no total yet (members still being added), no bar or percent to show.
        progress = (
            f"[{view.done} finished]"
            if total is None
            else f"[{view.done}/{total}] {bar(view.done, total)} {percent(view.done, total)}"
        )
        failed = view.failed - view.not_needed
        text = f"📦 {view.tag} {progress} · {seconds(self._elapsed(view))} · {failed} failed"
        if view.not_needed:
            text += f" · {view.not_needed} not needed (quorum of {view.quorum} reached)"
        return text + (f" · {view.retried} retried" if view.retried else "")

    def _completed_text(self, view: GroupView) -> str:
        reached = view.quorum_reached()
        mark = (
            "✔"
            if view.status == "completed" or reached
            else ("⚠" if view.status == "partial" else "✘")
        )
        nested = ""
        if self.collapse_parallel:
            # The failed members of folded nested groups had their lines: count them too.
            below = sum(group.failed - group.not_needed for group in descendants(view))
            nested = f" · {below} failed in nested groups" if below else ""
        counts = (
            view.done,
            view.total,
            view.succeeded,
            view.failed,
            view.timed_out,
            view.cancelled,
            view.skipped,
        )
        if view.stopped:
            outcome = interrupted_text(*counts, view.never_started, replayed=view.replayed)
            return f"⏹ 📦 {view.name}: {view.stopped} · {outcome} · {seconds(view.elapsed)}"
        outcome = outcome_text(*counts, replayed=view.replayed, not_needed=view.not_needed)
        quorum = quorum_text(view.quorum, int(reached), 1, {view.status or "running"})
        if reached:
            # The group did what was asked (its status stays partial: members were cancelled).
            return f"{mark} 📦 {view.name}: {quorum} · {outcome}{nested} · {seconds(view.elapsed)}"
        return (
            f"{mark} 📦 {view.name} {(view.status or '').upper()}: "
            f"{quorum + ' · ' if quorum else ''}{outcome}{nested} · {seconds(view.elapsed)}"
        )

    def _summary_lines(self, root: GroupView) -> list[str]:
        summary = summarize(
            [root], slowest=self.slowest, fold=self.collapse_parallel, final=self._closed
        )
        lines = summary_lines(summary, indent=self.indent)
        pad = " " * (self.indent * root.level)
        below = pad + " " * (self.indent + 2)
        usage = root.resources
        if usage is not None and usage.samples:  # measured while it ran (see ResourceUsage)
            # Under the group's own line and failures, above its nested groups' lines.
            lines.insert(
                1 + len(summary.issues), " " * (self.indent + 2) + "resources: " + usage.describe()
            )
        return [
            *(pad + line for line in lines),
            # Where every call of the group (nested ones too) is kept, as code to paste.
            f"{below}{_DETAILS}execution_state.history.get_group("
            f"{json.dumps(root.group_id, ensure_ascii=False)})",
        ]

    def _print_summary(self, root: GroupView) -> None:
        """The summary, each line wrapped at word boundaries to the console's width: a group's
        line goes on under its failures' column, a failure's under its text."""
        self._summarized.add(root.group_id)
        for line in self._summary_lines(root):
            if line.lstrip().startswith(_DETAILS):
                self._line(line, 0)  # never wrapped: code to copy
                continue
            group_line = line.lstrip()[1:3] == " 📦"
            self._line(line, 0, hang=self.indent + 2 if group_line else 2)

    def _pad(self, level: int) -> str:
        return " " * (self.indent * level)

    def _line(self, text: str, level: int, *, hang: int | None = None) -> None:
        """Write one line now (after anything batched before it); with ``hang``, wrapped to
        the console's width, continuation lines indented ``hang`` more than the first."""
        line = one_line(" " * (self.indent * level) + text)
        if self._plain:
            # Plain append-only text: no rich rendering per record, no control codes.
            if hang is None:
                self._buffer.append(line + "\n")
            else:
                self._buffer.extend(
                    piece.plain + "\n" for piece in wrap(line, self.console.width, hang=hang)
                )
            self.flush()
            return
        stripped = line.lstrip()
        style = _STYLES.get(stripped[:1], "")
        if stripped.startswith("["):
            style = _STYLES.get(stripped.split("] ", 1)[-1][:1], "")
        styled = Text(line, style=style)
        pieces = [styled] if hang is None else wrap(styled, self.console.width, hang=hang)
        for piece in pieces:
            self.console.print(piece, soft_wrap=True, highlight=False)

    # --- live display (terminal only) -----------------------------------------------------

    def _refresh(self, now: float | None = None, *, force: bool = False) -> None:
        """Redraw if due; ``now``: the clock, when the caller has already read it."""
        if not self.show_progress or self._closed:
            return
        if now is None:
            now = self.clock()
        if not force and now < self._next_refresh:
            if self._timer is None:
                self._wake_at(self._next_refresh, now)  # held back: drawn when the limit allows
            return
        self._cancel_timer()  # this frame draws what it was waiting to draw
        self._next_refresh = now + 1.0 / self.refresh_per_second
        if self._live is None:
            if self._active_roots <= 0:
                return
            # auto_refresh=False: no refresh thread; records drive the (rate-limited) redraws.
            self._live = Live(
                console=self.console,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        self._live.update(self.render(), refresh=True)

    def _stop_live(self) -> None:
        self._cancel_timer()
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    # --- the timer: what comes due when no record comes -----------------------------------

    def _wake_at(self, due: float, now: float) -> None:
        """Have the running loop call ``_wake`` at ``due`` (on ``clock``, read as ``now``),
        unless the timer already fires by then. Without a running loop (records handed over
        by hand) there is none: the next record does what is due."""
        # None outside a loop, where get_running_loop() would raise: records fed by hand
        # would pay an exception each.
        loop = asyncio._get_running_loop()
        if loop is None or self._closed:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_loop is loop and self._timer_due <= due:
                return
            timer.cancel()  # too late, or left on a loop that is gone
        self._timer = loop.call_later(max(_MIN_WAIT, due - now), self._wake)
        self._timer_loop, self._timer_due = loop, due

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer, self._timer_loop, self._timer_due = None, None, math.inf

    def _wake_for_plain(self, now: float) -> None:
        """Plain output: wake when batched lines are due to be written or, while a group
        runs, the next progress line is; no timer when neither is."""
        due = self._next_flush if self._buffer else math.inf
        if self._progress_lines and self._active_roots > 0:
            due = min(due, self._next_progress)
        if due == math.inf:
            self._cancel_timer()
        else:
            self._wake_at(due, now)

    def _wake(self) -> None:
        """The timer fired: draw the held-back frame, or write what is due in plain output."""
        due = self._timer_due
        self._timer, self._timer_loop, self._timer_due = None, None, math.inf
        if self._closed:
            return
        now = self.clock()
        if self.live_display:
            self._refresh(now, force=True)  # the loop waited out the rate limit
            return
        # The loop waited until ``due``: it is due, even by an injected clock that did not move.
        now = max(now, due)
        # No record since ``_latest``: the run's time went on as this clock did (elapsed times).
        self._latest += max(0.0, now - self._latest_read_at)
        self._latest_read_at = now
        self._tick(now)
        self._wake_for_plain(now)

    def render(self) -> RenderableType:
        """The live view: a bar per running outermost group, members and nested groups below."""
        return render_live(
            self.roots,
            now=self._latest,
            members=self._members_beneath,
            max_members=self.max_members_shown,
            nested=not self.collapse_parallel,
            indent=self.indent,
            height=self.console.height,
            width=self.console.width,
        )

    def _members_beneath(self, root: GroupView) -> bool:
        if self.parallel_mode == "collapsed":
            return False
        if self.parallel_mode == "smart":
            return (root.known_total() or 0) <= self.smart_threshold
        return True

    def _elapsed(self, view: GroupView) -> float:
        return elapsed(view, self._latest)


def _interrupted_lines(roots: list[GroupView], record: RunInterrupted) -> list[str]:
    """The last lines after Ctrl-C, counted over the outermost groups."""
    return interrupted_lines(
        sum(root.done - root.cancelled for root in roots),
        sum(root.known_total() or root.done for root in roots),
        sum(root.cancelled - root.never_started for root in roots),
        sum(root.never_started for root in roots),
        groups=bool(roots),
        run_id=record.run_id,
        resume=record.resume,
    )


def _call_name(record: EventStarted | EventCompleted | EventFailed | EventReplayed) -> str:
    """The actor's name, or ``tally (counter)`` for a call tagged ``tally``."""
    tag, actor = record.tag, record.actor
    return f"{tag} ({actor})" if tag and tag != actor else actor


def _discard(text: str) -> int:
    return len(text)


def _copy_counts(view: GroupView, record: MemberFinished) -> None:
    """The group's counts as of ``record`` (a finished member's record carries them)."""
    view.last_seen = record.timestamp
    view.done = record.done
    view.succeeded = record.succeeded
    view.failed = record.failed
    if record.total is not None:
        view.total = record.total
