"""Running the viewer: in this process next to a run (``serve``), or on its own (``run_server``).

::

    async with rh_agents.ui.serve(state) as viewer:    # one call: the run is watched live
        print("watch it at", viewer.run_url(state))
        async with state:
            await orchestrate(state)

    viewer = await rh_agents.ui.serve(state)            # or without a block
    ...
    await viewer.close()

``serve`` starts a uvicorn server on the running event loop (the run's), bound to 127.0.0.1,
and subscribes a ``LiveFeed`` to the state's bus (``Viewer.watch`` adds more runs). It never
touches signal handlers (Ctrl-C stays the program's), and binds its socket itself, so a port
in use is an ``OSError`` here rather than an exit inside uvicorn. With ``port=None`` it takes
``DEFAULT_PORT`` when free, else any free port (``viewer.url`` says which).

``run_server`` is ``rh-agents ui``: the viewer over a store, until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import uuid
import webbrowser
from collections.abc import Generator, Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import quote

import uvicorn

from rh_agents.core.execution import ExecutionState
from rh_agents.core.run_ids import check_run_id
from rh_agents.core.safe_text import one_line
from rh_agents.errors import ConfigurationError
from rh_agents.ui.app import LOCAL_HOSTS, create_app
from rh_agents.ui.live import LiveFeed
from rh_agents.ui.store import StoreReader

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Viewer",
    "banner",
    "bind",
    "check_host",
    "check_port",
    "open_in_browser",
    "run_server",
    "serve",
    "store_of",
]

logger = logging.getLogger("rh_agents.ui")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
# As it stops, the viewer waits at most this long for the event streams of runs that are over
# to send their ``end`` (a client that stopped reading is cut meanwhile, as while stopping).
_END_TIMEOUT = 2.0
# While it stops, a client whose unsent data did not move in this long has stopped reading.
_STALL_CHECK = 0.1


class _ViewerServer(uvicorn.Server):
    """uvicorn's server, which ends the open event streams at once when it stops: it sets
    ``closing`` (the streams waiting for news end on it), and cuts the connection of a client
    that stopped reading. Without ``signals`` it leaves signal handlers alone (``serve``: the
    program keeps its own)."""

    def __init__(self, config: uvicorn.Config, closing: asyncio.Event, *, signals: bool) -> None:
        super().__init__(config)
        self._closing = closing
        self._signals = signals

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self._signals:
            yield
            return
        with super().capture_signals():
            yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._closing.set()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._closing.set()
        cutter = asyncio.create_task(self._cut_stalled_clients())
        try:
            await super().shutdown(sockets)
        finally:
            cutter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cutter

    async def _cut_stalled_clients(self) -> None:
        """While the server stops: abort each connection whose unsent data has not moved for
        ``_STALL_CHECK`` seconds (its client stopped reading).

        A stream to such a client is blocked in a send, waiting for room in the socket, not
        on ``closing``: it could never end, and uvicorn waited its whole grace period, then
        cancelled it with an ERROR traceback. Aborted, the connection is lost, its send
        returns and its stream ends as for any client that left."""
        unsent: dict[Any, int] = {}
        while True:
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is None:
                    continue
                pending = transport.get_write_buffer_size()
                if pending and unsent.get(connection) == pending:
                    transport.abort()
                unsent[connection] = pending
            await asyncio.sleep(_STALL_CHECK)


def bind(host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT) -> socket.socket:
    """A listening socket on ``host``: at ``port``, or (``None``) ``DEFAULT_PORT`` if free and
    any free port if not. ``OSError`` if it cannot be bound; ``ConfigurationError`` for an
    empty host or a port that is no port (checked before a socket is made), and for a host
    the socket layer cannot take (a NUL in it)."""
    check_host(host)
    check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [DEFAULT_PORT, 0] if port is None else [port]
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, candidate))
            sock.listen(128)
        except BaseException as exc:  # closed whatever failed: a socket is never left open
            sock.close()
            in_use = isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
            if in_use and candidate != candidates[-1]:
                continue
            if isinstance(exc, TypeError | ValueError):  # (the port was checked: the host's)
                raise ConfigurationError(
                    f"the viewer cannot listen on host {host!r} ({exc}): give an address "
                    "such as 127.0.0.1"
                ) from exc
            raise
        sock.setblocking(False)
        return sock
    raise AssertionError("unreachable")


def store_of(state: ExecutionState) -> Path | None:
    """The store a state checkpoints into (its recovery's file or folder), if any."""
    backend = getattr(state.recovery, "backend", None)
    for attribute in ("path", "directory"):
        where = getattr(backend, attribute, None)
        if where is not None:
            return Path(where)
    return None


def check_host(host: str) -> str:
    """``host``, or a ``ConfigurationError`` for an empty one: the socket layer takes ``""``
    as every interface, while the viewer would name (and announce) 127.0.0.1."""
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError(
            f"the viewer's host must be an address, got {host!r}: 127.0.0.1 (this machine "
            "only, the default), or 0.0.0.0 to listen on every interface"
        )
    return host


def check_port(port: int | None) -> int | None:
    """``port``, or a ``ConfigurationError`` unless it is ``None`` or an int from 0 to 65535
    (``rh-agents ui --port``'s range). A bool is refused though it is an int (``port=True``
    would listen on port 1), and so is a string (``"8000"``)."""
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise ConfigurationError(
            f"the viewer's port must be an int from 0 to 65535, got {port!r}: 0 takes any "
            f"free port, None (the default) {DEFAULT_PORT} if it is free, else any"
        )
    return port


def _check_state(label: str, state: Any, hint: str = "") -> None:
    if not isinstance(state, ExecutionState):
        raise ConfigurationError(f"{label} takes the run's ExecutionState, got {state!r}{hint}")


def _hosts(host: str) -> list[str] | None:
    if host in ("0.0.0.0", "::"):
        return None  # reachable under any name: the caller asked for it
    return [*LOCAL_HOSTS, host]


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]" if host == "::" else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class Viewer:
    """A viewer server running on this event loop; see the module docstring."""

    def __init__(
        self,
        *,
        store: str | Path | None = None,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        poll_interval: float = 1.0,
        push_interval: float = 0.25,
    ) -> None:
        self.host = check_host(host)
        self._port = check_port(port)
        self.store = StoreReader(store)
        self.feeds: dict[str, LiveFeed] = {}
        self.app = create_app(
            self.store,
            feeds=self.feeds,
            poll_interval=poll_interval,
            push_interval=push_interval,
            allowed_hosts=_hosts(host),
        )
        self._socket: socket.socket | None = None
        self._bound: int | None = None
        self._server: _ViewerServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscriptions: list[tuple[Any, Any]] = []

    @property
    def port(self) -> int:
        if self._bound is None:
            raise RuntimeError("the viewer is not started")
        return self._bound

    @property
    def url(self) -> str:
        """The runs list, ``http://127.0.0.1:PORT/``."""
        return _url(self.host, self.port) + "/"

    def run_url(self, run: ExecutionState | LiveFeed | str) -> str:
        """The page of ``run`` (a watched state, its feed, or a run id)."""
        if isinstance(run, ExecutionState):
            run = self._feed_of(run).run_id
        elif isinstance(run, LiveFeed):
            run = run.run_id
        return self.url + "runs/" + quote(run, safe="")

    async def start(self) -> Viewer:
        """Bind and serve (returns once the server accepts connections)."""
        if self._task is not None:
            return self
        self._socket = bind(self.host, self._port)
        self._bound = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = _ViewerServer(config, self.app.state.viewer.closing, signals=False)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        try:
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # its error
                    raise RuntimeError("the viewer's server stopped as it started")
                if loop.time() > deadline:
                    raise TimeoutError(f"the viewer did not start within {_START_TIMEOUT} s")
                await asyncio.sleep(0.01)
        except BaseException:
            # Its error, the timeout, or a cancellation: nothing stays bound or running.
            await self._undo_start()
            raise
        return self

    async def _undo_start(self) -> None:
        """Undo a start that did not finish: stop the server if it runs, close the socket."""
        task = self._task
        if task is not None and task.done():
            self._task = None  # (its error, if any, is the one being raised)
            if not task.cancelled():
                task.exception()
        with contextlib.suppress(Exception):
            await self.close()
        if self._socket is not None:
            self._socket.close()

    # --- runs -----------------------------------------------------------------------------

    def watch(self, state: ExecutionState, run_id: str | None = None) -> LiveFeed:
        """Follow ``state``'s run live (a ``LiveFeed`` following it: see ``LiveFeed.follow``).
        ``run_id``: its name in the viewer (default: the state's run id, else a new one)."""
        _check_state("viewer.watch()", state)
        for feed, watched in list(self._subscriptions):
            if watched is state:
                if feed.status is None:
                    return feed  # type: ignore[no-any-return]
                # That run is over (finished): this is a new one on the same state.
                self._subscriptions.remove((feed, watched))
        name = run_id or state.run_id or f"live-{uuid.uuid4().hex[:12]}"
        check_run_id(name)  # (InvalidRunIdError, naming the rule: the caller's mistake)
        watched = self.feeds.get(name)
        if watched is not None and watched.status is None:
            # Replacing it would hide a run still in progress (its feed following on, unseen).
            raise ConfigurationError(
                f"the viewer already watches a run named {name!r} that is still running; "
                "watch this one under another name: viewer.watch(state, run_id=...)"
            )

        feed = LiveFeed(name, clock_now=state.clock.now)
        feed.follow(state)
        self.feeds[name] = feed
        self._subscriptions.append((feed, state))
        return feed

    def _feed_of(self, state: ExecutionState) -> LiveFeed:
        for feed, watched in self._subscriptions:
            if watched is state:
                return feed  # type: ignore[no-any-return]
        raise ConfigurationError(
            "this state is not watched by the viewer: call viewer.watch(state) first"
        )

    def finish(self, run: ExecutionState | LiveFeed | str | None = None, status: str = "") -> None:
        """Say that a watched run is over (``status``: ``completed`` by default, or
        ``failed``/``interrupted``); its page and streams stop waiting for more. ``None``:
        every watched run."""
        feeds: Iterable[LiveFeed]
        if run is None:
            feeds = list(self.feeds.values())
        elif isinstance(run, ExecutionState):
            feeds = [self._feed_of(run)]
        elif isinstance(run, LiveFeed):
            feeds = [run]
        else:
            feed = self.feeds.get(run)
            if feed is None:
                known = ", ".join(sorted(self.feeds)) or "none"
                raise ConfigurationError(
                    f"the viewer watches no run named {run!r} (watched: {known})"
                )
            feeds = [feed]
        for feed in feeds:
            feed.finish(status or "completed")

    async def wait_closed(self) -> None:
        """Wait until the server stops (``close()``, or a cancellation such as Ctrl-C)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop serving and detach from every run. The open event streams of runs that are
        over (``finish``) send their ``end`` first (for at most ``_END_TIMEOUT`` seconds); the
        others end at once."""
        for feed, _state in self._subscriptions:
            feed.unfollow()
        self._subscriptions.clear()
        await self._let_streams_end()
        self.app.state.viewer.closing.set()
        server, task = self._server, self._task
        if server is not None:
            server.should_exit = True
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT)
            except TimeoutError:
                if server is not None:
                    server.force_exit = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None
        if self._socket is not None:
            self._socket.close()

    async def _let_streams_end(self) -> None:
        """Let the open event streams of runs that are over send their ``end``: ``closing``,
        set at once, ended them before it (a client got its last update, then the stream
        closed with no word of the run's end). Bounded: a connection whose client stopped
        reading is cut meanwhile (its stream was blocked in a send), and no stream is waited
        for longer than ``_END_TIMEOUT``."""
        server, task, vs = self._server, self._task, self.app.state.viewer
        if server is None or task is None or task.done():
            return
        if all(feed.running for feed in vs.streams.values()):
            return
        cutter = asyncio.create_task(server._cut_stalled_clients())
        try:
            await asyncio.wait_for(vs.streams_ended(), _END_TIMEOUT)
        except TimeoutError:
            logger.debug("viewer: an event stream did not end within %s s", _END_TIMEOUT)
        finally:
            cutter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cutter

    async def __aenter__(self) -> Viewer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        status = "completed" if exc is None else "interrupted"
        if exc is not None and not isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
            status = "failed"
        self.finish(status=status)
        await self.close()


