"""REST: requests/s and latency of ``/api/v1/tags`` (1,000 tags) and the latest score.

The bridge runs as ``plcbridge run`` polling 1,000 tags at 1 Hz from a separate server
process and scoring the default model. The baseline is a bare FastAPI app in its own process
returning the very JSON the bridge served (fetched from it first), with the same uvicorn
settings. Load comes from Debian's ``wrk`` (one thread, 16 connections): Python load
generators saturate near 700 req/s and would measure themselves.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

from bench._bridge_proc import BridgeProcess
from bench._common import PYTHON, ROOT, Context, Result, Section, wait_until
from bench._servers import fleet_config, registers_for, servers, to_toml
from bridge.config import load_config

NAME = "rest"
TITLE = "REST API"
CONNECTIONS = 16
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, seconds: float) -> dict[str, float]:
    """Requests/s and p50/p99 latency (ms) from ``wrk --latency``."""
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", url],
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rate is None or errors is not None:
        raise RuntimeError(f"wrk failed on {url}:\n{out}")
    result = {"rps": float(rate.group(1))}
    for q in (50, 99):
        found = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no p{q} in wrk output:\n{out}")
        result[f"p{q}"] = float(found.group(1)) * _UNITS[found.group(2)]
    return result


def _profile_tags(config_path: Path, calls: int) -> tuple[float, list[str]]:
    """Build the /api/v1/tags body in-process: ms per call and the top functions by own time.

    Only the body is built here (what the bare app gets for free); FastAPI's serialisation of
    the list is the same for both servers. (The handler itself runs in uvicorn's threadpool,
    out of cProfile's reach, hence the direct call of the API's per-tag renderer.)
    """
    from bridge.api import app as api
    from bridge.core.tags import good
    from bridge.runtime.bridge import Bridge

    render = getattr(api, "_reading", None)
    if render is None:
        return float("nan"), ["(bridge.api.app._reading not found: the API changed; profile skipped)"]
    bridge = Bridge(load_config(config_path))  # not started: nothing connects
    now = time.time()
    bridge.store.put_many(good(name, 1.25, received_time=now) for name in bridge.tags)

    def endpoint() -> list[dict[str, object]]:
        return [render(bridge, name, bridge.store.latest(name), now) for name in bridge.tags]

    started = time.perf_counter()
    for _ in range(calls):  # timed without the profiler, which inflates small calls
        endpoint()
    per_call = (time.perf_counter() - started) / calls * 1000
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        endpoint()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (path, line, func), (_cc, ncalls, tottime, _ct, _callers) in sorted(
            stats.stats.items(), key=lambda item: -item[1][2])[:8]:  # type: ignore[attr-defined]
        where = path.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows.append(f"{tottime / total * 100:5.1f}%  {ncalls:>8}  {where}:{line}({func})")
    return per_call, rows


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE, __doc__ or "")
    if shutil.which("wrk") is None:
        section.skipped = "wrk is not installed (apt-get install -y wrk); REST not measured"
        return section
    seconds = ctx.pick(3.0, 8.0)
    rounds = ctx.pick(1, 2)
    with servers(1, registers_for(100), 10) as started:
        path = ctx.workdir / "rest.toml"
        path.write_text(to_toml(fleet_config(started, 100, model=True)))
        bridge = BridgeProcess(path, ctx.workdir)
        bare = None
        try:
            bridge.wait_api()
            wait_until(lambda: all(d["polls"] > 0 for d in bridge.get("/api/v1/health")["devices"])
                       and bridge.get("/api/v1/health")["models"][0]["last_score_time"] is not None,
                       20, "first polls and score")
            tags, score = bridge.get("/api/v1/tags"), bridge.get("/api/v1/models/pump/score")
            (ctx.workdir / "tags.json").write_text(json.dumps(tags))
            (ctx.workdir / "score.json").write_text(json.dumps(score))
            bare = subprocess.Popen([PYTHON, "-m", "bench._bare_api", str(ctx.workdir / "tags.json"),
                                     str(ctx.workdir / "score.json")], cwd=ROOT, stdout=subprocess.PIPE,
                                    text=True)
            assert bare.stdout is not None
            ready, _, _ = select.select([bare.stdout], [], [], 30)
            bare_url = f"http://127.0.0.1:{bare.stdout.readline().split()[1]}" if ready else ""
            time.sleep(0.5)
            for path_, label in (("/api/v1/tags", "/api/v1/tags (1,000 tags)"),
                                 ("/api/v1/models/pump/score", "latest score")):
                best_bridge: dict[str, float] = {}
                best_bare: dict[str, float] = {}
                for _ in range(rounds):  # interleaved, best of: noise only slows a server down
                    b = wrk(bridge.url + path_, seconds)
                    r = wrk(bare_url + path_, seconds)
                    best_bridge = max(best_bridge, b, key=lambda m: m.get("rps", 0))
                    best_bare = max(best_bare, r, key=lambda m: m.get("rps", 0))
                params = {"connections": CONNECTIONS, "seconds": seconds,
                          "body_bytes": len(json.dumps(tags if "tags" in path_ else score))}
                section.results.append(Result(f"{label} requests/s", round(best_bridge["rps"]), "req/s",
                                              round(best_bare["rps"]), "bare FastAPI, same JSON",
                                              params=params))
                for q in (50, 99):
                    section.results.append(Result(
                        f"{label} p{q}", round(best_bridge[f"p{q}"], 2), "ms", round(best_bare[f"p{q}"], 2),
                        "bare FastAPI, same JSON", higher_is_better=False, params=params))
        finally:
            if bare is not None:
                bare.terminate()
                bare.wait(10)
            bridge.stop()
    per_call, section.profile = _profile_tags(ctx.workdir / "rest.toml", ctx.pick(20, 100, smoke=5))
    section.notes.append(f"Building the 1,000-tag body in the bridge's handler alone takes {per_call:.1f} ms "
                         "per request (in-process, profiled below); the bare app returns a ready list.")
    section.notes.append("While serving, the bridge keeps polling 1,000 tags at 1 Hz and scoring: "
                         "that work is part of what it costs. Both servers run uvicorn's default "
                         "loop and HTTP parser (uvloop/httptools are not installed).")
    return section
