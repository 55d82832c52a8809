"""The run timeline: one bar per member, coloured by what happened, as well-formed HTML/SVG."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from recovery_support import Squarer, run_group
from rh_agents.cli import app
from rh_agents.core.bus import EventBus
from rh_agents.core.context import current_frame
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventRetrying
from rh_agents.core.results import ExecutionResult
from rh_agents.observability import MemberBar, Timeline, TimelineGroup, TimelineRecorder
from rh_agents.observability.timeline_svg import COLOURS, render_html
from rh_agents.recovery import Recovery
from rh_agents.recovery.records import CheckpointRecord
from rh_agents.resilience import RetryPolicy
from screenshot_support import find_chromium, png_size, read_png, screenshot

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


def nested_timeline() -> Timeline:
    """Two outermost groups; the first's members open groups of their own (one two deep)."""
    docs = TimelineGroup("run::docs", "docs", 0.0, 6.0, max_workers=2, status="partial")
    docs.members = {
        0: MemberBar(0, "alpha", 0.0, 0.0, 2.0, "completed"),
        1: MemberBar(
            1,
            '<b>beta</b> & "co"',
            0.0,
            0.5,
            4.0,
            "failed",
            error="ValueError: <bad> & \x00worse",
            attempts=3,  # handed up from the nested call, with its error
        ),
        2: MemberBar(2, "gamma", 0.0, 2.0, 6.0, "timed_out", error="timed out after 4s"),
        3: MemberBar(3, "delta", 0.0, None, 4.0, "skipped"),
    }
    steps0 = TimelineGroup(  # linked by its record
        "run::docs[0]::reader::steps",
        "steps",
        0.0,
        2.0,
        status="completed",
        parent_group_id="run::docs",
        parent_index=0,
    )
    steps0.members = {
        0: MemberBar(0, "summary", 0.0, 0.0, 2.0, "completed", attempts=2, retries=[1.0]),
        1: MemberBar(1, "keywords", 0.0, 0.0, 0.3, "completed"),
    }
    steps1 = TimelineGroup("run::docs[1]::reader::steps", "steps", 0.5, 4.0, status="partial")
    steps1.members = {  # linked by its address (no parent recorded)
        0: MemberBar(0, "summary", 0.5, 0.5, 4.0, "failed", "Boom", 3, [1.5, 2.5]),
        1: MemberBar(1, "keywords", 0.5, 0.5, 1.0, "completed"),
    }
    deeper = TimelineGroup("run::docs[1]::reader::steps[1]::kw::split", "split", 0.5, 1.0)
    deeper.status = "completed"
    deeper.members = {0: MemberBar(0, None, 0.5, 0.5, 1.0, "completed", retries=[0.7])}
    after = TimelineGroup("run::after<&>", "after<&>", 6.0, 7.0, status="completed")
    after.members = {0: MemberBar(0, "only", 6.0, 6.0, 7.0, "completed")}
    groups = [docs, steps0, steps1, deeper, after]
    return Timeline(groups, title='nested <run> & "friends"')


