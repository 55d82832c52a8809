"""The errors rh_agents raises, all under one root.

Catch ``RHAgentsError`` to catch everything the library itself raises. Configuration errors
also derive from ``ValueError`` or ``TypeError`` (and a closed group's error from
``RuntimeError``) so that code written against the standard exceptions keeps working::

    RHAgentsError
     ├── ConfigurationError (ValueError)       a bad argument: max_workers=0, an unknown mode, ...
     │    └── MissingDependencyError           an optional integration's package is not installed
     ├── ActorDefinitionError (TypeError)      an actor that cannot run: no handler, a bad name
     ├── ActorInputError (ValueError)          an input that does not fit the actor's input model
     ├── ActorOutputError (ValueError)         a handler result that does not fit the output model
     ├── ParallelError                         misuse or failure of a parallel group
     │    ├── GroupClosedError (RuntimeError)  add() after the group was gathered or closed
     │    ├── InvalidMemberError (TypeError)   add() got something that cannot be awaited
     │    ├── DuplicateMemberError (ValueError) two members with one name
     │    ├── DependencyError (ValueError)     unknown dependency or a cycle
     │    ├── MemberFailedError                a member's ExecutionResult had ok=False (FAIL_FAST)
     │    ├── MemberSkippedError               a dependency failed, so the member never ran
     │    ├── MemberCancelledError             cancelled: fail-fast, quorum, p.cancel()
     │    ├── ParallelTimeoutError (TimeoutError)  a member or the whole group ran out of time
     │    ├── FailureThresholdError            FAIL_THRESHOLD reached; carries the partial results
     │    ├── GroupFailedError (ExceptionGroup) every failure at once; carries the partial results
     │    └── RemoteExecutionError             an executor lost a member's work (a worker died)
     ├── CircuitOpenError                      a circuit breaker refused the call
     ├── RateLimitedError                      a provider answered 429 (carries retry_after)
     ├── RetryPolicyError (ValueError)         a policy asked to re-run something that cannot re-run
     ├── RHAgentsWarning (RuntimeWarning)      a warning: the run went on, but you should know
     │    ├── SubscriberShutdownWarning        a subscriber still busy at the bus's close: cancelled
     │    ├── CheckpointWarning                a checkpoint write failed; it is kept and tried again
     │    ├── LoopBlockedWarning               a member held the event loop without awaiting
     │    ├── SequentialGroupWarning           a group's members never awaited: they ran one by one
     │    ├── UnusedGroupWarning               a group never run, or run and never gathered nor left
     │    ├── UnawaitedCallWarning             an event call made and never awaited nor added
     │    ├── OversizedGroupWarning            max_workers far above the members a group ran
     │    └── CoroutineResultWarning           a member returned a coroutine instead of awaiting it
     └── RecoveryError                         state backends, checkpoints and replay
          ├── UnknownRunError (KeyError)
          ├── InvalidRunIdError (ValueError)   a run id that breaks the rule (core.run_ids)
          ├── CorruptStateError                a state file or database that cannot be read
          ├── RunLockedError                   another live process holds the run's lease
          └── ResultSchemaError                a stored result no longer fits its model

Each message says what was wrong and what to do about it.

The warnings are issued with ``warnings.warn`` (never raised by the library itself). Each is a
``RuntimeWarning``, so ``-W error::RuntimeWarning`` turns them into errors, and an
``RHAgentsError`` too, so such an error is still caught with the library's own. Filter them by
class (``warnings.filterwarnings("ignore", category=OversizedGroupWarning)``); the ones about
a run (from ``LoopBlockedWarning`` on) are also published on the bus as ``RunWarning`` records,
with the address they are about and what to do (see ``docs/warnings.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rh_agents.core.results import ExecutionResult

__all__ = [
    "ActorDefinitionError",
    "ActorInputError",
    "ActorOutputError",
    "CheckpointWarning",
    "CircuitOpenError",
    "ConfigurationError",
    "CoroutineResultWarning",
    "CorruptStateError",
    "DependencyError",
    "DuplicateMemberError",
    "FailureThresholdError",
    "GroupClosedError",
    "GroupFailedError",
    "InvalidMemberError",
    "InvalidRunIdError",
    "LoopBlockedWarning",
    "MemberCancelledError",
    "MemberFailedError",
    "MemberSkippedError",
    "MissingDependencyError",
    "OversizedGroupWarning",
    "ParallelError",
    "ParallelTimeoutError",
    "RHAgentsError",
    "RHAgentsWarning",
    "RateLimitedError",
    "RecoveryError",
    "RemoteExecutionError",
    "ResultSchemaError",
    "RetryPolicyError",
    "RunLockedError",
    "SequentialGroupWarning",
    "SubscriberShutdownWarning",
    "UnawaitedCallWarning",
    "UnknownRunError",
    "UnusedGroupWarning",
]


class RHAgentsError(Exception):
    """Root of every error raised by rh_agents.

    Every one pickles and copies as itself: same class, same message, same attributes
    (``results``, ``key``, ``retry_after``...). Pickling is how ``executor="processes"``
    brings a member's error home.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Made again from its args without __init__, its attributes restored after. The
        # default, cls(*args), hands __init__ the finished message in place of its own
        # arguments: CircuitOpenError(key) would wrap its message in a second one, and a
        # class with a second required argument (FailureThresholdError's results) would
        # not be made again at all.
        return (_remade, (type(self), self.args), self.__dict__ or None)


