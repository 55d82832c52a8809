"""Every example in examples/ runs and produces what it promises."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SRC = Path(__file__).resolve().parent.parent / "src"


def load(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


async def test_quickstart() -> None:
    main = load("quickstart.py")["main"]
    out = await main(["One. Two.", "Three. Four."])
    assert out == ["One", "Three"]


async def test_results_four_ways() -> None:
    seen = await load("results_four_ways.py")["main"]()
    assert seen["list"] == ["a done", "b done", "c done"]
    assert seen["dict"] == {0: "a done", "b": "b done", "c": "c done"}
    assert seen["stream"] == ["s1 done", "s2 done", "s0 done"]
    assert seen["as_completed"] == [(1, "meta[1]"), (0, "meta[0]")]
    assert seen["parallel_execute"] == {"left": "l done", "right": "r done"}


async def test_lazy_map() -> None:
    main = load("lazy_map.py")["main"]
    assert await main(1000) == sum(n * n for n in range(1000))


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_runs_as_a_script(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


async def test_watch_a_run() -> None:
    import io

    out = io.StringIO()
    alerts, metrics = await load("watch_a_run.py")["main"](out)
    # Pages 3 and 10 fail (page % 7 == 3); the alert subscriber saw exactly those.
    assert sorted(alerts) == [
        "pages[10]: ConnectionError: page 10 did not answer",
        "pages[3]: ConnectionError: page 3 did not answer",
    ]
    assert (metrics.total, metrics.succeeded, metrics.failed) == (12, 10, 2)
    assert 1 <= metrics.concurrency_high_water <= 4
    text = out.getvalue()
    assert "📦 pages: 12 finished · 10 ok · 2 failed" in text
    assert "✘ pages#3 FAILED: ConnectionError: page 3 did not answer" in text
