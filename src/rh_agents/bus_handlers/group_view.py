"""What the parallel printer knows about each group, built only from the group's own records.

A ``GroupView`` is updated in place by ``ParallelEventPrinter`` (one view per ``group_id``);
``summarize`` folds a finished tree of views into ``GroupSummary`` nodes, merging the nested
groups that share a name (the ``steps`` group inside each of forty members becomes one line,
``steps ×40``), and ``summary_lines`` turns that into plain text::

    summary = summarize([root_view], slowest=3)
    print("\\n".join(summary_lines(summary)))
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rh_agents.core.records import MemberStarted
from rh_agents.core.safe_text import clipped

__all__ = [
    "MILLIS",
    "GroupSummary",
    "GroupView",
    "MemberIssue",
    "ParallelGroupState",
    "ParallelGroupStates",
    "bar",
    "descendants",
    "failed_text",
    "interrupted_lines",
    "interrupted_text",
    "issue_line",
    "outcome_text",
    "percent",
    "quorum_text",
    "seconds",
    "status_mark",
    "summarize",
    "summary_lines",
]


@dataclass(frozen=True, slots=True)
class MemberIssue:
    """A member that did not complete: its tag (``notes#4``), status and error.

    ``order`` is its place in the tree, the member indexes from the outermost group down
    (``notes#4/steps#1`` is ``(4, 1)``): failures are always listed in that order, the order
    of the members' submission, never the order in which they happened to fail.
    ``not_needed``: a member cancelled because its group reached its ``quorum``, which is no
    failure (kept here, never listed with the failures).
    """

    tag: str
    status: str
    error: str
    order: tuple[int, ...] = ()
    not_needed: bool = False


@dataclass(slots=True, eq=False)
class GroupView:
    """The live counts of one group. ``tag`` names it in lines: ``notes#3/steps``."""

    group_id: str
    name: str
    tag: str
    parent: GroupView | None
    parent_index: int | None
    level: int  # address depth, for indentation
    max_workers: int | None
    started_at: float
    last_seen: float
    total: int | None = None
    done: int = 0
    succeeded: int = 0
    failed: int = 0  # every member that ended without success (failed, timed out, cancelled...)
    retried: int = 0
    status: str | None = None  # a GroupStatus value once the group completed
    wall_time: float | None = None
    timed_out: int = 0
    cancelled: int = 0
    skipped: int = 0
    issues: list[MemberIssue] = field(default_factory=list)
    # A resumed run: members whose own call was answered from a checkpoint, until their
    # MemberFinished comes (then counted in ``replayed``, and their stored time left out).
    replays: set[int] = field(default_factory=set)
    replayed: int = 0
    # How the group was stopped, when it was: ``"interrupted"`` (cancelled by Ctrl-C under
    # ``rh_agents.run``) or ``"cancelled"`` (by its caller: ``task.cancel()``, ``p.cancel()``);
    # of its cancelled members, ``never_started`` had not started. ``unstarted`` counts those
    # as they come, for a group whose status says only at its end that it was cancelled.
    stopped: str | None = None
    never_started: int = 0
    unstarted: int = 0
    slowest: list[tuple[float, int]] = field(default_factory=list)  # min-heap (seconds, index)
    # A member must take longer than this to enter ``slowest``: the heap's minimum once it is
    # full, so a member that is not among the slowest costs one comparison and no heap work.
    slowest_floor: float = -math.inf
    # The start and end of this group's per-member "done" line (``  ✔ notes#`` ... ``/40]``),
    # built once rather than per member; ``tail`` is for a total of ``tail_total``.
    done_prefix: str = ""
    tail: str = ""
    tail_total: int | None = None
    # Members that said they started and have not finished yet, by index (the record itself,
    # so tracking a running member allocates nothing).
    running: dict[int, MemberStarted] = field(default_factory=dict)
    children: list[GroupView] = field(default_factory=list)
    # The member indexes that lead to this group from the outermost one (``()`` for it).
    position: tuple[int, ...] = ()
    # What the group used while it ran (its GroupCompleted's ``resources``), if measured.
    resources: Any = None
    # What its map() input raised (its GroupCompleted's ``input_error``), if anything.
    input_error: str | None = None
    # The group's ``quorum=`` (``None`` without one), and how many of its members were
    # cancelled once it was reached: not needed, no failures (though counted in ``failed``
    # and ``cancelled``, as every member that did not succeed is).
    quorum: int | None = None
    not_needed: int = 0

    def member_tag(self, index: int | None) -> str:
        return self.tag if index is None else f"{self.tag}#{index}"

    def note_issue(self, index: int, status: str, error: str, *, not_needed: bool = False) -> None:
        """Member ``index`` did not complete (kept for the failure lists, in index order);
        ``not_needed``: it was cancelled by the group's quorum, no failure."""
        self.issues.append(
            MemberIssue(self.member_tag(index), status, error, (*self.position, index), not_needed)
        )

    def quorum_reached(self) -> bool:
        """Whether the group has a ``quorum`` that its successes reached (so far), and was
        stopped by nothing else (once completed: its status is ``completed`` or ``partial``)."""
        quorum = self.quorum
        return (
            quorum is not None
            and self.succeeded >= quorum
            and self.status in (None, "completed", "partial")
        )

    def settle_quorum(self, quorum: int | None, reached: bool) -> None:
        """The group completed with ``quorum``, ``reached`` or not: the members noted as not
        needed are failures after all if it was not (something else stopped the group); if it
        was and this view did not know the quorum (it saw the group only from the middle),
        its cancelled members were the ones not needed."""
        if reached and self.quorum is None:
            self.issues = [
                dataclasses.replace(issue, not_needed=True)
                if issue.status == "cancelled"
                else issue
                for issue in self.issues
            ]
            self.not_needed = sum(issue.not_needed for issue in self.issues)
        elif not reached and self.not_needed:
            self.issues = [
                dataclasses.replace(issue, not_needed=False) if issue.not_needed else issue
                for issue in self.issues
            ]
            self.not_needed = 0
        self.quorum = quorum

    def failures(self) -> list[MemberIssue]:
        """This group's failures in index order: its issues but the members not needed."""
        return sorted((i for i in self.issues if not i.not_needed), key=_by_order)

    def input_issue(self) -> MemberIssue | None:
        """The group's ``map()`` input failed: listed with the failures, before its members'
        (``✘ docs map() input FAILED: OSError: disk read failed``)."""
        if self.input_error is None:
            return None
        return MemberIssue(f"{self.tag} map() input", "failed", self.input_error, self.position)

    def sorted_issues(self) -> list[MemberIssue]:
        """This group's failures in index order (they are noted as they happen)."""
        return sorted(self.issues, key=_by_order)

    def note_duration(self, index: int, seconds: float, keep: int) -> None:
        """Keep the ``keep`` slowest members (a small heap: O(log keep) per member).

        Callers may skip the call when ``seconds <= slowest_floor``: it would change nothing.
        """
        heap = self.slowest
        if len(heap) < keep:
            heapq.heappush(heap, (seconds, index))
        elif keep and seconds > heap[0][0]:
            heapq.heapreplace(heap, (seconds, index))
        if len(heap) >= keep:
            self.slowest_floor = heap[0][0] if heap else math.inf

    @property
    def finished(self) -> bool:
        return self.status is not None

    @property
    def elapsed(self) -> float:
        return self.wall_time if self.wall_time is not None else self.last_seen - self.started_at

    def known_total(self) -> int | None:
        """The size of the group if known (never less than what already finished)."""
        if self.total is None:
            return None
        return max(self.total, self.done)


class ParallelGroupState:
    """A read-only, live view of one group a ``ParallelEventPrinter`` tracks (see its
    ``parallel_groups``). Every field is read from the printer's own state when asked, so a
    view kept across records shows the group as it is now; nothing here can change it.

    ``total`` is the group's size as far as its records said (``None`` while a lazy input is
    unread); ``done = succeeded + failed``, where ``failed`` counts every member that ended
    without success (timed out, cancelled and skipped ones included, each also counted on
    its own). ``status`` is a ``GroupStatus`` value once the group completed, else ``None``.
    """

    __slots__ = ("_view",)

    def __init__(self, view: GroupView) -> None:
        self._view = view

    @property
    def group_id(self) -> str:
        """The group's address (``history.get_group(group_id)`` lists its calls)."""
        return self._view.group_id

    @property
    def name(self) -> str:
        return self._view.name

    @property
    def parent_id(self) -> str | None:
        """The group it was opened in (inside one of its members), or ``None``."""
        parent = self._view.parent
        return parent.group_id if parent is not None else None

    @property
    def parent_index(self) -> int | None:
        """The index of the member of ``parent_id`` that opened it."""
        return self._view.parent_index

    @property
    def max_workers(self) -> int | None:
        return self._view.max_workers

    @property
    def status(self) -> str | None:
        return self._view.status

    @property
    def finished(self) -> bool:
        return self._view.finished

    @property
    def total(self) -> int | None:
        return self._view.known_total()

    @property
    def done(self) -> int:
        return self._view.done

    @property
    def succeeded(self) -> int:
        return self._view.succeeded

    @property
    def failed(self) -> int:
        return self._view.failed

    @property
    def timed_out(self) -> int:
        return self._view.timed_out

    @property
    def cancelled(self) -> int:
        return self._view.cancelled

    @property
    def skipped(self) -> int:
        return self._view.skipped

    @property
    def retried(self) -> int:
        return self._view.retried

    @property
    def replayed(self) -> int:
        """Members answered from a resumed run's checkpoints (among ``succeeded``)."""
        return self._view.replayed

    @property
    def running(self) -> int:
        """Members that said they started and have not finished (on a terminal display)."""
        return len(self._view.running)

    @property
    def elapsed(self) -> float:
        """Seconds on the run's clock: the wall time once finished, else so far."""
        return self._view.elapsed

    @property
    def issues(self) -> tuple[MemberIssue, ...]:
        """The members that did not complete, in member order (those cancelled because the
        group reached its quorum among them, marked ``not_needed``)."""
        return tuple(self._view.sorted_issues())

    @property
    def quorum(self) -> int | None:
        """The group's ``quorum=`` (``None`` without one)."""
        return self._view.quorum

    @property
    def quorum_reached(self) -> bool:
        """Whether the group reached its quorum (so far): that many members succeeded."""
        return self._view.quorum_reached()

    @property
    def not_needed(self) -> int:
        """Members cancelled because the group reached its quorum (among ``cancelled``)."""
        return self._view.not_needed

    @property
    def resources(self) -> Any:
        """The group's ``ResourceUsage`` from its ``GroupCompleted`` (``None`` before, or
        when the run measured none)."""
        return self._view.resources

    def __repr__(self) -> str:
        total = self.total
        return (
            f"ParallelGroupState({self.group_id!r}, status={self.status!r}, "
            f"done={self.done}/{'?' if total is None else total}, failed={self.failed})"
        )


class ParallelGroupStates(Mapping[str, ParallelGroupState]):
    """The groups a printer tracks, by group id, as ``ParallelGroupState`` views (read-only:
    a ``Mapping``, not a ``dict``). Live: groups appear as their records arrive."""

    __slots__ = ("_views",)

    def __init__(self, views: Mapping[str, GroupView]) -> None:
        self._views = views

    def __getitem__(self, group_id: str) -> ParallelGroupState:
        return ParallelGroupState(self._views[group_id])

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._views))

    def __len__(self) -> int:
        return len(self._views)

    def __repr__(self) -> str:
        return f"ParallelGroupStates({list(self._views)!r})"


