"""``[metrics]``: the Sink that observes poll and inference durations, and ``GET /metrics``.

Between scrapes the bridge only counts: each observation is a bisect and three additions
into plain lists (``Histogram``). The Prometheus client library, and the exposition built
with it (``bridge.sinks.prometheus``), are loaded by the first scrape: a box nobody scrapes
never pays their ~1.5 MB or their per-observation locking.

Each ``PrometheusMetrics`` has its own registry, never the process-global one, so several
bridges in one process (tests) never collide, and no process/platform metrics sneak in unasked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response

from bridge.core.histogram import Histogram
from bridge.core.scores import Score
from bridge.ports import BridgeView, SinkBase

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["INFERENCE_BUCKETS", "POLL_BUCKETS", "PrometheusMetrics", "metrics_router"]

# Poll durations: a Modbus TCP poll on a LAN takes ms; RTU at 9600 baud and timeouts take s.
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Inference: a PCA scores in ~4 µs, an IsolationForest in ~640 µs (DESIGN.md).
INFERENCE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1)


class PrometheusMetrics(SinkBase):
    """The Sink that feeds the histograms, and the registry behind /metrics."""

    name = "prometheus"

    def __init__(self, view: BridgeView) -> None:
        self.view = view
        self.poll_duration = Histogram(
            "plcbridge_device_poll_duration_seconds", "duration of each poll, failed ones included",
            "device", POLL_BUCKETS)
        self.inference_duration = Histogram(
            "plcbridge_model_inference_duration_seconds", "ONNX Runtime time per scored window",
            "model", INFERENCE_BUCKETS)
        for name in view.devices():  # every series exists from the first scrape, at 0
            self.poll_duration.add(name)
        for name in view.models():
            self.inference_duration.add(name)
        self._registry: CollectorRegistry | None = None

    @property
    def histograms(self) -> Iterable[Histogram]:
        return (self.poll_duration, self.inference_duration)

    @property
    def registry(self) -> CollectorRegistry:
        """This bridge's own registry, built (and prometheus_client loaded) on first use."""
        if self._registry is None:
            from bridge.sinks.prometheus import build_registry

            self._registry = build_registry(self.view, self.histograms)
        return self._registry

    # -- Sink -----------------------------------------------------------------------------

    async def start(self, view: BridgeView) -> None:
        return None  # nothing to connect: the API server serves the registry

    async def stop(self) -> None:
        return None

    def on_score(self, score: Score) -> None:
        if score.inference_seconds is not None:  # None: the window was not scored
            self.inference_duration.observe(score.model, score.inference_seconds)

    def on_poll(self, device: str, seconds: float) -> None:
        """Called by the runtime after each poll of ``device`` with its wall-clock duration."""
        self.poll_duration.observe(device, seconds)

    # -- exposition -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def negotiated(self, accept: str) -> tuple[bytes, str]:
        """(body, content type) for a scraper's Accept header, by the client library's own
        negotiation: text 0.0.4 by default, OpenMetrics or text 1.0.0 when asked for
        (Prometheus 2.x/3.x do)."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def metrics_router(metrics: PrometheusMetrics, *, dependencies: Sequence[Any] = ()) -> APIRouter:
    """``GET /metrics`` for the runtime's metrics sink; pass the API's read-scope dependency so
    a token guards it the same way."""
    router = APIRouter(dependencies=list(dependencies))

    # async on purpose: the scrape then runs in the event loop, between the jobs that change
    # the state it reads, never concurrently with them (a sync route would run in a thread).
    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {}, "application/openmetrics-text": {}},
                                 "description": "Prometheus text format, or OpenMetrics if accepted"}})
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics: devices, models, poll and inference durations."""
        body, content_type = metrics.negotiated(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    return router
