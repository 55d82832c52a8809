"""Resource figures per group and per run, checked against a known load: a member that
allocates 200 MiB, a member that opens 100 files, a member that holds the event loop."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import io
import os
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from rh_agents import EventBus, ExecutionState, ParallelEventPrinter, Watchdog
from rh_agents.core.parallel.metrics import Distribution, ResourceUsage
from rh_agents.core.records import BusEvent, GroupCompleted
from rh_agents.core.resources import read_sample
from rh_agents.observability.timeline import TimelineRecorder

MiB = 2**20
MB = 10**6
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="resident memory and open files from /proc"
)


def give_back_free_memory() -> None:
    """Return the memory earlier tests freed (but the allocator kept) to the system, so that
    a new allocation shows as new resident memory rather than reusing it unseen."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


async def allocates(size: int) -> int:
    # A MiB at a time (a bytearray is zero-filled: every page is touched, so resident),
    # letting the loop run between them: the member holds memory, not the loop.
    blocks = []
    for n in range(size // MiB):
        blocks.append(bytearray(MiB))
        if n % 8 == 7:
            await asyncio.sleep(0)
    await asyncio.sleep(0.2)  # held across several samples
    return sum(len(block) for block in blocks)


async def opens(count: int) -> int:
    files = [open(os.devnull, "rb") for _ in range(count)]  # noqa: SIM115, ASYNC230
    try:
        await asyncio.sleep(0.2)
    finally:
        for handle in files:
            handle.close()
    return count


@linux_only
async def test_a_member_that_allocates_200_mib_shows_in_the_peak() -> None:
    bus = EventBus()
    completed: list[GroupCompleted] = []

    def keep(record: BusEvent) -> None:
        if isinstance(record, GroupCompleted):
            completed.append(record)

    bus.subscribe(keep, kinds=[GroupCompleted])
    state = ExecutionState(event_bus=bus)
    give_back_free_memory()
    async with state.parallel(name="memory") as p:
        p.add(allocates(200 * MiB))  # 200 MiB: 210 MB
    usage = p.resource_usage()
    assert usage is not None and usage.rss_start is not None and usage.rss_peak is not None
    assert usage.rss_peak - usage.rss_start >= 200 * MB
    assert usage.rss_growth == usage.rss_peak - usage.rss_start
    assert usage.samples >= 2
    # The same figures in the metrics and on the group's record.
    assert p.metrics().resources == usage
    await bus.drain()
    assert completed[0].resources == usage
    assert completed[0].metrics.resources == usage


@linux_only
async def test_a_member_that_opens_100_files_shows_in_the_descriptor_peak() -> None:
    state = ExecutionState()
    async with state.parallel(name="files") as p:
        p.add(opens(100))
    usage = p.resource_usage()
    assert usage is not None and usage.fds_start is not None and usage.fds_peak is not None
    assert usage.fds_peak - usage.fds_start >= 100
    assert usage.fds_growth is not None and usage.fds_growth >= 100
    # After the group, the files are closed again.
    now = read_sample()
    assert now.fds is not None and now.fds < usage.fds_peak


async def test_a_member_that_holds_the_loop_shows_in_the_lag() -> None:
    state = ExecutionState(watchdog=Watchdog(block_threshold=5))  # measured, not warned about

    async def holds() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.25)  # noqa: ASYNC251

    async with state.parallel(name="lag") as p:
        p.add(holds())
        p.add(asyncio.sleep(0.4))
    usage = p.resource_usage()
    assert usage is not None
    lag = usage.loop_lag
    assert lag.count >= 3  # a probe every 25 ms, give or take
    assert 0.2 <= lag.max <= 0.35
    assert lag.p95 <= lag.max
    assert lag.p50 < 0.05  # most probes found the loop free


