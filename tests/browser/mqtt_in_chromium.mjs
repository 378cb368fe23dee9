// MQTT.js (its browser bundle) in headless Chromium against Quay's WebSocket
// listeners: one client over ws:// (MQTT 3.1.1), one over wss:// (MQTT 5.0). Each
// subscribes to browser/to-<name> and announces itself on browser/ready/<name>; the
// first message it gets (from the test's TCP client, sent once both are ready) makes
// it publish to the other. Each waits for `expect` messages; the script prints one
// JSON line with what each got.
//
// usage: node mqtt_in_chromium.mjs <ws port> <wss port> <expect per client>
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM); the development CA is not
// in its trust store, so it runs with --ignore-certificate-errors (on loopback only).

import { chromium } from "playwright-core";
import { fileURLToPath } from "node:url";
import path from "node:path";

const [wsPort, wssPort, expect] = process.argv.slice(2).map(Number);
const here = path.dirname(fileURLToPath(import.meta.url));
const bundle = path.join(here, "node_modules", "mqtt", "dist", "mqtt.min.js");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container: no user namespaces for Chromium's sandbox.
  args: ["--no-sandbox", "--ignore-certificate-errors"],
  timeout: 60_000,
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  await page.setContent("<!doctype html><title>quay</title>");
  await page.addScriptTag({ path: bundle });
  const report = await page.evaluate(
    async ({ wsPort, wssPort, expect }) => {
      const run = (name, url, protocolVersion, other) =>
        new Promise((resolve, reject) => {
          const got = [];
          const client = mqtt.connect(url, {
            protocolVersion,
            clientId: `browser-${name}`,
            reconnectPeriod: 0,
            connectTimeout: 10_000,
          });
          const timer = setTimeout(() => {
            client.end(true);
            resolve({ name, got, timedOut: true });
          }, 20_000);
          client.on("error", (e) => {
            clearTimeout(timer);
            reject(new Error(`${name}: ${e.message}`));
          });
          client.on("message", (topic, payload) => {
            got.push({ topic, payload: payload.toString() });
            if (got.length === 1) {
              client.publish(`browser/to-${other}`, `hello-from-${name}`, { qos: 1 });
            }
            if (got.length >= expect) {
              clearTimeout(timer);
              client.end(false, {}, () => resolve({ name, got, timedOut: false }));
            }
          });
          client.on("connect", async () => {
            await client.subscribeAsync(`browser/to-${name}`, { qos: 1 });
            await client.publishAsync(`browser/ready/${name}`, "ready", { qos: 1 });
          });
        });
      const results = await Promise.all([
        run("ws", `ws://127.0.0.1:${wsPort}/mqtt`, 4, "wss"),
        run("wss", `wss://127.0.0.1:${wssPort}/mqtt`, 5, "ws"),
      ]);
      return Object.fromEntries(results.map((r) => [r.name, r]));
    },
    { wsPort, wssPort, expect },
  );
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}
