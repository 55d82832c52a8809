"""A run viewer in the browser: every run, its tree, its groups and a live timeline.

Needs the extra ``ui`` (``pip install 'rh-agents[ui]'``: Starlette and uvicorn)::

    rh-agents ui                       # the runs of the default store, on http://127.0.0.1:8765/
    rh-agents ui --state runs/state.db --port 9000

    async with rh_agents.ui.serve(state) as viewer:   # this run, live, from this process
        async with state:
            await orchestrate(state)

The viewer only reads: the store is opened read-only, every route is a GET, and it binds to
127.0.0.1 unless told otherwise. See ``docs/ui.md`` for the pages and the JSON API.
Nothing in rh_agents imports this package unless asked to, so a run that does not use the
viewer does not pay for it.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    from rh_agents.errors import MissingDependencyError

    raise MissingDependencyError(
        f"the run viewer needs the extra 'ui' ({exc.name} is not installed): "
        "pip install 'rh-agents[ui]'"
    ) from exc

from rh_agents.ui.app import create_app
from rh_agents.ui.live import LiveFeed
from rh_agents.ui.server import DEFAULT_HOST, DEFAULT_PORT, Viewer, run_server, serve
from rh_agents.ui.store import StoreProblem, StoreReader

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LiveFeed",
    "StoreProblem",
    "StoreReader",
    "Viewer",
    "create_app",
    "run_server",
    "serve",
]
