"""Which stored call answers a failed one on resume: ``StoredCalls.answer``.

A retried agent calls its tools again at the addresses its first attempt used; each call is
stored under a key of its own (``plan::search``, ``plan::search::#2``: see
``rh_agents.core.context.CALL_MARK``). On resume a call is looked up under its own key, but a
call that failed and was the last thing its attempt did (a 503 that made the agent retry, or
several in a row) is passed over to the first completed call after it at its address: the
first attempt then gets the answer the agent's later steps were built on. Not when the
attempt went on after the failure (other work below the same parent finished in between)::

    calls = StoredCalls(backend.load("nightly"))
    calls.answer("plan::search", failed_record)   # the record of plan::search::#2, or None
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from rh_agents.core.context import ADDRESS_SEPARATOR, repeat_key, split_key
from rh_agents.recovery.records import CheckpointRecord

__all__ = ["StoredCalls"]

_COMPLETED = "completed"


class StoredCalls:
    """A stored run's checkpoints by key, and the order in which calls below each call or
    member finished (made when first needed)."""

    __slots__ = ("_below", "stored")

    def __init__(self, stored: Mapping[str, CheckpointRecord]) -> None:
        self.stored = stored
        self._below: dict[str, list[int]] | None = None

    def answer(self, key: str, failed: CheckpointRecord) -> CheckpointRecord | None:
        """The first completed call after the failed stored call ``key`` at its address, if
        the calls there up to it failed one after another (each stored after the last) and
        nothing else below their parent finished meanwhile but what those calls made
        themselves; else ``None`` (the failed call runs again)."""
        address, call = split_key(key)
        stored = self.stored
        chain = [key]
        last = failed
        while True:
            call += 1
            following = stored.get(repeat_key(address, call))
            if following is None or following.seq < last.seq:
                return None  # (stored again later: a resumed run ran the failed one again)
            chain.append(following.address)
            if following.status == _COMPLETED:
                break
            last = following
        below = self._seqs_below()
        low, high = failed.seq, following.seq

        def finished_between(prefix: str) -> int:
            seqs = below.get(prefix, ())
            return bisect.bisect_left(seqs, high) - bisect.bisect_right(seqs, low)

        parent = address.rpartition(ADDRESS_SEPARATOR)[0]
        # The calls of the chain between its ends, and what each made, are no other work.
        others = finished_between(parent) - (len(chain) - 2)
        others -= sum(finished_between(link) for link in chain)
        return following if others == 0 else None  # else the attempt went on after the failure

    def _seqs_below(self) -> dict[str, list[int]]:
        below = self._below
        if below is None:
            below = {}
            for record in self.stored.values():
                parts = record.address.split(ADDRESS_SEPARATOR)
                # Each call or member above it: a prefix not followed by a call number (the
                # n-th call at an address is no call above the first one's children).
                for n in range(1, len(parts)):
                    if not parts[n].startswith("#"):
                        below.setdefault(ADDRESS_SEPARATOR.join(parts[:n]), []).append(record.seq)
                below.setdefault("", []).append(record.seq)
            for seqs in below.values():
                seqs.sort()
            self._below = below
        return below
