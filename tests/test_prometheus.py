"""GET /metrics against a bridge polling the real simulator: every value equals bridge state."""

from __future__ import annotations

import math
import time

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from adapters.sim.modbus import SimulatorHandle, start_simulator
from bridge import __version__
from bridge.api.app import create_app
from bridge.api.auth import TokenSet, parse_tokens
from bridge.api.security import require_scope
from bridge.core.scores import Score
from bridge.runtime.bridge import Bridge
from bridge.sinks.metrics import PrometheusMetrics, metrics_router
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)
READ_TOKEN = "r" * 24




def _app(bridge: Bridge, tokens: TokenSet | None = None) -> FastAPI:
    # What the owner's create_app does: the same read scope as /api/v1.
    tokens = tokens or TokenSet([])
    app = create_app(bridge, tokens)
    metrics = bridge.sink(PrometheusMetrics)
    assert metrics is not None  # [metrics] is on by default: the runtime built the sink
    app.include_router(metrics_router(metrics, dependencies=[Depends(require_scope(tokens, "read"))]))
    return app


async def _fill(sim: SimulatorHandle, bridge: Bridge) -> int:
    cycles = bridge.runners["pump"].windows.length + 2
    for _ in range(cycles):
        await sim.wait_samples(1)
        await bridge.poll_device("plant")
        await bridge.score_model("pump")
    return cycles


async def _scrape(app: FastAPI, headers: dict[str, str] | None = None) -> dict[str, list[Sample]]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    # No Accept header: the classic text format every Prometheus version reads.
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(response.text):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _one(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


async def test_metrics_equal_bridge_state(sim: SimulatorHandle, bridge: Bridge) -> None:
    app = _app(bridge)
    cycles = await _fill(sim, bridge)
    samples = await _scrape(app)

    status = bridge.adapters["plant"].status
    assert _one(samples, "plcbridge_device_connected", device="plant") == 1
    assert _one(samples, "plcbridge_device_polls_total", device="plant") == status.polls == cycles
    assert "plcbridge_device_errors_total" not in samples  # no error of any kind yet
    assert _one(samples, "plcbridge_device_last_poll_duration_seconds", device="plant") == status.last_latency
    assert _one(samples, "plcbridge_device_last_success_timestamp_seconds", device="plant") \
        == status.last_success
    assert _one(samples, "plcbridge_device_poll_duration_seconds_count", device="plant") == cycles
    assert _one(samples, "plcbridge_device_reconnects_total", device="plant") == 0

    runner, latest = bridge.runners["pump"], bridge.scores.latest("pump")
    assert latest is not None and latest.window_valid and latest.score is not None
    assert _one(samples, "plcbridge_model_score", model="pump") == latest.score
    assert _one(samples, "plcbridge_model_threshold", model="pump") == runner.threshold
    assert _one(samples, "plcbridge_model_anomaly", model="pump") == int(latest.anomaly) == 0
    assert _one(samples, "plcbridge_model_window_valid", model="pump") == 1
    assert _one(samples, "plcbridge_model_last_score_timestamp_seconds", model="pump") == latest.time
    assert _one(samples, "plcbridge_model_windows_scored_total", model="pump") == runner.scored == 3
    assert _one(samples, "plcbridge_model_anomalies_total", model="pump") == runner.anomalies
    wb = bridge.writebacks["pump"].stats
    for result in ("written", "dry_run", "refused", "failed", "skipped_rate"):
        assert _one(samples, "plcbridge_model_writeback_total", model="pump", result=result) \
            == getattr(wb, result)
    inference = _one(samples, "plcbridge_model_inference_duration_seconds_count", model="pump")
    assert inference == runner.scored  # one observation per scored window, from the Score
    assert _one(samples, "plcbridge_build_info", version=__version__) == 1
    assert _one(samples, "plcbridge_start_time_seconds") == bridge.started_at

    # A device error is counted by kind, and the metric follows it on the next scrape.
    status.record_error("timeout", "test")
    samples = await _scrape(app)
    assert _one(samples, "plcbridge_device_errors_total", device="plant", kind="timeout") == 1

    # Prometheus asks for OpenMetrics first: it gets it, with the same values.
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        response = await http.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in openmetrics_families(response.text)}
    assert response.text.endswith("# EOF\n")
    (polls,) = families["plcbridge_device_polls"].samples
    assert polls.name == "plcbridge_device_polls_total" and polls.value == status.polls


