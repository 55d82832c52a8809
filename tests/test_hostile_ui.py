"""The viewer under hostile use: requests and stores that once broke it (each test names the
failure it guards against)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from rh_agents.recovery.opening import open_backend
from rh_agents.recovery.records import CheckpointRecord, RunStatus
from rh_agents.ui import create_app, pages
from rh_agents.ui.live import FeedSnapshot, LiveFeed
from rh_agents.ui.pages import ERROR_TITLE_CHARS
from ui_support import EventReader, StreamingASGITransport, member_record, running_run, stored_run

pytestmark = pytest.mark.timeout(30)

BASE = "http://127.0.0.1"


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)  # type: ignore[arg-type]


def _store_one(path: Path, run_id: str, record: CheckpointRecord) -> None:
    with open_backend(path) as backend:
        backend.create_run(run_id)
        backend.save(run_id, [record], status=RunStatus.COMPLETED)


def _record(run_id: str, address: str, error: str | None = None) -> CheckpointRecord:
    return CheckpointRecord(
        run_id=run_id,
        address=address,
        seq=1,
        actor="a",
        actor_version="1",
        status="failed" if error else "completed",
        result_json=None if error else "1",
        error=error,
        execution_time=0.5,
    )


async def test_head_on_a_live_event_stream_gives_headers_and_ends(tmp_path: Path) -> None:
    """A HEAD on a running run's events once started the stream: the response never ended
    (the server ran it until the run did, and the connection's next request hung)."""
    app = create_app(tmp_path / "state.db", feeds={"live": LiveFeed("live")})
    async with _client(app) as client:
        response = await asyncio.wait_for(client.head("/api/runs/live/events"), 10)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"].startswith("text/event-stream")


async def test_a_deep_tree_renders(tmp_path: Path) -> None:
    """An address 2,000 levels deep was a RecursionError (a 500 page)."""
    store = tmp_path / "state.db"
    _store_one(store, "deep", _record("deep", "::".join(["x"] * 2000)))
    async with _client(create_app(store)) as client:
        response = await client.get("/runs/deep")
    assert response.status_code == 200
    assert response.text.count('<li class="item event') == 2000
    assert response.text.count("<li ") == response.text.count("</li>")


async def test_a_huge_error_does_not_make_a_huge_page(tmp_path: Path) -> None:
    """A 10 MB error went whole into the page, in its tooltip."""
    store = tmp_path / "state.db"
    _store_one(store, "big", _record("big", "Agent", error="E" * 10_000_000))
    async with _client(create_app(store)) as client:
        page = (await client.get("/runs/big")).text
    assert len(page) < 100_000
    assert f'title="{"E" * ERROR_TITLE_CHARS}…"' in page


async def test_a_reconnecting_stream_starts_from_last_event_id(tmp_path: Path) -> None:
    """A browser reconnects with the page's ``?cursor=`` still in the URL and the last id it
    got in ``Last-Event-ID``: the stream started again from the page's cursor."""
    store = tmp_path / "state.db"
    running_run(store, finished=2)  # events with seq 1 and 2
    app = create_app(store, poll_interval=0.05)
    headers = {"Last-Event-ID": "2"}
    async with (
        httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE) as client,
        client.stream(
            "GET", "/api/runs/busy-run/events", params={"cursor": 0}, headers=headers
        ) as response,
    ):
        ((kind, data),) = await EventReader(response).read(1)
    assert kind == "update" and json.loads(data)["nodes"] == []


@pytest.mark.parametrize("last_id", ["garbage", "-3", "9" * 5000, ""])
async def test_a_garbage_last_event_id_falls_back_to_the_cursor(
    tmp_path: Path, last_id: str
) -> None:
    store = tmp_path / "state.db"
    running_run(store, finished=2)
    app = create_app(store, poll_interval=0.05)
    async with (
        httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE) as client,
        client.stream(
            "GET",
            "/api/runs/busy-run/events",
            params={"cursor": 1},
            headers={"Last-Event-ID": last_id},
        ) as response,
    ):
        ((kind, data),) = await EventReader(response).read(1)
    assert kind == "update"
    nodes = json.loads(data)["nodes"]
    if last_id == "-3":  # a number, below the start: everything
        assert len(nodes) == 4
    else:
        assert {n["address"] for n in nodes} == {
            "Orchestrator::docs[1]",
            "Orchestrator::docs[1]::work",
        }


