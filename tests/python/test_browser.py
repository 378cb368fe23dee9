"""MQTT.js (npm `mqtt`, its browser bundle) in headless Chromium (Debian `chromium`,
driven by `playwright-core`) over ws:// and wss://: each browser client subscribes,
publishes to the other, and gets a message a plain TCP client publishes once it
announces itself. `tests/browser/mqtt_in_chromium.mjs` runs the page; tools/test.sh
installs chromium and runs `npm ci` there.
"""

import json
import shutil
import subprocess
from pathlib import Path

from helpers import connected, wait_until

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"


def test_mqtt_js_in_chromium_over_ws_and_wss(broker):
    assert shutil.which("node"), "node is not installed (tools/test.sh installs it)"
    assert Path("/usr/bin/chromium").exists(), "chromium is not installed (tools/test.sh installs it)"
    assert (BROWSER_DIR / "node_modules" / "mqtt").is_dir(), "run `npm ci` in tests/browser (tools/test.sh does)"
    tcp = connected(broker.port)
    tcp.subscribe("browser/#", qos=1)
    page = subprocess.Popen(
        ["node", str(BROWSER_DIR / "mqtt_in_chromium.mjs"), str(broker.ws_port), str(broker.wss_port), "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Once both browser clients are subscribed, a TCP client publishes to each.
        ready = lambda: {m.topic for m in tcp.messages} >= {"browser/ready/ws", "browser/ready/wss"}
        assert wait_until(ready, 60), f"browser clients not ready; got {[m.topic for m in tcp.messages]}"
        for name in ("ws", "wss"):
            tcp.publish(f"browser/to-{name}", f"from-tcp-to-{name}".encode(), qos=1)
        out, err = page.communicate(timeout=60)
    finally:
        page.kill()
        tcp.disconnect()
    assert page.returncode == 0, f"exit {page.returncode}\nstdout: {out}\nstderr: {err[-4000:]}"
    report = json.loads(out.strip().splitlines()[-1])
    for name, other in (("ws", "wss"), ("wss", "ws")):
        got = report[name]
        assert not got["timedOut"], report
        assert sorted(m["payload"] for m in got["got"]) == sorted([f"hello-from-{other}", f"from-tcp-to-{name}"]), report
        assert {m["topic"] for m in got["got"]} == {f"browser/to-{name}"}
    # What the browsers published reached the TCP client too.
    payloads = {m.payload for m in tcp.messages}
    assert {b"hello-from-ws", b"hello-from-wss"} <= payloads
