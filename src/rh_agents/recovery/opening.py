"""``open_backend``: the store a location names (SQLite or JSON), opened in a mode.

::

    backend = open_backend("runs/state.db", mode="read")     # SQLite, never written
    backend = open_backend("runs/json/")                      # a folder of JSON run files

Its own module, above ``backend`` and both backends, so that they never import each other.
"""

from __future__ import annotations

import os
from pathlib import Path

from rh_agents.errors import ConfigurationError
from rh_agents.recovery.backend import OpenMode, StateBackend, check_mode, default_state_path
from rh_agents.recovery.json_backend import JSONBackend
from rh_agents.recovery.sqlite_backend import SQLiteBackend

__all__ = ["SQLITE_SUFFIXES", "is_sqlite_path", "open_backend"]

# The suffixes that name an SQLite file; compared without case, so that "state.DB" (as a
# case-insensitive file system may report it) is the same database, never a JSON folder.
SQLITE_SUFFIXES = frozenset({".db", ".sqlite", ".sqlite3"})


def is_sqlite_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an SQLite store (a suffix of ``SQLITE_SUFFIXES``, any case)."""
    return Path(path).suffix.lower() in SQLITE_SUFFIXES


def open_backend(
    location: StateBackend | str | Path | None = None, *, mode: OpenMode = "create"
) -> StateBackend:
    """A backend for ``location``: a backend is returned as is; ``None`` is the default store,
    ``default_state_path()``; a path ending in ``.db``/``.sqlite``/``.sqlite3`` (in any case:
    ``.DB`` too) is SQLite; any other path is a directory of JSON files. ``mode``: see the
    module docstring."""
    if isinstance(location, StateBackend):
        return location
    mode = check_mode(mode)
    if location is not None and not isinstance(location, str | os.PathLike):
        raise ConfigurationError(
            f"a state store is a path (a .db file, or a folder of JSON run files) or a "
            f"StateBackend, got {location!r}"
        )
    if location is not None and not str(location):
        # Path("") is the current folder: an empty setting must not scatter run files there.
        raise ConfigurationError(
            "the state store's path is empty; pass a .db file or a folder of JSON run files "
            "(or None for the default store)"
        )
    # "~/runs.db" as the environment variable RH_AGENTS_STATE takes it, not a folder named "~".
    path = Path(location).expanduser() if location is not None else default_state_path()
    if is_sqlite_path(path):
        return SQLiteBackend(path, mode=mode)
    return JSONBackend(path, mode=mode)