async def test_a_cursor_ahead_of_a_live_feed_resets(tmp_path: Path) -> None:
    """A cursor from another feed (the program restarted, the browser reconnected) was taken
    as up to date: the page kept the old run's tree and missed what the new feed had."""
    app = create_app(tmp_path / "state.db", feeds={"live": LiveFeed("live")})
    async with (
        httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE) as client,
        client.stream(
            "GET", "/api/runs/live/events", headers={"Last-Event-ID": "5000"}
        ) as response,
    ):
        events = await EventReader(response).read(2)
    assert [kind for kind, _ in events] == ["reset"]


async def test_failed_members_listed_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every failed member of a big group was listed: 50,000 failures made a 50 MB page."""
    monkeypatch.setattr(pages, "MEMBER_LIMIT", 5)
    store = tmp_path / "state.db"
    with open_backend(store) as backend:
        backend.create_run("many")
        records = [member_record("many", i, status="failed") for i in range(30)]
        backend.save("many", records, status=RunStatus.FAILED)
    async with _client(create_app(store)) as client:
        page = (await client.get("/runs/many")).text
        every = (await client.get("/runs/many", params={"members": "all"})).text
    assert page.count('<li class="item member') == 10
    assert "20 more members not listed" in page
    assert every.count('<li class="item member') == 30


async def test_a_live_run_is_not_an_earlier_stored_run_of_its_id(tmp_path: Path) -> None:
    """A run watched live under the id of a run that ended earlier in the store was shown
    with that run's status (completed: its page stopped following) and its events."""
    store = tmp_path / "state.db"
    await stored_run(store, run_id="nightly")
    feed = LiveFeed("nightly")  # a new run of that id, which does not checkpoint
    async with _client(create_app(store, feeds={"nightly": feed})) as client:
        runs = (await client.get("/api/runs")).json()["runs"]
        run = (await client.get("/api/runs/nightly")).json()
        page = (await client.get("/runs/nightly")).text
    assert [(r["run_id"], r["status"], r["live"]) for r in runs] == [("nightly", "running", True)]
    assert run["run"]["status"] == "running" and run["nodes"] == []
    assert 'data-status="running"' in page


async def test_lone_surrogates_in_a_stored_error(tmp_path: Path) -> None:
    """A JSON store keeps lone surrogates (an error naming a file whose name is not UTF-8):
    the run's page, its API and its event stream failed to encode them (500, a broken
    stream)."""
    store = tmp_path / "store"  # a folder: the JSON backend
    error = "cannot open 'caf\udce9.txt'"
    record = _record("sur", "Agent", error=error)
    _store_one(store, "sur", record)
    async with _client(create_app(store)) as client:
        page = await client.get("/runs/sur")
        api = await client.get("/api/runs/sur")
        stream = await client.get("/api/runs/sur/events")
    assert page.status_code == 200 and "cannot open &#x27;caf?.txt&#x27;" in page.text
    assert api.status_code == 200 and api.json()["nodes"][0]["error"] == error
    events = [line for line in stream.text.splitlines() if line.startswith("event:")]
    assert events == ["event: update", "event: end"]


async def test_a_run_id_with_a_slash_gets_the_rule_and_unknown_paths_say_where_pages_are(
    tmp_path: Path,
) -> None:
    """A run id with a ``/`` matched no route: Starlette's bare "Not Found", in plain text,
    where any other invalid id gets a page naming the rule."""
    app = create_app(tmp_path / "state.db")
    async with _client(app) as client:
        page = await client.get("/runs/nightly/2026")
        api = await client.get("/api/runs/a/b/events")
        elsewhere = await client.get("/nothing/here")
        api_elsewhere = await client.get("/api/nothing")
    assert page.status_code == 400 and "Not a run id" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert api.status_code == 400 and "not a run id" in api.json()["error"]
    assert elsewhere.status_code == 404 and "/runs/RUN_ID" in elsewhere.text
    assert api_elsewhere.status_code == 404 and "/api/runs" in api_elsewhere.json()["error"]