def _remade(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An error of ``cls`` with ``args``, made without its ``__init__`` (for unpickling)."""
    error = cls.__new__(cls, *args)
    # Set again: an OSError's __new__ (ParallelTimeoutError is one) leaves them to __init__.
    error.args = args
    return error


class ConfigurationError(RHAgentsError, ValueError):
    """An argument has a value the library cannot work with."""


class MissingDependencyError(ConfigurationError):
    """An optional integration was asked for, but its package is not installed.

    The message names the extra to install (``pip install 'rh-agents[otel]'``).
    """


class ActorDefinitionError(RHAgentsError, TypeError):
    """An actor was defined in a way that cannot run (no handler, no input model, a bad name)."""


class ActorInputError(RHAgentsError, ValueError):
    """An input did not validate against the actor's ``input_model``."""


class ActorOutputError(RHAgentsError, ValueError):
    """A handler returned something that does not validate against ``output_model``."""


class ParallelError(RHAgentsError):
    """Base of the errors raised by parallel groups."""


class GroupClosedError(ParallelError, RuntimeError):
    """A member was added to a group that has already been gathered, cancelled or closed;
    or a group was read (``gather()``, ``stream()``) from inside one of its own members,
    which would wait for itself.

    Also a ``RuntimeError``, which is what ``asyncio.TaskGroup`` raises for the same mistake.
    """


class InvalidMemberError(ParallelError, TypeError):
    """``add()`` got something that is neither awaitable nor a zero-argument callable."""


class DuplicateMemberError(ParallelError, ValueError):
    """Two members of one group were given the same name."""


class DependencyError(ParallelError, ValueError):
    """A dependency names no member of the group, or the dependencies form a cycle."""


class MemberFailedError(ParallelError):
    """A member returned an ``ExecutionResult`` with ``ok=False``.

    Raised by ``FAIL_FAST`` when the member did not raise an exception of its own; the
    failed result is available as ``.result``.
    """

    def __init__(self, message: str, result: ExecutionResult[Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


class MemberSkippedError(ParallelError):
    """A member never ran because a member it depends on failed."""


class MemberCancelledError(ParallelError):
    """A member was cancelled before it finished (fail-fast, quorum, threshold or cancel())."""


class ParallelTimeoutError(ParallelError, TimeoutError):
    """A member or a whole group exceeded its timeout.

    Raised for a group's timeout (under ``FAIL_FAST`` and ``FAIL_THRESHOLD``; ``FAIL_SLOW``
    returns the results instead), it carries ``.results``: every member's result, the
    finished ones as they are, the rest timed out or cancelled::

        try:
            results = await p.gather()
        except ParallelTimeoutError as exc:
            done = [r.result for r in exc.results if r.ok]

    For one member's timeout, ``.results`` is empty: that member's result says it.

    ``.address`` is, for an event call's own ``timeout``, the address of the call whose
    deadline it was (``None`` for a group's or a member's timeout). The actor cache reads it
    to tell the timeout of the caller that started a call it shares (that caller's alone)
    from a timeout raised inside the call (its outcome for every caller).
    """

    def __init__(
        self,
        message: str,
        results: Sequence[ExecutionResult[Any]] = (),
        *,
        address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.results = list(results)
        self.address = address


class FailureThresholdError(ParallelError):
    """``FAIL_THRESHOLD`` was reached; ``.results`` holds every member's result so far."""

    def __init__(self, message: str, results: Sequence[ExecutionResult[Any]]) -> None:
        super().__init__(message)
        self.results = list(results)


class GroupFailedError(ExceptionGroup, ParallelError):
    """Every failure of a group at once (opt-in with ``raise_exception_group=True``).

    ``.exceptions`` holds the members' exceptions, ``.results`` every member's result,
    successful ones included::

        try:
            results = await p.gather()
        except GroupFailedError as eg:
            good = [r.result for r in eg.results if r.ok]
    """

    results: list[ExecutionResult[Any]]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        results: Sequence[ExecutionResult[Any]] = (),
    ) -> GroupFailedError:
        self = super().__new__(cls, message, exceptions)
        self.results = list(results)
        return self

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        results: Sequence[ExecutionResult[Any]] = (),
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> GroupFailedError:  # type: ignore[override,unused-ignore]
        return GroupFailedError(self.message, excs, self.results)


class RemoteExecutionError(ParallelError):
    """An executor (``executor=``: processes, Ray) could not bring a member's work back: the
    worker process died, Ray lost the task, or the error it raised could not be sent home.

    ``remote_type`` names the error raised over there when it is known (its own class is
    raised instead whenever it can be sent), and ``remote_traceback`` is its traceback as
    text. A remote error that did come home as itself carries ``remote_traceback`` too.
    """

    def __init__(
        self, message: str, remote_type: str | None = None, remote_traceback: str | None = None
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


class CircuitOpenError(RHAgentsError):
    """A circuit breaker is open: the call was refused without running the handler."""

    def __init__(self, key: str, retry_after: float | None = None) -> None:
        hint = f" for about {retry_after:.1f}s more" if retry_after is not None else ""
        super().__init__(
            f"circuit {key!r} is open{hint}: too many recent failures; the call was not made. "
            "Wait for the cool-down or lower the load on that dependency."
        )
        self.key = key
        self.retry_after = retry_after


class RateLimitedError(RHAgentsError):
    """A provider refused a call for load reasons (HTTP 429); ``retry_after`` is its hint.

    Retry policies wait at least ``retry_after`` seconds before the next attempt, and the
    adaptive limit treats it as an overload signal.
    """

    def __init__(
        self, message: str, retry_after: float | None = None, status_code: int = 429
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status_code = status_code


class RetryPolicyError(RHAgentsError, ValueError):
    """A retry policy asked for something that cannot be done."""


class RHAgentsWarning(RHAgentsError, RuntimeWarning):
    """Base of the warnings rh_agents issues: something went wrong that did not stop the run."""


class SubscriberShutdownWarning(RHAgentsWarning):
    """An event subscriber was still busy when its bus closed (past ``shutdown_timeout``): it
    was cancelled and its undelivered records dropped. Also in ``bus.subscriber_errors``."""


class CheckpointWarning(RHAgentsWarning):
    """A checkpoint write failed. The checkpoints are kept in memory and written with the next
    write; the event calls are not failed. If they still cannot be written when the run ends,
    leaving the run raises a ``RecoveryError``."""


class LoopBlockedWarning(RHAgentsWarning):
    """A member held the event loop for longer than ``Watchdog.block_threshold`` (100 ms by
    default) without awaiting: a blocking call (``time.sleep``, ``requests``, a big
    computation) inside an ``async`` member. Nothing else ran meanwhile, not even the other
    members of its group. Make the call async, or run it in a thread with
    ``await asyncio.to_thread(fn, ...)`` (or in an executor: ``loop.run_in_executor``)."""


class SequentialGroupWarning(RHAgentsWarning):
    """A group with ``max_workers > 1`` whose members held the event loop for most of its
    time (at least ``Watchdog.sequential_threshold``, 0.5 s by default) without awaiting:
    each member ran from start to end before the next one began, so the group ran them one
    at a time. Await their I/O, or move their blocking or CPU work to threads
    (``asyncio.to_thread``) or processes."""


class UnusedGroupWarning(RHAgentsWarning):
    """A group that never ran (made with ``state.parallel(...)`` but never entered with
    ``async with`` nor given to ``execute_parallel``), or one entered by hand
    (``await p.__aenter__()``) whose members were added but never gathered nor left: its
    results were never read and its end never published. Use ``async with``."""


class UnawaitedCallWarning(RHAgentsWarning):
    """An event call (``event(input, context, state)``) was made and dropped without being
    awaited or added to a group, so its actor never ran: ``await`` it, or ``p.add()`` it."""


class OversizedGroupWarning(RHAgentsWarning):
    """A group finished with ``max_workers`` at least 50 and over ten times its number of
    members: the limit never came into play. If it was meant to bound the whole run, set
    ``global_max_workers=`` on the ``ExecutionState``; otherwise size it to the members
    expected (or filter this warning when the size varies)."""


class CoroutineResultWarning(RHAgentsWarning):
    """A member's result is itself a coroutine or an event call: the member returned one
    without awaiting it (``return fetch(url)`` for ``return await fetch(url)``), so that work
    never ran."""


class RecoveryError(RHAgentsError):
    """Base of the errors raised by state backends, checkpoints and replay."""


class UnknownRunError(RecoveryError, KeyError):
    """No run with that id exists in the state backend."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidRunIdError(RecoveryError, ValueError):
    """A run id breaks the rule of ``rh_agents.core.run_ids`` (the message says it)."""


class CorruptStateError(RecoveryError):
    """A state file or database cannot be read; nothing was overwritten."""


class RunLockedError(RecoveryError):
    """Another live process holds the run's lease: it is the run's one writer.

    ``pid``, ``host`` and ``since`` (wall-clock seconds) name the holder when the store
    recorded it; the message says them too.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        pid: int | None = None,
        host: str | None = None,
        since: float | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.pid = pid
        self.host = host
        self.since = since


class ResultSchemaError(RecoveryError):
    """A stored result no longer validates against the actor's output model."""
