"""Quickstart: summarise documents concurrently, at most five at a time.

Run with ``.venv/bin/python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from rh_agents import ExecutionEvent, ExecutionState, Tool


class Doc(BaseModel):
    text: str


async def summarize_doc(input: Doc, context: str, state: ExecutionState) -> str:
    await asyncio.sleep(0.01)  # stands for an LLM call
    return input.text.split(".")[0]


summarize = ExecutionEvent(actor=Tool(name="summarize", input_model=Doc, handler=summarize_doc))


async def main(docs: list[str]) -> list[str]:
    state = ExecutionState()
    async with state.parallel(max_workers=5, name="docs") as p:
        for text in docs:
            p.add(summarize(Doc(text=text), "", state))
        results = await p.gather()  # submission order, never raises (FAIL_SLOW)
    return [r.result for r in results if r.ok]


if __name__ == "__main__":
    texts = [f"Document {i} is about topic {i}. More text follows." for i in range(12)]
    for line in asyncio.run(main(texts)):
        print(line)
