"""Model-based property test: recovery where the features meet.

Random programs (``recovery_properties_support``) combine top-level event calls and groups,
nested up to three levels (agents and callables that open groups of their own), with worker
limits and a global limit, group and member retries, member timeouts, every error strategy with
thresholds, quorums, group timeouts and exception groups, named members, ``after=``
dependencies and ``map()``, over deterministic tools: cacheable or not, failing on given
attempts or always, returning text or pydantic models (one without an ``output_model``, whose
results cannot be stored). Each runs under ``Recovery`` (SQLite or JSON, every event or batched
checkpoints, created plainly or with ``resume="auto"``), on a virtual-time loop that waits for
the writer thread for real. It runs clean, then again interrupted at a random point (its task
cancelled, a real SIGINT under ``rh_agents.run``, a handler raising a ``BaseException``, the body
raising between steps, or the process "killed": nothing closed), then resumed
(``ExecutionState.resume``, ``Recovery(resume=True)`` or ``Recovery(resume="auto")``) to the end.

Invariants (``check_scenario``):

- no internal error, no error reported by the loop, no task left behind, no warning at all
  ("never awaited" included) in any of the three runs;
- the store says what happened: failed (cancelled, crashed, raised), interrupted (SIGINT) or
  still running (killed) after the first run, completed after the resume; it reads back
  (``list_runs``, ``load``, ``rh-agents runs show``);
- every completed checkpoint of the interrupted run equals the clean run's; every call that
  finished is committed, unless the process was killed (then at most ``batch - 1`` are lost);
- every committed completed call is replayed on resume (``source="replay"``, one
  ``EventReplayed`` each, ``recovered`` counts them) and its handler never runs again;
- with a cache: a cacheable call with one input succeeds once over the interrupted run and its
  resume (a "persistent" store shared by both), and once in the clean run;
- when no outcome depends on timing (every group ``FAIL_SLOW``, no quorum or group timeout;
  member timeouts that always or never fire): the resumed run's results (status and value of
  every member, however nested) and its store (status and result of every address) equal the
  clean run's, and every call not answered from a checkpoint (failed, unfinished, never
  started, or not storable) ran again exactly as often as in the clean run.

``make test`` runs the same 20 programs each time (``derandomize``, about 10 s); ``make soak``
runs new ones (``RH_SOAK_EXAMPLES``; failures are kept in ``.hypothesis/`` and replayed).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis.control import currently_in_test_context
from pydantic import BaseModel

from composition_support import LoopClock, VirtualLoop, run_virtual
from recovery_properties_support import (
    ALWAYS,
    Call,
    Group,
    Member,
    Program,
    Retry,
    check_scenario,
    programs,
    run_scenario,
)
from recovery_support import Item, Squarer
from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel import RetryPolicy
from rh_agents.core.results import ResultStatus
from rh_agents.recovery import ActorCache, CheckpointPolicy, Recovery, RunStatus, SQLiteBackend
from rh_agents.recovery.records import CheckpointRecord

SOAK = "RH_SOAK_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("RH_SOAK_EXAMPLES", "20"))

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not SOAK,
    database=settings.default.database if SOAK else None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    phases=[phase for phase in Phase if phase is not Phase.explain],
    print_blob=True,
    report_multiple_bugs=SOAK,
)

# Known programs, each run first by the property and again on its own (named) below.
KNOWN: dict[str, Program] = {
    # Every feature once, interrupted in the middle of the nested group.
    "nested_agent_cache_retry": Program(
        steps=(
            Group(
                members=(
                    Member(call=Call()),
                    Member(form="callable", call=Call(tool="text", i=2, fails=1), retry=Retry(2)),
                    Member(
                        form="agent",
                        child=Group(
                            members=(Member(call=Call(tool="cached")), Member(call=Call("cached")))
                        ),
                    ),
                    Member(call=Call(tool="model", i=3, fails=ALWAYS), after=(0,)),
                    Member(call=Call(tool="text", i=4), after=(3,)),
                ),
                named=True,
            ),
            Call(tool="untyped"),
        ),
        cache=True,
        at=0.5,
    ),
    # The body completes; the cancellation lands while the run closes (its last write).
    "cancelled_while_closing": Program(
        steps=(Call(tool="text", work=0.0),), global_limit=1, cache=True, at=0.0
    ),
    # Killed with batched checkpoints, a map() group and a nested callable member.
    "killed_batched_map_nested": Program(
        steps=(
            Group(mapped=(Call(i=1), Call(i=2, fails=1), Call(i=3)), retry=Retry(2)),
            Group(
                members=(
                    Member(form="nested", child=Group(members=(Member(call=Call(i=5)),)), fails=1),
                ),
                retry=Retry(2),
            ),
        ),
        backend="json",
        batch=3,
        interrupt="kill",
        by="steps",
        at=0.6,
    ),
    # Ctrl-C under rh_agents.run while a member that times out and a global limit wait.
    "sigint_timeouts_global_limit": Program(
        steps=(
            Group(
                members=(
                    Member(call=Call(tool="text", work=1.0), timeout="fires"),
                    Member(call=Call(tool="model", i=1), timeout="never"),
                    Member(form="callable", call=Call(tool="model", i=2)),
                ),
                workers=2,
            ),
        ),
        global_limit=1,
        interrupt="sigint",
        resume="auto",
        start="auto",
        at=0.7,
    ),
}


def _with_known_examples(test: object) -> object:
    for program in reversed(KNOWN.values()):
        test = example(program=program)(test)  # type: ignore[arg-type]
    return test


def _check(program: Program, folder: Path) -> None:
    scenario = run_scenario(program, folder)
    if currently_in_test_context():
        note(
            f"interrupted at {scenario.interrupt_at} ({program.by}); first run "
            f"{scenario.first.ended}, executions {dict(scenario.first.execs)}; resume "
            f"executions {dict(scenario.resume.execs)}"
        )
    check_scenario(scenario)


@pytest.mark.timeout(600 if not SOAK else 3600)
@SETTINGS
@given(program=programs())
@_with_known_examples  # type: ignore[misc]
def test_interrupted_and_resumed_programs_keep_every_invariant(
    tmp_path_factory: pytest.TempPathFactory, program: Program
) -> None:
    _check(program, tmp_path_factory.mktemp("program"))


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_program(tmp_path: Path, name: str) -> None:
    _check(KNOWN[name], tmp_path)


# --- regressions found by the property ---------------------------------------------------------


class _GatedBackend(SQLiteBackend):
    """Holds the run's final write (the one that says how it ended) until ``gate`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def save(
        self, run_id: str, records: Sequence[CheckpointRecord], status: RunStatus | None = None
    ) -> None:
        if status is not None and status is not RunStatus.RUNNING:
            self.entered.set()
            self.gate.wait(30)
        super().save(run_id, records, status)


