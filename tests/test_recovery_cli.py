"""``rh-agents runs``: list, show and the resume plan, read from a real state file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recovery_support import Squarer, run_group
from rh_agents.cli import app
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery import Recovery
from rh_agents.recovery.opening import open_backend
from rh_agents.recovery.records import CheckpointRecord, RunStatus

runner = CliRunner()


async def _failed_run(db: Path) -> None:
    async with ExecutionState(run_id="nightly", recovery=Recovery(db)) as state:
        await run_group(state, Squarer(fail={2}), 12)


async def test_list_show_and_resume_plan(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    await _failed_run(db)

    listed = runner.invoke(app, ["runs", "list", "--state", str(db)])
    assert listed.exit_code == 0, listed.output
    assert "nightly" in listed.output and "completed" in listed.output

    shown = runner.invoke(app, ["runs", "show", "nightly", "--state", str(db)])
    assert shown.exit_code == 0, shown.output
    assert "members: 11 of at least 12 members completed, 1 not completed [2]" in shown.output
    assert "resume:" not in shown.output  # a completed run
    every = runner.invoke(app, ["runs", "show", "nightly", "--all", "--state", str(db)])
    lines = every.output.splitlines()
    at = lines.index("members[2]")  # one node per level, members in index order
    assert lines[at + 1] == "  square  square@1 failed: RuntimeError: member 2 failed"
    assert [line for line in lines if line.startswith("members[")] == [
        f"members[{i}]" for i in range(12)
    ]

    plan = runner.invoke(app, ["runs", "resume", "nightly", "--state", str(db)])
    assert plan.exit_code == 0, plan.output
    assert "would replay 11 completed events" in plan.output
    assert "members[2]::square" in plan.output
    assert "ExecutionState.resume('nightly'" in plan.output

    again = runner.invoke(
        app, ["runs", "resume", "nightly", "--from", "members[0]", "--state", str(db)]
    )
    assert again.exit_code == 0, again.output
    assert "members[0]::square" in again.output


def test_unknown_run_and_missing_store_are_clear_errors(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    missing = runner.invoke(app, ["runs", "show", "x", "--state", str(db)])
    assert missing.exit_code == 2
    assert "no state store" in missing.output
    db.write_bytes(b"junk" * 100)
    corrupt = runner.invoke(app, ["runs", "list", "--state", str(db)])
    assert corrupt.exit_code == 2
    assert "damaged" in corrupt.output
    assert db.read_bytes() == b"junk" * 100


async def test_a_resume_plan_with_nothing_to_run_again_ends_its_sentence(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with ExecutionState(run_id="clean", recovery=Recovery(db)) as state:
        await run_group(state, Squarer(), 3)
    plan = runner.invoke(app, ["runs", "resume", "clean", "--state", str(db)])
    assert plan.exit_code == 0, plan.output
    lines = plan.output.splitlines()
    assert lines[:2] == [
        "resuming run clean would replay 3 completed events",
        "and run no stored event again",
    ]
    assert not any(line.endswith(":") for line in lines)


async def test_a_stored_error_is_shown_on_one_line_without_control_codes(tmp_path: Path) -> None:
    # The stored text was printed as it was: a line break broke the tree, and an escape
    # sequence from a service's error reached the terminal.
    from pydantic import BaseModel

    from rh_agents import ExecutionEvent, Tool

    class Empty(BaseModel):
        pass

    async def fail(input: Empty, context: str, state: ExecutionState) -> None:
        raise ValueError("upstream said:\n\x1b[2Jcleared")

    event = ExecutionEvent(actor=Tool(name="call", input_model=Empty, handler=fail))
    db = tmp_path / "runs.db"
    async with ExecutionState(run_id="r", recovery=Recovery(db)) as state:
        await event(Empty(), "", state)
    for command in (["runs", "show", "r"], ["runs", "resume", "r"]):
        done = runner.invoke(app, [*command, "--state", str(db)])
        assert done.exit_code == 0, done.output
        assert "\x1b" not in done.output
        line = next(line for line in done.output.splitlines() if "upstream said" in line)
        assert line.endswith("ValueError: upstream said: ⏎ ␛[2Jcleared")


@pytest.mark.parametrize("bad", ["\udce9", "\ud800"])
def test_a_lone_surrogate_in_a_stored_error_is_shown_as_a_question_mark(
    tmp_path: Path, bad: str
) -> None:
    """An error naming a file whose name is not UTF-8 (``os.fsdecode``: ``\\udce9``), as a
    JSON store keeps it: ``runs timeline`` failed with a UnicodeEncodeError traceback, and
    ``runs show`` / ``runs resume`` with one for a surrogate outside surrogateescape's range."""
    store = tmp_path / "runs"  # a folder: the JSON backend keeps lone surrogates
    record = CheckpointRecord(
        run_id="r",
        address="files[0]::read",
        seq=0,
        actor="read",
        actor_version="1",
        status="failed",
        group_id="files",
        parallel_index=0,
        error=f"ValueError: cannot parse caf{bad}.txt",
    )
    with open_backend(store) as backend:
        backend.create_run("r")
        backend.save("r", [record], status=RunStatus.FAILED)
    out = tmp_path / "t.html"
    chart = runner.invoke(app, ["runs", "timeline", "r", "--state", str(store), "--out", str(out)])
    assert chart.exit_code == 0, chart.output
    assert "cannot parse caf?.txt" in out.read_text(encoding="utf-8")
    for command in (["runs", "show", "r", "--all"], ["runs", "resume", "r"]):
        done = runner.invoke(app, [*command, "--state", str(store)])
        assert done.exit_code == 0, (command, done.output, done.exception)
        assert "cannot parse caf?.txt" in done.output


