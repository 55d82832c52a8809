"""What the process uses right now: resident memory (now and its peak) and open files.

One reading is a ``ResourceSample``; a watched loop's beat takes one every
``RESOURCES_EVERY`` seconds while groups run (see ``rh_agents.core.watchdog``: on the loop,
about 35 us, since a read in the watchdog's thread would hand the GIL over five or six
times), never on a member's path::

    sample = read_sample()
    sample.rss, sample.rss_peak, sample.fds       # bytes, bytes, count (None if unknown)

On Linux the figures come from ``/proc/self/status`` (``VmRSS``, ``VmHWM``) and
``/proc/self/fd``; elsewhere the peak comes from ``resource.getrusage`` (the current
resident size is then unknown) and open files from ``/dev/fd`` where it exists.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

__all__ = ["ResourceSample", "read_sample"]

_STATUS = "/proc/self/status"
_FD_DIRS = ("/proc/self/fd", "/dev/fd")


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """One reading: ``rss`` (resident bytes now), ``rss_peak`` (the process's highest
    resident size so far, bytes), ``fds`` (open file descriptors), each ``None`` where the
    platform does not tell; ``taken`` is when (``time.perf_counter``)."""

    rss: int | None
    rss_peak: int | None
    fds: int | None
    taken: float


def _memory_from_proc() -> tuple[int | None, int | None] | None:
    try:
        with open(_STATUS, "rb") as status:
            text = status.read()
    except OSError:
        return None
    rss = peak = None
    for line in text.split(b"\n"):
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith(b"VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return rss, peak


def _memory_from_rusage() -> tuple[int | None, int | None]:
    try:
        import resource
    except ImportError:  # Windows
        return None, None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Kilobytes on Linux and most BSDs, bytes on macOS.
    return None, peak if sys.platform == "darwin" else peak * 1024


def _open_files() -> int | None:
    for folder in _FD_DIRS:
        try:
            # Listing the folder opens it: that descriptor is in the list, and not ours to count.
            return len(os.listdir(folder)) - 1
        except OSError:
            continue
    return None


def read_sample() -> ResourceSample:
    """The process's resident memory, its peak and its open files, now."""
    memory = _memory_from_proc()
    rss, peak = memory if memory is not None else _memory_from_rusage()
    return ResourceSample(rss, peak, _open_files(), time.perf_counter())
