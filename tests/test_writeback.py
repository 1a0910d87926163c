"""Write-back safety rules (the device side is covered end to end in test_e2e.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bridge.config import ModelWritebackConfig, RegisterTarget
from bridge.core.errors import NotConnectedError, WriteRefusedError
from bridge.core.scores import Score
from bridge.sinks.writeback import ModelWriteback, check_value


class RecordingWriter:
    def __init__(self, fail: bool = False) -> None:
        self.writes: list[tuple[int, float]] = []
        self.fail = fail

    async def write_many(self, items: Sequence[tuple[object, float]]) -> None:
        if self.fail:
            raise NotConnectedError("plc", "refused")
        for target, value in items:
            assert isinstance(target, RegisterTarget)
            self.writes.append((target.address, value))


CONFIG = ModelWritebackConfig(
    device="plc", score=RegisterTarget(address=100, type="float32"),
    anomaly=RegisterTarget(address=102), heartbeat=RegisterTarget(address=103),
    window_valid=RegisterTarget(address=104))


def _score(value: float | None, anomaly: bool = False, valid: bool = True) -> Score:
    return Score("m", 0.0, value, 1.0, anomaly, valid)


@pytest.mark.parametrize(("target", "value", "message"), [
    (RegisterTarget(address=1), -1.0, "outside uint16 range 0..65535"),
    (RegisterTarget(address=1), 65536.0, "outside uint16 range 0..65535"),
    (RegisterTarget(address=1, type="int16"), 0.5, "not an integer"),
    (RegisterTarget(address=1, type="float32"), float("nan"), "not finite"),
    (RegisterTarget(address=1, type="float32"), 1e39, "does not fit float32"),
    (RegisterTarget(address=1, type="float32", max=10.0), 11.0, "above configured max 10.0"),
    (RegisterTarget(address=1, type="int32", min=0), -5.0, "below configured min 0"),
])
def test_check_value_refuses(target: RegisterTarget, value: float, message: str) -> None:
    with pytest.raises(WriteRefusedError, match=message):
        check_value("score", target, value)


async def test_mode_off_writes_nothing() -> None:
    writer = RecordingWriter()
    wb = ModelWriteback("m", CONFIG, writer, mode="off", min_interval=0)
    await wb.publish(_score(0.5))
    assert writer.writes == []


async def test_dry_run_writes_nothing_but_counts() -> None:
    writer = RecordingWriter()
    wb = ModelWriteback("m", CONFIG, writer, mode="dry-run", min_interval=0)
    await wb.publish(_score(0.5))
    assert writer.writes == [] and wb.stats.dry_run == 4


async def test_on_writes_only_declared_targets_with_heartbeat() -> None:
    writer = RecordingWriter()
    wb = ModelWriteback("m", CONFIG, writer, mode="on", min_interval=0)
    await wb.publish(_score(0.5))
    await wb.publish(_score(2.0, anomaly=True))
    await wb.publish(_score(None, valid=False))  # no fail_safe: score and flag left alone
    assert writer.writes == [
        (100, 0.5), (102, 0.0), (104, 1.0), (103, 0.0),
        (100, 2.0), (102, 1.0), (104, 1.0), (103, 1.0),
        (104, 0.0), (103, 2.0),
    ]
    assert {address for address, _ in writer.writes} <= {100, 102, 103, 104}


async def test_min_interval_rate_limits_each_target() -> None:
    writer = RecordingWriter()
    wb = ModelWriteback("m", CONFIG, writer, mode="on", min_interval=60)
    await wb.publish(_score(0.5))
    await wb.publish(_score(0.7))
    assert len(writer.writes) == 4 and wb.stats.skipped_rate == 4


async def test_heartbeat_wraps_at_type_maximum() -> None:
    writer = RecordingWriter()
    config = ModelWritebackConfig(device="plc", heartbeat=RegisterTarget(address=5, type="int16"))
    wb = ModelWriteback("m", config, writer, mode="on", min_interval=0)
    wb._heartbeat = 32767
    await wb.publish(_score(0.1))
    await wb.publish(_score(0.1))
    assert [v for _, v in writer.writes] == [32767.0, 0.0]


async def test_failed_write_is_counted_not_raised() -> None:
    wb = ModelWriteback("m", CONFIG, RecordingWriter(fail=True), mode="on", min_interval=0)
    await wb.publish(_score(0.5))
    assert wb.stats.failed == 4 and "refused" in (wb.stats.last_error or "")


FAIL_SAFE = ModelWritebackConfig(
    device="plc", score=RegisterTarget(address=100, type="float32", fail_safe=-1.0),
    anomaly=RegisterTarget(address=102, fail_safe=1), heartbeat=RegisterTarget(address=103),
    window_valid=RegisterTarget(address=104))


async def test_invalid_window_writes_fail_safe_values() -> None:
    writer = RecordingWriter()
    wb = ModelWriteback("m", FAIL_SAFE, writer, mode="on", min_interval=0)
    await wb.publish(Score("m", 0.0, None, 1.0, False, False, "pressure: timeout"))
    assert writer.writes == [(100, -1.0), (102, 1.0), (104, 0.0), (103, 0.0)]


async def test_shutdown_writes_fail_safe_despite_rate_limit() -> None:
    writer = RecordingWriter()
    wb = ModelWriteback("m", FAIL_SAFE, writer, mode="on", min_interval=3600)
    await wb.publish(_score(0.2))
    await wb.publish_fail_safe()
    assert writer.writes[4:] == [(100, -1.0), (102, 1.0), (104, 0.0)]


async def test_fail_safe_is_not_written_when_mode_is_off() -> None:
    writer = RecordingWriter()
    wb = ModelWriteback("m", FAIL_SAFE, writer, mode="off", min_interval=0)
    await wb.publish_fail_safe()
    assert writer.writes == []


def test_fail_safe_outside_range_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"fail_safe: 5\.0 is above max 1\.0"):
        RegisterTarget(address=1, max=1, fail_safe=5)


class CallRecorder(RecordingWriter):
    """Also keeps each write_many call (one request block) apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[int, float]] = []

    async def write_many(self, items: Sequence[tuple[object, float]]) -> None:
        await super().write_many(items)
        self.calls.append({t.address: v for t, v in items if isinstance(t, RegisterTarget)})


async def test_first_valid_score_after_an_outage_is_not_written_alone() -> None:
    """Issue 13.6: with min_interval longer than the period, the per-target limit let the
    first valid score go out alone while window_valid (written just before) still said 0."""
    writer = CallRecorder()
    wb = ModelWriteback("m", CONFIG, writer, mode="on", min_interval=60)
    await wb.publish(_score(None, valid=False))  # outage: window_valid 0 (and heartbeat)
    await wb.publish(_score(0.5))  # within min_interval: the whole block waits
    assert writer.calls == [{104: 0.0, 103: 0.0}]
    wb._last_sent = -1e9  # min_interval has passed
    await wb.publish(_score(0.7, anomaly=True))
    # One request, one window: score, anomaly, window_valid and heartbeat together.
    assert writer.calls[-1] == {100: 0.7, 102: 1.0, 104: 1.0, 103: 2.0}


async def test_audit_lines_carry_millisecond_timestamps(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import re

    caplog.set_level(logging.INFO, logger="plcbridge.audit")
    wb = ModelWriteback("m", CONFIG, RecordingWriter(), mode="on", min_interval=0)
    await wb.publish(_score(0.5))
    lines = [r.getMessage() for r in caplog.records if r.name == "plcbridge.audit"]
    assert lines and all(re.search(r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", m) for m in lines)
