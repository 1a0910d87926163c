"""What the Sparkplug B edge node publishes, as pure data and functions (no I/O, no aiomqtt).

``EdgeMetrics`` holds the metric definitions (name, alias, data type) of the edge node and of
each device, the latest value of every metric (births carry them) and the last value reported
(report by exception: a sample is sent only when it moved by more than its deadband, or its
quality or null-ness changed). ``encode_*`` build the protobuf payloads with the Eclipse Tahu
schema compiled into ``sparkplug_b_pb2`` (docs/sparkplug.md says how it is regenerated).

Aliases are numbered in config order (node metrics first, then each device's), so they are the
same after a restart with the same config; spooled data is stored by metric NAME and mapped to
the alias in force when it is sent, so a changed config never sends a stale alias.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.sinks.sparkplug_b_pb2 import Payload

__all__ = ["BDSEQ", "BOOLEAN", "DOUBLE", "INT64", "REBIRTH", "STRING", "EdgeMetrics", "MetricDef",
           "Sample", "decode", "encode_birth", "encode_data", "encode_death", "health_samples",
           "model_samples"]

# Sparkplug B data type numbers (Metric.datatype).
INT64, DOUBLE, BOOLEAN, STRING = 4, 10, 11, 12
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
# Quality codes as Ignition and Tahu use them in the "Quality" property.
_GOOD, _BAD = 192, 0
_INT32 = 3

Value = float | int | bool | str | None

HEALTH = (("Device/Connected", BOOLEAN), ("Device/Stale", BOOLEAN),
          ("Device/Consecutive Errors", INT64), ("Device/Errors", INT64),
          ("Device/Reconnects", INT64))
MODEL = (("Score", DOUBLE), ("Threshold", DOUBLE), ("Anomaly", BOOLEAN), ("Window Valid", BOOLEAN),
         ("Version", STRING), ("Reason", STRING), ("Anomalies", INT64))


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    alias: int
    datatype: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric value: ``time`` in UTC epoch milliseconds, ``good`` its quality."""

    name: str
    value: Value
    time: int
    good: bool = True

    def to_json(self) -> list[Any]:
        return [self.name, self.value, self.time, self.good]

    @classmethod
    def from_json(cls, item: Sequence[Any]) -> Sample:
        return cls(str(item[0]), item[1], int(item[2]), bool(item[3]))


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def _clean(value: Value) -> Value:
    # JSON (the spool) and Sparkplug have no NaN: a non-finite number is a null value.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EdgeMetrics:
    def __init__(self, devices: Mapping[str, Sequence[str]], models: Mapping[str, str], *,
                 deadband: float = 0.0, deadbands: Mapping[str, float] | None = None) -> None:
        """``devices``: device -> its tags, in config order; ``models``: model -> the device
        whose Sparkplug metrics carry it."""
        self.deadband = deadband
        self.deadbands = dict(deadbands or {})
        alias = 0

        def define(name: str, datatype: int) -> MetricDef:
            nonlocal alias
            alias += 1
            return MetricDef(name, alias, datatype)

        self.node = {name: define(name, kind) for name, kind in ((BDSEQ, INT64), (REBIRTH, BOOLEAN))}
        self.devices: dict[str, dict[str, MetricDef]] = {}
        for device, tags in devices.items():
            names = [*HEALTH, *((f"Tags/{tag}", DOUBLE) for tag in tags),
                     *((f"Models/{model}/{part}", kind) for model, home in models.items()
                       if home == device for part, kind in MODEL)]
            self.devices[device] = {name: define(name, kind) for name, kind in names}
        self._latest: dict[tuple[str, str], Sample] = {}
        self._reported: dict[tuple[str, str], Sample] = {}

    def update(self, device: str, samples: Iterable[Sample]) -> list[Sample]:
        """Record ``samples`` as the device's latest values; return those to report now (by
        exception), remembered as reported."""
        defs = self.devices[device]
        out = []
        for sample in samples:
            if sample.name not in defs:
                continue
            sample = Sample(sample.name, _clean(sample.value), sample.time, sample.good)
            key = (device, sample.name)
            self._latest[key] = sample
            if self._changed(self._reported.get(key), sample):
                self._reported[key] = sample
                out.append(sample)
        return out

    def latest(self, device: str) -> list[Sample]:
        """Every metric of the device with a value, for its DBIRTH; they count as reported."""
        out = []
        for name in self.devices[device]:
            sample = self._latest.get((device, name))
            if sample is not None:
                self._reported[(device, name)] = sample
                out.append(sample)
        return out

    def _changed(self, old: Sample | None, new: Sample) -> bool:
        if old is None or old.good != new.good or (old.value is None) != (new.value is None):
            return True
        if isinstance(new.value, bool) or not isinstance(new.value, int | float):
            return old.value != new.value
        assert isinstance(old.value, int | float)
        band = self.deadbands.get(new.name, self.deadband)
        return abs(new.value - old.value) > band if band > 0 else new.value != old.value


