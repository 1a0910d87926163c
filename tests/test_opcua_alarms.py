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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from pydantic import ValidationError

from adapters.opcua.alarms import alarm_message, top_contributions
from adapters.opcua.server import OpcuaServerSink
from adapters.sim.modbus import start_simulator
from bridge.cli.demo import demo_config
from bridge.config.opcua_server import OpcuaServerConfig
from bridge.core.scores import Score
from bridge.runtime.bridge import Bridge
from tests import test_opcua_sink_interop as interop
from tests.opcua_servers import CLIENT_URI
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
SPEED = 10.0  # the simulated plant and the bridge, as in test_e2e


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

class EventsClient:
    """events.mjs as an asyncio subprocess (the loop keeps serving the sink meanwhile): its
    stderr progress lines ("SUBSCRIBED", "EVENT <n>") as they arrive, its stdout at the end."""

    def __init__(self, sink: OpcuaServerSink, folder: Path, *args: str,
                 password: str | None = None) -> None:
        self.args = ["--endpoint", sink.url, "--ns-uri", NS_URI, "--model", MODEL,
                     "--pki", str(folder / "pki"), *args]
        self.env = dict(os.environ)
        if password is not None:
            self.env["PLCBRIDGE_TEST_PEER_PASSWORD"] = password
            self.args += ["--user", USER, "--password-env", "PLCBRIDGE_TEST_PEER_PASSWORD"]
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> EventsClient:
        assert NODE is not None
        self.process = process = await asyncio.create_subprocess_exec(
            NODE, str(PEER / "events.mjs"), *self.args, cwd=PEER, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None

        async def read_stderr() -> None:
            assert process.stderr is not None
            async for line in process.stderr:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))

        self._tasks = [asyncio.create_task(process.stdout.read()),
                       asyncio.create_task(read_stderr())]
        await self.wait(lambda: "SUBSCRIBED" in self.lines, 15, "events.mjs subscribed")
        return self

    @property
    def events(self) -> int:
        return sum(line.startswith("EVENT ") for line in self.lines)

    async def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        assert self.process is not None
        await until(lambda: done() or self.process is None or self.process.returncode is not None,
                    timeout, what)
        assert done(), f"events.mjs exited before {what}:\n" + "\n".join(self.lines)

    async def finish(self) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
        """(events, summary, stderr) once events.mjs is done."""
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), 25)
        out = (await self._tasks[0]).decode()
        await self._tasks[1]
        stderr = "\n".join(self.lines)
        assert code == 0, stderr
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        return records[:-1], records[-1]["summary"], stderr

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)


