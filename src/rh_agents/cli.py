"""The ``rh-agents`` command line."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from rh_agents.core.run_ids import check_run_id
from rh_agents.demo_data import MAX_DOCUMENTS
from rh_agents.errors import ConfigurationError, InvalidRunIdError, RecoveryError
from rh_agents.observability.cli import check_output_file
from rh_agents.observability.cli import timeline as runs_timeline
from rh_agents.recovery.cli import STATE, runs_app, store_path


def _untyped_flags(params: list[Any]) -> list[Any]:
    """Flags take no value: their help shows no type (``--help`` rather than ``--help <bool>``)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="rh_agents command line.", cls=_Group
)
app.add_typer(runs_app, name="runs", cls=_Group)
runs_app.command("timeline")(runs_timeline)
# The ``runs`` commands are declared in their own modules; their help gets the same treatment.
for _info in runs_app.registered_commands:
    if _info.cls in (None, TyperCommand):
        _info.cls = _Command

_MODES = ("realtime", "progress", "collapsed", "smart")


@app.command(cls=_Command)
def demo(
    documents: int = typer.Option(
        30,
        min=1,
        max=MAX_DOCUMENTS,
        help=f"How many bundled documents to digest (at most {MAX_DOCUMENTS}).",
    ),
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
    run_id: str | None = typer.Option(
        None,
        "--run-id",
        help="Save the run as RUN_ID, or resume it if it exists (after a Ctrl-C, say). "
        "Default: a new demo-<date>-<time>.",
        show_default=False,
    ),
    state: str | None = typer.Option(
        None,
        "--state",
        metavar="PATH",
        help="State file (.db) or JSON directory to save the run in. Default: "
        "$RH_AGENTS_STATE, else ~/.local/state/rh_agents/state.db.",
        show_default=False,
    ),
    ui: bool = typer.Option(
        False,
        "--ui",
        help="Watch the run in the browser (the run viewer, extra 'ui'); it stays up after "
        "the run until Ctrl-C.",
    ),
) -> None:
    """Run the offline research-digest demo (no key, no network; a few seconds).

    The run is saved, so `rh-agents runs list`, `show`, `timeline` and `resume` can look at
    it afterwards. Ctrl-C stops it cleanly; the command it prints resumes it.
    """
    if mode not in _MODES:
        raise typer.BadParameter(
            f"choose one of {', '.join(_MODES)}; got {mode!r}", param_hint="--mode"
        )
    if timeline is not None:
        check_output_file(timeline, "--timeline")
    if run_id is not None:
        try:
            check_run_id(run_id)
        except InvalidRunIdError as exc:
            raise typer.BadParameter(str(exc), param_hint="--run-id") from None
    import rh_agents
    from rh_agents.demo import run_demo

    options: dict[str, Any] = dict(
        documents=documents,
        workers=workers,
        mode=mode,
        failure_rate=failure_rate,
        seed=seed,
        timeline=timeline,
        run_id=run_id,
        store=None if state is None else store_path(state),
    )
    try:
        rh_agents.run(_demo_with_viewer(options) if ui else run_demo(**options))
    except RecoveryError as exc:  # the store: locked by another run, unwritable...
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


async def _demo_with_viewer(options: dict[str, Any]) -> str:
    """The demo, watched live by the run viewer, which then stays up until Ctrl-C."""
    from rh_agents.demo import new_demo_run_id, run_demo
    from rh_agents.ui import Viewer
    from rh_agents.ui.server import open_in_browser

    options["run_id"] = options["run_id"] or new_demo_run_id(options["store"])
    async with Viewer(store=options["store"]) as viewer:
        open_in_browser(viewer.run_url(options["run_id"]))
        digest = await run_demo(**options, ui=viewer)
        typer.echo(f"The viewer stays up at {viewer.url} (Ctrl-C to stop).")
        await viewer.wait_closed()
    return digest


@app.command("ui", cls=_Command)
def ui(
    state_option: str | None = STATE,
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (another than 127.0.0.1 opens it to others)."
    ),
    port: int = typer.Option(8765, min=0, max=65535, help="Port (0: any free port)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the runs in the browser."),
) -> None:
    """Serve the run viewer: every run of the store, live, in the browser (read-only)."""
    if not host.strip():
        # An empty host binds every interface while the viewer names 127.0.0.1: refused.
        raise typer.BadParameter(
            "is empty; give an address: 127.0.0.1 (this machine only, the default), or "
            "0.0.0.0 to listen on every interface",
            param_hint="--host",
        )
    try:
        from rh_agents.ui import run_server
    except ConfigurationError as exc:  # the extra 'ui' is not installed
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    try:
        run_server(store_path(state_option), host=host, port=port, open_browser=open_browser,
                   announce=typer.echo)  # fmt: skip
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=2) from exc
    except KeyboardInterrupt:
        pass


@app.callback()
def _root() -> None:
    """rh_agents: multi-agent workflows with parallel execution done right."""


def main() -> None:
    _replace_what_output_cannot_encode()
    app()


def _replace_what_output_cannot_encode() -> None:
    """On a terminal or pipe whose encoding is not UTF-8 (``PYTHONIOENCODING=ascii``, a
    Latin-1 locale), a character it cannot show becomes ``?`` rather than a
    ``UnicodeEncodeError`` that ends the command halfway through its output."""
    stdout = sys.stdout
    encoding = (getattr(stdout, "encoding", None) or "").lower().replace("_", "-")
    if isinstance(stdout, io.TextIOWrapper) and not encoding.startswith("utf"):
        stdout.reconfigure(errors="replace")


if __name__ == "__main__":  # (python -m rh_agents.cli, as python -m rh_agents)
    main()
