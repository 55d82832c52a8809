"""Resume: completed events (inside half-done groups too) return their stored results."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Recorder
from parallel_support import until
from recovery_support import Item, Square, Squarer, make_backend, run_group
from rh_agents.core.actors import Agent, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.records import EventCompleted, EventReplayed, EventStarted, is_member_call
from rh_agents.errors import ConfigurationError, RecoveryError
from rh_agents.recovery import CheckpointPolicy, Recovery, ReplayMode, RunStatus, SQLiteBackend
from rh_agents.resilience import RetryPolicy
from rh_agents.testing import ManualClock

BACKENDS = ["sqlite", "json"]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_failed_members_run_again_and_completed_ones_are_replayed(
    tmp_path: Path, kind: str
) -> None:
    backend = make_backend(kind, tmp_path)
    first = Squarer(fail={3, 7})
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        results = await run_group(state, first, 10)
    assert [r.ok for r in results].count(False) == 2
    assert backend.get_run("r").status is RunStatus.COMPLETED

    second = Squarer()
    async with ExecutionState.resume("r", backend=backend) as state:
        results = await run_group(state, second, 10)
        assert state.recovery is not None and state.recovery.recovered == 8
    assert dict(second.calls) == {3: 1, 7: 1}
    assert [r.unwrap() for r in results] == [Square(i=i, square=i * i) for i in range(10)]
    assert all(isinstance(r.result, Square) for r in results)
    replayed = {r.index for r in results if r.source == "replay"}
    assert replayed == set(range(10)) - {3, 7}
    assert state.history["members[4]::square"].result.source == "replay"
    assert all(r.status == "completed" for r in backend.load("r").values())
    backend.close()


async def _crash_after(
    state: ExecutionState, squarer: Squarer, n: int, order: list[int], finished: int
) -> None:
    """Release ``finished`` members in ``order`` then drop the run as a crash would."""
    done = {i: asyncio.Event() for i in range(n)}
    task = asyncio.create_task(run_group(state, squarer, n, done))
    assert squarer.gates is not None
    for i in order[:finished]:
        squarer.gates[i].set()
        await done[i].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _replay_in_two_orders(tmp: Path, n: int, first: list[int], second: list[int]) -> None:
    finished = n // 2
    backend = make_backend("sqlite", tmp)
    crashed = Squarer(gates={i: asyncio.Event() for i in range(n)})
    state = ExecutionState(run_id="r", recovery=Recovery(backend))
    await _crash_after(state, crashed, n, first, finished)
    await state.event_bus.close()  # no Recovery.close(): the process "died"
    assert state.recovery is not None and state.recovery.lease is not None
    state.recovery.lease.release()  # and its lease died with it

    resumed = Squarer(gates={i: asyncio.Event() for i in range(n)})
    state = ExecutionState.resume("r", backend=backend)
    done = {i: asyncio.Event() for i in range(n)}
    task = asyncio.create_task(run_group(state, resumed, n, done))
    for i in second:
        resumed.gates[i].set()  # type: ignore[index]
        await done[i].wait()
    results = await task
    await state.close()

    assert set(resumed.calls) == set(range(n)) - set(first[:finished])
    assert [r.unwrap().square for r in results] == [i * i for i in range(n)]
    assert sorted(state.history.addresses()) == sorted(f"members[{i}]::square" for i in range(n))
    stored = backend.load("r")
    assert {r.parallel_index for r in stored.values()} == set(range(n))
    assert all(r.group_id == "members" for r in stored.values())
    backend.close()


@settings(max_examples=15, deadline=None)
@given(st.randoms(use_true_random=False))
def test_replay_is_stable_under_another_completion_order(
    tmp_path_factory: pytest.TempPathFactory, rng: random.Random
) -> None:
    n = 12
    first, second = list(range(n)), list(range(n))
    rng.shuffle(first)
    rng.shuffle(second)
    asyncio.run(_replay_in_two_orders(tmp_path_factory.mktemp("replay"), n, first, second))


async def _completed_run(tmp: Path, n: int = 4) -> None:
    backend = make_backend("sqlite", tmp)
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        await run_group(state, Squarer(), n)
    backend.close()


async def test_republish_mode_publishes_replayed_events(tmp_path: Path) -> None:
    await _completed_run(tmp_path)
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    squarer = Squarer()
    state = ExecutionState.resume(
        "r", backend=tmp_path / "state.db", replay=ReplayMode.REPUBLISH, event_bus=bus
    )
    async with state:
        await run_group(state, squarer, 4)
    assert not squarer.calls
    replays = [r for r in recorder.records if isinstance(r, EventCompleted)]
    assert sorted(r.address for r in replays) == [f"members[{i}]::square" for i in range(4)]
    assert {r.source for r in replays} == {"replay"}


async def test_skip_mode_publishes_one_replayed_record_per_replayed_call(tmp_path: Path) -> None:
    await _completed_run(tmp_path)
    with SQLiteBackend(tmp_path / "state.db", mode="read") as backend:
        stored = backend.load("r")
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    async with ExecutionState.resume("r", backend=tmp_path / "state.db", event_bus=bus) as state:
        await run_group(state, Squarer(), 4)
    assert not [r for r in recorder.records if isinstance(r, EventCompleted | EventStarted)]
    replays = [r for r in recorder.records if isinstance(r, EventReplayed)]
    assert sorted(r.address for r in replays) == [f"members[{i}]::square" for i in range(4)]
    for record in replays:  # the stored run's figures, and where the call sits
        assert record.execution_time == stored[record.address].execution_time
        assert record.group_id == "members" and record.is_parallel
        assert is_member_call(record)


async def test_validate_mode_reruns_and_reports_differences_without_writing(
    tmp_path: Path,
) -> None:
    await _completed_run(tmp_path)
    squarer = Squarer(fail={2})
    state = ExecutionState.resume("r", backend=tmp_path / "state.db", replay="validate")
    backend = state.recovery.backend if state.recovery else None
    assert backend is not None
    before = backend.load("r")
    async with state:
        await run_group(state, squarer, 4)
    assert dict(squarer.calls) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert state.recovery is not None
    [difference] = state.recovery.differences
    assert difference.address == "members[2]::square"
    assert (difference.stored_status, difference.current_status) == ("completed", "failed")
    with make_backend("sqlite", tmp_path) as check:
        assert check.load("r") == before


async def _three_steps(state: ExecutionState, squarer: Squarer) -> list[int]:
    return [(await squarer.event(Item(i=i), "", state)).unwrap().square for i in (1, 2, 3)]


async def test_resume_from_an_address_reruns_it_and_everything_after(tmp_path: Path) -> None:
    async with ExecutionState(run_id="r", recovery=Recovery(tmp_path / "state.db")) as state:
        await _three_steps(state, Squarer())
    squarer = Squarer()
    db = tmp_path / "state.db"
    async with ExecutionState.resume("r", backend=db, resume_from="square#2") as state:
        assert await _three_steps(state, squarer) == [1, 4, 9]
    assert dict(squarer.calls) == {2: 1, 3: 1}

    with pytest.raises(RecoveryError, match="no checkpoint at or below"):
        ExecutionState.resume("r", backend=db, resume_from="nowhere")


async def test_a_new_actor_version_runs_again(tmp_path: Path) -> None:
    await _completed_run(tmp_path)
    squarer = Squarer(version="2")
    async with ExecutionState.resume("r", backend=tmp_path / "state.db") as state:
        await run_group(state, squarer, 4)
    assert sum(squarer.calls.values()) == 4


async def test_batched_checkpoints_wait_for_count_or_explicit_save(tmp_path: Path) -> None:
    backend = make_backend("sqlite", tmp_path)
    policy = CheckpointPolicy.batched(count=3, seconds=None)
    state = ExecutionState(run_id="r", recovery=Recovery(backend, checkpoint=policy))
    squarer = Squarer()
    for i in range(4):
        await squarer.event(Item(i=i), "", state)
    assert len(backend.load("r")) == 3  # one batch of three; the fourth waits
    await state.save_checkpoint()
    assert len(backend.load("r")) == 4
    await squarer.event(Item(i=9), "", state)
    await state.close()
    assert len(backend.load("r")) == 5
    assert backend.get_run("r").status is RunStatus.COMPLETED
    backend.close()


async def test_a_run_ended_by_an_exception_is_marked_failed(tmp_path: Path) -> None:
    backend = make_backend("sqlite", tmp_path)
    with pytest.raises(ZeroDivisionError):
        async with ExecutionState(run_id="r", recovery=Recovery(backend)):
            _ = 1 / 0
    assert backend.get_run("r").status is RunStatus.FAILED
    backend.close()


def test_options_are_checked(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with pytest.raises(ConfigurationError, match="at least 1"):
        CheckpointPolicy(count=0)
    with pytest.raises(ConfigurationError, match="unknown replay mode"):
        Recovery(db, resume=True, replay="bogus")
    with pytest.raises(ConfigurationError, match="resume=True"):
        Recovery(db, resume_from="x")


@pytest.mark.parametrize(
    "options",
    [
        {"count": math.nan},
        {"count": math.inf},
        {"count": 1.5},
        {"count": True},
        {"count": "3"},
        {"count": None},
        {"seconds": math.nan},
        {"seconds": math.inf},
        {"seconds": 0},
        {"seconds": True},
        {"seconds": "1"},
    ],
)
def test_a_checkpoint_policy_is_checked_when_it_is_made(options: dict[str, object]) -> None:
    """``CheckpointPolicy(count=nan)`` was taken, and no batch ever filled (nan compares false
    with everything): a crash lost every checkpoint. inf, 1.5, True and seconds=nan were taken
    too, and count="3" raised a bare TypeError. Each is a ConfigurationError naming the field."""
    (field,) = options
    with pytest.raises(ConfigurationError, match=rf"CheckpointPolicy\({field}=\.\.\.\)"):
        CheckpointPolicy(**options)  # type: ignore[arg-type]


def test_a_checkpoint_policy_keeps_what_its_docs_allow() -> None:
    assert CheckpointPolicy(count=10**20, seconds=None).count == 10**20
    assert CheckpointPolicy(seconds=1).seconds == 1
    assert CheckpointPolicy.batched(count=2, seconds=0.001).seconds == 0.001


def test_a_recovery_serves_one_state(tmp_path: Path) -> None:
    with make_backend("sqlite", tmp_path) as backend:
        recovery = Recovery(backend)
        ExecutionState(run_id="a", recovery=recovery)
        with pytest.raises(ConfigurationError, match="one ExecutionState"):
            ExecutionState(run_id="b", recovery=recovery)


async def test_a_result_that_cannot_be_serialised_runs_again(tmp_path: Path) -> None:
    calls: list[int] = []

    async def handle(item: Item, context: str, state: ExecutionState) -> object:
        calls.append(item.i)
        return object() if item.i == 0 else {"i": item.i}

    event = ExecutionEvent(actor=Tool(name="raw", input_model=Item, handler=handle))
    db = tmp_path / "state.db"
    async with ExecutionState(run_id="r", recovery=Recovery(db)) as state:
        await state.parallel_execute([event(Item(i=i), "", state) for i in range(2)])
        assert state.recovery is not None and state.recovery.unserialisable == 1
    async with ExecutionState.resume("r", backend=db) as state:
        results = await state.parallel_execute([event(Item(i=i), "", state) for i in range(2)])
    assert calls == [0, 1, 0]
    assert results[1].result == {"i": 1}  # no output_model: plain JSON comes back


async def test_a_resumed_groups_metrics_count_only_what_ran_now(tmp_path: Path) -> None:
    """Replayed members keep their place in the counts but add no stored time or retries."""
    backend = make_backend("sqlite", tmp_path)
    first = Squarer(fail={2})
    state = ExecutionState(run_id="m", recovery=Recovery(backend))
    async with state, state.parallel(name="members") as p:
        for i in range(4):
            p.add(first.event(Item(i=i), "", state))
    async with ExecutionState.resume("m", backend=backend) as state:
        async with state.parallel(name="members") as p:
            for i in range(4):
                p.add(Squarer().event(Item(i=i), "", state))
        results = await p.gather()
    assert [r.source for r in results] == ["replay", "replay", "run", "replay"]
    metrics = p.metrics()
    assert (metrics.succeeded, metrics.run_time.count, metrics.retries) == (4, 1, 0)
    backend.close()


@pytest.mark.parametrize("retried_by", ["group", "actor"])
async def test_a_retried_attempts_calls_keep_their_addresses_and_replay(
    tmp_path: Path, retried_by: str
) -> None:
    # Each attempt numbered its calls on from the last: the retried attempt's call was
    # committed at ``ask#2``; resumed, the first attempt's call (``ask``) found only the
    # failed checkpoint and ran the handler again, although the run had completed.
    runs: list[str] = []
    failing = [True]

    async def ask_handler(item: Item, context: str, state: ExecutionState) -> int:
        runs.append("ask")
        if failing[0]:
            failing[0] = False
            raise ConnectionError("503 from the provider")
        return item.i * 10

    ask = ExecutionEvent(actor=Tool(name="ask", input_model=Item, handler=ask_handler))
    retry = RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0)
    addresses: list[str | None] = []

    async def answer_handler(item: Item, context: str, state: ExecutionState) -> int:
        result = await ask(item, "", state)
        addresses.append(result.address)
        return result.unwrap()  # raises on failure: the policy retries

    agent = ExecutionEvent(
        actor=Agent(
            name="writer",
            input_model=Item,
            handler=answer_handler,
            retry=retry if retried_by == "actor" else None,
        )
    )

    async def program() -> tuple[Any, int]:
        recovery = Recovery(SQLiteBackend(tmp_path / "runs.db"), resume="auto")
        async with ExecutionState(run_id="digest", recovery=recovery, watchdog=None) as state:
            if retried_by == "group":
                async with state.parallel(name="qs", retry=retry) as p:
                    p.add(lambda: answer(state))
                (result,) = await p.gather()
            else:
                result = await agent(Item(i=4), "", state)
        return result.result, recovery.recovered

    async def answer(state: ExecutionState) -> int:
        result = await ask(Item(i=4), "", state)
        addresses.append(result.address)
        return result.unwrap()

    assert await program() == (40, 0)
    assert runs == ["ask", "ask"]
    first, second = addresses
    assert first == second  # the retried attempt's call has the first attempt's address
    assert first is not None and first.endswith("::ask")
    value, replayed = await program()  # the run completed: replayed whole
    assert value == 40 and replayed >= 1
    assert runs == ["ask", "ask"]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_resumed_quorum_is_met_by_replays_before_any_handler_starts(
    tmp_path: Path, kind: str
) -> None:
    # Members 5, 6 and 7 met the quorum in the stored run; 0 to 4 were cancelled. On
    # resume the three replays are answered first, so the quorum stops the group before the
    # five others start: their handlers (a paid call each) are not run only to be cancelled.
    backend = make_backend(kind, tmp_path)

    async def quorum_group(state: ExecutionState, squarer: Squarer) -> list[str]:
        async with state.parallel(max_workers=8, quorum=3, name="members") as p:
            for i in range(8):
                p.add(squarer.event(Item(i=i), "", state))
            return [r.status.value for r in await p.gather()]

    first = Squarer(gates={i: asyncio.Event() for i in range(8)})
    assert first.gates is not None
    for i in (5, 6, 7):
        first.gates[i].set()
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        assert await quorum_group(state, first) == ["cancelled"] * 5 + ["completed"] * 3
    again = Squarer(gates={i: asyncio.Event() for i in range(8)})  # (nothing would end)
    bus = EventBus()
    seen = Recorder()
    bus.subscribe(seen)
    async with ExecutionState.resume("r", backend=backend, event_bus=bus) as state:
        assert await quorum_group(state, again) == ["cancelled"] * 5 + ["completed"] * 3
        assert state.recovery is not None and state.recovery.recovered == 3
    assert [r for r in seen.records if isinstance(r, EventStarted)] == []
    assert sum(isinstance(r, EventReplayed) for r in seen.records) == 3
    backend.close()


async def test_replays_go_first_and_the_members_still_to_run_then_run(tmp_path: Path) -> None:
    # Half the members replayed, half run again, under a limit of 2: the members to run
    # wait for the replays, then all run (none is left waiting for a kick that never comes).
    backend = make_backend("sqlite", tmp_path)
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        first = Squarer(fail={1, 3, 5, 7})
        async with state.parallel(max_workers=2, name="members") as p:
            for i in range(8):
                p.add(first.event(Item(i=i), "", state))
    again = Squarer()
    async with ExecutionState.resume("r", backend=backend) as state:
        async with state.parallel(max_workers=2, name="members") as p:
            for i in range(8):
                p.add(again.event(Item(i=i), "", state))
            results = await p.gather()
        assert p.metrics().concurrency_high_water <= 2
    assert [r.unwrap().square for r in results] == [i * i for i in range(8)]
    assert [r.source for r in results] == ["replay", "run"] * 4
    assert dict(again.calls) == {1: 1, 3: 1, 5: 1, 7: 1}
    backend.close()


async def test_a_resumed_groups_instant_lane_cancelled_from_outside_cancels_the_group(
    tmp_path: Path,
) -> None:
    # A shutdown handler cancels every task but its own while a resumed group's replays wait
    # in its instant lane (not started yet): the group is cancelled, every member gets a
    # result, and nothing waits for ever (the replays used to hold the workers back for good).
    backend = make_backend("sqlite", tmp_path)
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        await run_group(state, Squarer(fail={3}), 4)
    me = asyncio.current_task()
    async with ExecutionState.resume("r", backend=backend) as state:
        squarer = Squarer()
        async with state.parallel(max_workers=2, name="members") as p:
            for i in range(4):
                p.add(squarer.event(Item(i=i), "", state))
            others = [task for task in asyncio.all_tasks() if task is not me]
            for task in others:
                task.cancel()
            results = await asyncio.wait_for(p.gather(), timeout=5)
    if asyncio.get_running_loop().get_task_factory() is None:
        assert others  # (the instant lane, not started)
        assert [r.status.value for r in results] == ["cancelled"] * 4
        assert p.group.status.value == "cancelled"
    else:  # (an eager task factory ran the lane inside each add(): the replays were answered)
        assert others == []
        assert [r.source for r in results] == ["replay"] * 3 + ["run"]
    assert asyncio.all_tasks() == {me}
    backend.close()


async def test_thousands_of_replays_let_the_event_loop_run(tmp_path: Path) -> None:
    # The instant lane answers replays without waiting; it yields every few hundred, as
    # workers do, so that other tasks (a display, a server) are not held up by a resume.
    n = 1200
    backend = make_backend("sqlite", tmp_path)
    async with ExecutionState(
        run_id="r", recovery=Recovery(backend, checkpoint=CheckpointPolicy.batched(1000))
    ) as state:
        await run_group(state, Squarer(), n)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with ExecutionState.resume("r", backend=backend) as state:
        squarer = Squarer()
        async with state.parallel(max_workers=4, name="members") as p:
            for i in range(n):
                p.add(squarer.event(Item(i=i), "", state))
            ticking = asyncio.create_task(ticker())
            before = ticks
            results = await p.gather()
            during = ticks - before
            ticking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ticking
    assert all(r.source == "replay" for r in results) and not squarer.calls
    if asyncio.get_running_loop().get_task_factory() is None:
        assert during >= n // 256 - 1, during
    # (An eager task factory runs the lane inside each add(): every replay is answered
    # there, one at a time, and nothing is left for the lane to hold the loop with.)
    backend.close()


# --- an agent retried around its tools: several calls at one address -------------------------


async def _cut_short(
    backend: Any, event: ExecutionEvent[Any], ready: Callable[[], bool], **options: Any
) -> None:
    """Call ``event`` in a checkpointed run ``r`` and cancel the call once ``ready()`` holds
    (a run stopped before the retried agent ended: what its attempts finished is stored)."""
    async with ExecutionState(run_id="r", recovery=Recovery(backend), **options) as state:
        call = asyncio.create_task(event(Item(i=1), "", state))
        await until(ready)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call


async def _resumed(backend: Any, event: ExecutionEvent[Any], **options: Any) -> Any:
    """Call ``event`` again in run ``r`` resumed; its result and the recovery's replays."""
    async with ExecutionState.resume("r", backend=backend, **options) as state:
        result = await event(Item(i=1), "", state)
    assert state.recovery is not None
    return result, state.recovery.recovered


