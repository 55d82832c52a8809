"""``ExecutionResult``: what every event and every parallel member produces."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

__all__ = ["ExecutionResult", "Raised", "ResultStatus", "describe_error"]

T = TypeVar("T")


class ResultStatus(enum.StrEnum):
    """How a call or a member ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"


@dataclass(slots=True, eq=False)
class ExecutionResult(Generic[T]):
    """The outcome of one call: never raises, always says what happened.

    ``ok`` is true only for ``COMPLETED``. ``error`` is a one-line message and ``exception``
    the exception itself (``None`` on success). Inside a parallel group ``index`` is the
    member's submission index and ``name`` its name. ``address`` is the execution-tree address
    (``event_id`` is the same string, under another name)::

        result = await ExecutionEvent(actor=summarize)(Doc(text=t), "", state)
        if result.ok:
            print(result.result)
        else:
            print(result.status, result.error)
        value = result.unwrap()     # the value, or raises the exception
    """

    ok: bool
    result: T | None = None
    error: str | None = None
    exception: BaseException | None = None
    execution_time: float = 0.0
    status: ResultStatus = ResultStatus.COMPLETED
    index: int | None = None
    name: str | None = None
    address: str | None = None
    attempts: int = 1
    source: str = "run"

    def __post_init__(self) -> None:
        # ``ok`` is true only for COMPLETED: a result made with ok=False and no status is a
        # failure (a member returning one fails, and FAIL_FAST stops on it).
        if not self.ok and self.status is ResultStatus.COMPLETED:
            self.status = ResultStatus.FAILED

    @property
    def event_id(self) -> str | None:
        """The address of the event that produced this result (the same as ``address``)."""
        return self.address

    def unwrap(self) -> T:
        """The result value; raises the recorded exception if the call did not complete."""
        if self.ok:
            return self.result  # type: ignore[return-value]
        if self.exception is not None:
            raise self.exception
        from rh_agents.errors import MemberFailedError

        raise MemberFailedError(self.error or f"call ended with status {self.status.value}", self)

    def __repr__(self) -> str:
        where = f" index={self.index}" if self.index is not None else ""
        named = f" name={self.name!r}" if self.name is not None else ""
        if self.ok:
            return f"ExecutionResult(ok=True{where}{named} result={self.result!r})"
        return (
            f"ExecutionResult(ok=False{where}{named} status={self.status.value} "
            f"error={self.error!r})"
        )

    @classmethod
    def failure(
        cls,
        exc: BaseException,
        *,
        status: ResultStatus = ResultStatus.FAILED,
        execution_time: float = 0.0,
        **fields: Any,
    ) -> ExecutionResult[Any]:
        return cls(
            ok=False,
            error=describe_error(exc),
            exception=exc,
            execution_time=execution_time,
            status=status,
            **fields,
        )


def describe_error(exc: BaseException) -> str:
    """``"ValueError: bad thing"`` (the type alone when the message is empty).

    An exception whose ``__str__`` itself fails (a user class reading an attribute it never
    set) is described all the same: ``"APIError: <str() raised AttributeError>"``. A
    failure to describe a failure must not stop the run, nor hide the failure.
    """
    try:
        text = str(exc)
    except Exception as problem:
        text = f"<str() raised {type(problem).__name__}>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Raised:
    """An exception carried as a call's value, to be raised where the call is awaited.

    For what must not travel as an exception: a ``BaseException`` raised in a shared call's
    task (asyncio would let it out of the event loop itself, past every caller), or a
    ``GeneratorExit`` set on a future (thrown into the awaiting task, the interpreter takes it
    for a close of every coroutine awaiting below)::

        future.set_result(Raised(exc))         # where the outcome is made
        if type(value) is Raised:              # where it is awaited
            value.raise_again()

    Every caller raises it with the traceback it had when it was made: raised for several
    callers (a call the cache shares), it must not carry each one's frames into the next's.
    """

    __slots__ = ("exception", "traceback")

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception
        self.traceback = exception.__traceback__

    def raise_again(self) -> NoReturn:
        """Raise the exception, with the traceback it had when it was carried."""
        raise self.exception.with_traceback(self.traceback)
