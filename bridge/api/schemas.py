"""Response bodies of the REST API as pydantic models: the OpenAPI schema SCADA integrators
generate clients from, and what schemathesis checks every reply against.

Conventions, the same in every model: times are RFC 3339 UTC strings with milliseconds and
``Z`` (``bridge.core.timefmt.iso``), or null when there is none yet; durations carry their
unit in the name (``_s``, ``_ms``); a number that is not finite (NaN, infinity) is null, since
JSON has none, and the quality or reason beside it says why. No reply names a file system
path: a model is known by its file name only.

The builders (``DeviceHealth.of``, ``TagReading.of``...) are the one place each shape is made,
so another front end (Prometheus, the server sinks) can show the same fields the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.core.tags import Quality, Reading
from bridge.core.timefmt import finite, iso, iso_or_none

if TYPE_CHECKING:
    from bridge.core.scores import Score
    from bridge.ports import DeviceStatus
    from bridge.scoring.adapt import Adaptation
    from bridge.scoring.alarm import Hysteresis
    from bridge.scoring.shadow import Shadow
    from bridge.sinks.writeback import ModelWriteback

__all__ = [
    "AdaptStatus", "AlarmStatus", "DeviceHealth", "ErrorDetail", "Event", "EventDetail",
    "FleetLiveStats", "FleetModelState", "FleetStatus", "Health", "LinkStatus", "Live", "ModelChange",
    "ModelHealth", "ModelInfo", "ModelScore", "ModelShadow", "MqttStatus", "RolloutDetail",
    "ShadowComparison", "ShadowRule", "ShadowStatus", "SparkplugStatus", "TagReading", "WritebackHealth",
    "hide_paths", "public_name", "scrub_paths",
]

Time = str
"""RFC 3339 UTC, milliseconds, ``Z``: ``2026-01-02T03:04:05.678Z``."""

# bool before int: bool is an int subclass, and a union picks the first exact match.
TagValue = bool | int | float | str | None


class Schema(BaseModel):
    """Strict base: no coercion of what the handlers pass in, and ``additionalProperties:
    false`` in the OpenAPI schema, so a field a handler adds without documenting it fails the
    schemathesis response check instead of reaching clients unnoticed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _time(description: str) -> Any:
    return Field(description=f"{description}; RFC 3339 UTC with milliseconds, null if none",
                 examples=["2026-01-02T03:04:05.678Z"])


class Live(Schema):
    status: Literal["alive"] = Field(description="Always ``alive`` while the process serves HTTP.")


class ErrorDetail(Schema):
    detail: str | list[dict[str, Any]] = Field(
        description="Why the request failed: a message, or for a malformed request the list of "
                    "validation errors (location, message, type).")


# -- /api/v1/health ------------------------------------------------------------------------


class DeviceHealth(Schema):
    """One polled device, as its adapter sees it."""

    name: str = Field(description="Device name from the configuration.")
    connected: bool = Field(description="The last poll reached the device.")
    last_success: Time | None = _time("End of the last successful poll")
    last_error: str | None = Field(description="Message of the last failed poll or unusable value.")
    last_error_time: Time | None = _time("When ``last_error`` happened")
    polls: int = Field(description="Polls since start, successful or not.")
    reconnects: int = Field(description="Connections re-established since start.")
    errors: dict[str, int] = Field(description="Problems since start, counted by kind "
                                               "(timeout, connection, exception code...).")
    error_count: int = Field(description="Sum of ``errors``.")
    poll_latency_ms: float | None = Field(description="Duration of the last successful poll, ms.")
    consecutive_errors: int = Field(0, description="Failed polls in a row (0 after a good one).")
    last_exception_code: int | None = Field(
        None, description="Protocol exception code of the last refused request (Modbus: 2 = "
                          "illegal data address...).")
    rtt_ms: float | None = Field(None, description="Round trip of the last answered request, ms.")
    overruns: int = Field(0, description="Polls still running when the next one was due.")
    stale: bool = Field(False, description="No successful poll within the stale window.")
    unit_state: str = Field("ok", description="``ok``, or ``backoff``: the unit stopped answering "
                                              "and is only probed now and then.")
    read_plan: list[str] = Field(default_factory=list,
                                 description="Requests of one poll, as planned or learned.")
    holes: list[str] = Field(default_factory=list,
                             description="Address ranges the device refused (learned; retried "
                                         "after ``hole_retry``).")
    write_mismatches: int = Field(0, description="Written registers that read back different "
                                                 "(``write_verify``).")

    @classmethod
    def of(cls, name: str, status: DeviceStatus) -> DeviceHealth:
        latency, rtt = status.last_latency, status.last_rtt
        return cls(name=name, connected=status.connected, last_success=iso_or_none(status.last_success),
                   last_error=status.last_error, last_error_time=iso_or_none(status.last_error_time),
                   polls=status.polls, reconnects=status.reconnects, errors=dict(status.errors),
                   error_count=status.error_count,
                   poll_latency_ms=None if latency is None else round(latency * 1000, 3),
                   consecutive_errors=status.consecutive_errors,
                   last_exception_code=status.last_exception_code,
                   rtt_ms=None if rtt is None else round(rtt * 1000, 3), overruns=status.overruns,
                   stale=status.stale, unit_state=status.unit_state,
                   read_plan=list(status.read_plan), holes=list(status.holes),
                   write_mismatches=status.write_mismatches)