def _checking_agent(
    answers: list[str],
    fetches: list[str],
    seen: list[str],
    fail_first_attempt: bool = False,
    hold: asyncio.Event | None = None,
) -> Any:
    """An agent whose attempts each call the tool ``fetch`` (at the same address) and raise
    on a "bad" answer (or, with ``fail_first_attempt``, in their run's first attempt); an
    attempt that accepts its answer waits for ``hold`` first, if given."""

    replies = iter(answers)
    attempts = [0]

    async def fetch(item: Item, context: str, state: ExecutionState) -> str:
        fetches.append(answer := next(replies))
        return answer

    tool = ExecutionEvent(actor=Tool(name="fetch", input_model=Item, handler=fetch))

    async def checks(item: Item, context: str, state: ExecutionState) -> str:
        attempts[0] += 1
        answer = (await tool(item, "", state)).unwrap()
        seen.append(answer)
        if answer == "bad" or (fail_first_attempt and attempts[0] == 1):
            raise ValueError(f"attempt {attempts[0]} refused {answer!r}")
        if hold is not None:
            await hold.wait()
        return answer

    return Agent(name="checker", input_model=Item, handler=checks)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_retry_in_a_resumed_run_calls_again_what_its_failed_attempt_replayed(
    tmp_path: Path, kind: str
) -> None:
    # The stored run has the tool's bad answer (completed) and the agent failed on it. On
    # resume the agent's first attempt replays the bad answer and fails as before; its retry
    # calls the tool afresh, as a run that never stopped would, rather than replay the very
    # answer its failed attempt had (which no retry could ever get past).
    fetches: list[str] = []
    seen: list[str] = []
    agent = _checking_agent(["bad", "good", "a third call"], fetches, seen)
    backend = make_backend(kind, tmp_path)
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        first = await ExecutionEvent(actor=agent)(Item(i=1), "", state)
    assert not first.ok and fetches == ["bad"]
    retried = ExecutionEvent(actor=agent, retry=RetryPolicy(max_attempts=2, jitter=0))
    second, recovered = await _resumed(backend, retried, clock=ManualClock())
    assert recovered == 1
    assert (second.ok, second.result, second.attempts) == (True, "good", 2)
    assert fetches == ["bad", "good"] and seen == ["bad", "bad", "good"]
    # The two calls at the tool's address are stored one after the other.
    stored = backend.load("r")
    assert stored["checker::fetch"].result_json == '"bad"'
    assert stored["checker::fetch::#2"].result_json == '"good"'
    backend.close()


