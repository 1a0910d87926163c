// A small node-opcua client: the independent SCADA-like peer that reads plcbridge's own OPC UA
// server sink (adapters/opcua_server.py).
//
//   node client.mjs --endpoint URL --ns-uri URI --model NAME --device NAME --pki DIR
//        [--policy None|Basic256Sha256|Aes128_Sha256_RsaOaep|Aes256_Sha256_RsaPss]
//        [--mode None|Sign|SignAndEncrypt] [--cert CERT.pem --key KEY.pem]
//        [--application-uri URI] [--user NAME --password-env VAR]
//        [--subscribe-seconds S [--subscribe-count N]] [--write-test] [--timeout S]
//
// Resolves the namespace index by URI from the server's NamespaceArray, *browses*
// Objects/plcbridge/Models/<model> and Objects/plcbridge/Devices/<device> (Browse service: no
// NodeId is assumed), reads every variable's Value (status, source timestamp), DataType (by the
// DataType node's BrowseName) and access levels. Then, optionally: subscribes to Score for S
// seconds (or until N notifications) recording every data change, and tries a Write to Score.
// Prints one JSON object on stdout.
//
// The server certificate is checked against DIR (node-opcua PKI layout: put it into
// DIR/trusted/certs); unknown certificates are rejected, not accepted automatically.
// Progress goes to stderr ("SUBSCRIBED", "CHANGE <n>") so a test can feed the server in step.
// Any failure prints "error: ..." on stderr and exits 1 (a refused login says "authentication
// failed"); nothing within --timeout seconds (default 20) exits 3.
import { parseArgs } from "node:util";
import {
  AttributeIds,
  BrowseDirection,
  ClientMonitoredItem,
  DataType,
  NodeClass,
  TimestampsToReturn,
} from "node-opcua";
import { CONNECTION_OPTIONS, fail, makeClient, setUp } from "./peer.mjs";

const { values: args } = parseArgs({
  options: {
    ...CONNECTION_OPTIONS,
    device: { type: "string" },
    "subscribe-seconds": { type: "string" },
    "subscribe-count": { type: "string" },
    "write-test": { type: "boolean", default: false },
  },
});
setUp(args, ["endpoint", "ns-uri", "model", "device"]);
const { client, identity } = makeClient(args, "plcbridge-opcua-peer-client");

async function step(what, action) {
  try {
    return await action();
  } catch (err) {
    const refused = /BadUserAccessDenied|BadIdentityToken/.test(String(err?.message));
    const auth = what === "create session" && refused; // ActivateSession refused the user
    fail(`${what}${auth ? ": authentication failed" : ""}: ${String(err?.message ?? err).trim()}`);
  }
}

const text = (value) => (value instanceof Date ? value.toISOString()
  : typeof value === "number" && !Number.isFinite(value) ? String(value) : value);
const describeValue = (dv) => ({
  value: text(dv.value?.value ?? null),
  variantType: DataType[dv.value?.dataType ?? DataType.Null],
  status: dv.statusCode.name,
  sourceTimestamp: dv.sourceTimestamp ? dv.sourceTimestamp.toISOString() : null,
});

await step("connect", () => client.connect(args.endpoint));
const session = await step("create session", () => client.createSession(identity));

const namespaceArray = await step("read NamespaceArray", () => session.readNamespaceArray());
const ns = namespaceArray.indexOf(args["ns-uri"]);
if (ns < 0) fail(`namespace ${args["ns-uri"]} not in NamespaceArray ${JSON.stringify(namespaceArray)}`);