@dataclass(slots=True, eq=False)
class GroupSummary:
    """One line of the summary: a group, or several same-named siblings merged (``count``)."""

    name: str
    count: int
    statuses: set[str]
    total: int
    done: int
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int
    skipped: int
    retried: int
    wall_time: float
    slowest: list[tuple[float, str]]
    issues: list[MemberIssue]  # with a failed map() input's (``docs map() input``) first
    children: list[GroupSummary]
    # Folded summaries only: the members of the nested groups folded into this line that did
    # not succeed (their issues are listed with this line's own).
    nested_failed: int = 0
    nested_timed_out: int = 0
    nested_cancelled: int = 0
    nested_skipped: int = 0
    replayed: int = 0  # members answered from a resumed run's checkpoints (among ``succeeded``)
    # ``"interrupted"`` (Ctrl-C) or ``"cancelled"`` (by its caller): cancelled members are not
    # failures (not listed, not among the slowest) but what was stopped.
    stopped: str | None = None
    never_started: int = 0  # of ``cancelled``, the members that had not started
    # The groups' ``quorum=`` (when they share one), and how many of them reached it; the
    # members cancelled once it was reached (of ``cancelled``, and of ``nested_cancelled``):
    # not failures (not listed, not among the slowest).
    quorum: int | None = None
    quorum_reached: int = 0
    not_needed: int = 0
    nested_not_needed: int = 0


