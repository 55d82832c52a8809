"""``ExecutionState``: everything one run shares, and the way into parallel execution.

::

    bus = EventBus()
    bus.subscribe(EventPrinter())
    state = ExecutionState(event_bus=bus, global_max_workers=10)
    result = await ExecutionEvent(actor=summarize)(doc, "", state)
    async with state.parallel(max_workers=5, name="docs") as p:
        ...
    results = await state.parallel_execute([...], max_workers=3)

The state holds the bus, the history of finished calls keyed by address, a small key-value
``store`` for actors to share values, the optional global worker limit, and the clock. The
current position in the execution tree is not stored here but in a ``contextvars`` context
(see ``rh_agents.core.context``), so concurrent tasks never see each other's addresses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel

from rh_agents.core import hooks
from rh_agents.core.bus import EventBus
from rh_agents.core.clock import Clock, SystemClock
from rh_agents.core.context import Frame, running_frame
from rh_agents.core.history import ExecutionHistory
from rh_agents.core.hooks import NO_INPUT
from rh_agents.core.interrupt import interrupt_requested
from rh_agents.core.parallel.executing import close_abandoned, join_closings
from rh_agents.core.parallel.manager import ParallelExecutionManager
from rh_agents.core.parallel.member import Member
from rh_agents.core.parallel.metrics import ResourceUsage
from rh_agents.core.parallel.options import GroupOptions
from rh_agents.core.parallel.slots import SlotArbiter
from rh_agents.core.parallel.strategy import BatchMode, ErrorStrategy
from rh_agents.core.records import RunInterrupted, _placed
from rh_agents.core.results import ExecutionResult
from rh_agents.core.run_ids import check_run_id
from rh_agents.core.threads import ThreadRunner
from rh_agents.core.watch import RunWatch
from rh_agents.core.watchdog import RunResources, Watchdog
from rh_agents.errors import ConfigurationError, ParallelError
from rh_agents.resilience.adaptive import AdaptiveLimit
from rh_agents.resilience.breaker import BreakerRegistry, CircuitBreaker
from rh_agents.resilience.checks import check_policy
from rh_agents.resilience.rate_limit import RateLimit, RateLimiterRegistry
from rh_agents.resilience.retry import RetryPolicy

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.parallel.member import Member

__all__ = ["EventBus", "ExecutionState"]

# Loop turns close() gives the finalizers of dropped async generators (asyncio schedules their
# aclose() from a hook: a turn to make its task, one to run it) before it calls a group open.
_FINALIZER_TURNS = 10

logger = logging.getLogger("rh_agents")


class ExecutionState:
    """The shared state of one run; see the module docstring.

    ``global_max_workers`` caps the members running at once over every group of this state
    (a member waiting on its own nested group lends its slot, so nesting never deadlocks).
    ``max_threads`` caps the worker threads running synchronous handlers at once (default
    ``min(32, cpus + 4)``; see ``rh_agents.core.threads``). ``watchdog`` says what to warn
    about while groups run (a member holding the event loop, members that never await) and
    measures what they use (``resource_usage()``); ``None`` turns it off (see
    ``rh_agents.core.watchdog``).
    """

    def __init__(
        self,
        event_bus: EventBus | None = None,
        *,
        global_max_workers: int | None = None,
        clock: Clock | None = None,
        run_id: str | None = None,
        retry: RetryPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        recovery: hooks.RecoveryHook | None = None,
        cache: hooks.ResultCache | None = None,
        rate_limit: RateLimit | None = None,
        max_threads: int | None = None,
        watchdog: Watchdog | None = Watchdog(),
    ) -> None:
        _check_parts(event_bus, clock, recovery, cache)
        self.event_bus = event_bus if event_bus is not None else EventBus()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.global_slots = (
            SlotArbiter(global_max_workers) if global_max_workers is not None else None
        )
        check_policy("retry", retry, RetryPolicy)
        check_policy("circuit_breaker", circuit_breaker, CircuitBreaker)
        check_policy("rate_limit", rate_limit, RateLimit)
        # The one rule for run ids, with a store or without (a run id names the run in
        # records, traces and the viewer as well).
        self.run_id = check_run_id(run_id) if run_id is not None else None
        self.retry = retry
        self.circuit_breaker = circuit_breaker
        # resilience: a state-wide rate limit; circuits and buckets shared by key
        self.rate_limit = rate_limit
        self.breakers = BreakerRegistry(self.clock)
        self.rate_limiters = RateLimiterRegistry()
        if rate_limit is not None:
            # Its key's settings, fixed now: a group naming the key with others is refused.
            self.rate_limiters.claim(rate_limit, "ExecutionState(rate_limit=...)")
        # The engine that applies policies to calls (installed by rh_agents.engines).
        self.call_runner = hooks.call_runner()
        # The worker threads of synchronous handlers (made when first needed).
        self.threads = ThreadRunner(max_threads)
        self.history = ExecutionHistory()
        self.store: dict[str, Any] = {}
        self.root_frame = Frame(self, "")
        self.replay_publishes = False
        self._entered = False  # inside `async with state:` (the bus counts the runs open)
        # An observer's log of calls and members (the run viewer's; see core/watch.py), and
        # the groups open now, by id (each group adds itself as it starts, leaves as it ends).
        self.watch: RunWatch | None = None
        # (Weak: a group entered by hand and dropped must still be collected, and warn.)
        self.open_groups: weakref.WeakValueDictionary[str, ParallelExecutionManager[Any]] = (
            weakref.WeakValueDictionary()
        )
        self.internal_errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # of the last group opened
        # Held while a group checks the loop it opens on and joins open_groups (claim_loop):
        # the one step of a state that another thread may take at the same moment.
        self.loop_lock = threading.Lock()
        self._closed = False  # close() ran: nothing may run on it any more (see closed)
        # The frames of the event calls running now, in any task (see close()).
        self.running_calls: set[Frame] = set()
        if watchdog is not None and not isinstance(watchdog, Watchdog):
            raise ConfigurationError(
                f"watchdog must be a Watchdog (rh_agents.core.watchdog) or None, got {watchdog!r}"
            )
        self.watchdog = watchdog
        # What the run's outermost groups used (resource_usage()), filled as each one ends.
        self.run_resources = RunResources()
        # Recovery and cache (rh_agents.recovery): checkpoints by address, replay, reuse.
        self.cache = cache
        self.recovery = recovery
        if recovery is not None:
            self.run_id = recovery.attach(self)

    @classmethod
    def resume(cls, run_id: str, backend: Any = None, **options: Any) -> ExecutionState:
        """A state that resumes run ``run_id``: run the same code again with it.

        ``replay=``, ``resume_from=``, ``checkpoint=`` and ``match_inputs=`` go to
        ``Recovery``; the other options to ``ExecutionState``. See ``rh_agents.recovery``.
        """
        if "recovery" in options:
            raise ConfigurationError(
                "ExecutionState.resume(run_id, backend, ...) makes the run's Recovery itself: "
                "give it the store (backend=, a path or a backend) and the Recovery options "
                "(replay=, resume_from=, checkpoint=, match_inputs=), not recovery=; "
                "or make ExecutionState(run_id=..., recovery=Recovery(..., resume=True)) yourself"
            )
        keys = ("replay", "resume_from", "checkpoint", "match_inputs")
        extra = {key: options.pop(key) for key in keys if key in options}
        recovery = hooks.resume_factory()(backend, **extra)
        return cls(run_id=run_id, recovery=recovery, **options)

    def resource_usage(self) -> ResourceUsage | None:
        """What the process used while this run's groups ran (its outermost groups, so far):
        the first group's start, the highest peaks, the event loop's lag over all of them.
        ``None`` before a group ended, or without a watchdog."""
        return self.run_resources.usage()

    async def save_checkpoint(self) -> None:
        """Write pending checkpoints now (a no-op without recovery)."""
        if self.recovery is not None:
            await self.recovery.save_checkpoint()

    @property
    def has_policies(self) -> bool:
        """Whether a state-wide retry, breaker or rate limit applies to every call."""
        return not (self.retry is None and self.circuit_breaker is None and self.rate_limit is None)

    @property
    def global_max_workers(self) -> int | None:
        return self.global_slots.limit if self.global_slots is not None else None

    def claim_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """A group of this state opens on ``loop``: refuse it while groups of the state run
        on another loop still running (another thread's), whose slots, bus and groups this
        one would share unsynchronised. One loop after another (``asyncio.run`` twice, a
        test per loop) is fine. Called under ``loop_lock``, with the group's registration."""
        if self._loop is loop:
            return
        busy = self._groups_running_elsewhere(loop)
        if busy:
            raise ConfigurationError(
                f"this ExecutionState has groups running on another event loop "
                f"({', '.join(busy[:3])}), in another thread: a state is not thread-safe. "
                "Give each thread's loop an ExecutionState of its own, or hand the work "
                "to the state's loop (asyncio.run_coroutine_threadsafe)"
            )
        self._loop = loop

    def _groups_running_elsewhere(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        """The groups of this state open on another loop that still runs (another thread's;
        a closed or stopped loop's are left over, not running)."""
        return [
            group.group_id
            for group in list(self.open_groups.values())
            if group._loop is not None
            and group._loop is not loop
            and not group._finalized
            and not group._loop.is_closed()
            and group._loop.is_running()
        ]

    # --- parallel execution -----------------------------------------------------------------

    def parallel(
        self,
        max_workers: int | str | AdaptiveLimit = 5,
        *,
        name: str | None = None,
        error_strategy: ErrorStrategy | str = ErrorStrategy.FAIL_SLOW,
        timeout: float | None = None,
        member_timeout: float | None = None,
        failure_threshold: float | None = None,
        quorum: int | None = None,
        raise_exception_group: bool = False,
        retry: RetryPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        batch_mode: BatchMode | str = BatchMode.GATHER,
        executor: Any = None,
        retain_results: bool = True,
    ) -> ParallelExecutionManager[Any]:
        """A parallel group, used as ``async with state.parallel(...) as p:``.

        - ``max_workers``: members of this group running at once (default 5).
        - ``name``: the group's name in addresses (``parent::name[i]``); default ``parallel``.
        - ``error_strategy``: ``FAIL_SLOW`` (default), ``FAIL_FAST`` or ``FAIL_THRESHOLD`` with
          ``failure_threshold`` (a count, or a fraction of the members).
        - ``raise_exception_group``: raise a ``GroupFailedError`` (an ``ExceptionGroup``) of
          every failure at the end, partial results in ``.results``.
        - ``quorum``: stop as soon as that many members succeeded, cancelling the rest.
        - ``timeout``: for the whole group; ``member_timeout``: for each member. Finished
          results are always kept.
        - ``retry`` / ``circuit_breaker``: group-level policies (an event's or actor's own
          policy wins over them); ``rate_limit``: a ``RateLimit`` for this group's calls.
        - ``max_workers`` may also be ``"auto"`` or an ``AdaptiveLimit(min, max)``.
        - ``batch_mode``: what ``p.execute_parallel(events)`` returns (``BatchMode``: a list
          by default, a dict, or a stream of results in completion order).
        - ``executor``: where the members run: the event loop (``None``, the default),
          ``"processes"`` (a pool of worker processes, for CPU-bound work) or a
          ``RayExecutor(address=...)`` (a Ray cluster); see ``docs/executors.md``.
        - ``retain_results=False``: keep no results (read them with ``stream()`` as they
          complete): memory stays O(max_workers) however many members.
        """
        options = GroupOptions.of(
            max_workers=max_workers,
            name=name,
            error_strategy=error_strategy,
            timeout=timeout,
            member_timeout=member_timeout,
            failure_threshold=failure_threshold,
            quorum=quorum,
            raise_exception_group=raise_exception_group,
            retry=retry,
            circuit_breaker=circuit_breaker,
            rate_limit=rate_limit,
            batch_mode=batch_mode,
            executor=executor,
            retain_results=retain_results,
        )
        return ParallelExecutionManager(self, options)

    @overload
    async def parallel_execute(
        self, members: Mapping[str, Any], max_workers: int = 5, **options: Any
    ) -> dict[str, ExecutionResult[Any]]: ...

    @overload
    async def parallel_execute(
        self, members: Iterable[Any], max_workers: int = 5, **options: Any
    ) -> list[ExecutionResult[Any]]: ...

    async def parallel_execute(
        self, members: Iterable[Any] | Mapping[str, Any], max_workers: int = 5, **options: Any
    ) -> list[ExecutionResult[Any]] | dict[str, ExecutionResult[Any]]:
        """Run ``members`` in one group and return their results.

        A list gives a list in the same order; a dict gives a dict with the same keys::

            results = await state.parallel_execute([e(a, "", state), e(b, "", state)])
            named = await state.parallel_execute({"a": e(a, "", state)}, max_workers=3)

        ``dependencies`` runs members after others: by position for a list
        (``dependencies={1: [0]}``), by name or position for a dict (``{"b": ["a"]}``). An
        unknown member, a self-dependency or a cycle is rejected before anything runs. The
        other options are those of ``parallel()``; ``batch_mode`` picks another shape of
        result (see ``ParallelExecutionManager.execute_parallel``).
        """
        dependencies: Mapping[Any, Iterable[Any]] | None = options.pop("dependencies", None)
        options.setdefault(
            "batch_mode",
            BatchMode.GATHER_DICT if isinstance(members, Mapping) else BatchMode.GATHER,
        )
        try:
            group = self.parallel(max_workers, **options)
        except BaseException:
            _close_all(members.values() if isinstance(members, Mapping) else members)
            raise
        return await group.execute_parallel(members, dependencies)  # type: ignore[no-any-return]

    async def parallel_map(
        self,
        func: Any,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        max_workers: int = 5,
        name: str | None = None,
        context: str = "",
        **options: Any,
    ) -> AsyncGenerator[ExecutionResult[Any], None]:
        """Map ``func`` (an async function of one item, or an ``ExecutionEvent``) over
        ``items`` and yield results in completion order, holding O(max_workers) items::

            async for result in state.parallel_map(summarize_event, read_lines(path),
                                                   max_workers=100):
                ...

        Items are pulled only as workers free up and results are not kept after they are
        yielded, so an input of any length (sync or async iterable) runs in bounded memory.
        Each result's ``index`` is the item's position in ``items``. To stop early, wrap
        the iterator in ``contextlib.aclosing`` so the workers stop at once rather than when
        the generator is garbage-collected.
        """
        if "retain_results" in options:
            # (Not passed on: it would be a duplicate keyword, a bare TypeError.)
            raise ConfigurationError(
                "parallel_map() keeps no results (each is yielded, then dropped): drop "
                "retain_results, or use `async with state.parallel(...) as p: p.map(...)` "
                "and `await p.gather()` to keep them"
            )
        manager: ParallelExecutionManager[Any] = ParallelExecutionManager(
            self, max_workers=max_workers, name=name, retain_results=False, **options
        )
        manager._stream_owned = True  # (close() ends it if the generator is still open)
        async with manager as p:
            p.map(func, items, context=context)
            async for result in p.stream():
                yield result

    # --- hooks used by events and groups (extended by resilience and recovery) --------------

    def invoke_actor(
        self, event: ExecutionEvent[Any], validated: BaseModel, context: str, frame: Frame
    ) -> Awaitable[tuple[Any, int]]:
        """Run ``event``'s actor under its retry, breaker and rate-limit policies.

        Awaitable; gives ``(value, attempts)``; see ``rh_agents.engines.policy_runner``. (It
        returns the runner's awaitable itself rather than wrapping it in one more.)
        """
        return self.call_runner.invoke_actor(self, event, validated, context, frame)

    async def run_member(
        self, group: ParallelExecutionManager[Any], member: Member, frame: Frame
    ) -> Any:
        """Run one member of ``group`` (a callable member is re-called for retries)."""
        return await self.call_runner.run_member(self, group, member, frame)

    @property
    def has_event_hooks(self) -> bool:
        """Whether ``recovered_result`` / ``on_event_finished`` do anything for an event call:
        with recovery, or overridden by a subclass (else each call skips them)."""
        cls = type(self)
        return (
            self.recovery is not None
            or cls.on_event_finished is not ExecutionState.on_event_finished
            or cls.recovered_result is not ExecutionState.recovered_result
        )

    def recovered_result(
        self, address: str, actor: BaseActor, input: Any = NO_INPUT
    ) -> ExecutionResult[Any] | None:
        """A stored result to return instead of running (replay); none without recovery.
        Given the call's ``input``, only the result of a stored call with that same input.
        ``address`` is the call's address, or its key when it repeats a call at its address
        (a retried parent's next attempt: see ``core.context.CALL_MARK``); the result's own
        ``address`` may name a later stored call that answers it (recovery passing over a
        failed one), and the call counts on from there."""
        if self.recovery is None:
            return None
        return self.recovery.recovered_result(address, actor, input)

    async def on_event_finished(
        self,
        address: str,
        actor: BaseActor,
        validated: BaseModel | None,
        result: ExecutionResult[Any],
    ) -> None:
        """Called after each event call (checkpointing hooks in here), with its address, or
        its key when it repeats a call at its address (see ``recovered_result``)."""
        if self.recovery is not None:
            await self.recovery.on_event_finished(address, actor, validated, result)

    def report_internal_error(self, exc: BaseException | None) -> None:
        if exc is None:
            return
        self.internal_errors.append(exc)
        logger.error("internal error in a parallel group worker", exc_info=exc)

    # --- lifetime -------------------------------------------------------------------------------

    async def __aenter__(self) -> ExecutionState:
        self.check_open()  # (a closed state's bus refuses too, but speaks of another run)
        if not self._entered:
            self._entered = True
            self.event_bus.open_run()  # (two states on one bus: the last to end closes it)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Held streams end first: their records and checkpoints come before the run's
            # own end (its interruption, its failure) and before the bus and store stop.
            await self._end_groups(check_groups=exc is None)
            if exc is not None:
                if isinstance(exc, asyncio.CancelledError) and interrupt_requested():
                    self._interrupted()
                elif self.recovery is not None:
                    self.recovery.mark_failed()
            await self._shut_down()
        except Exception as failure:
            if exc is None:
                raise
            # The run's own exception goes on; the close's failure is logged and noted on it.
            logger.error("closing run %r failed too: %s", self.run_id, failure, exc_info=failure)
            exc.add_note(f"Closing the run failed too: {type(failure).__name__}: {failure}")

    def _interrupted(self) -> None:
        """Ctrl-C (``rh_agents.run``) stopped the run: not a failure. The store records it as
        interrupted, and the printers get a ``RunInterrupted`` to end with (the groups have
        all ended by now: their records come first)."""
        resume = self.recovery.mark_interrupted() if self.recovery is not None else None
        bus = self.event_bus
        if bus.has_listeners:
            record = _placed(RunInterrupted, "", self.clock.now(), None, None)  # the run's root
            record.run_id = self.run_id if self.recovery is not None else None
            record.resume = resume
            bus.publish(record)

    async def close(self) -> None:
        """Write pending checkpoints, let every subscriber catch up, then stop the bus (unless
        another state inside its ``async with`` block still uses it: the last one stops it).

        Bounded: the checkpoints wait at most ``Recovery(close_timeout=...)`` for the store
        (then a ``RecoveryError``), the cache's unwritten values at most
        ``ActorCache(close_timeout=...)`` (then they are dropped, logged), the subscribers at
        most ``EventBus(shutdown_timeout=...)`` (then the busy ones are reported and
        cancelled). None of them blocks the event loop.

        Groups or calls of the state still running (another task's block not left yet or
        call not returned, a stream another task read last, a group on another thread's
        loop), or a close from inside a call or a member of the run, are refused with a
        ``ParallelError`` (from one of the bus's own subscribers, a ``ConfigurationError``),
        before anything stops: their records and checkpoints would come after the bus and
        the store had stopped, and be lost. Leave their blocks first. A stream the closing
        task read last (a ``parallel_map`` kept in a variable after a ``break``) is ended
        instead: its running members are cancelled, and reading it afterwards gives what
        had finished and the cancelled members' results, then raises ``GroupClosedError``.
        A closed state runs nothing more (``closed``; a call or a group on it raises
        ``ConfigurationError``).
        """
        await self._end_groups(check_groups=True)
        await self._shut_down()

    def _open_groups_here(self) -> list[ParallelExecutionManager[Any]]:
        loop = asyncio.get_running_loop()
        return [
            group
            for group in list(self.open_groups.values())
            if group._loop is loop and not group._finalized
        ]

    async def _settle_groups(self, skip: Callable[[str], bool]) -> None:
        """Wait for the groups of this state being left on this loop to end: an abandoned
        stream's (join_closings), and an async generator's dropped at a `break` (parallel_map
        without aclosing: the loop closes it a turn or two later, from its finalizer hook).
        Groups ``skip`` names are not waited for (the caller runs inside them, or a held
        stream they are nested in is about to be ended)."""
        await join_closings(self)
        for _ in range(_FINALIZER_TURNS):
            groups = [g for g in self._open_groups_here() if not skip(g.group_id)]
            if not any(group._stream_owned or group._leaving for group in groups):
                # Only blocks another task still runs: nothing here is ending, and waiting a
                # few turns would make the refusal below depend on whether their members
                # happen to finish in those turns.
                return
            # (A block left normally gathers for as long as its members run: not waited for.)
            leaving = [group for group in groups if group._leaving and not group._leaving_to_gather]
            if leaving:
                await asyncio.gather(*(group._wait_finalized() for group in leaving))
            else:
                await asyncio.sleep(0)

    async def _end_groups(self, check_groups: bool) -> None:
        """What ``close()`` does before it stops anything: refuse (``check_groups``) while
        groups run, wait for those being left, end held streams (see ``close``)."""
        loop = asyncio.get_running_loop()
        if check_groups:
            # A subscriber closing its own bus would stop the store, then be refused by the
            # bus: refused here, before anything changed.
            self.event_bus._check_caller("close()")
            elsewhere = self._groups_running_elsewhere(loop)
            if elsewhere:
                raise ParallelError(
                    f"close() from another event loop (another thread?) while groups of this "
                    f"state run on theirs: {', '.join(elsewhere[:3])}; close the state from "
                    "the loop that runs it, once they have ended"
                )
            frame = running_frame()
            if (
                frame is not None
                and frame.state is self
                and frame.address
                # (Live: a member without its result, a call still running. A task that a
                # finished call started copied its context, and sees its frame still.)
                and (
                    frame.result is None
                    if isinstance(frame, Member)
                    else frame in self.running_calls
                )
            ):
                # Inside a call or a member of this run: whatever it is part of ends only
                # once it has, and its own record and checkpoint come after it returns.
                raise ParallelError(
                    f"close() from inside {frame.address!r}, a call of the run it would close "
                    "(its group, or the call itself, ends only after it): close the state where "
                    "the run began, once its calls and groups have ended"
                )
        if check_groups and self.running_calls:
            # A call of the run still running in another task, outside the open groups (those
            # are judged below): its record and checkpoint would come after the bus and the
            # store stopped. (The closer's own call was refused above.)
            prefixes = tuple(f"{group.group_id}[" for group in list(self.open_groups.values()))
            outside = sorted(
                call.address
                for call in list(self.running_calls)
                if not (prefixes and call.address.startswith(prefixes))
            )
            if outside:
                raise ParallelError(
                    f"close() while a call of this run still runs in another task "
                    f"({', '.join(outside[:3])}); await it (or cancel it) before closing the "
                    "state"
                )
        if not self._open_groups_here():
            return
        frame = running_frame()
        inside = (
            set()
            if frame is None or frame.state is not self
            else {
                group.group_id
                for group in self._open_groups_here()
                if frame.address.startswith(f"{group.group_id}[")
            }
        )
        current = id(asyncio.current_task())
        # A stream this task read last (a parallel_map kept in a variable after a break, in
        # the block being left): ended below. One another task read last is running: that
        # task may be busy with a result, or step it through a helper task (wait_for).
        held = {
            group.group_id
            for group in self._open_groups_here()
            if group._stream_owned
            and group.group_id not in inside
            and group._reader in (None, current)
        }

        def under_held(group_id: str) -> bool:
            return any(group_id.startswith(f"{h}[") for h in held)

        def skipped(group_id: str) -> bool:
            return group_id in inside or group_id in held or under_held(group_id)

        await self._settle_groups(skipped)
        running = [g.group_id for g in self._open_groups_here() if not skipped(g.group_id)]
        if check_groups and running:
            raise ParallelError(
                f"close() while groups of this state still run: {', '.join(running[:3])}"
                f"{' ...' if len(running) > 3 else ''}; their records and checkpoints "
                "would come after the bus and the store stopped. Leave their blocks (await "
                "the tasks that run them, finish or close the streams they read) before "
                "closing the state"
            )
        # A held stream ends as the loop's shutdown would end it (its running members are
        # cancelled, their nested groups with them), so that its records and checkpoints
        # come before the bus and the store stop. Whoever reads it afterwards gets a
        # GroupClosedError, never a quietly shortened stream.
        for group in self._open_groups_here():
            if group.group_id in held:
                group._ended_by_close = True
                await close_abandoned(group)

    async def _shut_down(self) -> None:
        self.threads.shutdown()
        # Streams dropped without aclose() are being closed by the loop: their groups end
        # (and publish) before the bus stops.
        await join_closings(self)
        try:
            try:
                if self.recovery is not None:
                    await self.recovery.aclose()
            finally:
                # The cache's store thread: its queued writes get ActorCache(close_timeout=)
                # at most, then it is joined, so no thread outlives the run. (A cache of
                # another kind may have no such method.)
                settle = getattr(self.cache, "settle", None)
                if settle is not None:
                    await settle()
        finally:
            entered, self._entered = self._entered, False
            self._closed = True
            await self.event_bus.end_run(entered)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` ran (or ``async with state:`` was left): a closed state runs
        no more calls nor groups (their records and checkpoints would be lost)."""
        return self._closed

    def check_open(self) -> None:
        """A ``ConfigurationError`` if the state was closed."""
        if self._closed:
            raise ConfigurationError(
                "this ExecutionState was closed (its bus and its store have stopped: what ran "
                "on it now would leave no record nor checkpoint); make a new state for another "
                "run, or resume this one with ExecutionState.resume(run_id, ...)"
            )


def _check_parts(event_bus: Any, clock: Any, recovery: Any, cache: Any) -> None:
    """Refuse a part of the wrong kind when the state is made, rather than with an
    ``AttributeError`` at the first call (a printer passed as the bus, a path as recovery)."""
    problem = None
    if event_bus is not None and not isinstance(event_bus, EventBus):
        problem = (
            f"event_bus must be an EventBus, got {event_bus!r}; to print the run, subscribe the "
            "printer to a bus: bus = EventBus(); bus.subscribe(printer); "
            "ExecutionState(event_bus=bus)"
        )
    elif event_bus is not None and event_bus.closed:
        # Its subscribers were stopped: every record of this run would be dropped unseen.
        problem = (
            "event_bus was closed (leaving `async with state:` closes the state's bus), so its "
            "subscribers would receive nothing of this run; make a new EventBus for each run "
            "and subscribe the printers to it"
        )
    elif clock is not None and not isinstance(clock, Clock):
        problem = f"clock must have now() and an async sleep() (a Clock), got {clock!r}"
    elif recovery is not None and not callable(getattr(recovery, "attach", None)):
        problem = (
            f"recovery must be a Recovery (rh_agents.recovery), got {recovery!r}; for a store "
            "at a path: ExecutionState(recovery=Recovery(path))"
        )
    elif cache is not None and not (
        callable(getattr(cache, "run", None)) and callable(getattr(cache, "holds", None))
    ):
        problem = (
            f"cache must be an ActorCache (rh_agents.recovery), got {cache!r}; "
            "ExecutionState(cache=ActorCache())"
        )
    if problem is not None:
        raise ConfigurationError(problem)


def _close_all(members: Iterable[Any]) -> None:
    for member in members:
        if isinstance(member, Coroutine):  # a coroutine or an event call
            member.close()