@pytest.mark.parametrize("value", [1e20, -1e15, math.nan])
def test_a_run_whose_times_are_no_time_is_shown_with_a_question_mark(
    tmp_path: Path, value: float
) -> None:
    """A start or update time out of range (1e20, -1e15) or NaN in the store: ``runs list``
    and ``runs show`` printed a traceback; the time is now "?" and the other runs listed."""
    store = tmp_path / "runs"  # a folder: its files take NaN as Python's json writes it
    for run_id in ("good", "odd"):
        with open_backend(store) as backend:
            backend.create_run(run_id)
    path = store / "odd.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["run"]["created"] = data["run"]["updated"] = value
    path.write_text(json.dumps(data), encoding="utf-8")
    listed = runner.invoke(app, ["runs", "list", "--state", str(store)])
    assert listed.exit_code == 0, (listed.output, listed.exception)
    odd = next(line for line in listed.output.splitlines() if line.startswith("odd "))
    assert odd.split()[-2:] == ["?", "?"]
    assert any(line.startswith("good ") for line in listed.output.splitlines())
    shown = runner.invoke(app, ["runs", "show", "odd", "--state", str(store)])
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert "created ?, last update ?" in shown.output


async def test_stored_names_are_shown_without_control_codes(tmp_path: Path) -> None:
    """Actor and group names may hold control characters (``Tool(name="summarize\\x1bc\\rFAKE")``,
    a group ``"docs\\x07\\x08"``): ``runs show`` and ``runs resume`` printed them raw, and
    ``ESC c`` reset the terminal. Every stored string printed is now shown as pictures."""
    from pydantic import BaseModel

    from rh_agents import ExecutionEvent, Tool

    class Doc(BaseModel):
        text: str

    async def fail(input: Doc, context: str, state: ExecutionState) -> str:
        raise ValueError("no")

    tool = Tool(name="summarize\x1bc\rFAKE", input_model=Doc, handler=fail)
    db = tmp_path / "runs.db"
    state = ExecutionState(run_id="r", recovery=Recovery(db))
    async with state, state.parallel(max_workers=2, name="docs\x07\x08") as group:
        group.add(ExecutionEvent(actor=tool)(Doc(text="x"), "", state))
        await group.gather()
    commands = [
        ["runs", "show", "r", "--all"],
        ["runs", "resume", "r"],
        ["runs", "resume", "r", "--from", "nowhere"],  # its error lists known addresses
    ]
    for command in commands:
        done = runner.invoke(app, [*command, "--state", str(db)])
        assert done.exit_code in (0, 2), (command, done.output, done.exception)
        controls = {c for c in done.output if (c < " " and c != "\n") or "\x7f" <= c <= "\x9f"}
        assert not controls, (command, done.output)
        assert "summarize␛c␍FAKE" in done.output, (command, done.output)
    shown = runner.invoke(app, ["runs", "show", "r", "--all", "--state", str(db)])
    assert "docs␇␈" in shown.output


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need os.mkfifo")
def test_a_named_pipe_in_a_json_store_is_refused_not_read(tmp_path: Path) -> None:
    """A named pipe called ``r.json`` in a JSON store made ``runs list`` and ``runs show``
    hang for ever (reading a pipe waits for a writer); the SQLite backend already refused a
    store that is not a regular file. It is now named as what it is, and the others listed."""
    store = tmp_path / "runs"
    with open_backend(store) as backend:
        backend.create_run("good")
    os.mkfifo(store / "r.json")
    listed = runner.invoke(app, ["runs", "list", "--state", str(store)])
    assert listed.exit_code == 1, listed.output
    assert any(line.startswith("good ") for line in listed.output.splitlines())
    assert "r.json is not a regular file" in listed.output
    shown = runner.invoke(app, ["runs", "show", "r", "--state", str(store)])
    assert shown.exit_code == 2 and "r.json is not a regular file" in shown.output