async def test_pages_and_json_are_made_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big run took seconds of the viewer's event loop to render, the loop a watched run
    shares with it (``serve(state)``): a live run's pages were rendered on it (the timeline
    page of 80,000 members stalled the run 2.2 s). Stored or live, a run's nodes, tree, pages,
    JSON and timeline are made in a thread; only a live run's snapshot (copies of its feed's
    columns) is taken on the loop."""
    import threading

    from rh_agents.ui import app as app_module

    threads: dict[str, set[str]] = {}

    def spy(name: str, real: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(pages, "run_page", spy("page", pages.run_page))
    monkeypatch.setattr(pages, "timeline_page", spy("timeline", pages.timeline_page))
    monkeypatch.setattr(app_module, "stored_nodes", spy("nodes", app_module.stored_nodes))
    monkeypatch.setattr(app_module, "build_tree", spy("tree", app_module.build_tree))
    monkeypatch.setattr(app_module, "timeline_json", spy("json", app_module.timeline_json))
    monkeypatch.setattr(app_module, "_json_bytes", spy("dumps", app_module._json_bytes))
    for method in ("nodes", "groups", "timeline"):  # a live run's, from its snapshot
        real = getattr(FeedSnapshot, method)
        monkeypatch.setattr(FeedSnapshot, method, spy(f"snapshot {method}", real))
    await stored_run(tmp_path / "state.db", "done-run")
    live = _live_feed(members=3)
    app = create_app(tmp_path / "state.db", feeds={"live": live})
    loop_thread = threading.current_thread().name
    seen: dict[str, dict[str, set[str]]] = {}
    async with _client(app) as client:
        for run_id in ("done-run", "live"):
            threads.clear()
            for path in (f"/runs/{run_id}", f"/api/runs/{run_id}",
                         f"/runs/{run_id}/timeline", f"/api/runs/{run_id}/timeline"):  # fmt: skip
                assert (await client.get(path)).status_code == 200, path
            seen[run_id] = {name: set(names) for name, names in threads.items()}
    made_of_any = {"page", "timeline", "nodes", "tree", "json", "dumps"}
    assert set(seen["done-run"]) == made_of_any
    assert set(seen["live"]) == made_of_any | {"snapshot nodes", "snapshot groups",
                                               "snapshot timeline"}  # fmt: skip
    for run_id, made in seen.items():
        assert all(loop_thread not in names for names in made.values()), (run_id, made)


def _member(index: int, *, finished: bool, status: str = "completed") -> Any:
    from rh_agents.core.records import MemberFinished, MemberStarted

    address = f"g[{index}]"
    if not finished:
        return MemberStarted.of_member("g", index, address, f"m{index}", 1.0, 0.0, None)
    return MemberFinished.of_member(
        "g", index, address, f"m{index}", 2.0, status, 1.0, None, 0, 0, None, 1, 0.0
    )


def _live_feed(members: int) -> LiveFeed:
    """A live run with group ``g``: member 0 running, the others completed."""
    from rh_agents.core.records import GroupStarted

    feed = LiveFeed("live", clock_now=lambda: 0.0)
    feed(GroupStarted(address="g", timestamp=0.5, name="g", total=members, max_workers=2))
    feed(_member(0, finished=False))
    for index in range(1, members):
        feed(_member(index, finished=True))
    return feed


@pytest.mark.parametrize(
    ("path", "module", "name"),
    [
        ("/runs/live", "pages", "run_page"),
        ("/runs/live/timeline?group=g", "pages", "timeline_page"),
        ("/api/runs/live", "app", "_json_bytes"),
        ("/api/runs/live/timeline?group=g", "app", "timeline_json"),
    ],
)
async def test_a_live_page_is_the_snapshot_of_its_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, module: str, name: str
) -> None:
    """While a live run's page renders (in a thread), the run goes on on the loop: members
    finish, new ones come. The page shows the run as it was when the request came (the
    snapshot, taken on the loop), whole, and the loop is free meanwhile (the feed changed
    here while the rendering waited for it)."""
    import threading

    from rh_agents.ui import app as app_module

    owner = pages if module == "pages" else app_module
    real = getattr(owner, name)
    entered, go = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert go.wait(5), "the loop did not change the feed while the page rendered"
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    feed = _live_feed(members=3)
    async with _client(create_app(tmp_path / "state.db", feeds={"live": feed})) as client:
        request = asyncio.ensure_future(client.get(path))
        assert await asyncio.wait_for(asyncio.to_thread(entered.wait, 5), 10)
        feed(_member(0, finished=True, status="failed"))  # the running member fails
        for index in range(3, 6):
            feed(_member(index, finished=True))
        go.set()
        response = await asyncio.wait_for(request, 10)
    assert response.status_code == 200, response.text
    if path.startswith("/api/runs/live/timeline"):
        (group,) = response.json()["groups"]
        assert [m["index"] for m in group["members"]] == [0, 1, 2]
        assert group["members"][0]["status"] != "failed"
    elif path.startswith("/api/"):
        nodes = {node["address"]: node for node in response.json()["nodes"]}
        assert sorted(nodes) == ["g[0]", "g[1]", "g[2]"]
        assert nodes["g[0]"]["status"] == "running"
    elif "timeline" in path:
        assert "m2" in response.text and "m3" not in response.text
    else:
        assert 'data-address="g[2]"' in response.text
        assert 'data-address="g[3]"' not in response.text
        assert "s-failed" not in response.text


@pytest.mark.parametrize("bad", ["\udce9", "\ud800"])
async def test_lone_surrogates_on_a_timeline_page(tmp_path: Path, bad: str) -> None:
    """A lone surrogate in a group member's error (``os.fsdecode`` of a name that is not
    UTF-8 gives ``\\udce9``) made the timeline page a 500: the chart kept it, and the
    response could not encode it. Shown as "?", as on the run's page."""
    store = tmp_path / "store"  # a folder: the JSON backend keeps lone surrogates
    record = replace(member_record("sur", 0, status="failed"), error=f"cannot open caf{bad}.txt")
    _store_one(store, "sur", record)
    async with _client(create_app(store)) as client:
        page = await client.get("/runs/sur/timeline")
        api = await client.get("/api/runs/sur/timeline")
    assert page.status_code == 200, page.text
    assert "cannot open caf?.txt" in page.text
    assert api.status_code == 200