def test_nested_groups_fold_under_their_member_and_counts_reach_the_top() -> None:
    timeline = nested_timeline()
    assert [g.group_id for g in timeline.roots()] == ["run::docs", "run::after<&>"]
    assert [g.name for g in timeline.nested("run::docs", 1)] == ["steps"]
    assert [g.name for g in timeline.nested("run::docs[1]::reader::steps", 1)] == ["split"]
    html = timeline.to_html()
    page = page_of(html)  # well-formed, whatever the run's strings held
    body = page.find(f"{XHTML}body")
    assert body is not None
    # The chart comes first; the metrics table (when there is one) is folded after it.
    order = [child.get("class") or child.tag.split("}")[1] for child in body]
    assert order == ["h1", "overview", "legend", "note", "chart"]

    # Nested groups are folded under their member's row, two levels deep.
    chart = classed(body, f"{XHTML}div", "chart")[0]
    tops = [d for d in chart if d.get("class") == "group"]
    assert [d.get("data-group-id") for d in tops] == ["run::docs", "run::after<&>"]
    folds = [d for d in tops[0] if d.tag == f"{XHTML}details"]
    assert [d.get("data-index") for d in folds] == ["0", "1"]
    assert all(d.get("open") is None for d in folds)  # folded until clicked
    for fold in folds:
        summary = fold.find(f"{XHTML}summary")
        assert summary is not None  # the member's own row is what one clicks
        (row,) = [g for g in summary.iter(f"{SVG}g") if g.get("data-group-id") == "run::docs"]
        assert row.get("data-index") == fold.get("data-index")
        assert classed(row, f"{SVG}path", "twisty")
    inner = [d for d in classed(folds[1], f"{XHTML}details", "member") if d is not folds[1]]
    assert [d.get("data-index") for d in inner] == ["1"]
    assert classed(inner[0], f"{XHTML}div", "group")[0].get("data-depth") == "2"

    # Retries and failures inside a member show on its top-level row: diamonds and a note.
    top = members_of(page, "run::docs")
    assert len(classed(top[0], f"{SVG}path", "retry")) == 1
    assert "×1 retry" in text_of(top[0])
    # Two retries of its nested summary and one two levels down; its own count (3 attempts)
    # is the nested call's, so it is not counted twice.
    assert len(classed(top[1], f"{SVG}path", "retry")) == 3
    assert "×3 retries" in text_of(top[1]) and "1 failed inside" in text_of(top[1])
    assert "retr" not in text_of(top[2]) and "timed out after 4s" in text_of(top[2])
    head = classed(tops[0], f"{SVG}svg", "group-head")[0]
    assert "partial: 3 did not complete" in text_of(head) and "×4 retries" in text_of(head)
    assert "skipped" in text_of(top[3])

    # The legend lists what the page shows and nothing else.
    legend = classed(body, f"{XHTML}p", "legend")[0]
    keys = [span.get("data-key") for span in legend]
    assert keys == ["wait", "completed", "failed", "timed_out", "skipped", "retry"]
    # "partial" is explained; statuses that do not occur are not.
    (note,) = [p for p in body if p.get("class") == "note"]
    assert "partial" in text_of(note) and "did not complete" in text_of(note)
    assert "cancelled" not in text_of(note).split(":", 1)[0]
    overview = text_of(classed(body, f"{XHTML}p", "overview")[0])
    assert "2 groups of 5 members" in overview and "3 nested groups" in overview

    # Every string from the run is escaped: nothing of it became markup.
    assert "<b>" not in html and "<run>" not in html and "<bad>" not in html
    assert "\x00" not in html
    assert text_of(body.find(f"{XHTML}h1")) == 'nested <run> & "friends"'  # type: ignore[arg-type]
    assert any('<b>beta</b> & "co"' in text_of(t) for t in top[1].iter(f"{SVG}text"))
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/", "")


def test_labels_get_the_room_they_need() -> None:
    timeline = nested_timeline()
    long = "WIDE_MEMBER_NAME_WITH_MANY_CAPITALS_WWMM"
    timeline.groups[0].members[0].name = long
    page = page_of(timeline.to_html())
    (label,) = [t for t in page.iter(f"{SVG}text") if t.text and long in t.text]
    (run,) = rects(members_of(page, "run::docs")[0], "run")
    # The label starts after the indent and, at 0.72 em per character (DejaVu Sans, a wide
    # sans, averages under 0.7 em on capitals), ends before the bars begin.
    right = float(label.get("x", "0")) + len(label.text or "") * 11 * 0.72
    assert right < float(run.get("x", "0"))
    svgs = list(page.iter(f"{SVG}svg"))
    assert len({s.get("width") for s in svgs}) == 1  # every chart row shares one time axis


