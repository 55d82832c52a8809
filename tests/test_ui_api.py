"""The viewer's pages and JSON API over the ASGI app (httpx), event streams included."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError
from rh_agents.recovery import Recovery
from rh_agents.ui import create_app
from rh_agents.ui.live import LiveFeed
from ui_support import (
    EVIL,
    FAILING,
    RETRIED,
    EventReader,
    Item,
    Items,
    StreamingASGITransport,
    add_members,
    build_workflow,
    run_workflow,
    running_run,
    stored_run,
)

pytestmark = pytest.mark.timeout(30)

BASE = "http://127.0.0.1"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


async def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)  # type: ignore[arg-type]


@pytest.fixture
async def finished(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    await stored_run(store)
    running_run(store)
    async with await _client(create_app(store)) as client:
        yield client


async def test_runs_list_newest_first_with_counts(finished: httpx.AsyncClient) -> None:
    data = (await finished.get("/api/runs")).json()
    runs = data["runs"]
    assert [r["run_id"] for r in runs] == ["busy-run", "done-run"]
    done = runs[1]
    assert done["status"] == "completed"
    assert done["counts"] == {"completed": 5, "failed": 1}  # 5 members + Orchestrator, 1 failed
    assert done["events"] == 6 and done["duration"] >= 0 and done["created"] > 0
    assert runs[0]["status"] == "running" and runs[0]["counts"] == {"completed": 2}
    assert data["error"] is None and data["store_exists"] is True


async def test_runs_list_filters(finished: httpx.AsyncClient) -> None:
    only = (await finished.get("/api/runs", params={"status": "running"})).json()["runs"]
    assert [r["run_id"] for r in only] == ["busy-run"]
    by_id = (await finished.get("/api/runs", params={"q": "DONE"})).json()["runs"]
    assert [r["run_id"] for r in by_id] == ["done-run"]
    page = (await finished.get("/", params={"q": "done"})).text
    assert 'data-run-id="done-run"' in page and 'data-run-id="busy-run"' not in page


async def test_run_nodes_groups_and_metrics(finished: httpx.AsyncClient) -> None:
    data = (await finished.get("/api/runs/done-run")).json()
    assert data["source"] == "store" and data["run"]["status"] == "completed"
    nodes = {n["address"]: n for n in data["nodes"]}
    failed = nodes[f"Orchestrator::docs[{FAILING}]::work"]
    assert failed["status"] == "failed" and EVIL in failed["error"] and failed["attempts"] == 2
    assert nodes[f"Orchestrator::docs[{RETRIED}]::work"]["attempts"] == 2
    ok = nodes["Orchestrator::docs[0]::work"]
    assert ok["result"] == '{"n":0,"double":0}' and ok["duration"] >= 0
    member = nodes["Orchestrator::docs[0]"]
    assert member["kind"] == "member" and member["parent"] == "Orchestrator::docs"
    assert ok["parent"] == "Orchestrator::docs[0]" and nodes["Orchestrator"]["parent"] is None
    (group,) = data["groups"]
    assert group["group_id"] == "Orchestrator::docs" and group["parent"] == "Orchestrator"
    assert (group["total"], group["done"], group["succeeded"], group["failed"]) == (5, 5, 4, 1)
    assert group["status"] == "partial" and group["metrics_source"] == "checkpoints"
    assert group["metrics"]["run_time"]["count"] == 5 and group["metrics"]["retries"] == 2


async def test_run_page_is_rendered_on_the_server(finished: httpx.AsyncClient) -> None:
    response = await finished.get("/runs/done-run")
    assert response.status_code == 200
    page = response.text
    # The tree, by address, collapsible; the group with its counts and metrics.
    assert 'data-address="Orchestrator::docs[2]::work"' in page
    assert '<details class="group">' in page and "5 of at least 5 done · 4 ok · 1 failed" in page
    assert "run p50" in page and "2 retries" in page
    assert "/runs/done-run/timeline?group=Orchestrator%3A%3Adocs" in page
    # The error is text, escaped, and the page runs no inline script.
    assert "<script>window" not in page and "&lt;script&gt;window.__pwned" in page
    assert page.count("<script") == 1 and '<script src="/static/viewer.js" defer>' in page
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_timeline_page_and_data(finished: httpx.AsyncClient) -> None:
    page = await finished.get("/runs/done-run/timeline", params={"group": "Orchestrator::docs"})
    assert page.status_code == 200
    assert page.text.count('<g class="member status-') == 5
    assert 'class="member status-failed"' in page.text and "Zoom:" in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # none at all
    zoomed = await finished.get(
        "/runs/done-run/timeline", params={"group": "Orchestrator::docs", "zoom": "4"}
    )
    width = int(page.text.split('class="chart" style="width:')[1].split("px")[0])
    wider = int(zoomed.text.split('class="chart" style="width:')[1].split("px")[0])
    assert wider > width + 2000
    data = (await finished.get("/api/runs/done-run/timeline")).json()
    (group,) = data["groups"]
    assert data["timed"] is False and len(group["members"]) == 5
    assert {m["status"] for m in group["members"]} == {"completed", "failed"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/runs/no-such-run", 404),
        ("/api/runs/no-such-run", 404),
        ("/runs/a..b", 400),
        ("/api/runs/a..b", 400),
        ("/api/runs/a..b/events", 400),
        ("/runs/a..b/timeline", 400),
        ("/api/runs/" + "x" * 200, 400),
    ],
)
async def test_bad_and_unknown_run_ids(finished: httpx.AsyncClient, path: str, status: int) -> None:
    response = await finished.get(path)
    assert response.status_code == status
    if path.startswith("/api/"):
        assert "error" in response.json()
    else:
        assert "Traceback" not in response.text and "rh_agents runs" in response.text


def _contents(path: Path) -> bytes:
    return path.read_bytes()


async def test_read_only_and_local_only(finished: httpx.AsyncClient, store: Path) -> None:
    before = _contents(store)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert (await finished.request(method, "/api/runs/done-run")).status_code == 405
    assert (await finished.get("/", headers={"host": "attacker.example"})).status_code == 400
    assert (await finished.get("/", headers={"host": "localhost:8765"})).status_code == 200
    assert _contents(store) == before


async def test_missing_store_is_a_clear_page(tmp_path: Path) -> None:
    store = tmp_path / "nothing" / "state.db"
    async with await _client(create_app(store)) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "No state store at" in page.text
        assert (await client.get("/api/runs")).json()["runs"] == []
        missing = await client.get("/runs/some-run")
        assert missing.status_code == 404 and "no state store" in missing.text
    assert not store.parent.exists()  # reading created nothing


async def test_corrupt_store_is_a_clear_page(tmp_path: Path) -> None:
    store = tmp_path / "state.db"
    store.write_bytes(b"this is not a database" * 100)
    async with await _client(create_app(store)) as client:
        page = await client.get("/")
        assert page.status_code == 503 and "cannot be read" in page.text
        assert "Traceback" not in page.text
        api = await client.get("/api/runs")
        assert api.status_code == 503 and "cannot be read" in api.json()["error"]
        run = await client.get("/runs/any")
        assert run.status_code == 503 and "Traceback" not in run.text


async def test_damaged_checkpoint_is_a_clear_page(store: Path) -> None:
    await stored_run(store)
    with sqlite3.connect(store) as db:
        db.execute("UPDATE checkpoints SET attempts = 'many' WHERE address = 'Orchestrator'")
    async with await _client(create_app(store)) as client:
        page = await client.get("/runs/done-run")
        assert page.status_code == 503 and "cannot be read" in page.text


async def test_serving_every_page_writes_nothing_to_the_store(store: Path) -> None:
    """Read-only by effect (which holds for root too): the database is the same bytes after
    every page and API call. Beside it only SQLite's own side files may appear (an empty
    ``-wal`` and the ``-shm`` index, which a read of a WAL database makes)."""
    await stored_run(store)

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(store.parent.iterdir()) if p.is_file()}

    before = snapshot()
    async with await _client(create_app(store)) as client:
        for path in ("/", "/runs/done-run", "/api/runs", "/api/runs/done-run", "/runs/nope"):
            assert (await client.get(path)).status_code in (200, 404)
    after = snapshot()
    assert after["state.db"] == before["state.db"]
    assert set(after) - set(before) <= {"state.db-wal", "state.db-shm"}
    assert after.get("state.db-wal", b"") == b""


# --- event streams --------------------------------------------------------------------------


async def test_events_of_a_store_backed_run_as_checkpoints_land(store: Path) -> None:
    running_run(store, finished=2)
    app = create_app(store, poll_interval=0.05)
    transport = StreamingASGITransport(app)
    async with (
        httpx.AsyncClient(transport=transport, base_url=BASE) as client,
        client.stream("GET", "/api/runs/busy-run/events", params={"cursor": 2}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = EventReader(response)
        ((kind, first),) = await events.read(1)
        assert kind == "update" and json.loads(first)["nodes"] == []
        add_members(store, "busy-run", range(2, 4))
        ((kind, second),) = await events.read(1)
        update = json.loads(second)
        assert kind == "update"
        assert {n["address"] for n in update["nodes"]} == {
            f"Orchestrator::docs[{i}]{tail}" for i in (2, 3) for tail in ("", "::work")
        }
        assert update["groups"][0]["done"] == 4 and update["run"]["events"] == 4
        add_members(store, "busy-run", range(4, 5), status="completed")
        last = await events.read(2)
        assert [kind for kind, _ in last] == ["update", "end"]
        assert json.loads(last[1][1])["run"]["status"] == "completed"


async def test_events_of_a_live_run(store: Path) -> None:
    """A run watched from this process: the stream follows its feed as members finish."""
    state = ExecutionState(run_id="live-run")
    feed = LiveFeed("live-run", clock_now=state.clock.now)
    state.event_bus.subscribe(feed, kinds=LiveFeed.KINDS)
    app = create_app(store, feeds={"live-run": feed}, push_interval=0.01)
    run = asyncio.create_task(run_workflow(state, members=12, delay=0.05, max_workers=2))
    try:
        async with (
            httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE) as client,
            client.stream("GET", "/api/runs/live-run/events") as response,
        ):
            reader = EventReader(response)
            events = await reader.read(4)
            assert {kind for kind, _ in events} == {"update"}
            updates = [json.loads(data) for _, data in events]
            done = [g["done"] for u in updates for g in u["groups"]]
            assert done == sorted(done) and done and done[-1] < 12
            assert all(u["run"]["status"] == "running" and u["run"]["live"] for u in updates)
            nodes = [n for u in updates for n in u["nodes"]]
            assert any(n["status"] == "running" for n in nodes)
            assert any(n["kind"] == "member" and n["status"] == "completed" for n in nodes)
            # The rest up to the end: the run finishes and the stream says so.
            await run
            feed.finish()
            tail = await reader.read(100)
            assert tail[-1][0] == "end"
            final = json.loads(tail[-1][1])["run"]
            assert final["status"] == "completed" and final["counts"]["failed"] == 1
        page = await (await _client(app)).get("/runs/live-run")
        assert 'data-source="live"' in page.text and "&lt;script&gt;window" in page.text
    finally:
        if not run.done():
            run.cancel()


async def test_a_live_run_that_checkpoints_ends_with_its_store(store: Path) -> None:
    state = ExecutionState(run_id="both", recovery=Recovery(store))
    feed = LiveFeed("both", clock_now=state.clock.now)
    state.event_bus.subscribe(feed, kinds=LiveFeed.KINDS)
    app = create_app(store, feeds={"both": feed}, poll_interval=0.05, push_interval=0.01)
    await run_workflow(state, members=3)
    assert feed.running  # nobody told the feed; the store knows
    async with (
        httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE) as client,
        client.stream("GET", "/api/runs/both/events") as response,
    ):
        events = await EventReader(response).read(10)
    assert events[-1][0] == "end" and not feed.running
    assert json.loads(events[-1][1])["run"]["status"] == "completed"


async def test_streams_end_when_the_client_leaves_or_the_viewer_closes(store: Path) -> None:
    running_run(store)
    app = create_app(store, poll_interval=0.05)
    transport = StreamingASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        async with client.stream("GET", "/api/runs/busy-run/events") as response:
            await EventReader(response).read(1)
        assert transport.cancelled == 0  # the app saw the client go and returned
        async with client.stream("GET", "/api/runs/busy-run/events") as response:
            reader = EventReader(response)
            await reader.read(1)
            app.state.viewer.closing.set()
            assert await reader.read(5) == []  # the stream ended
    assert transport.cancelled == 0


async def test_run_ids_that_need_quoting(store: Path) -> None:
    odd = 'nightly run #3 ü?&"<b>'
    await stored_run(store, odd, members=2)
    async with await _client(create_app(store)) as client:
        page = (await client.get("/")).text
        href = "/runs/nightly%20run%20%233%20%C3%BC%3F%26%22%3Cb%3E"
        assert f'href="{href}"' in page and "<b>" not in page
        data = (await client.get("/api" + href)).json()
        assert data["run"]["run_id"] == odd
        run_page = await client.get(href)
        assert run_page.status_code == 200 and "&lt;b&gt;" in run_page.text
        assert "<b>" not in run_page.text.replace("<body", "")


async def test_a_resumed_run_shows_the_groups_and_events_it_replayed(store: Path) -> None:
    """A run resumed under a live feed replays its top call: the group nested in that call,
    and its calls, are only in the store. That group was shown ``running`` (while the run
    went on, and after it completed), and the run's counts were the feed's alone (1 event:
    the replayed top call) where its page listed the stored ones too."""
    items = Items(items=[Item(n=i) for i in range(3)])
    async with ExecutionState(run_id="again", recovery=Recovery(store)) as first:
        await ExecutionEvent(actor=build_workflow(3))(items, "", first)
    inside, release = asyncio.Event(), asyncio.Event()

    async def hold(input: Item, context: str, state: ExecutionState) -> int:
        inside.set()
        await release.wait()
        return input.n

    state = ExecutionState(run_id="again", recovery=Recovery(store, resume="auto"))
    feed = LiveFeed("again", clock_now=state.clock.now)
    feed.follow(state)

    async def resumed() -> None:
        async with state:
            await ExecutionEvent(actor=build_workflow(3))(items, "", state)  # replayed
            await ExecutionEvent(actor=Tool(name="hold", input_model=Item, handler=hold))(
                Item(n=7), "", state
            )

    app = create_app(store, feeds={"again": feed}, poll_interval=0.05, push_interval=0.01)
    run = asyncio.create_task(resumed())
    try:
        async with (
            await _client(app) as client,
            httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE) as streams,
        ):

            async def seen() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
                data = (await client.get("/api/runs/again")).json()
                (listed,) = (await client.get("/api/runs")).json()["runs"]
                groups = {g["group_id"]: g for g in data["groups"]}
                return data["run"], listed, groups["Orchestrator::docs"]

            await asyncio.wait_for(inside.wait(), 10)
            run_summary, listed, group = await seen()
            assert (run_summary["status"], run_summary["counts"], run_summary["running"]) == (
                "running",
                {"completed": 4},  # Orchestrator (replayed) and its three calls (stored)
                1,  # hold
            )
            assert (listed["status"], listed["counts"]) == ("running", {"completed": 4})
            assert (group["status"], group["done"], group["total"]) == ("completed", 3, 3)
            async with streams.stream("GET", "/api/runs/again/events") as response:
                ((kind, data),) = await EventReader(response).read(1)
            assert kind == "update" and json.loads(data)["run"]["counts"] == {"completed": 4}

            release.set()
            await asyncio.wait_for(run, 10)
            run_summary, listed, group = await seen()
            assert (run_summary["status"], run_summary["events"]) == ("completed", 5)
            assert run_summary["counts"] == listed["counts"] == {"completed": 5}
            assert (group["status"], group["done"], group["total"]) == ("completed", 3, 3)
            async with streams.stream("GET", "/api/runs/again/events") as response:
                events = await EventReader(response).read(5)
            assert events[-1][0] == "end"
            assert json.loads(events[-1][1])["run"]["counts"] == {"completed": 5}
    finally:
        release.set()
        if not run.done():
            run.cancel()
        with contextlib.suppress(BaseException):
            await run
        feed.finish()


async def test_one_allowed_host_given_alone_is_one_name(store: Path) -> None:
    # A string was taken as its letters: every request refused as an unknown host.
    await stored_run(store)
    async with await _client(create_app(store, allowed_hosts="127.0.0.1")) as client:
        assert (await client.get("/api/runs")).status_code == 200
    other = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(store, allowed_hosts="127.0.0.1")),  # type: ignore[arg-type]
        base_url="http://evil.example",
    )
    async with other:
        assert (await other.get("/api/runs")).status_code == 400


@pytest.mark.parametrize("bad", [[5], [""], 5])
def test_allowed_hosts_that_are_no_names_are_refused(store: Path, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="allowed_hosts takes host names"):
        create_app(store, allowed_hosts=bad)
