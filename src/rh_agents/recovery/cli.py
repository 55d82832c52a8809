"""``rh-agents runs``: look at stored runs, and at what a resume would do.

::

    rh-agents runs list                       # every run in the default store
    rh-agents runs show RUN_ID                # the execution tree, groups and status
    rh-agents runs show RUN_ID --all          # every member of every group too
    rh-agents runs resume RUN_ID --from ADDR  # what would be replayed and what would run again

Resuming itself needs the workflow's code, which the command line does not have: run the same
program again (with ``Recovery(resume="auto")``, or ``ExecutionState.resume(RUN_ID, ...)``);
``runs resume`` prints that plan, and the command that resumes the run when its program
recorded one. ``--state`` picks the store: a ``.db`` file (SQLite) or a directory of JSON run
files; by default the store of ``default_state_path()`` (``RH_AGENTS_STATE``, else
``~/.local/state/rh_agents/state.db``), where runs are saved when no path is given.

Every command only reads: the store is opened read-only (``mode="read"``), so nothing is created
or changed, and read-only files and folders work. A store that cannot be read is one line on
stderr and exit status 2, never a traceback. ``runs list`` over a store in which some runs
cannot be read (JSON run files, or SQLite run rows) lists the others, names those runs on
stderr and exits with status 1.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import typer

from rh_agents.core.run_ids import check_run_id
from rh_agents.core.safe_text import clipped, local_time, one_line, printable
from rh_agents.errors import RecoveryError
from rh_agents.recovery.backend import default_state_path
from rh_agents.recovery.opening import is_sqlite_path, open_backend
from rh_agents.recovery.passing_over import StoredCalls
from rh_agents.recovery.records import (
    CheckpointRecord,
    RunInfo,
    RunStatus,
    latest_calls,
)
from rh_agents.recovery.session import rerun_addresses

__all__ = ["list_runs", "resume", "runs_app", "show", "store_path"]

runs_app = typer.Typer(no_args_is_help=True, help="Stored runs: list, show, plan a resume.")

STATE = typer.Option(
    None,
    "--state",
    metavar="PATH",
    help="State file (.db) or JSON directory. Default: $RH_AGENTS_STATE, else "
    "~/.local/state/rh_agents/state.db.",
    show_default=False,
)
RUN_ID = typer.Argument(metavar="RUN_ID", help="The run's id, as `rh-agents runs list` shows it.")


def _when(timestamp: float) -> str:
    return local_time(timestamp)  # "?" for a damaged store's NaN or 1e20, not a traceback


def _fail(exc: RecoveryError | OSError, state: Path) -> typer.Exit:
    """One line on stderr, exit status 2 (backends raise ``RecoveryError``; an ``OSError``
    that slipped through still gets one line, with the store's path)."""
    text = str(exc) if isinstance(exc, RecoveryError) else f"{state}: {exc.strerror or exc}"
    # The message may quote stored text (the addresses --from could have named).
    typer.echo(f"error: {printable(text)}", err=True)
    return typer.Exit(code=2)


def store_path(state: str | Path | None) -> Path:
    """``--state``, or the default store (an empty ``--state`` is refused: a path made from
    an unset variable must not name the current folder)."""
    if state is None:
        return default_state_path()
    if not str(state).strip():
        raise typer.BadParameter(
            "is empty; pass a .db file or a folder of JSON run files, or leave it out for "
            "the default store",
            param_hint="--state",
        )
    return Path(state).expanduser()


def _read_run(state: Path, run_id: str) -> tuple[RunInfo, dict[str, CheckpointRecord]]:
    """The run's metadata and checkpoints, read without writing anything."""
    if not state.exists():
        typer.echo(
            f"error: no state store at {state}: no run has been saved there yet "
            "(`rh-agents runs list` says where runs are)",
            err=True,
        )
        raise typer.Exit(code=2)
    try:
        check_run_id(run_id)
        with open_backend(state, mode="read") as backend:
            return backend.get_run(run_id), backend.load(run_id)
    except (RecoveryError, OSError) as exc:
        raise _fail(exc, state) from exc


@runs_app.command("list")
def list_runs(state_option: str | None = STATE) -> None:
    """Every run, most recently updated first.

    A run that cannot be read (in a JSON folder: a run file corrupt, truncated, not readable;
    in SQLite: a run row edited by hand, such as a status this version does not know) does
    not hide the others: the readable runs are listed, each unreadable one is named on
    stderr, and the exit status is 1. Exit status 2: the store itself cannot be read.
    """
    state = store_path(state_option)
    if not state.exists():
        typer.echo(f"no runs yet in {state}")
        return
    try:
        with open_backend(state, mode="read") as backend:
            runs, problems = backend.list_readable_runs()
    except (RecoveryError, OSError) as exc:
        raise _fail(exc, state) from exc
    _list_table(runs, state, unreadable=len(problems))
    if problems:
        for problem in problems:
            typer.echo(f"error: {printable(str(problem))}", err=True)
        typer.echo(
            f"error: {len(problems)} {_unreadable_noun(state)} in {state} cannot be read (above) "
            f"and are not listed; the {len(runs)} other run(s) are",
            err=True,
        )
        raise typer.Exit(code=1)


def _unreadable_noun(state: Path) -> str:
    """What a store's unreadable runs are: JSON run files, or rows of an SQLite database."""
    return "run(s)" if is_sqlite_path(state) else "run file(s)"


def _list_table(runs: list[RunInfo], state: Path, *, unreadable: int) -> None:
    if not runs:
        typer.echo(f"no readable runs in {state}" if unreadable else f"no runs yet in {state}")
        return
    typer.echo(f"runs in {state}:")
    width = max(20, *(len(run.run_id) for run in runs))
    typer.echo(f"{'RUN':<{width}} {'STATUS':<11} {'EVENTS':>7}  {'CREATED':<19}  UPDATED")
    for run in runs:
        typer.echo(
            f"{_shown(run.run_id):<{width}} {run.status.value:<11} {run.checkpoints:>7}  "
            f"{_when(run.created):<19}  {_when(run.updated)}"
        )


def _shown(text: str) -> str:
    """Stored text (an actor or group name, an address, a run id) as one line, its control
    characters shown rather than sent to the terminal: a name holding ``\x1bc`` reset it."""
    return one_line(text)


def _describe(record: CheckpointRecord) -> str:
    """``summarize@1 failed: ValueError: boom``: the stored error on one line, its control
    characters shown rather than sent to the terminal, and clipped (it comes from user code
    and the services it called)."""
    text = _shown(f"{record.actor}@{record.actor_version} {record.status}")
    return text + (f": {printable(clipped(one_line(record.error)))}" if record.error else "")


@runs_app.command("show")
def show(
    run_id: str = RUN_ID,
    state_option: str | None = STATE,
    all_members: bool = typer.Option(False, "--all", help="List every group member too."),
) -> None:
    """The run's status, its tree of finished events, and a summary per group."""
    state = store_path(state_option)
    info, records = _read_run(state, run_id)
    typer.echo(
        f"run {_shown(info.run_id)}: {info.status.value}, {info.checkpoints} events, "
        f"created {_when(info.created)}, last update {_when(info.updated)}"
    )
    if info.status is not RunStatus.COMPLETED:
        typer.echo(f"resume: {_shown(_resume_hint(info, state))}")
    groups: dict[str, list[CheckpointRecord]] = defaultdict(list)
    for record in latest_calls(records.values()).values():
        if record.group_id is not None:
            groups[record.group_id].append(record)
    shown: set[str] = set()
    for address in sorted(records, key=_tree_key):
        if records[address].group_id is not None and not all_members:
            continue
        parts = address.split("::")
        for depth in range(len(parts)):
            node = "::".join(parts[: depth + 1])
            if node in shown:
                continue
            shown.add(node)
            found = records.get(node)
            status = f"  {_describe(found)}" if found is not None else ""
            # (A "#2" part: the second call at the address above, by a retried agent; the
            # calls below it are that call's. The key is what --from takes.)
            part = parts[depth]
            number = re.match(r"#(\d+)", part)
            name = f"{_shown(part)} (call {number[1]})" if number else _shown(part)
            typer.echo(f"{'  ' * depth}{name}{status}")
    if groups:
        typer.echo("groups:")
    for group_id in sorted(groups):
        typer.echo(f"  {_shown(group_id)}: {_group_line(groups[group_id])}")
    if groups:
        typer.echo(
            "  (group sizes are not stored: a member that never finished, cancelled or never "
            "started, leaves no checkpoint; 'at least' counts to the highest index stored)"
        )


def _group_line(members: list[CheckpointRecord]) -> str:
    """``13 of at least 20 members completed, 2 not completed [4, 9], no checkpoint for 5
    [3, 7, ...]``: what the checkpoints say, and no more.

    Its cost follows the records, not the indexes: a damaged store's index of 10**12 once
    made it build a list of every index below it (gigabytes, and no end). A negative index
    is no member's (they count from 0): such members are named apart as damaged, neither
    counted as members nor dropped without a word."""
    damaged = sorted({i for r in members if (i := r.parallel_index) is not None and i < 0})
    members = [r for r in members if r.parallel_index is None or r.parallel_index >= 0]
    done = sorted({r.parallel_index for r in members if r.status == "completed"}, key=_int_key)
    bad = sorted({r.parallel_index for r in members if r.status != "completed"}, key=_int_key)
    indexes = {r.parallel_index for r in members if r.parallel_index is not None}
    top = max(indexes) + 1 if indexes else 0  # the members 0 .. top - 1 existed
    seen = top if indexes else len(done) + len(bad)
    line = f"{len(done)} of at least {seen} members completed"
    if bad:
        line += f", {len(bad)} not completed {_some(bad)}"
    if top > len(indexes):
        line += f", no checkpoint for {top - len(indexes)} {_some(_first_missing(indexes, top))}"
    if damaged:
        line += f", {len(damaged)} with a damaged index (below 0) {_some(damaged)}"
    return line


_SHOWN = 20  # indexes listed per kind; the rest are counted


def _first_missing(indexes: set[int], top: int) -> list[int]:
    """The first indexes below ``top`` not in ``indexes``, one more than ``_some`` shows (so
    that it adds "..."): at most ``len(indexes) + _SHOWN + 1`` steps, whatever ``top`` is."""
    found: list[int] = []
    index = 0
    while index < top and len(found) <= _SHOWN:
        if index not in indexes:
            found.append(index)
        index += 1
    return found


def _some(indexes: Sequence[int | None], limit: int = _SHOWN) -> str:
    shown = ", ".join(str(i) for i in indexes[:limit])
    return f"[{shown}{', ...' if len(indexes) > limit else ''}]"


def _resume_hint(info: RunInfo, state: Path) -> str:
    """The command that resumes the run, if its program recorded one, else the call to make."""
    if info.resume_command:
        return info.resume_command
    return (
        f"run your program again with ExecutionState.resume({info.run_id!r}, "
        f"backend={str(state)!r}), or with Recovery(..., resume='auto') and run_id="
        f"{info.run_id!r}"
    )


_INDEX = re.compile(r"\[(\d+)\]")


def _tree_key(address: str) -> list[tuple[str, int, str]]:
    """Tree order, with member indices compared as numbers (``docs[2]`` before ``docs[10]``)."""
    key = []
    for part in address.split("::"):
        match = _INDEX.search(part)
        key.append((_INDEX.sub("", part), int(match.group(1)) if match else -1, part))
    return key


def _int_key(value: int | None) -> int:
    return -1 if value is None else value


@runs_app.command("resume")
def resume(
    run_id: str = RUN_ID,
    state_option: str | None = STATE,
    from_address: str | None = typer.Option(
        None, "--from", help="Re-run from this address (not empty)."
    ),
) -> None:
    """What resuming RUN_ID would replay and run again (resume itself runs your code)."""
    if from_address is not None and not from_address.strip():
        # An empty --from would silently mean "no --from": a resume that reruns nothing.
        raise typer.BadParameter(
            "needs an address, such as 'Orchestrator::docs[3]' (`rh-agents runs show RUN_ID "
            "--all` lists them); leave --from out to plan a resume of the whole run",
            param_hint="--from",
        )
    state = store_path(state_option)
    info, records = _read_run(state, run_id)
    try:
        rerun = rerun_addresses(records, from_address, run_id) if from_address else set()
    except RecoveryError as exc:
        raise _fail(exc, state) from exc
    replayed = [
        a
        for a, r in records.items()
        if r.status == "completed" and r.result_json is not None and a not in rerun
    ]
    calls = StoredCalls(records)
    # A failed call a retried agent followed with a completed one at its address is answered
    # by that one (see passing_over), unless --from runs it again.
    answered = {
        a: answer.address
        for a, r in records.items()
        if r.status != "completed"
        and a not in rerun
        and (answer := calls.answer(a, r)) is not None
        and answer.address not in rerun
        and answer.result_json is not None
    }
    answered_now = set(replayed) | answered.keys()
    again = [a for a in records if a not in answered_now]
    typer.echo(f"resuming run {run_id} would replay {len(replayed)} completed events")
    if again:
        typer.echo(f"and run again {len(again)} stored events (failed, unstorable or from --from):")
    else:
        typer.echo("and run no stored event again")
    for address in again[:50]:
        typer.echo(f"  {_shown(address)}  {_describe(records[address])}")
    if len(again) > 50:
        typer.echo(f"  ... and {len(again) - 50} more")
    if answered:
        typer.echo(
            f"{len(answered)} failed calls that made their agent retry are answered by the "
            "call that followed them (see docs/recovery.md, Resuming):"
        )
        for address, by in list(answered.items())[:50]:
            typer.echo(f"  {_shown(address)}  by {_shown(by)}")
    typer.echo("Events with no checkpoint (never finished) run as usual.")
    option = f", resume_from={from_address!r}" if from_address else ""
    if info.resume_command and not from_address:
        typer.echo(f"To resume, run: {_shown(info.resume_command)}")
        return
    typer.echo(
        "To resume, run your program with "
        f"ExecutionState.resume({run_id!r}, backend={str(state)!r}{option})."
    )
