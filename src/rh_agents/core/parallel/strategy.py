"""How a group reacts to failures, and the states a group goes through."""

from __future__ import annotations

import enum

__all__ = ["ErrorStrategy", "GroupStatus"]


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
