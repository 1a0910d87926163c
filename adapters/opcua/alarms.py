"""Alarms & Conditions for the OPC UA server sink: one anomaly alarm per model.

What a SCADA alarm list sees (OPC UA Part 9, the subset plcbridge implements):

- One condition per model, ``ns=<i>;s=Models.<model>.Alarm`` (BrowseName ``Alarm``, type
  ``AlarmConditionType``), reached from the model's folder by ``HasCondition`` (a
  non-hierarchical reference: a plain browse of ``Models/<model>`` still shows only the five
  variables). Its events come from the model's folder (the ConditionSource: ``SourceNode``,
  ``SourceName`` = the model's name) and are reported through two notifiers: the Server object
  (``HasNotifier`` → each model folder) and the model's folder itself, both
  ``EventNotifier = SubscribeToEvents``.
- An ``AlarmConditionType`` event on anomaly start (a window that is anomalous after one that
  was not) and on anomaly end (a valid window that is not anomalous after one that was: an
  invalid window says nothing either way, the same rule as ``/api/v1/events`` and MQTT), with
  EventType, SourceNode/SourceName, Time (the score's window time), ReceiveTime, Message
  naming the top three contributing inputs, Severity (``alarm_severity_start``,
  ``alarm_severity_end``) and LastSeverity (the one before), ConditionName ``Anomaly``,
  ConditionClass ``Process``, BranchId null, Retain, EnabledState (always enabled),
  ActiveState, AckedState, Quality, InputNode (the model's ``Anomaly`` variable) and
  ConditionId (select ``NodeId`` on ConditionType).
- ``ConditionRefresh`` / ``ConditionRefresh2``: RefreshStart, every retained condition, then
  RefreshEnd to the subscription that asks (asyncua's own handler cannot read its arguments).
- ``Acknowledge`` (``alarm_acknowledgement = true``, off by default): only the configured,
  authenticated user may acknowledge, with the EventId of the condition's latest event; every
  other caller gets ``BadUserAccessDenied``. With acknowledgement off every event says
  ``AckedState = Acknowledged`` (nothing to do) and ``Retain`` follows ``ActiveState``; with it
  on a new anomaly is unacknowledged and the condition is retained until it is both inactive
  and acknowledged.

Not implemented: condition branches, Confirm, AddComment, Enable/Disable, Shelving,
suppression, audit events, the condition's state variables as browsable nodes, and
``ConditionRefresh`` checking that the subscription belongs to the calling session (asyncua
does not tell a method who calls it; a refresh only re-sends what any client may subscribe to).

Events never hold up scores: ``observe`` (called from ``on_score``) only applies the start/end
rule and queues a transition, and the sink's update task sends the queue after it has
published the scores, in its own ``try``.
"""

from __future__ import annotations

import contextvars
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncua import Server, ua
from asyncua.common.event_objects import AlarmCondition, RefreshEndEvent, RefreshStartEvent
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User

from bridge.config.opcua_server import OpcuaServerConfig
from bridge.core.scores import Score

__all__ = ["Alarms", "CallerRuleset", "alarm_message"]

log = logging.getLogger("plcbridge.opcua_server")

CONDITION_NAME = "Anomaly"
TOP_INPUTS = 3
QUEUE_MAX = 1000  # transitions waiting for the update task; the oldest go first when full

# The user of the request being served. asyncua checks every request of an activated session
# with the permission ruleset right before it serves it, in the same task, and does not pass
# the session to a method callback: the ruleset leaves the user here for ``Acknowledge``.
_CALLER: contextvars.ContextVar[User | None] = contextvars.ContextVar("plcbridge_opcua_caller",
                                                                     default=None)


class CallerRuleset(SimpleRoleRuleset):
    """asyncua's own rules (unchanged), and the caller noted for the method callbacks."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        _CALLER.set(user)
        return bool(super().check_validity(user, action_type_id, body))  # type: ignore[no-untyped-call]


def _ns0(identifier: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(identifier))


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _event(kind: type, source: ua.NodeId) -> Any:
    """One of asyncua's event classes (untyped: their fields are set with setattr)."""
    return kind(sourcenode=source)


