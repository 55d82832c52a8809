"""What a user's type checker says about the documented API (``mypy --strict`` on a program
written as the README and docs/ write them): no error, and the types it infers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import rh_agents

api = pytest.importorskip("mypy.api")

PROGRAM = """
import contextlib
from typing import Any, assert_type

from pydantic import BaseModel

from rh_agents import (
    LLM,
    Agent,
    ExecutionEvent,
    ExecutionResult,
    ExecutionState,
    ParallelExecutionManager,
    Tool,
    agent,
    llm,
    tool,
)


class Doc(BaseModel):
    text: str


async def summarize_doc(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text


async def square(n: int) -> int:
    return n * n


# An event of an actor needs no annotation (its output type is not known: Any).
summarize = ExecutionEvent(actor=Tool(name="summarize", input_model=Doc, handler=summarize_doc))
assert_type(summarize, ExecutionEvent[Any])
typed: ExecutionEvent[str] = ExecutionEvent(actor=summarize.actor)


# The decorators give the actor, bare or with options.
@tool
async def shout(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text.upper()


@agent(name="boss", description="delegates")
async def boss(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text


@llm(retry=None)
def writer(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text


assert_type(shout, Tool)
assert_type(boss, Agent)
assert_type(writer, LLM)


async def main() -> None:
    state = ExecutionState()
    assert_type(await typed(Doc(text="a"), "", state), ExecutionResult[str])
    assert_type((await typed(Doc(text="a"), "", state)).unwrap(), str)
    async with state.parallel(max_workers=5, name="docs") as p:
        p.add(summarize(Doc(text="a"), "", state))
        p.add(lambda: square(2), name="page")
        p.add("doc3", square(3))
    assert_type(await p.gather(), list[ExecutionResult[Any]])
    # The documented way to stop a parallel_map early.
    results = state.parallel_map(square, range(10), max_workers=4)
    async with contextlib.aclosing(results):
        async for result in results:
            assert_type(result, ExecutionResult[Any])
    # Result streams close early with contextlib.aclosing too.
    async with state.parallel(max_workers=2) as q:
        async with contextlib.aclosing(q.as_completed([square(4), square(5)])) as done:
            async for result in done:
                assert_type(result, ExecutionResult[Any])
        async with contextlib.aclosing(q.gather_stream([square(6)])) as streamed:
            async for result in streamed:
                assert_type(result, ExecutionResult[Any])
        async for result in q.stream():
            assert_type(result, ExecutionResult[Any])
    manager = ParallelExecutionManager(state, max_workers=3)
    assert_type(manager, ParallelExecutionManager[Any])
"""


def test_documented_api_type_checks_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(PROGRAM))
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    src = Path(rh_agents.__file__).resolve().parent.parent
    monkeypatch.setenv("MYPYPATH", str(src))
    out, err, status = api.run(
        [
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--python-version",
            "3.11",
            str(program),
        ]
    )
    assert status == 0, out + err