class WritebackHealth(Schema):
    """Counters of one model's write-back to its device."""

    mode: Literal["off", "dry-run", "on"] = Field(description="``[writeback] mode``.")
    device: str = Field(description="Device the results are written to.")
    written: int = Field(description="Values written.")
    dry_run: int = Field(description="Values logged instead of written (mode dry-run).")
    refused: int = Field(description="Values refused by a configured range or type check.")
    failed: int = Field(description="Writes the device did not accept.")
    last_error: str | None = Field(description="Message of the last refused or failed write.")

    @classmethod
    def of(cls, writeback: ModelWriteback) -> WritebackHealth:
        stats = writeback.stats
        # ModelWriteback.mode is a plain str; the config only allows these three, and strict
        # validation would refuse anything else here rather than show it.
        return cls(mode=writeback.mode, device=writeback.config.device,  # type: ignore[arg-type]
                   written=stats.written, dry_run=stats.dry_run, refused=stats.refused,
                   failed=stats.failed, last_error=stats.last_error)


class ModelHealth(Schema):
    name: str = Field(description="Model name from the configuration.")
    scored: int = Field(description="Windows scored since start.")
    anomalies: int = Field(description="Scored windows over the threshold since start.")
    last_score_time: Time | None = _time("Time of the latest score's window")
    window_valid: bool = Field(description="The latest window was complete and fresh "
                                           "(false before the first score).")
    writeback: WritebackHealth | None = Field(description="Null when the model writes nothing back.")


class LinkStatus(Schema):
    """A sink's broker connection (``bridge.sinks.link.LinkStats``), shared by the MQTT,
    Sparkplug and fleet blocks."""

    # Built from the sink's dict, owned by another module: a counter added there is left out
    # of /health (a test compares the two field lists) rather than failing the whole reply.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    broker: str = Field(description="``host:port`` of the broker.")
    connected: bool = Field(description="Connected to the broker now.")
    connects: int = Field(description="Successful connections since start.")
    connect_failures: int = Field(description="Connection attempts that failed.")
    disconnects: int = Field(description="Connections lost.")
    last_error: str | None = Field(description="Message of the last connection problem.")
    last_error_time: Time | None = _time("When ``last_error`` happened")


class MqttStatus(LinkStatus):
    """Counters of the MQTT sink (``bridge.sinks.mqtt.MqttSink.status``)."""

    topic_prefix: str = Field(description="Prefix of every topic published.")
    published: int = Field(description="Messages the broker acknowledged (written, for QoS 0).")
    spooled: int = Field(description="Messages written to the on-disk spool.")
    dropped: int = Field(description="Oldest messages dropped because the spool was full.")
    queued: int = Field(description="Messages in the spool now, not yet acknowledged.")
    reconnects: int = Field(description="Successful connections after the first.")


