"""A stored result is replayed only for the input it was made from.

Calls of one name under one parent are numbered in the order they start; calls started
concurrently outside a group can start in another order on resume (the calls before them
replay at once) and take each other's addresses. Each checkpoint keeps a digest of its
call's input, and a call whose input differs runs again rather than get another call's
result."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from recovery_support import Item, Square, Squarer, make_backend
from rh_agents.core.actors import Tool
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError
from rh_agents.recovery import Recovery, SQLiteBackend
from rh_agents.recovery.input_digest import input_digest

pytestmark = pytest.mark.timeout(30)

BACKENDS = ["sqlite", "json"]


async def _square_in_order(state: ExecutionState, squarer: Squarer, order: list[int]) -> list[int]:
    """Calls of one tool under one parent, one after another in ``order``: addressed
    ``square``, ``square#2``... in that order."""
    return [(await squarer.event(Item(i=i), "", state)).unwrap().square for i in order]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_calls_that_took_each_others_addresses_run_again(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend(kind, tmp_path)
    first = Squarer()
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        assert await _square_in_order(state, first, [2, 3, 4]) == [4, 9, 16]

    again = Squarer()
    with caplog.at_level(logging.WARNING, logger="rh_agents.recovery"):
        async with ExecutionState.resume("r", backend=backend) as state:
            # 2 keeps its address and input; 3 and 4 swap addresses.
            assert await _square_in_order(state, again, [2, 4, 3]) == [4, 16, 9]
            recovery = state.recovery
            assert recovery is not None
            assert (recovery.recovered, recovery.changed_inputs) == (1, 2)
    assert dict(again.calls) == {4: 1, 3: 1}
    warned = [r.getMessage() for r in caplog.records if "another input" in r.getMessage()]
    assert len(warned) == 1, warned  # once per actor, not once per call
    assert "square#2" in warned[0]
    # What ran again is stored for its new input: a third run replays everything.
    third = Squarer()
    async with ExecutionState.resume("r", backend=backend) as state:
        assert await _square_in_order(state, third, [2, 4, 3]) == [4, 16, 9]
    assert not third.calls
    backend.close()


async def test_two_pipelines_started_in_another_order_get_their_own_results(
    tmp_path: Path,
) -> None:
    # The probe that found it: two pipelines under asyncio.gather, each waiting for a step
    # of its own and then calling the same tool; which one calls first depends on timing.
    backend = make_backend("sqlite", tmp_path)

    async def pipelines(state: ExecutionState, squarer: Squarer, late: int) -> list[int]:
        gates = {0: asyncio.Event(), 1: asyncio.Event()}

        async def pipeline(i: int) -> int:
            await gates[i].wait()
            result = await squarer.event(Item(i=10 + i), "", state)
            gates[1 - i].set()  # the other one calls second
            return result.unwrap().square

        gates[1 - late].set()
        return list(await asyncio.gather(pipeline(0), pipeline(1)))

    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        assert await pipelines(state, Squarer(), late=1) == [100, 121]  # 0 is "square"
    again = Squarer()
    async with ExecutionState.resume("r", backend=backend) as state:
        assert await pipelines(state, again, late=0) == [100, 121]  # 1 is "square" now
    assert dict(again.calls) == {10: 1, 11: 1}
    backend.close()


async def test_the_same_input_is_replayed_whatever_object_carries_it(tmp_path: Path) -> None:
    backend = make_backend("sqlite", tmp_path)
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        await Squarer().event(Item(i=5), "", state)
    again = Squarer()
    async with ExecutionState.resume("r", backend=backend) as state:
        result = await again.event({"i": 5}, "", state)  # a dict validated into the same Item
    assert result.source == "replay" and result.unwrap() == Square(i=5, square=25)
    assert not again.calls
    backend.close()


async def test_checkpoints_written_before_digests_are_replayed_by_address(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    async with ExecutionState(run_id="r", recovery=Recovery(db)) as state:
        await _square_in_order(state, Squarer(), [2, 3])
    with sqlite3.connect(db) as conn:  # as a store written by an earlier version has them
        conn.execute("UPDATE checkpoints SET input_digest = NULL")
    again = Squarer()
    async with ExecutionState.resume("r", backend=db) as state:
        # (Swapped inputs come back swapped, as they always did without a digest.)
        assert await _square_in_order(state, again, [3, 2]) == [4, 9]
    assert not again.calls


def _old_store(db: Path) -> None:
    """A store as written before checkpoints had an input digest: one run, one checkpoint."""
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, created REAL NOT NULL,
                updated REAL NOT NULL, status TEXT NOT NULL, resume_command TEXT);
            CREATE TABLE checkpoints (run_id TEXT NOT NULL, address TEXT NOT NULL,
                seq INTEGER NOT NULL, actor TEXT NOT NULL, actor_version TEXT NOT NULL,
                status TEXT NOT NULL, result_json TEXT, output_model TEXT, group_id TEXT,
                parallel_index INTEGER, error TEXT, execution_time REAL NOT NULL,
                attempts INTEGER NOT NULL, PRIMARY KEY (run_id, address)) WITHOUT ROWID;
            INSERT INTO runs VALUES ('r', 1.0, 1.0, 'running', NULL);
            INSERT INTO checkpoints VALUES ('r', 'square', 0, 'square', '1', 'completed',
                '{"i":2,"square":4}', 'Square', NULL, NULL, NULL, 0.1, 1);
            """
        )


def test_a_store_without_the_digest_column_is_read_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _old_store(db)
    with SQLiteBackend(db, mode="read") as backend:
        (record,) = backend.load("r").values()
    assert record.input_digest is None and record.result_json == '{"i":2,"square":4}'
    with sqlite3.connect(db) as conn:  # a read changed nothing
        columns = [row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")]
    assert "input_digest" not in columns


async def test_a_store_without_the_digest_column_is_resumed_and_gains_it(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _old_store(db)
    again = Squarer()
    async with ExecutionState.resume("r", backend=db) as state:
        assert await _square_in_order(state, again, [2, 7]) == [4, 49]
    assert dict(again.calls) == {7: 1}
    with SQLiteBackend(db, mode="read") as backend:
        stored = backend.load("r")
    assert stored["square"].input_digest is None  # (written before)
    assert stored["square#2"].input_digest == input_digest(Item(i=7))


class Tags(BaseModel):
    tags: set[str]
    scores: dict[str, float] = {}


def test_a_digest_does_not_depend_on_a_sets_order() -> None:
    # A set of strings iterates in an order that varies from one process to the next: its
    # digest is made from its canonical form.
    one = Tags(tags={"alpha", "beta", "gamma", "delta"})
    other = Tags(tags={"delta", "gamma", "beta", "alpha"})
    assert input_digest(one) == input_digest(other)
    assert input_digest(one) != input_digest(Tags(tags={"alpha"}))
    assert input_digest(Item(i=1)) != input_digest(Item(i=2))
    assert len(input_digest(Item(i=1)) or "") == 32


class _Base(BaseModel):
    a: int


class _Sub(_Base):
    b: int


class _Holder(BaseModel):
    item: _Base
    weight: float | None = None


class _Counts(BaseModel):
    counts: dict[str, int]


class _Secretive(BaseModel):
    question: str
    api_key: SecretStr


def test_different_inputs_get_different_digests() -> None:
    nan, inf = float("nan"), float("inf")
    digests = [
        input_digest(_Holder(item=_Base(a=1))),
        input_digest(_Holder(item=_Base(a=1), weight=nan)),  # NaN, None and inf differ
        input_digest(_Holder(item=_Base(a=1), weight=inf)),
        input_digest(_Holder(item=_Sub(a=1, b=1))),  # a subclass's own fields count
        input_digest(_Holder(item=_Sub(a=1, b=2))),
    ]
    assert None not in digests and len(set(digests)) == len(digests)
    # Equal dicts are equal inputs, whatever order their keys were given in.
    assert input_digest(_Counts(counts={"x": 1, "y": 2})) == input_digest(
        _Counts(counts={"y": 2, "x": 1})
    )
    # A secret is written masked either way: such an input has no digest (matched by
    # address, as before digests), rather than one digest for every secret.
    assert input_digest(_Secretive(question="q", api_key=SecretStr("k1"))) is None


class _Either(BaseModel):
    x: str | bytes


class _WhenOrText(BaseModel):
    x: str | datetime.datetime


class _Anything(BaseModel):
    x: Any


def test_inputs_that_pydantic_writes_as_one_json_get_different_digests_and_keys() -> None:
    # b"abc" and "abc" (a str | bytes field), a datetime and its ISO text, a set and a dict
    # spelling the set's own tag, a tuple and a list: pydantic writes each pair as one JSON,
    # and a resumed run replayed (the cache answered) one input's result for the other.
    from rh_agents.recovery.cache import cache_key

    actor = Tool(name="t", input_model=_Anything, handler=_noop_handler)
    pairs = [
        (_Either(x=b"abc"), _Either(x="abc")),
        (_WhenOrText(x=datetime.datetime(2024, 1, 1)), _WhenOrText(x="2024-01-01T00:00:00")),
        (_Anything(x={1, 2}), _Anything(x={"<set>": [1, 2]})),
        (_Anything(x={1: "a"}), _Anything(x={"<map>": [[1, "a"]]})),
        (_Anything(x=(1, 2)), _Anything(x=[1, 2])),
        (_Anything(x=uuid.UUID(int=1)), _Anything(x=str(uuid.UUID(int=1)))),
        (_Anything(x=decimal.Decimal("1.5")), _Anything(x="1.5")),
    ]
    for first, second in pairs:
        assert input_digest(first) != input_digest(second), (first, second)
        assert cache_key(actor, first) != cache_key(actor, second), (first, second)
    # Equal ones still share theirs.
    assert input_digest(_Either(x=b"abc")) == input_digest(_Either(x=b"abc"))
    assert input_digest(_Anything(x={2, 1})) == input_digest(_Anything(x={1, 2}))


def test_a_cache_key_keeps_an_actors_name_apart_from_its_version() -> None:
    # They were joined with NUL, which a name may hold: ("a\0b", "1") and ("a", "b\x001")
    # shared their keys, and the second actor got the first's results.
    first = Tool(name="a\0b", version="1", input_model=_Anything, handler=_noop_handler)
    second = Tool(name="a", version="b\x001", input_model=_Anything, handler=_noop_handler)
    from rh_agents.recovery.cache import cache_key

    assert cache_key(first, _Anything(x=1)) != cache_key(second, _Anything(x=1))


async def _noop_handler(input: Any, context: str, state: Any) -> None:
    return None


_SEEDED = """
import sys
from pydantic import BaseModel, ConfigDict, computed_field, field_serializer
from rh_agents.recovery.input_digest import input_digest

class Tagged(BaseModel):
    tags: set[str]

class Computed(BaseModel):
    words: list[str]

    @computed_field
    @property
    def unique(self) -> set[str]:
        return set(self.words)

class Extra(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str

class Serialized(BaseModel):
    names: list[str]

    @field_serializer("names")
    def as_set(self, names: list[str]) -> set[str]:
        return set(names)

words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
print(input_digest(Tagged(tags=set(words))))
print(input_digest(Computed(words=words)))
print(input_digest(Extra(name="x", more=set(words))))
print(input_digest(Serialized(names=words)))
"""


async def test_equal_inputs_get_one_digest_in_every_process() -> None:
    # Sets iterate in an order that follows string hashing, which differs from one process
    # to the next (PYTHONHASHSEED): fields, computed fields, extra fields and serializers
    # that write a set must not make a resumed process see another input.
    import os
    import subprocess
    import sys

    async def digests(seed: str) -> list[str]:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _SEEDED],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        return done.stdout.split()

    first, second = await asyncio.gather(digests("1"), digests("2"))
    assert len(first) == 4 and "None" not in first
    assert first == second


async def test_match_inputs_false_replays_by_address_alone(tmp_path: Path) -> None:
    # For inputs that differ on every run by design (a timestamp made at call time).
    backend = make_backend("sqlite", tmp_path)
    async with ExecutionState(run_id="r", recovery=Recovery(backend)) as state:
        await _square_in_order(state, Squarer(), [2])
    again = Squarer()
    async with ExecutionState.resume("r", backend=backend, match_inputs=False) as state:
        assert await _square_in_order(state, again, [5]) == [4]  # the stored call's result
    assert not again.calls
    with pytest.raises(ConfigurationError, match="match_inputs must be True or False"):
        Recovery(backend, match_inputs="no")  # type: ignore[arg-type]
    backend.close()