async def test_a_stored_runs_stream_sends_the_checkpoint_of_seq_0(tmp_path: Path) -> None:
    """Checkpoints count from seq 0, and "nothing seen" was cursor 0 too: a stream started
    without a cursor never sent the first checkpoint (the page then missed that node)."""
    store = tmp_path / "state.db"
    with open_backend(store) as backend:
        backend.create_run("r")
        backend.create_run("empty")
        records = [replace(_record("r", f"Step{i}"), seq=i) for i in range(3)]
        backend.save("r", records, status=RunStatus.COMPLETED)
        backend.save("empty", [], status=RunStatus.COMPLETED)

    def sent(text: str) -> list[str]:
        return sorted(
            node["address"]
            for line in text.splitlines()
            if line.startswith("data:")
            for node in json.loads(line[5:]).get("nodes", [])
        )

    async with _client(create_app(store)) as client:
        everything = (await client.get("/api/runs/r/events")).text
        from_start = (await client.get("/api/runs/r/events", params={"cursor": -1})).text
        after_0 = (await client.get("/api/runs/r/events", params={"cursor": 0})).text
        run = (await client.get("/api/runs/r")).json()
        empty = (await client.get("/api/runs/empty")).json()
    assert sent(everything) == sent(from_start) == ["Step0", "Step1", "Step2"]
    assert sent(after_0) == ["Step1", "Step2"]  # a client that has seen seq 0 resumes after it
    assert run["cursor"] == 2 and empty["cursor"] == -1


def _damage_created(tmp_path: Path, kind: str, value: float) -> Path:
    """A store of runs "good" and "odd", "odd"'s start time replaced by ``value`` (as a damaged
    store, or a clock gone wrong, may hold it)."""
    store = tmp_path / ("state.db" if kind == "sqlite" else "runs")
    for run_id in ("good", "odd"):
        with open_backend(store) as backend:
            backend.create_run(run_id)
            backend.save(run_id, [_record(run_id, "Agent")], status=RunStatus.COMPLETED)
    if kind == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(store)) as db, db:
            db.execute("UPDATE runs SET created = ? WHERE run_id = 'odd'", (value,))
    else:
        path = store / "odd.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data["run"]["created"] = value  # NaN too: Python's json writes it, and reads it back
        path.write_text(json.dumps(data), encoding="utf-8")
    return store