class SparkplugStatus(LinkStatus):
    """Counters of the Sparkplug B edge node (``bridge.sinks.sparkplug.SparkplugSink.status``)."""

    group_id: str = Field(description="Sparkplug group id.")
    edge_node_id: str = Field(description="Sparkplug edge node id.")
    host_online: bool | None = Field(description="The primary host's last STATE; null when no "
                                                 "``primary_host_id`` is configured.")
    bdseq: int | None = Field(description="bdSeq of the current (or last) session: the NBIRTH's "
                                          "and the NDEATH will's.")
    seq: int | None = Field(description="Sequence number (0-255) of the last message sent; 0 is "
                                        "the session's NBIRTH.")
    births: int = Field(description="NBIRTHs sent (sessions and rebirths).")
    rebirths: int = Field(description="NCMD Node Control/Rebirth requests obeyed.")
    published: int = Field(description="NBIRTH, DBIRTH, DDATA and DDEATH messages sent (QoS 0, "
                                       "as Sparkplug B has them: not acknowledged).")
    spooled: int = Field(description="Records written to the on-disk spool.")
    dropped: int = Field(description="Oldest records dropped because the spool was full.")
    queued: int = Field(description="Records in the spool now, not yet sent.")


class FleetModelState(Schema):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    sha256: str | None = Field(description="sha256 of the last fleet model handled.")
    status: str | None = Field(description="What this bridge did with it (installed, staged, "
                                           "promoted, rejected, skipped, refused, rolled back).")


