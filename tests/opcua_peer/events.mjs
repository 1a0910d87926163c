// A node-opcua event subscriber: the SCADA alarm list stand-in for plcbridge's OPC UA server
// sink (adapters/opcua/alarms.py).
//
//   node events.mjs --endpoint URL --ns-uri URI --model NAME --pki DIR
//        [--policy ... --mode ... --cert CERT.pem --key KEY.pem] [--user NAME --password-env VAR]
//        [--notifier server|model] [--count N] [--seconds S] [--refresh] [--ack] [--timeout S]
//
// Subscribes with an event monitored item on the Server object (default) or on the model's
// folder (found by browsing Objects/plcbridge/Models/<model>), selecting the Alarms &
// Conditions fields, and prints each event as one JSON line on stdout as it arrives. Stops after
// N events or S seconds and prints a last line {"summary": ...}. --refresh calls
// ConditionRefresh once subscribed; --ack calls Acknowledge (with the event's EventId) on the
// first active, unacknowledged event and records the status (a refusal is a result, not an
// error). Progress goes to stderr ("SUBSCRIBED", "EVENT <n>") so a test can feed the server in
// step. Failures print "error: ..." on stderr and exit 1; nothing within --timeout (default 20)
// seconds exits 3.
import { parseArgs } from "node:util";
import {
  AttributeIds,
  ClientMonitoredItem,
  DataType,
  TimestampsToReturn,
  constructEventFilter,
  makeBrowsePath,
} from "node-opcua";
import { CONNECTION_OPTIONS, fail, makeClient, setUp } from "./peer.mjs";

const { values: args } = parseArgs({
  options: {
    ...CONNECTION_OPTIONS,
    notifier: { type: "string", default: "server" },
    count: { type: "string", default: "1000000" },
    seconds: { type: "string", default: "10" },
    refresh: { type: "boolean", default: false },
    ack: { type: "boolean", default: false },
  },
});
setUp(args, ["endpoint", "ns-uri", "model"]);
const { client, identity } = makeClient(args, "plcbridge-opcua-peer-events");

async function step(what, action) {
  try {
    return await action();
  } catch (err) {
    fail(`${what}: ${String(err?.message ?? err).trim()}`);
  }
}

// The A&C fields asked for, in this order (browse paths from the event type; "ConditionId" is
// node-opcua's name for ConditionType's NodeId attribute).
const FIELDS = ["EventId", "EventType", "SourceNode", "SourceName", "Time", "ReceiveTime",
  "Message", "Severity", "ConditionId", "ConditionName", "ConditionClassName", "BranchId",
  "Retain", "EnabledState", "EnabledState.Id", "ActiveState", "ActiveState.Id",
  "ActiveState.TransitionTime", "AckedState", "AckedState.Id", "LastSeverity", "Quality",
  "InputNode", "Comment", "ClientUserId"];

function plain(variant) {
  const value = variant?.value ?? null;
  if (value === null) return null;
  if (value instanceof Date) return value.toISOString();
  if (Buffer.isBuffer(value)) return value.toString("hex");
  if (variant.dataType === DataType.LocalizedText) return value.text ?? null;
  if (variant.dataType === DataType.NodeId) return value.toString();
  if (variant.dataType === DataType.StatusCode) return value.name;
  return value;
}

await step("connect", () => client.connect(args.endpoint));
const session = await step("create session", () => client.createSession(identity));
const namespaceArray = await step("read NamespaceArray", () => session.readNamespaceArray());
const ns = namespaceArray.indexOf(args["ns-uri"]);
if (ns < 0) fail(`namespace ${args["ns-uri"]} not in NamespaceArray`);

let notifier = "ns=0;i=2253"; // the Server object
if (args.notifier === "model") {
  const path = makeBrowsePath("ns=0;i=85",
    `/${ns}:plcbridge/${ns}:Models/${ns}:${args.model}`);
  const result = await step("translate browse path", () => session.translateBrowsePath(path));
  if (!result.statusCode.isGood()) fail(`browse Models/${args.model}: ${result.statusCode.name}`);
  notifier = result.targets[0].targetId.toString();
} else if (args.notifier !== "server") {
  fail(`unknown --notifier ${args.notifier}`, 2);
}

const sub = await step("create subscription", () => session.createSubscription2({
  requestedPublishingInterval: 50, requestedLifetimeCount: 600, requestedMaxKeepAliveCount: 20,
  maxNotificationsPerPublish: 0, publishingEnabled: true, priority: 0,
}));
const item = ClientMonitoredItem.create(sub,
  { nodeId: notifier, attributeId: AttributeIds.EventNotifier },
  { samplingInterval: 0, queueSize: 100, discardOldest: false, filter: constructEventFilter(FIELDS) },
  TimestampsToReturn.Neither);

const events = [];
const acks = [];
const wanted = Number(args.count);
let done;
const finished = new Promise((resolve) => { done = resolve; });
let acking = Promise.resolve();

item.on("changed", (fields) => {
  const event = Object.fromEntries(FIELDS.map((name, i) => [name, plain(fields[i])]));
  events.push(event);
  process.stdout.write(`${JSON.stringify(event)}\n`);
  console.error(`EVENT ${events.length}`);
  const ackable = event["ActiveState.Id"] === true && event["AckedState.Id"] === false;
  if (args.ack && ackable && acks.length === 0) {
    acks.push(null); // one acknowledgement per run
    acking = session.call({
      objectId: event.ConditionId,
      methodId: "ns=0;i=9111", // AcknowledgeableConditionType.Acknowledge
      inputArguments: [
        { dataType: DataType.ByteString, value: fields[0].value },
        { dataType: DataType.LocalizedText, value: { text: "seen by events.mjs" } },
      ],
    }).then((result) => {
      acks[0] = { conditionId: event.ConditionId, status: result.statusCode.name };
      console.error(`ACK ${result.statusCode.name}`);
    }, (err) => { acks[0] = { conditionId: event.ConditionId, error: String(err?.message ?? err) }; });
  }
  if (events.length >= wanted) done();
});
await step("monitor events", () => new Promise((resolve, reject) => {
  item.once("initialized", resolve);
  item.once("err", (message) => reject(new Error(message)));
}));
console.error("SUBSCRIBED");

let refresh = null;
if (args.refresh) {
  const result = await step("ConditionRefresh", () => session.call({
    objectId: "ns=0;i=2782", // ConditionType
    methodId: "ns=0;i=3875", // ConditionType.ConditionRefresh
    inputArguments: [{ dataType: DataType.UInt32, value: sub.subscriptionId }],
  }));
  refresh = result.statusCode.name;
  console.error(`REFRESH ${refresh}`);
}

const timer = setTimeout(done, Number(args.seconds) * 1000);
await finished;
clearTimeout(timer);
await acking;
await step("delete subscription", () => sub.terminate());
await step("close session", () => session.close());
await step("disconnect", () => client.disconnect());
process.stdout.write(`${JSON.stringify({ summary: {
  notifier, namespaceIndex: ns, events: events.length, refresh, acks,
} })}\n`);
process.exit(0);