@pytest.mark.parametrize("kind", BACKENDS)
async def test_each_call_a_retried_agent_committed_is_replayed_to_the_attempt_that_made_it(
    tmp_path: Path, kind: str
) -> None:
    # Attempt 1 called the tool ("a") and failed; attempt 2 called it again ("b") and the run
    # was cancelled before the agent ended. Resumed, attempt 1 gets "a" and attempt 2 gets
    # "b", as they did: neither call runs again (one result kept per address gave both "b";
    # a stored result answering only one call ran the second one again).
    fetches: list[str] = []
    seen: list[str] = []
    retry = RetryPolicy(max_attempts=3, jitter=0)
    backend = make_backend(kind, tmp_path)
    agent = _checking_agent(["a", "b"], fetches, seen, True, hold=asyncio.Event())
    event = ExecutionEvent(actor=agent, retry=retry)
    await _cut_short(backend, event, lambda: len(seen) == 2, clock=ManualClock())
    assert fetches == ["a", "b"] and seen == ["a", "b"]
    assert backend.get_run("r").status is RunStatus.COMPLETED  # (the body itself returned)

    agent = _checking_agent([], fetches, seen, True)
    event = ExecutionEvent(actor=agent, retry=retry)
    result, recovered = await _resumed(backend, event, clock=ManualClock())
    assert recovered == 2
    assert (result.ok, result.result, result.attempts) == (True, "b", 2)
    assert fetches == ["a", "b"] and seen == ["a", "b", "a", "b"]
    backend.close()


