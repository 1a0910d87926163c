"""README "Fleets" runs as written (issue 16): every command of the section, in order, against
three `plcbridge simulate` plants and a real mosquitto.

What the test changes, and only that: the broker is the test's own (``mosquitto -d`` is not
run) and ports 1883, 5021-5023 and 8081-8083 become free ports; the simulators and `record` run
``SPEED`` times faster (``--speed``, hidden for record); the shadow period and minimum windows
are shortened (``SHADOW``); ``mosquitto_sub`` (which waits for the results) becomes a wait for
every bridge's answer to the rollout before it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.mqtt_broker import MOSQUITTO, Broker, free_port
from tests.test_fleet import broker

__all__ = ["broker"]  # the fixture, shared with tests/test_fleet.py

ROOT = Path(__file__).resolve().parent.parent
SPEED = 200.0
SHADOW = {"--period-s": "20", "--min-windows": "3"}
DECIDED = ("promoted", "rejected")

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")]


def section() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Fleets\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S)


async def _results(port: int) -> dict[str, dict[str, Any]]:
    """The retained result of each bridge, by bridge id."""
    found: dict[str, dict[str, Any]] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"walkthrough-{os.getpid()}") as client:
        await client.subscribe("plcbridge/fleet/pump/result/#", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    found[str(message.topic).rsplit("/", 1)[-1]] = json.loads(message.payload)
    return found


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


async def test_readme_fleets_walkthrough_runs_as_written(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    # The commands run one after the other, as a reader types them: in a thread, so the
    # broker (the fixture's, in this loop) keeps running.
    canary, everyone = await asyncio.to_thread(_walk, tmp_path, broker.port)
    assert canary["b1"]["status"] in DECIDED and canary["b1"]["comparison"]["windows"] >= 3, canary
    assert canary["b2"]["status"] == canary["b3"]["status"] == "skipped"
    for bridge in ("b2", "b3"):
        assert everyone[bridge]["status"] in DECIDED, everyone[bridge]
    assert everyone["b1"]["shadow_id"] == canary["b1"]["shadow_id"]  # not staged again
    with capsys.disabled():
        for bridge, result in sorted(everyone.items()):
            print(f"\n{bridge}: {result['status']} ({result['reason']}): {json.dumps(result['comparison'])}")


def _walk(tmp_path: Path, broker_port: int) -> list[dict[str, dict[str, Any]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ports = {"1883": str(broker_port), **{f"502{i}": str(free_port()) for i in (1, 2, 3)},
             **{f"808{i}": str(free_port()) for i in (1, 2, 3)}}
    background: list[subprocess.Popen[bytes]] = []
    merges: list[list[str]] = []

    def swap(text: str) -> str:
        return re.sub(r"\b(1883|502[123]|808[123])\b", lambda m: ports[m.group(1)], text)

    def wait_rollout() -> dict[str, dict[str, Any]]:
        """Until every bridge answered the last merge: the canary (b1) or everyone decided,
        the others skipped."""
        selected = {"b1"} if len(merges) == 1 else {"b1", "b2", "b3"}
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            results = asyncio.run(_results(broker_port))
            if len(results) == 3 and all(
                    results[b]["status"] in (DECIDED if b in selected else ("skipped",)) for b in results):
                return results
            time.sleep(0.5)
        raise AssertionError(f"the bridges did not answer: {asyncio.run(_results(broker_port))}")

    def run(command: str) -> dict[str, dict[str, Any]] | None:
        command = command.split(" #")[0].strip()
        if not command or command.startswith("mosquitto -d"):
            return None
        if command.startswith("mosquitto_sub"):
            return wait_rollout()
        if command.startswith("sed "):
            subprocess.run(swap(command), shell=True, cwd=tmp_path, check=True)
            return None
        args = shlex.split(swap(command))
        assert args[0] == ".venv/bin/plcbridge", command
        args = args[1:]
        if args[-1] == "&":
            args = args[:-1] + (["--speed", str(SPEED)] if args[0] == "simulate" else [])
            log = (tmp_path / f"{args[0]}-{len(background)}.log").open("wb")
            background.append(subprocess.Popen([sys.executable, "-m", "bridge.cli", *args], cwd=tmp_path,
                                               env=env, stdout=log, stderr=subprocess.STDOUT))
            if args[0] == "simulate":
                _wait_port(int(args[args.index("--port") + 1]))
            return None
        if args[0] == "record":
            args += ["--speed", str(SPEED)]
        if args[:2] == ["fleet", "merge"]:
            args = [SHADOW.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
        done = subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout.decode(), done.stderr.decode())
        if args[:2] == ["fleet", "merge"]:
            merges.append(args)
        return None

    answers: list[dict[str, dict[str, Any]]] = []
    try:
        for language, body in section():
            if language == "toml":
                (tmp_path / "b1.toml").write_text(swap(body))
                continue
            for line in body.splitlines():
                if (answer := run(line)) is not None:
                    answers.append(answer)
    finally:
        for proc in background:
            proc.terminate()
        for proc in background:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert len(answers) == 2, answers
    return answers
