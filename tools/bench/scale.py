#!/usr/bin/env python3
"""Connection scale, Quay and Mosquitto 2 side by side: idle connections over plain TCP,
TLS and WebSocket at 1k, 5k, 10k and 19k, on loopback.

    cargo build --release -p quay -p quay-bench --bins
    python3 tools/bench/scale.py [--sizes 1000,5000,10000,19000] [--kinds tcp,tls,ws]

For each kind, size and broker, a fresh broker pinned to one core (BENCH_BROKER_CPU,
default 0) and generator processes (`quay-bench scale-hold`, pinned to BENCH_GEN_CPU,
default 1; at most 5,000 connections each, so no process nears its open-file limit):

1. connect storm: every client connects (TLS: full handshake, no resumption; WS: HTTP
   upgrade), 64 at once in all; connect rate = connections / (last CONNACK - first
   connect); for TLS that is full handshakes per second;
   and the broker's and the generators' CPU (user + system, /proc/PID/stat) per
   connection through it: each core's ceiling is 1e6 / its CPU per connect, and the
   generators' ceiling bounds the largest ratio the run can show;
2. RSS per connection right after the storm, and settled: Quay once every connection
   has hibernated (`zone.external.hibernate_after`, 5 s by default) plus 2 s, Mosquitto
   after 8 s; both minus the broker's RSS before the storm;
3. keepalive: every client sends PINGREQ every --ping-s seconds (first pings spread
   over one interval); after one interval of warm-up, broker CPU (utime + stime from
   /proc/PID/stat) over --cpu-s seconds, per connection.

Both brokers get the same certificates (etc/certs) and Mosquitto a `protocol
websockets` listener. Prints one line per run, then markdown tables, flatness across
sizes, and projections to 100k and 1M connections from the largest size. Bounded: every
wait has a deadline; generators and brokers are stopped at the end.
"""

import argparse
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procutil import HOST, cpu_s, free_port, rss_kib, stop, wait_port

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/quay-target"))
EMQX = TARGET / "release" / "emqx"
EMQX_CTL = TARGET / "release" / "emqx_ctl"
BENCH = TARGET / "release" / "quay-bench"
CERTS = ROOT / "etc" / "certs"
BROKER_CPU = os.environ.get("BENCH_BROKER_CPU", "0")
GEN_CPU = os.environ.get("BENCH_GEN_CPU", "1")
PER_GENERATOR = 5000
CONCURRENCY = 64
MOSQUITTO_SETTLE_S = 8
SETTLED_WAIT_S = 2
STORM_LIMIT_S = 120


class Quay:
    name = "quay"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="quay-scale-"))
        self.ports = {"tcp": free_port(), "tls": free_port(), "ws": free_port()}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EMQX_")}
        self.env.update(
            {
                "EMQX_LISTENER__TCP__EXTERNAL": f"{HOST}:{self.ports['tcp']}",
                "EMQX_LISTENER__TCP__INTERNAL": f"{HOST}:0",
                "EMQX_LISTENER__SSL__EXTERNAL": f"{HOST}:{self.ports['tls']}",
                "EMQX_LISTENER__WS__EXTERNAL": f"{HOST}:{self.ports['ws']}",
                "EMQX_LISTENER__WSS__EXTERNAL": f"{HOST}:0",
                "EMQX_NODE__DATA_DIR": str(self.root / "data"),
                "EMQX_LOG__DIR": str(self.root / "log"),
                "EMQX_LOG__LEVEL": "warning",
            }
        )
        self.proc = subprocess.Popen(
            ["taskset", "-c", BROKER_CPU, str(EMQX), "--config", str(ROOT / "etc/emqx.conf"), "foreground"],
            env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.ports["tcp"], self.proc)

    def hibernated(self):
        out = subprocess.run(
            [str(EMQX_CTL), "broker", "stats"], env=self.env, capture_output=True, text=True, timeout=30
        )
        for line in out.stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "connections.hibernated":
                return int(value)
        return 0

    def settle(self, n):
        """Until every connection hibernated (bounded), then SETTLED_WAIT_S more."""
        deadline = time.monotonic() + 15 + n / 1000
        while time.monotonic() < deadline:
            if self.hibernated() >= n:
                # Freed memory goes back to the OS shortly after (mimalloc purges).
                time.sleep(SETTLED_WAIT_S)
                return "all hibernated"
            time.sleep(0.5)
        return f"only {self.hibernated()} of {n} hibernated"

    def stop(self):
        stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