def test_runs_show_lists_the_second_call_at_an_address_under_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rh_agents.cli import app
    from rh_agents.core.context import address_of_key
    from rh_agents.recovery.records import CheckpointRecord, latest_calls

    backend = SQLiteBackend(tmp_path / "runs.db")
    backend.create_run("r")

    def record(key: str, seq: int, status: str) -> CheckpointRecord:
        return CheckpointRecord(
            run_id="r", address=key, seq=seq, actor="fetch", actor_version="1", status=status,
            result_json='"x"' if status == "completed" else None,
        )  # fmt: skip

    backend.save(
        "r", [record("checker::fetch", 0, "failed"), record("checker::fetch::#2", 1, "completed")]
    )
    backend.close()
    shown = CliRunner().invoke(app, ["runs", "show", "r", "--state", str(tmp_path / "runs.db")])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("fetch"))
    assert "failed" in lines[at] and lines[at + 1].strip().startswith("#2 (call 2)")
    assert "completed" in lines[at + 1]
    assert address_of_key("checker::fetch::#2") == "checker::fetch"
    assert address_of_key("a::s::#2::t::#3") == "a::s::t"
    assert address_of_key("checker::fetch#2") == "checker::fetch#2"  # a sibling's address
    with SQLiteBackend(tmp_path / "runs.db", mode="read") as reader:
        latest = latest_calls(reader.load("r").values())
    assert list(latest) == ["checker::fetch"] and latest["checker::fetch"].status == "completed"
    # The resume plan says the failed first call is answered by the second (it ended its
    # attempt: nothing else finished between them), and runs nothing again.
    plan = CliRunner().invoke(app, ["runs", "resume", "r", "--state", str(tmp_path / "runs.db")])
    assert plan.exit_code == 0, plan.output
    assert "and run no stored event again" in plan.output
    assert "checker::fetch  by checker::fetch::#2" in plan.output