@linux_only
async def test_the_run_figures_cover_its_outermost_groups() -> None:
    state = ExecutionState()
    assert state.resource_usage() is None  # no group yet

    async def nested() -> None:
        async with state.parallel(name="inner") as inner:
            inner.add(allocates(64 * MiB))

    async with state.parallel(name="first") as first:
        first.add(opens(50))
    async with state.parallel(name="second") as second:
        second.add(nested())
    run = state.resource_usage()
    one, two = first.resource_usage(), second.resource_usage()
    assert run is not None and one is not None and two is not None
    assert run.rss_start == one.rss_start and run.fds_start == one.fds_start
    assert run.rss_peak == max(one.rss_peak or 0, two.rss_peak or 0)
    assert run.fds_peak == max(one.fds_peak or 0, two.fds_peak or 0)
    assert run.loop_lag.count == one.loop_lag.count + two.loop_lag.count
    assert run.samples == one.samples + two.samples


async def test_no_watchdog_no_figures() -> None:
    state = ExecutionState(watchdog=None)
    async with state.parallel() as p:
        p.add(asyncio.sleep(0))
    assert p.resource_usage() is None
    assert p.metrics().resources is None
    assert state.resource_usage() is None


def test_usages_merge_and_describe_themselves() -> None:
    def usage(rss: tuple[int, int], fds: tuple[int, int], lags: list[float]) -> ResourceUsage:
        return ResourceUsage(
            rss_start=rss[0],
            rss_peak=rss[1],
            fds_start=fds[0],
            fds_peak=fds[1],
            loop_lag=Distribution.of(lags),
            samples=len(lags),
            lag_sample=tuple(lags),
        )

    a = usage((100 * MiB, 150 * MiB), (10, 12), [0.001, 0.002])
    b = usage((120 * MiB, 400 * MiB), (11, 111), [0.003, 0.250])
    merged = ResourceUsage.merge([a, None, b])
    assert merged is not None
    assert (merged.rss_start, merged.rss_peak) == (100 * MiB, 400 * MiB)
    assert (merged.fds_start, merged.fds_peak) == (10, 111)
    assert merged.loop_lag.count == 4 and merged.loop_lag.max == 0.250
    assert merged.describe() == (
        "peak memory 400 MiB (+300 MiB) · open files 111 at most (+101) · "
        "event loop lag p95 250 ms, max 250 ms"
    )
    assert merged.as_dict()["rss_growth"] == 300 * MiB
    assert ResourceUsage.merge([None]) is None


@linux_only
async def test_the_collapsed_summary_and_the_timeline_page_show_them() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("collapsed", console=Console(file=out, width=200))
    recorder = TimelineRecorder()
    bus = EventBus()
    bus.subscribe(printer)
    bus.subscribe(recorder)
    state = ExecutionState(event_bus=bus)
    give_back_free_memory()
    async with state.parallel(name="load") as p:
        p.add(allocates(200 * MiB))
        p.add(opens(100))
    await bus.drain()
    printer.close()
    lines = out.getvalue().splitlines()
    [line] = [line for line in lines if "resources:" in line]
    assert line.startswith("    resources: peak memory ")
    growth = int(line.split("(+", 1)[1].split(" MiB", 1)[0])
    assert growth * MiB >= 200 * MB - MiB  # (shown to the MiB)
    assert "open files" in line and "event loop lag p95" in line
    assert lines[-1].endswith('get_group("load")')  # the details line stays last

    page = recorder.timeline().to_html()
    assert "<th>peak memory</th><th>open files</th>" in page
    assert "While it ran: peak memory " in page


def test_a_sample_reads_this_process(tmp_path: Path) -> None:
    # Other threads of the test process (a handler thread left to end, a subscriber's) may
    # open or close a file meanwhile: a reading is kept only if the count is the same
    # before and after.
    for _ in range(20):
        before = read_sample()
        with open(tmp_path / "x", "w"), open(tmp_path / "y", "w"):
            during = read_sample()
        after = read_sample()
        if before.fds == after.fds:
            break
    if before.fds is not None and during.fds is not None:
        assert during.fds == before.fds + 2
    if sys.platform.startswith("linux"):
        assert before.rss is not None and before.rss_peak is not None
        assert 0 < before.rss <= before.rss_peak