async def test_invalid_window_reads_nan_and_reconnect_is_counted(sim: SimulatorHandle,
                                                                 bridge: Bridge) -> None:
    app = _app(bridge)
    await bridge.poll_device("plant")
    await bridge.score_model("pump")  # one row of sixteen: not scored
    samples = await _scrape(app)
    assert math.isnan(_one(samples, "plcbridge_model_score", model="pump"))
    assert _one(samples, "plcbridge_model_window_valid", model="pump") == 0

    # The device goes away and comes back on the same port: one reconnect.
    port = sim.port
    await sim.stop()
    await bridge.poll_device("plant")
    assert not bridge.adapters["plant"].status.connected
    polls = 2
    again = await start_simulator("127.0.0.1", port, seed=3, step=0.1, speed=10)
    try:
        # The adapter's reconnect backoff may skip the first poll or two after the restart.
        async def reconnected() -> bool:
            nonlocal polls
            await bridge.poll_device("plant")
            polls += 1
            return bridge.adapters["plant"].status.connected

        await until(reconnected, 10, "the adapter to reconnect", interval=0.05)
    finally:
        await again.stop()
    samples = await _scrape(app)
    assert _one(samples, "plcbridge_device_reconnects_total", device="plant") == 1
    assert _one(samples, "plcbridge_device_poll_duration_seconds_count", device="plant") == polls
    assert _one(samples, "plcbridge_device_connected", device="plant") == 1


async def test_metrics_need_the_read_token_when_tokens_are_configured(bridge: Bridge) -> None:
    app = _app(bridge, parse_tokens(f"read {READ_TOKEN}\n"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        assert (await http.get("/metrics")).status_code == 401
    samples = await _scrape(app, {"Authorization": f"Bearer {READ_TOKEN}"})
    assert _one(samples, "plcbridge_device_connected", device="plant") == 0  # never polled


async def test_inference_time_from_the_score_and_separate_registries(bridge: Bridge) -> None:
    metrics = bridge.sink(PrometheusMetrics)
    assert metrics is not None and sum(isinstance(s, PrometheusMetrics) for s in bridge.sinks) == 1
    metrics.on_score(Score("pump", time.time(), 0.1, 1.0, False, True, inference_seconds=0.0002))
    metrics.on_score(Score("pump", time.time(), None, 1.0, False, False))  # not scored: no time
    text = metrics.exposition().decode()
    assert 'plcbridge_model_inference_duration_seconds_count{model="pump"} 1.0' in text
    assert 'plcbridge_model_inference_duration_seconds_sum{model="pump"} 0.0002' in text
    # A second bridge's metrics live in their own registry: no duplicate-series error.
    other = PrometheusMetrics(bridge.view)
    assert other.registry is not metrics.registry
    assert 'plcbridge_model_inference_duration_seconds_count{model="pump"} 0.0' in other.exposition().decode()


def test_own_histogram_exposes_what_the_client_librarys_histogram_would() -> None:
    """The sink counts durations itself (prometheus_client loads only when scraped): the same
    observations, bucket bounds included, give the same _bucket/_count/_sum samples."""
    import random

    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from bridge.core.histogram import Histogram as Own
    from bridge.sinks.metrics import POLL_BUCKETS
    from bridge.sinks.prometheus import HistogramCollector

    reference = CollectorRegistry(auto_describe=False)
    theirs = Histogram("x_seconds", "doc", ["device"], registry=reference, buckets=POLL_BUCKETS)
    ours = Own("x_seconds", "doc", "device", POLL_BUCKETS)
    ours.add("idle")
    theirs.labels("idle")
    rng = random.Random(3)
    amounts = [*POLL_BUCKETS, 0.0, 11.0, *(rng.uniform(0, 12) for _ in range(500))]  # bounds land in their own bucket
    for amount in amounts:
        device = rng.choice(["a", "b"])
        ours.observe(device, amount)
        theirs.labels(device).observe(amount)
    mine = CollectorRegistry(auto_describe=False)
    mine.register(HistogramCollector([ours]))

    def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples  # type: ignore[no-untyped-call]
                if not s.name.endswith("_created")}

    got, want = samples(mine), samples(reference)
    assert set(got) == set(want) and len(got) == 3 * (len(POLL_BUCKETS) + 3)
    assert all(math.isclose(got[k], want[k], rel_tol=1e-12) for k in want), (got, want)
