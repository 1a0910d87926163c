"""Federated PCA over a broker (docs/fleet.md): what a site publishes and how the merger turns
the published statistics into a candidate model. No broker I/O here (``bridge.sinks.fleet``
does it; this layer may not import it): payloads in, payloads and files out.

The merge is ``bridge.ml.train.train_from_stats`` itself, fed the payloads as files, so the
model from the broker is byte for byte the one ``plcbridge train --from-stats`` writes from the
same statistics: there is one copy of the math.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.ml.dataset import DataError, Table
from bridge.ml.options import TrainOptions, TrainResult
from bridge.ml.train import STATS_FORMAT, export_stats, train_from_stats

__all__ = ["STATS_KEYS", "card_payload", "check_stats", "merge_payloads", "stats_payload"]

# Everything a site's statistics may hold. A payload with any other key is refused, so nothing
# but these (no rows, no values) is ever merged from, or by ``stats_payload`` sent to, a broker.
STATS_KEYS = frozenset({"format", "version", "inputs", "window", "period", "max_age", "source",
                        "rows", "window_means"})
_SOURCE_KEYS = frozenset({"file", "sha256", "rows", "bad_rows_dropped", "time_range"})
_MOMENT_KEYS = frozenset({"count", "mean", "scatter"})


def check_stats(obj: Any, where: str) -> dict[str, Any]:
    """``obj`` if it is a statistics document with exactly the known keys; DataError if not."""
    if not isinstance(obj, dict) or obj.get("format") != STATS_FORMAT:
        raise DataError(f"{where}: not {STATS_FORMAT} statistics")
    extra = set(obj) - STATS_KEYS
    extra |= {f"source.{k}" for k in set(obj.get("source") or {}) - _SOURCE_KEYS}
    for part in ("rows", "window_means"):
        moments = obj.get(part)
        if not isinstance(moments, dict):
            raise DataError(f"{where}: {part}: missing")
        extra |= {f"{part}.{k}" for k in set(moments) - _MOMENT_KEYS}
    if extra:
        raise DataError(f"{where}: unexpected keys {', '.join(sorted(extra))}: statistics only")
    return obj


def stats_payload(table: Table, opts: TrainOptions) -> bytes:
    """This site's statistics (``train --export-stats``) as the JSON bytes to publish."""
    return json.dumps(check_stats(export_stats(table, opts), str(table.path))).encode()


def merge_payloads(payloads: Mapping[str, bytes], out: Path, opts: TrainOptions) -> TrainResult:
    """Merge the sites' statistics (by site id) into the PCA model at ``out`` and its card.
    Raises DataError naming the site whose statistics are bad or do not match the others'."""
    if not payloads:
        raise DataError("no statistics to merge")
    with tempfile.TemporaryDirectory(prefix="plcbridge-fleet-") as tmp:
        paths = []
        for site in sorted(payloads):  # sorted: the same sites give the same model bytes
            try:
                obj = json.loads(payloads[site])
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"site {site}: not JSON ({exc})") from None
            path = Path(tmp) / f"{site}.json"
            path.write_text(json.dumps(check_stats(obj, f"site {site}")), encoding="utf-8")
            paths.append(path)
        try:
            return train_from_stats(paths, out, opts)
        except DataError as exc:  # name the site, not the temporary file
            raise DataError(str(exc).replace(f"{tmp}/", "site ").replace(".json", "")) from None


def card_payload(result: TrainResult, sites: list[str], sha256: str,
                 rollout: Mapping[str, Any] | None = None) -> bytes:
    """What the merger states beside the model: its hash, threshold and where it came from, and
    the rollout (``RolloutSpec``; None: every bridge installs it)."""
    c = result.contract
    return json.dumps({"rollout": rollout,
                       "model": c.name, "sha256": sha256, "bytes": result.path.stat().st_size,
                       "threshold": c.threshold, "inputs": list(c.inputs), "window": c.window_length,
                       "period": c.period, "sites": sites, "rows": result.rows,
                       "windows": result.fit_windows,
                       "calibration": c.training.get("calibration"),
                       "target_far": c.training.get("target_far"), "margin": c.training.get("margin")
                       }).encode()
