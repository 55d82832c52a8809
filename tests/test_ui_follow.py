"""A ``LiveFeed`` that follows a state (``feed.follow(state)``, what ``Viewer.watch`` does):
it reads the state's ``RunWatch`` log instead of taking a bus record per call and member, and
must show exactly what a feed fed every record shows."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from executor_support import Item as ExecutorItem
from executor_support import double_tool
from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventCompleted, MemberFinished
from rh_agents.errors import ConfigurationError
from rh_agents.executors import ProcessExecutor
from rh_agents.recovery import Recovery
from rh_agents.ui import Viewer, create_app
from rh_agents.ui import live as live_module
from rh_agents.ui.live import LiveFeed
from ui_support import EVIL, Item, Items, assert_feeds_agree, build_workflow, run_workflow

pytestmark = pytest.mark.timeout(30)


async def _eventually(check: Any, within: float = 10.0) -> bool:
    """Whether ``check()`` comes true within ``within`` seconds (looked at every 5 ms): for a
    timer's work, which has no event to wait on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return bool(check())


def _both(state: ExecutionState) -> tuple[LiveFeed, LiveFeed]:
    """A feed fed every record of ``state``'s bus, and one following ``state``."""
    recorded = LiveFeed("recorded", clock_now=state.clock.now)
    state.event_bus.subscribe(recorded, kinds=LiveFeed.KINDS)
    followed = LiveFeed("followed", clock_now=state.clock.now)
    followed.follow(state)
    return recorded, followed


class Slow(BaseModel):
    n: int
    delay: float


async def _slow(input: Slow, context: str, state: ExecutionState) -> int:
    await asyncio.sleep(input.delay)
    if input.n == 0:
        raise ValueError("the first one fails")
    return input.n


SLOW = Tool(name="slow", description="waits", input_model=Slow, handler=_slow)


async def test_a_followed_run_shows_what_its_records_show() -> None:
    """Completed, failed (with an error to escape), retried and nested calls, members."""
    state = ExecutionState(run_id="same")
    recorded, followed = _both(state)
    await run_workflow(state, members=6, delay=0.001)
    assert_feeds_agree(recorded, followed)
    nodes = {n["address"]: n for n in followed.all_nodes()}
    assert EVIL in nodes["Orchestrator::docs[3]::work"]["error"]
    assert nodes["Orchestrator::docs[1]::work"]["retries"] == 1
    assert "double" in nodes["Orchestrator::docs[2]::work"]["result"]
    assert nodes["Orchestrator"]["status"] == "completed"
    assert followed.event_counts() == ({"completed": 6, "failed": 1}, 0)


@pytest.mark.parametrize(
    ("options", "statuses"),
    [
        # The first member fails at once: the others are cancelled as they wait.
        ({"error_strategy": "fail_fast"}, {"failed", "cancelled"}),
        # Each member has 10 ms: the slow ones time out.
        ({"member_timeout": 0.01}, {"failed", "timed_out", "completed"}),
    ],
)
async def test_cancelled_and_timed_out_members_show_the_same(
    options: dict[str, Any], statuses: set[str]
) -> None:
    state = ExecutionState(run_id="stops")
    recorded, followed = _both(state)
    async with state:
        try:
            async with state.parallel(max_workers=2, name="g", **options) as p:
                for n in range(5):
                    delay = 0.0 if n < 2 else 5.0
                    p.add(ExecutionEvent(actor=SLOW)(Slow(n=n, delay=delay), "", state))
                await p.gather()
        except ValueError:  # (fail_fast raises the first failure)
            assert options.get("error_strategy") == "fail_fast"
    assert_feeds_agree(recorded, followed)
    members = [n for n in followed.all_nodes() if n["kind"] == "member"]
    assert {n["status"] for n in members} >= statuses - {"completed"}


