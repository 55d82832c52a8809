"""Stores under faults: bad run ids, bad files, unwritable places, a full disk, read-only
stores. Every one is a ``RecoveryError`` naming the path (one line from the command line),
and reading never writes.

File permissions do not stop root, so when the tests run as root the read-only checks run in
a child process that drops the two capabilities that bypass them (``CAP_DAC_OVERRIDE`` and
``CAP_DAC_READ_SEARCH``): file modes then apply to it as to any user.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recovery_support import Squarer, make_backend, run_group
from rh_agents.cli import app
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import (
    CorruptStateError,
    InvalidRunIdError,
    RecoveryError,
    UnknownRunError,
)
from rh_agents.recovery import CheckpointRecord, JSONBackend, Recovery, SQLiteBackend

SRC = Path(__file__).resolve().parent.parent / "src"
BACKENDS = ["sqlite", "json"]
runner = CliRunner()


def _store(kind: str, tmp: Path) -> Path:
    return tmp / "state.db" if kind == "sqlite" else tmp / "runs"


def _record(i: int, size: int = 10) -> CheckpointRecord:
    return CheckpointRecord(
        run_id="r",
        address=f"members[{i}]::square",
        seq=i,
        actor="square",
        actor_version="1",
        status="completed",
        result_json=json.dumps("x" * size),
    )


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(result: object) -> str:
    exit_code = getattr(result, "exit_code", None)
    output: str = getattr(result, "output", "")
    assert exit_code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


async def _finished_run(store: Path) -> None:
    async with ExecutionState(run_id="r", recovery=Recovery(store)) as state:
        await run_group(state, Squarer(), 3)


# --- run ids --------------------------------------------------------------------------------

BAD_IDS = ["", "a/b", "../x", "a\x00b", "abc\n", "x" * 129]


@pytest.mark.parametrize("kind", BACKENDS)
def test_both_backends_and_recovery_refuse_the_same_bad_ids(tmp_path: Path, kind: str) -> None:
    store = _store(kind, tmp_path)
    with make_backend(kind, tmp_path) as backend:
        for bad in BAD_IDS:
            calls: list[tuple[Callable[..., object], tuple[object, ...]]] = [
                (backend.create_run, (bad,)),
                (backend.get_run, (bad,)),
                (backend.load, (bad,)),
                (backend.save, (bad, [])),
                (backend.acquire_lease, (bad,)),
                (ExecutionState.resume, (bad, store)),
                (lambda run_id: ExecutionState(run_id=run_id, recovery=Recovery(store)), (bad,)),
            ]
            for call, args in calls:
                with pytest.raises(InvalidRunIdError, match="a run id is 1 to 128 bytes"):
                    call(*args)
        assert backend.list_runs() == []
    if kind == "json":
        assert list(store.iterdir()) == []


def test_the_cli_refuses_a_bad_run_id_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SQLiteBackend(db).close()
    for bad in ("a/b", "../x", "abc\n"):
        line = _one_line_error(runner.invoke(app, ["runs", "show", bad, "--state", str(db)]))
        assert "a run id is 1 to 128 bytes" in line


# --- bad files and places -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe\x00not utf-8", "not UTF-8"),
        (b"{not json", "JSONDecodeError"),
        (b'{"format": 1}', "KeyError"),
        (b"[" * 100_000, "RecursionError"),
    ],
)
def test_a_bad_json_run_file_is_corrupt_state_naming_it(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    path = runs / "r.json"
    path.write_bytes(content)
    with pytest.raises(CorruptStateError, match=problem) as info:
        ExecutionState.resume("r", backend=runs)
    assert str(path) in str(info.value)
    line = _one_line_error(runner.invoke(app, ["runs", "show", "r", "--state", str(runs)]))
    assert str(path) in line and problem in line
    # `runs list` lists the runs it can read and names each bad file on stderr (status 1).
    listed = runner.invoke(app, ["runs", "list", "--state", str(runs)])
    assert listed.exit_code == 1 and "Traceback" not in listed.output, listed.output
    assert listed.stdout.strip() == f"no readable runs in {runs}"
    assert str(path) in listed.stderr and problem in listed.stderr
    assert path.read_bytes() == content
    assert sorted(p.name for p in runs.iterdir()) == ["r.json"]


def test_a_file_that_is_not_a_database_is_one_line_from_every_command(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"not a database\n" * 300)
    for args in (["list"], ["show", "r"], ["resume", "r"], ["timeline", "r"]):
        line = _one_line_error(runner.invoke(app, ["runs", *args, "--state", str(db)]))
        assert str(db) in line and "damaged" in line
    assert db.read_bytes() == b"not a database\n" * 300


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_store_that_cannot_be_created_fails_when_opened(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    store = _store(kind, blocker)  # a store inside a regular file
    with pytest.raises(RecoveryError, match="cannot create") as info:
        Recovery(store)
    assert str(blocker) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)  # wrapped, never raised bare


def test_a_store_path_of_the_wrong_kind_fails_when_opened(tmp_path: Path) -> None:
    folder = tmp_path / "state.db"
    folder.mkdir()
    with pytest.raises(RecoveryError, match=r"is a folder; pass the path of a \.db file") as info:
        Recovery(folder)
    assert str(folder) in str(info.value)
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(RecoveryError, match="is a file, not a folder"):
        Recovery(plain)


def test_a_full_disk_in_the_json_backend_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    with JSONBackend(runs) as backend:
        backend.create_run("r")
        backend.save("r", [_record(0)])
        before = (runs / "r.json").read_bytes()

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(RecoveryError, match="the disk is full") as info:
            backend.save("r", [_record(1)])
        assert str(runs / "r.json") in str(info.value)
        assert "left as it was" in str(info.value)
        with pytest.raises(RecoveryError, match="the disk is full"):
            ExecutionState(run_id="other", recovery=Recovery(runs))  # before anything runs
    assert (runs / "r.json").read_bytes() == before
    assert sorted(p.name for p in runs.iterdir()) == ["r.json"]  # no temporary or lock file
    assert list(JSONBackend(runs, mode="read").load("r")) == ["members[0]::square"]


def test_a_full_disk_in_the_sqlite_backend_keeps_the_committed_state(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with SQLiteBackend(db) as backend:
        backend.create_run("r")
        backend.save("r", [_record(0)])
        conn = backend._conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: a full disk
        with pytest.raises(RecoveryError, match="the disk is full") as info:
            backend.save("r", [_record(i, size=5000) for i in range(1, 50)])
        assert str(db) in str(info.value)
        assert not isinstance(info.value, CorruptStateError)
    with SQLiteBackend(db, mode="read") as reader:
        assert list(reader.load("r")) == ["members[0]::square"]


# --- reading never writes -------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_resuming_an_unknown_run_creates_nothing(tmp_path: Path, kind: str) -> None:
    store = _store(kind, tmp_path / "missing" / "deeper")
    with pytest.raises(UnknownRunError, match="no run 'ghost'"):
        ExecutionState.resume("ghost", backend=store)
    assert list(tmp_path.iterdir()) == []
    for args in (["list"], ["show", "ghost"], ["resume", "ghost"]):
        runner.invoke(app, ["runs", *args, "--state", str(store)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", BACKENDS)
async def test_resuming_an_unknown_run_leaves_the_store_as_it_was(
    tmp_path: Path, kind: str
) -> None:
    await _finished_run(_store(kind, tmp_path))
    before = _snapshot(tmp_path)
    with pytest.raises(UnknownRunError, match="no run 'ghost'"):
        ExecutionState.resume("ghost", backend=_store(kind, tmp_path))
    assert _snapshot(tmp_path) == before


def test_a_zero_byte_file_is_never_turned_into_a_database(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.touch()
    with pytest.raises(UnknownRunError, match="no run 'r'"):
        ExecutionState.resume("r", backend=db)
    listed = runner.invoke(app, ["runs", "list", "--state", str(db)])
    assert listed.exit_code == 0 and listed.output.strip() == f"no runs yet in {db}"
    _one_line_error(runner.invoke(app, ["runs", "show", "r", "--state", str(db)]))
    assert db.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["state.db"]


async def test_the_cli_reads_a_database_without_changing_it(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    await _finished_run(db)
    before = db.read_bytes()
    for args in (["list"], ["show", "r", "--all"], ["resume", "r"]):
        result = runner.invoke(app, ["runs", *args, "--state", str(db)])
        assert result.exit_code == 0, result.output
    assert db.read_bytes() == before
    _only_sqlite_side_files_appeared(tmp_path)


def _only_sqlite_side_files_appeared(folder: Path) -> None:
    """SQLite's own side files of a WAL database may appear (empty: no data), nothing else."""
    assert {p.name for p in folder.iterdir()} <= {"state.db", "state.db-wal", "state.db-shm"}
    wal = folder / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