DAMAGED_TIMES = [("sqlite", 1e20), ("sqlite", -1e15), ("json", math.nan), ("json", math.inf)]


@pytest.mark.parametrize(("kind", "value"), DAMAGED_TIMES)
async def test_a_run_whose_start_is_no_time_is_listed_with_the_others(
    tmp_path: Path, kind: str, value: float
) -> None:
    """One run with a start time out of range (1e20, -1e15) or NaN in the store made the
    whole runs list a 500: its time is now shown as unknown ("?") and every run is listed."""
    store = _damage_created(tmp_path, kind, value)
    async with _client(create_app(store)) as client:
        page = await client.get("/")
        api = await client.get("/api/runs")
        odd = await client.get("/runs/odd")
    assert page.status_code == 200, page.text
    assert 'data-run-id="good"' in page.text and 'data-run-id="odd"' in page.text
    assert '<td class="when">?</td>' in page.text
    assert api.status_code == 200 and {r["run_id"] for r in api.json()["runs"]} == {"good", "odd"}
    assert odd.status_code == 200 and '<span id="run-started">?</span>' in odd.text


async def test_one_damaged_run_file_does_not_hide_the_other_runs(tmp_path: Path) -> None:
    """One truncated run file in a JSON store made the runs list empty (a 503 naming only
    that file), where ``rh-agents runs list`` lists the readable runs: the page and the API
    now list them too, and say which file could not be read."""
    store = tmp_path / "runs"
    for run_id in ("a", "b"):
        _store_one(store, run_id, _record(run_id, "Agent"))
    (store / "c.json").write_text("{truncated", encoding="utf-8")
    async with _client(create_app(store)) as client:
        api = await client.get("/api/runs")
        page = await client.get("/")
    assert api.status_code == 200
    assert sorted(r["run_id"] for r in api.json()["runs"]) == ["a", "b"]
    assert "1 run file(s)" in api.json()["error"] and "c.json" in api.json()["error"]
    assert page.status_code == 200
    assert 'data-run-id="a"' in page.text and 'data-run-id="b"' in page.text
    problem = page.text.split('<p class="problem" id="problem">', 1)[1].split("</p>", 1)[0]
    assert "c.json" in problem


async def test_one_damaged_run_row_of_sqlite_does_not_hide_the_other_runs(
    tmp_path: Path,
) -> None:
    """One run row of an SQLite store with a status this version does not know made the runs
    list a 503 with no run in it (docs/ui.md: a 503 only when no run could be listed), where a
    JSON folder's damaged file is named beside the others: SQLite does the same now."""
    db = tmp_path / "state.db"
    for run_id in ("a", "b", "c"):
        _store_one(db, run_id, _record(run_id, "Agent"))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'paused' WHERE run_id = 'c'")
    conn.close()
    async with _client(create_app(db)) as client:
        api = await client.get("/api/runs")
        page = await client.get("/")
    assert api.status_code == 200, api.text
    assert sorted(r["run_id"] for r in api.json()["runs"]) == ["a", "b"]
    error = api.json()["error"]
    assert error.startswith(f"1 run(s) in {db} cannot be read and are not listed: ")
    assert "holds run 'c'" in error
    assert page.status_code == 200
    assert 'data-run-id="a"' in page.text and 'data-run-id="b"' in page.text
    problem = page.text.split('<p class="problem" id="problem">', 1)[1].split("</p>", 1)[0]
    assert "holds run &#x27;c&#x27;" in problem  # (escaped, as every stored string is)


