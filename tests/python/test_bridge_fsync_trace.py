"""The bridge cache's half of ack-after-fsync, at the syscall level (issue 11): a QoS 1
PUBLISH that a bridge's forward matches is answered with PUBACK only after an `msync`
of the cache's segment that started after the PUBLISH was read. The broker runs under
`strace -f`; the remote is away, so every record stays in the cache. With
`queue.durable = off` no such msync precedes the PUBACKs: the checker can fail."""

import shutil

import pytest

import rawmqtt as raw
from conftest import REPO, free_port
from fsync_check import READS, WRITES, parse_trace
from helpers import unique_id
from test_fsync_trace import STRACE_FLAGS, Client, TracedBroker

N = 20


class TracedBridged(TracedBroker):
    """Loads the bridge plugin at boot (data/loaded_plugins): no emqx_ctl traffic in
    the trace."""

    def __init__(self, bridge_conf):
        super().__init__()
        shutil.copytree(REPO / "etc", self.root / "etc")
        conf = bridge_conf + f"bridge.mqtt.up.queue.replayq_dir = {self.root}/q/\n"
        (self.root / "etc" / "plugins" / "emqx_bridge_mqtt.conf").write_text(conf)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "loaded_plugins").write_text("{emqx_bridge_mqtt, true}.\n")

    def argv(self):
        flags = list(STRACE_FLAGS)
        i = flags.index("-e")
        flags[i + 1] += ",msync"
        # RocksDB's OPTIONS file is written whole at open (about 70 KB here).
        flags[flags.index("-s") + 1] = str(1 << 20)
        return ["strace", *flags, "-o", str(self.trace_path), "--", self.emqx, "--config", str(self.root / "etc" / "emqx.conf"), "foreground"]


def run(durable):
    conf = f"""
bridge.mqtt.up.address = 127.0.0.1:{free_port()}
bridge.mqtt.up.forwards = sensor/#
bridge.mqtt.up.reconnect_interval = 60s
bridge.mqtt.up.queue.durable = {'on' if durable else 'off'}
"""
    b = TracedBridged(conf)
    try:
        b.start()
        c = Client(b.port, timeout_s=10)
        assert c.connect(unique_id("bft"), clean=True, timeout_s=10)["rc"] == 0
        sent = []
        for i in range(N):
            packet = raw.publish("sensor/trace", f"bridged-{i:03d}", qos=1, pid=1 + i)
            c.send(packet)
            c.expect(raw.PUBACK, 1 + i)
            sent.append((packet, raw.ack(raw.PUBACK, 1 + i)))
        c.send(raw.disconnect())
        c.close()
        assert b.stop() == 0
        calls = parse_trace(b.trace_path.read_text(errors="replace").splitlines())
    finally:
        b.cleanup()
    verdicts = []
    for packet, puback in sent:
        read = next(x for x in calls if x.name in READS and packet in x.data)
        write = next(x for x in calls if x.name in WRITES and x.exit > read.exit and puback in x.data)
        synced = any(x.name == "msync" and x.ret == 0 and x.entry > read.exit and x.exit < write.entry for x in calls)
        verdicts.append(synced)
    return verdicts


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "durable_off"])
def test_a_bridged_puback_leaves_after_the_cache_msync(durable):
    verdicts = run(durable)
    if durable:
        assert all(verdicts), f"{verdicts.count(False)} of {N} PUBACKs had no msync before them"
    else:
        assert not any(verdicts), "with queue.durable = off nothing waits for an msync"
