"""The one rule for run ids, shared by ``ExecutionState``, both backends, ``Recovery`` and the
command line.

::

    check_run_id("nightly-2024-06-01")      # returned as is
    check_run_id("../x")                    # InvalidRunIdError, saying the rule

A run id is a name, not a path. It must be non-empty, at most ``MAX_RUN_ID_BYTES`` bytes in
UTF-8, printable (no control characters: no newline, tab or NUL), hold no path separator
(``/`` or ``\\``) and no ``..``, and not be ``.`` (the current folder: a browser reads a link
to ``/runs/.`` as ``/runs/``). Such an id can name a file in any directory, a row in a
database, a line in a terminal and a page of the viewer, so both backends accept exactly the
same ids. Spaces and non-ASCII letters are allowed.
"""

from __future__ import annotations

from rh_agents.errors import InvalidRunIdError

__all__ = ["MAX_RUN_ID_BYTES", "RUN_ID_RULE", "check_run_id"]

MAX_RUN_ID_BYTES = 128

RUN_ID_RULE = (
    f"a run id is 1 to {MAX_RUN_ID_BYTES} bytes of printable text (UTF-8) with no control "
    "characters, no '/' or '\\\\' and no '..', and not '.'"
)


def check_run_id(run_id: object) -> str:
    """``run_id`` if it follows the rule (see the module docstring), else ``InvalidRunIdError``."""
    if not isinstance(run_id, str):
        raise InvalidRunIdError(f"run id {run_id!r} is not a string; {RUN_ID_RULE}")
    problem = _problem(run_id)
    if problem is not None:
        raise InvalidRunIdError(f"run id {run_id!r} {problem}; {RUN_ID_RULE}")
    return run_id


def _problem(run_id: str) -> str | None:
    if not run_id:
        return "is empty"
    if not run_id.isprintable():
        return "holds a control or unprintable character"
    if "/" in run_id or "\\" in run_id:
        return "holds a path separator"
    if ".." in run_id:
        return "holds '..'"
    if run_id == ".":
        return "is '.', which names the current folder"
    if len(run_id.encode("utf-8")) > MAX_RUN_ID_BYTES:
        return f"is longer than {MAX_RUN_ID_BYTES} bytes"
    return None
