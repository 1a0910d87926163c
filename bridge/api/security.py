"""API guards: bearer-token scopes and a request body size limit (pure ASGI, no buffering)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request

from bridge.api.auth import SCOPES, TokenSet

__all__ = ["BodySizeLimit", "require_scope"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def require_scope(tokens: TokenSet, needed: str) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: with tokens configured, the request needs a token of ``needed``
    scope or higher (admin includes read). Without tokens (loopback only) it lets all pass.

    ``async`` although it never waits: FastAPI runs a plain ``def`` dependency in a worker
    thread, one hop per request (and a thread, ~1.3 MB of RSS, measured) for a dict lookup."""
    rank = SCOPES.index(needed)

    async def check(request: Request) -> None:
        if not tokens.enabled:
            return
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        found = tokens.scope_of(token.strip())
        if found is None:
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        if SCOPES.index(found[0]) < rank:
            raise HTTPException(403, f"this needs the {needed!r} scope")
        request.state.token_name = found[1]

    return check


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "invalid Content-Length")
                    return
                if declared > self.limit:
                    await self._reject(send, 413, f"request body over {self.limit} bytes")
                    return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, 413, f"request body over {self.limit} bytes")

    @staticmethod
    async def _reject(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