class FleetLiveStats(Schema):
    """The statistics this bridge accumulates from live windows (``[fleet] live_stats``)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    windows: int = Field(description="Valid windows the active model scored normal, counted.")
    invalid: int = Field(description="Windows left out: not valid (stale or bad inputs).")
    anomalous: int = Field(description="Windows left out: the active model flagged them.")
    window: int = Field(description="Window length the statistics are for, samples.")
    period: float = Field(description="Seconds between samples the statistics are for.")


class FleetStatus(LinkStatus):
    """Counters of the fleet member (``bridge.sinks.fleet.FleetSink.status``). It keeps no
    spool: its results and statistics are retained and published again after an outage."""

    topic_prefix: str = Field(description="Prefix of the fleet topics.")
    bridge_id: str = Field(description="This bridge's id in the fleet topics.")
    published: int = Field(description="Messages the broker acknowledged: status, results, statistics.")
    stats_published: int = Field(description="Statistics documents among them.")
    results: dict[str, int] = Field(description="Fleet models handled since start, by result "
                                                "(``repeated``: a model seen again, result re-sent).")
    models: dict[str, FleetModelState] = Field(description="Per model: the last fleet model handled.")
    live_stats: dict[str, FleetLiveStats] = Field(description="Per model: the live statistics "
                                                              "(empty without ``live_stats``).")


class Health(Schema):
    status: Literal["ok", "degraded"] = Field(description="``ok`` when every device is connected.")
    version: str = Field(description="plcbridge version.")
    uptime_s: float = Field(description="Seconds since the bridge started, 0.1 s resolution.")
    devices: list[DeviceHealth]
    models: list[ModelHealth]
    mqtt: MqttStatus | None = Field(default=None,
                                    description="MQTT sink counters; null when no ``[mqtt]`` sink runs.")
    sparkplug: SparkplugStatus | None = Field(
        default=None, description="Sparkplug B edge node counters; null without ``[sparkplug]``.")
    fleet: FleetStatus | None = Field(default=None,
                                      description="Fleet member counters; null without ``[fleet]``.")


# -- /api/v1/tags --------------------------------------------------------------------------


AGE_REFRESH = 0.5  # seconds: how stale the ages in a cached /api/v1/tags body may be


class TagReading(Schema):
    """The latest (or one historic) reading of one tag."""

    name: str = Field(description="Tag name.")
    device: str = Field(description="Device the tag is read from.")
    unit: str = Field(description="Engineering unit from the configuration; empty if none.")
    value: TagValue = Field(description="Scaled value; null when bad, not read yet or not finite.")
    quality: Quality = Field(description="``good``, ``uncertain`` (e.g. stale) or ``bad``.")
    reason: str = Field(description="Why the quality is not good; empty when it is.")
    source_time: Time | None = _time("The device's own timestamp (OPC UA)")
    received_time: Time | None = _time("When the bridge received the value")
    age_s: float | None = Field(
        description="Seconds from ``received_time`` to when this reply was rendered (ms "
                    "resolution); null before the first reading. The bulk /api/v1/tags reply is "
                    f"rendered again at least every {AGE_REFRESH} s, so its ages may be up to "
                    "that much low.")

    @classmethod
    def of(cls, name: str, device: str, unit: str, reading: Reading | None, now: float) -> TagReading:
        return cls(**cls.row(name, device, unit, reading, now))

    @staticmethod
    def row(name: str, device: str, unit: str, reading: Reading | None, now: float) -> dict[str, Any]:
        """The fields as a plain dict, ready for ``json.dumps`` (``Quality`` is a str).

        The /api/v1/tags body is built from these: at 1,000 tags ``json.dumps`` of the dicts
        renders in 3.7-4.0 ms, a model per tag through pydantic's serializer in 5.4-6.8 ms.
        ``of`` validates the same dict, so both paths have one shape.
        """
        if reading is None:
            return {"name": name, "device": device, "unit": unit, "value": None,
                    "quality": Quality.BAD, "reason": "no reading yet",
                    "source_time": None, "received_time": None, "age_s": None}
        value = reading.value
        return {"name": name, "device": device, "unit": unit,
                "value": finite(value) if isinstance(value, float) else value,
                "quality": reading.quality, "reason": reading.reason,
                "source_time": iso_or_none(reading.source_time),
                "received_time": iso(reading.received_time),
                "age_s": round(max(0.0, now - reading.received_time), 3)}


# -- /api/v1/models ------------------------------------------------------------------------


class AdaptStatus(Schema):
    """Online adaptation of one model (``[models.adapt]``): the offset subtracted from each
    input before scoring, learnt from normal windows under the configured guards."""

    state: Literal["learning", "frozen", "hold-off", "capped"] = Field(
        description="``learning``: follows normal drift; ``frozen``: the last window was "
                    "anomalous; ``hold-off``: waiting ``hold_off_left`` windows after one; "
                    "``capped``: an input's offset reached ``max_shift_sd`` and no longer follows.")
    version: int = Field(description="Accepted updates since the trained baseline or the last reset.")
    resets: int = Field(description="Resets to the trained baseline (kept across restarts with a data_dir).")
    base_version: str = Field(description="Version of the model whose trained baseline this adapts.")
    offset: dict[str, float] = Field(description="Per feature: offset subtracted from the input, "
                                                 "raw engineering units.")
    offset_sd: dict[str, float] = Field(description="Per feature: the offset in training sd.")
    capped: list[str] = Field(description="Features whose offset reached ``max_shift_sd``.")
    hold_off_left: int = Field(description="Valid windows before learning resumes.")
    updated_at: Time | None = _time("When the offset last moved")
    reset_at: Time | None = _time("When it was last reset")
    rate: float = Field(description="``[models.adapt] rate`` in force.")
    max_step_sd: float = Field(description="``[models.adapt] max_step_sd`` in force.")
    max_shift_sd: float = Field(description="``[models.adapt] max_shift_sd`` in force.")
    hold_off_windows: int = Field(description="``[models.adapt] hold_off_windows`` in force.")
    learn_below: float = Field(description="``[models.adapt] learn_below`` in force.")
    persisted: bool = Field(description="Saved in ``[storage] data_dir`` (survives a restart).")

    @classmethod
    def of(cls, adapt: Adaptation) -> AdaptStatus:
        st, c = adapt.status(), adapt.config
        return cls(state=st.state, version=st.version, resets=st.resets,
                   base_version=adapt.model_version, offset=st.offset, offset_sd=st.offset_sd,
                   capped=st.capped, hold_off_left=st.hold_off_left,
                   updated_at=iso_or_none(st.updated_at), reset_at=iso_or_none(st.reset_at),
                   rate=c.rate, max_step_sd=c.max_step_sd, max_shift_sd=c.max_shift_sd,
                   hold_off_windows=c.hold_off_windows, learn_below=c.learn_below,
                   persisted=adapt.folder is not None)


class AlarmStatus(Schema):
    """Alarm hysteresis of one model (``[models.alarm]``)."""

    active: bool = Field(description="The alarm is on (what ``anomaly`` reports).")
    on_level: float = Field(description="Score at or above which windows count toward the alarm.")
    off_level: float = Field(description="Score below which windows count toward its end.")
    min_on_windows: int = Field(description="Consecutive windows needed to start it.")
    min_off_windows: int = Field(description="Consecutive windows needed to end it.")

    @classmethod
    def of(cls, alarm: Hysteresis, threshold: float) -> AlarmStatus:
        c = alarm.config
        return cls(active=alarm.active, on_level=c.on * threshold, off_level=c.off * threshold,
                   min_on_windows=c.min_on_windows, min_off_windows=c.min_off_windows)


class ModelInfo(Schema):
    """A model and its contract (carried in the ONNX file)."""

    name: str = Field(description="Model name from the configuration.")
    file: str = Field(description="File name of the model in use (no folder).",
                      examples=["pump_pca.onnx"])
    version: str = Field(description="Model version from its contract.")
    kind: str = Field(description="Detector kind (pca, iforest, ae...).")
    recipe: str = Field(description="Training recipe and its version.")
    features: list[str] = Field(description="The model's inputs, in order.")
    tags: list[str] = Field(description="The bridge tags feeding ``features``, in the same order.")
    window_length: int = Field(description="Samples per scored window.")
    period: float = Field(description="Seconds between the samples of a window.")
    threshold: float = Field(description="Threshold in use: a score at or over it is an anomaly.")
    model_threshold: float = Field(description="Threshold the model was calibrated with.")
    score_meaning: str = Field(description="What the score measures (higher = more anomalous).")
    normalization: str = Field(description="How inputs are normalized inside the model.")
    training: dict[str, Any] = Field(description="Training record from the contract: rows, time "
                                                 "range, data digest, calibration; file paths "
                                                 "shown as file names only.")
    previous_version: str | None = Field(description="Version a rollback would restore; null if none.")
    folder: str | None = Field(description="Where accepted uploads are kept, relative to "
                                           "``[storage] data_dir``; null without a data_dir "
                                           "(uploads then last until restart).")
    shadow_version: str | None = Field(None, description="Version of the model running in shadow "
                                                         "beside this one; null if none runs.")
    adapt: AdaptStatus | None = Field(None, description="Online adaptation; null when "
                                                        "``[models.adapt]`` is not enabled. With it, "
                                                        "a score is the lower of the model's on the "
                                                        "adapted window and on the window as sampled.")
    alarm: AlarmStatus | None = Field(None, description="Alarm hysteresis; null when "
                                                        "``[models.alarm]`` is the default (none).")


class ModelChange(ModelInfo):
    """The model in use after an upload or a rollback (``shadow_version``: a staged upload)."""

    status: Literal["installed", "rolled back", "staged in shadow"] = Field(
        description="What was done.")


# -- /api/v1/models/{name}/shadow ------------------------------------------------------------


class ShadowComparison(Schema):
    """The shadow against the active model over the windows both scored. There is no ground
    truth on the box: ``far`` is the shadow's flag rate on the windows the active model called
    normal, its would-be false alarm rate on this bridge's own recent normal data."""

    windows: int = Field(description="Windows both models scored.")
    skipped: int = Field(description="Cycles not compared: window not valid, or a model did not "
                                     "score it.")
    active_flags: int = Field(description="Compared windows the active model flagged.")
    shadow_flags: int = Field(description="Compared windows the shadow flagged (would-be alarms).")
    agreement: float | None = Field(description="Share of compared windows with the same verdict; "
                                                "null before the first.")
    active_normal: int = Field(description="Compared windows the active model called normal.")
    shadow_flags_on_normal: int = Field(description="Of those, windows the shadow flagged.")
    far: float | None = Field(description="``shadow_flags_on_normal / active_normal``; null "
                                          "while ``active_normal`` is 0.")
    correlation: float | None = Field(description="Pearson correlation of the two scores; null "
                                                  "before two windows or for a constant score.")
    shadow_inference_ms_mean: float | None = Field(description="Mean ONNX Runtime time of the "
                                                               "shadow per window, ms.")
    shadow_inference_ms_max: float = Field(description="Longest ONNX Runtime time of the shadow, ms.")


