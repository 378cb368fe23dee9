#!/usr/bin/env bash
# What $SYS costs fan-in throughput: Quay at BASE_REF (default: where this branch left
# main, before its per-packet-type
# counters, no $SYS) against this tree with $SYS published every second
# (broker.sys_interval = broker.sys_heartbeat = 1s) and a mosquitto_sub on '$SYS/#',
# `tools/bench/run.sh fanin` for each, alternating, ROUNDS times (default 5). Prints
# each run and the median of each side, and the ratio.
#
#   tools/bench/sys_cost.sh [BASE_REF]       knobs: SYS_COST_ROUNDS, and run.sh's
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BASE_REF=${1:-$(cd "$ROOT" && git merge-base HEAD main)}
ROUNDS=${SYS_COST_ROUNDS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/quay-target}
WORK=$(mktemp -d /tmp/quay-sys-cost.XXXXXX)
cleanup() {
    (cd "$ROOT" && git worktree remove --force "$WORK/base" 2>/dev/null) || true
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[sys-cost] $*" >&2; }

# The base binary first (it shares the target dir), then this tree's.
log "building $BASE_REF"
(cd "$ROOT" && git worktree add -q --detach "$WORK/base" "$BASE_REF")
(cd "$WORK/base" && cargo build --release -q -p quay --bin emqx)
cp "$CARGO_TARGET_DIR/release/emqx" "$WORK/emqx-base"
# Its own config too (this tree's has keys it does not know); etc/ under a root of its own.
mkdir -p "$WORK/base-root" && cp -r "$WORK/base/etc" "$WORK/base-root/etc"
log "building this tree"
# Newer than the base's artifacts, or cargo would take the shared path crates as built.
(cd "$ROOT" && git ls-files -z '*.rs' '*Cargo.toml' | xargs -0 touch)
(cd "$ROOT" && cargo build --release -q -p quay -p quay-ctl -p quay-bench --bins)
cp "$CARGO_TARGET_DIR/release/emqx" "$WORK/emqx-sys"

run() { # run NAME BINARY CONFIG [env...]
    local name=$1 bin=$2 conf=$3 line
    shift 3
    line=$(env "$@" BENCH_BROKERS=quay BENCH_QUAY_EMQX="$bin" BENCH_QUAY_CONF="$conf" \
        "$ROOT/tools/bench/run.sh" fanin 2>"$WORK/$name.err" |
        grep -o 'fanin quay throughput: [0-9.]* msg/s' | head -1 || true)
    if [ -z "$line" ]; then
        log "the $name run gave no figure; its stderr:"
        tail -n 20 "$WORK/$name.err" >&2
        exit 1
    fi
    echo "$line" | tee -a "$WORK/$name.runs" >&2
}

for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS: base"
    run base "$WORK/emqx-base" "$WORK/base-root/etc/emqx.conf"
    log "round $r/$ROUNDS: \$SYS every 1s, with a \$SYS/# subscriber"
    run sys "$WORK/emqx-sys" "$ROOT/etc/emqx.conf" EMQX_BROKER__SYS_INTERVAL=1s EMQX_BROKER__SYS_HEARTBEAT=1s BENCH_QUAY_SYS_SUB=1
done

python3 - "$WORK/base.runs" "$WORK/sys.runs" <<'PY'
import re, statistics, sys
def rate(line):
    v = line.split(":")[1].split()[0].replace(",", "")
    mult = {"k": 1e3, "M": 1e6}.get(v[-1], 1)
    return float(v.rstrip("kM")) * mult
base = [rate(l) for l in open(sys.argv[1]) if l.strip()]
syst = [rate(l) for l in open(sys.argv[2]) if l.strip()]
mb, ms = statistics.median(base), statistics.median(syst)
print(f"sys-cost: base runs {[round(x) for x in base]} msg/s")
print(f"sys-cost: sys  runs {[round(x) for x in syst]} msg/s")
print(f"sys-cost: median base {mb:,.0f} msg/s, with $SYS {ms:,.0f} msg/s, ratio {ms/mb:.3f} (cost {100*(1-ms/mb):.1f}%)")
PY