async def test_a_run_in_progress_shows_running_members_calls_and_counts() -> None:
    release = asyncio.Event()
    entered: list[int] = []

    all_entered = asyncio.Event()

    async def hold(input: Item, context: str, state: ExecutionState) -> int:
        entered.append(input.n)
        if len(entered) == 4:
            all_entered.set()
        if input.n >= 2:
            await release.wait()
        return input.n

    tool = Tool(name="hold", description="holds", input_model=Item, handler=hold)

    async def orchestrate(input: Items, context: str, state: ExecutionState) -> int:
        async with state.parallel(max_workers=2, name="docs") as p:
            for item in input.items:
                p.add(ExecutionEvent(actor=tool)(item, context, state))
            await p.gather()
        return 0

    agent = Agent(name="Boss", description="", input_model=Items, handler=orchestrate)
    state = ExecutionState(run_id="busy")
    feed = LiveFeed("busy", clock_now=state.clock.now)
    feed.follow(state)
    assert state.event_bus.call_records is False  # following builds no call record
    items = Items(items=[Item(n=i) for i in range(4)])
    run = asyncio.create_task(ExecutionEvent(actor=agent)(items, "", state))
    try:
        await all_entered.wait()  # members 0 and 1 done; 2 and 3 wait for the release
        cursor = feed.cursor
        nodes = {n["address"]: n for n in feed.all_nodes()}
        assert nodes["Boss"]["status"] == "running" and nodes["Boss"]["input"].startswith(
            '{"items"'
        )
        assert [nodes[f"Boss::docs[{i}]"]["status"] for i in range(4)] == [
            "completed",
            "completed",
            "running",
            "running",
        ]
        assert nodes["Boss::docs[3]::hold"]["status"] == "running"
        assert nodes["Boss::docs[3]::hold"]["input"] == '{"n":3,"delay":0.0}'
        (group,) = feed.groups()
        assert (group["status"], group["done"], group["total"]) == ("running", 2, 4)
        release.set()
        await run
        changed = feed.changes_since(cursor)
        assert changed is not None and "Boss::docs[3]" in changed and "Boss" in changed
        nodes = {n["address"]: n for n in feed.all_nodes()}
        assert nodes["Boss::docs[3]"]["status"] == "completed"
        assert nodes["Boss::docs[3]::hold"]["result"] == "3"
        (group,) = feed.groups()
        assert (group["status"], group["done"]) == ("completed", 4)
    finally:
        release.set()
        await asyncio.wait_for(run, 5)
        feed.finish()
    assert state.watch is None  # the run is no longer watched: nothing more is logged


@pytest.mark.parametrize("replay", ["skip", "republish"])
async def test_a_resumed_run_shows_its_replayed_calls_the_same(tmp_path: Path, replay: str) -> None:
    """Calls answered from the stored run (replays, announced as such or republished as
    completed with their results) and calls run again."""
    store = tmp_path / "state.db"
    first = ExecutionState(run_id="again", recovery=Recovery(store))
    await run_workflow(first, members=4)
    state = ExecutionState.resume("again", backend=store, replay=replay)
    recorded, followed = _both(state)
    await run_workflow(state, members=4)
    assert_feeds_agree(recorded, followed)
    replayed = [n for n in followed.all_nodes() if n.get("source") == "replay"]
    assert replayed
    if replay == "republish":  # shown with their results (the republished records have them)
        assert all(n["result"] is not None for n in replayed)


async def test_calls_made_in_worker_processes_show_the_same() -> None:
    """Calls run in another process join the driver's history (and the watch log) there."""
    pool = ProcessExecutor(max_processes=2)
    try:
        state = ExecutionState(run_id="processes")
        recorded, followed = _both(state)
        async with state, state.parallel(max_workers=2, name="g", executor=pool) as p:
            for n in range(4):
                p.add(ExecutionEvent(actor=double_tool)(ExecutorItem(n=n), "", state))
            results = await p.gather()
        assert [r.result for r in results] == [0, 2, 4, 6]
        assert_feeds_agree(recorded, followed)
        calls = [n for n in followed.all_nodes() if n["kind"] == "event"]
        assert sorted(n["result"] for n in calls) == ["0", "2", "4", "6"]
    finally:
        pool.close()


async def test_a_cancelled_call_shows_cancelled() -> None:
    state = ExecutionState(run_id="cancel")
    recorded, followed = _both(state)
    inside = asyncio.Event()

    async def wait_forever(input: Slow, context: str, state: ExecutionState) -> int:
        inside.set()
        await asyncio.Event().wait()
        return 0

    tool = Tool(name="slow", description="waits", input_model=Slow, handler=wait_forever)
    call = asyncio.create_task(ExecutionEvent(actor=tool)(Slow(n=1, delay=30), "", state))
    await inside.wait()
    assert [n["status"] for n in followed.all_nodes()] == ["running"]
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await state.event_bus.close()
    (node,) = followed.all_nodes()
    assert node["status"] == "cancelled" and node["duration"] >= 0
    assert_feeds_agree(recorded, followed)