class _Serving:
    """What ``serve`` returns: await it for a started ``Viewer``, or use it as
    ``async with`` (the runs are marked finished and the server stopped at the end)."""

    def __init__(self, viewer: Viewer, state: ExecutionState | None, open_browser: bool) -> None:
        self._viewer = viewer
        self._state = state
        self._open = open_browser

    async def _start(self) -> Viewer:
        viewer = self._viewer
        await viewer.start()
        target = viewer.url
        if self._state is not None:
            try:
                target = viewer.run_url(viewer.watch(self._state))
            except BaseException:
                # Should watching fail, the caller gets no viewer to close: it is closed
                # here, its socket with it.
                with contextlib.suppress(Exception):
                    await viewer.close()
                raise
        logger.info("rh_agents viewer on %s", target)
        if self._open:
            open_in_browser(target)
        return viewer

    def __await__(self) -> Generator[Any, None, Viewer]:
        return self._start().__await__()

    async def __aenter__(self) -> Viewer:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._viewer.__aexit__(exc_type, exc, tb)


def serve(
    state: ExecutionState | None = None,
    *,
    store: str | Path | None = None,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    open_browser: bool = False,
    poll_interval: float = 1.0,
) -> _Serving:
    """Serve the viewer from this process and watch ``state``'s run live; see the module
    docstring. ``store``: the store it lists runs from (default: the one ``state``
    checkpoints into, else ``default_state_path()``); ``open_browser``: open the run's page.

    A ``state`` that is not an ``ExecutionState``, an empty host, a port that is no port
    (``port``: an int from 0 to 65535, or ``None``) or a ``poll_interval`` (seconds between
    two reads of a run's progress from the store) that is not a finite number of at least
    0.01 is a ``ConfigurationError`` here, before any socket is made.
    """
    if state is not None:
        _check_state("serve()", state, " (or None: the store's runs alone)")
    if store is None and state is not None:
        store = store_of(state)
    viewer = Viewer(store=store, host=host, port=port, poll_interval=poll_interval)
    return _Serving(viewer, state, open_browser)