def test_the_page_in_a_browser(tmp_path: Path) -> None:
    """Headless Chromium: the chart is drawn at the top, every state in the legend is drawn,
    no text runs into the bars or off the chart, and a member's nested groups stay folded
    until opened."""
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (.ci/run installs Debian's chromium package)")
    timeline = nested_timeline()
    timeline.groups[0].members[0].name = "A_RATHER_LONG_MEMBER_NAME_WWMM"
    html = timeline.to_html()
    folded = tmp_path / "folded.html"
    folded.write_text(html, encoding="utf-8")
    opened = tmp_path / "opened.html"
    opened.write_text(
        html.replace('<details class="member"', '<details open="open" class="member"')
    )
    shot = screenshot(browser, folded, tmp_path / "folded.png")
    assert png_size(shot) == (1280, 900)
    image = read_png(shot)
    white = (255, 255, 255)

    def dark(x: int, y: int) -> bool:  # text (#333), not bars, grid or backgrounds
        return max(image.pixel(x, y)) < 100

    # The chart is at the top of the page, not below a table: the top third is well inked.
    inked = sum(image.pixel(x, y) != white for y in range(300) for x in range(0, 1280, 2))
    assert inked > 0.05 * 300 * 640
    # Every state the legend lists is drawn in its own colour.
    page = page_of(html)
    legend = [span.get("data-key") or "" for span in classed(page, f"{XHTML}p", "legend")[0]]
    counts = dict.fromkeys(legend, 0)
    wanted = {bytes.fromhex(COLOURS[key][1:]): key for key in legend}
    for row in image.pixels:
        for x in range(0, len(row), 3):
            key = wanted.get(row[x : x + 3])
            if key is not None:
                counts[key] += 1
    assert all(count >= 20 for count in counts.values()), counts

    # Where the page puts the chart: the axis line (#444) starts at the labels' right edge.
    axis = next(s for s in page.iter(f"{SVG}svg") if s.get("class") == "axis")
    axis_line = next(line for line in axis.iter(f"{SVG}line"))
    bars_x = 16 + round(float(axis_line.get("x1", "0")))  # body margin + label column
    right_x = 16 + int(axis.get("width", "0"))
    axis_y = next(
        y
        for y in range(900)
        if all(
            image.pixel(x, y) == (68, 68, 68) for x in range(bars_x + 2, bars_x + 60)
        )  # crisp #444
    )
    # No label reaches the bars, and nothing touches the chart's right edge (the last tick
    # label and the notes end before it).
    assert not any(dark(x, y) for y in range(axis_y + 3, 900) for x in range(bars_x - 5, bars_x))
    assert right_x < 1280
    assert not any(dark(x, y) for y in range(axis_y - 20, 900) for x in range(right_x - 3, right_x))

    # Folded, only the failed member's own bar is red; opened, its failed nested member too.
    def red_rows(path: Path) -> int:
        picture = read_png(path)
        red = bytes.fromhex(COLOURS["failed"][1:])
        return sum(red in bytes(row[bars_x * 3 : right_x * 3]) for row in picture.pixels)

    folded_red = red_rows(shot)
    opened_red = red_rows(screenshot(browser, opened, tmp_path / "opened.png"))
    assert folded_red > 0 and opened_red >= 2 * folded_red - 2


@pytest.mark.parametrize("bad", ["\udce9", "\ud800"])
def test_a_lone_surrogate_in_an_error_is_written_as_a_question_mark(
    tmp_path: Path, bad: str
) -> None:
    """``write_html`` failed with UnicodeEncodeError on an error naming a file whose name is
    not UTF-8 (``os.fsdecode`` gives ``\\udce9``): the page could not be written at all."""
    bar = MemberBar(0, name="read", started=0.0, finished=1.0, status="failed")
    bar.error = f"cannot open caf{bad}.txt"
    timeline = Timeline([TimelineGroup("files", "files", members={0: bar})], timed=False)
    path = timeline.write_html(tmp_path / "t.html")
    html = path.read_text(encoding="utf-8")
    assert "cannot open caf?.txt" in html
    page_of(html)  # still well-formed XML


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 1e300])
def test_a_time_that_is_no_time_is_shown_as_unknown(bad: float) -> None:
    """An infinite start or end made ``render_html`` raise OverflowError (the whole page
    lost for one value); NaN and times whose difference overflows, too. Such a time is
    shown as unknown, and every member is still drawn."""
    group = TimelineGroup("g", "g", started=0.0, finished=bad, status="completed")
    group.members[0] = MemberBar(0, name="a", enqueued=0.0, started=0.5, finished=bad)
    group.members[1] = MemberBar(1, name="b", enqueued=-bad, started=0.0, finished=1.0)
    group.members[1].retries.append(bad)
    group.members[2] = MemberBar(2, name="c", enqueued=0.0, started=0.25, finished=1.0)
    html = render_html(Timeline([group]))
    assert sorted(members_of(page_of(html))) == [0, 1, 2]
    assert "inf" not in html.replace("info", "").lower() and "nan" not in html.lower()
    assert group.members[0].finished is bad  # the timeline itself is left as it was


