"""How a group reacts to failures, the states a group goes through, and what
``execute_parallel`` returns."""

from __future__ import annotations

import enum

__all__ = ["BatchMode", "ErrorStrategy", "GroupStatus"]


class ErrorStrategy(enum.StrEnum):
    """What a group does when members fail.

    - ``FAIL_SLOW`` (default; alias ``COLLECT_ALL``): run every member; ``gather()`` returns every
      result, failures included, and never raises.
    - ``FAIL_FAST``: the first failure cancels the other members and is re-raised.
    - ``FAIL_THRESHOLD``: cancel the rest once ``failure_threshold`` failures (a count, or a
      fraction of the members) have happened, and raise ``FailureThresholdError``.
    """

    FAIL_SLOW = "fail_slow"
    COLLECT_ALL = "fail_slow"  # another name for the same strategy
    FAIL_FAST = "fail_fast"
    FAIL_THRESHOLD = "fail_threshold"


class GroupStatus(enum.StrEnum):
    """Lifecycle of a ``ParallelEventGroup``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"  # every member completed
    PARTIAL = "partial"  # finished with some failed or skipped members (FAIL_SLOW)
    FAILED = "failed"  # the error strategy stopped the group
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class BatchMode(enum.StrEnum):
    """What ``p.execute_parallel(events)`` returns (a group's ``batch_mode``; default ``GATHER``).

    - ``GATHER``: a list of every result, in the order the members were given;
    - ``GATHER_DICT``: a dict of every result, by the members' names (members given as a
      dict) or by their positions (members given as a list);
    - ``STREAM``: an async iterator of the results in completion order, as each member ends;
    - ``AS_COMPLETED``: the same, each result carrying its ``index``, ``name`` and ``event_id``
      (a stream's results carry them too: the name says what the caller reads).
    """

    GATHER = "gather"
    GATHER_DICT = "gather_dict"
    STREAM = "stream"
    AS_COMPLETED = "as_completed"
