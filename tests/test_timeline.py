"""The run timeline: one bar per member, coloured by what happened, as well-formed HTML/SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from recovery_support import Squarer, run_group
from rh_agents.cli import app
from rh_agents.core.bus import EventBus
from rh_agents.core.context import current_frame
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventRetrying
from rh_agents.core.results import ExecutionResult
from rh_agents.observability import Timeline, TimelineRecorder
from rh_agents.observability.timeline_svg import COLOURS
from rh_agents.recovery import Recovery
from rh_agents.recovery.records import CheckpointRecord

SVG = "{http://www.w3.org/2000/svg}"


class SteppingClock:
    """Moves only when a member says it ran for some seconds."""

    def __init__(self) -> None:
        self.t = 50.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


XHTML = "{http://www.w3.org/1999/xhtml}"


def page_of(html: str) -> ET.Element:
    """The whole page, parsed: it is well-formed XML (XHTML with inline SVG)."""
    assert html.startswith("<!DOCTYPE html>\n")
    return ET.fromstring(html.split("\n", 1)[1])


def members_of(page: ET.Element, group_id: str | None = None) -> dict[int, ET.Element]:
    """Member rows by index: of ``group_id``, or of the first group on the page."""
    out: dict[int, ET.Element] = {}
    for g in page.iter(f"{SVG}g"):
        if not g.get("class", "").startswith("member "):
            continue
        gid = g.get("data-group-id")
        if group_id is None:
            group_id = gid
        if gid == group_id:
            out[int(g.get("data-index", "-1"))] = g
    return out


def rects(member: ET.Element, cls: str) -> list[ET.Element]:
    return [r for r in member.iter(f"{SVG}rect") if cls in (r.get("class") or "").split()]


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


def classed(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(tag) if cls in (e.get("class") or "").split()]


async def recorded_run() -> tuple[Timeline, str]:
    clock = SteppingClock()
    bus = EventBus()
    recorder = TimelineRecorder()
    bus.subscribe(recorder)
    state = ExecutionState(event_bus=bus, clock=clock)

    async def ok() -> str:
        clock.t += 1.0
        return "ok"

    async def flaky() -> ExecutionResult[Any]:
        frame = current_frame(state)  # what a retry policy publishes between attempts
        bus.publish(
            EventRetrying(
                address=frame.address,
                timestamp=clock.t + 0.5,
                group_id=frame.group_id,
                parallel_index=frame.parallel_index,
                is_parallel=True,
                attempt=1,
                delay=0.1,
                error="RuntimeError: 503",
                error_type="RuntimeError",
            )
        )
        clock.t += 2.0
        return ExecutionResult(ok=True, result="late", execution_time=2.0, attempts=2)

    async def bad() -> None:
        clock.t += 1.0
        raise ValueError("<bad> & worse")

    async with state.parallel(max_workers=1, name="docs") as p:
        p.add(ok, name="first")
        p.add(flaky, name="flaky")
        p.add(bad, name="bad")
        p.add(ok, name="after_bad", after="bad")
        await p.gather()
    await bus.close()
    timeline = recorder.timeline("test run")
    return timeline, timeline.to_html()


async def test_one_bar_per_member_with_the_right_parts() -> None:
    timeline, html = await recorded_run()
    members = members_of(page_of(html))
    assert sorted(members) == [0, 1, 2, 3]
    statuses = {i: g.get("class") for i, g in members.items()}
    assert statuses == {
        0: "member status-completed",
        1: "member status-completed",
        2: "member status-failed",
        3: "member status-skipped",
    }
    # The first member never waited; the others waited for the single worker.
    assert rects(members[0], "wait") == []
    for i in (1, 2):
        (wait,) = rects(members[i], "wait")
        (run,) = rects(members[i], "run")
        assert wait.get("fill") == COLOURS["wait"]
        # The wait ends where the run starts.
        end_of_wait = float(wait.get("x", "0")) + float(wait.get("width", "0"))
        assert abs(end_of_wait - float(run.get("x", "0"))) < 0.05
    (failed,) = rects(members[2], "run")
    assert failed.get("class") == "run failed" and failed.get("fill") == COLOURS["failed"]
    (done,) = rects(members[0], "run")
    assert done.get("fill") == COLOURS["completed"]
    (skipped,) = rects(members[3], "run")
    assert skipped.get("fill") == COLOURS["skipped"]
    retries = classed(members[1], f"{SVG}path", "retry")
    assert len(retries) == 1 and not classed(members[0], f"{SVG}path", "retry")
    assert "×1 retry" in text_of(members[1]) and "retr" not in text_of(members[0])
    # Run lengths are to scale: the flaky member ran twice as long as the first one.
    (flaky_run,) = rects(members[1], "run")
    assert float(flaky_run.get("width", "0")) == 2 * float(done.get("width", "0"))
    tooltip = members[2].find(f"{SVG}title")
    assert tooltip is not None and tooltip.text is not None
    assert "waited 3.00 s" in tooltip.text and "<bad> & worse" in tooltip.text
    assert "<bad> & worse" in text_of(members[2])  # the error, beside the bar
    group = timeline.groups[0]
    assert group.status == "partial" and group.metrics.failed == 1


async def test_write_html_and_no_external_assets(tmp_path: Path) -> None:
    timeline, html = await recorded_run()
    path = timeline.write_html(tmp_path / "t.html")
    assert path.read_text(encoding="utf-8") == html
    assert "<script" not in html and "http://" not in html.replace(
        "http://www.w3.org/", ""
    )  # only the XML namespaces


def test_from_checkpoints_is_durations_only() -> None:
    records = [
        CheckpointRecord(
            run_id="r",
            address=f"docs[{i}]::square",
            seq=i,
            actor="square",
            actor_version="1",
            status="failed" if i == 1 else "completed",
            group_id="docs",
            parallel_index=i,
            execution_time=0.5 * (i + 1),
            error="RuntimeError: no" if i == 1 else None,
        )
        for i in range(3)
    ]
    records.append(  # an event nested inside a member is not a bar of its own
        CheckpointRecord(
            run_id="r",
            address="docs[0]::square::inner",
            seq=9,
            actor="inner",
            actor_version="1",
            status="completed",
            group_id="docs",
            parallel_index=0,
        )
    )
    timeline = Timeline.from_checkpoints(records)
    assert not timeline.timed
    html = timeline.to_html()
    assert "durations but not start times" in html
    page = page_of(html)
    members = members_of(page)
    assert sorted(members) == [0, 1, 2]
    assert members[1].get("class") == "member status-failed"
    widths = [float(rects(members[i], "run")[0].get("width", "0")) for i in range(3)]
    assert widths[1] == 2 * widths[0] and widths[2] == 3 * widths[0]
    starts = {rects(members[i], "run")[0].get("x") for i in range(3)}
    assert len(starts) == 1  # every bar starts at zero
    # Nothing waited on this page (no start times), so the legend does not offer it.
    keys = [span.get("data-key") for span in classed(page, f"{XHTML}p", "legend")[0]]
    assert keys == ["completed", "failed"]
    assert 'class="wait"' not in html


async def test_runs_timeline_command(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with ExecutionState(run_id="nightly", recovery=Recovery(db)) as state:
        await run_group(state, Squarer(fail={2}), 5)
    out = tmp_path / "nightly.html"
    runner = CliRunner()
    result = runner.invoke(
        app, ["runs", "timeline", "nightly", "--state", str(db), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "1 groups, 5 members" in result.output
    members = members_of(page_of(out.read_text(encoding="utf-8")))
    assert sorted(members) == list(range(5))
    assert members[2].get("class") == "member status-failed"
    missing = runner.invoke(app, ["runs", "timeline", "nope", "--state", str(db)])
    assert missing.exit_code == 2 and "nope" in missing.output


def test_demo_writes_a_timeline(tmp_path: Path) -> None:
    out = tmp_path / "demo.html"
    args = ["demo", "--documents", "3", "--mode", "collapsed", "--failure-rate", "0"]
    result = CliRunner().invoke(app, [*args, "--timeline", str(out)])
    assert result.exit_code == 0, result.output
    assert "Timeline written to" in result.output
    page = page_of(out.read_text(encoding="utf-8"))
    groups = {g.get("data-group-id"): g for g in classed(page, f"{XHTML}div", "group")}
    (documents,) = [gid for gid in groups if gid and gid.endswith("::documents")]
    assert groups[documents].get("data-depth") == "0"
    members = members_of(page, documents)
    assert sorted(members) == [0, 1, 2]  # one bar per document
    assert all(g.get("class") == "member status-completed" for g in members.values())
    # Each document's own group ("steps") folds under its row, in that row's <details>.
    folds = classed(groups[documents], f"{XHTML}details", "member")
    assert [d.get("data-index") for d in folds] == ["0", "1", "2"]
    for fold in folds:
        (nested,) = classed(fold, f"{XHTML}div", "group")
        assert nested.get("data-group-id", "").startswith(f"{documents}[{fold.get('data-index')}]")
        assert nested.get("data-group-id", "").endswith("::steps")
        assert nested.get("data-depth") == "1"
