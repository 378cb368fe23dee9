"""Fixtures that run the real Quay binary (`emqx foreground`) on free loopback ports.

Every broker gets its own short temp root (`/tmp/quay-XXXX`: the control socket lives in
the data dir and Unix socket paths are limited to ~108 bytes), is stopped at teardown and
its root removed. When a test fails, the log of every broker it used is attached to the
failure report.

Run from the repo root (needs `pip install -r tests/python/requirements.txt` and the Debian
package mosquitto-clients):

    QUAY_BIN_DIR=/root/.cache/quay-target/release python3 -m pytest -q -p no:cacheprovider tests/python
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("QUAY_BIN_DIR") or "/root/.cache/quay-target/release")
CONFIG = Path(os.environ.get("QUAY_CONFIG") or REPO / "etc" / "emqx.conf")
HOST = "127.0.0.1"

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
LOG_TAIL_BYTES = 20_000

_handed_out_ports = set()


def free_port():
    """A loopback port nobody listens on now, and not handed out earlier in this run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("no free port found in 100 tries")


def env_key(dotted):
    """`zone.external.max_mqueue_len` -> `EMQX_ZONE__EXTERNAL__MAX_MQUEUE_LEN`."""
    return "EMQX_" + "__".join(part.upper() for part in dotted.split("."))


def port_accepts(port, timeout_s=0.2):
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class Broker:
    """One Quay node: a temp root with data/ and log/, two listener ports, config overrides.

    `start`/`stop` (SIGTERM)/`kill` (SIGKILL)/`restart` keep the data dir and the ports, so
    clients reconnect to the same address and the node reopens the same store.
    """

    def __init__(self, overrides=None):
        self.root = Path(tempfile.mkdtemp(prefix="quay-", dir="/tmp"))
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "log"
        self.console_log = self.root / "console.log"
        self.port = free_port()
        self.internal_port = free_port()
        self.ssl_port = free_port()
        self.ws_port = free_port()
        self.wss_port = free_port()
        self.overrides = dict(overrides or {})
        self.proc = None
        self.starts = 0

    @property
    def emqx(self):
        return str(BIN_DIR / "emqx")

    @property
    def emqx_ctl(self):
        return str(BIN_DIR / "emqx_ctl")

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMQX_")}
        env.update(
            {
                "EMQX_LISTENER__TCP__EXTERNAL": f"{HOST}:{self.port}",
                "EMQX_LISTENER__TCP__INTERNAL": f"{HOST}:{self.internal_port}",
                "EMQX_LISTENER__SSL__EXTERNAL": f"{HOST}:{self.ssl_port}",
                "EMQX_LISTENER__WS__EXTERNAL": f"{HOST}:{self.ws_port}",
                "EMQX_LISTENER__WSS__EXTERNAL": f"{HOST}:{self.wss_port}",
                "EMQX_NODE__DATA_DIR": str(self.data_dir),
                "EMQX_LOG__DIR": str(self.log_dir),
                "EMQX_LOG__LEVEL": "info",
            }
        )
        for key, value in self.overrides.items():
            env[env_key(key)] = str(value)
        return env

    def argv(self):
        """The command that runs the node (a subclass may wrap it, e.g. in strace)."""
        return [self.emqx, "--config", str(CONFIG), "foreground"]

    def start(self, timeout_s=START_TIMEOUT_S):
        assert self.proc is None, "broker already running"
        assert Path(self.emqx).exists(), f"{self.emqx} not built (set QUAY_BIN_DIR)"
        self.starts += 1
        with open(self.console_log, "ab") as out:
            out.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                env=self.env(),
                cwd=str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise AssertionError(f"broker exited with {code} during start:\n{self.log_tail()}")
            if port_accepts(self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"broker did not accept on {self.port} within {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s=STOP_TIMEOUT_S):
        """Graceful stop (SIGTERM). Returns the exit code; SIGKILLs and fails if it hangs."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"broker ignored SIGTERM for {timeout_s}s")

    def kill(self):
        """Crash: SIGKILL, no chance to flush anything."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait(timeout=10)

    def restart(self, crash=False):
        if crash:
            self.kill()
        else:
            code = self.stop()
            assert code == 0, f"graceful stop exited with {code}"
        return self.start()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def ctl(self, *args, timeout_s=30):
        return subprocess.run(
            [self.emqx_ctl, *args],
            env=self.env(),
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def db_size(self):
        """Bytes in all files under data/db (RocksDB files, WAL included)."""
        db = self.data_dir / "db"
        assert db.is_dir(), f"{db} does not exist"
        total = 0
        for dirpath, _, files in os.walk(db):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except FileNotFoundError:
                    pass  # compaction removed it while we walked
        return total

    def log_tail(self):
        parts = []
        paths = [self.console_log]
        if self.log_dir.is_dir():
            paths += sorted(p for p in self.log_dir.rglob("*") if p.is_file())
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            parts.append(f"--- {path} (last {LOG_TAIL_BYTES} bytes) ---\n")
            parts.append(data[-LOG_TAIL_BYTES:].decode("utf-8", "replace"))
        return "".join(parts)

    def cleanup(self):
        try:
            if self.proc is not None:
                try:
                    self.stop(timeout_s=15)
                except AssertionError:
                    pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


_live_brokers = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for broker in list(_live_brokers):
            report.sections.append((f"quay broker log (port {broker.port})", broker.log_tail()))


@pytest.fixture
def broker_factory():
    """`make(overrides={...}, start=True)` -> a Broker; all are stopped and removed after the test."""
    made = []

    def make(overrides=None, start=True):
        b = Broker(overrides)
        made.append(b)
        _live_brokers.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.cleanup()
        _live_brokers.remove(b)


@pytest.fixture
def broker(broker_factory):
    """A running broker with the default configuration, fresh for this test."""
    return broker_factory()


@pytest.fixture(scope="module")
def shared_broker():
    """One default broker for a module's stateless tests (each uses its own topics)."""
    b = Broker()
    _live_brokers.append(b)
    b.start()
    yield b
    b.cleanup()
    _live_brokers.remove(b)
