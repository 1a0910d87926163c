"""The OPC UA server sink's Alarms & Conditions (adapters/opcua/alarms.py).

Scores are fed to the sink of a built, not started, bridge (as test_opcua_sink_interop.py
does): every anomaly start and end is one the test chose. Two subscribers: asyncua's client
(``subscribe_alarms_and_conditions``) and node-opcua's ``tests/opcua_peer/events.mjs``, an
independent SCADA stand-in that selects the A&C fields and prints each event as JSON. The
node-opcua tests skip without node or tests/opcua_peer/node_modules.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from pydantic import ValidationError

from adapters.opcua.alarms import alarm_message, top_contributions
from adapters.opcua.server import OpcuaServerSink
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.core.scores import Score
from bridge.runtime.bridge import Bridge
from tests import test_opcua_sink_interop as interop
from tests.test_opcua_sink_interop import (
    NODE,
    NS_URI,
    PASSWORD,
    PEER,
    USER,
    Certs,
    feed,
    pki,
    secure_options,
    serve,
    served,
)
from tests.waiting import until

# The interop tests' fixtures: a built, not started, demo bridge and the certificates.
certs = interop.certs
idle_bridge = interop.idle_bridge

pytestmark = pytest.mark.timeout(40)
needs_node = pytest.mark.skipif(
    NODE is None or not (PEER / "node_modules" / "node-opcua").is_dir(),
    reason="node (Debian package nodejs) or node-opcua (npm ci --prefix tests/opcua_peer) "
           "is not installed")
MODEL = "pump"
T0 = 1_767_225_600.0
CONTRIBUTIONS = {"pressure": 6.1, "flow": 2.2, "vibration": 0.9, "temperature": 0.8}
START_MESSAGE = "anomaly on pump: pressure 61 %, flow 22 %, vibration 9 %"
ALARM_CONDITION_TYPE = f"ns=0;i={ua.ObjectIds.AlarmConditionType}"


def score(index: int, anomaly: bool, valid: bool = True) -> Score:
    return Score(MODEL, T0 + index, (3.0 if anomaly else 0.5) if valid else None, 1.75,
                 anomaly, valid, "" if valid else "window invalid: stale input",
                 CONTRIBUTIONS if anomaly else None, "pump-v3")


# -- the rule and the message (no server) -------------------------------------------------------

def test_message_names_the_top_three_inputs() -> None:
    assert alarm_message(score(0, True), active=True) == START_MESSAGE
    assert top_contributions({"a": math.nan, "b": -3.0, "c": 1.0}) == [("b", 75.0), ("c", 25.0)]
    bare = Score(MODEL, T0, 3.0, 1.75, True, True)
    assert alarm_message(bare, active=True) == "anomaly on pump: score 3 >= threshold 1.75"
    assert alarm_message(bare, active=False) == "anomaly on pump ended"


def test_acknowledgement_needs_a_user() -> None:
    with pytest.raises(ValidationError, match="alarm_acknowledgement"):
        OpcuaServerConfig.model_validate({"enabled": True, "alarm_acknowledgement": True})
    with pytest.raises(ValidationError):
        OpcuaServerConfig.model_validate({"enabled": True, "alarm_severity_start": 0})


# -- asyncua client ---------------------------------------------------------------------------------

class Events:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.items.append(event)


async def test_asyncua_client_gets_start_and_end_refresh_and_no_ack(idle_bridge: Bridge) -> None:
    sink = await serve(idle_bridge)
    async with Client(sink.url, timeout=5) as client:
        events = Events()
        subscription = await client.create_subscription(20, events)
        await subscription.subscribe_alarms_and_conditions(
            client.nodes.server, client.get_node(ua.ObjectIds.AlarmConditionType))
        for item in (score(1, True), score(2, True), score(3, False, valid=False),
                     score(4, False)):  # start, still on, invalid (says nothing), end
            feed(idle_bridge, sink, item)
            await asyncio.sleep(0.05)
        await until(lambda: len(events.items) >= 2, 5, "two alarm events")
        await asyncio.sleep(0.2)
        start, end = events.items
        assert len(events.items) == 2
        alarm_id = ua.NodeId("Models.pump.Alarm", sink.node_id("plcbridge").NamespaceIndex)
        for event, active, severity in ((start, True, 700), (end, False, 100)):
            assert event.EventType == ua.NodeId(ua.ObjectIds.AlarmConditionType)
            assert event.SourceName == MODEL and event.SourceNode == sink.node_id("Models.pump")
            assert event.NodeId == alarm_id and event.ConditionName == "Anomaly"
            assert getattr(event, "ActiveState/Id") is active
            assert getattr(event, "AckedState/Id") is True  # acknowledgement is off
            assert event.Severity == severity and event.Retain is active
        assert start.Message.Text == START_MESSAGE and end.Message.Text == "anomaly on pump ended"
        assert start.Time.timestamp() == T0 + 1 and end.Time.timestamp() == T0 + 4

        # A new anomaly, then ConditionRefresh: the retained (active) condition again.
        feed(idle_bridge, sink, score(5, True))
        await until(lambda: len(events.items) == 3, 5, "the third event")
        condition_type = client.get_node(ua.ObjectIds.ConditionType)
        await condition_type.call_method(ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                                         ua.Variant(subscription.subscription_id, ua.VariantType.UInt32))
        await until(lambda: len(events.items) == 4, 5, "the refreshed condition")
        refreshed = events.items[3]
        assert refreshed.NodeId == alarm_id and getattr(refreshed, "ActiveState/Id") is True

        # Anonymous may not acknowledge (and acknowledgement is off): refused, nothing changes.
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await client.get_node(alarm_id).call_method(
                ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
                ua.Variant(refreshed.EventId, ua.VariantType.ByteString),
                ua.Variant(ua.LocalizedText("ok"), ua.VariantType.LocalizedText))
    assert sink.alarms is not None and sink.alarms.acknowledged == 0


async def test_a_failing_event_never_costs_a_score(idle_bridge: Bridge,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sink = await serve(idle_bridge)
    assert sink.alarms is not None

    async def broken() -> None:
        raise RuntimeError("event bug")

    monkeypatch.setattr(sink.alarms, "send_pending", broken)
    for index in range(3):
        feed(idle_bridge, sink, score(index, anomaly=index % 2 == 0))

    async def published() -> bool:
        value = await served(sink, "Models.pump.Score")
        return bool(value.Value.Value == 3.0)

    await until(published, 5, "the last score despite the failing events")


async def test_alarms_off_builds_no_condition(idle_bridge: Bridge) -> None:
    sink = await serve(idle_bridge, alarms=False)
    feed(idle_bridge, sink, score(1, True))
    assert sink.alarms is None
    async with Client(sink.url, timeout=5) as client:
        refs = await client.get_node(sink.node_id("Models.pump")).get_references(
            ua.ObjectIds.HasCondition)
        assert refs == []


# -- node-opcua --------------------------------------------------------------------------------------

async def run_events(sink: OpcuaServerSink, folder: Path, *args: str, feed_after: list[Score],
                     bridge: Bridge, password: str | None = None,
                     wait_events: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """events.mjs against the sink; once it has subscribed, ``feed_after`` goes in one score at a
    time (after ``wait_events`` events have arrived). Returns (events, summary, stderr)."""
    assert NODE is not None
    env = dict(os.environ)
    extra: list[str] = []
    if password is not None:
        env["PLCBRIDGE_TEST_PEER_PASSWORD"] = password
        extra = ["--user", USER, "--password-env", "PLCBRIDGE_TEST_PEER_PASSWORD"]
    process = await asyncio.create_subprocess_exec(
        NODE, str(PEER / "events.mjs"), "--endpoint", sink.url, "--ns-uri", NS_URI,
        "--model", MODEL, "--pki", str(folder / "pki"), *args, *extra, cwd=PEER, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []

    async def read_stderr() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    stderr_task = asyncio.create_task(read_stderr())
    stdout_task = asyncio.create_task(process.stdout.read())
    try:
        await until(lambda: "SUBSCRIBED" in lines or process.returncode is not None, 15,
                    "events.mjs subscribed")
        await until(lambda: f"EVENT {wait_events}" in lines or wait_events == 0
                    or process.returncode is not None, 10, f"{wait_events} events first")
        for item in feed_after:
            count = sum(line.startswith("EVENT ") for line in lines)
            feed(bridge, sink, item)
            if item.window_valid:  # an event is expected: wait for it before the next
                await until(lambda c=count: sum(x.startswith("EVENT ") for x in lines) > c  # type: ignore[misc]
                            or process.returncode is not None, 10, "the next event")
            else:
                await asyncio.sleep(0.2)
        code = await asyncio.wait_for(process.wait(), 25)
        out = (await stdout_task).decode()
        await stderr_task
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = "\n".join(lines)
    assert code == 0, stderr
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    return records[:-1], records[-1]["summary"], stderr


def assert_alarm(event: dict[str, Any], ns: int, active: bool, severity: int,
                 message: str, index: int) -> None:
    assert event["EventType"] == ALARM_CONDITION_TYPE
    assert event["SourceName"] == MODEL and event["SourceNode"] == f"ns={ns};s=Models.pump"
    assert event["ConditionId"] == f"ns={ns};s=Models.pump.Alarm"
    assert event["ConditionName"] == "Anomaly" and event["ConditionClassName"] == "Process"
    assert event["Severity"] == event["LastSeverity"] == severity
    assert event["Message"] == message
    assert event["ActiveState.Id"] is active
    assert event["ActiveState"] == ("Active" if active else "Inactive")
    assert event["EnabledState.Id"] is True and event["BranchId"] == "ns=0;i=0"
    assert event["InputNode"] == f"ns={ns};s=Models.pump.Anomaly"
    assert event["Time"] == event["ActiveState.TransitionTime"]
    assert datetime.fromisoformat(event["Time"]).timestamp() == T0 + index


@needs_node
@pytest.mark.parametrize("notifier", ["server", "model"])
async def test_node_opcua_sees_anomaly_start_and_end(idle_bridge: Bridge, certs: Certs,
                                                     tmp_path: Path, notifier: str) -> None:
    sink = await serve(idle_bridge, alarm_severity_start=800, alarm_severity_end=200)
    pki(tmp_path, certs)
    events, summary, stderr = await run_events(
        sink, tmp_path, "--notifier", notifier, "--count", "2", "--seconds", "12",
        "--ack", bridge=idle_bridge,
        feed_after=[score(1, True), score(2, False, valid=False), score(3, False)])
    ns = sink.node_id("plcbridge").NamespaceIndex
    assert len(events) == 2, stderr
    assert_alarm(events[0], ns, True, 800, START_MESSAGE, 1)
    assert_alarm(events[1], ns, False, 200, "anomaly on pump ended", 3)
    assert events[0]["Retain"] is True and events[1]["Retain"] is False
    assert events[0]["AckedState.Id"] is True  # acknowledgement off: nothing to acknowledge
    assert summary["acks"] == []  # so events.mjs found nothing to acknowledge


@needs_node
async def test_node_opcua_acknowledges_as_the_user_and_anonymous_is_refused(
        idle_bridge: Bridge, certs: Certs, tmp_path: Path) -> None:
    """Secure endpoint, acknowledgement on: the configured user acknowledges the anomaly (an
    AckedState event follows, naming the user); the condition stays retained until it ends."""
    sink = await serve(idle_bridge, alarm_acknowledgement=True,
                       **secure_options(certs, "Basic256Sha256", "SignAndEncrypt"))
    pki(tmp_path, certs)
    events, summary, stderr = await run_events(
        sink, tmp_path, "--policy", "Basic256Sha256", "--mode", "SignAndEncrypt",
        "--cert", str(certs.client_pem), "--key", str(certs.client_key),
        "--count", "2", "--seconds", "12", "--ack", bridge=idle_bridge,
        feed_after=[score(1, True)], password=PASSWORD)
    ns = sink.node_id("plcbridge").NamespaceIndex
    assert summary["acks"] == [{"conditionId": f"ns={ns};s=Models.pump.Alarm",
                                "status": "Good"}], stderr
    start, acked = events
    assert start["AckedState.Id"] is False and start["AckedState"] == "Unacknowledged"
    assert acked["AckedState.Id"] is True and acked["ActiveState.Id"] is True
    assert acked["Retain"] is True and acked["ClientUserId"] == USER
    assert acked["Comment"] == "seen by events.mjs"
    assert sink.alarms is not None and sink.alarms.acknowledged == 1


@needs_node
async def test_node_opcua_anonymous_acknowledge_is_refused(
        idle_bridge: Bridge, certs: Certs, tmp_path: Path) -> None:
    """Acknowledgement on for the user, but an anonymous session (None endpoint is not allowed
    with a user, so: a secure endpoint that also allows anonymous) is refused cleanly."""
    options = secure_options(certs, "Basic256Sha256", "SignAndEncrypt")
    options["allow_anonymous"] = True
    sink = await serve(idle_bridge, alarm_acknowledgement=True, **options)
    pki(tmp_path, certs)
    events, summary, stderr = await run_events(
        sink, tmp_path, "--policy", "Basic256Sha256", "--mode", "SignAndEncrypt",
        "--cert", str(certs.client_pem), "--key", str(certs.client_key),
        "--count", "1", "--seconds", "5", "--ack", bridge=idle_bridge,
        feed_after=[score(1, True)])
    assert summary["acks"][0]["status"] == "BadUserAccessDenied", stderr
    assert events[0]["AckedState.Id"] is False
    assert sink.alarms is not None and sink.alarms.acknowledged == 0
