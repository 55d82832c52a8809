"""The record of every event call of a run, keyed by address."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rh_agents.core.results import ExecutionResult

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent

__all__ = ["ExecutionHistory", "HistoryEntry"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One finished call: the bound event (address and group metadata filled in), its
    validated input (``None`` if the input failed validation or the result was replayed) and
    its result."""

    event: ExecutionEvent[Any]
    input: BaseModel | None
    result: ExecutionResult[Any]

    @property
    def address(self) -> str:
        return self.event.address or ""


class ExecutionHistory:
    """Finished calls by address, in the order they finished::

    entry = state.history["Orchestrator::docs[3]::summarize"]
    members = state.history.get_group("Orchestrator::docs")   # entries inside that group
    """

    def __init__(self) -> None:
        self._entries: dict[str, HistoryEntry] = {}

    def record(
        self, event: ExecutionEvent[Any], input: BaseModel | None, result: ExecutionResult[Any]
    ) -> None:
        self._entries[event.address or ""] = HistoryEntry(event, input, result)

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