class ShadowRule(Schema):
    """``[models.shadow]`` as it applies to this shadow."""

    period_s: float = Field(description="Seconds of observation before the rule decides.")
    min_windows: int = Field(description="Compared windows needed; fewer is a rejection.")
    max_far: float = Field(description="Highest ``far`` that passes.")
    min_agreement: float = Field(description="Lowest ``agreement`` that passes (0: not checked).")


ShadowStateName = Literal["running", "promoting", "promoted", "rejected"]


class ShadowStatus(Schema):
    """A model staged in shadow: running, or how it ended."""

    id: str = Field(description="Names this rollout in every result and event.")
    version: str = Field(description="Version of the shadow model.")
    active_version: str = Field(description="Version of the active model it is compared with.")
    source: str = Field(description="Where it came from: ``upload``, a folder drop...")
    state: ShadowStateName = Field(description="``running``; ``promoting`` (being swapped in); "
                                               "``promoted`` or ``rejected`` once decided.")
    staged_at: Time = _time("When it was staged")
    decided_at: Time | None = _time("When it was promoted or rejected")
    observed_s: float = Field(description="Seconds observed so far (across restarts).")
    remaining_s: float = Field(description="Seconds until the rule decides; 0 once decided.")
    passing: bool = Field(description="The rule would promote it with the figures so far.")
    failing_reason: str = Field(description="Why the rule would reject it now; empty when passing.")
    reason: str = Field(description="Why it was promoted or rejected; empty while it runs.")
    rule: ShadowRule
    comparison: ShadowComparison

    @classmethod
    def of(cls, shadow: Shadow, speed: float, failing: str | None) -> ShadowStatus:
        observed = shadow.elapsed(speed)
        running = shadow.state == "running"
        return cls(id=shadow.id, version=shadow.version, active_version=shadow.active_version,
                   source=hide_paths(shadow.source), state=shadow.state,
                   staged_at=iso(shadow.staged_at), decided_at=iso_or_none(shadow.decided_at),
                   observed_s=round(observed, 3),
                   remaining_s=round(max(0.0, shadow.rule.period_s - observed), 3) if running else 0.0,
                   passing=failing is None, failing_reason=failing or "", reason=shadow.reason,
                   rule=ShadowRule(**shadow.rule.model_dump()),
                   comparison=ShadowComparison(**shadow.comparison.figures()))