async def test_nobody_watching_logs_nothing_and_builds_no_records() -> None:
    state = ExecutionState()
    await run_workflow(state, members=3)
    assert state.watch is None and state.event_bus.call_records is False
    printer_like = ExecutionState()
    printer_like.event_bus.subscribe(lambda record: None, kinds=[EventCompleted])
    assert printer_like.event_bus.call_records is True
    member_only = ExecutionState()
    member_only.event_bus.subscribe(lambda record: None, kinds=[MemberFinished])
    assert member_only.event_bus.call_records is False


async def test_two_feeds_each_get_every_entry_and_leave_independently() -> None:
    state = ExecutionState(run_id="two")
    first, second = LiveFeed("a", clock_now=state.clock.now), LiveFeed("b")
    first.follow(state)
    second.follow(state)
    with pytest.raises(ConfigurationError, match="already follows"):
        second.follow(state)
    await run_workflow(state, members=3)
    assert len(first.all_nodes()) == len(second.all_nodes()) == 7  # 1 + 3 members + 3 calls
    first.unfollow()
    assert state.watch is not None  # the second still follows
    second.finish()
    assert state.watch is None


async def test_a_feed_nobody_reads_still_takes_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The log is drained on a timer, read or not, into the feed's backlog (plain values,
    not the run's objects); rows are made of it when a page asks."""
    monkeypatch.setattr(live_module, "DRAIN_EVERY", 0.01)
    state = ExecutionState()
    feed = LiveFeed("unread")
    feed.follow(state)
    agent = build_workflow(3)
    await ExecutionEvent(actor=agent)(Items(items=[Item(n=i) for i in range(3)]), "", state)
    assert state.watch is not None
    watch = state.watch
    assert await _eventually(lambda: not watch.log)
    assert feed.behind and feed.rows == {}  # taken, not made rows of yet
    assert len(feed.all_nodes()) == 7 and not feed.behind
    feed.finish()


async def test_a_stream_takes_the_log_a_budget_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_module, "STREAM_BUDGET", 4)
    state = ExecutionState()
    feed = LiveFeed("paced")
    feed.follow(state)
    await run_workflow(state, members=5)  # 6 calls started and ended, 5 members: 17 entries
    cursor, seen, rounds = 0, set(), 0
    while feed.behind:
        taken = feed.records
        changed = feed.changes_since(cursor)
        assert changed is not None and feed.records - taken <= 4
        seen.update(changed)
        cursor, rounds = feed.cursor, rounds + 1
    assert rounds == 5  # 17 entries, 4 at a time
    assert seen >= {n["address"] for n in feed.all_nodes()}
    feed.finish()


