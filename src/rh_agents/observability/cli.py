"""``rh-agents runs timeline RUN_ID --out run.html``: a stored run's members as a chart.

Checkpoints keep each event's duration, status, attempts and error, not when it started, so
the page shows durations only (every bar starts at zero, no queue wait). For a timeline with
waits and start times, record the run live with ``TimelineRecorder`` (``rh-agents demo
--timeline out.html`` does).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from rh_agents.core.safe_text import printable
from rh_agents.errors import RecoveryError
from rh_agents.observability.timeline import Timeline
from rh_agents.recovery.cli import RUN_ID, STATE, store_path
from rh_agents.recovery.opening import open_backend

__all__ = ["check_output_file", "timeline"]


def check_output_file(path: Path, option: str) -> None:
    """Stop with a one-line error (exit 2) unless ``path`` can be written: its folder exists
    and takes new files, and the file itself, if there, is a writable file.

    Checked before any work, so a run is not lost to a typo in an output path.
    """
    folder = path.parent
    problem = None
    if path.is_dir():
        problem = "it is a folder"
    elif not folder.exists():
        problem = f"the folder {folder} does not exist"
    elif not folder.is_dir():
        problem = f"{folder} is not a folder"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = "the file is not writable"
    elif not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        problem = f"the folder {folder} is not writable"
    if problem is not None:
        typer.echo(f"error: {option} {path}: {problem}", err=True)
        raise typer.Exit(code=2)


def timeline(
    run_id: str = RUN_ID,
    out: Path = typer.Option(Path("timeline.html"), "--out", help="HTML file to write."),
    state_option: str | None = STATE,
) -> None:
    """Write RUN_ID's group members as a self-contained HTML chart (durations only)."""
    check_output_file(out, "--out")
    state = store_path(state_option)
    if not state.exists():
        typer.echo(f"error: no state store at {state}", err=True)
        raise typer.Exit(code=2)
    try:
        with open_backend(state, mode="read") as backend:
            backend.get_run(run_id)
            records = backend.load(run_id)
    except RecoveryError as exc:
        typer.echo(f"error: {printable(str(exc))}", err=True)  # it may quote stored text
        raise typer.Exit(code=2) from exc
    chart = Timeline.from_checkpoints(records.values(), title=f"run {run_id}")
    if not chart.groups:
        typer.echo(f"run {run_id} has no group members to chart", err=True)
        raise typer.Exit(code=1)
    try:
        chart.write_html(out)
    except OSError as exc:
        typer.echo(f"error: --out {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=2) from exc
    members = sum(len(g.members) for g in chart.groups)
    typer.echo(f"wrote {out}: {len(chart.groups)} groups, {members} members (durations only)")
