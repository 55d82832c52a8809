"""The viewer's servers: ``serve(state)`` in the run's process, ``rh-agents ui``, the demo's
``--ui``. Every server binds 127.0.0.1 on a free port and is stopped by the test."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import MemberFinished
from rh_agents.demo import run_demo
from rh_agents.errors import ConfigurationError
from rh_agents.ui import Viewer, create_app, serve
from rh_agents.ui import server as server_module
from rh_agents.ui.live import LiveFeed
from rh_agents.ui.server import bind
from ui_support import run_workflow, running_run, stored_run

pytestmark = pytest.mark.timeout(60)


async def test_serve_watches_a_run_over_real_http(state_store: Path) -> None:
    state = ExecutionState(run_id="served")
    async with serve(state, port=0) as viewer:
        assert viewer.host == "127.0.0.1" and viewer.url.startswith("http://127.0.0.1:")
        assert viewer.run_url(state) == viewer.url + "runs/served"
        async with httpx.AsyncClient(base_url=viewer.url) as client:
            events: list[str] = []

            async def follow() -> None:
                async with client.stream("GET", "/api/runs/served/events") as response:
                    async for line in response.aiter_lines():
                        if line.startswith("event:"):
                            events.append(line[6:].strip())

            follower = asyncio.create_task(follow())
            await run_workflow(state, members=6, delay=0.02)
            viewer.finish(state)
            await asyncio.wait_for(follower, 10)  # the stream ends with the run
            assert events[-1] == "end" and "update" in events
            runs = (await client.get("/api/runs")).json()["runs"]
            assert [(r["run_id"], r["live"], r["status"]) for r in runs] == [
                ("served", True, "completed")
            ]
    # Stopped: nothing listens there any more.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(viewer.url, timeout=2)


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_the_end_of_a_serve_block_reaches_the_open_streams(
    state_store: Path, outcome: str
) -> None:
    """Leaving the block marked the run finished and stopped the server at once: the open
    streams were ended before their ``end`` (a client got its last update, then the
    connection closed, with no word that the run was over)."""
    state = ExecutionState(run_id="ending")
    events: list[tuple[str, str]] = []
    connected = asyncio.Event()

    async def follow(url: str) -> None:
        async with (
            httpx.AsyncClient(base_url=url) as client,
            client.stream("GET", "/api/runs/ending/events") as response,
        ):
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((kind, line[5:].strip()))
                    connected.set()

    follower: asyncio.Task[None] | None = None
    with contextlib.suppress(RuntimeError):
        async with serve(state, port=0) as viewer:
            follower = asyncio.create_task(follow(viewer.url))
            await asyncio.wait_for(connected.wait(), 10)
            await run_workflow(state, members=3)
            if outcome == "failed":
                raise RuntimeError("the program failed")
    assert follower is not None
    await asyncio.wait_for(follower, 10)
    assert [kind for kind, _ in events][-1] == "end"
    assert json.loads(events[-1][1])["run"]["status"] == outcome


async def test_a_failed_run_is_marked_failed(state_store: Path) -> None:
    state = ExecutionState(run_id="broken")
    with pytest.raises(RuntimeError):
        async with serve(state, port=0) as viewer:
            viewer.watch(state)
            raise RuntimeError("the program failed")
    assert viewer.feeds["broken"].status == "failed"


async def test_a_port_in_use_is_an_error() -> None:
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            await Viewer(port=taken.getsockname()[1]).start()
        # port=None: the default port if free, else any free one.
        async with Viewer() as viewer:
            assert viewer.port > 0
    finally:
        taken.close()


@pytest.fixture
def sockets(monkeypatch: pytest.MonkeyPatch) -> list[socket.socket]:
    """Every internet socket made while the test runs (to check that none is left open;
    the event loop's own are Unix sockets)."""
    made: list[socket.socket] = []

    class Recorded(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.family in (socket.AF_INET, socket.AF_INET6):
                made.append(self)

    monkeypatch.setattr(socket, "socket", Recorded)
    return made


def _open(sockets: list[socket.socket]) -> list[socket.socket]:
    return [sock for sock in sockets if sock.fileno() != -1]


@pytest.mark.parametrize("port", [-1, 65536, 2**70, "8000", True, 8000.0])
async def test_a_port_that_is_no_port_is_refused_before_any_socket(
    port: Any, sockets: list[socket.socket]
) -> None:
    # port=-1 was an OverflowError and "8000" a TypeError, each leaving its socket open;
    # port=True listened on port 1.
    match = rf"the viewer's port must be an int from 0 to 65535, got {port!r}"
    with pytest.raises(ConfigurationError, match=match):
        await serve(ExecutionState(run_id="p"), port=port)
    with pytest.raises(ConfigurationError, match=match):
        Viewer(port=port)
    with pytest.raises(ConfigurationError, match=match):
        bind("127.0.0.1", port)
    assert sockets == []


async def test_serve_refuses_what_is_not_a_state() -> None:
    refused = r"serve\(\) takes the run's ExecutionState, got 5"
    with pytest.raises(ConfigurationError, match=refused):
        serve(5, port=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"takes the run's ExecutionState, got 'run-1'"):
        Viewer(port=0).watch("run-1")  # type: ignore[arg-type]


async def test_a_host_the_socket_layer_cannot_encode_is_refused_and_its_socket_closed(
    sockets: list[socket.socket],
) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot listen on host 'a\\x00b'.*null"):
        await serve(port=0, host="a\x00b")
    assert len(sockets) == 1 and _open(sockets) == []


async def test_a_server_that_fails_to_start_leaves_no_socket_open(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fails(self: Any, sockets: Any = None) -> None:
        raise RuntimeError("uvicorn could not start")

    monkeypatch.setattr(server_module._ViewerServer, "serve", fails)
    with pytest.raises(RuntimeError, match="uvicorn could not start"):
        await serve(port=0)
    assert len(sockets) == 1 and _open(sockets) == []


async def test_a_run_that_cannot_be_watched_leaves_no_server_running(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuses(self: Viewer, state: ExecutionState, run_id: str | None = None) -> LiveFeed:
        raise ConfigurationError("that run cannot be watched")

    monkeypatch.setattr(Viewer, "watch", refuses)
    with pytest.raises(ConfigurationError, match="cannot be watched"):
        await serve(ExecutionState(run_id="w"), port=0)
    assert len(sockets) == 1 and _open(sockets) == []


def test_importing_rh_agents_does_not_load_the_viewer() -> None:
    code = "import sys, rh_agents, rh_agents.cli; print('rh_agents.ui' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_ui_command(state_store: Path) -> None:
    asyncio.run(stored_run(state_store, "cli-run"))
    command = [sys.executable, "-m", "rh_agents", "ui", "--port", "0", "--state", str(state_store)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("rh_agents viewer on http://127.0.0.1:"), line
        url = line.split()[3]
        runs = httpx.get(url + "api/runs", timeout=10).json()["runs"]
        assert [r["run_id"] for r in runs] == ["cli-run"]
        page = httpx.get(url + "runs/cli-run", timeout=10)
        assert page.status_code == 200 and 'data-run-id="cli-run"' in page.text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""


def test_the_ui_command_on_a_port_in_use(state_store: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "rh_agents", "ui", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


async def test_the_demo_with_the_viewer(state_store: Path) -> None:
    async with Viewer(port=0) as viewer:
        out = io.StringIO()
        await run_demo(file=out, documents=4, workers=2, latency=0.0, run_id="demo-ui", ui=viewer)
        assert f"Watch it live: {viewer.url}runs/demo-ui" in out.getvalue()
        feed = viewer.feeds["demo-ui"]
        assert feed.status == "completed"
        async with httpx.AsyncClient(base_url=viewer.url) as client:
            data = (await client.get("/api/runs/demo-ui")).json()
        assert data["source"] == "live" and data["run"]["status"] == "completed"
        groups = {g["group_id"]: g for g in data["groups"]}
        assert groups["Orchestrator::documents"]["done"] == 4
        assert groups["Orchestrator::documents"]["metrics"]["max_workers"] == 2


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_demo_ui_flag_serves_until_ctrl_c(state_store: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BROWSER": "true", "COLUMNS": "100"}
    command = [sys.executable, "-m", "rh_agents", "demo", "--ui", "--documents", "3"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        url = None
        for line in process.stdout:
            if line.startswith("The viewer stays up at "):
                url = line.split()[5]
                break
        assert url is not None
        runs = httpx.get(url + "api/runs", timeout=10).json()["runs"]
        assert runs and runs[0]["status"] == "completed" and runs[0]["live"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.asynccontextmanager
async def a_client_that_stopped_reading(
    viewer: Viewer, path: str
) -> AsyncIterator[tuple[Any, _Records]]:
    """A client that asked ``viewer`` for the event stream at ``path`` and stopped reading it
    (its socket's buffer full): yields the server's connections, once that stream's writing
    paused, and what uvicorn and the viewer logged (call it after ``start()``: uvicorn's
    logging setup, as the server is made, resets its loggers)."""
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "rh_agents.ui")]
    for logger in loggers:
        logger.addHandler(records)
    stuck = socket.socket()
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        stuck.connect(("127.0.0.1", viewer.port))
        stuck.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert viewer._server is not None
        connections = viewer._server.server_state.connections

        async def until_blocked() -> None:
            while not any(  # noqa: ASYNC110 (uvicorn sets no event when writing pauses)
                getattr(c, "flow", None) and c.flow.write_paused for c in connections
            ):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(until_blocked(), 30)
        yield connections, records
    finally:
        stuck.close()
        for logger in loggers:
            logger.removeHandler(records)


async def test_close_ends_a_stream_whose_client_stopped_reading(tmp_path: Path) -> None:
    """A client that opened an event stream and stopped reading held ``Viewer.close()`` for
    uvicorn's whole grace period, which then cancelled the stream with ERROR tracebacks
    ("Exception in ASGI application", "timeout graceful shutdown exceeded"): the stream was
    blocked in a send to the full socket, not waiting on the viewer's closing."""
    store = tmp_path / "state.db"
    running_run(store, finished=20_000)  # megabytes of updates: more than the sockets hold
    viewer = Viewer(store=store, port=0)
    await viewer.start()
    async with a_client_that_stopped_reading(viewer, "/api/runs/busy-run/events") as (
        connections,
        records,
    ):
        await asyncio.wait_for(viewer.close(), 10)
    assert [r.getMessage() for r in records.records] == []
    assert not connections  # the stuck client's connection was cut, not left open


async def test_a_client_that_stopped_reading_does_not_hold_the_end_of_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping waits for the stream of a run that is over to send its ``end``: a client that
    stopped reading it must not hold ``close()`` (its connection is cut, as while the server
    stops), whatever the time limit."""
    monkeypatch.setattr(server_module, "_END_TIMEOUT", 120.0)
    group = "Orchestrator::docs"
    feed = LiveFeed("over")
    for index in range(20_000):  # megabytes of updates: more than the sockets hold
        address = f"{group}[{index}]"
        feed(MemberFinished.of_member(group, index, address, "w", 1.0, "completed", 0.01,
                                      None, 0, 0, None, 1, 0.0))  # fmt: skip
    feed.finish()
    viewer = Viewer(store=tmp_path / "state.db", port=0, push_interval=0.001)
    await viewer.start()
    viewer.feeds["over"] = feed
    async with a_client_that_stopped_reading(viewer, "/api/runs/over/events") as (
        connections,
        records,
    ):
        await asyncio.wait_for(viewer.close(), 10)
    assert [r.getMessage() for r in records.records] == []
    assert not connections


@pytest.mark.parametrize("value", [0, -1, 0.001, math.nan, math.inf, True, "1", None])
async def test_a_poll_interval_out_of_range_is_refused_before_any_socket(
    value: Any, sockets: list[socket.socket], tmp_path: Path
) -> None:
    """``poll_interval`` was not checked: 0 (or a negative number, or NaN) made every open
    event stream of a stored run read the store again at once, a core at 100 % for as long
    as a browser had the page open."""
    got = re.escape(repr(value))
    match = rf"the viewer's poll_interval must be a finite number >= 0\.01, got {got}"
    with pytest.raises(ConfigurationError, match=match):
        serve(ExecutionState(run_id="p"), port=0, poll_interval=value)
    with pytest.raises(ConfigurationError, match=match):
        Viewer(port=0, poll_interval=value)
    with pytest.raises(ValueError, match=match):  # (ConfigurationError is one)
        create_app(tmp_path / "state.db", poll_interval=value)
    assert sockets == []


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf, False, "0.25"])
def test_a_push_interval_out_of_range_is_refused(value: Any, tmp_path: Path) -> None:
    match = (
        rf"the viewer's push_interval must be a finite number >= 0, got {re.escape(repr(value))}"
    )
    with pytest.raises(ConfigurationError, match=match):
        Viewer(port=0, push_interval=value)
    with pytest.raises(ConfigurationError, match=match):
        create_app(tmp_path / "state.db", push_interval=value)


def test_the_shortest_intervals_are_taken(tmp_path: Path) -> None:
    app = create_app(tmp_path / "state.db", poll_interval=0.01, push_interval=0)
    assert (app.state.viewer.poll_interval, app.state.viewer.push_interval) == (0.01, 0.0)


# `rh-agents ui` whose reads of the store never end (a store locked by a writer): each read
# says so on stdout.
_HANGING_READS = """
import sys, threading
from rh_agents.cli import main
from rh_agents.ui.store import StoreReader

said = threading.Lock()

def read_run_sync(self, run_id):
    with said:  # (one line at a time: the reads run in threads)
        print("reading", flush=True)
    threading.Event().wait()

StoreReader.read_run_sync = read_run_sync
sys.argv = ["rh-agents", "ui", "--port", "0", "--state", sys.argv[1]]
main()
"""


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_ctrl_c_ends_the_open_streams_at_once(state_store: Path) -> None:
    """``rh-agents ui`` stopped with Ctrl-C while event streams were open took up to 17 s and
    printed tracebacks: a stream waiting for a read of the store (seconds for a big run; up
    to SQLite's busy timeout, 30 s, for a locked store) did not see the server stop, uvicorn
    cancelled it after its grace period ("Exception in ASGI application"), and the program
    then waited for the read's thread. The streams end as the server stops now, and a read
    still under way is left to its daemon thread."""
    running_run(state_store, finished=2)
    command = [sys.executable, "-c", _HANGING_READS, str(state_store)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("rh_agents viewer on http://127.0.0.1:"), line
        port = int(line.split()[3].rstrip("/").rsplit(":", 1)[1])
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(b"GET /api/runs/busy-run/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            clients.append(client)
        # Each stream is waiting for its read (it said so), its client connected.
        assert [process.stdout.readline() for _ in clients] == ["reading\n"] * len(clients)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=15)
        took = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert took < 5, f"Ctrl-C took {took:.1f} s"


def test_the_banner_shows_a_store_path_the_terminal_can_print() -> None:
    from rh_agents.ui.server import banner

    # An escape sequence in the name, and a byte that is not UTF-8 (os.fsdecode's surrogate).
    path = os.fsdecode(b"/tmp/runs\x1b[2J\xff.db")
    line = banner("http://127.0.0.1:8000/", path)
    line.encode("utf-8")  # printable as it is (a lone surrogate would raise here)
    assert line == (
        "rh_agents viewer on http://127.0.0.1:8000/ (store: /tmp/runs\u241b[2J?.db); Ctrl-C to stop"
    )