class ModelShadow(Schema):
    """The shadow of one model: the one running, else the last decided one."""

    model: str = Field(description="Model name.")
    active_version: str = Field(description="Version of the active model.")
    shadow: ShadowStatus | None = Field(description="Null when no shadow was staged (or kept "
                                                    "since the last restart without a data_dir).")


class ModelScore(Schema):
    model: str = Field(description="Model name.")
    time: Time = Field(description="Time of the window's last sample; RFC 3339 UTC with milliseconds.")
    score: float | None = Field(description="Anomaly score; null when the window was not scored.")
    threshold: float = Field(description="Threshold in force for this score.")
    anomaly: bool = Field(description="The alarm: score at or over the threshold, or with "
                                      "``[models.alarm]`` the hysteresis' output.")
    window_valid: bool = Field(description="The window was complete and fresh enough to score.")
    reason: str = Field(description="Why the window was not valid; empty when it was.")
    contributions: dict[str, float | None] | None = Field(
        description="Share of the score per feature, when the model reports one.")
    model_version: str = Field(description="Version of the model that produced the score.")

    @classmethod
    def of(cls, score: Score) -> ModelScore:
        return cls(model=score.model, time=iso(score.time), score=finite(score.score),
                   threshold=score.threshold, anomaly=score.anomaly,
                   window_valid=score.window_valid, reason=score.reason,
                   contributions=_finite_map(score.contributions), model_version=score.version)


