"""A program that the Ctrl-C tests stop with SIGINT (run as a real process).

    python interrupt_child.py STORE MODE [PRINTER]

Ten members, three at a time, run under ``rh_agents.run`` with ``Recovery(resume="auto")``:
members 0 to 3 finish at once. With MODE ``wait`` the others wait forever, and ``ready`` is
printed once three of them are waiting (the parent then sends SIGINT); with ``stuck`` they
also ignore being cancelled (``cleaning up`` is printed, and the cleanup never ends: only a
second SIGINT gets out); with ``go`` nothing waits (the resume). PRINTER: ``parallel``
(default, ``ParallelEventPrinter`` in progress mode) or ``tree`` (``EventPrinter``).
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

import rh_agents
from rh_agents import (
    EventBus,
    EventPrinter,
    ExecutionEvent,
    ExecutionState,
    ParallelEventPrinter,
    Tool,
)
from rh_agents.recovery import Recovery

STORE, MODE = sys.argv[1], sys.argv[2]
PRINTER = sys.argv[3] if len(sys.argv) > 3 else "parallel"


class Item(BaseModel):
    i: int


class Done(BaseModel):
    i: int


waiting = 0


async def work(input: Item, context: str, state: ExecutionState) -> Done:
    global waiting
    if MODE != "go" and input.i >= 4:
        waiting += 1
        if waiting == 3:
            print("ready", flush=True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if MODE != "stuck":
                raise
            print("cleaning up", flush=True)
            await asyncio.Event().wait()  # a cleanup that never ends
    return Done(i=input.i)


event = ExecutionEvent(actor=Tool(name="work", input_model=Item, output_model=Done, handler=work))


async def main() -> None:
    bus = EventBus()
    printer = (
        EventPrinter(file=sys.stdout)
        if PRINTER == "tree"
        else ParallelEventPrinter("progress", file=sys.stdout)
    )
    bus.subscribe(printer)
    recovery = Recovery(STORE, resume="auto")
    try:
        async with (
            ExecutionState(run_id="digest-1", event_bus=bus, recovery=recovery) as state,
            state.parallel(max_workers=3, name="docs") as p,
        ):
            for i in range(10):
                p.add(event(Item(i=i), "", state))
    finally:
        if isinstance(printer, ParallelEventPrinter):
            printer.close()
    print("resumed" if recovery.resumed else "created", flush=True)


if __name__ == "__main__":
    rh_agents.run(main())
