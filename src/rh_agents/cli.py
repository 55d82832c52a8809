"""The ``rh-agents`` command line."""

from __future__ import annotations

import asyncio

import typer

from rh_agents.recovery.cli import runs_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="rh_agents command line.")
app.add_typer(runs_app, name="runs")


@app.command()
def demo(
    documents: int = typer.Option(6, min=1, help="How many notes to digest."),
    seed: int = typer.Option(7, help="Seed of the simulated latencies."),
) -> None:
    """Run the offline research-digest demo (no key, no network)."""
    from rh_agents.demo import run_demo

    digest = asyncio.run(run_demo(documents=documents, seed=seed))
    typer.echo("\nDigest:\n" + digest)


@app.callback()
def _root() -> None:
    """rh_agents: multi-agent workflows with parallel execution done right."""


def main() -> None:
    app()
