"""Adaptive concurrency against fixed worker limits, on a stub server with a capacity.

The stub OpenAI-compatible server answers at most ``CAPACITY`` requests at once (each takes
``LATENCY`` seconds) and answers 429 with a ``Retry-After`` above that. Every configuration
sends the same ``REQUESTS`` chat completions through the real ``openai`` client with the same
retry policy; goodput is successful completions per second of wall time. Configurations run
side by side in one process, in alternating order, ``ROUNDS`` times; the table shows medians.
(A fixed limit below C cannot beat C here: each worker does at most 1/LATENCY calls a second.)

    .venv/bin/python -m benchmarks.bench_adaptive
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.integrations.openai_llm import OpenAIChat, openai_llm
from rh_agents.resilience import AdaptiveLimit, RetryPolicy
from rh_agents.testing import StubLLMServer

CAPACITY = 8
LATENCY = 0.08
REQUESTS = 400
ROUNDS = 2
RETRY = RetryPolicy(max_attempts=50, initial_delay=0.02, multiplier=1.5, max_delay=0.5, jitter=0.02)


@dataclass
class Run:
    label: str
    wall: float
    ok: int
    rejected: int
    peak: int

    @property
    def goodput(self) -> float:
        return self.ok / self.wall


async def one_run(server: StubLLMServer, label: str, workers: int | AdaptiveLimit) -> Run:
    llm = openai_llm("bench", model="stub", base_url=server.base_url, api_key="bench", timeout=10)
    event = ExecutionEvent(actor=llm, retry=RETRY)
    state = ExecutionState()
    # Warm the connection pool so that every configuration starts alike.
    await state.parallel_execute(
        [event({"prompt": "warm"}, "", state) for _ in range(CAPACITY)], max_workers=CAPACITY
    )
    server.reset_stats()
    started = time.perf_counter()
    async with state.parallel(max_workers=workers, name="bench") as p:
        for i in range(REQUESTS):
            p.add(event({"prompt": f"request {i}"}, "", state))
        results = await p.gather()
    wall = time.perf_counter() - started
    handler = llm.handler
    assert isinstance(handler, OpenAIChat)
    await handler.aclose()
    stats = server.stats()
    peak = p.statistics().concurrency_high_water
    return Run(label, wall, sum(r.ok for r in results), stats.count(429), peak)


async def run_all() -> list[list[Run]]:
    configs: list[tuple[str, int | None]] = [
        ("fixed C", CAPACITY),
        ("fixed 2C", 2 * CAPACITY),
        ("fixed 4C", 4 * CAPACITY),
        ("adaptive(2, 64)", None),
    ]
    rounds: list[list[Run]] = []
    with StubLLMServer(latency=LATENCY, capacity=CAPACITY, retry_after=0.05) as server:
        for round_no in range(ROUNDS):
            order = configs if round_no % 2 == 0 else list(reversed(configs))
            runs = []
            for label, workers in order:
                limit = workers if workers is not None else AdaptiveLimit(2, 64)
                runs.append(await one_run(server, label, limit))
            rounds.append(sorted(runs, key=lambda r: [c[0] for c in configs].index(r.label)))
    return rounds


def main() -> None:
    rounds = asyncio.run(run_all())
    labels = [r.label for r in rounds[0]]
    rows = []
    for i, label in enumerate(labels):
        runs = [rnd[i] for rnd in rounds]
        rows.append(
            (
                label,
                statistics.median(r.goodput for r in runs),
                statistics.median(r.rejected for r in runs),
                statistics.median(r.wall for r in runs),
                max(r.peak for r in runs),
                min(r.ok for r in runs),
            )
        )
    best_fixed = max(row[1] for row in rows if row[0].startswith("fixed"))
    four_c = next(row for row in rows if row[0] == "fixed 4C")
    adaptive = next(row for row in rows if row[0].startswith("adaptive"))
    print(
        f"capacity C={CAPACITY}, latency {LATENCY * 1000:.0f} ms, {REQUESTS} requests, "
        f"median of {ROUNDS} rounds"
    )
    print(f"{'config':<16} {'goodput/s':>10} {'vs best':>8} {'429s':>6} {'wall s':>7} {'peak':>5}")
    for label, goodput, rejected, wall, peak, _ in rows:
        print(
            f"{label:<16} {goodput:>10.1f} {goodput / best_fixed:>7.0%} {rejected:>6.0f} "
            f"{wall:>7.2f} {peak:>5}"
        )
    ratio = adaptive[1] / best_fixed
    fewer = four_c[2] / adaptive[2] if adaptive[2] else float("inf")
    print(
        f"adaptive goodput = {ratio:.0%} of the best fixed limit (target >= 90%); "
        f"429s: {fewer:.1f}x fewer than fixed 4C (target >= 2x)"
    )
    if any(row[5] < REQUESTS for row in rows):
        print("warning: some requests did not succeed within the retry policy")


if __name__ == "__main__":
    main()
