"""A hostile user's mistakes, outside the parallel group: each one a clear error of the
library's own (never an ``AttributeError`` or a ``TypeError`` from deep inside, a hang, or a
lost result), or output that stays readable."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from typer.testing import CliRunner

from rh_agents import EventBus, EventPrinter, ExecutionEvent, ExecutionState, Tool, tool
from rh_agents.bus_handlers import ParallelEventPrinter
from rh_agents.cli import app
from rh_agents.errors import ActorDefinitionError, ConfigurationError, RecoveryError
from rh_agents.recovery import ActorCache, MemoryCacheStore, Recovery, SQLiteBackend

pytestmark = pytest.mark.timeout(30)


class Doc(BaseModel):
    text: str


async def echo(input: Doc, context: str, state: ExecutionState) -> str:
    return input.text


ECHO = ExecutionEvent(actor=Tool(name="echo", input_model=Doc, handler=echo))


# --- events and states ---------------------------------------------------------------------


@pytest.mark.parametrize("state", ["state", ExecutionState, 42])
def test_an_event_called_without_a_state_in_third_place_says_so(state: Any) -> None:
    with pytest.raises(ConfigurationError, match="needs the ExecutionState as its third"):
        ECHO(Doc(text="a"), "", state)


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("event_bus", EventPrinter(), "event_bus must be an EventBus"),
        ("recovery", "runs.db", "recovery must be a Recovery"),
        ("cache", True, "cache must be an ActorCache"),
        ("clock", time.time, "clock must have now()"),
    ],
)
def test_a_state_refuses_a_part_of_the_wrong_kind_when_made(
    option: str, value: Any, named: str
) -> None:
    # Before: accepted, then an AttributeError at the first call (or, for recovery, at once).
    with pytest.raises(ConfigurationError, match=named):
        ExecutionState(**{option: value})


# --- actors --------------------------------------------------------------------------------


async def no_parameters() -> str:
    return "x"


async def input_only(input: Doc) -> str:
    return "x"


async def keyword_needed(input: Doc, context: str, state: Any, *, extra: int) -> str:
    return "x"


@pytest.mark.parametrize("handler", [no_parameters, input_only, keyword_needed])
def test_a_handler_that_cannot_take_input_context_state_is_refused_at_definition(
    handler: Any,
) -> None:
    # Before: accepted, and every call failed with the same TypeError.
    with pytest.raises(ActorDefinitionError, match=r"handler\(input, context, state\)"):
        Tool(name="t", input_model=Doc, handler=handler)


def test_handlers_that_take_three_arguments_in_any_form_are_accepted() -> None:
    async def star(*args: Any) -> str:
        return "x"

    async def defaults(input: Doc, context: str = "", state: Any = None, more: int = 1) -> str:
        return "x"

    for handler in (star, defaults, echo, lambda input, context, state: 1):
        Tool(name="t", input_model=Doc, handler=handler)


def test_a_decorator_given_a_name_positionally_says_how_to_pass_it() -> None:
    with pytest.raises(ActorDefinitionError, match=r"by keyword \(@tool\(name=\.\.\.\)\)"):
        tool("summarize")


# --- printers ------------------------------------------------------------------------------


async def shouts_in_colour(input: Doc, context: str, state: ExecutionState) -> str:
    raise ValueError("bad \x1b[2Jthing\x07\x00")


async def _printed(printer: EventPrinter, buffer: io.StringIO) -> str:
    bus = EventBus()
    bus.subscribe(printer)
    async with ExecutionState(event_bus=bus) as state:
        await ECHO(Doc(text="x\x1b[31my"), "", state)
        odd = Tool(name="a\rb\x07", input_model=Doc, handler=shouts_in_colour)
        async with state.parallel(name="g") as group:
            group.add(ExecutionEvent(actor=odd)(Doc(text="q"), "", state))
    if isinstance(printer, ParallelEventPrinter):
        printer.close()
    return buffer.getvalue()


@pytest.mark.parametrize("parallel", [False, True])
async def test_printers_show_control_characters_rather_than_send_them(parallel: bool) -> None:
    # Before: an error holding "\x1b[2J" cleared the terminal; a log got raw control codes.
    buffer = io.StringIO()
    console = Console(file=buffer, width=100)
    printer = (
        ParallelEventPrinter("realtime", console=console) if parallel else EventPrinter(console)
    )
    text = await _printed(printer, buffer)
    assert not any(c in text for c in "\x1b\x07\x00\r"), repr(text)
    assert "bad ␛[2Jthing␇␀" in text
    assert "a␍b␇" in text


async def test_the_live_view_shows_control_characters_rather_than_send_them() -> None:
    bus = EventBus()
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    printer = ParallelEventPrinter("progress", console=console)
    bus.subscribe(printer)
    drawn: list[str] = []

    async def member() -> None:
        await bus.drain()  # the printer has seen the group and this member start
        with console.capture() as captured:
            console.print(printer.render())
        drawn.append(captured.get())

    state = ExecutionState(event_bus=bus)
    async with state, state.parallel(name="g\x1b\x07") as group:
        group.add(member, name="m\x1b[31m")
    printer.close()
    assert "\x07" not in drawn[0] and "\x1b[31m" not in drawn[0], repr(drawn[0])
    assert "g␛␇" in drawn[0] and "m␛[31m" in drawn[0]


# --- cache ---------------------------------------------------------------------------------


class Blob(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    data: bytes
    extra: Any = None


async def size(input: Blob, context: str, state: ExecutionState) -> int:
    return len(input.data)


async def test_a_cacheable_call_whose_input_has_no_key_runs_without_the_cache() -> None:
    # Before: bytes that are not UTF-8 (or any object pydantic cannot dump) failed the call.
    event = ExecutionEvent(actor=Tool(name="size", input_model=Blob, handler=size, cacheable=True))
    cache = ActorCache()
    state = ExecutionState(cache=cache)
    for blob in (Blob(data=b"\xff\x00"), Blob(data=b"", extra=object())):
        result = await event(blob, "", state)
        assert result.ok, result.error
        assert result.result == len(blob.data)
    assert cache.hits == 0


class BrokenStore(MemoryCacheStore):
    """A store whose every read and write fails, as an SQLite file locked past its timeout."""

    def get(self, key: str, actor: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    def put(self, key: str, actor: Any, value: Any) -> None:
        raise sqlite3.OperationalError("database is locked")


async def test_a_failing_cache_store_never_costs_a_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: the handler ran and succeeded, then the failed put turned it into a failure.
    cache = ActorCache(BrokenStore())
    state = ExecutionState(cache=cache)
    event = ExecutionEvent(actor=Tool(name="cached", input_model=Doc, handler=echo, cacheable=True))
    with caplog.at_level(logging.WARNING, logger="rh_agents.recovery"):
        results = [await event(Doc(text="a"), "", state) for _ in range(3)]
        async with state.parallel(name="g") as group:
            for _ in range(3):
                group.add(event(Doc(text="b"), "", state))
        results += await group.gather()
    assert [(r.ok, r.result) for r in results] == [(True, "a")] * 3 + [(True, "b")] * 3
    assert cache.store_errors and isinstance(cache.store_errors[0], sqlite3.OperationalError)
    # Once per streak of failures, for reading and for writing, not once per call.
    warned = [r for r in caplog.records if "cache store" in r.getMessage()]
    assert len(warned) == 2


# --- recovery options and stores -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"backend": 3}, "a state store is a path"),
        ({"backend": ""}, "path is empty"),
        ({"checkpoint": "every"}, "checkpoint must be a CheckpointPolicy"),
        ({"write_wait": "0.1"}, "write_wait must be a number"),
        ({"close_timeout": None}, "close_timeout must be a number"),
    ],
)
def test_recovery_options_of_the_wrong_kind_are_configuration_errors(
    options: dict[str, Any], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options.setdefault("backend", tmp_path / "state.db")
    with pytest.raises(ConfigurationError, match=named):
        Recovery(**options)
    assert sorted(os.listdir(tmp_path)) in ([], ["state.db"])  # nothing in the current folder


def test_a_store_path_under_the_home_folder_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: Recovery("~/runs.db") made a folder named "~" in the current folder (while
    # RH_AGENTS_STATE="~/runs.db" meant the home folder).
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    ExecutionState(run_id="r", recovery=Recovery("~/runs.db")).recovery.close()  # type: ignore[union-attr]
    assert (home / "runs.db").is_file()
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_database_path_that_is_not_a_file_is_a_recovery_error(kind: str, tmp_path: Path) -> None:
    # Before: reading a named pipe hung; a folder was "a disk I/O error, check the disk".
    path = tmp_path / "state.db"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    for mode in ("read", "write", "create"):
        with pytest.raises(RecoveryError, match=r"state\.db is (a folder|not a regular file)"):
            SQLiteBackend(path, mode=mode).list_runs()  # type: ignore[arg-type]
    listed = CliRunner().invoke(app, ["runs", "list", "--state", str(path)])
    assert listed.exit_code == 2
    assert "not a regular file" in listed.output or "is a folder" in listed.output


# --- the bus -------------------------------------------------------------------------------


def test_a_bus_shutdown_timeout_that_is_not_a_number_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="shutdown_timeout must be None or a number"):
        EventBus(shutdown_timeout="5")  # type: ignore[arg-type]


async def test_a_bus_closed_by_an_earlier_run_is_refused_rather_than_silently_deaf() -> None:
    # Before: the second run's records were dropped without a word (its feeders had stopped).
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(lambda record: seen.append(record.kind))
    async with ExecutionState(event_bus=bus) as state:
        await ECHO(Doc(text="a"), "", state)
    assert bus.closed and seen == ["event.started", "event.completed"]
    with pytest.raises(ConfigurationError, match="make a new EventBus for each run"):
        ExecutionState(event_bus=bus)


async def test_two_runs_sharing_one_bus_at_once_do_not_end_each_others_records() -> None:
    # Before: the first run to leave its block closed the bus, and every record of the other
    # run after that was dropped without a word.
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(lambda record: seen.append(f"{record.kind} {record.address}"))
    second_may_go, second_in = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with ExecutionState(event_bus=bus) as state:
            await ExecutionEvent(actor=ECHO.actor, tag="first")(Doc(text="a"), "", state)

    async def second() -> None:
        async with ExecutionState(event_bus=bus) as state:
            second_in.set()
            await second_may_go.wait()
            await ExecutionEvent(actor=ECHO.actor, tag="second")(Doc(text="b"), "", state)

    later = asyncio.create_task(second())
    await second_in.wait()
    await first()
    assert not bus.closed  # the second run still uses it
    assert seen == ["event.started first", "event.completed first"]  # (caught up at its end)
    second_may_go.set()
    await later
    assert bus.closed  # the last run out closes it
    assert seen[2:] == ["event.started second", "event.completed second"]
    # A state that closes without having entered its block does not close a bus in use.
    bus = EventBus()
    async with ExecutionState(event_bus=bus):
        await ExecutionState(event_bus=bus).close()
        assert not bus.closed
    assert bus.closed


def test_a_subscriber_that_raises_system_exit_stops_the_program_without_a_hang() -> None:
    # rich raises SystemExit(1) when the pipe it prints to is closed (`python run.py | head`).
    # Before: the subscription stayed "awake" with nobody feeding it, and leaving the state
    # (bus.close) waited for it forever.
    seen: list[str] = []

    def printer(record: Any) -> None:
        seen.append(record.kind)
        if len(seen) == 3:
            raise SystemExit(1)

    async def main() -> None:
        bus = EventBus()
        bus.subscribe(printer)
        async with ExecutionState(event_bus=bus) as state:
            for _ in range(5):
                await ECHO(Doc(text="a"), "", state)
            await asyncio.Event().wait()  # only the subscriber's SystemExit ends this

    with pytest.raises(SystemExit):
        asyncio.run(main())
    assert len(seen) == 10  # the records after the exit were still handed over, at close


async def test_a_subscriber_that_drains_its_own_bus_gets_an_error_rather_than_a_deadlock() -> None:
    # Before: drain() waited for every subscriber to be idle, the caller included: forever
    # (until the bus's shutdown_timeout cancelled the subscriber when the state ended).
    bus = EventBus(shutdown_timeout=30)
    refused: list[BaseException] = []

    async def flushing(record: Any) -> None:
        try:
            await asyncio.wait_for(bus.drain(), 20)  # its own task on 3.11: still refused
        except ConfigurationError as exc:
            refused.append(exc)

    bus.subscribe(flushing)
    async with ExecutionState(event_bus=bus) as state:
        await ECHO(Doc(text="a"), "", state)
    assert len(refused) == 2 and "called by its own subscriber" in str(refused[0])
    assert not bus.subscriber_errors


async def test_a_subscriber_broken_for_good_is_counted_not_kept_record_by_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: every failure was kept (its exception and traceback) and logged: a printer that
    # raised on each of a million records grew memory and the log without bound.
    from rh_agents.core.bus import MAX_KEPT_ERRORS

    bus = EventBus()

    def broken(record: Any) -> None:
        raise ValueError("the printer's file is closed")

    seen: list[str] = []
    bus.subscribe(broken)
    bus.subscribe(lambda record: seen.append(record.kind))
    calls = MAX_KEPT_ERRORS  # two records each
    with caplog.at_level(logging.ERROR, logger="rh_agents.bus"):
        async with ExecutionState(event_bus=bus) as state:
            for _ in range(calls):
                await ECHO(Doc(text="a"), "", state)
    assert len(seen) == 2 * calls  # the others never notice
    assert bus.subscriber_error_count == 2 * calls
    assert len(bus.subscriber_errors) == MAX_KEPT_ERRORS
    logged = [r.getMessage() for r in caplog.records if r.name == "rh_agents.bus"]
    assert len(logged) == MAX_KEPT_ERRORS + 1
    assert "further failures are only counted" in logged[-1]


async def test_entering_a_run_whose_bus_an_earlier_run_closed_is_refused() -> None:
    # Both states were made with the bus open; the first ended (and closed it) before the
    # second began: the second's records were dropped silently.
    bus = EventBus()
    first, second = ExecutionState(event_bus=bus), ExecutionState(event_bus=bus)
    async with first:
        await ECHO(Doc(text="a"), "", first)
    with pytest.raises(ConfigurationError, match="make a new EventBus for each run"):
        async with second:
            pass