async def test_one_run_with_a_damaged_checkpoint_does_not_hide_the_other_runs(
    tmp_path: Path,
) -> None:
    """A checkpoint of one run that does not validate failed the counts of every run: the
    runs list was a 503 with no run. The others are counted; that run is listed, and said."""
    import sqlite3

    store = tmp_path / "state.db"
    for run_id in ("good", "bad"):
        _store_one(store, run_id, _record(run_id, "Agent"))
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        db.execute("UPDATE checkpoints SET attempts = 'many' WHERE run_id = 'bad'")
    async with _client(create_app(store)) as client:
        api = await client.get("/api/runs")
    assert api.status_code == 200
    runs = {r["run_id"]: r for r in api.json()["runs"]}
    assert runs.keys() == {"good", "bad"} and runs["good"]["counts"] == {"completed": 1}
    assert "run 'bad'" in api.json()["error"]


def test_a_big_json_answer_is_made_in_pieces_and_is_the_same_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JSON encoder is C and holds the GIL for all the text it makes: /api/runs/<id> of
    80,000 members held the run's event loop 0.35 s although made in a thread. It is made a
    slice of a long list at a time (the loop gets its turn between two); the text is the
    one ``json.dumps`` makes of it, NaN, lone surrogates and all."""
    from rh_agents.ui import app as app_module

    monkeypatch.setattr(app_module, "_PIECE", 10)
    node = {"a": 1, "b": math.nan, "c": "caf\udce9", "d": None, "e": [1.5, math.inf], "f": {}}
    cases: list[Any] = [
        {"run": {"id": "r", "t": (1, 2)}, "nodes": [dict(node, i=i) for i in range(95)],
         "groups": [{"members": [{"i": i} for i in range(31)], "m": {}}], "empty": []},
        [[i, str(i)] for i in range(11)], [], {}, [[]], {1: "int key"}, "x", 3, object(),
        [{"deep": [[{"i": i}] for i in range(25)]}],
    ]  # fmt: skip
    encoded: list[Any] = []
    real = app_module._ENCODER.encode
    monkeypatch.setattr(app_module._ENCODER, "encode", lambda o: encoded.append(o) or real(o))
    for data in cases:
        assert app_module._json_bytes(data) == app_module._dumps(data).encode(), data
    longest = max(len(o) for o in encoded if isinstance(o, list))
    assert longest == 10  # (and 95 nodes were encoded ten at a time)


async def test_a_store_whose_path_is_not_utf8(tmp_path: Path) -> None:
    """A store in a folder whose name holds a byte that is not UTF-8 (0xff: Python holds it as
    "\\udcff") made every page and answer a 500: the SQLite URI quoted the path as text,
    which cannot encode it. The file name's bytes are quoted now; the page shows the byte as
    "?", the API as a JSON escape."""
    folder = tmp_path / os.fsdecode(b"caf\xff")
    try:
        folder.mkdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes no file name that is not UTF-8")
    store = folder / "state.db"
    _store_one(store, "r", _record("r", "Agent"))
    async with _client(create_app(store)) as client:
        paths = ["/", "/api/runs", "/runs/r", "/api/runs/r", "/api/runs/r/events",
                 "/runs/r/timeline", "/api/runs/r/timeline"]  # fmt: skip
        answers = {path: await client.get(path) for path in paths}
    assert {path: a.status_code for path, a in answers.items()} == dict.fromkeys(answers, 200)
    assert 'data-run-id="r"' in answers["/"].text and "caf?" in answers["/"].text
    listed = answers["/api/runs"].json()
    assert listed["store"] == str(store) and [r["run_id"] for r in listed["runs"]] == ["r"]
    assert answers["/api/runs/r"].json()["nodes"][0]["address"] == "Agent"
    assert "event: end" in answers["/api/runs/r/events"].text


# C1 controls, and the bidirectional embeddings, overrides and isolates.
UNSEEN = "\x85\x9b\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


async def test_bidi_and_c1_controls_are_neutralised_on_the_pages(tmp_path: Path) -> None:
    """Bidirectional controls (U+202E shows the rest of its line reversed: what the page said
    was not what ran) and C1 controls went raw into the pages, where the terminal displays
    show them as U+FFFD (``core.safe_text.printable``): the pages and the timeline show them
    so too. (The API keeps the stored text as it is; the pages' script shows it as the pages
    do: ``test_the_script_shows_text_as_the_pages_do``.)"""
    from rh_agents.core.safe_text import printable

    for char in UNSEEN:
        assert pages.esc(char) == printable(char) == "\ufffd", hex(ord(char))
    store = tmp_path / "state.db"
    record = replace(
        member_record("bidi", 0, status="failed"),
        actor=f"act{UNSEEN}or",
        error=f"evil{UNSEEN}gnp.exe",
        result_json=json.dumps(f"res{UNSEEN}ult"),
    )
    _store_one(store, "bidi", record)
    async with _client(create_app(store)) as client:
        shown = {
            path: (await client.get(path)).text
            for path in ("/", "/runs/bidi", "/runs/bidi?members=all", "/runs/bidi/timeline")
        }
        api = (await client.get("/api/runs/bidi")).json()
    for path, text in shown.items():
        assert not set(text) & set(UNSEEN), path
    assert "evil" + "\ufffd" * len(UNSEEN) + "gnp.exe" in shown["/runs/bidi"]
    assert "act" + "\ufffd" * len(UNSEEN) + "or" in shown["/runs/bidi"]
    assert "evil" + "\ufffd" * len(UNSEEN) + "gnp.exe" in shown["/runs/bidi/timeline"]
    assert any(node["error"] == f"evil{UNSEEN}gnp.exe" for node in api["nodes"])


def _script_function(name: str) -> str:
    """The text of ``function name`` of the pages' script (and the constants before it)."""
    from importlib import resources

    script = resources.files("rh_agents.ui").joinpath("static/viewer.js").read_text("utf-8")
    found = re.search(r"\n  const UNSAFE = .*?\n  function " + name + r"\(.*?\n  \}\n", script,
                      re.S)  # fmt: skip
    assert found is not None, f"no function {name} in viewer.js"
    return found.group()