async def test_a_call_below_a_replayed_call_is_looked_up_under_the_call_it_belongs_to(
    tmp_path: Path,
) -> None:
    # A (retried) -> S -> T. Attempt 1: T says "bad", S passes it on, A refuses it. Attempt 2:
    # T says "good", and the run is cancelled inside S's second call. Resumed: attempt 1 gets
    # S's first call replayed (T not called); attempt 2 runs S again, whose T call is the one
    # under S's second call ("good"), not the first one's ("bad"), and nothing runs again.
    answers = iter(["bad", "good", "a third call"])
    t_runs: list[str] = []
    seen: list[str] = []
    hold = [asyncio.Event()]

    async def t(item: Item, context: str, state: ExecutionState) -> str:
        t_runs.append(answer := next(answers))
        return answer

    tool = ExecutionEvent(actor=Tool(name="T", input_model=Item, handler=t))

    async def s(item: Item, context: str, state: ExecutionState) -> str:
        answer = (await tool(item, "", state)).unwrap()
        if answer == "good" and hold:
            await hold[0].wait()  # the first run is cancelled here
        return answer

    sub = ExecutionEvent(actor=Agent(name="S", input_model=Item, handler=s))

    async def a(item: Item, context: str, state: ExecutionState) -> str:
        answer = (await sub(item, "", state)).unwrap()
        seen.append(answer)
        if answer == "bad":
            raise ValueError("refused")
        return answer

    retried = ExecutionEvent(
        actor=Agent(name="A", input_model=Item, handler=a),
        retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0),
    )
    backend = make_backend("sqlite", tmp_path)
    await _cut_short(backend, retried, lambda: len(t_runs) == 2, watchdog=None)
    stored = backend.load("r")
    assert stored["A::S::T"].result_json == '"bad"'
    assert stored["A::S::#2::T"].result_json == '"good"'  # under S's second call
    hold.clear()
    result, _ = await _resumed(backend, retried, watchdog=None)
    assert (result.ok, result.result) == (True, "good")
    assert t_runs == ["bad", "good"] and seen == ["bad", "bad", "good"]
    backend.close()