# --- read-only stores -----------------------------------------------------------------------

_CHILD = """
import json, sys
from typer.testing import CliRunner
from rh_agents.cli import app
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import RecoveryError
from rh_agents.recovery import Recovery

runner = CliRunner()
out = {}
for name, store in json.loads(sys.argv[1]).items():
    listed = runner.invoke(app, ["runs", "list", "--state", store])
    shown = runner.invoke(app, ["runs", "show", "r", "--state", store])
    attempts = []
    for attempt in (
        lambda: ExecutionState(run_id="new", recovery=Recovery(store)),
        lambda: ExecutionState.resume("r", backend=store),
    ):
        try:
            attempt()
            attempts.append("allowed")
        except RecoveryError as exc:
            attempts.append(str(exc))
    out[name] = [listed.exit_code, listed.output, shown.exit_code, shown.output, attempts]
print(json.dumps(out))
"""


def _without_permission_overrides() -> Callable[[], None] | None:
    """For a child of root: drop the capabilities that bypass file modes (see the docstring)."""
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                os._exit(99)

    return drop


def _read_only_child(stores: dict[str, Path]) -> dict[str, list[object]]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps({k: str(v) for k, v in stores.items()})],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_without_permission_overrides(),
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[object]] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(sys.platform != "linux", reason="uses Linux capabilities when root")
async def test_read_only_stores_can_be_listed_and_shown_but_not_written(tmp_path: Path) -> None:
    stores: dict[str, Path] = {}
    # A database file with mode 0444 in a writable folder.
    await _finished_run(tmp_path / "file" / "state.db")
    stores["file"] = tmp_path / "file" / "state.db"
    # A clean database in a read-only folder: SQLite cannot make its -shm file there.
    await _finished_run(tmp_path / "folder" / "state.db")
    stores["folder"] = tmp_path / "folder" / "state.db"
    # A database whose writer died with commits still in the write-ahead log, read-only folder.
    crashed = tmp_path / "crashed"
    writer = SQLiteBackend(tmp_path / "live" / "state.db")
    writer.create_run("r")
    writer.save("r", [_record(0)])
    crashed.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = tmp_path / "live" / f"state.db{suffix}"
        (crashed / f"state.db{suffix}").write_bytes(source.read_bytes())
    writer.close()
    assert (crashed / "state.db-wal").stat().st_size > 0
    stores["crashed"] = crashed / "state.db"
    # The same, but its -shm file is gone: the log cannot be read in that folder.
    lost = tmp_path / "lost-shm"
    lost.mkdir()
    for suffix in ("", "-wal"):
        (lost / f"state.db{suffix}").write_bytes((crashed / f"state.db{suffix}").read_bytes())
    stores["lost-shm"] = lost / "state.db"
    # JSON run files in a read-only folder.
    await _finished_run(tmp_path / "json" / "runs")
    stores["json"] = tmp_path / "json" / "runs"
    # Stores that would have to be made inside a read-only folder.
    (tmp_path / "ro-parent").mkdir()
    stores["new-sqlite"] = tmp_path / "ro-parent" / "sub" / "state.db"
    stores["new-json"] = tmp_path / "ro-parent" / "runs"

    (tmp_path / "file" / "state.db").chmod(0o444)
    read_only = [stores[name].parent for name in ("folder", "crashed", "lost-shm")]
    read_only += [stores["json"], tmp_path / "ro-parent"]
    before = {name: _snapshot(path.parent) for name, path in stores.items()}
    for folder in read_only:
        for path in folder.iterdir():
            path.chmod(0o444)
        folder.chmod(0o555)
    try:
        out = _read_only_child(stores)
    finally:
        for folder in read_only:
            folder.chmod(0o755)
    for name in ("file", "folder", "crashed", "json"):
        list_code, listed, show_code, shown, attempts = out[name]
        assert list_code == 0 and "r " in str(listed), (name, listed)
        assert show_code == 0 and str(shown).startswith("run r: "), (name, shown)
        for refusal in attempts:  # refused when opened, before anything could run
            assert any(word in str(refusal) for word in ("read-only", "writable")), refusal
    assert "1 events" in str(out["crashed"][3])  # the commit in the log is seen
    list_code, listed, show_code, shown, _attempts = out["lost-shm"]
    assert list_code == 2 and "write-ahead log" in str(listed) and "Traceback" not in str(listed)
    for name in ("folder", "crashed", "lost-shm", "json"):
        assert _snapshot(stores[name].parent) == before[name], name
    for name in ("new-sqlite", "new-json"):
        _code, listed, _code, _shown, (create, resume) = out[name]
        assert "no runs yet in" in str(listed)
        assert "cannot create" in str(create) and "Permission denied" in str(create), create
        assert "no run 'r'" in str(resume), resume  # and nothing was created to say so
    assert list((tmp_path / "ro-parent").iterdir()) == []


