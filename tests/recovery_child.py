"""A workload run in a child process by the crash tests (not a test module).

``python recovery_child.py DB LOG OUT RUN_ID fresh|resume every|batched SEED``

An orchestrator agent runs a 200-member group; each member sleeps a random time, appends
its index to LOG (one ``write`` on an O_APPEND file, so lines never interleave) and returns
its square. At the end the results are written to OUT as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery import CheckpointPolicy, Recovery

MEMBERS = 200


class Item(BaseModel):
    i: int


class Square(BaseModel):
    i: int
    square: int


class Total(BaseModel):
    total: int
    squares: list[int]


def build(log_path: str, seed: int) -> ExecutionEvent[Any]:
    rng = random.Random(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def work(item: Item, context: str, state: ExecutionState) -> Square:
        await asyncio.sleep(rng.uniform(0.001, 0.02))
        os.write(fd, f"{item.i}\n".encode())
        return Square(i=item.i, square=item.i * item.i)

    square = ExecutionEvent(
        actor=Tool(name="square", input_model=Item, output_model=Square, handler=work)
    )

    async def orchestrate(item: Item, context: str, state: ExecutionState) -> Total:
        async with state.parallel(max_workers=8, name="members") as p:
            for i in range(item.i):
                p.add(square(Item(i=i), "", state))
            results = await p.gather()
        squares = [r.unwrap().square for r in results]
        return Total(total=sum(squares), squares=squares)

    return ExecutionEvent(
        actor=Agent(name="orchestrator", input_model=Item, output_model=Total, handler=orchestrate)
    )


async def main(argv: list[str]) -> dict[str, Any]:
    db, log, _out, run_id, how, mode, seed = argv
    policy = CheckpointPolicy.every_event() if mode == "every" else CheckpointPolicy(count=16)
    if how == "fresh":
        state = ExecutionState(run_id=run_id, recovery=Recovery(db, checkpoint=policy))
    else:
        state = ExecutionState.resume(run_id, backend=db, checkpoint=policy)
    orchestrator = build(log, int(seed))
    async with state:
        result = await orchestrator(Item(i=MEMBERS), "", state)
    assert state.recovery is not None
    total = result.unwrap()
    return {"total": total.model_dump(), "recovered": state.recovery.recovered}


if __name__ == "__main__":
    summary = asyncio.run(main(sys.argv[1:]))
    Path(sys.argv[3]).write_text(json.dumps(summary), encoding="utf-8")
