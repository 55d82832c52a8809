"""``EventPrinter``: the execution tree, one line per record, indented by address depth.

A call made through an event with a ``tag`` shows the tag (its address ends with it) and the
actor it stands for: ``▶ 🔧 Outer::tally (counter) STARTED``.

On a terminal the lines are styled through rich; anywhere else (a pipe, a log file, CI) they
are plain text with no control codes. Pass a ``rich.console.Console`` to control where it
writes (tests use ``Console(file=StringIO(), width=100)``)::

    bus.subscribe(EventPrinter())
"""

from __future__ import annotations

import sys
from typing import IO

from rich.console import Console
from rich.markup import escape

from rh_agents.bus_handlers.group_view import outcome_text, status_mark
from rh_agents.core.records import (
    BusEvent,
    CircuitStateChanged,
    EventCompleted,
    EventFailed,
    EventRetrying,
    EventStarted,
    GroupCompleted,
    GroupStarted,
    MemberFinished,
)

__all__ = ["EventPrinter"]

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
        if console is None:
            console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
        self.console = console
        self.show_details = show_details
        self.indent = indent

    def __call__(self, record: BusEvent) -> None:
        line = self.format(record)
        if line is not None:
            # emoji=False: ":name:" in user text (inputs, errors) must print as written.
            self.console.print(line, highlight=False, soft_wrap=True, emoji=False)

    def format(self, record: BusEvent) -> str | None:
        """The rich-markup line for ``record`` (``None`` for records this printer skips)."""
        pad = " " * (self.indent * record.depth)
        match record:
            case EventStarted():
                icon = ICONS.get(record.actor_kind, "⚙")
                detail = (
                    f" [dim]{escape(record.detail)}[/dim]"
                    if self.show_details and record.detail
                    else ""
                )
                return (
                    f"{pad}▶ {icon} {escape(record.address)}{_actor_of_tag(record)} "
                    f"[cyan]STARTED[/cyan]{detail}"
                )
            case EventCompleted():
                icon = ICONS.get(record.actor_kind, "⚙")
                source = "" if record.source == "run" else f" [magenta]({record.source})[/magenta]"
                detail = (
                    f" [dim]→ {escape(record.detail)}[/dim]"
                    if self.show_details and record.detail
                    else ""
                )
                return (
                    f"{pad}✔ {icon} {escape(record.address)}{_actor_of_tag(record)} "
                    "[green]COMPLETED[/green] "
                    f"({_seconds(record.execution_time)}){source}{detail}"
                )
            case EventFailed():
                icon = ICONS.get(record.actor_kind, "⚙")
                label = "CANCELLED" if record.cancelled else "FAILED"
                return (
                    f"{pad}✘ {icon} {escape(record.address)}{_actor_of_tag(record)} "
                    f"[red]{label}[/red] "
                    f"({_seconds(record.execution_time)}) [red]{escape(record.error)}[/red]"
                )
            case EventRetrying():
                return (
                    f"{pad}↻ {escape(record.address)} [yellow]RETRY {record.attempt}[/yellow] "
                    f"in {_seconds(record.delay)}: {escape(record.error)}"
                )
            case GroupStarted():
                workers = f", max_workers={record.max_workers}" if record.max_workers else ""
                return f"{pad}▶ 📦 {escape(record.name)} [cyan]PARALLEL[/cyan]{workers}"
            case MemberFinished() if record.status != "completed":
                return (
                    f"{pad}  ✘ member {escape(record.name or str(record.index))} "
                    f"[red]{record.status.upper()}"
                    f"[/red] {escape(record.error or '')}"
                )
            case GroupCompleted():
                style = "green" if record.status == "completed" else "yellow"
                return (
                    f"{pad}{status_mark({record.status})} 📦 {escape(record.name)} "
                    f"[{style}]{record.status.upper()}[/{style}]: {_outcome(record)} · "
                    f"{_seconds(record.wall_time)}"
                )
            case CircuitStateChanged():
                return (
                    f"{pad}⚡ circuit {escape(record.key)}: {record.old_state} → {record.new_state}"
                )
        return None


def _actor_of_tag(record: EventStarted | EventCompleted | EventFailed) -> str:
    """`` (counter)`` after the address of a call tagged ``tally``: the address ends with the
    tag, this names the actor it stands for. Empty for an untagged call."""
    tag = record.tag
    return f" ({escape(record.actor)})" if tag and tag != record.actor else ""


def _outcome(record: GroupCompleted) -> str:
    """``3 finished · 1 ok · 2 failed (1 timed out)``, as the parallel printer says it."""
    not_ok = record.failed + record.timed_out + record.cancelled + record.skipped
    return outcome_text(
        record.succeeded + not_ok,
        record.total,
        record.succeeded,
        not_ok,
        record.timed_out,
        record.cancelled,
        record.skipped,
    )


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"
