"""Prometheus metrics at ``GET /metrics`` (text format 0.0.4, or OpenMetrics when asked for).

Most values already live in the bridge (device status, model counters, latest scores), so a
custom collector reads them through the sinks' ``BridgeView`` at scrape time: nothing to keep
in sync, no cost between scrapes. Only distributions need observations as they happen;
``PrometheusMetrics`` is a Sink for that: ``on_score`` observes the inference time the Score
carries and ``on_poll`` observes poll duration (the runtime calls it after each poll).

Each ``PrometheusMetrics`` has its own ``CollectorRegistry``, never the process-global one,
so several bridges in one process (tests) never collide, and no process/platform metrics
sneak in unasked.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.core.scores import Score
from bridge.ports import BridgeView, DeviceStatus, SinkBase

__all__ = ["BridgeCollector", "PrometheusMetrics", "metrics_router"]

# Poll durations: a Modbus TCP poll on a LAN takes ms; RTU at 9600 baud and timeouts take s.
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Inference: a PCA scores in ~4 µs, an IsolationForest in ~640 µs (DESIGN.md).
INFERENCE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1)
_WRITEBACK_RESULTS = ("written", "dry_run", "refused", "failed", "skipped_rate")
_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]
_DEVICE_HEALTH: tuple[tuple[str, _Family, str, Callable[[DeviceStatus], float | None]], ...] = (
    ("consecutive_errors", GaugeMetricFamily, "failed polls in a row (0 after a good one)",
     lambda s: s.consecutive_errors),
    ("overruns", CounterMetricFamily, "polls still running when the next was due",
     lambda s: s.overruns),
    ("stale", GaugeMetricFamily, "1 if no poll succeeded within the stale window",
     lambda s: int(s.stale)),
    ("unit_backoff", GaugeMetricFamily, "1 if the unit stopped answering and is only probed",
     lambda s: int(s.unit_state == "backoff")),
    ("request_rtt_seconds", GaugeMetricFamily, "round trip of the last answered request",
     lambda s: s.last_rtt),
    ("last_exception_code", GaugeMetricFamily,
     "protocol exception code of the last refused request", lambda s: s.last_exception_code),
    ("write_mismatches", CounterMetricFamily, "written registers that read back different",
     lambda s: s.write_mismatches),
)


class BridgeCollector(Collector):
    """Reads the bridge's state at scrape time; every value is exactly what /api/v1/health
    and /api/v1/models/{name}/score show."""

    def __init__(self, view: BridgeView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        yield from self._process()
        yield from self._devices()
        yield from self._models()

    def _process(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("plcbridge_build_info", "plcbridge version (value is always 1)",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        start = GaugeMetricFamily("plcbridge_start_time_seconds", "when the bridge started, UTC epoch s")
        start.add_metric([], self.view.started_at)
        # Our own registry has no process collector (see the module doc): the two numbers an
        # edge box needs, from the OS, at scrape time.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = CounterMetricFamily("plcbridge_process_cpu_seconds", "CPU time used (user + system)")
        cpu.add_metric([], usage.ru_utime + usage.ru_stime)
        rss = GaugeMetricFamily("plcbridge_process_resident_memory_bytes", "resident set size")
        rss.add_metric([], _resident_bytes(usage))
        return [info, start, cpu, rss]

    def _devices(self) -> Iterable[Metric]:
        connected = GaugeMetricFamily("plcbridge_device_connected",
                                      "1 if the last poll reached the device", labels=["device"])
        polls = CounterMetricFamily("plcbridge_device_polls", "polls (reads of all tags), good or not",
                                    labels=["device"])
        errors = CounterMetricFamily("plcbridge_device_errors",
                                     "failed polls and unusable values, by kind", labels=["device", "kind"])
        latency = GaugeMetricFamily("plcbridge_device_last_poll_duration_seconds",
                                    "duration of the last good poll", labels=["device"])
        success = GaugeMetricFamily("plcbridge_device_last_success_timestamp_seconds",
                                    "time of the last good poll, UTC epoch s", labels=["device"])
        reconnects = CounterMetricFamily("plcbridge_device_reconnects",
                                         "connections re-established after one was lost", labels=["device"])
        # The "what is wrong with device X" numbers: one family each, a value per device
        # (None: not known yet, no sample).
        health = [(family(f"plcbridge_device_{key}", text, labels=["device"]), get)
                  for key, family, text, get in _DEVICE_HEALTH]
        for name, status in self.view.devices().items():
            connected.add_metric([name], int(status.connected))
            for metric, get in health:
                if (value := get(status)) is not None:
                    metric.add_metric([name], value)
            polls.add_metric([name], status.polls)
            reconnects.add_metric([name], status.reconnects)
            # Copy: an adapter adds a new kind from the event loop (scrapes run there too,
            # but a copy keeps this safe if a scrape is ever moved to a thread).
            for kind, count in sorted(dict(status.errors).items()):
                errors.add_metric([name, kind], count)
            if status.last_latency is not None:
                latency.add_metric([name], status.last_latency)
            if status.last_success is not None:
                success.add_metric([name], status.last_success)
        return [connected, polls, errors, latency, success, reconnects,
                *(metric for metric, _ in health)]

    def _models(self) -> Iterable[Metric]:
        labels = ["model"]
        score = GaugeMetricFamily("plcbridge_model_score",
                                  "anomaly score of the latest window (NaN if it was not scored)",
                                  labels=labels)
        threshold = GaugeMetricFamily("plcbridge_model_threshold", "anomalous at or above this score",
                                      labels=labels)
        anomaly = GaugeMetricFamily("plcbridge_model_anomaly", "1 if the latest window is anomalous",
                                    labels=labels)
        valid = GaugeMetricFamily("plcbridge_model_window_valid",
                                  "1 if the latest window was scored (0: bad or stale input)", labels=labels)
        last = GaugeMetricFamily("plcbridge_model_last_score_timestamp_seconds",
                                 "time of the latest window's last sample, UTC epoch s", labels=labels)
        scored = CounterMetricFamily("plcbridge_model_windows_scored", "windows scored", labels=labels)
        anomalies = CounterMetricFamily("plcbridge_model_anomalies",
                                        "windows scored at or above the threshold", labels=labels)
        writeback = CounterMetricFamily("plcbridge_model_writeback",
                                        "write-back cycles by result", labels=["model", "result"])
        for name, model in self.view.models().items():
            latest = self.view.latest_score(name)
            threshold.add_metric([name], model.threshold)
            scored.add_metric([name], model.scored)
            anomalies.add_metric([name], model.anomalies)
            if latest is not None:
                score.add_metric([name], math.nan if latest.score is None else latest.score)
                anomaly.add_metric([name], int(latest.anomaly))
                valid.add_metric([name], int(latest.window_valid))
                last.add_metric([name], latest.time)
            if model.writeback is not None:
                for result in _WRITEBACK_RESULTS:
                    writeback.add_metric([name, result], getattr(model.writeback, result))
        return [score, threshold, anomaly, valid, last, scored, anomalies, writeback]


def _resident_bytes(usage: resource.struct_rusage) -> float:
    """Current RSS from /proc (Linux); elsewhere the peak, the best the OS offers cheaply."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return float(usage.ru_maxrss * 1024)  # kB on Linux and BSD


