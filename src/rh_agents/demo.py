"""The offline demo: a small research digest, run with the printer.

An ``Orchestrator`` agent fans out over a handful of bundled notes; each member asks a
simulated LLM for a summary and a tool for keywords (in a nested group), then the orchestrator
joins the results. No key, no network: latency and transient failures are simulated with a
seeded random generator, so every run shows the same tree.
"""

from __future__ import annotations

import asyncio
import random
from typing import IO, Any

from pydantic import BaseModel

from rh_agents.bus_handlers import EventPrinter
from rh_agents.core.actors import LLM, Agent, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent, ExecutionResult
from rh_agents.core.execution import ExecutionState

__all__ = ["DOCUMENTS", "Note", "Summary", "Topic", "build_actors", "run_demo"]

DOCUMENTS = [
    "Worker pools bound memory: a group of ten thousand members needs only max_workers tasks.",
    "Rate limits protect providers; a 429 with Retry-After says exactly when to come back.",
    "Circuit breakers stop hammering a dependency that is down and probe it after a cool-down.",
    "Checkpoints written as members finish let a crashed run resume without redoing work.",
    "Addresses derived from names and indices make two runs of the same code comparable.",
    "Fail-slow keeps every partial result; fail-fast cancels the rest at the first error.",
]


class Note(BaseModel):
    text: str


class Summary(BaseModel):
    text: str
    keywords: list[str]


class Topic(BaseModel):
    notes: list[str]


def build_actors(*, seed: int = 7, latency: float = 0.05) -> dict[str, object]:
    rng = random.Random(seed)

    async def summarize(input: Note, context: str, state: ExecutionState) -> str:
        await asyncio.sleep(latency * (0.5 + rng.random()))
        return input.text.split(":")[0].split(";")[0]

    async def keywords(input: Note, context: str, state: ExecutionState) -> list[str]:
        await asyncio.sleep(latency * 0.2)
        words = [w.strip(".,:;").lower() for w in input.text.split()]
        return sorted({w for w in words if len(w) > 7})[:3]

    llm = LLM(
        name="summarizer", description="Simulated LLM summary", input_model=Note, handler=summarize
    )
    tool = Tool(
        name="keywords", description="Long words as keywords", input_model=Note, handler=keywords
    )

    async def study(input: Note, context: str, state: ExecutionState) -> Summary:
        async with state.parallel(max_workers=2, name="steps") as p:
            p.add("summary", ExecutionEvent(actor=llm)(input, context, state))
            p.add("keywords", ExecutionEvent(actor=tool)(input, context, state))
            steps = await p.gather_dict()
        return Summary(text=steps["summary"].unwrap(), keywords=steps["keywords"].unwrap())

    reader = Agent(
        name="reader",
        description="Studies one note",
        input_model=Note,
        handler=study,
        output_model=Summary,
    )

    async def orchestrate(input: Topic, context: str, state: ExecutionState) -> str:
        async with state.parallel(max_workers=3, name="notes") as p:
            for text in input.notes:
                p.add(ExecutionEvent(actor=reader)(Note(text=text), context, state))
            results = await p.gather()
        lines = [f"- {r.result.text}" for r in results if r.ok and r.result is not None]
        return "\n".join(lines)

    orchestrator = Agent(
        name="Orchestrator", description="Builds the digest", input_model=Topic, handler=orchestrate
    )
    return {"orchestrator": orchestrator}


async def run_demo(*, file: IO[str] | None = None, documents: int = 6, seed: int = 7) -> str:
    """Run the digest with an ``EventPrinter`` and return the digest text."""
    bus = EventBus()
    bus.subscribe(EventPrinter(file=file))
    async with ExecutionState(event_bus=bus) as state:
        actors = build_actors(seed=seed)
        notes = (DOCUMENTS * (documents // len(DOCUMENTS) + 1))[:documents]
        result: ExecutionResult[Any] = await ExecutionEvent(actor=actors["orchestrator"])(
            Topic(notes=notes), "", state
        )
    return str(result.unwrap())
