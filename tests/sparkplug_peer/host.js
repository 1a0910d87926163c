// An independent Sparkplug B host for plcbridge's interop tests: mqtt.js for MQTT and Eclipse
// Tahu's sparkplug-payload for the protobuf payloads (no plcbridge code).
//   node host.js <port>
// Prints one JSON line per message received on spBv1.0/# (payload decoded by Tahu; 64-bit
// numbers as JSON numbers) and {"ready": true} once subscribed. Commands, one JSON line each on
// stdin: {"cmd": "rebirth", "group": G, "node": E} publishes NCMD Node Control/Rebirth;
// {"cmd": "state", "host": H, "online": bool} publishes the retained 3.0 STATE message.
"use strict";
const mqtt = require("mqtt");
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const readline = require("readline");

const port = Number(process.argv[2]);
const client = mqtt.connect({ host: "127.0.0.1", port, protocolVersion: 4, clean: true,
                              clientId: "tahu-peer-" + process.pid, reconnectPeriod: 200 });
// Tahu decodes 64-bit values as Long objects {low, high, unsigned}: print them as numbers.
const isLong = (v) => v !== null && typeof v === "object" && "low" in v && "high" in v && "unsigned" in v;
const out = (obj) => process.stdout.write(JSON.stringify(obj, (key, value) =>
  isLong(value) ? value.high * 4294967296 + (value.low >>> 0) : value) + "\n");

client.on("connect", () => {
  client.subscribe("spBv1.0/#", { qos: 1 }, (err) => out(err ? { error: String(err) } : { ready: true }));
});
client.on("message", (topic, message) => {
  if (topic.startsWith("spBv1.0/STATE/")) {
    out({ topic, state: message.toString() });
    return;
  }
  try {
    out({ topic, payload: sparkplug.decodePayload(message) });
  } catch (err) {
    out({ topic, error: String(err) });
  }
});
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "rebirth") {
    const payload = sparkplug.encodePayload({ timestamp: Date.now(), metrics: [
      { name: "Node Control/Rebirth", type: "Boolean", value: true }] });
    client.publish(`spBv1.0/${cmd.group}/NCMD/${cmd.node}`, payload, { qos: 0 }, () => out({ sent: "rebirth" }));
  } else if (cmd.cmd === "state") {
    const body = JSON.stringify({ online: cmd.online, timestamp: Date.now() });
    client.publish(`spBv1.0/STATE/${cmd.host}`, body, { qos: 1, retain: true }, () => out({ sent: "state" }));
  }
});