def test_a_json_folder_that_refuses_new_files_is_a_recovery_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT:  # the temporary file and the lock file
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(RecoveryError, match="must exist and be writable") as info:
        ExecutionState(run_id="r", recovery=Recovery(runs))
    assert str(runs) in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)
    monkeypatch.setattr(os, "open", real_open)
    with JSONBackend(runs) as backend:
        backend.create_run("r")
        monkeypatch.setattr(os, "open", refusing_open)
        with pytest.raises(RecoveryError, match="cannot be written") as info:
            backend.save("r", [_record(0)])
        assert str(runs / "r.json") in str(info.value) and "left as it was" in str(info.value)


async def test_a_database_deleted_while_the_run_writes_is_an_error_not_a_silent_loss(
    tmp_path: Path,
) -> None:
    # SQLite went on writing to the unlinked file: every checkpoint after the deletion was
    # lost, and the run ended as if all was well.
    from recovery_support import Item
    from rh_agents.errors import CheckpointWarning

    path = tmp_path / "runs.db"
    squarer = Squarer()
    state = ExecutionState(run_id="nightly", recovery=Recovery(path, close_timeout=0.5))

    def delete_store() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    with (
        pytest.warns(CheckpointWarning, match="deleted or replaced"),
        pytest.raises(RecoveryError, match="deleted or replaced"),
    ):
        async with state:
            await squarer.event(Item(i=1), "", state)
            delete_store()
            await squarer.event(Item(i=2), "", state)
    assert state.recovery is not None and state.recovery.written == 1
