#!/usr/bin/env python3
"""What authentication and the ACL cost, Quay and Mosquitto 2 side by side on loopback.

    cargo build --release -p quay -p quay-ctl -p quay-bench --bins
    python3 tools/bench/auth.py [--parts acl,connect] [--rounds 3]

Part `acl`: publish throughput with a 1,000-rule ACL against none, in one run.
  `quay-bench fanin` (8 QoS 0 publishers -> one `bench/#` subscriber, 2,000,000
  messages of 64 B, paced as in run.sh) and `quay-bench qos1` (4 QoS 1 publishers ->
  4 persistent subscribers, 400,000 messages of 256 B, durable PUBACK), each against
  - Quay without ACL rules (an empty acl_file: no `client.check_acl` hook at all),
  - Quay with the 1,000-rule acl.conf below and the ACL cache on (the default),
  - the same with `enable_acl_cache = off` (what the cache buys),
  - Mosquitto without an acl_file, and with the equivalent acl_file.
  The rules: 600 `{allow, {user, "user-N"}, pubsub, ["fleet/user-N/#"]}`, 398
  `{allow, all, publish, ["sensors/N/+/temp"]}`, then `{allow, all, pubsub,
  ["bench/#"]}` (the one the benchmark's anonymous clients match, 999th) and `{deny,
  all}`. Mosquitto's file says the same: its anonymous section holds the 398 topic
  lines and `topic readwrite bench/#`, then 600 `user` sections; it denies what no
  line allows.

Part `connect`: connection rate when every client logs in (`quay-bench connect`: 100
  users, CONNECT with user name and password, CONNACK, DISCONNECT, 32 at once):
  - Quay's built-in user store (emqx_auth_username) with sha256, bcrypt (cost 10) and
    pbkdf2,sha512,101,64 (the algorithm Mosquitto's password file uses),
  - Quay with emqx_auth_redis and emqx_auth_pgsql (pools of 8; sha256 passwords; the
    servers from tests/python/dbservers.py on loopback, pinned to the generator's core),
  - Mosquitto with a `password_file` made by `mosquitto_passwd -U` (PBKDF2-SHA512, 101
    iterations), and both brokers with anonymous clients as the baseline.

Each measurement starts a fresh broker pinned to BENCH_BROKER_CPU (default 0) and the
generator on BENCH_GEN_CPU (default 1), as run.sh does, with run.sh's limits (Quay:
max_mqueue_len 0, max_inflight 128; Mosquitto: max_queued_messages 0, no persistence).
Configurations alternate within each round; the figures are medians over the rounds,
printed with every round's value so the spread shows. Bounded: every quay-bench run
has --time-limit-s, every wait a deadline; brokers and servers are stopped at the end.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procutil import HOST, free_port, stop, wait_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/quay-target"))
EMQX = TARGET / "release" / "emqx"
BENCH = TARGET / "release" / "quay-bench"
BROKER_CPU = os.environ.get("BENCH_BROKER_CPU", "0")
GEN_CPU = os.environ.get("BENCH_GEN_CPU", "1")
TIME_LIMIT_S = 60
# Quay hashes the preloaded users when the plugin starts, before it listens: 100
# bcrypt hashes at cost 10 take seconds on one core.
START_LIMIT_S = 120

USERS = 100
PASSWORD = "bench-secret"
USER_PREFIX = "user-"
CONNECTIONS = 5000
# A bcrypt check at cost 10 takes tens of ms of CPU: fewer clients keep it within bounds.
BCRYPT_CONNECTIONS = 300
CONCURRENCY = 32


def log(*args):
    print("[auth-bench]", *args, file=sys.stderr, flush=True)


class Quay:
    """A fresh node on its own ports and data dir; `settings` are dotted keys (set through
    EMQX_* variables), `plugins` are written to data/loaded_plugins so they start before
    the listener accepts."""

    name = "quay"

    def __init__(self, settings=None, plugins=()):
        self.root = Path(tempfile.mkdtemp(prefix="quay-authbench-"))
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMQX_")}
        base = {
            "listener.tcp.external": f"{HOST}:{self.port}",
            "listener.tcp.internal": f"{HOST}:0",
            "listener.ssl.external": f"{HOST}:0",
            "listener.ws.external": f"{HOST}:0",
            "listener.wss.external": f"{HOST}:0",
            "node.data_dir": str(self.root / "data"),
            "log.dir": str(self.root / "log"),
            "zone.external.max_mqueue_len": "0",
            "zone.external.max_inflight": "128",
            "zone.external.max_awaiting_rel": "0",
        }
        base.update(settings or {})
        env.update({"EMQX_" + "__".join(p.upper() for p in k.split(".")): str(v) for k, v in base.items()})
        (self.root / "data").mkdir()
        if plugins:
            (self.root / "data" / "loaded_plugins").write_text("".join(f"{{{p}, true}}.\n" for p in plugins))
        self.console = self.root / "console.log"
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(
                ["taskset", "-c", BROKER_CPU, str(EMQX), "--config", str(ROOT / "etc/emqx.conf"), "foreground"],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            wait_port(self.port, self.proc, START_LIMIT_S)
        except RuntimeError:
            log(f"quay did not start; {self.console}:\n{self.console.read_text(errors='replace')[-3000:]}")
            stop(self.proc)
            raise

    def stop(self):
        stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


class Mosquitto:
    """Mosquitto 2 with run.sh's settings plus `extra` configuration lines."""

    name = "mosquitto"

    def __init__(self, extra=""):
        self.root = Path(tempfile.mkdtemp(prefix="mosq-authbench-"))
        self.port = free_port()
        conf = self.root / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {HOST}\n"
            "user root\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 128\n"
            "persistence false\n"
            f"log_dest file {self.root}/mosquitto.log\nlog_type error\nlog_type warning\n"
            + extra
        )
        binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
        self.proc = subprocess.Popen(
            ["taskset", "-c", BROKER_CPU, binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, START_LIMIT_S)

    def stop(self):
        stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


def bench(broker, scenario, *args):
    """One quay-bench run against `broker`; its figures as {metric: (value, unit, cpu µs/unit)}."""
    results = broker.root / "results.tsv"
    argv = ["taskset", "-c", GEN_CPU, str(BENCH), "--port", str(broker.port), "--broker-pid",
            str(broker.proc.pid), "--broker", broker.name, "--results", str(results),
            "--time-limit-s", str(TIME_LIMIT_S), scenario, *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=TIME_LIMIT_S * 3)
    sys.stderr.write(r.stdout)
    if r.returncode != 0:
        raise RuntimeError(f"quay-bench {scenario} on {broker.name} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    figures = {}
    for line in results.read_text().splitlines():
        f = line.split("\t")
        cpu = None if f[6] == "-" else float(f[6])
        figures[f[2]] = (float(f[3]), f[4], cpu, f[8])
    return figures


def measure(make, scenario, *args):
    broker = make()
    try:
        return bench(broker, scenario, *args)
    finally:
        broker.stop()


# ---- part acl ----

def acl_files(root):
    quay, mosq_anon, mosq_users = [], [], []
    for i in range(600):
        quay.append(f'{{allow, {{user, "user-{i}"}}, pubsub, ["fleet/user-{i}/#"]}}.')
        mosq_users.append(f"user user-{i}\ntopic readwrite fleet/user-{i}/#\n")
    for i in range(398):
        quay.append(f'{{allow, all, publish, ["sensors/{i}/+/temp"]}}.')
        mosq_anon.append(f"topic write sensors/{i}/+/temp\n")
    quay.append('{allow, all, pubsub, ["bench/#"]}.')
    quay.append("{deny, all}.")
    mosq_anon.append("topic readwrite bench/#\n")
    assert len(quay) == 1000
    (root / "acl.conf").write_text("%% tools/bench/auth.py: 1,000 rules\n" + "\n".join(quay) + "\n")
    (root / "empty.acl").write_text("%% no rules\n")
    (root / "mosquitto.acl").write_text("".join(mosq_anon) + "\n" + "".join(mosq_users))
    return root / "acl.conf", root / "empty.acl", root / "mosquitto.acl"


def acl_configs(root):
    rules, empty, mosq_acl = acl_files(root)
    return [
        ("quay, no ACL", lambda: Quay({"acl_file": empty})),
        ("quay, 1,000 rules, cache on", lambda: Quay({"acl_file": rules, "enable_acl_cache": "on"})),
        ("quay, 1,000 rules, cache off", lambda: Quay({"acl_file": rules, "enable_acl_cache": "off"})),
        ("mosquitto, no acl_file", lambda: Mosquitto("allow_anonymous true\n")),
        ("mosquitto, 1,000-line acl_file", lambda: Mosquitto(f"allow_anonymous true\nacl_file {mosq_acl}\n")),
    ]


ACL_SCENARIOS = [("fanin", "throughput"), ("qos1", "throughput")]


# ---- part connect ----

def sha256_hex(text):
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def user_settings(hash_name):
    s = {"allow_anonymous": "false", "auth.user.password_hash": hash_name}
    for i in range(USERS):
        s[f"auth.user.{i + 1}.username"] = f"{USER_PREFIX}{i}"
        s[f"auth.user.{i + 1}.password"] = PASSWORD
    return s


def pinned(cls):
    """A dbservers server class whose process (and its children) run on the generator's
    core, so the broker's core is the broker's alone."""

    class Pinned(cls):
        def argv(self):
            return ["taskset", "-c", GEN_CPU, *super().argv()]

    return Pinned


def start_databases(stack):
    import dbservers

    redis = pinned(dbservers.Redis)()
    stack.append(redis)
    redis.start()
    for i in range(USERS):
        redis.cli("hset", f"mqtt_user:{USER_PREFIX}{i}", "password", sha256_hex(PASSWORD),
                  "is_superuser", "0")
    pg = pinned(dbservers.Postgres)()
    stack.append(pg)
    pg.start()
    pg.setup()
    rows = ",".join(f"('{USER_PREFIX}{i}', '{sha256_hex(PASSWORD)}')" for i in range(USERS))
    pg.sql("create table mqtt_user (id serial primary key, username varchar(100) unique, "
           "password varchar(100), salt varchar(40), is_superuser boolean default false);"
           "create table mqtt_acl (id serial primary key, allow integer, ipaddr varchar(60), "
           "username varchar(100), clientid varchar(100), access integer, topic varchar(100));"
           f"grant select on mqtt_user, mqtt_acl to {pg.user};"
           f"insert into mqtt_user (username, password) values {rows};")
    return redis, pg


def connect_configs(root, redis, pg):
    passwd = root / "mosquitto.passwd"
    passwd.write_text("".join(f"{USER_PREFIX}{i}:{PASSWORD}\n" for i in range(USERS)))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True, timeout=60)
    first = passwd.read_text().splitlines()[0]
    log(f"mosquitto_passwd wrote entries like {first.split(':')[0]}:{first.split(':')[1][:8]}...")
    logins = ["--user-prefix", USER_PREFIX, "--users", str(USERS), "--password", PASSWORD]
    n = ["--connections", str(CONNECTIONS), "--concurrency", str(CONCURRENCY)]
    n_bcrypt = ["--connections", str(BCRYPT_CONNECTIONS), "--concurrency", str(CONCURRENCY)]
    redis_settings = {"allow_anonymous": "false", "auth.redis.server": f"{HOST}:{redis.port}",
                      "auth.redis.password": redis.password, "auth.redis.password_hash": "sha256",
                      "auth.redis.pool": "8"}
    pg_settings = {"allow_anonymous": "false", "auth.pgsql.server": f"{HOST}:{pg.port}",
                   "auth.pgsql.username": pg.user, "auth.pgsql.password": pg.password,
                   "auth.pgsql.database": pg.database, "auth.pgsql.pool": "8"}
    return [
        ("quay, anonymous", lambda: Quay(), n),
        ("mosquitto, anonymous", lambda: Mosquitto("allow_anonymous true\n"), n),
        ("quay, emqx_auth_username sha256",
         lambda: Quay(user_settings("sha256"), ["emqx_auth_username"]), n + logins),
        ("quay, emqx_auth_username pbkdf2,sha512,101,64",
         lambda: Quay(user_settings("pbkdf2,sha512,101,64"), ["emqx_auth_username"]), n + logins),
        ("quay, emqx_auth_username bcrypt",
         lambda: Quay(user_settings("bcrypt"), ["emqx_auth_username"]), n_bcrypt + logins),
        ("quay, emqx_auth_redis (sha256)", lambda: Quay(redis_settings, ["emqx_auth_redis"]), n + logins),
        ("quay, emqx_auth_pgsql (sha256)", lambda: Quay(pg_settings, ["emqx_auth_pgsql"]), n + logins),
        ("mosquitto, password_file",
         lambda: Mosquitto(f"allow_anonymous false\npassword_file {passwd}\n"), n + logins),
    ]


# ---- running and reporting ----

def run_rounds(configs, scenarios, rounds, results):
    """results[(config, scenario)] = [value per round], plus cpu."""
    for r in range(1, rounds + 1):
        for scenario, args in scenarios:
            for entry in configs:
                label, make = entry[0], entry[1]
                extra = entry[2] if len(entry) > 2 else []
                log(f"round {r}/{rounds}: {scenario}: {label}")
                figures = measure(make, scenario, *args, *extra)
                metric = "connect rate" if scenario == "connect" else "throughput"
                value, unit, cpu, note = figures[metric]
                slot = results.setdefault((label, scenario), {"values": [], "cpu": [], "unit": unit, "note": note})
                slot["values"].append(value)
                if cpu is not None:
                    slot["cpu"].append(cpu)
                if figures.get("lost", (0,))[0]:
                    log(f"  {label} lost {figures['lost'][0]:.0f} messages")


def select(configs, only):
    words = [w for w in only.split(",") if w]
    return [c for c in configs if not words or any(w in c[0] for w in words)]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def line(label, scenario, results):
    s = results[(label, scenario)]
    runs = ", ".join(f"{v:.0f}" for v in s["values"])
    return f"{med(s['values']):.0f} {s['unit']} ({med(s['cpu']):.2f} µs cpu/unit; runs {runs})"


def report_acl(results):
    print("\n## acl: publish throughput, medians")
    rows = []
    for scenario, _ in ACL_SCENARIOS:
        v = lambda label: med(results[(label, scenario)]["values"])
        for label in ("quay, no ACL", "quay, 1,000 rules, cache on", "quay, 1,000 rules, cache off",
                      "mosquitto, no acl_file", "mosquitto, 1,000-line acl_file"):
            print(f"  {scenario:6} {label:32} {line(label, scenario, results)}")
        q_ratio = v("quay, 1,000 rules, cache on") / v("quay, no ACL")
        q_nocache = v("quay, 1,000 rules, cache off") / v("quay, no ACL")
        m_ratio = v("mosquitto, 1,000-line acl_file") / v("mosquitto, no acl_file")
        vs = v("quay, 1,000 rules, cache on") / v("mosquitto, 1,000-line acl_file")
        cpu = lambda label: med(results[(label, scenario)]["cpu"])
        cpu_cost = cpu("quay, 1,000 rules, cache on") / cpu("quay, no ACL") - 1
        print(f"  {scenario:6} quay with ACL (cache on) / quay without: {q_ratio:.3f} "
              f"({'within' if q_ratio >= 0.9 else 'OUTSIDE'} the 10% bar); cache off: {q_nocache:.3f}; "
              f"mosquitto with acl_file / without: {m_ratio:.3f}; quay with ACL / mosquitto with acl_file: {vs:.2f}x; "
              f"quay's CPU per message with ACL: {100 * cpu_cost:+.1f}%")
        rows.append((scenario, v, q_ratio, q_nocache, m_ratio, vs))
    print("\n| Scenario | Quay, no ACL | Quay, 1,000 rules + cache | ratio | Quay, 1,000 rules, no cache | ratio "
          "| Mosquitto, no acl_file | Mosquitto, 1,000-line acl_file | ratio | Quay ACL ÷ Mosquitto ACL |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, v, q_ratio, q_nocache, m_ratio, vs in rows:
        print(f"| {scenario} | {v('quay, no ACL'):.0f} msg/s | {v('quay, 1,000 rules, cache on'):.0f} msg/s | "
              f"{q_ratio:.3f} | {v('quay, 1,000 rules, cache off'):.0f} msg/s | {q_nocache:.3f} | "
              f"{v('mosquitto, no acl_file'):.0f} msg/s | {v('mosquitto, 1,000-line acl_file'):.0f} msg/s | "
              f"{m_ratio:.3f} | {vs:.2f}x |")


def report_connect(results, configs):
    print("\n## connect: connection rate with a login, medians")
    mosq = med(results[("mosquitto, password_file", "connect")]["values"])
    mosq_anon = med(results[("mosquitto, anonymous", "connect")]["values"])
    print("\n| Broker, authentication | connect rate | broker CPU per connection | ÷ Mosquitto password_file | runs |")
    print("|---|---:|---:|---:|---|")
    for entry in configs:
        label = entry[0]
        s = results[(label, "connect")]
        m = med(s["values"])
        against = mosq_anon if "anonymous" in label else mosq
        runs = ", ".join(f"{v:.0f}" for v in s["values"])
        ratio = f"{m / against:.3g}x" + (" (÷ Mosquitto anonymous)" if "anonymous" in label else "")
        print(f"| {label} | {m:.0f} conn/s | {med(s['cpu']):.1f} µs | {ratio} | {runs} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="acl,connect")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="run only configurations whose label contains one of "
                        "these comma-separated words (the report then needs them all; for trying things)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for path in (EMQX, BENCH):
        if not path.exists():
            sys.exit(f"{path} not built: cargo build --release -p quay -p quay-ctl -p quay-bench --bins")
    parts = args.parts.split(",")
    unknown = set(parts) - {"acl", "connect"}
    if unknown:
        sys.exit(f"unknown parts {sorted(unknown)} (known: acl, connect)")
    root = Path(tempfile.mkdtemp(prefix="quay-authbench-"))
    servers = []
    load0 = os.getloadavg()
    print(f"# auth bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, broker on cpu {BROKER_CPU}, generator on cpu "
          f"{GEN_CPU}, {args.rounds} rounds", flush=True)
    try:
        acl_results, connect_results = {}, {}
        if "acl" in parts:
            scenarios = [(s, []) for s, _ in ACL_SCENARIOS]
            run_rounds(select(acl_configs(root), args.only), scenarios, args.rounds, acl_results)
        if "connect" in parts:
            redis, pg = start_databases(servers)
            configs = select(connect_configs(root, redis, pg), args.only)
            run_rounds(configs, [("connect", [])], args.rounds, connect_results)
        load1 = os.getloadavg()
        print(f"# finished {time.strftime('%H:%M UTC', time.gmtime())}, load average "
              f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
        if args.only:
            for (label, scenario), s in sorted({**acl_results, **connect_results}.items()):
                print(f"  {scenario:7} {label:45} {line(label, scenario, {(label, scenario): s})}")
            return
        if acl_results:
            report_acl(acl_results)
        if connect_results:
            report_connect(connect_results, configs)
    finally:
        for s in servers:
            s.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
