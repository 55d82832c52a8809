"""One rule for run ids, in the state, both backends, ``Recovery`` and the command line."""

from __future__ import annotations

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.run_ids import MAX_RUN_ID_BYTES, check_run_id
from rh_agents.errors import InvalidRunIdError, RecoveryError
from rh_agents.recovery.session import new_run_id

GOOD = ["r", "nightly-2024-06-01", "a.b_c", "run 7", "été", ".hidden", "x" * MAX_RUN_ID_BYTES]
BAD = {
    "": "empty",
    "abc\n": "control",
    "a\x00b": "control",
    "tab\there": "control",
    "\x7f": "control",
    "a/b": "path separator",
    "a\\b": "path separator",
    "../x": "path separator",
    "..": "'..'",
    "a..b": "'..'",
    ".": "current folder",  # the viewer's link /runs/. was read as /runs/ (a 400)
    "x" * (MAX_RUN_ID_BYTES + 1): "longer than",
    "é" * (MAX_RUN_ID_BYTES // 2 + 1): "longer than",  # 2 bytes each in UTF-8
    "\udc80": "control",  # a lone surrogate cannot be written anywhere
}


@pytest.mark.parametrize("run_id", GOOD)
def test_good_ids_pass_unchanged(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(("run_id", "problem"), list(BAD.items()))
def test_bad_ids_are_refused_with_the_rule(run_id: str, problem: str) -> None:
    with pytest.raises(InvalidRunIdError, match=problem) as info:
        check_run_id(run_id)
    assert "a run id is 1 to 128 bytes of printable text" in str(info.value)
    assert isinstance(info.value, RecoveryError) and isinstance(info.value, ValueError)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidRunIdError, match="not a string"):
        check_run_id(7)


def test_generated_ids_follow_the_rule() -> None:
    assert check_run_id(new_run_id())


@pytest.mark.parametrize("run_id", [5, "a/b", ""])
def test_a_state_without_a_store_refuses_a_bad_run_id_too(run_id: object) -> None:
    # A run id names the run in records, traces and the viewer as well: the same rule.
    with pytest.raises(InvalidRunIdError, match="a run id is 1 to 128 bytes"):
        ExecutionState(run_id=run_id, watchdog=None)  # type: ignore[arg-type]
    assert ExecutionState(run_id="nightly", watchdog=None).run_id == "nightly"