def top_contributions(contributions: Mapping[str, float] | None,
                      count: int = TOP_INPUTS) -> list[tuple[str, float]]:
    """The ``count`` inputs with the largest share of the total |contribution|, in percent."""
    finite = {k: abs(v) for k, v in (contributions or {}).items() if math.isfinite(v)}
    total = sum(finite.values())
    if total <= 0:
        return []
    ranked = sorted(finite.items(), key=lambda kv: (-kv[1], kv[0]))[:count]
    return [(name, 100.0 * value / total) for name, value in ranked]


def alarm_message(score: Score, active: bool) -> str:
    """``anomaly on pump: pressure 61 %, flow 22 %, vibration 9 %`` (start), or the score
    against the threshold when the model gives no contributions; ``anomaly on pump ended``."""
    if not active:
        return f"anomaly on {score.model} ended"
    top = top_contributions(score.contributions)
    if top:
        return f"anomaly on {score.model}: " + ", ".join(f"{n} {p:.0f} %" for n, p in top)
    value = "n/a" if score.score is None else f"{score.score:.4g}"
    return f"anomaly on {score.model}: score {value} >= threshold {score.threshold:.4g}"


@dataclass
class _Condition:
    """One model's alarm: its state and the event object every notification is built from."""

    model: str
    node: ua.NodeId
    source: ua.NodeId  # the model's folder
    event: Any  # asyncua's AlarmCondition: its fields are set with setattr, untyped
    active: bool = False
    acked: bool = True
    event_ids: deque[bytes] = field(default_factory=lambda: deque(maxlen=8))

    @property
    def retain(self) -> bool:
        return self.active or not self.acked


def _text(value: str) -> ua.LocalizedText:
    return ua.LocalizedText(value, "en")


def _two_state(event: Any, name: str, value: bool, true: str, false: str,
               when: datetime | None = None) -> None:
    """A TwoStateVariable's fields in the event: Id, the display text and its texts."""
    event.add_property(f"{name}/Id", value, ua.VariantType.Boolean)
    event.add_variable(name, _text(true if value else false), ua.VariantType.LocalizedText)
    event.add_property(f"{name}/TrueState", _text(true), ua.VariantType.LocalizedText)
    event.add_property(f"{name}/FalseState", _text(false), ua.VariantType.LocalizedText)
    if when is not None:  # asyncua types TransitionTime as a NodeId: give it a real type
        event.add_property(f"{name}/TransitionTime", when, ua.VariantType.DateTime)


