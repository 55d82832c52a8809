"""``StubLLMServer``: a local OpenAI-compatible chat server over real HTTP (tests, benchmarks).

It listens on 127.0.0.1 on a free port and answers ``POST /v1/chat/completions`` with a valid
completion (the reply echoes the last message). Faults are injected on purpose::

    with StubLLMServer(latency=0.05, capacity=8) as server:       # > 8 at once: 429
        client = AsyncOpenAI(base_url=server.base_url, api_key="test")
        server.fail_next(500, count=2)          # the next two requests get a 500
        server.set_outage(True)                 # every request gets a 503 until set_outage(False)
        ...
        stats = server.stats()                  # total, by_status, max_concurrency, timestamps

``outages=[(1.0, 2.5)]`` adds outage windows in seconds after ``start()``. A 429 carries a
``Retry-After`` header of ``retry_after`` seconds. Each connection is served by its own thread
(``http.server.ThreadingHTTPServer``), so latency is real concurrent waiting.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from rh_agents.errors import ConfigurationError

__all__ = ["StubLLMServer", "StubStats"]

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class StubStats:
    """What the server received. ``timestamps`` are ``time.monotonic()`` arrival times, in
    arrival order, with the status answered in ``statuses`` at the same position."""

    total: int
    by_status: dict[int, int]
    max_concurrency: int
    timestamps: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def count(self, status: int) -> int:
        return self.by_status.get(status, 0)


class StubLLMServer:
    """See the module docstring. ``start()``/``stop()`` or use it as a context manager."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        capacity: int | None = None,
        retry_after: float = 1.0,
        outages: Sequence[tuple[float, float]] = (),
        outage_status: int = 503,
        model: str = "stub-model",
    ) -> None:
        if latency < 0:
            raise ConfigurationError(f"latency must be >= 0 seconds, got {latency!r}")
        if capacity is not None and capacity < 1:
            raise ConfigurationError(f"capacity must be >= 1 or None, got {capacity!r}")
        self.latency = latency
        self.capacity = capacity
        self.retry_after = retry_after
        self.outages = [(float(a), float(b)) for a, b in outages]
        self.outage_status = outage_status
        self.model = model
        self._lock = threading.Lock()
        self._script: list[tuple[int, float | None]] = []
        self._outage = False
        self._active = 0
        self._max_active = 0
        self._timestamps: list[float] = []
        self._statuses: list[int] = []
        self._started_at = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifetime ---------------------------------------------------------------------------

    def start(self) -> StubLLMServer:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> StubLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise ConfigurationError("the stub server is not running: call start() first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``http://127.0.0.1:<port>/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- fault injection ----------------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (before any other rule)."""
        with self._lock:
            self._script.extend([(status, retry_after)] * count)

    def set_outage(self, on: bool) -> None:
        """While on, every request gets ``outage_status``."""
        with self._lock:
            self._outage = on

    # --- statistics ---------------------------------------------------------------------------

    def stats(self) -> StubStats:
        with self._lock:
            return StubStats(
                total=len(self._statuses),
                by_status=dict(Counter(self._statuses)),
                max_concurrency=self._max_active,
                timestamps=list(self._timestamps),
                statuses=list(self._statuses),
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._timestamps.clear()
            self._statuses.clear()
            self._max_active = 0

    # --- serving (handler threads) --------------------------------------------------------------

    def _admit(self, arrived: float) -> tuple[int, float | None]:
        """Decide the status of a request; a 200 takes a capacity slot (see ``_leave``)."""
        with self._lock:
            status: int
            hint: float | None = None
            since = arrived - self._started_at
            if self._script:
                status, hint = self._script.pop(0)
            elif self._outage or any(a <= since < b for a, b in self.outages):
                status = self.outage_status
            elif self.capacity is not None and self._active >= self.capacity:
                status, hint = 429, self.retry_after
            else:
                status = 200
                self._active += 1
                self._max_active = max(self._max_active, self._active)
            if status == 429 and hint is None:
                hint = self.retry_after
            self._timestamps.append(arrived)
            self._statuses.append(status)
            return status, hint

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _completion(self, request: dict[str, Any]) -> dict[str, Any]:
        messages = request.get("messages") or [{}]
        last = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
        text = f"echo: {last}"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(text.split())
        return {
            "id": f"chatcmpl-stub-{len(self._statuses)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _make_handler(stub: StubLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real clients expect

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
            # algorithm and the client's delayed ACK would add ~40 ms to every answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tests read stats(), not logs

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") != CHAT_PATH:
                self._reply(404, _error("not found", "invalid_request_error"), {})
                return
            try:
                request = json.loads(raw or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._reply(400, _error("invalid JSON", "invalid_request_error"), {})
                return
            problem = _request_problem(request)
            if problem is not None:
                # Answered as a server would (a 400), not with a traceback in a handler
                # thread and a dropped connection counted as a 200.
                self._reply(400, _error(problem, "invalid_request_error"), {})
                return
            status, hint = stub._admit(arrived)
            if status != 200:
                headers = {"Retry-After": f"{hint:g}"} if hint is not None else {}
                kind = "rate_limit_exceeded" if status == 429 else "server_error"
                self._reply(status, _error(f"stub answered {status}", kind), headers)
                return
            try:
                if stub.latency:
                    time.sleep(stub.latency)
                body = stub._completion(request)
            finally:
                stub._leave()
            self._reply(200, body, {})

    return Handler


def _request_problem(request: Any) -> str | None:
    """Why ``request`` is not a chat request the stub can answer (None: it is one)."""
    if not isinstance(request, dict):
        return f"the body must be a JSON object, got {type(request).__name__}"
    messages = request.get("messages", [])
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "'messages' must be a list of objects"
    return None


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": kind, "param": None}}
