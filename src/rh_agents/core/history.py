"""The record of every event call of a run, keyed by address."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rh_agents.core.results import ExecutionResult

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent

__all__ = ["ExecutionHistory", "HistoryEntry"]


class HistoryEntry:
    """One finished call: where it ran, its validated input (``None`` if the input failed
    validation or the result was replayed) and its result.

    ``event`` is the call's bound event (the event with ``address``, ``group_id``,
    ``parallel_index`` and ``is_parallel`` filled in). It is built on first read: copying a
    pydantic model for every call would cost more than the rest of the call's bookkeeping.
    """

    __slots__ = ("_bound", "_template", "address", "group_id", "input", "parallel_index", "result")

    def __init__(
        self,
        template: ExecutionEvent[Any],
        address: str,
        group_id: str | None,
        parallel_index: int | None,
        input: BaseModel | None,
        result: ExecutionResult[Any],
    ) -> None:
        self._template = template
        self._bound: ExecutionEvent[Any] | None = None
        self.address = address
        self.group_id = group_id
        self.parallel_index = parallel_index
        self.input = input
        self.result = result

    @property
    def event(self) -> ExecutionEvent[Any]:
        if self._bound is None:
            self._bound = self._template.model_copy(
                update={
                    "address": self.address,
                    "group_id": self.group_id,
                    "parallel_index": self.parallel_index,
                    "is_parallel": self.group_id is not None,
                }
            )
        return self._bound

    def __repr__(self) -> str:
        return f"HistoryEntry(address={self.address!r}, result={self.result!r})"


class ExecutionHistory:
    """Finished calls by address, in the order they finished::

    entry = state.history["Orchestrator::docs[3]::summarize"]
    members = state.history.get_group("Orchestrator::docs")   # entries inside that group
    """

    def __init__(self) -> None:
        self._entries: dict[str, HistoryEntry] = {}
        # Address prefixes of the open groups that keep no results (``parallel_map``,
        # ``retain_results=False``): their calls are not kept either, or an input of any
        # length would pile its inputs and results up here (see ``keep_none_under``).
        self._unkept: tuple[str, ...] = ()
        # Set where the history is a transport rather than a record (a worker process sends
        # every call home in its reply): keep_none_under is then ignored.
        self.keep_every_call = False

    def keep_none_under(self, group_id: str) -> None:
        """Keep no call made inside the group ``group_id`` (its members, at any depth)
        until ``keep_again_under``."""
        if not self.keep_every_call:
            self._unkept = (*self._unkept, group_id + "[")

    def keep_again_under(self, group_id: str) -> None:
        prefix = group_id + "["
        self._unkept = tuple(p for p in self._unkept if p != prefix)

    def record(
        self,
        event: ExecutionEvent[Any],
        address: str,
        group_id: str | None,
        parallel_index: int | None,
        input: BaseModel | None,
        result: ExecutionResult[Any],
    ) -> None:
        """Keep the finished call of ``event`` at ``address``."""
        if self._unkept and address.startswith(self._unkept):
            return
        self._entries[address] = HistoryEntry(
            event, address, group_id, parallel_index, input, result
        )

    def __getitem__(self, address: str) -> HistoryEntry:
        try:
            return self._entries[address]
        except KeyError:
            raise KeyError(
                f"no finished event at address {address!r}; "
                f"known addresses start with {list(self._entries)[:3]!r}"
            ) from None

    def get(self, address: str) -> HistoryEntry | None:
        return self._entries.get(address)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def addresses(self) -> list[str]:
        return list(self._entries)

    def get_group(self, group_id: str) -> list[HistoryEntry]:
        """Every entry inside the group ``group_id`` (nested ones too), by member index.

        The member index is read from the address (``group[3]::...``): an entry inside a
        nested group carries the nested group's ``parallel_index``, not this group's.
        """
        prefix = group_id + "["
        found = [(e, _member_index(e.address, prefix)) for e in self._entries.values()]
        members = [(index, e) for e, index in found if index is not None]
        members.sort(key=lambda pair: (pair[0], pair[1].address))
        return [e for _, e in members]


def _member_index(address: str, prefix: str) -> int | None:
    if not address.startswith(prefix):
        return None
    index, _, _ = address[len(prefix) :].partition("]")
    return int(index) if index.isdigit() else None