async def test_a_backlog_nobody_reads_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_BACKLOG values, the feed makes rows of the excess as it takes the log."""
    monkeypatch.setattr(live_module, "MAX_BACKLOG", 40)
    state = ExecutionState()
    feed = LiveFeed("bounded")
    feed.follow(state)
    async with state.parallel(max_workers=4) as p:
        for n in range(50):
            p.add(functools.partial(asyncio.sleep, 0, n))
        await p.gather()
    assert state.watch is not None
    state.watch.drain()
    assert feed._backlog_size <= 40 and len(feed.rows) >= 50 - 40 // 11
    assert len([n for n in feed.all_nodes() if n["kind"] == "member"]) == 50
    feed.finish()


async def test_a_run_watched_after_it_started() -> None:
    """A call already running when the watch begins shows once it ends."""
    state = ExecutionState(run_id="late")
    call = asyncio.create_task(ExecutionEvent(actor=SLOW)(Slow(n=5, delay=0.02), "", state))
    await asyncio.sleep(0)
    feed = LiveFeed("late")
    feed.follow(state)
    assert (await call).ok
    (node,) = feed.all_nodes()
    assert (node["address"], node["status"], node["result"]) == ("slow", "completed", "5")
    feed.finish()


async def test_a_group_opened_before_the_feed_follows_is_shown() -> None:
    """Its GroupStarted was missed: the group was never listed, and its running members never
    shown (found in review)."""
    state = ExecutionState(run_id="late-group")
    gate, both_in = asyncio.Event(), asyncio.Event()
    inside: list[int] = []

    async def member(i: int) -> int:
        inside.append(i)
        if len(inside) == 2:
            both_in.set()
        await gate.wait()
        return i

    async with state.parallel(max_workers=2, name="g") as p:
        for i in range(4):
            p.add(member(i))
        await both_in.wait()
        feed = LiveFeed("late-group", clock_now=state.clock.now)
        feed.follow(state)
        nodes = {n["address"]: n["status"] for n in feed.all_nodes()}
        assert nodes == {"g[0]": "running", "g[1]": "running"}
        (group,) = feed.groups()
        assert (group["group_id"], group["status"], group["done"]) == ("g", "running", 0)
        gate.set()
        await p.gather()
    await state.event_bus.drain()
    (group,) = feed.groups()
    assert (group["status"], group["done"], group["succeeded"]) == ("completed", 4, 4)
    feed.finish()


async def test_a_stream_wakes_for_members_that_start_without_logging_anything() -> None:
    """A member's start logs nothing: a waiting stream woke only at its heartbeat (15 s)."""
    state = ExecutionState(run_id="starts")
    feed = LiveFeed("starts", clock_now=state.clock.now)
    feed.follow(state)
    gate = asyncio.Event()

    async def member() -> None:
        await gate.wait()

    async with state.parallel(max_workers=2, name="g") as p:
        await asyncio.sleep(0)
        cursor = feed.cursor
        waiting = asyncio.create_task(feed.wait(60))
        await asyncio.sleep(0)
        p.add(member())
        await asyncio.wait_for(waiting, 5)  # (a look every LOOK_EVERY seconds finds it)
        changed = feed.changes_since(cursor)
        assert changed is not None and "g[0]" in changed
        gate.set()
        await p.gather()
    feed.finish()


async def test_the_runs_list_counts_what_a_followed_run_did_before_any_page_opened(
    tmp_path: Path,
) -> None:
    state = ExecutionState(run_id="listed")
    feed = LiveFeed("listed", clock_now=state.clock.now)
    feed.follow(state)
    await run_workflow(state, members=3)
    app = create_app(tmp_path / "state.db", feeds={"listed": feed})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        (run,) = (await client.get("/api/runs")).json()["runs"]
    assert run["events"] == 4 and run["counts"] == {"completed": 4}
    feed.finish()


