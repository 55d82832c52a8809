"""A process that tries to become a run's writer, for the lease tests (not a test module).

``python lease_child.py STORE RUN_ID``

Protocol on stdin/stdout, one line each: the child prints ``ready`` once imported, waits
for ``go``, then resumes RUN_ID in STORE (which takes the run's lease). It prints
``won PID`` and waits for ``finish`` (then closes the state and prints ``closed``), or prints
``refused SECONDS MESSAGE`` (seconds from ``go`` to the refusal, the message as JSON) and
exits with status 3. The parent may also kill it while it holds the lease.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from rh_agents.core.execution import ExecutionState
from rh_agents.errors import RunLockedError


def main(store: str, run_id: str) -> int:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    started = time.monotonic()
    try:
        state = ExecutionState.resume(run_id, backend=store)
    except RunLockedError as exc:
        print(f"refused {time.monotonic() - started:.3f} {json.dumps(str(exc))}", flush=True)
        return 3
    print(f"won {os.getpid()}", flush=True)
    if sys.stdin.readline().strip() != "finish":
        return 1
    asyncio.run(state.close())
    print("closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
