"""``open_backend``: the store a location names (SQLite or JSON), opened in a mode.

::

    backend = open_backend("runs/state.db", mode="read")     # SQLite, never written
    backend = open_backend("runs/json/")                      # a folder of JSON run files

Its own module, above ``backend`` and both backends, so that they never import each other.
"""

from __future__ import annotations

from pathlib import Path

from rh_agents.recovery.backend import OpenMode, StateBackend, check_mode, default_state_path
from rh_agents.recovery.json_backend import JSONBackend
from rh_agents.recovery.sqlite_backend import SQLiteBackend

__all__ = ["open_backend"]


def open_backend(
    location: StateBackend | str | Path | None = None, *, mode: OpenMode = "create"
) -> StateBackend:
    """A backend for ``location``: a backend is returned as is; ``None`` is the default store,
    ``default_state_path()``; a path ending in ``.db``/``.sqlite``/``.sqlite3`` is SQLite; any
    other path is a directory of JSON files. ``mode``: see the module docstring."""
    if isinstance(location, StateBackend):
        return location
    mode = check_mode(mode)
    path = Path(location) if location is not None else default_state_path()
    if path.suffix in {".db", ".sqlite", ".sqlite3"}:
        return SQLiteBackend(path, mode=mode)
    return JSONBackend(path, mode=mode)
