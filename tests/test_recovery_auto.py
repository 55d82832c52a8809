"""``Recovery(resume="auto")``: one line that creates a run the first time and resumes it after."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recovery_support import Squarer, make_backend, run_group
from rh_agents.cli import app
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError, RunLockedError
from rh_agents.recovery import Recovery, ReplayMode, RunStatus
from rh_agents.recovery.session import current_command, shell_join

BACKENDS = ["sqlite", "json"]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_the_same_line_creates_then_resumes(tmp_path: Path, kind: str) -> None:
    backend = make_backend(kind, tmp_path)
    first = Squarer(fail={2, 5})
    recovery = Recovery(backend, resume="auto", resume_command="python digest.py")
    async with ExecutionState(run_id="digest-1", recovery=recovery) as state:
        await run_group(state, first, 8)
    assert not recovery.resumed
    info = backend.get_run("digest-1")
    assert info.status is RunStatus.COMPLETED and info.resume_command == "python digest.py"

    second = Squarer()
    recovery = Recovery(backend, resume="auto", resume_command="python digest.py")
    async with ExecutionState(run_id="digest-1", recovery=recovery) as state:
        assert backend.get_run("digest-1").status is RunStatus.RUNNING  # running again
        results = await run_group(state, second, 8)
    assert recovery.resumed and recovery.recovered == 6
    assert dict(second.calls) == {2: 1, 5: 1}
    assert [r.source for r in results].count("replay") == 6
    assert all(r.ok for r in results)
    assert backend.get_run("digest-1").status is RunStatus.COMPLETED
    backend.close()


async def test_it_needs_a_run_id_and_is_no_validation() -> None:
    with pytest.raises(ConfigurationError, match="needs the run's id"):
        ExecutionState(recovery=Recovery(resume="auto"))
    with pytest.raises(ConfigurationError, match="resume=True, not resume='auto'"):
        Recovery(resume="auto", replay=ReplayMode.VALIDATE)
    with pytest.raises(ConfigurationError, match="False, True or 'auto'"):
        Recovery(resume="yes")  # type: ignore[arg-type]


async def test_a_live_writer_keeps_a_second_one_out(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with ExecutionState(run_id="r", recovery=Recovery(db, resume="auto")):
        with pytest.raises(RunLockedError):
            ExecutionState(run_id="r", recovery=Recovery(db, resume="auto"))
    # Released at the end: the next one resumes.
    recovery = Recovery(db, resume="auto")
    async with ExecutionState(run_id="r", recovery=recovery):
        pass
    assert recovery.resumed


def test_the_default_resume_command_is_this_process_command_line() -> None:
    assert Recovery(resume="auto").resume_command == current_command()
    assert Recovery().resume_command is None
    assert shlex.split(current_command())[-1] == sys.orig_argv[-1]


def test_a_console_script_is_named_as_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "rh-agents"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "orig_argv", ["/usr/bin/python3", str(script), "demo", "--x y"])
    monkeypatch.setenv("PATH", str(bin_dir))
    assert current_command() == "rh-agents demo '--x y'"
    monkeypatch.setenv("PATH", str(tmp_path))  # not found there: the full path
    assert current_command() == f"{script} demo '--x y'"
    monkeypatch.setattr(sys, "orig_argv", ["python", "digest.py", "--fast"])
    assert current_command() == "python digest.py --fast"


async def test_runs_show_gives_the_command_of_a_run_that_did_not_complete(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    recovery = Recovery(db, resume="auto", resume_command="python digest.py --day 3")
    with pytest.raises(RuntimeError):
        async with ExecutionState(run_id="digest-3", recovery=recovery) as state:
            await run_group(state, Squarer(), 3)
            raise RuntimeError("boom")
    shown = CliRunner().invoke(app, ["runs", "show", "digest-3", "--state", str(db)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[:2] == [
        shown.output.splitlines()[0],
        "resume: python digest.py --day 3",
    ]
    assert shown.output.startswith("run digest-3: failed, 3 events")
    plan = CliRunner().invoke(app, ["runs", "resume", "digest-3", "--state", str(db)])
    assert plan.output.splitlines()[-1] == "To resume, run: python digest.py --day 3"


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_command_line_with_a_name_that_is_not_utf8_is_kept_as_a_shell_reads_it(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `python digest.py --state st<0xff>.db`: Python decodes the byte as a lone surrogate,
    # which no store can keep as text (the run failed as it started).
    word = os.fsdecode(b"st\xff 'x'.db")
    monkeypatch.setattr(sys, "orig_argv", ["python", "digest.py", "--state", word])
    backend = make_backend(kind, tmp_path)
    async with ExecutionState(run_id="r", recovery=Recovery(backend, resume="auto")) as state:
        await run_group(state, Squarer(), 2)
    command = backend.get_run("r").resume_command
    assert command == "python digest.py --state $'st\\xff \\x27x\\x27.db'"
    backend.close()


def test_a_word_that_is_not_utf8_is_read_back_by_bash_as_the_same_bytes() -> None:
    words = ["plain", "with space", os.fsdecode(b"st\xff 'x'\\.db"), os.fsdecode(b"\x80\x1b")]
    shown = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {shell_join(words)}"], capture_output=True, check=True
    )
    assert shown.stdout.split(b"\0")[:-1] == [os.fsencode(word) for word in words]