class Alarms:
    """The sink's alarm conditions: built into a server, fed Scores, sent by the update task."""

    def __init__(self, config: OpcuaServerConfig, node_id: Callable[[str], ua.NodeId],
                 qname: Callable[[str], ua.QualifiedName],
                 refused: Callable[[str], None]) -> None:
        self.config = config
        # A refused Acknowledge is client input like a refused Write: counted into the
        # server's one-a-minute summary, not logged per call (a client could flood the log).
        self._refused = refused
        self._node_id = node_id
        self._qname = qname
        self._server: Server | None = None
        self._conditions: dict[str, _Condition] = {}
        self._anomalous: dict[str, bool] = {}
        self._queue: deque[tuple[str, bool, Score]] = deque(maxlen=QUEUE_MAX)
        self._notifiers: list[ua.NodeId] = []
        self.sent = 0
        self.dropped = 0
        self.acknowledged = 0

    # -- the start/end rule (no I/O: called from on_score) -------------------------------------

    def observe(self, score: Score) -> bool:
        """Apply the start/end rule; True when a transition was queued."""
        was = self._anomalous.get(score.model, False)
        active: bool | None = None
        if score.anomaly and not was:
            active = True
        elif was and score.window_valid and not score.anomaly:
            active = False
        if score.window_valid:
            self._anomalous[score.model] = score.anomaly
        if active is None:
            return False
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((score.model, active, score))
        return True

    # -- the address space ----------------------------------------------------------------------

    async def build(self, server: Server, models: Iterable[str]) -> None:
        """Condition nodes, notifiers and the method callbacks (before the server starts)."""
        self._server = server
        server_node = _ns0(ua.ObjectIds.Server)
        self._notifiers = [server_node]
        for model in models:
            source = self._node_id(f"Models.{model}")
            node = await self._add_condition_node(server, model, source)
            event = self._new_event(model, node, source)
            self._conditions[model] = _Condition(model, node, source, event)
            self._notifiers.append(source)
            await server.get_node(source).set_event_notifier([ua.EventNotifier.SubscribeToEvents])
            await server.get_node(server_node).add_reference(source, ua.ObjectIds.HasNotifier)
            await server.get_node(source).add_reference(
                _ns0(ua.ObjectIds.AlarmConditionType), ua.ObjectIds.GeneratesEvent,
                bidirectional=False)
        await server.get_node(server_node).set_event_notifier([ua.EventNotifier.SubscribeToEvents])
        session = server.iserver.isession
        session.add_method_callback(_ns0(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
                                    self._acknowledge)
        for method in (ua.ObjectIds.ConditionType_ConditionRefresh,
                       ua.ObjectIds.ConditionType_ConditionRefresh2):
            session.add_method_callback(_ns0(method), self._refresh)

    async def _add_condition_node(self, server: Server, model: str,
                                  source: ua.NodeId) -> ua.NodeId:
        # A plain AddNodes, not Node.add_object: that would instantiate AlarmConditionType's
        # thirty-odd mandatory children, whose values nobody would keep current.
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = self._node_id(f"Models.{model}.Alarm")
        item.BrowseName = self._qname("Alarm")
        item.ParentNodeId = source
        item.ReferenceTypeId = _ns0(ua.ObjectIds.HasCondition)
        item.NodeClass = ua.NodeClass.Object
        item.TypeDefinition = _ns0(ua.ObjectIds.AlarmConditionType)
        attrs = ua.ObjectAttributes()
        attrs.DisplayName = _text(f"{model} anomaly")
        attrs.Description = _text(f"anomaly alarm of model {model}")
        attrs.EventNotifier = 0
        item.NodeAttributes = attrs
        result = (await server.iserver.isession.add_nodes([item]))[0]
        result.StatusCode.check()
        return self._node_id(f"Models.{model}.Alarm")

    def _new_event(self, model: str, node: ua.NodeId, source: ua.NodeId) -> Any:
        event = _event(AlarmCondition, source)
        event.SourceName = model
        event.add_property("NodeId", node, ua.VariantType.NodeId)  # the ConditionId
        event.ConditionName = CONDITION_NAME
        event.ConditionClassId = _ns0(ua.ObjectIds.ProcessConditionClassType)
        event.ConditionClassName = _text("Process")
        event.BranchId = ua.NodeId()  # null: the condition itself, no branches
        event.InputNode = self._node_id(f"Models.{model}.Anomaly")
        event.SuppressedOrShelved = False
        event.Quality = _status(ua.StatusCodes.Good)
        _two_state(event, "EnabledState", True, "Enabled", "Disabled")
        _two_state(event, "ActiveState", False, "Active", "Inactive")
        _two_state(event, "AckedState", True, "Acknowledged", "Unacknowledged")
        event.Retain = False
        # Until the first anomaly the condition is as it is after one ended.
        event.Severity = self.config.alarm_severity_end
        return event

    # -- sending --------------------------------------------------------------------------------

    async def send_pending(self) -> None:
        """Send the queued transitions, oldest first."""
        while self._queue:
            model, active, score = self._queue.popleft()
            condition = self._conditions.get(model)
            if condition is None:
                continue
            severity = (self.config.alarm_severity_start if active
                        else self.config.alarm_severity_end)
            when = datetime.fromtimestamp(score.time, UTC)
            condition.active = active
            if active:  # a new anomaly needs a new acknowledgement (when that is on)
                condition.acked = not self.config.alarm_acknowledgement
            event = condition.event
            _two_state(event, "ActiveState", active, "Active", "Inactive", when)
            if active:
                _two_state(event, "AckedState", condition.acked, "Acknowledged",
                           "Unacknowledged", when)
            event.Message = _text(alarm_message(score, active))
            event.LastSeverity = event.Severity  # the one before this transition
            event.Severity = severity
            event.Time = when
            event.Comment = None
            event.ClientUserId = None
            await self._fire(condition)
            log.info("opcua alarm %s model=%s severity=%d", "active" if active else "inactive",
                     model, severity)

    async def _fire(self, condition: _Condition, subscription_id: int | None = None) -> None:
        """Send the condition's event now: from its folder and from the Server object."""
        assert self._server is not None
        event = condition.event
        event_id = uuid.uuid4().bytes
        event.EventId = event_id
        condition.event_ids.append(event_id)
        event.ReceiveTime = datetime.now(UTC)
        event.Retain = condition.retain
        await self._trigger(event, [condition.source, _ns0(ua.ObjectIds.Server)],
                            subscription_id)
        self.sent += 1

    async def _trigger(self, event: Any, notifiers: Iterable[ua.NodeId],
                       subscription_id: int | None) -> None:
        assert self._server is not None
        service = self._server.iserver.subscription_service
        for notifier in notifiers:
            # asyncua delivers an event to the monitored items of its emitting node only.
            event.emitting_node = notifier
            await service.trigger_event(event, subscription_id=subscription_id)

    async def _marker(self, marker: Any, subscription_id: int) -> None:
        """RefreshStart/RefreshEnd: from the Server, to every notifier's monitored items."""
        marker.SourceName = "Server"
        marker.EventId = uuid.uuid4().bytes
        marker.Time = marker.ReceiveTime = datetime.now(UTC)
        marker.Message = _text(type(marker).__name__)
        await self._trigger(marker, self._notifiers, subscription_id)

    # -- methods ----------------------------------------------------------------------------------

    async def _refresh(self, parent: ua.NodeId, *args: ua.Variant) -> ua.StatusCode:
        """ConditionRefresh(SubscriptionId) / ConditionRefresh2(SubscriptionId, MonitoredItemId)."""
        assert self._server is not None
        if not args or not isinstance(args[0].Value, int):
            return _status(ua.StatusCodes.BadInvalidArgument)
        subscription_id = int(args[0].Value)
        if subscription_id not in self._server.iserver.subscription_service.subscriptions:
            return _status(ua.StatusCodes.BadSubscriptionIdInvalid)
        await self._marker(_event(RefreshStartEvent, _ns0(ua.ObjectIds.Server)), subscription_id)
        for condition in self._conditions.values():
            if condition.retain:
                await self._fire(condition, subscription_id)
        await self._marker(_event(RefreshEndEvent, _ns0(ua.ObjectIds.Server)), subscription_id)
        return _status(ua.StatusCodes.Good)

    async def _acknowledge(self, parent: ua.NodeId, *args: ua.Variant) -> ua.StatusCode:
        """Acknowledge(EventId, Comment) on a model's condition, by the configured user only."""
        condition = next((c for c in self._conditions.values() if c.node == parent), None)
        if condition is None:
            return _status(ua.StatusCodes.BadNodeIdInvalid)
        user = _CALLER.get()
        allowed = (self.config.alarm_acknowledgement and user is not None
                   and user.name is not None and user.name == self.config.username)
        if not allowed:
            self._refused("alarm acknowledge refused BadUserAccessDenied")
            return _status(ua.StatusCodes.BadUserAccessDenied)
        if len(args) != 2 or not isinstance(args[0].Value, bytes):
            return _status(ua.StatusCodes.BadInvalidArgument)
        if args[0].Value not in condition.event_ids:
            return _status(ua.StatusCodes.BadEventIdUnknown)
        if condition.acked:
            return _status(ua.StatusCodes.BadConditionBranchAlreadyAcked)
        comment = args[1].Value if isinstance(args[1].Value, ua.LocalizedText) else _text("")
        condition.acked = True
        event = condition.event
        _two_state(event, "AckedState", True, "Acknowledged", "Unacknowledged",
                   datetime.now(UTC))
        event.Message = _text(f"anomaly on {condition.model} acknowledged")
        event.Time = datetime.now(UTC)
        event.Comment = comment
        event.ClientUserId = user.name if user is not None else None
        await self._fire(condition)
        self.acknowledged += 1
        log.info("opcua alarm acknowledged model=%s user=%s", condition.model,
                 None if user is None else user.name)
        return _status(ua.StatusCodes.Good)
