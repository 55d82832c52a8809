"""Running one call under its policies: rate limit, circuit breaker, retries, feedback.

``PolicyRunner`` is core's ``CallRunner`` (see ``rh_agents.core.hooks``): importing
``rh_agents.engines`` installs it, and ``ExecutionState.invoke_actor`` and
``ExecutionState.run_member`` delegate to it. Policies are
resolved nearest first: the event's, the actor's, the group's, the state's (rate limits add
up instead: a call takes a token of its group's and of the state's). A group's policies
apply to its members: to a member's own event (the event called directly by the member) and
to a callable or coroutine member itself; events nested deeper inside a member use their own,
their actor's or the state's policies. A member that is an ``ExecutionEvent`` call is left to
the event, which retries inside itself, so a group's policy is applied once per member. (A
state-wide policy reaches every level: a callable member is retried as a whole under it, and
each event call it makes is retried under it too, so those retries multiply.)

Every attempt: ask the circuit (an open one refuses at once, taking no token), take the rate
limit, check the retry deadline again (the token, or the slot a backoff lent, may come late),
run, report the outcome to the circuit and to the group's adaptive limit. Between attempts
the member gives its worker slots back (``MemberSlot.lend``) while it sleeps on the state's
clock, so other members run meanwhile.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rh_agents.core.context import Frame
from rh_agents.core.deadlines import member_ending, member_timed_out
from rh_agents.core.events import event_timed_out
from rh_agents.core.parallel.adding import _call_event
from rh_agents.core.parallel.manager import ParallelExecutionManager
from rh_agents.core.parallel.member import Member, is_event_call
from rh_agents.core.parallel.slots import MemberSlot, in_own_task, member_slot_of
from rh_agents.core.records import CircuitStateChanged, EventRetrying, _placed_in
from rh_agents.core.results import ExecutionResult, describe_error
from rh_agents.errors import ConfigurationError, InvalidMemberError
from rh_agents.resilience.breaker import Circuit, CircuitBreaker, Transition
from rh_agents.resilience.rate_limit import STATE_SCOPE, RateLimit
from rh_agents.resilience.retry import RetryPolicy
from rh_agents.resilience.signals import is_overload

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.hooks import MemberExecutor

__all__ = [
    "Policies",
    "PolicyRunner",
    "event_policies",
    "invoke_actor",
    "member_executor",
    "member_group",
    "member_policies",
    "run_attempts",
    "run_member",
]

# The scope of the state's own (keyless) rate limit (see rate_limit.STATE_SCOPE).
_STATE_SCOPE = STATE_SCOPE

# The address of the member whose group policies are applied to the member as a whole, so
# that the events it calls do not apply them a second time. An address, not a flag: a group
# opened inside that member (and its workers, which copy the context) has policies of its own.
_group_policies_taken: ContextVar[str | None] = ContextVar("rh_agents_group_policies", default=None)
# A member's own retry policy (``p.add(event_call, retry=...)``) with the member's address,
# for the event call that is the member: it wins over the group's and the state's.
_member_retry: ContextVar[tuple[str, Any] | None] = ContextVar(
    "rh_agents_member_retry", default=None
)


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _no_policy_for(state: ExecutionState, event: ExecutionEvent[Any], frame: Frame) -> bool:
    actor = event.actor
    if state.has_policies or not (
        event.retry is None
        and actor.retry is None
        and event.circuit_breaker is None
        and actor.circuit_breaker is None
    ):
        return False
    if _member_retry.get() is not None:
        return False  # a member's own policy may apply to this call (event_policies decides)
    # _plain: the group found no policy of its own when it opened (the state's are read above).
    slot = member_slot_of(frame.slot)
    return slot is None or slot.plain


def member_executor(frame: Frame) -> MemberExecutor | None:
    """The executor that runs the handler of the call in ``frame``: its group's, when the call
    is the member itself (an event call added to a group with ``executor=``; a call the cache
    shares runs on its starter's)."""
    slot = member_slot_of(frame.slot)
    if slot is None:
        return None
    manager = slot.group
    executor = manager.options.executor
    if executor is None:
        return None
    parent = frame.address.rpartition("::")[0]
    return executor if parent == f"{manager.group_id}[{frame.parallel_index}]" else None


def _makes_event_call(source: Any) -> bool:
    """Whether member ``source`` is ``map()``'s call of an event for one item: made here (it
    only builds the call), so that the event runs here and its handler over there."""
    return (
        type(source) is functools.partial
        and type(source.func) is functools.partial
        and source.func.func is _call_event
    )


def member_group(frame: Frame) -> ParallelExecutionManager[Any] | None:
    """The group whose policies apply to an event running in ``frame`` (its own member's; a
    call the cache shares, its starter's)."""
    slot = member_slot_of(frame.slot)
    if slot is None:
        return None
    manager = slot.group
    parent = frame.address.rpartition("::")[0]
    if parent != f"{manager.group_id}[{frame.parallel_index}]":
        return None
    return None if _group_policies_taken.get() == parent else manager


@dataclass(slots=True)
class Policies:
    """The policies resolved for one call."""

    retry: RetryPolicy | None = None
    breaker: CircuitBreaker | None = None
    breaker_key: str = ""
    #: Every rate limit the call takes a token of, with its scope: the group's, then the
    #: state's (limits add up; unlike the other policies, the nearest does not replace the rest).
    rate_limits: tuple[tuple[RateLimit, str], ...] = ()
    group: ParallelExecutionManager[Any] | None = None


def _rates(
    state: ExecutionState, group: ParallelExecutionManager[Any] | None
) -> tuple[tuple[RateLimit, str], ...]:
    """The group's rate limit and the state's, both taken: a group's own limit narrows the
    run's (a provider's quota, say); it must not lift it."""
    group_limit = getattr(group, "rate_limit", None) if group is not None else None
    state_limit = getattr(state, "rate_limit", None)
    _check("rate_limit", group_limit, RateLimit)
    _check("rate_limit", state_limit, RateLimit)
    if group_limit is None:
        return () if state_limit is None else ((state_limit, _STATE_SCOPE),)
    assert group is not None
    found = ((group_limit, group.group_id),)
    if state_limit is None or (
        # One shared bucket named by both is taken once.
        state_limit.key is not None and state_limit.key == group_limit.key
    ):
        return found
    return (*found, (state_limit, _STATE_SCOPE))


def _check(kind: str, value: Any, expected: type) -> Any:
    if value is not None and not isinstance(value, expected):
        from rh_agents.errors import ConfigurationError

        raise ConfigurationError(
            f"{kind} must be a {expected.__name__} (from rh_agents.resilience), got {value!r}"
        )
    return value


def event_policies(state: ExecutionState, event: ExecutionEvent[Any], frame: Frame) -> Policies:
    actor = event.actor
    group = member_group(frame)
    own: Any = None
    if group is not None:
        member_retry = _member_retry.get()
        if member_retry is not None and member_retry[0] == frame.address.rpartition("::")[0]:
            own = member_retry[1]
    retry = _first(event.retry, actor.retry, own, group.retry if group else None, state.retry)
    breaker = _first(
        event.circuit_breaker,
        actor.circuit_breaker,
        group.circuit_breaker if group else None,
        state.circuit_breaker,
    )
    rates = _rates(state, group)
    _check("retry", retry, RetryPolicy)
    _check("circuit_breaker", breaker, CircuitBreaker)
    key = (breaker.key if breaker is not None else None) or actor.name
    return Policies(retry, breaker, key, rates, group)


def member_policies(
    state: ExecutionState, group: ParallelExecutionManager[Any], member: Member
) -> Policies:
    retry = _first(member.retry, group.retry, state.retry)
    breaker = _first(group.circuit_breaker, state.circuit_breaker)
    rates = _rates(state, group)
    _check("retry", retry, RetryPolicy)
    _check("circuit_breaker", breaker, CircuitBreaker)
    name = group.name
    key = (breaker.key if breaker is not None else None) or f"group:{name}"
    return Policies(retry, breaker, key, rates, group)


# --- the hooks -------------------------------------------------------------------------------


async def invoke_actor(
    state: ExecutionState,
    event: ExecutionEvent[Any],
    validated: BaseModel,
    context: str,
    frame: Frame,
) -> tuple[Any, int]:
    """Run ``event``'s actor under its policies; returns ``(value, attempts)``."""
    actor = event.actor
    # A plain-def handler runs in one of the state's worker threads (BaseActor.invoke).
    call: Callable[[BaseModel, str, ExecutionState], Awaitable[Any]] = actor.invoke
    timeout = event.timeout
    if _no_policy_for(state, event, frame):
        # Nothing to resolve: one plain call (the common case, and every event's hot path).
        if timeout is None:
            return await call(validated, context, state), 1
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await call(validated, context, state), 1
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the handler's own TimeoutError
            # Said here, not only by the event: a call the cache shares raises it to every
            # caller waiting on it, which must tell it from a bare TimeoutError (and a bare
            # TimeoutError says nothing).
            raise event_timed_out(actor, frame.address, timeout) from exc

    executor = member_executor(frame)
    if executor is not None:
        # The member's own handler runs over there, one attempt per request; the attempts,
        # the timeout and the records around them stay here.
        remote = executor

        def call_remote(
            validated: BaseModel, context: str, state: ExecutionState
        ) -> Awaitable[Any]:
            return remote.run_handler(state, event, validated, context, frame)

        call = call_remote

    # Each attempt's output is validated in the attempt: a reply of the wrong shape (a
    # malformed structured answer from an LLM, say) is an ActorOutputError its retry policy
    # may retry, as any other failure. (The event validates the value again: a no-op.)
    validate_output = actor.validate_output

    async def attempt() -> Any:
        if timeout is None:
            return validate_output(await call(validated, context, state))
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return validate_output(await call(validated, context, state))
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the handler's own TimeoutError
            # Said as the call's result will say it, so that each retry's record does too
            # (the bare TimeoutError of asyncio.timeout says nothing).
            raise event_timed_out(actor, frame.address, timeout) from exc

    return await run_attempts(state, frame, event_policies(state, event, frame), attempt)


async def run_member(
    state: ExecutionState, group: ParallelExecutionManager[Any], member: Member, frame: Frame
) -> Any:
    """Run a member of ``group``: re-calling a callable member for retries."""
    executor = group.options.executor
    if executor is not None:
        source = member.source
        if not is_event_call(source) and not _makes_event_call(source):
            return await _run_on_executor(state, group, member, frame, executor)
    rerunnable = member.rerunnable
    first: Awaitable[Any] | None = None
    # What the first call of a callable member raised as it was called (a plain function
    # failing before it made its awaitable): that attempt's failure, retried as a later
    # attempt's would be (each attempt calls it again), and as a process executor does.
    raised: Exception | None = None
    try:
        first = member.open()
    except InvalidMemberError:
        raise  # (it made no awaitable: a mistake in the program, not a failed attempt)
    except Exception as error:
        raised = error
    if is_event_call(first):
        assert first is not None
        # The event applies every policy itself, the member's own retry included.
        if member.retry is None:
            return await first
        scope = _member_retry.set((frame.address, member.retry))
        try:
            return await first
        finally:
            _member_retry.reset(scope)
    policies = member_policies(state, group, member)
    if not rerunnable and policies.retry is not None and policies.retry.max_attempts > 1:
        # Only a state-wide policy gets here (add() rejects the others): a coroutine runs once.
        policies.retry = RetryPolicy(max_attempts=1)

    def attempt() -> Awaitable[Any]:
        nonlocal first, raised
        if raised is not None:
            error, raised = raised, None
            raise error
        if first is not None:
            made, first = first, None
            return made
        return member.open()

    token = _group_policies_taken.set(frame.address)
    started = state.clock.now()
    try:
        value, attempts = await run_attempts(state, frame, policies, attempt, member)
        return _with_attempts(state, value, attempts, started)
    finally:
        _group_policies_taken.reset(token)
        if isinstance(first, Coroutine):
            first.close()  # never awaited (the circuit refused every attempt)


async def _run_on_executor(
    state: ExecutionState,
    group: ParallelExecutionManager[Any],
    member: Member,
    frame: Frame,
    executor: MemberExecutor,
) -> Any:
    """Run a callable member of ``group`` over there: each attempt is a new request."""
    source = member.source
    if not member.rerunnable:  # a coroutine: add() refuses it, with this error
        executor.check_member(source, f"member {frame.address}")
    policies = member_policies(state, group, member)

    def attempt() -> Awaitable[Any]:
        return executor.run_callable(state, frame, source)

    token = _group_policies_taken.set(frame.address)
    started = state.clock.now()
    try:
        value, attempts = await run_attempts(state, frame, policies, attempt, member)
    finally:
        _group_policies_taken.reset(token)
    return _with_attempts(state, value, attempts, started)


def _with_attempts(state: ExecutionState, value: Any, attempts: int, started: float) -> Any:
    """What a retried member hands its group: a result that says how many attempts it took.

    A member returning an ``ExecutionResult`` of its own (a call it awaited) gets a copy
    counting the member's attempts (the call's result, kept in the history, is left as is).
    """
    if attempts <= 1:
        return value
    if isinstance(value, ExecutionResult):
        if value.attempts >= attempts:
            return value
        value = copy.copy(value)
        value.attempts = attempts
        return value
    elapsed = state.clock.now() - started
    return ExecutionResult(ok=True, result=value, execution_time=elapsed, attempts=attempts)


# --- the attempt loop ----------------------------------------------------------------------


def _failure_of(value: Any) -> BaseException | None:
    """An ``ExecutionResult`` with ``ok=False`` is a failure even though nothing was raised."""
    if isinstance(value, ExecutionResult) and not value.ok:
        from rh_agents.errors import MemberFailedError

        return value.exception or MemberFailedError(value.error or "failed", value)
    return None


def _publish_change(
    state: ExecutionState, frame: Frame, key: str, change: Transition | None
) -> None:
    if change is None or not state.event_bus.has_listeners:
        return
    old, new, failures = change
    record = _placed_in(CircuitStateChanged, frame, state.clock.now())
    record.key = key
    record.old_state = old
    record.new_state = new
    record.failures = failures
    state.event_bus.publish(record)


def _publish_retry(
    state: ExecutionState, frame: Frame, attempt: int, delay: float, error: BaseException | None
) -> None:
    if not state.event_bus.has_listeners:
        return
    record = _placed_in(EventRetrying, frame, state.clock.now())
    record.attempt = attempt
    record.delay = delay
    record.error = describe_error(error) if error is not None else "result asked for a retry"
    record.error_type = type(error).__name__ if error is not None else ""
    state.event_bus.publish(record)


def _lendable(frame: Frame) -> MemberSlot | None:
    """The slot a call in ``frame`` may lend while it only waits: its member's, if the call
    runs in that member's own task.

    A call the member runs beside others (``asyncio.gather`` of event calls, a task of its
    own) cannot tell whether its siblings are working meanwhile: lending the member's one
    slot then (twice, if two back off at once) would let other members run beside them, over
    the limit. Such a call waits holding the slot, as does a call the cache shares.
    """
    slot = frame.slot
    if not isinstance(slot, MemberSlot):
        # (Nor a SharedCallSlot.) A call the cache shares holds its starter's slots through
        # its backoffs: a member
        # let in on them could be waiting (through a nested group, say) for this very call,
        # which would then wait for the slot that member holds.
        return None
    return slot if in_own_task(slot, frame.parallel_index) else None


async def _backoff(state: ExecutionState, frame: Frame, delay: float) -> None:
    """Sleep ``delay`` on the state's clock holding no worker slot (see ``_lendable``)."""
    slot = _lendable(frame)
    if slot is None:
        await state.clock.sleep(delay)
        return
    async with slot.lent(frame.parallel_index):  # (counted with the member's other lenders)
        await state.clock.sleep(delay)


def _member_calling(group: ParallelExecutionManager[Any], frame: Frame) -> Member | None:
    """The member of ``group`` that is the event call running in ``frame`` (its worker runs
    it inline), so that its attempts are kept current too: a member timeout ending the event
    between two attempts reports the attempts made, not one. (Not a callable member's calls:
    its attempts are its own, counted by its group's retry loop, if any.)"""
    task = asyncio.current_task()
    found = group._pool.running.get(task) if task is not None else None
    if found is not None and found.is_call and found.address == frame.address.rpartition("::")[0]:
        return found
    return None


async def _take_token(frame: Frame, limiter: AsyncLimiter) -> None:
    """Take a token of ``limiter``; a member that must wait for one lends its global slot
    meanwhile, so that members of other groups (under other limits) run in the meantime.
    (Its group slot it keeps: the group's other members wait for the same tokens.)"""
    if limiter.has_capacity():
        await limiter.acquire()
        return
    slot = _lendable(frame)
    lent = slot is not None and slot.lend_global()
    try:
        await limiter.acquire()
    except asyncio.CancelledError:
        if lent and type(slot) is MemberSlot and member_ending(slot.group):
            lent = False  # ending: nothing to take back (see MemberSlot.take_back_ending)
        raise
    finally:
        if lent:
            assert slot is not None
            await slot.reclaim_global_after_token()


def _attempt_cancelled(
    state: ExecutionState,
    frame: Frame,
    circuit: Circuit | None,
    adaptive: Any,
    started: float,
    level: int,
    epoch: int,
) -> None:
    """An attempt is being cancelled: by a member timeout, it is a timeout of the call (the
    circuit counts a failure, the adaptive limit an overload); else it just did not finish."""
    if not member_timed_out():
        if circuit is not None:
            circuit.release(None, finished=False, epoch=epoch)
        return
    timeout = TimeoutError(f"{frame.address} was cancelled by its member timeout")
    if circuit is not None:
        _publish_change(state, frame, circuit.key, circuit.release(timeout, epoch=epoch))
    if adaptive is not None:
        adaptive.on_overload(started=started, now=state.clock.now(), level=level)


def _set_attempts(exc: BaseException, attempts: int) -> None:
    try:
        exc.attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:  # an exception class with __slots__
        pass


async def run_attempts(
    state: ExecutionState,
    frame: Frame,
    policies: Policies,
    attempt: Callable[[], Awaitable[Any]],
    member: Member | None = None,
) -> tuple[Any, int]:
    """Run ``attempt`` until it succeeds or the retry policy gives up; ``(value, attempts)``.

    On giving up, the last exception is raised with an ``attempts`` attribute. ``member``,
    if given, has its ``attempts`` kept current, so that however the member ends (failed,
    timed out, cancelled in a backoff) its result says how many attempts it made.
    """
    clock = state.clock
    tries = policies.retry.start(clock) if policies.retry is not None else None
    circuit: Circuit | None = None
    if policies.breaker is not None:
        circuit = state.breakers.circuit(policies.breaker_key, policies.breaker)
    limiters: list[AsyncLimiter] = [
        state.rate_limiters.limiter(limit, scope) for limit, scope in policies.rate_limits
    ]
    group = policies.group
    adaptive = group.adaptive_limit if group is not None else None
    if tries is None and circuit is None and not limiters and adaptive is None:
        return await attempt(), 1  # no policy at all: the plain call, nothing to track
    if member is None and group is not None:
        member = _member_calling(group, frame)
    number = 0
    epoch = 0
    # The outcome of the last attempt made: what the call gives back if it gives up.
    error: BaseException | None = None
    value: Any = None
    while True:
        number = tries.begin() if tries is not None else number + 1
        frame.attempts = number
        if number > 1 and not frame.children_running:
            # Each attempt numbers the calls it makes afresh: an attempt's calls have the
            # addresses the first attempt's had (``llm``, not ``llm#2``), so that how many
            # attempts failed changes no address; recovery stores the calls at one address
            # as calls of their own (see core.context.CALL_MARK). Unless a call of
            # the last attempt still runs (asyncio.gather left it behind): its address is
            # taken, and this attempt's calls number on from it.
            frame.continue_numbering(None)
        if member is not None:
            member.attempts = number
        if number > 1 and tries is not None and tries.past_deadline():
            # The backoff ended in time, but taking the worker slot it lent back waited for
            # a member holding it: no attempt starts after the deadline.
            return _give_up(frame, member, number - 1, error, value)
        let_through = False
        try:
            if circuit is not None:
                # Asked before any token: an open circuit refuses at once and takes none.
                _publish_change(state, frame, circuit.key, circuit.acquire())
                epoch = circuit.epoch  # (what release judges this call by)
                let_through = True
            for limiter in limiters:
                await _take_token(frame, limiter)
            if circuit is not None and circuit.epoch != epoch and limiters:
                # The circuit opened while this attempt waited for its token: the pass it had
                # is stale (opening freed every place, so there is nothing to give back). Ask
                # again, so that no call starts while the circuit is open.
                let_through = False
                _publish_change(state, frame, circuit.key, circuit.acquire())
                epoch = circuit.epoch
                let_through = True
        except Exception as exc:  # CircuitOpenError (or a failed token wait): no call made
            if circuit is not None and let_through:
                circuit.release(None, finished=False, epoch=epoch)  # (a probe's place back)
            error, value = exc, None
        except BaseException:  # cancelled waiting for a token: the call was not made
            if circuit is not None and let_through:
                circuit.release(None, finished=False, epoch=epoch)
            raise
        else:
            if number > 1 and limiters and tries is not None and tries.past_deadline():
                # The token came after the deadline: this attempt is not made either.
                if circuit is not None:
                    circuit.release(None, finished=False, epoch=epoch)
                return _give_up(frame, member, number - 1, error, value)
            started = clock.now()
            level = adaptive.current if adaptive is not None else 0
            value = None
            try:
                value = await attempt()
            except asyncio.CancelledError:
                if circuit is not None or adaptive is not None:
                    _attempt_cancelled(state, frame, circuit, adaptive, started, level, epoch)
                raise
            except Exception as exc:
                error = exc
            except BaseException:  # KeyboardInterrupt, SystemExit: the call did not finish
                if circuit is not None:
                    # Not judged (it says nothing of the service), but released: a probe
                    # that never gave its place back would keep the circuit half-open.
                    circuit.release(None, finished=False, epoch=epoch)
                raise
            else:
                error = _failure_of(value)
            ended = clock.now()
            if circuit is not None:
                _publish_change(state, frame, circuit.key, circuit.release(error, epoch=epoch))
            if adaptive is not None and group is not None:
                if error is None:
                    # (When it grows, it tells every group using it: this one included.)
                    adaptive.on_success(ended - started, started=started, now=ended, level=level)
                elif is_overload(error):
                    adaptive.on_overload(started=started, now=ended, level=level)
        retry_result = (
            error is None
            and tries is not None
            and tries.policy.retry_if_result is not None
            and _asks_again(tries.policy.retry_if_result, value)
        )
        if error is None and not retry_result:
            return value, number
        delay = tries.next_delay(error) if tries is not None else None
        if delay is None:
            return _give_up(frame, member, number, error, value)
        _publish_retry(state, frame, number, delay, error)
        await _backoff(state, frame, delay)


def _asks_again(predicate: Callable[[Any], Any], value: Any) -> bool:
    """What ``RetryPolicy.retry_if_result`` says of ``value``. A predicate that hands back an
    awaitable (a plain function returning a coroutine: the policy refuses an async one when
    it is made) is a mistake: its verdict would always be true, every result retried."""
    verdict = predicate(value)
    if inspect.isawaitable(verdict):
        if isinstance(verdict, Coroutine):
            verdict.close()  # (never to be awaited: no warning for it)
        raise ConfigurationError(
            f"RetryPolicy.retry_if_result returned {type(verdict).__name__}, an awaitable, "
            "for a result: it must be a plain function returning true (try again) or false"
        )
    return bool(verdict)


def _give_up(
    frame: Frame,
    member: Member | None,
    number: int,
    error: BaseException | None,
    value: Any,
) -> tuple[Any, int]:
    """The call's end once no attempt is left: the last one's outcome, after ``number``
    attempts (raised with an ``attempts`` attribute, if it failed by raising)."""
    frame.attempts = number
    if member is not None:
        member.attempts = number
    if error is None or isinstance(value, ExecutionResult):
        return value, number  # a result predicate or a failed result: give it back
    _set_attempts(error, number)
    raise error


class PolicyRunner:
    """Core's ``CallRunner`` with every policy applied (see the module docstring)."""

    __slots__ = ()

    def invoke_actor(
        self,
        state: ExecutionState,
        event: ExecutionEvent[Any],
        validated: BaseModel,
        context: str,
        frame: Frame,
    ) -> Awaitable[tuple[Any, int]]:
        return invoke_actor(state, event, validated, context, frame)

    def run_member(
        self,
        state: ExecutionState,
        group: ParallelExecutionManager[Any],
        member: Member,
        frame: Frame,
    ) -> Awaitable[Any]:
        return run_member(state, group, member, frame)
