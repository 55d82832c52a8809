"""The SQLite and JSON backends keep the same data and answer the same way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rh_agents.recovery import (
    CheckpointRecord,
    JSONBackend,
    RunStatus,
    SQLiteBackend,
    StateBackend,
    open_backend,
)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
records = st.lists(
    st.builds(
        CheckpointRecord,
        run_id=st.just("r"),
        address=st.from_regex(r"[a-z]{1,4}(\[[0-9]{1,2}\])?(::[a-z]{1,4})?", fullmatch=True),
        seq=st.integers(0, 10_000),
        actor=st.sampled_from(["a", "b"]),
        actor_version=st.sampled_from(["1", "2"]),
        status=st.sampled_from(["completed", "failed"]),
        result_json=st.none() | text.map(lambda t: '"' + t.replace('"', "") + '"'),
        output_model=st.none() | text,
        group_id=st.none() | text,
        parallel_index=st.none() | st.integers(0, 500),
        error=st.none() | text,
        execution_time=st.floats(0, 100),
        attempts=st.integers(1, 5),
    ),
    max_size=30,
)


def _both(tmp: Path) -> list[StateBackend]:
    now = iter(range(1, 1_000_000)).__next__
    return [
        SQLiteBackend(tmp / "state.db", now=lambda: float(now())),
        JSONBackend(tmp / "runs", now=lambda: float(now())),
    ]


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(records, min_size=1, max_size=3))
def test_both_backends_store_the_same_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[CheckpointRecord]]
) -> None:
    expected: dict[str, CheckpointRecord] = {}
    for batch in batches:
        for record in batch:
            expected[record.address] = record  # the last write of an address wins
    loaded = []
    for backend in _both(tmp_path_factory.mktemp("parity")):
        with backend:
            backend.create_run("r")
            for batch in batches:
                backend.save("r", batch)
            loaded.append(backend.load("r"))
            info = backend.get_run("r")
            assert info.checkpoints == len(expected)
            assert info.status is RunStatus.RUNNING
    assert loaded[0] == loaded[1] == dict(sorted(expected.items(), key=lambda i: i[1].seq))


def test_both_backends_list_runs_and_status_alike(tmp_path: Path) -> None:
    for backend in _both(tmp_path):
        with backend:
            backend.create_run("old")
            backend.create_run("new")
            backend.save("old", [], RunStatus.COMPLETED)
            runs = backend.list_runs()
            assert [r.run_id for r in runs] == ["old", "new"]  # most recently updated first
            assert runs[0].status is RunStatus.COMPLETED
            assert runs[0].updated > runs[0].created


def test_open_backend_picks_by_path(tmp_path: Path) -> None:
    with open_backend(tmp_path / "x.db") as sqlite_backend:
        assert isinstance(sqlite_backend, SQLiteBackend)
    with open_backend(tmp_path / "runs") as json_backend:
        assert isinstance(json_backend, JSONBackend)


def test_an_sqlite_store_whose_path_is_not_utf8(tmp_path: Path) -> None:
    """A path holding a byte that is not UTF-8 (0xff: Python holds it as "\\udcff") could be
    written but never read or reopened: the SQLite URI of the modes "read" and "write" (and of
    a lease's heartbeat) quoted the path as text, a UnicodeEncodeError. The file name's bytes
    are quoted now."""
    folder = tmp_path / os.fsdecode(b"caf\xff")
    try:
        folder.mkdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes no file name that is not UTF-8")
    path = folder / "state.db"
    with SQLiteBackend(path) as backend:
        backend.create_run("r")
    with SQLiteBackend(path, mode="write") as backend:
        lease = backend.acquire_lease("r")
        backend.save("r", [], status=RunStatus.COMPLETED)
        lease.release()
    with SQLiteBackend(path, mode="read") as backend:
        assert [(run.run_id, run.status) for run in backend.list_runs()] == [
            ("r", RunStatus.COMPLETED)
        ]
