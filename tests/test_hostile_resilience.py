"""Resilience bugs found by porting what tenacity, pybreaker and aiolimiter users expect:
each test fails without its fix."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.errors import ConfigurationError
from rh_agents.resilience import RateLimit, RetryPolicy, retry_after_of
from rh_agents.testing import ManualClock

pytestmark = pytest.mark.timeout(10)


class Item(BaseModel):
    n: int = 0


async def _value() -> int:
    return 1


# --- a timeout too large for a float is refused where it is given --------------------------

# (An int is a number of seconds, but 10**400 is none a float can hold: armed, the loop's
# time plus it raised OverflowError out of the block, or failed the member with it.)
HUGE = 10**400


@pytest.mark.parametrize("option", ["timeout", "member_timeout"])
def test_a_group_timeout_too_large_for_a_float_is_refused_naming_it(option: str) -> None:
    state = ExecutionState()
    with pytest.raises(ConfigurationError, match=rf"^{option} must be a number of seconds"):
        state.parallel(**{option: HUGE})


async def test_a_member_timeout_too_large_for_a_float_is_refused_by_add() -> None:
    async with ExecutionState().parallel() as p:
        with pytest.raises(ConfigurationError, match=r"^timeout must be seconds > 0"):
            p.add(_value, timeout=HUGE)
        p.add(_value, timeout=float("inf"))  # (inf still means no timeout)
    assert [r.ok for r in await p.gather()] == [True]


def test_the_openai_actor_refuses_a_timeout_that_is_no_number_of_seconds() -> None:
    pytest.importorskip("openai")
    from rh_agents.integrations.openai_llm import openai_llm

    for bad in (HUGE, True, float("nan")):
        with pytest.raises(ConfigurationError, match="timeout must be seconds > 0"):
            openai_llm("t", base_url="http://127.0.0.1:9", api_key="k", timeout=bad)


# --- a backoff without an initial delay stays zero at every attempt ------------------------


def test_no_initial_delay_never_waits_max_delay_however_many_attempts() -> None:
    # 0 * 2 ** n is 0; tenacity's wait_exponential answers its max once 2.0 ** n overflows a
    # float (attempt 1025 on), so a poll retried at once waited max_delay (30 s) each time.
    policy = RetryPolicy(max_attempts=5000, initial_delay=0, jitter=0)
    assert [policy.backoff(a) for a in (1, 2, 1024, 1025, 2000, 4999)] == [0.0] * 6
    jittered = RetryPolicy(max_attempts=5000, initial_delay=0, jitter=0.25)
    assert all(0 <= jittered.backoff(a) <= 0.25 for a in (1, 1025, 4999))
    # With a delay, overflowing still means the cap, as documented.
    assert RetryPolicy(initial_delay=0.5, jitter=0).backoff(2000) == 30.0


async def test_a_poll_retried_at_once_keeps_polling_at_once() -> None:
    clock = ManualClock()
    state = ExecutionState(clock=clock)
    calls = 0

    async def poll(input: Item, context: str, state: Any) -> int:
        nonlocal calls
        calls += 1
        return calls

    policy = RetryPolicy(
        max_attempts=1100, initial_delay=0, jitter=0, retry_if_result=lambda n: n < 1100
    )
    event = ExecutionEvent(actor=Tool(name="poll", input_model=Item, handler=poll), retry=policy)
    result = await event(Item(), "", state)
    assert result.ok and result.result == 1100 and result.attempts == 1100
    assert set(clock.sleeps) == {0.0} and clock.time == 0.0


# --- the state's own keyless rate limit holds across event loops ---------------------------


def test_the_states_keyless_rate_limit_gives_no_second_burst_on_a_new_loop() -> None:
    # 3 calls an hour: the first run spends the burst; a second asyncio.run right after it
    # must not get three more (a keyed limit carried its level over; a keyless one did not).
    limit = RateLimit(3, 3600)
    state = ExecutionState(rate_limit=limit)
    calls = 0

    async def handler(input: Item, context: str, state: Any) -> int:
        nonlocal calls
        calls += 1
        return 1

    event = ExecutionEvent(actor=Tool(name="svc", input_model=Item, handler=handler))

    async def first() -> None:
        for _ in range(3):
            assert (await event(Item(), "", state)).ok

    async def second() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await event(Item(), "", state)  # waits ~20 minutes for its token

    asyncio.run(first())
    asyncio.run(second())
    assert calls == 3


# --- an HTTP date without a zone is GMT, not local time ------------------------------------


@pytest.fixture
def eastern_time() -> Iterator[None]:
    """The process's local time zone away from UTC for the test (Unix: TZ and tzset)."""
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset")
    before = os.environ.get("TZ")
    os.environ["TZ"] = "EST+05EDT,M3.2.0,M11.1.0"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


class _Hinted(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


@pytest.mark.parametrize(
    "form",
    [
        "%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate
        "%A, %d-%b-%y %H:%M:%S GMT",  # RFC 850
        "%a %b %d %H:%M:%S %Y",  # asctime: no zone, and GMT all the same (RFC 9110)
        "%a, %d %b %Y %H:%M:%S -0000",
    ],
)
def test_a_retry_after_http_date_is_read_as_gmt_in_every_form(
    eastern_time: None, form: str
) -> None:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
    hint = retry_after_of(_Hinted(when.strftime(form)))
    assert hint is not None and 110 < hint <= 121  # not five hours more
