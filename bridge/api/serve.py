"""Run the bridge and its API in one event loop until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from email.utils import formatdate
from types import FrameType
from typing import Any

import h11

from bridge.api.app import create_app
from bridge.api.auth import TokenSet, load_tokens
from bridge.api.embedded import Config, H11Protocol, Server
from bridge.runtime.bridge import Bridge

__all__ = ["ApiServer", "run_until_stopped"]

log = logging.getLogger("plcbridge.server")


def guarded_http(request_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with what uvicorn lacks against idle and slow clients.

    uvicorn arms its keep-alive timer only after a response, and cancels it at the first byte
    of the next request: a connection that sends nothing, a request head one byte at a time,
    or a body shorter than its Content-Length is held forever (each holds a descriptor).
    Here every connection must send a whole request (head and body) within
    ``request_timeout`` seconds of connecting or of its last response; with
    ``max_connections`` open, a new connection closes the one that has waited longest for a
    request (or itself, when every connection is busy with a request). It also keeps the Date
    header current, which uvicorn does from a timer that ``_QuietServer`` no longer runs."""

    date: dict[str, Any] = {"second": -1, "headers": []}  # this server's, shared by its connections

    class GuardedH11(H11Protocol):
        _request_timer: asyncio.TimerHandle | None = None
        _waiting_since = 0.0
        _armed_cycle: Any = None  # the request cycle current when the timer was armed

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            waiting = [p for p in self.connections
                       if isinstance(p, GuardedH11) and p._request_timer is not None]
            full = len(self.connections) >= max_connections
            super().connection_made(transport)
            self._arm()
            if full:
                victim = min(waiting, key=lambda p: p._waiting_since) if waiting else self
                # Disarmed now, so the next accept (before this one's connection_lost runs)
                # picks another victim.
                victim._disarm()
                victim.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._refresh_date()  # before the request cycle copies the headers
            super().data_received(data)
            if self._received():
                self._disarm()  # a whole request is in: the app's turn

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._waiting_since = self.loop.time()
            self._armed_cycle = self.cycle
            self._request_timer = self.loop.call_later(request_timeout, self._timed_out)

        def _disarm(self) -> None:
            if self._request_timer is not None:
                self._request_timer.cancel()
                self._request_timer = None

        def _refresh_date(self) -> None:
            """uvicorn's default response headers with a current Date header (RFC 9110 wants
            one; its resolution is a second, so they are rebuilt at most once a second)."""
            now = int(time.time())
            if now != date["second"]:
                config = self.config
                line = [(b"date", formatdate(now, usegmt=True).encode())] if config.date_header else []
                date["second"], date["headers"] = now, line + config.encoded_headers
            self.server_state.default_headers = date["headers"]

        def _received(self) -> bool:
            """A new request since the timer was armed, received to its last byte."""
            return self.cycle is not self._armed_cycle and self.conn.their_state is h11.DONE

        def _timed_out(self) -> None:
            self._request_timer = None
            # A pipelined request may have come in whole without new bytes: let it finish.
            if not self._received() and not self.transport.is_closing():
                self.transport.abort()

    return GuardedH11


class _QuietServer(Server):
    """uvicorn's main loop wakes ten times a second, to see whether it should exit and once a
    second to refresh the Date header. On an idle bridge that was all of its CPU (0.25 % of a
    core at ten wake-ups; still ~0.25 ms a second at one, about a sixth of the bridge's CPU at
    100 tags polled at 1 Hz, measured with /proc/PID/schedstat). This one sleeps until it is
    told to stop; the protocol refreshes the Date header when a request arrives."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.exit_now = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler: hand the wake-up to the loop
            self._loop.call_soon_threadsafe(self.exit_now.set)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        # on_tick's other duties are unused here: no callback_notify, no limit_max_requests.
        while not await self.on_tick(0):
            await self.exit_now.wait()
            self.exit_now.clear()


class ApiServer:
    """uvicorn inside the bridge's loop; ``port`` is the bound port once started (port 0 works)."""

    def __init__(self, bridge: Bridge, host: str, port: int, tokens: TokenSet | None = None) -> None:
        settings = bridge.config.api
        tls = settings.tls_cert is not None
        app = create_app(bridge, tokens)
        config = Config(app, host=host, port=port, log_level="warning",
                                lifespan="off", access_log=False,
                                http=guarded_http(settings.request_timeout, settings.max_connections),
                                timeout_keep_alive=settings.keep_alive_timeout,
                                # Requests in flight; uvicorn also counts connections here, so one
                                # above max_connections: only the cap above closes connections.
                                limit_concurrency=settings.max_connections + 1,
                                ssl_certfile=str(settings.tls_cert) if tls else None,
                                ssl_keyfile=str(settings.tls_key) if tls else None)
        self.scheme = "https" if tls else "http"
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="plcbridge.api")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise why it failed to start (e.g. port in use)
                raise OSError(f"API server on {self.host}:{self.port} stopped during start-up")
            if loop.time() > deadline:
                raise TimeoutError(f"API server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        self._server.exit_now.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=5)
        self._task = None


async def run_until_stopped(bridge: Bridge, stop: asyncio.Event | None = None) -> None:
    """Start the bridge (and its API if enabled), wait for SIGINT/SIGTERM or ``stop``, shut down."""
    stop = stop or asyncio.Event()
    settings = bridge.config.api
    # Before anything connects: a bad token source is a config error, not a half-started bridge.
    tokens = load_tokens(settings.tokens_file, settings.tokens_env) if settings.enabled else None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[dict[str, str]]] = set()

    def reload_models() -> None:
        task = asyncio.create_task(bridge.updater.reload_folder(), name="plcbridge.models.reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_models)
    api = None
    await bridge.start()
    try:
        if bridge.config.api.enabled:
            api = ApiServer(bridge, settings.host, settings.port, tokens)
            await api.start()
            log.info("api listening url=%s/api/v1/health", api.url)
        await stop.wait()
    finally:
        if api is not None:
            await api.stop()
        if reloads:
            await asyncio.wait(reloads, timeout=5)
        await bridge.stop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
