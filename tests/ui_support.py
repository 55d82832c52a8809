"""Helpers of the viewer's tests: stores with runs in them, a workflow to watch, and an httpx
transport that streams an ASGI app's response (httpx's own ``ASGITransport`` returns only once
the whole body is there, which an event stream never is)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.recovery import Recovery
from rh_agents.recovery.opening import open_backend
from rh_agents.recovery.records import CheckpointRecord, RunStatus
from rh_agents.resilience import RetryPolicy
from rh_agents.ui.live import LiveFeed

EVIL = '<script>window.__pwned = 1; document.title = "pwned"</script> bad input'
FAILING = 3  # the member whose call raises EVIL
RETRIED = 1  # the member whose first attempt fails


class Item(BaseModel):
    n: int
    delay: float = 0.0


class Items(BaseModel):
    items: list[Item]


def build_workflow(members: int = 5, *, max_workers: int = 2, group: str = "docs") -> Agent:
    """``Orchestrator`` runs ``work`` over ``members`` items in one group: member ``FAILING``
    fails with ``EVIL``, member ``RETRIED`` succeeds on its second attempt."""
    attempts: dict[int, int] = {}

    async def work(input: Item, context: str, state: ExecutionState) -> dict[str, int]:
        attempts[input.n] = attempts.get(input.n, 0) + 1
        if input.delay:
            await asyncio.sleep(input.delay)
        if input.n == FAILING:
            raise RuntimeError(EVIL)
        if input.n == RETRIED and attempts[input.n] == 1:
            raise ConnectionError("transient")
        return {"n": input.n, "double": input.n * 2}

    tool = Tool(
        name="work",
        description="doubles",
        input_model=Item,
        handler=work,
        retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0),
    )

    async def orchestrate(input: Items, context: str, state: ExecutionState) -> int:
        async with state.parallel(max_workers=max_workers, name=group) as p:
            for item in input.items:
                p.add(ExecutionEvent(actor=tool)(item, context, state))
            results = await p.gather()
        return sum(r.ok for r in results)

    return Agent(
        name="Orchestrator", description="fans out", input_model=Items, handler=orchestrate
    )


async def run_workflow(
    state: ExecutionState, members: int = 5, delay: float = 0.0, **options: Any
) -> None:
    agent = build_workflow(members, **options)
    items = Items(items=[Item(n=i, delay=delay) for i in range(members)])
    async with state:
        await ExecutionEvent(actor=agent)(items, "", state)


async def stored_run(path: Path, run_id: str = "done-run", members: int = 5) -> None:
    """A finished run in the store at ``path``."""
    await run_workflow(ExecutionState(run_id=run_id, recovery=Recovery(path)), members)


def running_run(path: Path, run_id: str = "busy-run", finished: int = 2) -> None:
    """A run whose process is still at work: status running, ``finished`` members stored."""
    with open_backend(path) as backend:
        backend.create_run(run_id)
        backend.save(run_id, [member_record(run_id, i) for i in range(finished)])


def member_record(run_id: str, index: int, status: str = "completed") -> CheckpointRecord:
    group = "Orchestrator::docs"
    return CheckpointRecord(
        run_id=run_id,
        address=f"{group}[{index}]::work",
        seq=index + 1,
        actor="work",
        actor_version="1",
        status=status,
        result_json=f'{{"n": {index}}}' if status == "completed" else None,
        group_id=group,
        parallel_index=index,
        error=None if status == "completed" else "failed",
        execution_time=0.01 * (index + 1),
    )


def add_members(path: Path, run_id: str, indexes: range, status: str | None = None) -> None:
    with open_backend(path, mode="write") as backend:
        final = RunStatus(status) if status is not None else None
        backend.save(run_id, [member_record(run_id, i) for i in indexes], status=final)


def save_records(path: Path, run_id: str, records: list[CheckpointRecord]) -> None:
    """Checkpoint ``records`` into the run (still running) at ``path``, as its process would."""
    with open_backend(path, mode="write") as backend:
        backend.save(run_id, records)


# --- two feeds of one run -----------------------------------------------------------------------

# What may differ between a feed fed every record and one following the state: when each was
# told (a record's timestamp and the log's are read from the clock at slightly different
# moments), and the metrics "so far" worked out from those times.
_WHEN = {"order", "started", "finished", "wall_time", "metrics"}


def _comparable(node: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in node.items() if key not in _WHEN}


def assert_feeds_agree(recorded: LiveFeed, followed: LiveFeed) -> None:
    """``followed`` (a feed following a state) shows what ``recorded`` (fed every record of
    the same run's bus) shows: every node field by field, the groups, the counts, the bars."""
    by_record = {n["address"]: _comparable(n) for n in recorded.all_nodes()}
    by_log = {n["address"]: _comparable(n) for n in followed.all_nodes()}
    differing = {
        address: {
            key: (by_log.get(address, {}).get(key), node.get(key))
            for key in node.keys() | by_log.get(address, {}).keys()
            if by_log.get(address, {}).get(key) != node.get(key)
        }
        for address, node in by_record.items()
        if by_log.get(address) != node
    }
    assert not differing, differing  # (followed, recorded) by field
    assert by_log.keys() == by_record.keys()
    assert [_comparable(g) for g in followed.groups()] == [
        _comparable(g) for g in recorded.groups()
    ]
    assert followed.event_counts() == recorded.event_counts()
    for group in recorded.group_ids():
        bars = [(b.index, b.status, b.attempts) for b in recorded.timeline(group).groups[0].bars()]
        chart = followed.timeline(group).groups[0]
        assert [(b.index, b.status, b.attempts) for b in chart.bars()] == bars


# --- event streams --------------------------------------------------------------------------


def parse_events(text: str) -> list[tuple[str, str]]:
    """``(event, data)`` of each message of an event stream's text."""
    out = []
    for block in text.split("\n\n"):
        event, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((event, "\n".join(data)))
    return out


class EventReader:
    """Reads an event stream's messages a few at a time (one iterator over the body)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_text()
        self._buffer = ""
        self._ready: list[tuple[str, str]] = []

    async def read(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` messages (or fewer, if the stream ends first)."""
        while len(self._ready) < count:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                break
            self._buffer += chunk
            while "\n\n" in self._buffer:
                block, self._buffer = self._buffer.split("\n\n", 1)
                self._ready.extend(parse_events(block + "\n\n"))
        found, self._ready = self._ready[:count], self._ready[count:]
        return found


class _QueueStream(httpx.AsyncByteStream):
    def __init__(self, queue: asyncio.Queue[bytes | None], stop: Any) -> None:
        self._queue = queue
        self._stop = stop

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        await self._stop()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Like ``httpx.ASGITransport``, but the response's body streams as the app sends it, and
    closing the response tells the app the client went away (``http.disconnect``)."""

    def __init__(self, app: Any, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.app = app
        self.client = client
        self.cancelled = 0  # responses whose app did not end by itself when the client left

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for (k, v) in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = loop.create_future()
        gone = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    queue.put_nowait(message["body"])
                if not message.get("more_body"):
                    queue.put_nowait(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if not started.done():
                    started.set_exception(exc)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())

        async def stop() -> None:
            gone.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            except TimeoutError:
                self.cancelled += 1
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        status, headers = await started
        return httpx.Response(status, headers=headers, stream=_QueueStream(queue, stop))


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
