// MQTT.js (tests/browser/node_modules, pinned by its package-lock.json) logging in with
// MQTT 5 enhanced authentication, SCRAM-SHA-256 (RFC 5802/7677), the client side
// computed here with Node's crypto. Then it subscribes to `<user>/t`, publishes there and
// waits for its own message. Prints one JSON line: what happened. Bounded: gives up
// after 10 s.
//
//   node mqttjs_scram.mjs PORT USERNAME PASSWORD
import { createRequire } from "node:module";
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "browser", "package.json"));
const mqtt = require("mqtt");

const [port, username, password] = process.argv.slice(2);
const METHOD = "SCRAM-SHA-256";
const done = (result) => {
  console.log(JSON.stringify(result));
  process.exit(0);
};
setTimeout(() => done({ error: "timed out" }), 10_000).unref();

const hmac = (key, text) => createHmac("sha256", key).update(text).digest();
const sha256 = (data) => createHash("sha256").update(data).digest();
const saslName = (n) => n.replaceAll("=", "=3D").replaceAll(",", "=2C");

const clientNonce = randomBytes(18).toString("base64");
const clientFirstBare = `n=${saslName(username)},r=${clientNonce}`;
let expectedServerSignature = null;

const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
  protocolVersion: 5,
  clientId: `mqttjs-scram-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 8000,
  properties: {
    authenticationMethod: METHOD,
    authenticationData: Buffer.from(`n,,${clientFirstBare}`),
  },
});

client.handleAuth = (packet, callback) => {
  const serverFirst = packet.properties.authenticationData.toString();
  const attrs = Object.fromEntries(serverFirst.split(",").map((a) => [a[0], a.slice(2)]));
  if (!attrs.r.startsWith(clientNonce)) {
    callback(new Error("server nonce does not extend ours"));
    return;
  }
  const salted = pbkdf2Sync(password, Buffer.from(attrs.s, "base64"), Number(attrs.i), 32, "sha256");
  const clientKey = hmac(salted, "Client Key");
  const storedKey = sha256(clientKey);
  const withoutProof = `c=biws,r=${attrs.r}`;
  const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
  const signature = hmac(storedKey, authMessage);
  const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]));
  expectedServerSignature = hmac(hmac(salted, "Server Key"), authMessage);
  callback(null, {
    cmd: "auth",
    reasonCode: 0x18,
    properties: {
      authenticationMethod: METHOD,
      authenticationData: Buffer.from(`${withoutProof},p=${proof.toString("base64")}`),
    },
  });
};

client.on("connect", (connack) => {
  const props = connack.properties || {};
  const serverFinal = props.authenticationData ? props.authenticationData.toString() : "";
  const got = serverFinal.startsWith("v=") ? Buffer.from(serverFinal.slice(2), "base64") : Buffer.alloc(0);
  const serverVerified =
    expectedServerSignature !== null &&
    got.length === expectedServerSignature.length &&
    timingSafeEqual(got, expectedServerSignature);
  const topic = `${username}/t`;
  client.subscribe(topic, { qos: 1 }, (err, granted) => {
    if (err) return done({ connected: true, error: String(err) });
    const code = granted[0].qos;
    if (code > 2) return done({ connected: true, method: props.authenticationMethod, serverVerified, suback: code });
    client.on("message", (t, payload) =>
      done({ connected: true, method: props.authenticationMethod, serverVerified, suback: code, message: [t, payload.toString()] }),
    );
    client.publish(topic, "hello over scram", { qos: 1 });
  });
});

client.on("error", (err) => done({ connected: false, error: err.message, code: err.code ?? null }));
client.on("close", () => done({ connected: false, error: "closed" }));
