"""Hostile clients on the REST API (issue 14, item 6), on real sockets against uvicorn
serving a bridge that polls the simulated plant: idle and slow-header connections, a
connection flood, concurrent model uploads and a rollback, oversized contract strings,
temporary paths in error replies; and a bounded fuzz target of random HTTP requests."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import onnx
import pytest

from bridge.config import parse_config
from bridge.runtime.bridge import Bridge
from tests.hostile import (
    FUZZ_CASES,
    Flood,
    Plant,
    assert_alive,
    check_fuzz_outcome,
    descriptors,
    hostile_plant,
    rss_mb,
)
from tests.test_hostile_modbus import closed_by_server
from tests.test_model_update import _variant
from tests.waiting import until

pytestmark = pytest.mark.timeout(90 + FUZZ_CASES // 5)  # make fuzz raises FUZZ_CASES


async def connect(plant: Plant) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", plant.api.port)


async def test_idle_slow_header_and_short_body_connections_are_closed() -> None:
    async with hostile_plant(api={"request_timeout": 0.5}) as plant:
        idle = await connect(plant)
        slow = await connect(plant)
        slow[1].write(b"GET /api/v1/health HTTP/1.1\r\nHost: bridge\r\n")

        async def dribble() -> None:  # one header byte every 0.1 s, never the blank line
            for _ in range(40):
                await asyncio.sleep(0.1)
                if slow[1].is_closing():
                    return
                slow[1].write(b"X")

        dribbling = asyncio.create_task(dribble())
        try:
            short = await connect(plant)  # a body shorter than its Content-Length
            short[1].write(b"PUT /api/v1/models/pump HTTP/1.1\r\nHost: b\r\n"
                           b"Content-Length: 99\r\n\r\nx")
            assert await closed_by_server(short[0], 2), "a request body that never ends is held"
            short[1].close()
            assert await closed_by_server(idle[0], 2), "a silent connection is held"
            assert await closed_by_server(slow[0], 2), "a request head sent byte by byte is held"
        finally:
            dribbling.cancel()
            await asyncio.gather(dribbling, return_exceptions=True)
            for _, writer in (idle, slow):
                writer.close()
        await assert_alive(plant)


async def test_keep_alive_connection_closes_after_keep_alive_timeout() -> None:
    async with hostile_plant(api={"keep_alive_timeout": 1}) as plant:
        reader, writer = await connect(plant)
        writer.write(b"GET /api/v1/live HTTP/1.1\r\nHost: bridge\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await closed_by_server(reader, 3)
        writer.close()


async def test_connection_flood_is_capped_and_the_api_still_answers() -> None:
    async with hostile_plant(api={"max_connections": 16}) as plant:
        baseline_fds, baseline_rss = descriptors(), rss_mb()
        async with Flood(plant.api.port, 1100):
            await until(lambda: descriptors() <= baseline_fds + 16 + 8, 5,
                        "the API to hold at most max_connections")
            flood_fds, flood_rss = descriptors(), rss_mb()
            await assert_alive(plant)
        await until(lambda: descriptors() <= baseline_fds + 2, 15, "descriptors back to baseline")
        print(f"\napi flood 1100: fds {baseline_fds} -> {flood_fds}, rss {baseline_rss:.0f} -> "
              f"{flood_rss:.0f} MB")
        await assert_alive(plant)


async def test_concurrent_uploads_then_rollback_keep_memory_and_disk_in_step(tmp_path: Path) -> None:
    """Upload A, then C and D at once, then roll back: the model running, the stored model
    and the model a restart loads are the same one."""
    data_dir = tmp_path / "data"
    async with hostile_plant(data_dir=data_dir) as plant:
        models = {v: _variant(tmp_path, v, version=f"{v}-1") for v in ("A", "C", "D")}
        put = plant.http.put
        assert (await put("/api/v1/models/pump", content=models["A"])).status_code == 200
        # D's upload completes while C is being validated (the updater's lock held): the
        # window in which both used to replace the same model. D is sent whole but its last
        # byte, which goes once C holds the lock.
        reader, writer = await connect(plant)
        writer.write(b"PUT /api/v1/models/pump HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(models["D"]) + models["D"][:-1])
        await writer.drain()
        upload_c = asyncio.create_task(put("/api/v1/models/pump", content=models["C"]))
        await until(plant.bridge.updater._lock.locked, 5, "C's validation", interval=0.001)
        writer.write(models["D"][-1:])
        reply_d = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        reply_c = await upload_c
        assert reply_c.status_code == 200 and reply_d.startswith(b"HTTP/1.1 200"), reply_d[:300]
        back = await plant.http.post("/api/v1/models/pump/rollback")
        assert back.status_code == 200, back.text
        running = plant.bridge.runners["pump"].detector.version
        stored = _version(data_dir / "models" / "pump.onnx")
        print(f"\nupload race: running {running}, stored {stored}")
        assert running == stored == "C-1"  # D replaced C; the rollback restored C
        config = plant.config
    restarted = Bridge(parse_config(config))
    try:
        assert restarted.runners["pump"].detector.version == running
    finally:
        await restarted.stop()


def _version(path: Path) -> str:
    import json

    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    version: str = json.loads(props["plcbridge.contract"])["version"]
    return version


async def test_oversized_contract_strings_and_temp_paths_stay_out_of_replies(tmp_path: Path) -> None:
    async with hostile_plant(data_dir=tmp_path / "data") as plant:
        before = plant.bridge.runners["pump"].detector.version
        for content, expected in ((_variant(tmp_path, "long", version="1." + "9" * 10_000), "version"),
                                  (_variant(tmp_path, "recipe", recipe="r" * 5_000), "recipe"),
                                  (b"not a model at all", "not a loadable ONNX model")):
            reply = await plant.http.put("/api/v1/models/pump", content=content)
            assert reply.status_code == 422 and expected in reply.text, reply.text
            assert len(reply.text) < 1000, reply.text[:300]
            for internal in (".upload.onnx", str(tmp_path), "/tmp"):
                assert internal not in reply.text, reply.text
        assert plant.bridge.runners["pump"].detector.version == before
        assert not list((tmp_path / "data" / "models").glob("*.upload.onnx"))


_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE", b"\x00GET",
            b"G" * 300]
_PATHS = [b"/api/v1/health", b"/api/v1/models/pump", b"/api/v1/models/pump/rollback",
          b"/api/v1/tags", b"/metrics", b"/", b"/api/v1/models/%00", b"/" + b"a" * 9000,
          b"/api/v1/models/pump/scores?limit=-1", b"/api/v1/tags/../../etc/passwd", b"*"]


def _random_request(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.15:
        return rng.randbytes(rng.randrange(1, 400))
    method, path = rng.choice(_METHODS), rng.choice(_PATHS)
    headers = [b"Host: bridge"]
    for _ in range(rng.randrange(0, 6)):
        token = rng.randbytes(8).hex().encode()
        headers.append(rng.choice([
            b"Content-Length: " + str(rng.choice([-1, 0, 10, 2**40])).encode(),
            b"Transfer-Encoding: chunked", b"Authorization: Bearer " + token,
            b"X-" + token + b": " + b"v" * rng.randrange(0, 20000),
            b"Content-Type: application/json", b"Connection: close"]))
    body = rng.choice([b"", b"{}", b'{"x":' * 50, rng.randbytes(rng.randrange(0, 200)), b"0\r\n\r\n"])
    return method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


async def test_fuzz_random_http(caplog: pytest.LogCaptureFixture) -> None:
    """FUZZ_CASES random requests on raw sockets (bad methods, paths, headers, lengths,
    chunking, garbage): each gets a reply or a close within a bound, never a 500; no
    traceback; descriptors back to baseline; the bridge keeps polling and scoring."""
    caplog.set_level(logging.WARNING)
    rng = random.Random(61)
    failures: list[str] = []
    async with hostile_plant(api={"request_timeout": 0.5, "keep_alive_timeout": 1}) as plant:
        baseline, start_rss = descriptors(), rss_mb()

        async def one(request: bytes) -> None:
            reader, writer = await connect(plant)
            try:
                writer.write(request)
                async with asyncio.timeout(5):
                    first = await reader.read(12)
                    if first.startswith(b"HTTP/1.1 5"):
                        failures.append(f"{first!r} for {request[:80]!r}")
            except TimeoutError:
                failures.append(f"hang for {request[:80]!r}")
            except ConnectionError:
                pass  # closed: a refusal
            finally:
                writer.close()

        requests = [_random_request(rng) for _ in range(FUZZ_CASES)]
        for start in range(0, len(requests), 50):
            await asyncio.gather(*(one(r) for r in requests[start:start + 50]))
        await check_fuzz_outcome(plant, "http", len(requests), failures, baseline, start_rss)
    tracebacks = [f"{r.getMessage()} {r.exc_info[1]!r}" for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[:3]


