"""The REST API (FastAPI), versioned under /api/v1. SCADA polls it; it never writes devices."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from bridge import __version__
from bridge.api.auth import TokenSet
from bridge.api.schemas import (
    AGE_REFRESH,
    AdaptStatus,
    AlarmStatus,
    DeviceHealth,
    ErrorDetail,
    Event,
    FleetStatus,
    Health,
    Live,
    ModelChange,
    ModelHealth,
    ModelInfo,
    ModelScore,
    ModelShadow,
    MqttStatus,
    ShadowStatus,
    SparkplugStatus,
    TagReading,
    WritebackHealth,
    hide_paths,
    public_name,
    scrub_paths,
)
from bridge.api.security import BodySizeLimit, require_scope
from bridge.core.errors import ModelContractError
from bridge.core.tags import Reading
from bridge.core.timefmt import iso
from bridge.runtime.bridge import Bridge
from bridge.scoring.shadow import verdict
from bridge.scoring.updates import RolloutConflict

__all__ = ["create_app"]

log = logging.getLogger("plcbridge.api")

MAX_LIMIT = 10_000


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error replies: ``{"detail": ...}`` like every error here."""
    return {code: {"model": ErrorDetail} for code in codes}


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


def _reading(bridge: Bridge, name: str, reading: Reading | None, now: float) -> TagReading:
    device, tag = bridge.tags[name]
    return TagReading.of(name, device, tag.unit, reading, now)


@contextlib.contextmanager
def _pydantic_v1_hidden() -> Iterator[None]:
    """FastAPI asks of every route's response model whether it is a pydantic.v1 model, and
    imports pydantic.v1 to answer: ~0.8 MB of RSS for a package nothing in the bridge uses.
    Our schemas are all pydantic 2 models, so the answer is no either way; with the module
    marked absent FastAPI's own ``except ImportError`` says so without loading it. Only while
    the routes are built, and only when nothing loaded it before: then it is left as it is."""
    if "pydantic.v1" in sys.modules:
        yield
        return
    sys.modules["pydantic.v1"] = None  # type: ignore[assignment]  # import's "known absent"
    try:
        yield
    finally:
        if "pydantic.v1" in sys.modules and sys.modules["pydantic.v1"] is None:
            del sys.modules["pydantic.v1"]


def create_app(bridge: Bridge, tokens: TokenSet | None = None) -> FastAPI:
    """The API app. ``tokens``: with any configured, every /api/v1 route except
    /api/v1/live needs a bearer token (read scope; admin for anything that changes state)."""
    with _pydantic_v1_hidden():
        app = _create_app(bridge, tokens)
        # FastAPI >= 0.16x rebuilds an included router's routes (the same check included) at
        # the first request it routes: build them now, while the check cannot load pydantic.v1.
        # Found by name, so a FastAPI without them only loses the saving (tests/test_imports.py).
        for route in app.router.routes:
            for name in ("effective_candidates", "effective_low_priority_routes"):
                build = getattr(route, name, None)
                if callable(build):
                    build()
        return app