def test_a_feed_followed_from_outside_a_loop_takes_the_log_on_the_runs_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a loop there was no drain timer, ever: the log grew for the whole run."""
    monkeypatch.setattr(live_module, "DRAIN_EVERY", 0.01)
    state = ExecutionState(run_id="outside")
    feed = LiveFeed("outside")
    feed.follow(state)  # e.g. viewer.watch(state) before asyncio.run()
    watch = state.watch
    assert watch is not None

    async def main() -> None:
        async with state.parallel(max_workers=2, name="g") as p:
            for i in range(3):
                p.add(functools.partial(asyncio.sleep, 0, i))
            await p.gather()
        assert await _eventually(lambda: not watch.log)  # the timer took it
        assert feed.behind

    asyncio.run(main())
    feed.finish()
    assert [n["status"] for n in feed.all_nodes()] == ["completed"] * 3


async def test_a_finished_feed_cannot_follow_again_and_a_viewer_makes_a_new_one() -> None:
    """A finished feed followed again never let go (finish() did nothing the second time)."""
    state = ExecutionState(run_id="twice")
    feed = LiveFeed("twice")
    feed.follow(state)
    feed.finish()
    with pytest.raises(ConfigurationError, match="new LiveFeed"):
        feed.follow(state)
    assert state.watch is None
    viewer = Viewer(store=None)
    first = viewer.watch(state)
    assert viewer.watch(state) is first  # the same run: the same feed
    viewer.finish(state)
    second = viewer.watch(state)  # a new run on that state
    assert second is not first and second.running and state.watch is not None
    await viewer.close()
    assert state.watch is None


async def test_a_map_whose_input_is_still_being_read_has_no_known_total() -> None:
    """Its total showed as the members added when it started (0), below those done."""
    state = ExecutionState(run_id="lazy")
    feed = LiveFeed("lazy", clock_now=state.clock.now)
    feed.follow(state)
    gate, four_done = asyncio.Event(), asyncio.Event()
    done: list[int] = []

    async def work(item: int) -> int:
        if item >= 4:
            await gate.wait()
        done.append(item)
        if len(done) == 4:
            four_done.set()
        return item

    async with state.parallel(max_workers=2, name="m") as p:
        p.map(work, iter(range(10)))
        await four_done.wait()
        (group,) = feed.groups()
        assert group["total_known"] is False and group["total"] >= group["done"] == 4
        gate.set()
        await p.gather()
    await state.event_bus.drain()
    (group,) = feed.groups()
    assert (group["status"], group["total"], group.get("total_known", True)) == (
        "completed",
        10,
        True,
    )
    feed.finish()


async def test_an_interrupted_run_ends_its_followed_feed_from_within_the_bus() -> None:
    """The feed lets go of the state while the bus is handing it the RunInterrupted record
    (it unsubscribes itself there): what the run logged before is still taken."""
    state = ExecutionState(run_id="ctrl-c")
    feed = LiveFeed("ctrl-c", clock_now=state.clock.now)
    feed.follow(state)
    await ExecutionEvent(actor=SLOW)(Slow(n=2, delay=0), "", state)
    state._interrupted()  # what Ctrl-C under rh_agents.run does as the run stops
    await state.event_bus.drain()
    assert feed.status == "interrupted" and state.watch is None
    assert not state.event_bus.has_listeners
    (node,) = feed.all_nodes()
    assert (node["address"], node["status"], node["result"]) == ("slow", "completed", "2")


async def test_two_running_runs_of_one_name_are_not_mixed_up_by_a_viewer() -> None:
    """The second replaced the first in the viewer: the first, still running, vanished from
    it (its feed following on, unseen)."""
    viewer = Viewer(store=None)
    first, second = ExecutionState(run_id="same"), ExecutionState(run_id="same")
    viewer.watch(first)
    with pytest.raises(ConfigurationError, match="run_id="):
        viewer.watch(second)
    assert viewer.watch(second, run_id="same-2").run_id == "same-2"
    viewer.finish(first)
    third = ExecutionState(run_id="same")  # a later run of that name: it takes the name
    assert viewer.watch(third) is viewer.feeds["same"]
    await viewer.close()
    assert first.watch is second.watch is third.watch is None


async def test_following_again_before_the_previews_are_made_keeps_the_new_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Letting go makes the previews a chunk per loop turn; following again meanwhile must not
    have the old chain drop the new run's history when it ends."""
    monkeypatch.setattr(live_module, "PREVIEW_CHUNK", 1)
    feed = LiveFeed("again")
    first = ExecutionState()
    feed.follow(first)
    await run_workflow(first, members=3)
    feed.unfollow()  # (a viewer closing: the feed is not finished)
    second = ExecutionState()
    feed.follow(second)
    for _ in range(20):
        await asyncio.sleep(0)  # the old chain's turns
    await ExecutionEvent(actor=SLOW)(Slow(n=4, delay=0), "", second)
    nodes = {n["address"]: n for n in feed.all_nodes()}
    assert nodes["slow"]["result"] == "4"  # (made from the new run's history)
    feed.finish()


async def test_a_snapshot_of_a_followed_run_holds_its_previews() -> None:
    """A followed run's previews (a call's result) are made when shown, from the run's
    history, which only the loop may read: the snapshot (taken on the loop, read in a thread)
    holds them made, as the feed shows them."""
    state = ExecutionState(run_id="previews")
    feed = LiveFeed("previews", clock_now=state.clock.now)
    feed.follow(state)
    await run_workflow(state, members=4, delay=0.001)
    snapshot = feed.snapshot()
    nodes = {node["address"]: node for node in snapshot.nodes()}
    assert "double" in nodes["Orchestrator::docs[2]::work"]["result"]
    assert list(nodes.values()) == [feed.node(address) for address in nodes]
    assert snapshot.groups() == feed.groups()
    feed.unfollow()
