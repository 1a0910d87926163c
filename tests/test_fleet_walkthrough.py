"""README "Fleets" runs as written (issue 16): every command of the section, in order, in a
shell, against three `plcbridge simulate` plants and a real mosquitto.

What the test changes, and only that: the broker is the test's own (``mosquitto -d`` is not
run) and ports 1883, 5021-5023 and 8081-8083 become free ports; ``.venv/bin/plcbridge`` is a
shim that runs the simulators, the recorders and the bridges ``SPEED`` times faster, all at
the same speed (``--speed``: plant time, sampling, max ages and the shadow's period scale
together, so the windows are the ones a reader's bridges see, and the shadow rule is the
README's); ``mosquitto_sub`` (which waits for the results) becomes a wait for every bridge's
answer to the rollout before it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
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
SPEED = 100.0
DECIDED = ("promoted", "rejected")
MAX_FAR = 0.05  # the README's --max-far

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
    assert canary["b2"]["status"] == canary["b3"]["status"] == "skipped"
    assert everyone["b1"]["shadow_id"] == canary["b1"]["shadow_id"]  # not staged again
    for result in (canary["b1"], everyone["b2"], everyone["b3"]):
        figures = result["comparison"]
        # A real comparison under the README's rule: its minimum of windows, most of them
        # called normal by the shipped model (the plant runs normally), so the shadow's
        # false-alarm rate is measured, not undefined; the verdict is the rule's (the fleet
        # model, from ten recorded minutes, usually passes the 5 %; when the plant has drifted
        # past what those minutes saw, it is rejected for it).
        assert figures["windows"] >= 100 and figures["active_normal"] >= 0.9 * figures["windows"], result
        assert figures["far"] is not None and figures["correlation"] is not None, result
        if figures["far"] <= MAX_FAR:
            assert result["status"] == "promoted", result
        else:
            assert result["status"] == "rejected" and "the rule allows 0.05" in result["reason"], result
    with capsys.disabled():
        for bridge, result in sorted(everyone.items()):
            print(f"\n{bridge}: {result['status']} ({result['reason']}): {json.dumps(result['comparison'])}")


SHIM = """#!/bin/sh
case "$1" in simulate|record|run) exec "{python}" -m bridge.cli "$@" --speed {speed} ;; esac
exec "{python}" -m bridge.cli "$@"
"""


def _walk(tmp_path: Path, broker_port: int) -> list[dict[str, dict[str, Any]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ports = {"1883": str(broker_port), **{f"502{i}": str(free_port()) for i in (1, 2, 3)},
             **{f"808{i}": str(free_port()) for i in (1, 2, 3)}}
    shim = tmp_path / ".venv" / "bin" / "plcbridge"
    shim.parent.mkdir(parents=True)
    shim.write_text(SHIM.format(python=sys.executable, speed=SPEED))
    shim.chmod(0o755)
    background: list[subprocess.Popen[bytes]] = []
    merges: list[str] = []

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
            time.sleep(0.2)
        raise AssertionError(f"the bridges did not answer: {asyncio.run(_results(broker_port))}")

    def run(command: str) -> dict[str, dict[str, Any]] | None:
        command = command.split(" #")[0].strip()
        if not command or command.startswith("mosquitto -d"):
            return None
        if command.startswith("mosquitto_sub"):
            return wait_rollout()
        assert "plcbridge" not in command or ".venv/bin/plcbridge" in command, command
        if command.endswith("&"):
            log = (tmp_path / f"background-{len(background)}.log").open("wb")
            # A session of its own: the shell and what it starts stop together at the end.
            background.append(subprocess.Popen(swap(command[:-1]), shell=True, cwd=tmp_path, env=env,
                                               stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
            if (port := re.search(r"simulate --port (\d+)", command)) is not None:
                _wait_port(int(ports[port.group(1)]))
            return None
        done = subprocess.run(swap(command), shell=True, cwd=tmp_path, env=env, capture_output=True,
                              timeout=60)
        assert done.returncode == 0, (command, done.stdout.decode(), done.stderr.decode())
        if "fleet merge" in command:
            assert f"--max-far {MAX_FAR:g}" in command, command  # the rule the verdicts are checked against
            merges.append(command)
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
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in background:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert len(answers) == 2, answers
    return answers