def summarize(
    views: list[GroupView], *, slowest: int = 3, fold: bool = False, final: bool = False
) -> GroupSummary:
    """Merge ``views`` (same-named siblings, or one root) and their descendants into a summary.

    ``fold`` leaves nested groups out of the tree but keeps them on this line: their failures
    are listed and counted (apart from this group's own, as ``nested_failed``), their retries
    are counted, and their statuses set the mark. ``final``: nothing more will come (the
    printer closes), so a group that has not completed never will: it is marked cut short,
    not running.
    """
    first = views[0]
    ranked: list[tuple[float, str]] = []
    issues: list[MemberIssue] = []
    nested: list[GroupView] = []
    # Stopped by Ctrl-C (any of them: it stops them all), or every one cancelled by its caller.
    stopped = (
        "interrupted"
        if any(v.stopped == "interrupted" for v in views)
        else ("cancelled" if all(v.stopped == "cancelled" for v in views) else None)
    )
    for view in views:
        dropped = _cancelled(view) if stopped else _not_needed(view)
        ranked.extend((sec, view.member_tag(i)) for sec, i in view.slowest if i not in dropped)
        issues.extend(_issues_of(view, dropped))
        if fold:
            below = descendants(view)
            nested.extend(below)
            for group in below:
                issues.extend(
                    _issues_of(group, _cancelled(group) if stopped else _not_needed(group))
                )
    ranked.sort(key=lambda item: (-item[0], item[1]))
    issues.sort(key=_by_order)
    by_name: dict[str, list[GroupView]] = {}
    for view in views:
        for child in view.children:
            by_name.setdefault(child.name, []).append(child)
    quorums = {v.quorum for v in views}
    return GroupSummary(
        name=first.name,
        count=len(views),
        statuses={_status_of(v, final) for v in (*views, *nested)},
        total=sum(v.known_total() or v.done for v in views),
        done=sum(v.done for v in views),
        succeeded=sum(v.succeeded for v in views),
        failed=sum(v.failed for v in views),
        timed_out=sum(v.timed_out for v in views),
        cancelled=sum(v.cancelled for v in views),
        skipped=sum(v.skipped for v in views),
        retried=sum(v.retried for v in (*views, *nested)),
        wall_time=max(v.elapsed for v in views),
        slowest=ranked[:slowest],
        issues=issues,
        children=(
            []
            if fold
            else [summarize(group, slowest=slowest, final=final) for group in by_name.values()]
        ),
        nested_failed=sum(v.failed for v in nested),
        nested_timed_out=sum(v.timed_out for v in nested),
        nested_cancelled=sum(v.cancelled for v in nested),
        nested_skipped=sum(v.skipped for v in nested),
        replayed=sum(v.replayed for v in views),
        stopped=stopped,
        never_started=sum(v.never_started for v in views),
        quorum=quorums.pop() if len(quorums) == 1 else None,
        quorum_reached=sum(v.quorum_reached() for v in views),
        not_needed=0 if stopped else sum(v.not_needed for v in views),
        nested_not_needed=0 if stopped else sum(v.not_needed for v in nested),
    )