def health_samples(status: Any, now: float) -> list[Sample]:
    """A ``DeviceStatus`` as metrics (typed Any: bridge.ports is imported by the sink)."""
    t = ms(now)
    return [Sample("Device/Connected", bool(status.connected), t),
            Sample("Device/Stale", bool(status.stale), t),
            Sample("Device/Consecutive Errors", int(status.consecutive_errors), t),
            Sample("Device/Errors", int(status.error_count), t),
            Sample("Device/Reconnects", int(status.reconnects), t)]


def model_samples(score: Any) -> list[Sample]:
    """A ``Score`` as metrics; an unscored window has a null score and says why."""
    t, prefix = ms(score.time), f"Models/{score.model}/"
    return [Sample(prefix + "Score", score.score, t, score.score is not None),
            Sample(prefix + "Threshold", float(score.threshold), t),
            Sample(prefix + "Anomaly", bool(score.anomaly), t),
            Sample(prefix + "Window Valid", bool(score.window_valid), t),
            Sample(prefix + "Version", str(score.version), t),
            Sample(prefix + "Reason", str(score.reason), t),
            Sample(prefix + "Anomalies", int(score.anomalies), t)]


def _metric(payload: Payload, definition: MetricDef, sample: Sample | None, *, birth: bool,
            historical: bool = False) -> None:
    metric = payload.metrics.add()
    if birth:
        metric.name = definition.name
    metric.alias = definition.alias
    # The data type also in DATA messages (a SHOULD NOT in 3.0, allowed): decoders such as
    # Tahu's JavaScript one read the value by its data type and cannot resolve it otherwise.
    metric.datatype = definition.datatype
    if historical:
        metric.is_historical = True
    if sample is None or sample.value is None:
        metric.is_null = True
    else:
        _set_value(metric, definition.datatype, sample.value)
    if sample is not None:
        metric.timestamp = sample.time
        quality = metric.properties
        quality.keys.append("Quality")
        quality.values.add(type=_INT32, int_value=_GOOD if sample.good else _BAD)


def _set_value(metric: Payload.Metric, datatype: int, value: float | int | bool | str) -> None:
    if datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == INT64:
        metric.long_value = int(value) & 0xFFFF_FFFF_FFFF_FFFF  # two's complement, as the spec says
    elif datatype == STRING:
        metric.string_value = str(value)
    else:
        metric.double_value = float(value)


def _payload(now_ms: int, seq: int | None) -> Payload:
    payload = Payload(timestamp=now_ms)
    if seq is not None:
        payload.seq = seq
    return payload


def encode_birth(defs: Mapping[str, MetricDef], samples: Iterable[Sample], *, seq: int,
                 now_ms: int) -> bytes:
    """NBIRTH or DBIRTH: every metric with name, alias and type; null when no value yet."""
    values = {s.name: s for s in samples}
    payload = _payload(now_ms, seq)
    for name, definition in defs.items():
        _metric(payload, definition, values.get(name), birth=True)
    return _bytes(payload)


def encode_data(defs: Mapping[str, MetricDef], samples: Iterable[Sample], *, seq: int, now_ms: int,
                historical: bool = False) -> bytes:
    """NDATA or DDATA: metrics by alias only. Samples of metrics no longer defined are left out."""
    payload = _payload(now_ms, seq)
    for sample in samples:
        definition = defs.get(sample.name)
        if definition is not None:
            _metric(payload, definition, sample, birth=False, historical=historical)
    return _bytes(payload)


def encode_death(*, now_ms: int, bdseq: int | None = None, seq: int | None = None) -> bytes:
    """NDEATH (the will: bdSeq by name, no seq) or DDEATH (seq, no metrics)."""
    payload = _payload(now_ms, seq)
    if bdseq is not None:
        metric = payload.metrics.add(name=BDSEQ, datatype=INT64)
        metric.long_value = bdseq
    return _bytes(payload)


def _bytes(payload: Payload) -> bytes:
    data: bytes = payload.SerializeToString()
    return data


def decode(data: bytes) -> Payload:
    payload = Payload()
    payload.ParseFromString(data)
    return payload