async def run_events(sink: OpcuaServerSink, folder: Path, *args: str, feed_after: list[Score],
                     bridge: Bridge, password: str | None = None,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """events.mjs against the sink; once it has subscribed, ``feed_after`` goes in one score
    at a time, each valid one once the event before it has arrived."""
    async with EventsClient(sink, folder, *args, password=password) as client:
        for item in feed_after:
            count = client.events
            feed(bridge, sink, item)
            if item.window_valid:  # an event is expected: wait for it before the next
                await client.wait(lambda c=count: client.events > c,  # type: ignore[misc]
                                  10, "the next event")
            else:
                await asyncio.sleep(0.2)
        return await client.finish()


def assert_alarm(event: dict[str, Any], ns: int, active: bool, severity: int, last: int,
                 message: str, index: int) -> None:
    assert event["EventType"] == ALARM_CONDITION_TYPE
    assert event["SourceName"] == MODEL and event["SourceNode"] == f"ns={ns};s=Models.pump"
    assert event["ConditionId"] == f"ns={ns};s=Models.pump.Alarm"
    assert event["ConditionName"] == "Anomaly" and event["ConditionClassName"] == "Process"
    assert (event["Severity"], event["LastSeverity"]) == (severity, last)
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
    assert_alarm(events[0], ns, True, 800, 200, START_MESSAGE, 1)
    assert_alarm(events[1], ns, False, 200, 800, "anomaly on pump ended", 3)
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


async def test_asyncua_user_acknowledges_with_the_latest_event_id(idle_bridge: Bridge,
                                                                   certs: Certs) -> None:
    """Acknowledgement on: an unknown EventId and a second acknowledgement are refused; an
    unacknowledged anomaly stays retained after it ends until it is acknowledged."""
    sink = await serve(idle_bridge, alarm_acknowledgement=True,
                       **secure_options(certs, "Basic256Sha256", "SignAndEncrypt"))
    client = Client(sink.url, timeout=5)
    client.application_uri = CLIENT_URI
    client.set_user(USER)
    client.set_password(PASSWORD)
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{certs.client_pem},"
                                     f"{certs.client_key},{certs.server_cert}")
    async with client:
        events = Events()
        subscription = await client.create_subscription(20, events)
        await subscription.subscribe_alarms_and_conditions(
            client.nodes.server, client.get_node(ua.ObjectIds.AlarmConditionType))
        feed(idle_bridge, sink, score(1, True))
        feed(idle_bridge, sink, score(2, False))
        await until(lambda: len(events.items) == 2, 5, "start and end")
        start, end = events.items
        assert getattr(start, "AckedState/Id") is False and start.Retain is True
        assert getattr(end, "ActiveState/Id") is False and end.Retain is True  # not acked yet
        alarm = client.get_node(end.NodeId)

        async def acknowledge(event_id: bytes) -> None:
            await alarm.call_method(
                ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
                ua.Variant(event_id, ua.VariantType.ByteString),
                ua.Variant(ua.LocalizedText("checked the pump"), ua.VariantType.LocalizedText))

        with pytest.raises(ua.uaerrors.BadEventIdUnknown):
            await acknowledge(b"not an event of this condition")
        await acknowledge(end.EventId)
        await until(lambda: len(events.items) == 3, 5, "the acknowledged event")
        acked = events.items[2]
        assert getattr(acked, "AckedState/Id") is True and acked.Retain is False
        assert acked.ClientUserId == USER and acked.Comment.Text == "checked the pump"
        with pytest.raises(ua.uaerrors.BadConditionBranchAlreadyAcked):
            await acknowledge(acked.EventId)
    assert sink.alarms is not None and sink.alarms.acknowledged == 1


@needs_node
@pytest.mark.timeout(60)
async def test_node_opcua_alarm_list_follows_a_fault_on_the_simulated_plant(
        certs: Certs, tmp_path: Path) -> None:
    """The whole way: simulator → Modbus → bridge → model → sink → node-opcua. Cavitation is
    injected once the model scores valid windows: an active alarm naming inputs; the fault is
    cleared: the alarm goes inactive."""
    sim = await start_simulator("127.0.0.1", 0, seed=11, step=0.01, speed=SPEED)
    bridge = Bridge(demo_config(sim.port, api_port=0), speed=SPEED)
    sink = OpcuaServerSink(OpcuaServerConfig.model_validate(
        {"enabled": True, "port": 0, "refresh_interval": 0.1}))
    bridge.sinks.append(sink)
    pki(tmp_path, certs)
    try:
        await bridge.start()
        async with EventsClient(sink, tmp_path, "--count", "2", "--seconds", "40",
                                "--timeout", "45") as client:
            def valid() -> bool:
                latest = bridge.scores.latest(MODEL)
                return latest is not None and latest.window_valid and not latest.anomaly

            await until(valid, 20, "a valid, normal window")
            await sim.inject("cavitation")
            await client.wait(lambda: client.events == 1, 15, "the anomaly-start event")
            await sim.clear()
            await client.wait(lambda: client.events == 2, 30, "the anomaly-end event")
            events, _, stderr = await client.finish()
    finally:
        await bridge.stop()
        await sim.stop()
    ns = sink.node_id("plcbridge").NamespaceIndex
    start, end = events
    assert start["EventType"] == end["EventType"] == ALARM_CONDITION_TYPE
    assert start["ConditionId"] == end["ConditionId"] == f"ns={ns};s=Models.pump.Alarm"
    assert (start["ActiveState.Id"], end["ActiveState.Id"]) == (True, False), stderr
    assert (start["Severity"], end["Severity"]) == (700, 100)
    inputs = bridge.runners[MODEL].detector.contract.inputs
    named = start["Message"].removeprefix("anomaly on pump: ").split(", ")
    assert start["Message"].startswith("anomaly on pump: ")
    assert 1 <= len(named) <= 3 and all(part.rsplit(" ", 2)[0] in inputs for part in named), start
    assert end["Message"] == "anomaly on pump ended"