# -- /api/v1/events ------------------------------------------------------------------------


class EventDetail(Schema):
    contributions: dict[str, float | None] = Field(
        description="Share of the score per feature at the event; empty if the model gives none.")


class Rollout(Schema):
    shadow_id: str | None = Field(description="The shadow rollout; null for a rollback.")
    version: str = Field(description="The model version the result is about (the shadow's, or "
                                     "the one a rollback restored).")
    active_version: str = Field(description="The active model's version when it happened.")
    source: str = Field(description="Where the model came from (``upload``, a folder drop, "
                                    "``rollback``).")
    state: str = Field(description="``running``, ``promoted``, ``rejected`` or ``rolled back``.")
    reason: str = Field(description="Why it was promoted or rejected.")
    comparison: ShadowComparison | None = Field(description="The figures at the time; null for "
                                                            "a rollback.")


class RolloutDetail(Schema):
    rollout: Rollout


class Event(Schema):
    id: int | None = Field(description="Database id, increasing; null when events are kept "
                                       "in memory only (no ``[storage] data_dir``).")
    model: str = Field(description="Model name.")
    time: Time = Field(description="Time of the score that started or ended the anomaly; RFC 3339 "
                                   "UTC with milliseconds.")
    kind: Literal["anomaly-start", "anomaly-end", "shadow-start", "shadow-promoted",
                  "shadow-rejected", "model-rolled-back", "adapt-reset"] = Field(
        description="What happened: an anomaly started or ended, a model rollout result "
                    "(a shadow staged, promoted or rejected; a rollback), or an operator reset "
                    "a model's online adaptation.")
    score: float | None = Field(description="The score at the event; null for a rollout.")
    threshold: float = Field(description="Threshold in force at the event (of the model the "
                                         "rollout is about).")
    detail: EventDetail | RolloutDetail = Field(
        description="Feature contributions for an anomaly event; the rollout for a rollout result.")

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Event:
        """From an event as ``Bridge.events`` or ``EventStore.events`` hold it."""
        detail = row.get("detail") or {}
        rollout = detail.get("rollout")
        return cls(id=row.get("id"), model=row["model"], time=iso(row["time"]), kind=row["kind"],
                   score=finite(row["score"]), threshold=float(row["threshold"]),
                   detail=EventDetail(contributions=_finite_map(detail.get("contributions")) or {})
                   if rollout is None else RolloutDetail(rollout=Rollout(
                       **{**rollout, "source": hide_paths(rollout["source"]),
                          "comparison": None if rollout["comparison"] is None
                          else ShadowComparison(**rollout["comparison"])})))


def _finite_map(values: Mapping[str, float] | None) -> dict[str, float | None] | None:
    return None if values is None else {k: finite(v) for k, v in values.items()}


def public_name(path: PurePath) -> str:
    """What a reply may show of a file: its name, never where it lives."""
    return path.name


# An absolute path inside a message: after a start, space, quote or bracket, up to the next of
# those (file names in plcbridge have no spaces). ``m3/h`` is not one: a word comes before it.
_PATH_IN_TEXT = re.compile(r"""(?<![\w.~])(?:[A-Za-z]:)?[/\\][^\s'"()\[\],;]*""")


def hide_paths(message: str) -> str:
    """``message`` with each absolute path shortened to its file name, for error replies made
    from exceptions that name files (a refused model upload names its temporary file, twice)."""
    return _PATH_IN_TEXT.sub(lambda m: PureWindowsPath(m.group()).name if "\\" in m.group()
                             else PurePosixPath(m.group()).name, message)


def scrub_paths(value: Any) -> Any:
    """``value`` with every absolute path string replaced by its file name (recursively): the
    training record holds the path of the CSV the model was trained from, and the API tells no
    client how the trainer's or the box's disk is laid out."""
    if isinstance(value, str):
        if value.startswith("/"):
            return PurePosixPath(value).name
        if value.startswith("\\\\") or value[1:3] in (":\\", ":/"):  # UNC or drive: a Windows trainer
            return PureWindowsPath(value).name
        return value
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_paths(v) for v in value]
    return value