@pytest.mark.timeout(30)
async def test_a_cancellation_while_the_run_closes_does_not_lose_its_end(tmp_path: Path) -> None:
    """The body completed; a cancellation (a first Ctrl-C, say) lands while leaving
    ``async with state:`` waits for the final write. The write is still waited for (within
    ``close_timeout``), then the cancellation goes on: the store holds the last checkpoints
    and the final status when the task ends, not "running" and a lost batch."""
    backend = _GatedBackend(tmp_path / "state.db")
    squarer = Squarer()
    policy = CheckpointPolicy.batched(count=100, seconds=None)
    state = ExecutionState(run_id="r", recovery=Recovery(backend, checkpoint=policy))

    async def run() -> None:
        async with state:
            for i in range(3):
                await squarer.event(Item(i=i), "", state)

    task = asyncio.create_task(run())
    assert await asyncio.to_thread(backend.entered.wait, 10)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.5)
    assert not done, "the run's end stopped waiting for its final write"
    backend.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.get_run("r").status is RunStatus.COMPLETED
    assert sorted(backend.load("r")) == ["square", "square#2", "square#3"]
    backend.close()


class _Job(BaseModel):
    i: int


def test_a_shared_call_outliving_its_starter_leaves_the_slots_balanced() -> None:
    """Member ``a[0]`` starts a cacheable call, which fails its first attempt and backs off;
    ``b[0]`` joins the call; ``a[0]`` times out and leaves. When the call lent ``a[0]``'s group
    slot in its backoffs, ``a[0]``'s worker released that slot again ("SlotArbiter released
    more often than acquired") and the call lent it again, failing ``b[0]`` with it. A shared
    call now holds its starter's slots through its backoffs, and goes on for ``b[0]`` using
    none of ``a``'s slots once ``a[0]`` has left (SharedCallSlot)."""
    calls: list[int] = []

    async def flaky(job: _Job, context: str, state: ExecutionState) -> int:
        calls.append(job.i)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return job.i

    retry = RetryPolicy(max_attempts=3, initial_delay=0.1, multiplier=1.0, jitter=0.0)
    tool = Tool(name="shared", input_model=_Job, handler=flaky, cacheable=True, retry=retry)
    event = ExecutionEvent(actor=tool)

    async def main(loop: VirtualLoop) -> tuple[ExecutionState, list[Any], list[Any]]:
        state = ExecutionState(cache=ActorCache(), clock=LoopClock())

        async def starter() -> list[Any]:
            async with state.parallel(max_workers=1, name="a") as p:
                p.add(event(_Job(i=1), "", state), timeout=0.05)
                return await p.gather()

        async def joiner() -> list[Any]:
            await asyncio.sleep(0.01)
            async with state.parallel(max_workers=1, name="b") as p:
                p.add(event(_Job(i=1), "", state))
                return await p.gather()

        a, b = await asyncio.gather(starter(), joiner())
        return state, a, b

    state, a, b = run_virtual(main)
    assert [r.status for r in a] == [ResultStatus.TIMED_OUT]
    assert not state.internal_errors, state.internal_errors
    assert [(r.status, r.result) for r in b] == [(ResultStatus.COMPLETED, 1)], b
    assert calls == [1, 1, 1]
