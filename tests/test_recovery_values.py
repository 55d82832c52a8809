"""Values round-trip exactly (NaN and the infinities included), or are not stored at all.

A result that cannot be stored faithfully (a generator, an iterator, a value that would come
back different) reaches the caller untouched, is not checkpointed and runs again on resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from recovery_support import Item, make_backend
from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery import Recovery
from rh_agents.recovery.codec import canonical_json, decode_result, encode_checked
from rh_agents.recovery.records import CheckpointRecord

BACKENDS = ["sqlite", "json"]
NAN, INF = float("nan"), float("inf")


class Inner(BaseModel):
    # A model that asks for null in its own JSON: checkpoints keep NaN anyway.
    model_config = ConfigDict(ser_json_inf_nan="null")
    x: float


class Reading(BaseModel):
    value: float
    bounds: list[float]
    inner: Inner
    extra: dict[str, float] = {}


class Loose(BaseModel):
    payload: Any = None


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (through the JSON both sides would have)."""
    return canonical_json(a) == canonical_json(b)


def _reading(i: int) -> Reading:
    return Reading(
        value=[NAN, INF, -INF, 0.5][i % 4],
        bounds=[-INF, NAN, INF, -0.0],
        inner=Inner(x=NAN),
        extra={"nan": NAN, "inf": INF},
    )


class Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def events(self) -> tuple[ExecutionEvent[Any], ExecutionEvent[Any]]:
        async def typed(item: Item, context: str, state: ExecutionState) -> Reading:
            self.calls.append(("typed", item.i))
            return _reading(item.i)

        async def plain(item: Item, context: str, state: ExecutionState) -> Any:
            self.calls.append(("plain", item.i))
            return {"v": [NAN, INF, -INF][item.i % 3], "i": item.i, "list": [NAN, 1.5]}

        return (
            ExecutionEvent(
                actor=Tool(name="typed", input_model=Item, output_model=Reading, handler=typed)
            ),
            ExecutionEvent(actor=Tool(name="plain", input_model=Item, handler=plain)),
        )


async def _run(state: ExecutionState, calls: Calls, n: int) -> list[Any]:
    typed, plain = calls.events()
    members = [typed(Item(i=i), "", state) for i in range(n)]
    members += [plain(Item(i=i), "", state) for i in range(n)]
    results = await state.parallel_execute(members, max_workers=4)
    return [r.unwrap() for r in results]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_nan_and_infinities_survive_store_and_replay(tmp_path: Path, kind: str) -> None:
    backend = make_backend(kind, tmp_path)
    first = Calls()
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        original = await _run(state, first, 4)
        assert state.recovery is not None and state.recovery.unserialisable == 0
    stored = backend.load("r")
    assert all(r.result_json is not None and "null" not in r.result_json for r in stored.values())

    second = Calls()
    async with ExecutionState.resume("r", backend=backend) as state:
        replayed = await _run(state, second, 4)
        assert state.recovery is not None and state.recovery.recovered == 8
    assert second.calls == []
    assert all(isinstance(v, Reading) for v in replayed[:4])
    assert math.isnan(replayed[0].value) and replayed[1].value == INF
    assert replayed[2].value == -INF and math.isnan(replayed[0].inner.x)
    assert math.copysign(1.0, replayed[0].bounds[3]) == -1.0  # -0.0 stays negative
    assert all(_same(a, b) for a, b in zip(original, replayed, strict=True))
    backend.close()


def _squares(n: int) -> Iterator[int]:
    for i in range(n):
        yield i * i


def _iterator_events(calls: list[int]) -> list[ExecutionEvent[Any]]:
    async def gen(item: Item, context: str, state: ExecutionState) -> Any:
        calls.append(item.i)
        return _squares(3)

    async def it(item: Item, context: str, state: ExecutionState) -> Any:
        calls.append(item.i)
        return iter([1, 2])

    async def loose(item: Item, context: str, state: ExecutionState) -> Loose:
        calls.append(item.i)
        return Loose(payload=_squares(2))

    return [
        ExecutionEvent(actor=Tool(name="gen", input_model=Item, handler=gen)),
        ExecutionEvent(actor=Tool(name="it", input_model=Item, handler=it)),
        ExecutionEvent(
            actor=Tool(name="loose", input_model=Item, output_model=Loose, handler=loose)
        ),
    ]


async def _call_all(state: ExecutionState, calls: list[int]) -> list[Any]:
    gen, it, loose = _iterator_events(calls)
    return [
        (await gen(Item(i=0), "", state)).unwrap(),
        (await it(Item(i=1), "", state)).unwrap(),
        (await loose(Item(i=2), "", state)).unwrap(),
    ]


@pytest.mark.parametrize("recovery", [False, True])
async def test_an_iterator_result_reaches_the_caller_unread(
    tmp_path: Path, recovery: bool, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    rec = Recovery(tmp_path / "state.db") if recovery else None
    with caplog.at_level(logging.WARNING, logger="rh_agents.recovery"):
        async with ExecutionState(run_id="r", recovery=rec) as state:
            gen, it, loose = await _call_all(state, calls)
    # The same with recovery on or off: nothing was read from them.
    assert list(gen) == [0, 1, 4]
    assert list(it) == [1, 2]
    assert list(loose.payload) == [0, 1]
    if recovery:
        assert rec is not None and rec.unserialisable == 3
        warned = " ".join(r.getMessage() for r in caplog.records)
        for name in ("'gen'", "'it'", "'loose'"):
            assert name in warned


async def test_a_result_not_stored_runs_again_on_resume(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    calls: list[int] = []
    async with ExecutionState(run_id="r", recovery=Recovery(db)) as state:
        await _call_all(state, calls)
    async with ExecutionState.resume("r", backend=db) as state:
        gen, _it, _loose = await _call_all(state, calls)
        assert state.recovery is not None and state.recovery.recovered == 0
    assert calls == [0, 1, 2, 0, 1, 2]
    assert list(gen) == [0, 1, 4]


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1: "int key"},
        {"nested": [{"set": {1, 2}}]},
        object(),
        Item(i=1),  # a model, but the actor has no output_model: it would come back a dict
    ],
)
def test_plain_results_that_would_come_back_different_are_refused(value: Any) -> None:
    encoded = encode_checked(value)
    assert encoded.text is None and encoded.problem


@pytest.mark.parametrize("payload", [(1, 2), {1, 2}, Item(i=3), b"\xff"])
def test_model_results_that_would_come_back_different_are_refused(payload: Any) -> None:
    encoded = encode_checked(Loose(payload=payload), Loose)
    assert encoded.text is None and encoded.problem


def test_a_cache_key_tells_nan_from_none() -> None:
    assert canonical_json({"x": NAN}) != canonical_json({"x": None})
    assert canonical_json(Inner(x=NAN)) != canonical_json({"x": None})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_plain_json_values_round_trip_exactly(value: Any) -> None:
    encoded = encode_checked(value)
    assert encoded.text is not None, encoded.problem
    record = CheckpointRecord(
        run_id="r",
        address="a",
        seq=0,
        actor="t",
        actor_version="1",
        status="completed",
        result_json=encoded.text,
    )
    actor = Tool(name="t", input_model=Item, handler=_never)
    assert canonical_json(decode_result(record, actor)) == canonical_json(value)


async def _never(item: Item, context: str, state: ExecutionState) -> None:
    raise AssertionError("not called")
