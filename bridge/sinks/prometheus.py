"""The exposition behind ``GET /metrics``, built with prometheus_client on the first scrape
(``bridge.sinks.metrics`` imports this module only then).

Most values already live in the bridge (device status, model counters, latest scores), so a
custom collector reads them through the sinks' ``BridgeView`` at scrape time: nothing to keep
in sync, no cost between scrapes. Only distributions need observations as they happen; the
``PrometheusMetrics`` sink counts those in its own ``Histogram`` objects, rendered here.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bridge import __version__
from bridge.core.histogram import Histogram
from bridge.ports import BridgeView, DeviceStatus

__all__ = ["BridgeCollector", "HistogramCollector", "build_registry"]

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


class HistogramCollector(Collector):
    """The sink's histograms as Prometheus histogram families (``_bucket``, ``_count``, ``_sum``)."""

    def __init__(self, histograms: Iterable[Histogram]) -> None:
        self.histograms = tuple(histograms)

    def collect(self) -> Iterable[Metric]:
        for histogram in self.histograms:
            family = HistogramMetricFamily(histogram.name, histogram.documentation, labels=[histogram.label])
            bounds = [floatToGoString(b) for b in histogram.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
            for value in list(histogram.series):
                counts, total = histogram.cumulative(value)
                family.add_metric([value], list(zip(bounds, counts, strict=True)), total)
            yield family


def build_registry(view: BridgeView, histograms: Iterable[Histogram]) -> CollectorRegistry:
    """A registry of this bridge's own (never the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(view))
    registry.register(HistogramCollector(histograms))
    return registry
