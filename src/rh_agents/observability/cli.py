"""``rh-agents runs timeline RUN_ID --out run.html``: a stored run's members as a chart.

Checkpoints keep each event's duration, status, attempts and error, not when it started, so
the page shows durations only (every bar starts at zero, no queue wait). For a timeline with
waits and start times, record the run live with ``TimelineRecorder`` (``rh-agents demo
--timeline out.html`` does).
"""

from __future__ import annotations

from pathlib import Path

import typer

from rh_agents.errors import RecoveryError
from rh_agents.observability.timeline import Timeline
from rh_agents.recovery.backend import open_backend
from rh_agents.recovery.cli import STATE

__all__ = ["timeline"]


def timeline(
    run_id: str,
    out: Path = typer.Option(Path("timeline.html"), "--out", help="HTML file to write."),
    state: Path = STATE,
) -> None:
    """Write RUN_ID's group members as a self-contained HTML chart (durations only)."""
    if not state.exists():
        typer.echo(f"error: no state store at {state}", err=True)
        raise typer.Exit(code=2)
    try:
        with open_backend(state) as backend:
            backend.get_run(run_id)
            records = backend.load(run_id)
    except RecoveryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    chart = Timeline.from_checkpoints(records.values(), title=f"run {run_id}")
    if not chart.groups:
        typer.echo(f"run {run_id} has no group members to chart", err=True)
        raise typer.Exit(code=1)
    chart.write_html(out)
    members = sum(len(g.members) for g in chart.groups)
    typer.echo(f"wrote {out}: {len(chart.groups)} groups, {members} members (durations only)")
