"""README "Your own plant" runs as written (issue 13 item 10): every command of the section, in
order, against `plcbridge simulate`, with the plant sped up and durations shortened.

What the test changes, and only that: port 5020 and API port 8080 become free ports; the
simulator, `record` and `run` run ``SPEED`` times faster (``--speed``, hidden for record and
run: the bridge samples the plant at the plant's pace); a fault time becomes wall seconds after
the simulator starts; `run` without --check-only is stopped with SIGINT once its first write
(or dry-run write) is in data/audit.log, the reader's "after a while" (at most ``RUN_SECONDS``);
`make` (the virtual environment) is already done."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.opcua_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
SPEED = 100.0
RUN_SECONDS = 30.0

pytestmark = pytest.mark.timeout(90)


def section() -> list[tuple[str, str]]:
    """(language, body) of every fenced block of the README section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Your own plant")
    end = text.index("\n## ", start + 1)
    # "```toml append" marks a block appended to the file, not a config of its own.
    return re.findall(r"```(\w+)(?: append)?\n(.*?)```", text[start:end], flags=re.S)


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *args]


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port, api = str(free_port()), str(free_port())
    background: list[subprocess.Popen[bytes]] = []
    outputs: list[str] = []

    def wait_port() -> None:
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", int(port))) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("simulator did not start")

    def run(command: str) -> None:
        command = command.split(" #")[0].strip()
        if not command or command.startswith(("#", "make ")):
            return
        if command.startswith("kill %1"):
            for proc in background:
                proc.terminate()
                proc.wait(10)
            background.clear()
            return
        if command.startswith(("sed ", "grep ")):
            subprocess.run(command, shell=True, cwd=tmp_path, check=True)
            return
        args = shlex.split(command.replace("5020", port))
        assert args[0] == ".venv/bin/plcbridge", command
        args = args[1:]
        if args[-1] == "&":
            args = [*args[:-1], "--speed", str(SPEED)]
            args = [f"{float(a.split(':')[0]) / SPEED + 2.0}:{a.split(':')[1]}"
                    if i and args[i - 1] == "--fault-at" else a for i, a in enumerate(args)]
            background.append(subprocess.Popen(cli(args), cwd=tmp_path, env=env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port()
            return
        if args[0] == "record":
            args += ["--speed", str(SPEED)]
        if args[0] == "run" and "--check-only" not in args:
            audit = tmp_path / "data" / "audit.log"
            mode = "dry-run" if "dry-run" in (tmp_path / "plant.toml").read_text() else "write"
            seen = audit.read_text().count(f"{mode} model=plant") if audit.exists() else 0
            proc = subprocess.Popen(cli([*args, "--speed", str(SPEED)]), cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + RUN_SECONDS
            while time.monotonic() < deadline and proc.poll() is None and (
                    not audit.exists() or audit.read_text().count(f"{mode} model=plant") <= seen):
                time.sleep(0.1)
            time.sleep(0.5)  # a few more cycles, as after a while
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=20)
            assert proc.returncode == 0, (command, out.decode())
            return
        done = subprocess.run(cli(args), cwd=tmp_path, env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout.decode(), done.stderr.decode())
        outputs.append(done.stdout.decode())

    try:
        for language, body in section():
            if language == "toml":
                text = body.replace("5020", port).replace("port = 8080", f"port = {api}")
                with (tmp_path / "plant.toml").open("a") as out:
                    out.write(text + "\n")
                continue
            for line in body.splitlines():
                line = line.split(" #")[0]
                for command in line.split("; ", 1) if line.startswith("kill ") else [line]:
                    run(command)
                if line.lstrip().startswith(".venv/bin/plcbridge run plant.toml"):
                    audit = (tmp_path / "data" / "audit.log").read_text()
                    mode = "dry-run" if "dry-run" in (tmp_path / "plant.toml").read_text() else "write"
                    assert f"{mode} model=plant" in audit, audit[-2000:]
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(10)
    probe = outputs[0]
    assert "float32 ABCD" in probe and 'name = "pressure"' in probe
    assert "data/normal.csv" in "".join(outputs) or (tmp_path / "data" / "normal.csv").exists()
    assert (tmp_path / "models" / "plant.onnx").exists()
    final = outputs[-1]  # the score registers read back after write-back was on
    heartbeat = next(line for line in final.splitlines() if line.split()[:2] == ["103", "40104"])
    assert int(heartbeat.split()[-1]) > 0, final
