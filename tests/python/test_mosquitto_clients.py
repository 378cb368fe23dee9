"""Interoperability with the mosquitto command-line clients (Debian: mosquitto-clients)."""

import queue
import shutil
import subprocess
import threading
import time

import pytest

from helpers import unique_id

TIMEOUT_S = 15


def require(tool):
    path = shutil.which(tool)
    assert path, f"{tool} not installed (apt-get install -y mosquitto-clients)"
    return path


class LineReader:
    """Reads a process's stdout on a thread so the test can wait for a line with a timeout.

    mosquitto_sub block-buffers a pipe; it runs under `stdbuf -oL` so lines arrive at once."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = queue.Queue()
        self.all = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, needle, timeout_s=TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.all.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not seen within {timeout_s}s; output so far: {self.all}")

    def rest(self, timeout_s=TIMEOUT_S):
        """Everything after the process exits (bounded)."""
        self.proc.wait(timeout=timeout_s)
        time.sleep(0.1)
        while not self.lines.empty():
            self.all.append(self.lines.get_nowait())
        return self.all


def mosquitto_pub(port, *args):
    return subprocess.run(
        [require("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_sub_receives_qos_0_1_2(shared_broker, version):
    base = f"t{unique_id('')}"
    sub = subprocess.Popen(
        ["stdbuf", "-oL", require("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(shared_broker.port),
         "-C", "3", "-t", f"{base}/#", "-q", "1", "-V", version, "-v", "-d", "-i", unique_id("msub")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out = LineReader(sub)
        out.wait_for("received SUBACK")
        for qos in (0, 1, 2):
            r = mosquitto_pub(shared_broker.port, "-t", f"{base}/q{qos}", "-m", f"payload-{qos}",
                              "-q", str(qos), "-V", version)
            assert r.returncode == 0, f"mosquitto_pub -q {qos} failed: {r.stdout} {r.stderr}"
        lines = out.rest()
        assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}: {lines}"
        messages = [l for l in lines if l.startswith(f"{base}/")]
        assert messages == [f"{base}/q{q} payload-{q}" for q in (0, 1, 2)]
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(timeout=5)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_retained(shared_broker, version):
    topic = f"mret/{unique_id('r')}"
    r = mosquitto_pub(shared_broker.port, "-r", "-t", topic, "-m", "kept by the broker", "-q", "1", "-V", version)
    assert r.returncode == 0, r.stderr
    sub = subprocess.run(
        [require("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(shared_broker.port), "-t", topic,
         "-C", "1", "-W", "10", "-v", "-V", version, "--retained-only"],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert sub.returncode == 0, f"no retained message: rc={sub.returncode} {sub.stdout!r} {sub.stderr!r}"
    assert sub.stdout.splitlines() == [f"{topic} kept by the broker"]
    # Clear it with mosquitto_pub -r -n, then nothing retained is left.
    assert mosquitto_pub(shared_broker.port, "-r", "-n", "-t", topic, "-q", "1").returncode == 0
    empty = subprocess.run(
        [require("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(shared_broker.port), "-t", topic,
         "-C", "1", "-W", "2", "-v", "-V", version, "--retained-only"],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert empty.stdout == "", f"retained message not deleted: {empty.stdout!r}"


def test_mosquitto_pub_v5_properties_reach_v5_subscriber(shared_broker):
    topic = f"mprop/{unique_id('p')}"
    sub = subprocess.Popen(
        ["stdbuf", "-oL", require("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(shared_broker.port),
         "-t", topic, "-C", "1", "-V", "mqttv5", "-d", "-F", "%t|%p|%C|%P"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out = LineReader(sub)
        out.wait_for("received SUBACK")
        r = mosquitto_pub(shared_broker.port, "-t", topic, "-m", "body", "-q", "1", "-V", "mqttv5",
                          "-D", "publish", "content-type", "text/plain",
                          "-D", "publish", "user-property", "k", "v")
        assert r.returncode == 0, r.stderr
        lines = out.rest()
        assert f"{topic}|body|text/plain|k:v" in lines, lines
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(timeout=5)