async def test_a_failed_call_the_attempt_went_on_after_is_not_passed_over(
    tmp_path: Path,
) -> None:
    # The agent tolerates a failed X (it falls back) and calls Y, whose "bad" answer it
    # refuses; its retry calls X (which succeeds now) and Y ("good"). Resumed: attempt 1's X
    # is the failed one, run again (it failed in the stored run; the attempt went on after
    # it, so the next stored X is attempt 2's, not this one's); attempt 2 replays X and Y.
    x_answers = iter(["x-first-fails", "x2", "x-again"])
    y_answers = iter(["bad", "good"])
    runs: list[str] = []
    seen: list[tuple[str, str]] = []
    hold = [asyncio.Event()]

    async def x(item: Item, context: str, state: ExecutionState) -> str:
        answer = next(x_answers)
        runs.append(f"x:{answer}")
        if answer == "x-first-fails":
            raise ConnectionError("503")
        return answer

    async def y(item: Item, context: str, state: ExecutionState) -> str:
        answer = next(y_answers)
        runs.append(f"y:{answer}")
        return answer

    x_call = ExecutionEvent(actor=Tool(name="X", input_model=Item, handler=x))
    y_call = ExecutionEvent(actor=Tool(name="Y", input_model=Item, handler=y))

    async def agent(item: Item, context: str, state: ExecutionState) -> str:
        got = await x_call(item, "", state)
        x_value = got.result if got.ok else "fallback"
        y_value = (await y_call(item, "", state)).unwrap()
        seen.append((x_value, y_value))
        if y_value == "bad":
            raise ValueError("refused")
        if hold:
            await hold[0].wait()  # the first run is cancelled here
        return f"{x_value}+{y_value}"

    retried = ExecutionEvent(
        actor=Agent(name="A", input_model=Item, handler=agent),
        retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0),
    )
    backend = make_backend("json", tmp_path)
    await _cut_short(backend, retried, lambda: len(seen) == 2, watchdog=None)
    assert seen == [("fallback", "bad"), ("x2", "good")]
    assert backend.load("r")["A::X"].status == "failed"
    hold.clear()
    seen.clear()
    second, _ = await _resumed(backend, retried, watchdog=None)
    assert second.result == "x2+good"
    assert seen == [("x-again", "bad"), ("x2", "good")]  # each attempt its own calls
    assert runs[-1] == "x:x-again"  # the failed X ran again; nothing else did
    backend.close()