def _status_of(view: GroupView, final: bool) -> str:
    """The status that sets a summary's mark: ``completed`` for a group that reached its
    quorum (it did what was asked, its members not needed cancelled)."""
    if view.status is None:
        return "unfinished" if final else "running"
    return "completed" if view.quorum_reached() else view.status


def _cancelled(view: GroupView) -> set[int]:
    """The members of ``view`` that were cancelled because it was stopped (Ctrl-C, or its
    caller cancelled it): left out of the failures and the slowest."""
    if view.stopped is None:
        return set()
    return {issue.order[-1] for issue in view.issues if issue.status == "cancelled"}


def _not_needed(view: GroupView) -> set[int]:
    """The members of ``view`` cancelled because it reached its quorum: left out of the
    failures and the slowest."""
    if not view.not_needed:
        return set()
    return {issue.order[-1] for issue in view.issues if issue.not_needed}


def _issues_of(view: GroupView, dropped: set[int]) -> list[MemberIssue]:
    """What the summary lists for ``view``: its failed ``map()`` input, its members' failures
    (but those ``dropped``)."""
    listed = [issue for issue in view.issues if issue.order[-1] not in dropped]
    failed_input = view.input_issue()
    return listed if failed_input is None else [failed_input, *listed]


def _by_order(issue: MemberIssue) -> tuple[int, ...]:
    return issue.order