class Mosquitto:
    name = "mosquitto"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="mosq-scale-"))
        self.ports = {"tcp": free_port(), "tls": free_port(), "ws": free_port()}
        conf = self.root / "mosquitto.conf"
        conf.write_text(
            "allow_anonymous true\npersistence false\nlog_dest none\n"
            f"listener {self.ports['tcp']} {HOST}\n"
            f"listener {self.ports['tls']} {HOST}\n"
            f"certfile {CERTS / 'cert.pem'}\nkeyfile {CERTS / 'key.pem'}\n"
            f"listener {self.ports['ws']} {HOST}\nprotocol websockets\n"
        )
        binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
        self.proc = subprocess.Popen(
            ["taskset", "-c", BROKER_CPU, binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.ports["tcp"], self.proc)

    def settle(self, n):
        time.sleep(MOSQUITTO_SETTLE_S)
        return f"after {MOSQUITTO_SETTLE_S}s"

    def stop(self):
        stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


def generators(kind, port, n, tag):
    count = math.ceil(n / PER_GENERATOR)
    procs = []
    for g in range(count):
        share = n // count + (1 if g < n % count else 0)
        procs.append(
            subprocess.Popen(
                [
                    "taskset", "-c", GEN_CPU, str(BENCH), "--port", str(port),
                    "--time-limit-s", str(STORM_LIMIT_S), "scale-hold", "--kind", kind,
                    "--connections", str(share), "--id-prefix", f"{tag}-{g}",
                    "--concurrency", str(max(1, CONCURRENCY // count)),
                    "--cafile", str(CERTS / "cacert.pem"), "--source-ips", "8",
                ],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
        )
    return procs


def tell(gens, order):
    for g in gens:
        g.stdin.write(order + "\n")
        g.stdin.flush()


def read_line(gen, what):
    line = gen.stdout.readline()  # the generator bounds itself (--time-limit-s)
    if not line:
        gen.wait(timeout=10)
        raise RuntimeError(f"a generator exited ({gen.returncode}) before {what}")
    return line.split()


def measure(broker_cls, kind, n, args):
    broker = broker_cls()
    gens = []
    try:
        time.sleep(0.5)
        base = rss_kib(broker.proc.pid)
        storm_cpu0 = cpu_s(broker.proc.pid)
        gens = generators(kind, broker.ports[kind], n, f"{kind}{n}")
        starts, ends, gen_cpu = [], [], 0
        for g in gens:
            w = read_line(g, "connecting")
            if w[0] != "connected":
                raise RuntimeError(f"generator said {w}")
            starts.append(int(w[3]))
            ends.append(int(w[5]))
            gen_cpu += int(w[7]) / 1000
        storm_s = (max(ends) - min(starts)) / 1e9
        storm_cpu = cpu_s(broker.proc.pid) - storm_cpu0
        after_storm = rss_kib(broker.proc.pid)
        note = broker.settle(n)
        settled = rss_kib(broker.proc.pid)
        tell(gens, f"ping {args.ping_s}")
        time.sleep(args.ping_s)
        c0, t0 = cpu_s(broker.proc.pid), time.monotonic()
        time.sleep(args.cpu_s)
        c1, t1 = cpu_s(broker.proc.pid), time.monotonic()
        pinging = rss_kib(broker.proc.pid)
        tell(gens, "count")
        pings = pongs = closed = 0
        for g in gens:
            w = read_line(g, "count")
            pings, pongs, closed = pings + int(w[1]), pongs + int(w[3]), closed + int(w[5])
        if closed or pongs < pings - n:
            note += f"; {closed} closed, {pings - pongs} pings unanswered"
        return {
            "rate": n / storm_s,
            # All generators share one core: their sum is what that core had left.
            "gen_cpu_pct": 100 * gen_cpu / storm_s,
            # The generators' CPU per connection (most of it the kernel's: on loopback the
            # client's connect() runs both ends of the TCP handshake): the most connects
            # per second their one core allows, whatever the broker, is 1e6 / this.
            "gen_cpu_us": gen_cpu * 1e6 / n,
            # Broker CPU (user + system) per connection through the storm: what the rate
            # would be bounded by if the broker's core were the only limit.
            "storm_cpu_us": storm_cpu * 1e6 / n,
            "storm_cpu_pct": 100 * storm_cpu / storm_s,
            "base_kib": base,
            "storm": (after_storm - base) / n,
            "settled": (settled - base) / n,
            "pinging": (pinging - base) / n,
            # µs of broker CPU per connection per second of keepalive traffic
            "cpu_us": (c1 - c0) * 1e6 / (t1 - t0) / n,
            "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
            "pings": pings,
            "note": note,
        }
    finally:
        for g in gens:
            try:
                g.stdin.close()
            except OSError:
                pass
        for g in gens:
            try:
                g.wait(timeout=30)
            except subprocess.TimeoutExpired:
                g.kill()
        broker.stop()


def ratio(q, m):
    return q / m if m else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000,19000")
    parser.add_argument("--kinds", default="tcp,tls,ws")
    parser.add_argument("--ping-s", type=float, default=10)
    parser.add_argument("--cpu-s", type=float, default=30)
    args = parser.parse_args()
    # SIGTERM runs the `finally`s: generators and the broker are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for path in (EMQX, EMQX_CTL, BENCH):
        if not path.exists():
            sys.exit(f"{path} not built: cargo build --release -p quay -p quay-bench --bins")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    if max(sizes) + 500 > hard:
        sys.exit(f"--sizes up to {max(sizes)} need more than the broker's open-file limit {hard}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()
    print(f"# scale run {started}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"{os.cpu_count()} cores, broker on cpu {BROKER_CPU}, generators on cpu {GEN_CPU}", flush=True)
    results = {}
    for kind in kinds:
        for n in sizes:
            for cls in (Quay, Mosquitto):
                r = measure(cls, kind, n, args)
                results[(kind, n, cls.name)] = r
                print(
                    f"{kind:3} {n:6} {cls.name:9}: connect {r['rate']:7.0f}/s (generators {r['gen_cpu_pct']:3.0f}% of their core, "
                    f"{r['gen_cpu_us']:5.1f} us CPU per connect, "
                    f"broker {r['storm_cpu_pct']:3.0f}% of its core, {r['storm_cpu_us']:5.1f} us CPU per connect), "
                    f"RSS/conn storm {r['storm']:6.2f} KiB settled {r['settled']:6.2f} KiB "
                    f"pinging {r['pinging']:6.2f} KiB, keepalive CPU {r['cpu_us']:6.2f} us/conn/s "
                    f"({r['cpu_pct']:4.1f}% of a core), base {r['base_kib']} KiB; {r['note']}",
                    flush=True,
                )
    load1 = os.getloadavg()
    print(f"\n# finished {time.strftime('%H:%M UTC', time.gmtime())}, load average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}\n")
    report(results, kinds, sizes, args)


def report(results, kinds, sizes, args):
    rate_name = {"tcp": "connect/s", "tls": "TLS handshakes/s", "ws": "connect+upgrade/s"}
    print("| kind | conns | " + " | ".join([
        "connect rate Quay / Mosq (ratio)", "broker CPU per connect us Quay / Mosq (ratio)",
        "RSS/conn after storm KiB Quay / Mosq",
        "RSS/conn settled KiB Quay / Mosq (ratio)", f"keepalive ({args.ping_s:g}s) CPU us/conn/s Quay / Mosq (ratio)",
    ]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        for n in sizes:
            q, m = results[(kind, n, "quay")], results[(kind, n, "mosquitto")]
            print(
                f"| {kind} | {n} | {q['rate']:.0f} / {m['rate']:.0f} {rate_name[kind]} ({ratio(q['rate'], m['rate']):.2f}x) "
                f"| {q['storm_cpu_us']:.1f} / {m['storm_cpu_us']:.1f} ({ratio(q['storm_cpu_us'], m['storm_cpu_us']):.2f}x) "
                f"| {q['storm']:.2f} / {m['storm']:.2f} "
                f"| {q['settled']:.2f} / {m['settled']:.2f} ({ratio(q['settled'], m['settled']):.2f}x) "
                f"| {q['cpu_us']:.2f} / {m['cpu_us']:.2f} ({ratio(q['cpu_us'], m['cpu_us']):.2f}x) |"
            )
    print("\nWhat bounds the connect rate (a core's ceiling = 1e6 / its CPU per connect; the lower one binds):")
    for kind in kinds:
        for n in sizes:
            q, m = results[(kind, n, "quay")], results[(kind, n, "mosquitto")]
            gen_us = (q["gen_cpu_us"] + m["gen_cpu_us"]) / 2
            ceiling = 1e6 / gen_us if gen_us else float("nan")
            print(f"  {kind:3} {n:6}: generators' core {ceiling:7.0f}/s ({gen_us:.1f} us per connect); "
                  f"broker's core: Quay {1e6 / q['storm_cpu_us']:7.0f}/s, Mosquitto {1e6 / m['storm_cpu_us']:7.0f}/s; "
                  f"largest ratio this machine can show: {ratio(ceiling, m['rate']):.2f}x")
    print("\nFlatness across sizes (min..max):")
    for kind in kinds:
        for name in ("quay", "mosquitto"):
            rs = [results[(kind, n, name)] for n in sizes]
            settled = [r["settled"] for r in rs]
            cpu = [r["cpu_us"] for r in rs]
            print(f"  {kind:3} {name:9}: settled RSS/conn {min(settled):.2f}..{max(settled):.2f} KiB, "
                  f"keepalive CPU {min(cpu):.2f}..{max(cpu):.2f} us/conn/s")
    big = max(sizes)
    print(f"\nProjections from {big} connections (RSS = base + n x settled RSS/conn; CPU at a "
          f"{args.ping_s:g}s keepalive = n x CPU/conn; broker process only, kernel socket memory not included):")
    for kind in kinds:
        for name in ("quay", "mosquitto"):
            r = results[(kind, big, name)]
            for n in (100_000, 1_000_000):
                mem_mib = (r["base_kib"] + n * r["settled"]) / 1024
                cores = n * r["cpu_us"] / 1e6
                print(f"  {kind:3} {name:9} {n:>9,}: RSS {mem_mib:8.0f} MiB, keepalive CPU {cores:5.2f} cores")


if __name__ == "__main__":
    main()