async def test_a_group_opened_again_by_a_retry_has_its_members_calls_told_apart(
    tmp_path: Path,
) -> None:
    # A retried agent opens its group again at the same id: the second opening's members
    # call their tools at the same addresses as the first's. Resumed (cancelled before the
    # agent ended), each opening gets its own members' stored answers; nothing runs again.
    answers = iter(["bad", "ok", "good", "ok", "a fifth call"])
    t_runs: list[str] = []
    seen: list[list[str]] = []
    hold = [asyncio.Event()]

    async def t(item: Item, context: str, state: ExecutionState) -> str:
        t_runs.append(answer := next(answers))
        return answer

    tool = ExecutionEvent(actor=Tool(name="T", input_model=Item, handler=t))

    async def a(item: Item, context: str, state: ExecutionState) -> str:
        async with state.parallel(name="g", max_workers=1) as p:
            for i in range(2):
                p.add(tool(Item(i=i), "", state))
        values = [r.unwrap() for r in await p.gather()]
        seen.append(values)
        if "bad" in values:
            raise ValueError("refused")
        if hold:
            await hold[0].wait()  # the first run is cancelled here
        return "+".join(values)

    retried = ExecutionEvent(
        actor=Agent(name="A", input_model=Item, handler=a),
        retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0),
    )
    backend = make_backend("sqlite", tmp_path)
    await _cut_short(backend, retried, lambda: len(seen) == 2, watchdog=None)
    stored = backend.load("r")
    assert stored["A::g[0]::T"].result_json == '"bad"'
    assert stored["A::g::#2[0]::T"].result_json == '"good"'
    hold.clear()
    result, recovered = await _resumed(backend, retried, watchdog=None)
    assert recovered == 4
    assert (result.ok, result.result) == (True, "good+ok")
    assert t_runs == ["bad", "ok", "good", "ok"]
    assert seen == [["bad", "ok"], ["good", "ok"], ["bad", "ok"], ["good", "ok"]]
    backend.close()


