"""Regressions found by probing the executors, the sync-handler threads and the integrations
as a hostile user would: a handler blocked for good, a member that starts processes of its
own, malformed replies from an OpenAI-compatible server.

The members sent to worker processes are defined here, at the top level: the workers import
this module by name (pytest put its folder on the driver's ``sys.path``, which the workers
inherit).
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from executor_support import Item
from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.results import ResultStatus
from rh_agents.executors import ProcessExecutor
from rh_agents.integrations.openai_llm import ChatRequest, MalformedCompletionError, openai_llm
from rh_agents.testing import StubLLMServer

# --- members sent to worker processes ---------------------------------------------------------


def exit_with(code: int) -> None:
    sys.exit(code)


def worker_pid() -> int:
    return os.getpid()


def raise_generator_exit() -> None:
    raise GeneratorExit("from the worker process")


def start_child_then_sleep(path: str) -> int:
    """Start a long ``sleep`` process, say its pid in ``path``, then sleep past any timeout."""
    child = subprocess.Popen(["sleep", "60"])
    Path(path + ".tmp").write_text(str(child.pid))
    os.replace(path + ".tmp", path)  # (whole, for the driver that polls it)
    time.sleep(60)
    return child.pid


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- sync handlers in threads -------------------------------------------------------------------


def test_a_handler_blocked_for_good_does_not_hang_the_programs_exit() -> None:
    # A timed-out handler is abandoned in its thread; with concurrent.futures' threads the
    # interpreter joined it at exit, and a handler blocked for good hung the program.
    script = textwrap.dedent(
        """
        import asyncio, threading
        from pydantic import BaseModel
        from rh_agents.core.actors import Tool
        from rh_agents.core.events import ExecutionEvent
        from rh_agents.core.execution import ExecutionState

        class In(BaseModel):
            n: int = 0

        never = threading.Event()

        def stuck(input: In, context: str, state: ExecutionState) -> int:
            never.wait()
            return 1

        async def main() -> None:
            async with ExecutionState() as state:
                event = ExecutionEvent(actor=Tool(name="stuck", input_model=In, handler=stuck))
                (result,) = await state.parallel_execute([event(In(), "", state)],
                                                         member_timeout=0.1)
            print(result.status.name, flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "TIMED_OUT"
    assert "1 synchronous handler(s) abandoned" in done.stderr


async def test_closing_the_state_reports_an_abandoned_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    running = threading.Event()

    def stuck(input: Item, context: str, state: ExecutionState) -> int:
        running.set()
        release.wait(10)
        return 1

    event = ExecutionEvent(actor=Tool(name="stuck", input_model=Item, handler=stuck))
    try:
        with caplog.at_level(logging.WARNING, logger="rh_agents"):
            async with ExecutionState() as state:
                (result,) = await state.parallel_execute(
                    [event(Item(), "", state)], member_timeout=0.2
                )
        assert result.status is ResultStatus.TIMED_OUT and running.is_set()
        assert any("1 synchronous handler(s) abandoned" in r.message for r in caplog.records)
    finally:
        release.set()
    # The thread ends with its handler, holding nothing.
    deadline = time.monotonic() + 10
    while any(t.name.startswith("rh-agents-handler") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the handler's thread outlived its handler"
        await asyncio.sleep(0.01)


async def test_the_thread_pool_still_runs_at_most_limit_handlers_at_once() -> None:
    gate = threading.Event()
    ran: list[int] = []
    lock = threading.Lock()
    full = threading.Event()
    inside = 0
    peak = 0

    def work(input: Item, context: str, state: ExecutionState) -> int:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
            if inside == 2:
                full.set()
        gate.wait(5)
        with lock:
            inside -= 1
            ran.append(input.n)
        return input.n

    event = ExecutionEvent(actor=Tool(name="work", input_model=Item, handler=work))
    async with ExecutionState(max_threads=2) as state:
        task = asyncio.ensure_future(
            state.parallel_execute([event(Item(n=n), "", state) for n in range(6)], max_workers=6)
        )
        assert await asyncio.to_thread(full.wait, 5)
        gate.set()
        results = await task
    assert [r.result for r in results] == list(range(6)) and peak == 2


# --- worker processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessExecutor]:
    with ProcessExecutor(max_processes=2) as pool:
        yield pool


async def test_a_timed_out_member_takes_the_processes_it_started_with_it(
    pool: ProcessExecutor, tmp_path: Path
) -> None:
    # The worker was killed alone: the `sleep` its member started lived on, an orphan.
    marker = tmp_path / "child.pid"
    async with ExecutionState() as state:
        (result,) = await state.parallel_execute(
            [functools.partial(start_child_then_sleep, str(marker))],
            executor=pool,
            member_timeout=5.0,
        )
    assert result.status is ResultStatus.TIMED_OUT
    child = int(marker.read_text())
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, f"process {child} outlived its member"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("member", "raised_as"),
    [
        (functools.partial(exit_with, 3), SystemExit(3)),
        (raise_generator_exit, GeneratorExit("from the worker process")),
    ],
    ids=["sys.exit", "GeneratorExit"],
)
async def test_a_process_members_base_exception_is_raised_where_it_was_awaited(
    pool: ProcessExecutor, member: Any, raised_as: BaseException
) -> None:
    # Its worker process exited ("the worker process died, exit code 3", or 1 with a hint
    # about __main__ that did not apply) and the pool started another. Now it is the
    # member's own outcome, as on the event loop (and as concurrent.futures has it), and the
    # worker stays.
    async with ExecutionState() as state:
        (first,) = await state.parallel_execute([worker_pid], executor=pool, max_workers=1)
        with pytest.raises(type(raised_as)) as raised:
            async with state.parallel(max_workers=1, executor=pool) as p:
                p.add(member)
        assert raised.value.args == raised_as.args
        (result,) = p._tally.collected()
        assert result.status is ResultStatus.FAILED
        assert isinstance(result.exception, type(raised_as))
        (again,) = await state.parallel_execute([worker_pid], executor=pool, max_workers=1)
    assert again.result == first.result  # the same worker process answered


_KILLED_DRIVER = """
import asyncio, functools, os, sys, time
from rh_agents import ExecutionState

def work(path):
    with open(path, "a") as log:
        log.write(f"start {os.getpid()}\\n")
    time.sleep(5)
    with open(path, "a") as log:
        log.write("end\\n")

async def main():
    async with ExecutionState() as state:
        await state.parallel_execute([functools.partial(work, sys.argv[1])], executor="processes")

if __name__ == "__main__":
    asyncio.run(main())
"""


async def test_a_worker_process_ends_when_its_driver_is_killed(tmp_path: Path) -> None:
    # The driver killed outright runs no cleanup: its worker, busy in a handler, finished
    # it (side effects and all) while a resumed run would run it again. It now ends with it.
    script = tmp_path / "driver.py"
    script.write_text(_KILLED_DRIVER)
    log = tmp_path / "log"
    driver = await asyncio.create_subprocess_exec(sys.executable, str(script), str(log))
    try:
        deadline = time.monotonic() + 30
        while not log.exists() or "start" not in log.read_text():
            assert time.monotonic() < deadline, "the member never started"
            await asyncio.sleep(0.02)
        worker = int(log.read_text().split()[1])
        driver.kill()
        await driver.wait()
        deadline = time.monotonic() + 5
        while _alive(worker):
            assert time.monotonic() < deadline, f"worker {worker} outlived its killed driver"
            await asyncio.sleep(0.02)
        assert "end" not in log.read_text()
    finally:
        if driver.returncode is None:
            driver.kill()
            await driver.wait()


# --- the OpenAI-compatible LLM actor and the stub server ---------------------------------------


class _Answer:
    """What the fixture server answers next: a content type and a body."""

    content_type = "application/json"
    body = b"{}"


def _bad_server_handler(answer: type[_Answer]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

    return Handler


@pytest.fixture
def bad_server() -> Iterator[tuple[str, type[_Answer]]]:
    class Answer(_Answer):
        pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _bad_server_handler(Answer))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", Answer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("content_type", "body", "why"),
    [
        ("text/html", b"<html>bad gateway</html>", "it is a str: '<html>bad gateway</html>'"),
        ("application/json", b"{not json", "its body is not JSON"),
        ("application/json", b"{}", "choices=None"),
        (
            "application/json",
            json.dumps(
                {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []}
            ).encode(),
            "choices=[]",
        ),
    ],
)
async def test_a_reply_that_is_not_a_chat_completion_gets_a_clear_error(
    bad_server: tuple[str, type[_Answer]], content_type: str, body: bytes, why: str
) -> None:
    # It surfaced as an AttributeError, a TypeError, an IndexError or a bare JSONDecodeError.
    url, answer = bad_server
    answer.content_type, answer.body = content_type, body
    llm = openai_llm("writer", model="m1", base_url=url, api_key="test")
    try:
        async with ExecutionState() as state:
            result = await ExecutionEvent(actor=llm)(ChatRequest(prompt="hi"), "", state)
    finally:
        await llm.handler.aclose()
    assert result.status is ResultStatus.FAILED
    assert isinstance(result.exception, MalformedCompletionError)
    assert f"model 'm1' at {url} did not answer with a chat completion" in (result.error or "")
    assert why in (result.error or "")


@pytest.mark.parametrize(
    "body", [b"[1, 2]", b'"text"', b'{"messages": "hi"}', b'{"messages": [1]}']
)
def test_the_stub_answers_a_request_of_the_wrong_shape_with_a_400(body: bytes) -> None:
    # It raised in its handler thread (a traceback on stderr), dropped the connection, and
    # counted the request as a 200.
    with StubLLMServer() as stub:
        connection = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=5)
        try:
            connection.request("POST", "/v1/chat/completions", body)
            response = connection.getresponse()
            reply = json.loads(response.read())
        finally:
            connection.close()
        assert response.status == 400
        assert reply["error"]["type"] == "invalid_request_error"
        assert stub.stats().count(200) == 0


async def test_members_one_after_another_keep_to_one_process(pool: ProcessExecutor) -> None:
    # A process that answered rests a loop turn or two before it takes the next request
    # (so that a stop can cancel the requests waiting): the request sent meanwhile waits for
    # it, rather than have the pool start a second process for nothing.
    async with ExecutionState() as state:
        pids = set()
        for _ in range(6):
            (result,) = await state.parallel_execute([worker_pid], executor=pool, max_workers=1)
            pids.add(result.result)
    assert len(pids) == 1
