"""``EventPrinter``: the execution tree, one line per record, indented by address depth.

A call made through an event with a ``tag`` shows the tag (its address ends with it) and the
actor it stands for: ``▶ 🔧 Outer::tally (counter) STARTED``.

A resumed run's replayed calls say so (``↺ ... REPLAYED``), and their groups count them
(``30 ok (13 replayed)``). A run stopped by Ctrl-C (``rh_agents.run``) ends with
``⏹ interrupted`` and the counts of what finished, what was cancelled and what never
started; cancelled members are not listed as failures. A group cancelled by its caller
(``task.cancel()``, ``p.cancel()``) is counted the same way (``⏹ 📦 docs CANCELLED: 3 of 10
finished · ... · 2 never started``).

On a terminal the lines are styled through rich; anywhere else (a pipe, a log file, CI) they
are plain text with no control codes. Pass a ``rich.console.Console`` to control where it
writes (tests use ``Console(file=StringIO(), width=100)``)::

    bus.subscribe(EventPrinter())
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import IO, Any

from rich.console import Console

from rh_agents.bus_handlers.group_view import (
    interrupted_lines,
    interrupted_text,
    outcome_text,
    quorum_text,
    status_mark,
)
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
    RunInterrupted,
    RunWarning,
    is_member_call,
)
from rh_agents.core.safe_text import clipped, markup_escape, one_line, printable
from rh_agents.errors import ConfigurationError

__all__ = ["EventPrinter", "check_output"]

ICONS = {"agent": "🤖", "tool": "🔧", "llm": "🧠", "actor": "⚙", "group": "📦"}


class EventPrinter:
    """Print each record as one line of the execution tree.

    ``show_details`` adds the (truncated) input and output; ``indent`` is the width of one
    level.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        file: IO[str] | None = None,
        show_details: bool = True,
        indent: int = 2,
    ) -> None:
        check_output(console, file)
        if not isinstance(show_details, bool):
            raise ConfigurationError(
                f"show_details must be True or False, got {show_details!r:.40}"
            )
        if isinstance(indent, bool) or not isinstance(indent, int) or indent < 0:
            raise ConfigurationError(f"indent must be an int >= 0, got {indent!r}")
        if console is None:
            console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
        self.console = console
        self.show_details = show_details
        self.indent = indent
        # Per group id: members whose own call was replayed; members cancelled before they
        # started. Kept until the group completes.
        self._replayed: defaultdict[str, set[int]] = defaultdict(set)
        self._never_started: defaultdict[str, int] = defaultdict(int)
        # Per group id with a quorum: the quorum; once its successes reached it, how many
        # members were cancelled since (not needed: no failures). Kept until it completes.
        self._quorums: dict[str, int] = {}
        self._not_needed: dict[str, int] = {}
        # The outermost groups' counts, for the last line after Ctrl-C: finished, members,
        # cancelled while running, never started.
        self._roots = [0, 0, 0, 0]
        self._root_groups = 0

    def __call__(self, record: BusEvent) -> None:
        line = self.format(record)
        if line is not None:
            # emoji=False: ":name:" in user text (inputs, errors) must print as written.
            self.console.print(printable(line), highlight=False, soft_wrap=True, emoji=False)

    def format(self, record: BusEvent) -> str | None:
        """The rich-markup line for ``record`` (``None`` for records this printer skips)."""
        pad = " " * (self.indent * record.depth)
        match record:
            case EventStarted():
                group = record.group_id
                if group is not None and group in self._replayed and is_member_call(record):
                    # The member runs a call of its own: it is not replayed.
                    self._replayed[group].discard(record.parallel_index or 0)
                icon = ICONS.get(record.actor_kind, "⚙")
                detail = (
                    f" [dim]{_escape(record.detail)}[/dim]"
                    if self.show_details and record.detail
                    else ""
                )
                return (
                    f"{pad}▶ {icon} {_escape(record.address)}{_actor_of_tag(record)} "
                    f"[cyan]STARTED[/cyan]{detail}"
                )
            case EventCompleted():
                if record.source == "replay":
                    self._note_replay(record)
                icon = ICONS.get(record.actor_kind, "⚙")
                source = "" if record.source == "run" else f" [magenta]({record.source})[/magenta]"
                detail = (
                    f" [dim]→ {_escape(record.detail)}[/dim]"
                    if self.show_details and record.detail
                    else ""
                )
                return (
                    f"{pad}✔ {icon} {_escape(record.address)}{_actor_of_tag(record)} "
                    "[green]COMPLETED[/green] "
                    f"({_seconds(record.execution_time)}){source}{detail}"
                )
            case EventReplayed():
                self._note_replay(record)
                icon = ICONS.get(record.actor_kind, "⚙")
                return (
                    f"{pad}↺ {icon} {_escape(record.address)}{_actor_of_tag(record)} "
                    "[magenta]REPLAYED[/magenta] (stored result)"
                )
            case EventFailed():
                icon = ICONS.get(record.actor_kind, "⚙")
                if record.cancelled and record.group_id in self._not_needed:
                    # Cancelled because its group reached its quorum: no failure.
                    return (
                        f"{pad}○ {icon} {_escape(record.address)}{_actor_of_tag(record)} "
                        f"[dim]cancelled[/dim] ({_seconds(record.execution_time)}) "
                        f"[dim]not needed, quorum of {self._quorums[record.group_id]} "
                        "reached[/dim]"
                    )
                if record.cancelled and interrupt_requested():
                    # Ctrl-C: not a failure; inside a group the group's line counts it.
                    if record.group_id is not None:
                        return None
                    return (
                        f"{pad}⏹ {icon} {_escape(record.address)}{_actor_of_tag(record)} "
                        f"[yellow]INTERRUPTED[/yellow] ({_seconds(record.execution_time)})"
                    )
                label = "CANCELLED" if record.cancelled else "FAILED"
                return (
                    f"{pad}✘ {icon} {_escape(record.address)}{_actor_of_tag(record)} "
                    f"[red]{label}[/red] "
                    f"({_seconds(record.execution_time)}) [red]{_escape(record.error)}[/red]"
                )
            case EventRetrying():
                return (
                    f"{pad}↻ {_escape(record.address)} [yellow]RETRY {record.attempt}[/yellow] "
                    f"in {_seconds(record.delay)}: {_escape(record.error)}"
                )
            case GroupStarted():
                if record.quorum is not None:
                    self._quorums[record.address] = record.quorum
                workers = f", max_workers={record.max_workers}" if record.max_workers else ""
                return f"{pad}▶ 📦 {_escape(record.name)} [cyan]PARALLEL[/cyan]{workers}"
            case MemberFinished() if record.group_id in self._quorums:
                return self._quorum_member(record, pad)
            case MemberFinished() if record.status == "cancelled" and interrupt_requested():
                if record.queue_wait is None and record.group_id is not None:
                    self._never_started[record.group_id] += 1
                return None  # counted on the group's line, not listed as a failure
            case MemberFinished() if record.status != "completed":
                return self._failed_member(record, pad)
            case GroupCompleted():
                replayed = len(self._replayed.pop(record.address, ()))
                never = self._never_started.pop(record.address, 0)
                self._quorums.pop(record.address, None)
                not_needed = self._not_needed.pop(record.address, 0)
                if record.quorum_reached and not not_needed:
                    # (A printer subscribed after the group reached it: its cancelled members.)
                    not_needed = record.cancelled
                if record.status != "cancelled":
                    never = 0  # (cancelled by a failure or a quorum: not what was stopped)
                interrupted = record.status == "cancelled" and interrupt_requested()
                if record.group_id is None:
                    self._note_root(record, never)
                # Under the group's line, as a member's failure is: its map() input failed.
                failed_input = (
                    ""
                    if record.input_error is None
                    else f"\n{pad}  ✘ map() input [red]FAILED[/red] {_escape(record.input_error)}"
                )
                if record.status == "cancelled":
                    # Ctrl-C, or cancelled by its caller (task.cancel(), p.cancel()): what
                    # finished, what was stopped running, and what never started.
                    label = "INTERRUPTED" if interrupted else "CANCELLED"
                    return (
                        f"{pad}⏹ 📦 {_escape(record.name)} [yellow]{label}[/yellow]: "
                        f"{_outcome(record, replayed, never)} · {_seconds(record.wall_time)}"
                        f"{failed_input}"
                    )
                if record.quorum_reached:
                    # The group did what was asked; the members it cancelled were not needed.
                    return (
                        f"{pad}✔ 📦 {_escape(record.name)} "
                        f"[green]QUORUM OF {record.quorum} REACHED[/green]: "
                        f"{_outcome(record, replayed, not_needed=not_needed)} · "
                        f"{_seconds(record.wall_time)}{failed_input}"
                    )
                style = "green" if record.status == "completed" else "yellow"
                missed = quorum_text(record.quorum, 0, 1, {record.status})
                return (
                    f"{pad}{status_mark({record.status})} 📦 {_escape(record.name)} "
                    f"[{style}]{record.status.upper()}[/{style}]: "
                    f"{missed + ' · ' if missed else ''}{_outcome(record, replayed)} · "
                    f"{_seconds(record.wall_time)}{failed_input}"
                )
            case RunInterrupted():
                finished, total, cancelled, never = self._roots
                lines = interrupted_lines(
                    finished,
                    total,
                    cancelled,
                    never,
                    groups=self._root_groups > 0,
                    run_id=record.run_id,
                    resume=record.resume,
                )
                return (
                    "[yellow]"
                    + _escape(lines[0])
                    + "[/yellow]"
                    + "".join("\n" + _escape(line) for line in lines[1:])
                )
            case RunWarning():
                hint = f". {_escape(record.hint)}" if record.hint else ""
                return f"[yellow]⚠ {_escape(record.message)}[/yellow]{hint}"
            case CircuitStateChanged():
                key = _escape(record.key)
                return f"{pad}⚡ circuit {key}: {record.old_state} → {record.new_state}"
        return None

    def _failed_member(self, record: MemberFinished, pad: str) -> str:
        """The line of a member that did not complete."""
        if record.status == "cancelled" and record.queue_wait is None and record.group_id:
            # Never started: counted on the group's line if the group was cancelled.
            self._never_started[record.group_id] += 1
        return (
            f"{pad}  ✘ member {_escape(record.name or str(record.index))} "
            f"[red]{record.status.upper()}"
            f"[/red] {_escape(record.error or '')}"
        )

    def _quorum_member(self, record: MemberFinished, pad: str) -> str | None:
        """A member of a group with a quorum: once the group's successes reached it, a
        member cancelled is not needed (a dim line, no failure)."""
        group_id = record.group_id or ""
        quorum = self._quorums[group_id]
        if record.succeeded >= quorum and group_id not in self._not_needed:
            self._not_needed[group_id] = 0
        status = record.status
        if status == "completed":
            return None
        if status == "cancelled" and interrupt_requested():
            if record.queue_wait is None:
                self._never_started[group_id] += 1
            return None  # counted on the group's line, not listed as a failure
        if status == "cancelled" and group_id in self._not_needed:
            self._not_needed[group_id] += 1
            return (
                f"{pad}  ○ member {_escape(record.name or str(record.index))} "
                f"[dim]cancelled: not needed, quorum of {quorum} reached[/dim]"
            )
        return self._failed_member(record, pad)

    def _note_replay(self, record: EventReplayed | EventCompleted) -> None:
        """A member's own call was answered from a checkpoint: the member is replayed."""
        if is_member_call(record) and record.group_id is not None:
            self._replayed[record.group_id].add(record.parallel_index or 0)

    def _note_root(self, record: GroupCompleted, never: int) -> None:
        counts = self._roots
        counts[0] += record.total - record.cancelled
        counts[1] += record.total
        counts[2] += record.cancelled - never
        counts[3] += never
        self._root_groups += 1


