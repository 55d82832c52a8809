"""The ``rh-agents`` command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from rh_agents.observability.cli import timeline as runs_timeline
from rh_agents.recovery.cli import runs_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="rh_agents command line.")
app.add_typer(runs_app, name="runs")
runs_app.command("timeline")(runs_timeline)

_MODES = ("realtime", "progress", "collapsed", "smart")


@app.command()
def demo(
    documents: int = typer.Option(30, min=1, help="How many bundled documents to digest."),
    workers: int = typer.Option(8, min=1, help="Documents processed at once (max_workers)."),
    mode: str = typer.Option(
        "smart", help="Display: realtime, progress, collapsed or smart (picks for you)."
    ),
    failure_rate: float = typer.Option(
        0.1, min=0.0, max=1.0, help="Chance that a simulated LLM call fails (transient 503)."
    ),
    seed: int = typer.Option(7, help="Seed of the simulated latencies and failures."),
    timeline: Path | None = typer.Option(
        None, "--timeline", help="Also write the run's timeline (HTML) to this file."
    ),
) -> None:
    """Run the offline research-digest demo (no key, no network; a few seconds)."""
    if mode not in _MODES:
        raise typer.BadParameter(
            f"choose one of {', '.join(_MODES)}; got {mode!r}", param_hint="--mode"
        )
    from rh_agents.demo import run_demo

    asyncio.run(
        run_demo(
            documents=documents,
            workers=workers,
            mode=mode,  # type: ignore[arg-type]  # checked against _MODES above
            failure_rate=failure_rate,
            seed=seed,
            timeline=timeline,
        )
    )


@app.callback()
def _root() -> None:
    """rh_agents: multi-agent workflows with parallel execution done right."""


def main() -> None:
    app()