const browsed = {};
async function browse(nodeId, path) {
  const result = await step(`browse ${path}`, () => session.browse({
    nodeId,
    browseDirection: BrowseDirection.Forward,
    referenceTypeId: "HierarchicalReferences",
    includeSubtypes: true,
    resultMask: 0x3f,
  }));
  if (!result.statusCode.isGood()) fail(`browse ${path}: ${result.statusCode.name}`);
  const refs = (result.references ?? []).filter((r) => r.browseName.namespaceIndex === ns);
  browsed[path] = { nodeId: nodeId.toString(), children: refs.map((r) => r.browseName.name) };
  return refs;
}
async function child(nodeId, path, name) {
  const ref = (await browse(nodeId, path)).find((r) => r.browseName.name === name);
  if (!ref) fail(`browse ${path}: no child ${ns}:${name} (found ${browsed[path].children})`);
  return ref.nodeId;
}
const root = await child("ns=0;i=85", "Objects", "plcbridge");
async function variables(kind, name) {
  const folder = await child(await child(root, "Objects/plcbridge", kind), `Objects/plcbridge/${kind}`, name);
  const refs = await browse(folder, `${kind}/${name}`);
  return Object.fromEntries(refs.map((r) => [r.browseName.name, {
    nodeId: r.nodeId.toString(), nodeClass: NodeClass[r.nodeClass],
  }]));
}
const model = await variables("Models", args.model);
const device = await variables("Devices", args.device);

const all = [...Object.values(model), ...Object.values(device)];
const attributes = [AttributeIds.Value, AttributeIds.DataType, AttributeIds.AccessLevel,
  AttributeIds.UserAccessLevel];
const values = await step("read", () => session.read(
  all.flatMap((v) => attributes.map((attributeId) => ({ nodeId: v.nodeId, attributeId }))), 0));
const typeIds = all.map((_, i) => values[i * 4 + 1].value.value);
const typeNames = await step("read DataType names", () => session.read(
  typeIds.map((nodeId) => ({ nodeId, attributeId: AttributeIds.BrowseName }))));
all.forEach((v, i) => {
  const [value, , access, userAccess] = values.slice(i * 4, i * 4 + 4);
  Object.assign(v, describeValue(value), {
    dataType: typeNames[i].value.value?.name ?? null,
    dataTypeId: typeIds[i]?.toString() ?? null,
    accessLevel: access.value.value,
    userAccessLevel: userAccess.value.value,
  });
});

let subscription = null;
if (args["subscribe-seconds"] !== undefined) {
  const changes = [];
  const wanted = Number(args["subscribe-count"] ?? Infinity);
  const sub = await step("create subscription", () => session.createSubscription2({
    requestedPublishingInterval: 50, requestedLifetimeCount: 600, requestedMaxKeepAliveCount: 20,
    maxNotificationsPerPublish: 0, publishingEnabled: true, priority: 0,
  }));
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  const item = ClientMonitoredItem.create(sub, { nodeId: model.Score.nodeId, attributeId: AttributeIds.Value },
    { samplingInterval: 0, queueSize: 100, discardOldest: false }, TimestampsToReturn.Both);
  item.on("changed", (dv) => {
    changes.push(describeValue(dv));
    console.error(`CHANGE ${changes.length}`);
    if (changes.length >= wanted) done();
  });
  await step("monitor Score", () => new Promise((resolve, reject) => {
    item.once("initialized", resolve);
    item.once("err", (message) => reject(new Error(message)));
  }));
  console.error("SUBSCRIBED");
  const timer = setTimeout(done, Number(args["subscribe-seconds"]) * 1000);
  await finished;
  clearTimeout(timer);
  await step("delete subscription", () => sub.terminate());
  subscription = { changes };
}

let write = null;
if (args["write-test"]) {
  const status = await step("write", () => session.write({
    nodeId: model.Score.nodeId,
    attributeId: AttributeIds.Value,
    value: { value: { dataType: DataType.Double, value: 12345.5 } },
  }));
  const after = await step("read after write", () => session.read({
    nodeId: model.Score.nodeId, attributeId: AttributeIds.Value }));
  write = { status: status.name, after: describeValue(after) };
}

await step("close session", () => session.close());
await step("disconnect", () => client.disconnect());
process.stdout.write(`${JSON.stringify({
  endpoint: args.endpoint, securityPolicy: args.policy, securityMode: args.mode,
  user: args.user ?? null, namespaceIndex: ns, browsed, model, device, subscription, write,
})}\n`);
process.exit(0);
