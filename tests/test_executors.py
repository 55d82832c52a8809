"""``executor=``: members on a pool of processes and on a real local Ray instance.

Every test here runs on both (the ``executor`` fixture): the group keeps its semantics,
results come back in submission order, records come home with the addresses they would have
had on the loop, limits hold (measured from inside the members), retries are new requests,
a timeout or a stop kills the remote work, and a resumed run asks the executor only for what
did not finish. The members live in ``executor_support`` (sent by reference).

Ray is started once for the session (``ray.init(num_cpus=2, include_dashboard=False)``), by
the first test that needs it, and shut down after the last one (they all live in this module:
the rest of the suite runs without Ray's daemons taking the machine's two cores). Its tests
are skipped, saying why, only where Ray cannot be imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import executor_support as support
from conftest import Recorder
from executor_support import Item, Span
from parallel_support import until
from rh_agents.core.actors import Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.parallel.options import GroupOptions
from rh_agents.core.parallel.strategy import ErrorStrategy
from rh_agents.core.records import EventRetrying
from rh_agents.core.results import ResultStatus
from rh_agents.errors import ConfigurationError, InvalidMemberError, RemoteExecutionError
from rh_agents.executors import ProcessExecutor, RayExecutor, RemoteExecutor, shared_processes
from rh_agents.recovery import ActorCache, Recovery, SQLiteBackend
from rh_agents.resilience import RetryPolicy

try:
    import ray
except ImportError:  # pragma: no cover - CI installs the dev extra, which has ray
    ray = None


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessExecutor]:
    pool = ProcessExecutor(max_processes=4)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayExecutor]:
    if ray is None:
        pytest.skip("ray is not installed (pip install 'rh-agents[ray]')")
    # The workers import the members from executor_support, beside this file (pytest put
    # this folder on the driver's sys.path; Ray's workers get it by their environment).
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield RayExecutor()
    ray.shutdown()


@pytest.fixture(params=["processes", "ray"])
def executor(request: pytest.FixtureRequest) -> RemoteExecutor:
    if request.param == "processes":
        pool: ProcessExecutor = request.getfixturevalue("process_pool")
        return pool
    ray_executor: RayExecutor = request.getfixturevalue("ray_cluster")
    return ray_executor


def recorded_state(recorder: Recorder | None = None, **options: Any) -> ExecutionState:
    bus = EventBus()
    if recorder is not None:
        bus.subscribe(recorder)
    return ExecutionState(event_bus=bus, **options)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def pid_of(marker: Path) -> int:
    """The process that ran ``sleep_then_touch(marker)``."""
    return int(Path(f"{marker}.pid").read_text())


def started(marker: Path) -> bool:
    """Whether ``sleep_then_touch(marker)`` ever started."""
    return Path(f"{marker}.pid").exists()


async def warm(state: ExecutionState, executor: RemoteExecutor) -> None:
    """Have two workers up (a worker killed by an earlier test is replaced meanwhile), so
    that timings measure the members, not the start of their workers."""
    for _ in range(20):
        results = await state.parallel_execute(
            [functools.partial(support.span, n, 0, 0.1) for n in range(2)],
            max_workers=2,
            executor=executor,
        )
        if support.peak([r.result for r in results]) == 2:
            return
    raise AssertionError("two workers never ran at once")


async def eventually(check: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


# --- results, order, where they ran ----------------------------------------------------------


async def test_results_come_back_in_submission_order_from_other_processes(
    executor: RemoteExecutor,
) -> None:
    event = ExecutionEvent(actor=support.span_tool)
    async with recorded_state() as state, state.parallel(max_workers=4, executor=executor) as p:
        for n in range(6):
            if n % 2:
                p.add(event(Item(n=n, ms=(6 - n) * 5), "", state))  # an event call
            else:
                p.add(functools.partial(support.span, n, (6 - n) * 5))  # a callable
        results = await p.gather()
    assert [r.index for r in results] == list(range(6))
    assert all(r.ok for r in results), [r.error for r in results]
    spans = [r.result for r in results]
    assert all(isinstance(s, Span) for s in spans)  # a model crossed as JSON, rebuilt here
    assert [s.n for s in spans] == list(range(6))
    assert os.getpid() not in {s.pid for s in spans}
    assert [r.address for r in results] == [
        f"parallel[{n}]::span" if n % 2 else f"parallel[{n}]" for n in range(6)
    ]


async def test_parallel_execute_and_parallel_map_take_the_executor(
    executor: RemoteExecutor,
) -> None:
    async with recorded_state() as state:
        named = await state.parallel_execute(
            {"a": functools.partial(support.span, 1), "b": functools.partial(support.span, 2)},
            max_workers=2,
            executor=executor,
            dependencies={"b": ["a"]},
        )
        mapped = [
            r
            async for r in state.parallel_map(
                support.span, range(5), max_workers=2, executor=executor
            )
        ]
        events = [
            r
            async for r in state.parallel_map(
                ExecutionEvent(actor=support.double_tool),
                [Item(n=n) for n in range(3)],
                max_workers=2,
                executor=executor,
            )
        ]
        coroutines = [
            r
            async for r in state.parallel_map(
                support.async_span, range(2), max_workers=2, executor=executor
            )
        ]
    assert named["a"].result.end <= named["b"].result.start  # b ran after a
    assert sorted(r.result.n for r in mapped) == list(range(5))
    assert sorted(r.result for r in events) == [0, 2, 4]
    assert sorted(r.result.n for r in coroutines) == [0, 1]
    assert os.getpid() not in {r.result.pid for r in coroutines}


# --- records ---------------------------------------------------------------------------------


async def test_records_come_home_with_the_addresses_they_would_have_had_locally(
    executor: RemoteExecutor,
) -> None:
    event = ExecutionEvent(actor=support.orchestrator)
    shapes: dict[str, list[tuple[Any, ...]]] = {}
    values = {}
    for where in ("loop", "remote"):
        recorder = Recorder()
        async with (
            recorded_state(recorder) as state,
            state.parallel(
                max_workers=2, name="docs", executor=None if where == "loop" else executor
            ) as p,
        ):
            for n in range(3):
                p.add(event(Item(n=n), "", state))
            p.add(functools.partial(support.with_state, 7, state))
            results = await p.gather()
        values[where] = [r.result for r in results]
        shapes[where] = [support.record_shape(r) for r in recorder.records]
    assert (
        values["remote"]
        == values["loop"]
        == [
            [0, 2, 0, 2],
            [2, 4, 0, 2],
            [4, 6, 0, 2],
            14,
        ]
    )
    assert sorted(shapes["remote"]) == sorted(shapes["loop"])
    assert ("event.completed", "docs[1]::orchestrator::double#2", "docs", 1, True) in shapes[
        "remote"
    ]
    assert ("group.started", "docs[2]::orchestrator::inner", "docs", 2, True) in shapes["remote"]
    assert (
        "event.completed",
        "docs[0]::orchestrator::inner[1]::double",
        "docs[0]::orchestrator::inner",
        1,
        True,
    ) in shapes["remote"]
    assert ("event.completed", "docs[3]::double", "docs", 3, True) in shapes["remote"]

    # Call by call, the records are in the order they were published (the calls of a member's
    # inner group run at once, in threads: their records interleave either way).
    def by_address(shape: list[tuple[Any, ...]]) -> dict[str, list[str]]:
        calls: dict[str, list[str]] = {}
        for kind, address, *_ in shape:
            calls.setdefault(address, []).append(kind)
        return calls

    assert by_address(shapes["remote"]) == by_address(shapes["loop"])
    for n in range(3):  # and a member's own call brackets everything it called
        inside = [s[:2] for s in shapes["remote"] if s[1].startswith(f"docs[{n}]::")]
        assert inside[0] == ("event.started", f"docs[{n}]::orchestrator")
        assert inside[-1] == ("event.completed", f"docs[{n}]::orchestrator")
        assert len(inside) == 16


async def test_a_remote_error_comes_home_as_itself_with_its_traceback(
    executor: RemoteExecutor,
) -> None:
    async with recorded_state() as state:
        results = await state.parallel_execute(
            [functools.partial(support.fails, "no good"), functools.partial(support.span, 1)],
            executor=executor,
        )
    failed, fine = results
    assert fine.ok
    assert failed.status is ResultStatus.FAILED and failed.error == "ValueError: no good"
    assert isinstance(failed.exception, ValueError)
    assert "in fails" in failed.exception.remote_traceback  # type: ignore[attr-defined]


# --- limits ---------------------------------------------------------------------------------


async def test_max_workers_and_the_global_limit_bound_the_members_in_flight(
    executor: RemoteExecutor,
) -> None:
    async with recorded_state() as state:
        one = await state.parallel_execute(
            [functools.partial(support.span, n, 0, 0.05) for n in range(4)],
            max_workers=1,
            executor=executor,
        )
    async with recorded_state(global_max_workers=2) as state:
        two = await state.parallel_execute(
            [functools.partial(support.span, n, 0, 0.05) for n in range(6)],
            max_workers=4,
            executor=executor,
        )
    assert support.peak([r.result for r in one]) == 1
    assert support.peak([r.result for r in two]) == 2


async def test_priorities_pick_who_runs_first_when_slots_are_contended(
    executor: RemoteExecutor,
) -> None:
    async with recorded_state() as state, state.parallel(max_workers=1, executor=executor) as p:
        for n in range(4):
            p.add(functools.partial(support.span, n), priority=n)
        results = await p.gather()
    starts = sorted((r.result.start, r.result.n) for r in results)
    assert [n for _, n in starts] == [3, 2, 1, 0]


# --- retries, timeouts, stops ---------------------------------------------------------------


async def test_retries_are_decided_here_and_each_is_a_new_request(
    executor: RemoteExecutor, tmp_path: Path
) -> None:
    recorder = Recorder()
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)
    counting = Counting(executor)
    async with recorded_state(recorder) as state:
        results = await state.parallel_execute(
            [
                functools.partial(support.flaky, str(tmp_path / "callable"), 2),
                ExecutionEvent(actor=support.flaky_tool)(
                    Item(n=2, path=str(tmp_path / "handler")), "", state
                ),
            ],
            executor=counting,
            retry=policy,
            name="g",
        )
    assert [(r.ok, r.result, r.attempts) for r in results] == [(True, 3, 3), (True, 3, 3)]
    retries = [r for r in recorder.records if isinstance(r, EventRetrying)]
    assert sorted((r.address, r.attempt, r.error_type) for r in retries) == [
        ("g[0]", 1, "ConnectionError"),
        ("g[0]", 2, "ConnectionError"),
        ("g[1]::flaky", 1, "ConnectionError"),
        ("g[1]::flaky", 2, "ConnectionError"),
    ]
    assert counting.handlers == ["g[1]::flaky"] * 3  # one request per attempt


async def test_member_and_group_timeouts_kill_the_remote_work(
    executor: RemoteExecutor, tmp_path: Path
) -> None:
    markers = [tmp_path / "member", tmp_path / "group"]
    async with recorded_state() as state:
        await warm(state, executor)
        started = time.monotonic()
        async with state.parallel(max_workers=2, executor=executor, timeout=0.9) as p:
            p.add(functools.partial(support.sleep_then_touch, str(markers[0]), 1.5), timeout=0.4)
            p.add(functools.partial(support.sleep_then_touch, str(markers[1]), 1.5))
            results = await p.gather()
        waited = time.monotonic() - started
    assert [r.status for r in results] == [ResultStatus.TIMED_OUT] * 2
    assert waited < 1.4
    pids = [pid_of(marker) for marker in markers]
    assert await eventually(lambda: not any(alive(pid) for pid in pids)), "a worker still runs"
    await asyncio.sleep(1.7 - (time.monotonic() - started))
    assert not any(marker.exists() for marker in markers)  # the work never finished anywhere


async def test_a_quorum_reached_cancels_the_remote_work_still_running(
    executor: RemoteExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "slow"
    async with recorded_state() as state:
        await warm(state, executor)
        async with state.parallel(max_workers=2, executor=executor, quorum=2) as p:
            # Far longer than the two quick members take however loaded the machine: the
            # quorum is reached first, and the slow one is killed (the test never waits it out).
            p.add(functools.partial(support.sleep_then_touch, str(marker), 30))
            for n in range(2):
                p.add(functools.partial(support.span, n))
            results = await p.gather()
    assert [r.status for r in results] == [
        ResultStatus.CANCELLED,
        ResultStatus.COMPLETED,
        ResultStatus.COMPLETED,
    ]
    if started(marker):  # (else it was still on its way to a worker: it never ran)
        pid = pid_of(marker)
        assert await eventually(lambda: not alive(pid)), "the worker running it still runs"


async def test_fail_fast_cancels_the_remote_work_of_the_others(
    executor: RemoteExecutor, tmp_path: Path
) -> None:
    markers = [tmp_path / f"m{n}" for n in range(2)]
    async with recorded_state() as state:
        await warm(state, executor)
        with pytest.raises(ValueError, match="first failure"):
            async with state.parallel(
                max_workers=2, executor=executor, error_strategy=ErrorStrategy.FAIL_FAST
            ) as p:
                # (30 s: far longer than the failure takes however loaded the machine; the
                # test never waits them out, they are killed.)
                p.add(functools.partial(support.sleep_then_touch, str(markers[0]), 30))
                p.add(functools.partial(support.fails, "first failure", 0.2))
                p.add(functools.partial(support.sleep_then_touch, str(markers[1]), 30))
    assert p.statistics().cancelled == 2  # the one running and the one waiting
    pid = pid_of(markers[0])
    assert await eventually(lambda: not alive(pid)), "the worker running it still runs"
    assert not started(markers[1])
    await asyncio.sleep(1.4)
    assert not any(marker.exists() for marker in markers)


@pytest.mark.parametrize("stop", ["fail_fast", "quorum"])
async def test_a_stop_never_starts_the_requests_waiting_for_the_process_it_frees(
    stop: str, tmp_path: Path
) -> None:
    # With one process, the reply of the member that stopped its group (a failure under
    # FAIL_FAST, the success reaching a quorum) sent the next waiting request to that
    # process at once, before the member had stopped the group: the request started, to be
    # killed a moment later, whatever it had done meanwhile kept.
    gate = tmp_path / "gate"
    markers = [tmp_path / f"m{n}" for n in range(1, 5)]
    options: dict[str, Any] = (
        {"error_strategy": ErrorStrategy.FAIL_FAST} if stop == "fail_fast" else {"quorum": 1}
    )
    with ProcessExecutor(max_processes=1) as pool:
        pool.start()
        (pid,) = pool.pids
        state = ExecutionState(watchdog=None)
        with contextlib.suppress(ValueError):
            async with state.parallel(max_workers=5, executor=pool, **options) as p:
                p.add(functools.partial(support.waits_for, str(gate), stop == "fail_fast"))
                for marker in markers:
                    p.add(functools.partial(support.sleep_then_touch, str(marker), 0))
                await until(lambda: pool.waiting == 4)  # the first one holds the process
                gate.touch()
        assert p.statistics().cancelled == 4
        assert pool.pids == [pid]  # never given another request (which it would be killed for)
        assert not any(started(marker) for marker in markers)


async def test_a_worker_that_dies_fails_its_member_with_a_remote_execution_error(
    executor: RemoteExecutor,
) -> None:
    async with recorded_state() as state:
        died, fine = await state.parallel_execute(
            [support.dies, functools.partial(support.span, 1)], executor=executor
        )
    assert fine.ok
    assert died.status is ResultStatus.FAILED
    assert isinstance(died.exception, RemoteExecutionError), died.error


# --- a resumed run ---------------------------------------------------------------------------


class Counting:
    """An executor that counts the handlers it is asked to run, by address, and passes
    everything on to the executor it wraps (an executor of one's own: the three methods)."""

    def __init__(self, inner: RemoteExecutor) -> None:
        self.inner = inner
        self.name = inner.name
        self.handlers: list[str] = []

    def check_member(self, source: Any, label: str) -> None:
        self.inner.check_member(source, label)

    def check_function(self, fn: Any, label: str) -> None:
        self.inner.check_function(fn, label)

    def run_handler(self, state: Any, event: Any, validated: Any, context: str, frame: Any) -> Any:
        self.handlers.append(frame.address)
        return self.inner.run_handler(state, event, validated, context, frame)

    def run_callable(self, state: Any, frame: Any, fn: Any) -> Any:
        return self.inner.run_callable(state, frame, fn)


async def test_a_resumed_run_never_asks_the_executor_for_finished_members(
    executor: RemoteExecutor, tmp_path: Path
) -> None:
    backend = SQLiteBackend(tmp_path / "state.db")
    failing = tmp_path / "failing"
    failing.write_text("yes")
    event = ExecutionEvent(actor=support.fragile_tool)

    async def run(state: ExecutionState, counting: Counting) -> list[Any]:
        return await state.parallel_execute(
            [
                event(Item(n=n, path=str(failing) if n in (1, 3) else ""), "", state)
                for n in range(5)
            ],
            max_workers=2,
            executor=counting,
            name="docs",
        )

    first = Counting(executor)
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        results = await run(state, first)
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert sorted(first.handlers) == [f"docs[{n}]::fragile" for n in range(5)]

    failing.unlink()
    second = Counting(executor)
    async with ExecutionState.resume("r", backend=backend) as state:
        results = await run(state, second)
    assert [r.result for r in results] == [0, 2, 4, 6, 8]
    assert [r.source for r in results] == ["replay", "run", "replay", "run", "replay"]
    assert sorted(second.handlers) == ["docs[1]::fragile", "docs[3]::fragile"]
    backend.close()


# --- what cannot be sent ---------------------------------------------------------------------


async def test_a_coroutine_member_is_refused_when_added_naming_it(
    executor: RemoteExecutor,
) -> None:
    async with recorded_state() as state, state.parallel(executor=executor, name="g") as p:
        coroutine = support.async_span(1)
        with pytest.raises(InvalidMemberError, match=r"member 0 \('first'\) of group 'g'.*corout"):
            p.add("first", coroutine)
        assert coroutine.cr_frame is None  # closed: no "never awaited" warning


async def test_what_the_process_pool_cannot_send_is_refused_before_anything_runs(
    process_pool: ProcessExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    module = types.ModuleType("made_at_run_time")
    exec("def work():\n    return 1\n", module.__dict__)
    sys.modules["made_at_run_time"] = module

    def local(input: Item, context: str, state: ExecutionState) -> int:
        return 1

    local_tool = Tool(name="local", input_model=Item, handler=local)
    try:
        async with recorded_state() as state:
            for bad, match in [
                (lambda: 1, r"member 1 of group 'parallel'.*lambda"),
                (module.work, "made_at_run_time.*cannot import"),
                (ExecutionEvent(actor=local_tool)(Item(), "", state), "local"),
            ]:
                with pytest.raises(InvalidMemberError, match=match):
                    await state.parallel_execute(
                        [functools.partial(support.sleep_then_touch, str(marker), 0), bad],
                        executor=process_pool,
                    )
            with pytest.raises(InvalidMemberError, match=r"map.*lambda"):
                async for _ in state.parallel_map(lambda x: x, range(3), executor=process_pool):
                    pass
    finally:
        del sys.modules["made_at_run_time"]
    await asyncio.sleep(0.1)
    assert not marker.exists() and not started(marker)  # nothing ran


async def test_ray_sends_lambdas_and_local_functions_by_value(ray_cluster: RayExecutor) -> None:
    offset = 10

    def local(input: Item, context: str, state: ExecutionState) -> int:
        return input.n + offset

    async with recorded_state() as state:
        results = await state.parallel_execute(
            [
                lambda: offset + 1,
                ExecutionEvent(actor=Tool(name="local", input_model=Item, handler=local))(
                    Item(n=5), "", state
                ),
            ],
            executor=ray_cluster,
        )
    assert [r.result for r in results] == [11, 15]


def test_an_unknown_executor_is_a_configuration_error_naming_the_choices() -> None:
    state = ExecutionState()
    with pytest.raises(ConfigurationError, match=r"unknown executor 'proceses'.*'processes'"):
        state.parallel(executor="proceses")
    assert GroupOptions.of(executor="loop").executor is None
    assert GroupOptions.of(executor="processes").executor is shared_processes()
    with pytest.raises(ConfigurationError, match="max_processes"):
        ProcessExecutor(max_processes=0)


async def test_calls_made_over_there_join_the_drivers_history_and_checkpoints(
    executor: RemoteExecutor, tmp_path: Path
) -> None:
    event = ExecutionEvent(actor=support.orchestrator)
    addresses: dict[str, list[str]] = {}
    for where in ("loop", "remote"):
        backend = SQLiteBackend(tmp_path / f"{where}.db")
        async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
            await state.parallel_execute(
                [event(Item(n=n), "", state) for n in range(2)],
                max_workers=2,
                name="docs",
                executor=None if where == "loop" else executor,
            )
            addresses[where] = sorted(state.history.addresses())
        assert sorted(backend.load("r")) == addresses[where]
        backend.close()
    assert addresses["remote"] == addresses["loop"]
    assert "docs[1]::orchestrator::inner[0]::double" in addresses["remote"]
    assert len(addresses["remote"]) == 2 * 5


# --- Ray: members on a pool of actors ---------------------------------------------------------


@pytest.fixture
def own_ray(ray_cluster: RayExecutor) -> Iterator[Any]:
    """Makes RayExecutors of a test's own on the session's Ray. The pool's actors hold a CPU
    each while they live: the shared executor's idle ones are released first (else the new
    executor's actors wait for their CPUs), and the test's own after it."""
    made: list[RayExecutor] = []

    def make(**options: Any) -> RayExecutor:
        ray_cluster.release()
        executor = RayExecutor(**options)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.release()


@pytest.mark.timeout(30)
async def test_ray_members_run_on_actors_made_once_and_reused(ray_cluster: RayExecutor) -> None:
    async with recorded_state() as state:
        groups = [
            await state.parallel_execute(
                [functools.partial(support.span, n, 5) for n in range(8)],
                max_workers=2,
                executor=ray_cluster,
            )
            for _ in range(2)
        ]
    first, second = ({r.result.pid for r in results} for results in groups)
    assert len(first) <= 2  # one actor per member in flight, at most
    assert second <= first  # the next group reuses them
    assert 1 <= ray_cluster.live_actors <= 2


@pytest.mark.timeout(30)
async def test_ray_max_actors_bounds_the_members_running_at_once(own_ray: Any) -> None:
    one = own_ray(max_actors=1)
    async with recorded_state() as state:
        results = await state.parallel_execute(
            [functools.partial(support.span, n, 0, 0.05) for n in range(4)],
            max_workers=2,
            executor=one,
        )
    assert all(r.ok for r in results)
    assert support.peak([r.result for r in results]) == 1
    assert len({r.result.pid for r in results}) == 1
    assert one.live_actors == 1


@pytest.mark.timeout(30)
async def test_a_cancelled_members_actor_is_killed_and_replaced_when_needed(
    own_ray: Any, tmp_path: Path
) -> None:
    one = own_ray(max_actors=1)
    marker = tmp_path / "slow"
    async with recorded_state() as state:
        await state.parallel_execute([functools.partial(support.span, 0)], executor=one)  # (up)
    async with recorded_state() as state, state.parallel(max_workers=1, executor=one) as p:
        p.add(functools.partial(support.sleep_then_touch, str(marker), 1.5), timeout=0.3)
        p.add(functools.partial(support.span, 1))
        results = await p.gather()
    assert [r.status for r in results] == [ResultStatus.TIMED_OUT, ResultStatus.COMPLETED]
    killed = pid_of(marker)
    assert await eventually(lambda: not alive(killed)), "the actor running it still runs"
    assert results[1].result.pid != killed  # a new actor ran the next member
    assert one.live_actors == 1
    assert not marker.exists()  # (and never will: its process is gone)


@pytest.mark.timeout(30)
async def test_idle_actors_end_after_idle_timeout_giving_their_cpus_back(own_ray: Any) -> None:
    brief = own_ray(idle_timeout=0.2)
    async with recorded_state() as state:
        results = await state.parallel_execute(
            [functools.partial(support.span, n, 0, 0.05) for n in range(2)],
            max_workers=2,
            executor=brief,
        )
    pids = {r.result.pid for r in results}
    assert await eventually(lambda: brief.live_actors == 0, within=3)
    assert await eventually(lambda: not any(alive(pid) for pid in pids), within=3)


@pytest.mark.timeout(30)
async def test_ray_tasks_still_run_members_and_cancel_them(own_ray: Any, tmp_path: Path) -> None:
    tasks = own_ray(actors=False)
    marker = tmp_path / "slow"
    recorder = Recorder()
    async with recorded_state() as state:
        await warm(state, tasks)  # (so that the member's task starts well before its timeout)
    async with (
        recorded_state(recorder) as state,
        state.parallel(max_workers=2, name="docs", executor=tasks) as p,
    ):
        p.add(functools.partial(support.sleep_then_touch, str(marker), 1.5), timeout=0.5)
        p.add(ExecutionEvent(actor=support.orchestrator)(Item(n=1), "", state))
        results = await p.gather()
    assert [r.status for r in results] == [ResultStatus.TIMED_OUT, ResultStatus.COMPLETED]
    assert results[1].result == [2, 4, 0, 2]
    assert tasks.live_actors == 0
    shapes = [support.record_shape(r) for r in recorder.records]
    assert ("event.completed", "docs[1]::orchestrator::double#2", "docs", 1, True) in shapes
    if started(marker):
        pid = pid_of(marker)
        assert await eventually(lambda: not alive(pid)), "the task's worker still runs"


def test_ray_executor_options_are_checked_when_made() -> None:
    for options, match in [
        ({"max_actors": 0}, "max_actors"),
        ({"max_actors": 1.5}, "max_actors"),
        ({"idle_timeout": -1}, "idle_timeout"),
        ({"num_cpus": -1}, "num_cpus"),
    ]:
        with pytest.raises(ConfigurationError, match=match):
            RayExecutor(**options)
    assert "actors=False" in repr(RayExecutor("auto", actors=False))


def test_a_script_read_from_stdin_is_refused_at_add_not_by_dying_workers() -> None:
    # The workers (forkserver) run the main script again from its file: '<stdin>' is none,
    # and every worker died as it started, even for a member of a real module.
    import subprocess

    script = (
        "import asyncio, functools, math\n"
        "from rh_agents import ExecutionState, ProcessExecutor\n"
        "async def main():\n"
        "    state = ExecutionState(watchdog=None)\n"
        "    with ProcessExecutor(max_processes=1) as pool:\n"
        "        try:\n"
        "            async with state.parallel(executor=pool) as p:\n"
        "                p.add(functools.partial(math.factorial, 5))\n"
        "        except Exception as exc:\n"
        "            print(type(exc).__name__, exc)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("InvalidMemberError member 0 of group 'parallel'")
    assert "('<stdin>') is not a file" in done.stdout


async def test_a_worker_that_dies_leaving_a_helper_fails_its_member_at_once(
    tmp_path: Path,
) -> None:
    # Death was seen only as the end of the worker's pipe, which the helper it forked kept
    # open: the group waited for as long as the helper lived, and the helper outlived it.
    pid_file = tmp_path / "helper.pid"
    with ProcessExecutor(max_processes=1) as pool:
        state = ExecutionState(watchdog=None)
        async with state.parallel(executor=pool) as p:
            p.add(functools.partial(support.dies_leaving_a_helper, str(pid_file)))
        (result,) = await asyncio.wait_for(p.gather(), 30)  # not the helper's 60 s
    assert isinstance(result.exception, RemoteExecutionError), result.error
    helper = int(pid_file.read_text())

    def ended() -> bool:
        try:
            stat = Path(f"/proc/{helper}/stat").read_text().split()
        except FileNotFoundError:
            return True
        return stat[2] in ("Z", "X")  # killed, left for its parent to reap

    for _ in range(200):  # the kill is sent; the helper ends shortly
        if ended():
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"the helper process {helper} outlived its worker's group")


@pytest.mark.parametrize(("member", "ended"), [("exit", "exit code 3"), ("signal", "SIGKILL")])
async def test_a_crashed_worker_is_described_without_the_start_up_hint(
    member: str, ended: str
) -> None:
    # Every crash of a fresh worker said "it had answered no request yet: if it died while
    # starting, check `if __name__ == '__main__':`...", and a signal showed as -9.
    pool = ProcessExecutor(max_processes=1)
    try:
        state = ExecutionState(watchdog=None)
        crash = support.dies if member == "exit" else support.kills_itself
        (result,) = await state.parallel_execute([crash], executor=pool)
    finally:
        pool.close()
    assert isinstance(result.exception, RemoteExecutionError)
    assert ended in (result.error or "")
    assert "__main__" not in (result.error or "")


async def test_a_value_the_driver_cannot_rebuild_fails_clearly_and_keeps_the_calls() -> None:
    # The whole reply was one pickle: the value's TypeError (an __init__ that takes two
    # arguments) came up bare, and the member's calls and records were lost with it.
    pool = ProcessExecutor(max_processes=1)
    try:
        async with recorded_state() as state:
            (result,) = await state.parallel_execute(
                [functools.partial(support.calls_then_returns_unrebuildable, 3, state)],
                executor=pool,
            )
    finally:
        pool.close()
    assert isinstance(result.exception, RemoteExecutionError), result.error
    assert "cannot be rebuilt here" in (result.error or "")
    assert [entry.result.result for entry in state.history] == [6]


async def test_calls_of_a_stream_only_group_over_there_are_checkpointed_on_the_driver(
    executor: RemoteExecutor, tmp_path: Path
) -> None:
    # The worker's history left out the calls of its parallel_map (a group keeping no
    # results keeps no history): they never came home, and a resume ran them again.
    backend = SQLiteBackend(tmp_path / "state.db")
    state = ExecutionState(run_id="r", recovery=Recovery(backend))
    async with state, state.parallel(max_workers=1, name="docs", executor=executor) as p:
        p.add(functools.partial(support.maps_inside, state))
        results = await p.gather()
    assert [r.result for r in results] == [3]
    assert sorted(backend.load("r")) == [f"docs[0]::inner[{n}]::double" for n in range(3)]


async def test_a_cacheable_actors_handler_runs_on_the_groups_executor(
    process_pool: ProcessExecutor,
) -> None:
    # A cache miss runs the call the cache shares with later callers: still the member's
    # own call, whose handler goes to the group's executor (it ran in a thread of the driver,
    # where no timeout could stop it).
    async with ExecutionState(cache=ActorCache()) as state:
        event = ExecutionEvent(actor=support.cached_span_tool)
        results = await state.parallel_execute(
            [event(Item(n=n), "", state) for n in range(2)], max_workers=2, executor=process_pool
        )
    assert [r.ok for r in results] == [True, True]
    assert os.getpid() not in {r.result.pid for r in results}


def _pid() -> int:
    return os.getpid()


# The group left on the closed loop is collected unfinished (that loop can never run it
# again): what its collection says is not what this test is about.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::rh_agents.errors.UnusedGroupWarning")
@pytest.mark.parametrize("when", ["running", "queued"])
def test_a_pool_serves_the_next_loop_after_one_closed_with_its_members_in_it(
    tmp_path: Path, when: str
) -> None:
    # A loop closed (new_event_loop, run_until_complete, close: not asyncio.run) with a
    # member running in the pool left its process busy for good (its reply's reader went
    # with the loop): the next loop's members waited for it until their timeout. With its
    # requests still queued, the process started for them told only the closed loop, and
    # the next loop's members waited for it too.
    pool = ProcessExecutor(max_processes=1)
    path = tmp_path / "first"
    try:
        if when == "running":
            pool.start()
        _close_a_loop_with_members_in(pool, path, when)

        async def later() -> list[Any]:
            async with ExecutionState(watchdog=None) as again:
                results = await again.parallel_execute([_pid, _pid], executor=pool, timeout=30)
            return [(r.status, r.error) for r in results]

        assert asyncio.run(later()) == [(ResultStatus.COMPLETED, None)] * 2
        assert (pool.running, pool.waiting) == (0, 0)
        assert not path.exists()  # the abandoned member was stopped, not finished
    finally:
        pool.close()
        # What the closed loop left (its group, its tasks: the pool let go of them) is
        # collected here, under this test's filters, not in some later test.
        gc.collect()


def _close_a_loop_with_members_in(pool: ProcessExecutor, path: Path, when: str) -> None:
    """Run two members on ``pool`` from a loop, and close the loop with one running in a
    process (``when="running"``) or both waiting for one (``"queued"``)."""
    loop = asyncio.new_event_loop()
    state = ExecutionState(watchdog=None)
    first = functools.partial(support.sleep_then_touch, str(path), 30)

    async def start() -> asyncio.Future[Any]:
        return asyncio.ensure_future(state.parallel_execute([first, first], executor=pool))

    loop.run_until_complete(start())
    if when == "running":
        for _ in range(3000):  # (its worker writes the pid file as the member starts)
            loop.run_until_complete(asyncio.sleep(0.01))
            if Path(f"{path}.pid").exists():
                break
        assert pool.running == 1
    else:
        # (Both wait for the process starting, or one runs already: one waits, at least.)
        loop.run_until_complete(until(lambda: pool.waiting + pool.running == 2))
        assert pool.waiting >= 1
    loop.close()


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return True
    return stat[0] in ("Z", "X")  # killed, left for its parent to reap


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see processes")
async def test_a_process_a_member_left_running_ends_with_its_pool(tmp_path: Path) -> None:
    # The member returned, leaving a process it started (a subprocess, in its worker's
    # process group) running: it outlived the pool's close() and the driver's exit.
    pid_file = tmp_path / "helper.pid"
    pool = ProcessExecutor(max_processes=1)
    try:
        state = ExecutionState(watchdog=None)
        (result,) = await state.parallel_execute(
            [functools.partial(support.starts_and_leaves, str(pid_file))], executor=pool
        )
        assert result.ok, result.error
        helper = int(pid_file.read_text())
        assert not _gone(helper)  # (it runs on while its worker waits for the next member)
    finally:
        pool.close()  # the worker ends, and takes what its members left with it
    for _ in range(200):
        if _gone(helper):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"process {helper}, left by a member, outlived its pool")


async def test_one_pool_serves_the_loops_of_two_threads() -> None:
    # Each thread with its own loop and state, one pool between them: the pool handed one
    # loop's requests to processes from the other's thread and watched their pipes from
    # there ("Exception in callback ... FileExistsError", "KeyError: N is not registered"),
    # with its lists changed by two threads at once. A loop's pipes are watched from its
    # own thread only.
    pool = ProcessExecutor(max_processes=2)
    outcomes: list[tuple[int, list[Any], bool]] = []
    wrong_thread: list[str] = []

    def thread() -> None:
        async def run() -> None:
            errors: list[Any] = []
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
            owner = threading.get_ident()
            watch = loop.add_reader
            watched = [0]

            def add_reader(*args: Any) -> None:
                watched[0] += 1
                if threading.get_ident() != owner:
                    wrong_thread.append(threading.current_thread().name)
                watch(*args)

            try:
                loop.add_reader = add_reader  # type: ignore[method-assign]
            except AttributeError:  # (uvloop's loop: its methods cannot be replaced)
                watched[0] = 1
            async with ExecutionState(watchdog=None) as state:
                results = await state.parallel_execute(
                    [functools.partial(support.span, i) for i in range(150)],
                    executor=pool,
                    max_workers=3,
                )
            outcomes.append((sum(r.ok for r in results), errors, watched[0] > 0))

        asyncio.run(run())

    try:
        threads = [threading.Thread(target=thread) for _ in range(2)]
        for each in threads:
            each.start()
        for each in threads:
            await asyncio.to_thread(each.join, 120)
    finally:
        pool.close()
    assert wrong_thread == []
    assert outcomes == [(150, [], True), (150, [], True)]