def descendants(view: GroupView) -> list[GroupView]:
    """Every group nested below ``view``, depth first, in the order they started."""
    found: list[GroupView] = []
    for child in view.children:
        found.append(child)
        found.extend(descendants(child))
    return found


def status_mark(statuses: set[str], *, stopped: bool = False) -> str:
    """``✔`` when every group completed, ``⚠`` for partial results, ``⏹`` for a group stopped
    (by Ctrl-C, or cancelled by its caller), ``▶`` while one still runs (a summary asked for
    mid-run), ``✘`` otherwise."""
    if stopped:
        return "⏹"
    if "running" in statuses:
        return "▶"
    if statuses == {"completed"}:
        return "✔"
    if statuses <= {"completed", "partial"}:
        return "⚠"
    return "✘"


def summary_lines(summary: GroupSummary, *, indent: int = 2, level: int = 0) -> list[str]:
    """Plain-text lines for ``summary`` and its children, indented as a tree."""
    pad = " " * (indent * level)
    name = summary.name if summary.count == 1 else f"{summary.name} ×{summary.count}"
    counts = (
        summary.done,
        summary.total,
        summary.succeeded,
        summary.failed,
        summary.timed_out,
        summary.cancelled,
        summary.skipped,
    )
    if summary.stopped:
        parts = [
            summary.stopped,
            interrupted_text(*counts, summary.never_started, replayed=summary.replayed),
        ]
    else:
        parts = [outcome_text(*counts, replayed=summary.replayed, not_needed=summary.not_needed)]
        reached = quorum_text(
            summary.quorum, summary.quorum_reached, summary.count, summary.statuses
        )
        if reached:
            parts.insert(0, reached)
    nested_failed = summary.nested_failed - summary.nested_not_needed
    if nested_failed:
        parts.append(
            failed_text(
                nested_failed,
                summary.nested_timed_out,
                summary.nested_cancelled - summary.nested_not_needed,
                summary.nested_skipped,
                label="failed in nested groups",
            )
        )
    if summary.retried:
        parts.append(f"{summary.retried} retried")
    wall = seconds(summary.wall_time)
    parts.append(wall if summary.count == 1 else f"max {wall}")
    if summary.slowest:
        parts.append("slowest " + ", ".join(f"{tag} {seconds(s)}" for s, tag in summary.slowest))
    mark = status_mark(summary.statuses, stopped=summary.stopped is not None)
    lines = [f"{pad}{mark} 📦 {name}: " + " · ".join(parts)]
    lines.extend(issue_line(issue, pad + " " * (indent + 2)) for issue in summary.issues)
    for child in summary.children:
        lines.extend(summary_lines(child, indent=indent, level=level + 1))
    return lines


def outcome_text(
    done: int,
    total: int | None,
    succeeded: int,
    failed: int,
    timed_out: int = 0,
    cancelled: int = 0,
    skipped: int = 0,
    *,
    replayed: int = 0,
    not_needed: int = 0,
) -> str:
    """``"30 finished · 28 ok · 2 failed"``: how the members ended. Finished members are the
    ones that have a result, ok or not (``"12 of 30 finished"`` while some have none).
    ``replayed`` of the ok ones came from a resumed run's checkpoints: ``28 ok (13
    replayed)``. ``not_needed`` of the cancelled ones (counted in ``failed`` and
    ``cancelled``, as every member that did not succeed is) were cancelled because the group
    reached its quorum: not failures, nor finished, but ``"2 of 5 finished · 2 ok · 0 failed ·
    3 cancelled (not needed)"``."""
    done -= not_needed
    finished = (
        f"{done} finished" if total is None or done >= total else f"{done} of {total} finished"
    )
    ok = f"{succeeded} ok" + (f" ({replayed} replayed)" if replayed else "")
    not_ok = failed_text(failed - not_needed, timed_out, cancelled - not_needed, skipped)
    spared = f" · {not_needed} cancelled (not needed)" if not_needed else ""
    return f"{finished} · {ok} · {not_ok}{spared}"


