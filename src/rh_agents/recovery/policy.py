"""``CheckpointPolicy``: when finished events are written to the state backend.

::

    CheckpointPolicy.every_event()                  # one transaction per finished event
    CheckpointPolicy.batched(count=500, seconds=1)  # one transaction per batch

Loss window: checkpoints wait in memory until the batch is written. A batch is written when it
holds ``count`` events, or when an event finishes ``seconds`` or more after the last write, on
``await state.save_checkpoint()`` and when the state is closed. So a crash loses the
checkpoints of at most ``count - 1`` finished events, which run again on resume. With
``every_event()`` it loses at most the one event whose handler had returned but whose
checkpoint was not yet committed at the instant of the crash (the handler's side effects then
happen again on resume: make them idempotent if that matters).

These bounds hold while the store answers within ``Recovery(write_wait=...)`` (50 ms; a healthy
commit takes well under a millisecond). A write that waits longer (another process holds the
SQLite lock, a slow disk) goes on in the background so that the event loop never stalls, and
the checkpoints of the events finishing meanwhile wait in memory until it is done: a crash
during such a wait also loses those (they run again on resume). Nothing is lost otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from rh_agents.errors import ConfigurationError
from rh_agents.resilience.checks import check_number

__all__ = ["CheckpointPolicy"]


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """Write after ``count`` events, or once ``seconds`` passed since the last write."""

    count: int = 1
    seconds: float | None = None

    def __post_init__(self) -> None:
        # A count of nan compares false with everything, so no batch would ever be full: every
        # checkpoint would wait for the close, and a crash would lose them all. A float (1.5,
        # inf) or a bool (True) is a mistake too, and "3" raised a bare TypeError.
        count = self.count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(
                f"CheckpointPolicy(count=...) must be a whole number of events, at least 1, "
                f"got {count!r}"
            )
        if self.seconds is not None:
            check_number(
                "CheckpointPolicy(seconds=...)",
                self.seconds,
                minimum=0,
                inclusive=False,
                hint="; pass None to write on count alone",
            )

    @classmethod
    def every_event(cls) -> CheckpointPolicy:
        """One transaction per finished event: the smallest loss window."""
        return cls(count=1)

    @classmethod
    def batched(cls, count: int = 500, seconds: float | None = 1.0) -> CheckpointPolicy:
        """One transaction per ``count`` events or per ``seconds``, whichever comes first."""
        return cls(count=count, seconds=seconds)