@pytest.mark.parametrize("shape", ["two failures, then a success", "a sub-agent with a tool"])
async def test_failed_calls_that_ended_their_attempts_are_passed_over(
    tmp_path: Path, shape: str
) -> None:
    # A (retried) calls S, then V on S's answer. S fails (a 503) and that ends A's attempt,
    # until a later call of S completes; the run is cancelled before A ends. Resumed, A's
    # first attempt is answered by the call of S that completed (the one V was built on):
    # nothing runs again. S is a tool failing twice, or a sub-agent that calls a tool T
    # before it fails (what the later call made, below it, is no other work of A's).
    failures = [2 if shape.startswith("two") else 1]
    runs: list[str] = []
    hold = [asyncio.Event()]
    done = asyncio.Event()

    async def t(item: Item, context: str, state: ExecutionState) -> str:
        runs.append("T")
        return f"t{len(runs)}"

    tool_t = ExecutionEvent(actor=Tool(name="T", input_model=Item, handler=t))

    async def s(item: Item, context: str, state: ExecutionState) -> str:
        runs.append("S")
        made = (await tool_t(item, "", state)).unwrap() if shape.startswith("a sub") else ""
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("503")
        return f"s({made or len(runs)})"

    actor_s: Any = (Agent if shape.startswith("a sub") else Tool)(
        name="S", input_model=Item, handler=s
    )
    call_s = ExecutionEvent(actor=actor_s)

    async def v(item: Item, context: str, state: ExecutionState) -> str:
        runs.append("V")
        return f"v({context})"

    call_v = ExecutionEvent(actor=Tool(name="V", input_model=Item, handler=v))

    async def a(item: Item, context: str, state: ExecutionState) -> str:
        answer = (await call_s(item, "", state)).unwrap()
        built = (await call_v(item, answer, state)).unwrap()
        if hold:
            done.set()
            await hold[0].wait()  # the first run is cancelled here
        return f"{answer} {built}"

    retried = ExecutionEvent(
        actor=Agent(name="A", input_model=Item, handler=a),
        retry=RetryPolicy(max_attempts=3, initial_delay=0, jitter=0),
    )
    backend = make_backend("sqlite", tmp_path)
    await _cut_short(backend, retried, done.is_set, watchdog=None)
    first_runs = list(runs)
    hold.clear()
    result, _ = await _resumed(backend, retried, watchdog=None)
    assert runs == first_runs  # nothing ran again
    answer = result.result.split(" ")[0] if result.ok else None
    assert result.ok and result.result == f"{answer} v({answer})"
    backend.close()


def test_resume_refuses_a_recovery_with_a_clear_error() -> None:
    # It said "got multiple values for keyword argument 'recovery'".
    with pytest.raises(ConfigurationError, match=r"makes the run's Recovery itself"):
        ExecutionState.resume("r", None, recovery=Recovery())