def quorum_text(quorum: int | None, reached: int, count: int, statuses: set[str]) -> str:
    """``"quorum of 2 reached"`` for ``count`` groups with a ``quorum`` (merged same-named
    ones: ``"quorum of 2 reached in 3 of 4"``), of which ``reached`` reached it;
    ``"quorum of 2 not reached"`` when none did and one ended without every member ok; empty
    without a quorum, or when none reached it and all completed (a quorum above the group's
    size)."""
    if quorum is None:
        return ""
    if reached == count:
        return f"quorum of {quorum} reached"
    if reached:
        return f"quorum of {quorum} reached in {reached} of {count}"
    if statuses <= {"completed", "running", "unfinished"}:
        return ""
    return f"quorum of {quorum} not reached"


def interrupted_text(
    done: int,
    total: int | None,
    succeeded: int,
    failed: int,
    timed_out: int = 0,
    cancelled: int = 0,
    skipped: int = 0,
    never_started: int = 0,
    *,
    replayed: int = 0,
) -> str:
    """``"13 of 30 finished · 12 ok · 1 failed · 5 cancelled · 12 never started"``: a group
    stopped by Ctrl-C, or cancelled by its caller. The arguments count as ``outcome_text``'s do
    (``failed`` includes the cancelled members); here the cancelled members are not failures
    but what was stopped: those that were running, and those that ``never_started``."""
    finished = done - cancelled
    of = f"{finished} finished" if total is None else f"{finished} of {total} finished"
    ok = f"{succeeded} ok" + (f" ({replayed} replayed)" if replayed else "")
    not_ok = failed_text(failed - cancelled, timed_out, 0, skipped)
    stopped = f"{cancelled - never_started} cancelled · {never_started} never started"
    return f"{of} · {ok} · {not_ok} · {stopped}"


def failed_text(
    failed: int,
    timed_out: int = 0,
    cancelled: int = 0,
    skipped: int = 0,
    *,
    label: str = "failed",
) -> str:
    """``"2 failed (1 timed out, 1 cancelled)"``: the members that did not succeed, by kind."""
    kinds = ", ".join(
        f"{n} {kind}"
        for n, kind in ((timed_out, "timed out"), (cancelled, "cancelled"), (skipped, "skipped"))
        if n
    )
    return f"{failed} {label}" + (f" ({kinds})" if kinds else "")


def interrupted_lines(
    finished: int,
    total: int,
    cancelled: int,
    never_started: int,
    *,
    groups: bool,
    run_id: str | None,
    resume: str | None,
) -> list[str]:
    """The last lines of a run stopped by Ctrl-C: ``⏹ interrupted (Ctrl-C): 13 of 30 members
    finished, 5 cancelled, 12 never started`` (members of the outermost groups; just
    ``⏹ interrupted (Ctrl-C)`` without ``groups``), then how to resume it, if it can be."""
    head = "⏹ interrupted (Ctrl-C)"
    if groups:
        head += (
            f": {finished} of {total} members finished, {cancelled} cancelled, "
            f"{never_started} never started"
        )
    lines = [head]
    if run_id is not None and resume is not None:
        lines.append(f"  run {run_id} is saved as interrupted; to resume: {resume}")
    return lines


def issue_line(issue: MemberIssue, pad: str = "") -> str:
    """``✘ docs#3 FAILED: ValueError: boom``, the error ``clipped`` (the issue keeps it whole)."""
    return f"{pad}✘ {issue.tag} {issue.status.upper()}: {clipped(issue.error)}"


def seconds(value: float) -> str:
    """``42ms`` below a second, ``1.25s`` above."""
    if value < 1:
        millis = value * 1000
        if millis > 0:
            # The same text as ``f"{millis:.0f}ms"`` (both round half to even on the exact
            # value), at half the cost: this runs once per finished member.
            return MILLIS[round(millis)]
        return f"{millis:.0f}ms"
    return f"{value:.2f}s"


# ``MILLIS[round(ms)]`` is ``f"{ms:.0f}ms"`` for any ``0 < ms < 1000``.
MILLIS: tuple[str, ...] = tuple(f"{n}ms" for n in range(1001))


def bar(done: int, total: int | None, width: int = 20) -> str:
    """A text bar, ``████░░░░``; empty when the total is unknown."""
    if not total:
        return "░" * width
    filled = min(width, done * width // total)
    return "█" * filled + "░" * (width - filled)


def percent(done: int, total: int | None) -> str:
    return "?%" if not total else f"{done * 100 // total}%"
