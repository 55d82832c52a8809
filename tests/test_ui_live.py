"""``LiveFeed`` and the viewer's model: what a watched run and a stored run turn into."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import RunInterrupted
from rh_agents.observability.timeline_svg import render_html
from rh_agents.recovery import Recovery
from rh_agents.recovery.opening import open_backend
from rh_agents.recovery.records import RunInfo, RunStatus
from rh_agents.ui import create_app
from rh_agents.ui import live as live_module
from rh_agents.ui.live import LiveFeed
from rh_agents.ui.model import (
    build_tree,
    parent_address,
    run_summary,
    stored_groups,
    stored_nodes,
)
from rh_agents.ui.pages import group_counts_text, group_status_text
from ui_support import EVIL, FAILING, RETRIED, run_workflow, stored_run

pytestmark = pytest.mark.timeout(30)


async def _watched(members: int = 5) -> LiveFeed:
    state = ExecutionState(run_id="watched")
    feed = LiveFeed("watched", clock_now=state.clock.now)
    state.event_bus.subscribe(feed, kinds=LiveFeed.KINDS)
    await run_workflow(state, members=members, delay=0.001)
    return feed


async def test_a_watched_run_as_nodes_groups_and_a_timeline() -> None:
    feed = await _watched()
    nodes = {n["address"]: n for n in feed.all_nodes()}
    failed = nodes[f"Orchestrator::docs[{FAILING}]::work"]
    assert failed["status"] == "failed" and EVIL in failed["error"] and failed["attempts"] == 2
    assert failed["error_type"] == "RuntimeError"
    retried = nodes[f"Orchestrator::docs[{RETRIED}]::work"]
    assert retried["status"] == "completed" and retried["retries"] == 1
    assert "double" in retried["result"]
    member = nodes["Orchestrator::docs[0]"]
    assert member["kind"] == "member" and member["status"] == "completed"
    assert member["queue_wait"] is not None and member["duration"] > 0
    assert nodes["Orchestrator"]["status"] == "completed"
    (group,) = feed.groups()
    assert (group["status"], group["total"], group["done"], group["failed"]) == (
        "partial",
        5,
        5,
        1,
    )
    assert group["metrics_source"] == "group" and group["metrics"]["max_workers"] == 2
    counts, running = feed.event_counts()
    assert counts == {"completed": 5, "failed": 1} and running == 0
    timeline = feed.timeline("Orchestrator::docs")
    (chart,) = timeline.groups
    assert [bar.status for bar in chart.bars()] == [
        "failed" if i == FAILING else "completed" for i in range(5)
    ]
    assert chart.members[RETRIED].retries  # the retry's time, for its diamond
    assert all(bar.enqueued is not None for bar in chart.bars())
    assert feed.timeline("no-such-group").groups == []


async def test_changes_since_a_cursor() -> None:
    feed = LiveFeed("r")
    assert feed.cursor == 0 and feed.changes_since(0) == []
    state = ExecutionState()
    state.event_bus.subscribe(feed, kinds=LiveFeed.KINDS)
    await run_workflow(state, members=3)
    changed = feed.changes_since(0)
    assert changed is not None and len(changed) == len(set(changed))
    assert "Orchestrator::docs" in changed and "Orchestrator::docs[2]::work" in changed
    assert changed[-1] == "Orchestrator"  # the last to change
    assert feed.changes_since(feed.cursor) == []


async def test_a_trimmed_change_log_says_start_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_module, "MAX_CHANGES", 10)
    feed = await _watched(members=8)
    assert feed.base > 0 and feed.changes_since(0) is None
    assert feed.changes_since(feed.cursor) == []


async def test_a_running_group_and_the_end_of_a_run() -> None:
    feed = LiveFeed("r")
    assert feed.running and feed.group("nothing") is None
    feed.finish("failed")
    feed.finish("completed")  # the first word stands
    assert feed.status == "failed" and not feed.running


def test_addresses_and_the_tree() -> None:
    assert parent_address("A::docs[3]", "member") == "A::docs"
    assert parent_address("A::docs[3]::work", "event") == "A::docs[3]"
    assert parent_address("A::docs", "group") == "A"
    assert parent_address("A", "event") is None
    nodes = [{"address": f"A::docs[{i}]", "kind": "member", "order": float(i)} for i in (10, 2, 1)]
    nodes.append({"address": "A::docs[2]::read::steps[0]::llm", "kind": "event", "order": 5.0})
    groups = [{"group_id": "A::docs", "order": 0.0}, {"group_id": "A::docs[2]::read::steps"}]
    (root,) = build_tree(nodes, groups)
    assert (root.address, root.kind) == ("A", "event")
    (docs,) = root.sorted_children()
    assert docs.kind == "group" and docs.group is not None
    assert [m.label for m in docs.sorted_children()] == ["[1]", "[2]", "[10]"]
    read = docs.children["[2]"].sorted_children()[0]
    (steps,) = read.sorted_children()
    assert steps.kind == "group" and steps.address == "A::docs[2]::read::steps"
    assert steps.group is not None
    assert [m.address for m in steps.sorted_children()] == ["A::docs[2]::read::steps[0]"]


async def test_a_stored_run_as_nodes_and_groups(tmp_path: Path) -> None:
    store = tmp_path / "state.db"
    await stored_run(store)
    with open_backend(store, mode="read") as backend:
        records = backend.load("done-run")
        info = backend.get_run("done-run")
    nodes = stored_nodes(records.values())
    assert nodes["Orchestrator::docs[3]"]["status"] == "failed"
    groups = stored_groups(records.values(), info.status.value)
    assert groups["Orchestrator::docs"]["status"] == "partial"
    running = stored_groups(records.values(), RunStatus.RUNNING.value)
    assert running["Orchestrator::docs"]["status"] == "running"
    summary = run_summary(info, records)
    assert summary["events"] == 6 and summary["duration"] == pytest.approx(
        info.updated - info.created
    )


def test_a_running_run_lasts_until_now() -> None:
    info = RunInfo(run_id="r", created=100.0, updated=150.0, status=RunStatus.RUNNING)
    assert run_summary(info, {}, now=400.0)["duration"] == 300.0
    done = info.model_copy(update={"status": RunStatus.COMPLETED})
    assert run_summary(done, {}, now=400.0)["duration"] == 50.0


async def test_a_resumed_run_and_an_interrupted_one(tmp_path: Path) -> None:
    store = tmp_path / "state.db"
    await run_workflow(ExecutionState(run_id="again", recovery=Recovery(store)), members=3)
    state = ExecutionState.resume("again", backend=store)
    feed = LiveFeed("again", clock_now=state.clock.now)
    state.event_bus.subscribe(feed, kinds=LiveFeed.KINDS)
    await run_workflow(state, members=3)
    root = feed.node("Orchestrator")
    assert root is not None and root["status"] == "completed" and root["source"] == "replay"
    transport = httpx.ASGITransport(app=create_app(store, feeds={"again": feed}))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        nodes = {n["address"]: n for n in (await client.get("/api/runs/again")).json()["nodes"]}
    assert nodes["Orchestrator"]["source"] == "replay" and nodes["Orchestrator"]["result"]
    assert nodes["Orchestrator::docs[0]::work"]["result"]  # from the store, under the feed
    feed(RunInterrupted(address="", timestamp=0.0, run_id="again"))
    assert feed.status == "interrupted"


async def test_a_snapshot_is_the_feed_as_it_was() -> None:
    """A live page's snapshot (``LiveFeed.snapshot``) is taken on the loop and read in a
    thread while the run goes on: it shows what the feed showed when it was taken (each node,
    the groups with their metrics, the timeline), and nothing the feed takes afterwards."""
    from rh_agents.core.records import MemberFinished

    feed = await _watched()
    snapshot = feed.snapshot()
    nodes = [feed.node(address) for address in feed.rows]
    groups = feed.groups()
    group = "Orchestrator::docs"

    def bars(timeline: Any) -> list[tuple[int, str | None, float | None]]:
        return [(b.index, b.status, b.finished) for g in timeline.groups for b in g.bars()]

    chart = bars(feed.timeline(group))
    assert snapshot.nodes() == nodes and snapshot.groups() == groups
    assert bars(snapshot.timeline(group)) == chart and len(chart) == 5
    # The run goes on: a member finishes again (failed), another one comes.
    for index in (0, 7):
        feed(MemberFinished.of_member(group, index, f"{group}[{index}]", "w", 99.0, "failed",
                                      1.0, "late", 0, 0, None, 1, 0.0))  # fmt: skip
    assert feed.node(f"{group}[0]")["status"] == "failed"  # type: ignore[index]
    assert snapshot.nodes() == nodes and snapshot.groups() == groups
    assert bars(snapshot.timeline(group)) == chart
    assert len(bars(feed.timeline(group))) == 6


async def test_a_group_that_reached_its_quorum_is_shown_as_a_success(tmp_path: Path) -> None:
    # quorum=2 of five: two succeed, three are cancelled, not needed. Its status stays
    # "partial"; the viewer's badge, counts and timeline say the quorum was reached.
    store = tmp_path / "state.db"
    state = ExecutionState(run_id="quorum", recovery=Recovery(store))
    feed = LiveFeed("quorum", clock_now=state.clock.now)
    state.event_bus.subscribe(feed, kinds=LiveFeed.KINDS)

    async def member(n: int) -> int:
        if n >= 2:
            await asyncio.Event().wait()  # until cancelled
        return n

    async with state, state.parallel(max_workers=5, name="q", quorum=2) as group:
        for n in range(5):
            group.add(lambda n=n: member(n))
    (node,) = feed.groups()
    assert (node["status"], node["quorum"], node["quorum_reached"]) == ("partial", 2, True)
    assert group_status_text(node) == "quorum reached"
    assert group_counts_text(node) == (
        "quorum of 2 reached · 5 of 5 done · 2 ok · 3 cancelled (not needed)"
    )
    (chart,) = feed.timeline("q").groups
    assert (chart.quorum, chart.quorum_reached) == (2, True)
    chart_page = render_html(feed.timeline("q"))
    assert '<tspan class="info"> · quorum of 2 reached</tspan>' in chart_page
    assert '<tspan class="info"> · 3 cancelled, not needed</tspan>' in chart_page
    assert "partial: " not in chart_page  # (no "partial: 3 did not complete")
    transport = httpx.ASGITransport(app=create_app(store, feeds={"quorum": feed}))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        page = (await client.get("/runs/quorum")).text
    assert '<span class="status s-quorum_reached">quorum reached</span>' in page
    assert "quorum of 2 reached · 5 of 5 done · 2 ok · 3 cancelled (not needed)" in page


def test_a_group_that_missed_its_quorum_says_so() -> None:
    node = {"status": "partial", "quorum": 3, "total": 5, "done": 5, "succeeded": 2, "failed": 3}
    assert group_status_text(node) == "partial"
    assert group_counts_text(node) == "quorum of 3 not reached · 5 of 5 done · 2 ok · 3 failed"
    assert group_counts_text({**node, "status": "running", "done": 1, "failed": 0}) == (
        "1 of 5 done · 2 ok"
    )
