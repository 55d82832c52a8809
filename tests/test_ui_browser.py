"""The viewer in headless Chromium (Debian's ``chromium``, driven by Playwright with the system
browser: ``.ci/run`` installs it, the ``dev`` extra installs Playwright without browsers).

The pages are served by a real server on 127.0.0.1 (a free port) on the test's event loop,
and always stopped. ``RH_UI_SCREENSHOTS=1`` also writes the screenshots shown in docs/ui.md
into docs/images/ (otherwise they go to the test's temporary folder).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.observability.timeline_svg import COLOURS
from rh_agents.ui import Viewer, serve
from ui_support import (
    EVIL,
    FAILING,
    add_members,
    member_record,
    run_workflow,
    running_run,
    save_records,
    stored_run,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
BROWSER_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",  # no network here: no calls home
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1100, "height": 680}

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    async_playwright = None


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.skip("Playwright is not installed (pip install -e '.[dev]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary on PATH (.ci/run installs Debian's chromium package)")
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(
                executable_path=executable, args=BROWSER_ARGS
            )
        except Exception as exc:  # a browser that cannot start here
            pytest.skip(f"chromium at {executable} does not start: {exc}")
        try:
            yield launched
        finally:
            await launched.close()


async def _page(browser: Browser) -> Page:
    page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    return page


def _shot_path(tmp_path: Path, name: str) -> Path:
    if os.environ.get("RH_UI_SCREENSHOTS"):
        return ROOT / "docs" / "images" / f"ui-{name}.png"
    return tmp_path / f"ui-{name}.png"


def _rgb(colour: str) -> str:
    value = colour.lstrip("#")
    r, g, b = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({r}, {g}, {b})"


async def _until(page: Page, expression: str, seconds: float = 15.0) -> None:
    """Wait until ``expression`` is true in the page (polled: the pages' policy forbids the
    string evaluation ``wait_for_function`` uses)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await page.evaluate(expression):
        assert loop.time() < deadline, f"never true: {expression}"
        await asyncio.sleep(0.05)


async def _not_pwned(page: Page) -> None:
    assert await page.evaluate("window.__pwned === undefined")
    assert await page.title() != "pwned"
    assert page.errors == []  # type: ignore[attr-defined]


async def test_runs_list_a_finished_run_and_its_timeline(
    browser: Browser, state_store: Path, tmp_path: Path
) -> None:
    await stored_run(state_store, "nightly-digest", members=5)
    running_run(state_store, "busy-run")
    async with Viewer(store=state_store, port=0) as viewer:
        page = await _page(browser)
        await page.goto(viewer.url)
        rows = page.locator("#runs tbody tr")
        assert await rows.count() == 2
        assert await rows.nth(0).get_attribute("data-run-id") == "busy-run"  # newest first
        done = page.locator('tr[data-run-id="nightly-digest"]')
        assert "5 completed · 1 failed" in await done.locator("td.counts").inner_text()
        # The filter hides what does not match, as you type.
        await page.fill("#filter", "nightly")
        assert await page.locator('tr[data-run-id="busy-run"]').is_hidden()
        await page.fill("#filter", "")
        await page.screenshot(path=str(_shot_path(tmp_path, "runs")))

        await done.locator("a").click()
        await page.wait_for_url("**/runs/nightly-digest")
        assert await page.inner_text("#run-status") == "completed"
        group = page.locator('li.group[data-address="Orchestrator::docs"]')
        counts = await group.locator("summary .counts").inner_text()
        assert counts == "5 of at least 5 done · 4 ok · 1 failed"
        assert "run p50" in (await group.locator("p.metrics").text_content() or "")
        # Expand the group: its timeline has one bar per member, coloured by outcome.
        await group.locator("summary").first.click()
        frame = page.frame_locator('li.group[data-address="Orchestrator::docs"] iframe')
        bars = frame.locator("g.member rect.run")
        await bars.first.wait_for()
        assert await bars.count() == 5
        fills = [await bars.nth(i).get_attribute("fill") for i in range(5)]
        expected = [COLOURS["failed" if i == FAILING else "completed"] for i in range(5)]
        assert fills == expected
        # What the browser paints is that colour too.
        painted = await bars.nth(FAILING).evaluate("e => getComputedStyle(e).fill")
        assert painted == _rgb(COLOURS["failed"])
        # An error holding <script> is text, and nothing ran.
        member = page.locator(f'li[data-address="Orchestrator::docs[{FAILING}]"]')
        assert EVIL in await member.locator("summary .error").first.inner_text()
        await member.locator("summary").first.click()
        error = page.locator(f'li[data-address="Orchestrator::docs[{FAILING}]::work"] .error')
        assert await error.inner_text() == f"RuntimeError: {EVIL}"
        await _not_pwned(page)
        await page.screenshot(path=str(_shot_path(tmp_path, "run")))

        # Zoom: a wider chart, the same bars.
        chart = frame.locator("div.chart")
        before = (await chart.bounding_box() or {"width": 0})["width"]
        await frame.locator("#zoom-in").click()
        await frame.locator("strong.zoom-level", has_text="2×").wait_for()
        after = (await frame.locator("div.chart").bounding_box() or {"width": 0})["width"]
        assert after > before + 400
        assert await frame.locator("g.member rect.run").count() == 5
        await _not_pwned(page)


async def _value(page: Page, selector: str) -> int:
    return int(await page.eval_on_selector(selector, "e => e.value"))


