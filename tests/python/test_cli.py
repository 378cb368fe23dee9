"""The EMQX-style commands: emqx_ctl status/clients, emqx start/ping/stop, config errors."""

import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import CONFIG, port_accepts
from helpers import V311, V5, connected, unique_id, wait_until


def run(args, env, timeout_s=60):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)


def ctl_ready(broker):
    """The MQTT port accepts a moment before the control socket exists; wait for both."""
    assert wait_until(lambda: broker.ctl("ping").returncode == 0, 10), "emqx_ctl cannot reach the node"
    return broker


@pytest.fixture
def node(broker):
    return ctl_ready(broker)


def test_ctl_status(node):
    r = node.ctl("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Node 'emqx@127.0.0.1' is started"
    assert re.fullmatch(r"quay \S+ is running", lines[1]), lines


def test_ctl_status_when_node_is_down(broker_factory):
    b = broker_factory(start=False)
    r = b.ctl("status")
    assert r.returncode != 0
    assert "not responding" in (r.stdout + r.stderr)


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_ctl_clients_list_and_kick(node, protocol):
    cid = unique_id("kickme")
    c = connected(node.port, cid, protocol=protocol)
    bystander = connected(node.port, unique_id("stay"))
    try:
        listed = node.ctl("clients", "list")
        assert listed.returncode == 0
        assert f"Client({cid}," in listed.stdout, listed.stdout
        assert f"Client({bystander.client_id}," in listed.stdout

        kicked = node.ctl("clients", "kick", cid)
        assert kicked.returncode == 0, kicked.stdout + kicked.stderr
        assert kicked.stdout.strip() == "ok"
        assert c.wait_disconnect(timeout_s=5), "kicked client still connected"
        if protocol == V5:
            reason, _ = c.disconnects[0]
            assert reason == 0x98, f"expected DISCONNECT Administrative action (0x98), got {reason}"
        assert wait_until(lambda: f"Client({cid}," not in node.ctl("clients", "list").stdout, 5)
        assert f"Client({bystander.client_id}," in node.ctl("clients", "list").stdout
        assert bystander.disconnects == []
    finally:
        c.stop()
        bystander.disconnect()


def test_ctl_kick_unknown_client(node):
    r = node.ctl("clients", "kick", "no-such-client")
    assert r.returncode != 0
    assert "Not Found" in r.stdout


def test_ctl_unknown_command_prints_usage(node):
    r = node.ctl("frobnicate")
    assert r.returncode != 0
    assert "Usage" in r.stdout and "clients list" in r.stdout


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie left for init still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_emqx_start_ping_stop(broker_factory):
    b = broker_factory(start=False)
    env = b.env()
    pid_file = b.data_dir / "emqx.pid"
    pid = None
    try:
        started = run([b.emqx, "--config", str(CONFIG), "start"], env, timeout_s=130)
        assert started.returncode == 0, started.stdout + started.stderr
        assert port_accepts(b.port), "emqx start returned before the listener accepts"
        assert pid_file.exists()
        pid = int(pid_file.read_text().strip())
        assert _pid_alive(pid)

        ping = run([b.emqx, "--config", str(CONFIG), "ping"], env)
        assert ping.returncode == 0 and ping.stdout.strip() == "pong", ping

        c = connected(b.port)
        c.disconnect()

        stopped = run([b.emqx, "--config", str(CONFIG), "stop"], env, timeout_s=70)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert wait_until(lambda: not _pid_alive(pid), 10), f"pid {pid} still alive after emqx stop"
        assert not port_accepts(b.port)
        ping = run([b.emqx, "--config", str(CONFIG), "ping"], env)
        assert ping.returncode != 0
        assert "not responding" in ping.stderr
    finally:
        if pid is None and pid_file.exists():
            pid = int(pid_file.read_text().strip() or 0) or None
        if pid is not None and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_emqx_start_twice_refused(broker_factory):
    b = broker_factory(start=False)
    env = b.env()
    pid_file = b.data_dir / "emqx.pid"
    try:
        assert run([b.emqx, "--config", str(CONFIG), "start"], env, timeout_s=130).returncode == 0
        again = run([b.emqx, "--config", str(CONFIG), "start"], env, timeout_s=130)
        assert again.returncode != 0
        assert "already running" in again.stderr
    finally:
        run([b.emqx, "--config", str(CONFIG), "stop"], env, timeout_s=70)
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("bad_line", ["foo.bar = 1", "mqtt.max_packet_size = lots", "zone.external.retry_interval = soon"])
def test_bad_config_line_names_file_and_line(broker_factory, bad_line):
    b = broker_factory(start=False)
    release = b.root / "release"
    shutil.copytree(CONFIG.parent, release / "etc")
    conf = release / "etc" / "emqx.conf"
    text = conf.read_text()
    if text and not text.endswith("\n"):
        text += "\n"
    text += bad_line + "\n"
    conf.write_text(text)
    line_no = len(text.splitlines())

    r = run([b.emqx, "foreground", "--config", str(conf)], b.env(), timeout_s=30)
    assert r.returncode != 0, f"started with a bad line: {r.stdout} {r.stderr}"
    assert f"emqx.conf:{line_no}" in r.stderr, r.stderr
    assert not port_accepts(b.port)


def test_env_override_with_unknown_key_is_an_error(broker_factory):
    b = broker_factory({"mqtt.no_such_key": "1"}, start=False)
    r = run([b.emqx, "--config", str(CONFIG), "foreground"], b.env(), timeout_s=30)
    assert r.returncode != 0
    assert "EMQX_MQTT__NO_SUCH_KEY" in r.stderr, r.stderr


def test_ctl_plugins_surface_and_errors(node):
    """`plugins list` lists every known plugin with EMQX's line format; a name the broker
    does not know is refused in EMQX's words, and nothing is recorded for it."""
    r = node.ctl("plugins", "list")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        assert re.fullmatch(r"Plugin\(emqx_\w+, version=\S+, description=.+, active=(true|false)\)", line), line
    for verb, word in [("load", "Load"), ("unload", "Unload"), ("reload", "Reload")]:
        r = node.ctl("plugins", verb, "emqx_no_such_plugin")
        assert r.returncode == 1
        assert r.stdout == f"{word} plugin emqx_no_such_plugin error: not_found\n", r.stdout
    assert not (node.data_dir / "loaded_plugins").exists()
    r = node.ctl("plugins", "frobnicate")
    assert r.returncode == 1 and "plugins load <Plugin>" in r.stdout, r.stdout
