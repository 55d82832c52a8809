"""``ReadyQueue`` pops exactly what a single heap keyed by (-priority, index) would."""

from __future__ import annotations

import heapq
from collections.abc import Coroutine
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rh_agents.core.parallel.member import Member
from rh_agents.core.parallel.ready import ReadyQueue

# A script: each step either pushes a member (its priority; indices are unique and mostly
# increasing, sometimes out of order, as dependents that become ready late are) or pops one.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from([0, 0, 0, 0, 1, -1, 5]), st.booleans()),
        # A bare coroutine (the plain p.add(coro)): priority 0, always in index order.
        st.tuples(st.just("bare"), st.just(0), st.just(False)),
        st.tuples(st.just("pop"), st.just(0), st.just(False)),
    ),
    max_size=80,
)


async def _idle() -> None:
    return None


def _pending() -> Coroutine[Any, Any, None]:
    return _idle()


@given(steps)
def test_same_order_as_a_plain_heap(script: list[tuple[str, int, bool]]) -> None:
    ready = ReadyQueue()
    coroutines: list[Coroutine[Any, Any, None]] = []
    model: list[tuple[int, int]] = []
    next_index, late = 1000, 0
    for action, priority, out_of_order in script:
        if action == "push":
            if out_of_order:
                late += 1
                index = late  # lower than every in-order index so far
            else:
                next_index += 1
                index = next_index
            ready.push(Member(index, None, priority=priority))
            heapq.heappush(model, (-priority, index))
        elif action == "bare":
            next_index += 1
            coroutine = _pending()
            coroutines.append(coroutine)
            ready.push_bare(coroutine, next_index, float(next_index))
            heapq.heappush(model, (0, next_index))
        else:
            popped = ready.pop()
            expected = heapq.heappop(model)[1] if model else None
            assert (popped.index if popped else None) == expected
            if popped is not None and popped.source is not None:
                # A bare one becomes a member with its coroutine and the time it was added.
                assert popped.enqueued == float(popped.index)
        assert len(ready) == len(model)
    assert sorted(m.index for m in ready.drain()) == sorted(i for _, i in model)
    assert not ready
    for coroutine in coroutines:
        coroutine.close()
