"""One helper places every record in the tree (``records._placed``): kind, address, timestamp,
group id, index and ``is_parallel``, the same fields a keyword-built record has."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from rh_agents.core import records
from rh_agents.core.advice import run_warning
from rh_agents.core.context import Frame
from rh_agents.core.records import BusEvent, RunWarning, _placed, _placed_in
from rh_agents.errors import LoopBlockedWarning

RECORD_CLASSES = [
    cls
    for name in records.__all__
    if isinstance(cls := getattr(records, name), type)
    and issubclass(cls, BusEvent)
    and cls is not BusEvent
]


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(("group_id", "index", "inside"), [("docs", 3, True), (None, None, False)])
def test_a_placed_record_has_its_class_kind_and_its_place(
    cls: type[BusEvent], group_id: str | None, index: int | None, inside: bool
) -> None:
    record = _placed(cls, "docs[3]::summarize", 1.5, group_id, index)
    assert type(record) is cls
    assert record.kind == cls.__dataclass_fields__["kind"].default
    assert (record.address, record.timestamp) == ("docs[3]::summarize", 1.5)
    assert (record.group_id, record.parallel_index, record.is_parallel) == (
        group_id,
        index,
        inside,
    )


def test_placed_in_a_frame_takes_the_frames_place() -> None:
    frame = Frame(None, "docs[3]::summarize", "docs", 3)
    record = _placed_in(records.EventRetrying, frame, 2.0)
    assert (record.address, record.group_id, record.parallel_index, record.is_parallel) == (
        "docs[3]::summarize",
        "docs",
        3,
        True,
    )


def test_a_class_without_a_kind_cannot_be_placed() -> None:
    with pytest.raises(TypeError, match="BusEvent has no default kind"):
        _placed(BusEvent, "", 0.0, None, None)


@pytest.mark.parametrize(
    "place", [{}, {"group_id": "docs", "parallel_index": 3}], ids=["root", "member"]
)
def test_a_warnings_record_is_the_keyword_built_one(place: dict[str, Any]) -> None:
    built = run_warning(LoopBlockedWarning, "held", "await", address="a", timestamp=1.0, **place)
    expected = RunWarning(
        address="a",
        timestamp=1.0,
        is_parallel="group_id" in place,
        category="LoopBlockedWarning",
        message="held",
        hint="await",
        **place,
    )
    assert dataclasses.asdict(built) == dataclasses.asdict(expected)