def test_a_file_given_as_a_json_store_is_said_to_be_a_file(tmp_path: Path) -> None:
    """``runs show X --state notes.json`` said "the directory does not exist" of a file that
    exists, where ``runs list`` says it is a file: both say so now."""
    path = tmp_path / "notes.json"
    path.write_text("{}", encoding="utf-8")
    for command in (["runs", "show", "x"], ["runs", "resume", "x"], ["runs", "list"]):
        done = runner.invoke(app, [*command, "--state", str(path)])
        assert done.exit_code == 2, (command, done.output)
        assert f"{path} is a file, not a folder of run files" in done.output, command
        assert "does not exist" not in done.output


def _stored_members(store: Path, indexes: dict[int, int]) -> None:
    """Run ``r`` with a group ``members`` whose member ``members[a]`` is stored with the
    ``parallel_index`` ``indexes[a]``: a damaged store, where the two disagree."""
    records = [
        CheckpointRecord(
            run_id="r",
            address=f"members[{address}]::square",
            seq=seq,
            actor="square",
            actor_version="1",
            status="completed",
            result_json="1",
            group_id="members",
            parallel_index=index,
        )
        for seq, (address, index) in enumerate(indexes.items())
    ]
    with open_backend(store) as backend:
        backend.create_run("r")
        backend.save("r", records, status=RunStatus.COMPLETED)


@pytest.mark.timeout(60)
def test_runs_show_costs_what_is_stored_not_the_highest_index(tmp_path: Path) -> None:
    """``runs show`` listed every index below the highest one stored to find those with no
    checkpoint: a damaged store's index of 10**12 made it run out of memory (10**6 already
    took tens of megabytes). It now steps through the stored indexes and the few it shows."""
    import tracemalloc

    store = tmp_path / "runs"
    _stored_members(store, {0: 0, 1: 1, 2: 10**6})
    tracemalloc.start()
    try:
        shown = runner.invoke(app, ["runs", "show", "r", "--state", str(store)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert peak < 4_000_000, peak  # (about 0.2 MB; the list of 10**6 indexes took 40 MB)
    assert (
        "members: 3 of at least 1000001 members completed, no checkpoint for 999998 "
        f"[{', '.join(str(i) for i in range(2, 22))}, ...]"
    ) in shown.output

    huge = tmp_path / "huge"
    _stored_members(huge, {0: 0, 1: 10**12})
    shown = runner.invoke(app, ["runs", "show", "r", "--state", str(huge)])
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert f"2 of at least {10**12 + 1} members completed, no checkpoint for {10**12 - 1}" in (
        shown.output
    )


def test_runs_show_names_a_member_stored_with_a_negative_index(tmp_path: Path) -> None:
    """A member stored with a negative index (no member has one: a damaged store) was counted
    as completed and then silently left out of the indexes: with only such members a group
    read "1 of at least -4 members completed". It is now named apart, as damaged."""
    store = tmp_path / "runs"
    _stored_members(store, {0: 0, 1: -5, 3: 3})
    shown = runner.invoke(app, ["runs", "show", "r", "--state", str(store)])
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert (
        "members: 2 of at least 4 members completed, no checkpoint for 2 [1, 2], "
        "1 with a damaged index (below 0) [-5]"
    ) in shown.output

    alone = tmp_path / "alone"
    _stored_members(alone, {0: -5})
    shown = runner.invoke(app, ["runs", "show", "r", "--state", str(alone)])
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert "members: 0 of at least 0 members completed, 1 with a damaged index (below 0) [-5]" in (
        shown.output
    )