def test_groups_whose_parents_form_a_cycle_are_shown() -> None:
    """Two groups each naming a member of the other as its parent (bad data): neither was
    reachable from a root, and both were left out of the page without a word."""
    a = TimelineGroup("a", "a", parent_group_id="b", parent_index=0, members={0: MemberBar(0)})
    b = TimelineGroup("b", "b", parent_group_id="a", parent_index=0, members={0: MemberBar(0)})
    ok = TimelineGroup("ok", "ok", members={0: MemberBar(0)})
    timeline = Timeline([a, b, ok])
    assert [g.group_id for g in timeline.roots()] == ["a", "ok"]
    assert [g.group_id for g in timeline.nested("a", 0)] == ["b"]
    page = page_of(render_html(timeline))
    shown = {el.get("data-group-id") for el in page.iter(f"{XHTML}div")} - {None}
    assert shown == {"a", "b", "ok"}


@pytest.mark.timeout(10)
async def test_a_nested_group_reopened_by_a_retried_member_keeps_both_openings() -> None:
    """A callable member retried by its group opens its nested group again, at the same
    address: the first opening (partial, one leaf failed) was replaced by the second, and the
    member's row lost its "1 failed inside"."""
    bus = EventBus()
    recorder = TimelineRecorder()
    bus.subscribe(recorder)
    state = ExecutionState(event_bus=bus, clock=SteppingClock())
    attempts = 0

    async def leaf(k: int) -> int:
        if attempts == 1 and k == 1:
            raise ValueError("leaf fails in the first attempt")
        return k

    async def member() -> int:
        nonlocal attempts
        attempts += 1
        async with state.parallel(max_workers=2, name="inner") as q:
            for k in range(3):
                q.add(lambda k=k: leaf(k))
        results = await q.gather()
        if not all(r.ok for r in results):
            raise RuntimeError("a leaf failed")
        return sum(r.result for r in results)

    retry = RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)
    async with state.parallel(max_workers=1, name="top", retry=retry) as p:
        p.add(member, name="m")
    (result,) = await p.gather()
    assert result.ok and result.attempts == 2
    await bus.close()

    timeline = recorder.timeline()
    assert [(g.group_id, g.status) for g in timeline.groups] == [
        ("top", "completed"),
        ("top[0]::inner", "partial"),
        ("top[0]::inner", "completed"),
    ]
    first, second = timeline.groups[1:]
    assert [b.status for b in first.bars()] == ["completed", "failed", "completed"]
    assert timeline.nested("top", 0) == [first, second]
    assert timeline.roots() == [timeline.groups[0]]

    page = page_of(timeline.to_html())
    row = members_of(page, "top")[0]
    assert "1 failed inside" in text_of(row) and "×1 retry" in text_of(row)
    # Both openings are folded under the member's row, in the order they ran.
    (fold,) = [d for d in page.iter(f"{XHTML}details") if "member" in (d.get("class") or "")]
    inner = classed(fold, f"{XHTML}div", "group")
    assert [(d.get("data-group-id"), d.get("data-depth")) for d in inner] == [
        ("top[0]::inner", "1"),
        ("top[0]::inner", "1"),
    ]
    failed_rows = [
        [g.get("data-index") for g in d.iter(f"{SVG}g") if "status-failed" in g.get("class", "")]
        for d in inner
    ]
    assert failed_rows == [["1"], []]
    overview = text_of(classed(page, f"{XHTML}p", "overview")[0])
    assert "2 nested groups (6 members, 1 failed)" in overview