def _create_app(bridge: Bridge, tokens: TokenSet | None) -> FastAPI:
    tokens = tokens or TokenSet([])
    settings = bridge.config.api
    app = FastAPI(title="plcbridge", version=__version__,
                  description="Tag values and anomaly scores from plcbridge.")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET"], allow_headers=["Authorization"])
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    api = APIRouter(dependencies=[Depends(require_scope(tokens, "read"))], responses=_errors(401, 403))

    @app.get("/api/v1/live", response_model=Live)
    async def live() -> Live:
        """Liveness for container health checks; no authentication, no details."""
        return Live(status="alive")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Log the detail for the operator; the client gets no internals.
        log.exception("unhandled error path=%s", request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # A client that goes (or is closed by the server's request_timeout) in the middle of
        # its body is not an error of ours: without this the catch-all above logs a traceback.
        log.debug("client disconnected during its request path=%s", request.url.path)
        return Response(status_code=400)  # nobody reads it

    def runner_or_404(name: str) -> Any:
        runner = bridge.runners.get(name)
        if runner is None:
            raise HTTPException(404, f"unknown model {name!r}")
        return runner

    def tag_or_404(name: str) -> None:
        if name not in bridge.tags:
            raise HTTPException(404, f"unknown tag {name!r}")

    @api.get("/api/v1/health", response_model=Health)
    async def health() -> Health:
        """Devices, models and sinks at a glance; ``degraded`` when any device is disconnected."""
        devices = [DeviceHealth.of(name, adapter.status) for name, adapter in bridge.adapters.items()]
        models = []
        for name, runner in bridge.runners.items():
            latest = bridge.scores.latest(name)
            wb = bridge.writebacks.get(name)
            models.append(ModelHealth(
                name=name, scored=runner.scored, anomalies=runner.anomalies,
                last_score_time=iso(latest.time) if latest else None,
                window_valid=latest.window_valid if latest else False,
                writeback=None if wb is None else WritebackHealth.of(wb)))
        counters = {s.name: s.status() for s in bridge.sinks if s.name in ("mqtt", "sparkplug", "fleet")}
        mqtt, sparkplug, fleet = (counters.get(name) for name in ("mqtt", "sparkplug", "fleet"))
        return Health(status="ok" if all(d.connected for d in devices) else "degraded",
                      version=__version__, uptime_s=round(time.time() - bridge.started_at, 1),
                      devices=devices, models=models,
                      mqtt=None if mqtt is None else MqttStatus.model_validate(mqtt),
                      sparkplug=None if sparkplug is None else SparkplugStatus.model_validate(sparkplug),
                      fleet=None if fleet is None else FleetStatus.model_validate(fleet))

    rendered: dict[str, Any] = {"updates": -1, "at": 0.0, "body": b""}

    # response_model documents the items; the handler returns the bytes itself, so FastAPI
    # neither validates nor re-serializes them (a cache hit stays a dict lookup), and the
    # render uses TagReading.row, the dicts TagReading.of validates.
    @api.get("/api/v1/tags", response_model=list[TagReading])
    async def tags() -> Response:
        """Latest reading of every tag. SCADA polls this often and it is the biggest reply,
        so the JSON is rendered once per store change (and every AGE_REFRESH s, for the ages),
        not once per request."""
        # Handlers are async on purpose: they only read in-memory state, so running them in
        # the event loop avoids a thread hop per request and reads the store between jobs.
        updates = bridge.store.updates  # read first: a change while rendering re-renders next time
        now = time.time()
        if rendered["updates"] != updates or now - rendered["at"] >= AGE_REFRESH:
            body = [TagReading.row(name, device, tag.unit, bridge.store.latest(name), now)
                    for name, (device, tag) in bridge.tags.items()]
            rendered["body"] = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            rendered["updates"], rendered["at"] = updates, now
        return Response(rendered["body"], media_type="application/json")

    @api.get("/api/v1/tags/{name}", response_model=TagReading, responses=_errors(404))
    async def tag(name: str) -> TagReading:
        """Latest reading of one tag."""
        tag_or_404(name)
        return _reading(bridge, name, bridge.store.latest(name), time.time())

    @api.get("/api/v1/tags/{name}/history", response_model=list[TagReading], responses=_errors(404))
    async def tag_history(name: str, since: Annotated[datetime | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> list[TagReading]:
        """Readings of one tag after ``since``, oldest first, at most ``limit`` (the newest)."""
        tag_or_404(name)
        now = time.time()
        return [_reading(bridge, name, r, now) for r in bridge.store.history(name, _epoch(since), limit)]

    @api.get("/api/v1/models", response_model=list[ModelInfo])
    async def models() -> list[ModelInfo]:
        """Every configured model and its contract."""
        return [model_info(name) for name in bridge.runners]

    @api.get("/api/v1/models/{name}", response_model=ModelInfo, responses=_errors(404))
    async def model(name: str) -> ModelInfo:
        """One model and its contract."""
        return model_info(name)

    def model_info(name: str) -> ModelInfo:
        runner = runner_or_404(name)
        contract = runner.detector.contract
        folder, data_dir = bridge.updater.folder, bridge.config.storage.data_dir
        return ModelInfo(
            name=name, file=public_name(runner.detector.path), version=contract.version,
            kind=contract.kind, recipe=contract.recipe,
            features=list(contract.inputs), tags=list(runner.tags),
            window_length=contract.window_length, period=contract.period,
            threshold=runner.threshold, model_threshold=contract.threshold,
            score_meaning=contract.score, normalization=contract.normalization,
            training=scrub_paths(contract.training),
            previous_version=bridge.updater.previous_version(name),
            # Relative to data_dir: the operator knows where that is, a client need not.
            folder=None if folder is None or data_dir is None else folder.relative_to(data_dir).as_posix(),
            shadow_version=shadow.version if (shadow := running_shadow(name)) else None,
            adapt=None if runner.adapt is None else AdaptStatus.of(runner.adapt),
            alarm=None if runner.alarm is None else AlarmStatus.of(runner.alarm, runner.threshold),
        )

    def running_shadow(name: str) -> Any:
        shadow = bridge.updater.shadows.get(name)
        return shadow if shadow is not None and shadow.state == "running" else None

    def shadow_view(name: str) -> ModelShadow:
        runner = runner_or_404(name)
        shadow = bridge.updater.shadows.get(name)
        status = None if shadow is None else ShadowStatus.of(
            shadow, bridge.speed, verdict(shadow.rule, shadow.comparison))
        return ModelShadow(model=name, active_version=runner.detector.version, shadow=status)

    admin = [Depends(require_scope(tokens, "admin"))]

    @api.put("/api/v1/models/{name}", dependencies=admin, status_code=200, response_model=ModelChange,
             responses=_errors(400, 404, 413, 422),
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_model(name: str, request: Request,
                           mode: Annotated[Literal["install", "shadow"], Query(
                               description="``install``: swap it in now. ``shadow``: run it "
                                           "beside the active model, writing nothing, until "
                                           "the ``[models.shadow]`` rule (or an operator) "
                                           "promotes or rejects it; see ``.../shadow``.")] = "install",
                           ) -> ModelChange:
        """Replace a model with the uploaded ONNX file (raw body, at most ``max_body_bytes``),
        or stage it in shadow (``mode=shadow``). It is validated first; a refused upload
        changes nothing and the reply says why."""
        runner_or_404(name)
        data = await request.body()
        if not data:
            raise HTTPException(400, "empty body: send the ONNX file as the request body")
        try:
            if mode == "shadow":
                await bridge.updater.stage(name, data, "upload")
            else:
                await bridge.updater.install(name, data, "upload")
        except ModelContractError as exc:
            reason = hide_paths(str(exc))  # it names the upload's temporary file
            raise HTTPException(422, f"model refused, the current one stays: {reason}") from None
        except RolloutConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return ModelChange(**model_info(name).model_dump(),
                           status="staged in shadow" if mode == "shadow" else "installed")

    @api.get("/api/v1/models/{name}/shadow", response_model=ModelShadow, responses=_errors(404))
    async def model_shadow(name: str) -> ModelShadow:
        """The model staged in shadow (running, else the last decided) and how it compares
        with the active model so far."""
        return shadow_view(name)

    @api.post("/api/v1/models/{name}/shadow/promote", dependencies=admin,
              response_model=ModelShadow, responses=_errors(404, 409))
    async def promote_shadow(name: str) -> ModelShadow:
        """Promote the running shadow now, whatever the rule says so far (rollback kept)."""
        return await decide_shadow(name, bridge.updater.promote)

    @api.post("/api/v1/models/{name}/shadow/reject", dependencies=admin,
              response_model=ModelShadow, responses=_errors(404, 409))
    async def reject_shadow(name: str, reason: Annotated[str, Query(
            max_length=200, description="Recorded with the result.")] = "") -> ModelShadow:
        """Reject the running shadow now; the active model goes on unchanged."""
        why = f"rejected by the operator: {reason}" if reason else "rejected by the operator"
        return await decide_shadow(name, lambda model: bridge.updater.reject(model, why))

    async def decide_shadow(name: str, action: Callable[[str], Awaitable[Any]]) -> ModelShadow:
        runner_or_404(name)
        try:
            await action(name)
        except RolloutConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return shadow_view(name)

    @api.post("/api/v1/models/{name}/rollback", dependencies=admin, response_model=ModelChange,
              responses=_errors(404, 409))
    async def rollback_model(name: str) -> ModelChange:
        """Put back the model the last update replaced (one step)."""
        runner_or_404(name)
        try:
            await bridge.updater.rollback(name)
        except KeyError:
            raise HTTPException(409, f"model {name!r} has no previous version to restore") from None
        return ModelChange(**model_info(name).model_dump(), status="rolled back")

    @api.post("/api/v1/models/{name}/adapt/reset", dependencies=admin, response_model=AdaptStatus,
              responses=_errors(404, 409))
    async def reset_adaptation(name: str) -> AdaptStatus:
        """Put the model's online adaptation back to its trained baseline (offsets zero, the
        version restarts; ``resets`` counts it). Recorded as an ``adapt-reset`` event."""
        runner = runner_or_404(name)
        if runner.adapt is None:
            raise HTTPException(409, f"model {name!r} does not adapt ([models.adapt] enabled is false)")
        before = runner.adapt.status()
        runner.adapt.reset()
        bridge.record_event({"model": name, "time": time.time(), "kind": "adapt-reset", "score": None,
                             "threshold": runner.threshold, "detail": {"contributions": {}}})
        log.warning("adaptation reset by the operator model=%s version_was=%d offset_sd_was=%s",
                    name, before.version, before.offset_sd)
        return AdaptStatus.of(runner.adapt)

    @api.get("/api/v1/models/{name}/score", response_model=ModelScore, responses=_errors(404))
    async def latest_score(name: str) -> ModelScore:
        """The latest score of one model; 404 before its first scoring cycle."""
        runner_or_404(name)
        score = bridge.scores.latest(name)
        if score is None:
            raise HTTPException(404, f"model {name!r} has no score yet")
        return ModelScore.of(score)

    @api.get("/api/v1/models/{name}/scores", response_model=list[ModelScore], responses=_errors(404))
    async def score_history(name: str, since: Annotated[datetime | None, Query()] = None,
                      limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> list[ModelScore]:
        """Scores of one model after ``since``, oldest first, at most ``limit`` (the newest)."""
        runner_or_404(name)
        return [ModelScore.of(s) for s in bridge.scores.history(name, _epoch(since), limit)]

    @api.get("/api/v1/events", response_model=list[Event])
    async def events(limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
               since: Annotated[datetime | None, Query()] = None) -> list[Event]:
        """Anomaly start/end events, oldest first; from the database when storage is configured
        (so they survive restarts; newest up to one flush interval late), else from memory."""
        after = _epoch(since)
        if bridge.storage is not None:
            rows = await asyncio.to_thread(bridge.storage.events, limit, after)  # disk: off the loop
        else:
            rows = [e for e in bridge.events if after is None or e["time"] > after][-limit:]
        return [Event.of(e) for e in rows]

    app.include_router(api)
    if bridge.config.metrics.enabled:
        from bridge.sinks.metrics import PrometheusMetrics, metrics_router  # only if asked

        metrics = bridge.sink(PrometheusMetrics)
        if metrics is not None:  # the runtime builds it when [metrics] is enabled
            app.include_router(metrics_router(metrics, dependencies=[Depends(require_scope(tokens, "read"))]))
    from bridge.api.dashboard import mount_dashboard

    mount_dashboard(app)  # last: the mount at / only gets paths no route above matched
    return app

