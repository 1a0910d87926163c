"""Shared pieces: the result schema, percentiles, /proc readings, the environment record."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LIBRARIES = ("pymodbus", "onnxruntime", "numpy", "fastapi", "uvicorn", "apscheduler", "pydantic",
             "matplotlib")


@dataclass
class Result:
    """One measured number next to its baseline.

    ``ratio`` is always "bridge relative to baseline, > 1 is better for the bridge" so that
    tables read the same way for throughputs (value / baseline) and costs (baseline / value).
    """

    name: str
    value: float
    unit: str
    baseline: float | None
    baseline_name: str
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline is not None and self.value > 0 and self.baseline > 0:
            raw = self.value / self.baseline if self.higher_is_better else self.baseline / self.value
            self.ratio = round(raw, 4)


@dataclass
class Section:
    """What one benchmark module returns."""

    name: str
    title: str
    method: str
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    # Scaling curves: {"plot title": {"x": [...], "series": {"label": [...]}, "xlabel": .., "ylabel": ..}}
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Pass/fail facts that are not ratios (e.g. "asyncua imported": False).
    checks: dict[str, Any] = field(default_factory=dict)
    # Where the time goes (top functions of a cProfile run), for the closing note.
    profile: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    quick: bool
    workdir: Path  # a temporary directory for configs, models and logs of this run
    # The unit test's size: the smallest configuration through the same code (not a benchmark).
    smoke: bool = False
    soak_seconds: float | None = None  # --soak-seconds: a longer soak than the default

    def pick(self, quick: Any, full: Any, smoke: Any = None) -> Any:
        if self.smoke and smoke is not None:
            return smoke
        return quick if self.quick or self.smoke else full


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th value)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def rss_parts_mb(pid: int) -> dict[str, float]:
    """VmRSS split as /proc reports it: RssAnon (the process's own heap and stacks), RssFile
    (mapped files: mostly shared library code, clean and evictable), RssShmem."""
    parts = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, value = line.split()[:2]
                parts[key.rstrip(":")] = int(value) * 1024 / 1e6
    # PSS (shared pages divided among the processes mapping them) and USS (pages only this
    # process maps): what it costs the box when other processes share the libraries.
    private = 0
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for line in fh:
            key, value = line.split()[:2]
            if key == "Pss:":
                parts["PSS"] = int(value) * 1024 / 1e6
            elif key in ("Private_Clean:", "Private_Dirty:"):
                private += int(value)
    parts["USS"] = private * 1024 / 1e6
    return parts


def profile_rows(stats: Any, top: int = 10, idle: str = "") -> list[str]:
    """The ``top`` functions of a ``pstats.Stats`` by own time: share, calls, where. Functions
    whose name contains ``idle`` (e.g. the event loop's wait for I/O) are left out, and shares
    are of the rest: of the time the process was busy."""
    items = [(key, value) for key, value in stats.stats.items() if not idle or idle not in key[2]]
    total = sum(value[2] for _, value in items) or 1.0
    rows = []
    for (path, line, func), (_cc, calls, tottime, _ct, _callers) in sorted(
            items, key=lambda item: -item[1][2])[:top]:
        where = path.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows.append(f"{tottime / total * 100:5.1f}%  {calls:>8}  {where}:{line}({func})")
    return rows


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` from /proc (MB = 10^6 bytes)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s threads, from /proc/PID/task/*/schedstat (nanoseconds).

    Not /proc/PID/stat: its user + system times count in clock ticks (10 ms), so a bridge at
    0.3 % of a core measured over 3 s read as 0 or 1 tick. Threads that already exited are not
    counted (the bridge's threads live as long as it does)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between listing and reading
    return total / 1e9


# The packages of this repository that the measured processes import.
OWN_PACKAGES = ("bridge", "adapters", "models")


def compile_own_packages() -> None:
    """Byte-compile this repository's packages into ``__pycache__``, as ``pip install`` does on
    a deployed box (wheel or Docker image). A checkout run with PYTHONDONTWRITEBYTECODE set (as
    this sandbox, CI and many containers do) has no bytecode for them and compiles every module
    from source at each start: measured, ~1.9 MB more RSS after importing the bridge (6.9
    against 5.0 MB, 3 runs each) and start-up CPU that an installed bridge never pays."""
    import compileall

    for package in OWN_PACKAGES:
        if not compileall.compile_dir(ROOT / package, quiet=1):
            raise RuntimeError(f"cannot byte-compile {ROOT / package}")


def environment(quick: bool) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "mode": "quick" if quick else "full",
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
        "bytecode": f"{', '.join(OWN_PACKAGES)} byte-compiled before the run, as pip install does",
    }


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` (a condition on another process) until true or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
