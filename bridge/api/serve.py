"""Run the bridge and its API in one event loop until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from bridge.api.app import create_app
from bridge.api.auth import TokenSet, load_tokens
from bridge.runtime.bridge import Bridge

__all__ = ["ApiServer", "run_until_stopped"]

log = logging.getLogger("plcbridge.server")


class ApiServer:
    """uvicorn inside the bridge's loop; ``port`` is the bound port once started (port 0 works)."""

    def __init__(self, bridge: Bridge, host: str, port: int, tokens: TokenSet | None = None) -> None:
        settings = bridge.config.api
        tls = settings.tls_cert is not None
        config = uvicorn.Config(create_app(bridge, tokens), host=host, port=port, log_level="warning",
                                lifespan="off", access_log=False,
                                ssl_certfile=str(settings.tls_cert) if tls else None,
                                ssl_keyfile=str(settings.tls_key) if tls else None)
        self.scheme = "https" if tls else "http"
        self._server = uvicorn.Server(config)
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
