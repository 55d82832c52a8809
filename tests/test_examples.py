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