def _escape(text: str) -> str:
    """Text from the run (a name, an error, an input, a circuit's key) for a line of the
    tree: at most ``ERROR_CHARS`` characters, on one line (a line break shown as `` ⏎ ``, so
    that no error can draw a line of its own, such as a group's "COMPLETED"), markup escaped."""
    return markup_escape(one_line(clipped(text)))


def check_output(console: Any, file: Any) -> None:
    """A printer's ``console`` and ``file`` options, refused by name when of the wrong kind
    (rather than an ``AttributeError`` at the first record)."""
    if console is not None and not isinstance(console, Console):
        raise ConfigurationError(
            f"console must be a rich Console, got {type(console).__name__} {console!r:.40}"
        )
    if file is not None and not callable(getattr(file, "write", None)):
        raise ConfigurationError(
            "file must be a text stream with write() (sys.stdout, open(...), StringIO), "
            f"got {type(file).__name__} {file!r:.40}"
        )


def _actor_of_tag(record: EventStarted | EventCompleted | EventFailed | EventReplayed) -> str:
    """`` (counter)`` after the address of a call tagged ``tally``: the address ends with the
    tag, this names the actor it stands for. Empty for an untagged call."""
    tag = record.tag
    return f" ({_escape(record.actor)})" if tag and tag != record.actor else ""


def _outcome(
    record: GroupCompleted,
    replayed: int = 0,
    never_started: int | None = None,
    *,
    not_needed: int = 0,
) -> str:
    """``3 finished · 1 ok · 2 failed (1 timed out)``, as the parallel printer says it; with
    ``never_started`` (a cancelled group), with what was stopped; with ``not_needed`` (a group
    that reached its quorum), with the members it then cancelled, apart from the failures."""
    not_ok = record.failed + record.timed_out + record.cancelled + record.skipped
    counts = (
        record.succeeded + not_ok,
        record.total,
        record.succeeded,
        not_ok,
        record.timed_out,
        record.cancelled,
        record.skipped,
    )
    if never_started is not None:
        return interrupted_text(*counts, never_started, replayed=replayed)
    return outcome_text(*counts, replayed=replayed, not_needed=not_needed)


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"