@pytest.mark.skipif(shutil.which("node") is None, reason="node (to run the script) is not on PATH")
def test_the_script_shows_text_as_the_pages_do() -> None:
    """The pages' script set the API's strings (names, errors, results, statuses) as they
    came: a bidirectional override reversed the line, as it did on the server's pages. Its
    ``shown`` now shows every character as ``pages.esc`` does, for every character of the
    Basic Multilingual Plane, lone surrogates included (each on its own: two in a row would
    be one character in the script)."""
    import html

    chars = [chr(code) for code in range(0x10000)]
    program = (
        _script_function("shown")
        + "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        + "process.stdout.write(JSON.stringify(input.map(shown)));\n"
    )
    out = subprocess.run(
        ["node", "-e", program],
        input=json.dumps(chars),  # (ASCII: the lone surrogates as JSON escapes)
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(out.stdout)
    wrong = [
        (hex(ord(char)), seen)
        for char, seen in zip(chars, got, strict=True)
        if seen != html.unescape(pages.esc(char))
    ]
    assert wrong == []


@pytest.mark.parametrize("hook", ["stored_nodes", "_sse"])
async def test_a_stored_runs_stream_leaves_the_loop_to_other_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str
) -> None:
    """A stored run's event stream made its nodes and their JSON on the event loop: for a run
    of 100,000 members, 1.4 to 1.9 s in which no other request (a watched run's page, its
    stream) was answered. They are made in threads now: while the stream's work is held here
    (its nodes, or a message's JSON), another request is answered."""
    import threading

    from rh_agents.ui import app as app_module

    store = tmp_path / "state.db"
    running_run(store, finished=2)
    real = getattr(app_module, hook)
    entered, go, left = threading.Event(), threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():  # the stream's first: held until the other request is answered
            entered.set()
            go.wait(5)  # (on the event loop, nothing could set it: the wait runs out)
            left.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, hook, held)
    app = create_app(store, poll_interval=0.05)
    async with (
        httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE) as client,
        client.stream("GET", "/api/runs/busy-run/events") as response,
    ):
        first = asyncio.ensure_future(EventReader(response).read(1))
        assert await asyncio.wait_for(asyncio.to_thread(entered.wait, 10), 15)
        other = await asyncio.wait_for(client.get("/api/runs"), 10)
        answered_while_held = not left.is_set()
        go.set()
        ((kind, data),) = await asyncio.wait_for(first, 10)
    assert answered_while_held, "the other request waited for the stream's work"
    assert other.status_code == 200 and other.json()["runs"][0]["run_id"] == "busy-run"
    assert kind == "update" and len(json.loads(data)["nodes"]) == 4