async def test_a_live_run_advances_without_reload(browser: Browser, tmp_path: Path) -> None:
    state = ExecutionState(run_id="live-digest")
    async with serve(state, port=0, poll_interval=0.1) as viewer:
        assert viewer.url.startswith("http://127.0.0.1:")
        page = await _page(browser)
        run = asyncio.create_task(run_workflow(state, members=30, delay=0.15, max_workers=2))
        try:
            await page.goto(viewer.run_url(state))
            await page.evaluate("window.__loaded_once = true")
            assert await page.inner_text("#run-status") == "running"
            progress = 'li.group[data-address="Orchestrator::docs"] summary progress'
            await page.wait_for_selector(progress)
            seen = [await _value(page, progress)]
            while len(set(seen)) < 3 and not run.done():
                await asyncio.sleep(0.15)
                seen.append(await _value(page, progress))
            assert len(set(seen)) >= 3 and seen == sorted(seen), seen  # it moved, forward
            assert await page.evaluate("window.__loaded_once === true")  # no reload
            group = page.locator('li.group[data-address="Orchestrator::docs"]')
            await group.locator("summary").first.click()
            live_frame = page.frame_locator(
                'li.group[data-address="Orchestrator::docs"] iframe:not(.loading)'
            )
            await live_frame.locator("g.member").first.wait_for()
            await page.screenshot(path=str(_shot_path(tmp_path, "live")))
            await run
        finally:
            if not run.done():
                run.cancel()
        viewer.finish(state)
        await _until(page, "document.getElementById('run-status').textContent === 'completed'")
        assert await _value(page, progress) == 30
        assert await page.evaluate("window.__loaded_once === true")
        member = page.locator(f'li[data-address="Orchestrator::docs[{FAILING}]"]')
        error = member.locator("summary .error").first
        assert EVIL in await error.inner_text()  # arrived by the event stream, shown as text
        await _not_pwned(page)
        frame = page.frame_locator(
            'li.group[data-address="Orchestrator::docs"] iframe:not(.loading)'
        )
        await frame.locator("g.member.status-failed").wait_for()
        # The open timeline reloads in a hidden frame as the run goes on: wait for the frame
        # drawn after the last member (a frame drawn earlier may still be the one shown).
        bars = frame.locator("g.member rect.run")
        for _ in range(100):
            if await bars.count() == 30:
                break
            await asyncio.sleep(0.1)
        assert await bars.count() == 30
        wait = frame.locator("g.member rect.wait")
        assert await wait.count() > 0  # a live timeline shows queue waits
        await page.screenshot(path=str(tmp_path / "ui-live-done.png"))


async def test_a_store_backed_run_refreshes_as_checkpoints_land(
    browser: Browser, state_store: Path
) -> None:
    running_run(state_store, "busy-run", finished=2)
    async with Viewer(store=state_store, port=0, poll_interval=0.1) as viewer:
        page = await _page(browser)
        await page.goto(viewer.run_url("busy-run"))
        await page.evaluate("window.__loaded_once = true")
        counts = 'li.group[data-address="Orchestrator::docs"] summary .counts'
        assert (await page.inner_text(counts)).startswith("2 of at least 2 done")
        await asyncio.to_thread(add_members, state_store, "busy-run", range(2, 6))
        await _until(
            page, f"document.querySelector('{counts}').textContent.startsWith('6 of at least 6')"
        )
        await asyncio.to_thread(add_members, state_store, "busy-run", range(6, 7), "completed")
        await _until(page, "document.getElementById('run-status').textContent === 'completed'")
        assert await page.evaluate("window.__loaded_once === true")
        assert await page.locator('li.member[data-address^="Orchestrator::docs["]').count() == 7


async def test_bidi_and_c1_controls_that_stream_in_are_shown_as_on_the_pages(
    browser: Browser, state_store: Path
) -> None:
    """The script set the strings of the event stream as they came, where the server's pages
    show control characters as "?" and C1 and bidirectional controls as U+FFFD: an error
    holding U+202E, streamed in, showed the rest of its line reversed. A member that
    checkpoints after the page loaded (its address, error and tooltip) is shown as the page
    would show it."""
    unseen = "\x85\u202e\u2066"
    running_run(state_store, "busy-run", finished=1)
    record = replace(
        member_record("busy-run", 1, status="failed"),
        address=f"Orchestrator::docs[1]::wo{unseen}rk",
        error=f"evil{unseen}gnp\x07.exe",
    )
    async with Viewer(store=state_store, port=0, poll_interval=0.1) as viewer:
        page = await _page(browser)
        await page.goto(viewer.run_url("busy-run"))
        await asyncio.to_thread(save_records, state_store, "busy-run", [record])
        await _until(page, "document.querySelectorAll('li.member').length === 2")
        await _until(page, "document.getElementById('tree').textContent.includes('evil')")
        tree = await page.evaluate("document.getElementById('tree').textContent")
        titles = await page.evaluate(
            "Array.from(document.querySelectorAll('#tree [title]')).map(e => e.title).join()"
        )
        addresses = await page.evaluate(
            "Array.from(document.querySelectorAll('#tree li[data-address]'))"
            ".map(e => e.dataset.address)"
        )
    assert "evil\ufffd\ufffd\ufffdgnp?.exe" in tree and "wo\ufffd\ufffd\ufffdrk" in tree
    assert "evil\ufffd\ufffd\ufffdgnp?.exe" in titles
    assert "Orchestrator::docs[1]::wo\ufffd\ufffd\ufffdrk" in addresses
    assert not set(tree + titles + "".join(addresses)) & set(unseen + "\x07")
    await _not_pwned(page)