class PrometheusMetrics(SinkBase):
    """The registry behind /metrics, and the Sink that feeds its histograms."""

    name = "prometheus"

    def __init__(self, view: BridgeView) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BridgeCollector(view))
        self.poll_duration = Histogram(
            "plcbridge_device_poll_duration_seconds", "duration of each poll, failed ones included",
            ["device"], registry=self.registry, buckets=POLL_BUCKETS)
        self.inference_duration = Histogram(
            "plcbridge_model_inference_duration_seconds", "ONNX Runtime time per scored window",
            ["model"], registry=self.registry, buckets=INFERENCE_BUCKETS)
        for name in view.devices():  # every series exists from the first scrape, at 0
            self.poll_duration.labels(name)
        for name in view.models():
            self.inference_duration.labels(name)

    # -- Sink -----------------------------------------------------------------------------

    async def start(self, view: BridgeView) -> None:
        return None  # nothing to connect: the API server serves the registry

    async def stop(self) -> None:
        return None

    def on_score(self, score: Score) -> None:
        if score.inference_seconds is not None:  # None: the window was not scored
            self.inference_duration.labels(score.model).observe(score.inference_seconds)

    def on_poll(self, device: str, seconds: float) -> None:
        """Called by the runtime after each poll of ``device`` with its wall-clock duration."""
        self.poll_duration.labels(device).observe(seconds)

    # -- exposition -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4."""
        return generate_latest(self.registry)


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
        # The client library's own negotiation: text 0.0.4 by default, OpenMetrics or text
        # 1.0.0 when the scraper's Accept header asks for it (Prometheus 2.x/3.x do).
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(metrics.registry), media_type=content_type)

    return router