def open_in_browser(url: str) -> bool:
    """Open ``url`` in the desktop's browser, if there is one (never fails)."""
    try:
        return webbrowser.open(url)
    except Exception:  # no browser, no display: the URL is printed anyway
        return False


def banner(url: str, store: str | Path) -> str:
    """The line ``rh-agents ui`` starts with. The store's path is shown as the terminal can
    show it: a name with control characters (an escape sequence) or bytes that are not UTF-8
    (which printing would refuse) gets visible stand-ins."""
    return f"rh_agents viewer on {url} (store: {one_line(str(store))}); Ctrl-C to stop"


def run_server(
    store: str | Path | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    open_browser: bool = False,
    announce: Any = print,
) -> None:
    """Serve the viewer over ``store`` until Ctrl-C (``rh-agents ui``)."""
    sock = bind(host, port)
    app = create_app(store, allowed_hosts=_hosts(host))
    url = _url(host, sock.getsockname()[1]) + "/"
    announce(banner(url, app.state.viewer.store.path))
    if host not in ("127.0.0.1", "localhost", "::1"):
        announce(
            f"note: bound to {host}: anyone who can reach this machine on that port can read "
            "your runs (the default, 127.0.0.1, is this machine only)"
        )
    if open_browser:
        open_in_browser(url)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    server = _ViewerServer(config, app.state.viewer.closing, signals=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
