// A small node-opcua server: the independent peer plcbridge's OPC UA client is tested against.
//
//   node server.mjs --port P --pki DIR --cert CERT.pem --key KEY.pem [--user NAME:PASSWORD]
//                   [--user-pki DIR]
//
// Binds 127.0.0.1:P only, offers security None and Basic256Sha256 / Aes128_Sha256_RsaOaep /
// Aes256_Sha256_RsaPss in Sign and SignAndEncrypt, anonymous and (with --user) one
// username/password. Client certificates are accepted automatically (test only: a real
// server keeps them in pki/rejected until an operator trusts them). Prints
// "READY port=<port> ns=<namespace index>" on stdout once it accepts connections.
// Certificate user identities (X509IdentityToken) are checked by node-opcua against the
// user PKI (--user-pki DIR; trusted ones in DIR/trusted/certs): unknown ones are refused.
//
// Variables (namespace urn:plcbridge:peer):
//   Pump.Pressure Double 4.25, Pump.Flow Int32 12, Pump.Running Boolean true,
//   Pump.Name String "P-101", Pump.Counter Int32 +1 every 50 ms (subscriptions see changes),
//   Pump.Level Double AnalogItem, EURange 0..200, 0, 1, 2, ... 99, 0, ... every 20 ms
//   (percent deadbands are relative to that range), Bridge.Score Float writable,
//   Bridge.ReadOnly Double read-only.
import { parseArgs } from "node:util";
import {
  AccessLevelFlag,
  DataType,
  MessageSecurityMode,
  OPCUACertificateManager,
  OPCUAServer,
  SecurityPolicy,
  Variant,
} from "node-opcua";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    pki: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    user: { type: "string" },
    "user-pki": { type: "string" },
  },
});
for (const key of ["port", "pki", "cert", "key"]) {
  if (!args[key]) {
    console.error(`missing --${key}`);
    process.exit(2);
  }
}
const [userName, userPassword] = args.user ? args.user.split(":", 2) : [null, null];
const applicationUri = "urn:plcbridge:peer";

const serverCertificateManager = new OPCUACertificateManager({
  rootFolder: args.pki,
  automaticallyAcceptUnknownCertificate: true,
});

const server = new OPCUAServer({
  port: Number(args.port),
  host: "127.0.0.1",
  hostname: "127.0.0.1",
  certificateFile: args.cert,
  privateKeyFile: args.key,
  serverCertificateManager,
  serverInfo: { applicationUri, productUri: "plcbridge-opcua-peer" },
  securityPolicies: [
    SecurityPolicy.None,
    SecurityPolicy.Basic256Sha256,
    SecurityPolicy.Aes128_Sha256_RsaOaep,
    SecurityPolicy.Aes256_Sha256_RsaPss,
  ],
  securityModes: [
    MessageSecurityMode.None,
    MessageSecurityMode.Sign,
    MessageSecurityMode.SignAndEncrypt,
  ],
  allowAnonymous: true,
  userCertificateManager: args["user-pki"]
    ? new OPCUACertificateManager({ rootFolder: args["user-pki"], automaticallyAcceptUnknownCertificate: false })
    : undefined,
  userManager: {
    isValidUser: (name, password) => userName !== null && name === userName && password === userPassword,
  },
});

await server.initialize();
const addressSpace = server.engine.addressSpace;
const namespace = addressSpace.registerNamespace(applicationUri);
const pump = namespace.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Pump" });

const readOnly = AccessLevelFlag.CurrentRead;
const readWrite = AccessLevelFlag.CurrentRead | AccessLevelFlag.CurrentWrite;
function variable(name, dataType, value, accessLevel = readOnly) {
  return namespace.addVariable({
    componentOf: pump,
    nodeId: `s=${name}`,
    browseName: name,
    dataType,
    accessLevel,
    userAccessLevel: accessLevel,
    value: new Variant({ dataType: DataType[dataType], value }),
  });
}
variable("Pump.Pressure", "Double", 4.25);
variable("Pump.Flow", "Int32", 12);
variable("Pump.Running", "Boolean", true);
variable("Pump.Name", "String", "P-101");
variable("Bridge.Score", "Float", 0, readWrite);
variable("Bridge.ReadOnly", "Double", 0);
const counter = variable("Pump.Counter", "Int32", 0);
const level = namespace.addAnalogDataItem({
  componentOf: pump,
  nodeId: "s=Pump.Level",
  browseName: "Pump.Level",
  dataType: "Double",
  engineeringUnitsRange: { low: 0, high: 200 },
  value: new Variant({ dataType: DataType.Double, value: 0 }),
});
let count = 0;
const ticker = setInterval(() => {
  count += 1;
  counter.setValueFromSource(new Variant({ dataType: DataType.Int32, value: count }));
}, 50);
let ramp = 0;
const rampTicker = setInterval(() => {
  ramp = (ramp + 1) % 100;
  level.setValueFromSource(new Variant({ dataType: DataType.Double, value: ramp }));
}, 20);

await server.start();
console.log(`READY port=${server.endpoints[0].port} ns=${namespace.index}`);

async function stop() {
  clearInterval(ticker);
  clearInterval(rampTicker);
  await server.shutdown(0);
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
