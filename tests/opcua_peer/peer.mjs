// What client.mjs and events.mjs share: the connection options, failing with "error: ...",
// the hard timeout and the node-opcua client with its PKI and user identity.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  MessageSecurityMode,
  OPCUACertificateManager,
  OPCUAClient,
  SecurityPolicy,
  UserTokenType,
} from "node-opcua";

// parseArgs options for the endpoint, security and user.
export const CONNECTION_OPTIONS = {
  endpoint: { type: "string" },
  policy: { type: "string", default: "None" },
  mode: { type: "string", default: "None" },
  cert: { type: "string" },
  key: { type: "string" },
  pki: { type: "string" },
  "application-uri": { type: "string", default: "urn:plcbridge:client" },
  user: { type: "string" },
  "password-env": { type: "string" },
  "ns-uri": { type: "string" },
  model: { type: "string" },
  timeout: { type: "string", default: "20" },
};

export function fail(message, code = 1) {
  console.error(`error: ${message}`);
  process.exit(code);
}

// Unexpected rejections fail; node-opcua's console.log goes to stderr (stdout is the result);
// nothing within --timeout seconds exits 3; the required options are checked.
export function setUp(args, required) {
  process.on("unhandledRejection", (err) => fail(`unexpected: ${err?.stack ?? err}`));
  console.log = console.error;
  const timeout = Number(args.timeout);
  setTimeout(() => fail(`no result within ${timeout} s (hard timeout)`, 3), timeout * 1000);
  for (const key of required) {
    if (!args[key]) fail(`missing --${key}`, 2);
  }
}

// The client (server certificate checked against --pki, unknown ones rejected) and the
// identity to create the session with.
export function makeClient(args, applicationName) {
  const securityPolicy = SecurityPolicy[args.policy];
  const securityMode = MessageSecurityMode[args.mode];
  if (securityPolicy === undefined) fail(`unknown --policy ${args.policy}`, 2);
  if (securityMode === undefined) fail(`unknown --mode ${args.mode}`, 2);
  let identity = { type: UserTokenType.Anonymous };
  if (args.user) {
    const password = process.env[args["password-env"] ?? ""];
    if (password === undefined) fail("--user needs --password-env naming a set variable", 2);
    identity = { type: UserTokenType.UserName, userName: args.user, password };
  }
  const client = OPCUAClient.create({
    applicationName,
    applicationUri: args["application-uri"],
    securityPolicy,
    securityMode,
    certificateFile: args.cert,
    privateKeyFile: args.key,
    clientCertificateManager: new OPCUACertificateManager({
      rootFolder: args.pki ?? mkdtempSync(join(tmpdir(), "plcbridge-peer-pki-")),
      automaticallyAcceptUnknownCertificate: false,
      disableFileWatchers: true,
    }),
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 }, // fail, don't retry
    requestedSessionTimeout: 30000,
  });
  return { client, identity };
}
