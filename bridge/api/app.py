"""The REST API (FastAPI), versioned under /api/v1. SCADA polls it; it never writes devices."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from bridge import __version__
from bridge.api.auth import TokenSet
from bridge.api.security import BodySizeLimit, require_scope
from bridge.core.errors import ModelContractError
from bridge.core.scores import Score
from bridge.core.tags import Reading
from bridge.runtime.bridge import Bridge

__all__ = ["create_app"]

log = logging.getLogger("plcbridge.api")

MAX_LIMIT = 10_000


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(since: datetime | None) -> float | None:
    """The cut-off for ``since``: items in a later millisecond than ``since`` are newer.

    Times are shown at millisecond resolution, so a client that passes back the time of the
    last item it saw must not get that item again.
    """
    if since is None:
        return None
    # A time without a zone is UTC, like every time in plcbridge.
    stamp = (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    return (math.floor(stamp * 1000 + 1e-6) + 1) / 1000 - 1e-6


def _finite(value: Any) -> Any:
    # JSON has no NaN/Inf; a bad float reads as null, its quality says why.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _reading(bridge: Bridge, name: str, reading: Reading | None) -> dict[str, Any]:
    device, tag = bridge.tags[name]
    body: dict[str, Any] = {"name": name, "device": device, "unit": tag.unit}
    if reading is None:
        body.update(value=None, quality="bad", reason="no reading yet",
                    source_time=None, received_time=None)
    else:
        body.update(value=_finite(reading.value), quality=reading.quality.value, reason=reading.reason,
                    source_time=iso(reading.source_time), received_time=iso(reading.received_time))
    return body


def _score(score: Score) -> dict[str, Any]:
    return {
        "model": score.model, "time": iso(score.time), "score": _finite(score.score),
        "threshold": score.threshold, "anomaly": score.anomaly, "window_valid": score.window_valid,
        "reason": score.reason, "contributions": score.contributions,
        "model_version": score.version,
    }


def create_app(bridge: Bridge, tokens: TokenSet | None = None) -> FastAPI:
    """The API app. ``tokens``: with any configured, every /api/v1 route except
    /api/v1/live needs a bearer token (read scope; admin for anything that changes state)."""
    tokens = tokens or TokenSet([])
    settings = bridge.config.api
    app = FastAPI(title="plcbridge", version=__version__,
                  description="Tag values and anomaly scores from plcbridge.")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET"], allow_headers=["Authorization"])
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    api = APIRouter(dependencies=[Depends(require_scope(tokens, "read"))])

    @app.get("/api/v1/live")
    async def live() -> dict[str, str]:
        """Liveness for container health checks; no authentication, no details."""
        return {"status": "alive"}

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Log the detail for the operator; the client gets no internals.
        log.exception("unhandled error path=%s", request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    def runner_or_404(name: str) -> Any:
        runner = bridge.runners.get(name)
        if runner is None:
            raise HTTPException(404, f"unknown model {name!r}")
        return runner

    def tag_or_404(name: str) -> None:
        if name not in bridge.tags:
            raise HTTPException(404, f"unknown tag {name!r}")

    @api.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        devices = []
        for name, adapter in bridge.adapters.items():
            status = adapter.status
            devices.append({
                "name": name, "connected": status.connected,
                "last_success": iso(status.last_success), "last_error": status.last_error,
                "last_error_time": iso(status.last_error_time), "polls": status.polls,
                "reconnects": status.reconnects,
                "errors": dict(status.errors), "error_count": status.error_count,
                "poll_latency_ms": (None if status.last_latency is None
                                    else round(status.last_latency * 1000, 3)),
            })
        models = []
        for name, runner in bridge.runners.items():
            latest = bridge.scores.latest(name)
            wb = bridge.writebacks.get(name)
            models.append({
                "name": name, "scored": runner.scored, "anomalies": runner.anomalies,
                "last_score_time": iso(latest.time) if latest else None,
                "window_valid": latest.window_valid if latest else False,
                "writeback": None if wb is None else {
                    "mode": wb.mode, "device": wb.config.device, "written": wb.stats.written,
                    "dry_run": wb.stats.dry_run, "refused": wb.stats.refused,
                    "failed": wb.stats.failed, "last_error": wb.stats.last_error},
            })
        ok = all(d["connected"] for d in devices)
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "version": __version__,
                                "uptime_s": round(time.time() - bridge.started_at, 1),
                                "devices": devices, "models": models}
        for sink in bridge.sinks:
            counters = getattr(sink, "status", None)
            if callable(counters):  # sinks with counters of their own (MQTT: published, spooled...)
                body[sink.name] = counters()
        return body

    rendered: dict[str, Any] = {"updates": -1, "body": b""}

    @api.get("/api/v1/tags", response_model=list[dict[str, Any]])
    async def tags() -> Response:
        """Latest reading of every tag. SCADA polls this often and it is the biggest reply,
        so the JSON is rendered once per store change, not once per request."""
        # Handlers are async on purpose: they only read in-memory state, so running them in
        # the event loop avoids a thread hop per request and reads the store between jobs.
        updates = bridge.store.updates  # read first: a change while rendering re-renders next time
        if rendered["updates"] != updates:
            body = [_reading(bridge, name, bridge.store.latest(name)) for name in bridge.tags]
            rendered["body"] = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            rendered["updates"] = updates
        return Response(rendered["body"], media_type="application/json")

    @api.get("/api/v1/tags/{name}")
    async def tag(name: str) -> dict[str, Any]:
        tag_or_404(name)
        return _reading(bridge, name, bridge.store.latest(name))

    @api.get("/api/v1/tags/{name}/history")
    async def tag_history(name: str, since: Annotated[datetime | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> list[dict[str, Any]]:
        tag_or_404(name)
        return [_reading(bridge, name, r) for r in bridge.store.history(name, _epoch(since), limit)]

    @api.get("/api/v1/models")
    async def models() -> list[dict[str, Any]]:
        return [model_info(name) for name in bridge.runners]

    @api.get("/api/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        return model_info(name)

    def model_info(name: str) -> dict[str, Any]:
        runner = runner_or_404(name)
        contract = runner.detector.contract
        return {
            "name": name, "file": str(runner.detector.path), "version": contract.version,
            "kind": contract.kind, "recipe": contract.recipe,
            "features": list(contract.inputs), "tags": runner.tags,
            "window_length": contract.window_length, "period": contract.period,
            "threshold": runner.threshold, "model_threshold": contract.threshold,
            "score_meaning": contract.score, "normalization": contract.normalization,
            "training": contract.training, **bridge.updater.describe(name),
        }

    admin = [Depends(require_scope(tokens, "admin"))]

    @api.put("/api/v1/models/{name}", dependencies=admin, status_code=200,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_model(name: str, request: Request) -> dict[str, Any]:
        """Replace a model with the uploaded ONNX file (raw body, at most ``max_body_bytes``).
        It is validated first; a refused upload changes nothing and the reply says why."""
        runner_or_404(name)
        data = await request.body()
        if not data:
            raise HTTPException(400, "empty body: send the ONNX file as the request body")
        try:
            await bridge.updater.install(name, data, "upload")
        except ModelContractError as exc:
            raise HTTPException(422, f"model refused, the current one stays: {exc}") from None
        return {**model_info(name), "status": "installed"}

    @api.post("/api/v1/models/{name}/rollback", dependencies=admin)
    async def rollback_model(name: str) -> dict[str, Any]:
        """Put back the model the last update replaced (one step)."""
        runner_or_404(name)
        try:
            await bridge.updater.rollback(name)
        except KeyError:
            raise HTTPException(409, f"model {name!r} has no previous version to restore") from None
        return {**model_info(name), "status": "rolled back"}

    @api.get("/api/v1/models/{name}/score")
    async def latest_score(name: str) -> dict[str, Any]:
        runner_or_404(name)
        score = bridge.scores.latest(name)
        if score is None:
            raise HTTPException(404, f"model {name!r} has no score yet")
        return _score(score)

    @api.get("/api/v1/models/{name}/scores")
    async def score_history(name: str, since: Annotated[datetime | None, Query()] = None,
                      limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> list[dict[str, Any]]:
        runner_or_404(name)
        return [_score(s) for s in bridge.scores.history(name, _epoch(since), limit)]

    @api.get("/api/v1/events")
    async def events(limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
               since: Annotated[datetime | None, Query()] = None) -> list[dict[str, Any]]:
        """Anomaly start/end events, oldest first; from the database when storage is configured
        (so they survive restarts; newest up to one flush interval late), else from memory."""
        after = _epoch(since)
        if bridge.storage is not None:
            rows = await asyncio.to_thread(bridge.storage.events, limit, after)  # disk: off the loop
        else:
            rows = [e for e in bridge.events if after is None or e["time"] > after][-limit:]
        return [{**e, "time": iso(e["time"])} for e in rows]

    app.include_router(api)
    if bridge.config.metrics.enabled:
        from bridge.sinks.prometheus import PrometheusMetrics, metrics_router  # only if asked

        metrics = bridge.sink(PrometheusMetrics)
        if metrics is not None:  # the runtime builds it when [metrics] is enabled
            app.include_router(metrics_router(metrics, dependencies=[Depends(require_scope(tokens, "read"))]))
    from bridge.api.dashboard import mount_dashboard

    mount_dashboard(app)  # last: the mount at / only gets paths no route above matched
    return app

