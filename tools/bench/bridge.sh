#!/usr/bin/env bash
# Bridges, in one run (issue 11):
#
#   forward   QoS 1 publishers on the bridging broker, a subscriber on a remote
#             Mosquitto: Quay (durable segment cache, every PUBACK after its fsync)
#             vs a Mosquitto -> Mosquitto bridge doing the same work from memory.
#   replay    Quay's cache filled with BENCH_BRIDGE_REPLAY messages while the remote
#             is away, kill -9, start-up time (empty cache vs full), then the replay
#             rate to the remote once the bridge starts.
#   segment   the disk's own fdatasync rate vs durable cache appends (1 and 64
#             producers waiting for their records' sync).
#
#   tools/bench/bridge.sh [forward|replay|segment ...]     (default: all three)
#
# The bridging broker runs on BENCH_BROKER_CPU (default 0); the generator and the
# remote Mosquitto share BENCH_GEN_CPU (default 1), the same for both brokers.
# Knobs: BENCH_BRIDGE_MESSAGES (forward, default 100000), BENCH_BRIDGE_REPLAY
# (default 100000), BENCH_TIME_LIMIT_S (default 120), BENCH_KEEP=1, CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/quay-target}
BROKER_CPU=${BENCH_BROKER_CPU:-0}
GEN_CPU=${BENCH_GEN_CPU:-1}
TIME_LIMIT_S=${BENCH_TIME_LIMIT_S:-120}
MESSAGES=${BENCH_BRIDGE_MESSAGES:-100000}
REPLAY=${BENCH_BRIDGE_REPLAY:-100000}
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(forward replay segment)

log() { echo "[bridge-bench] $*" >&2; }

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
log "building (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$ROOT" && cargo build --release -q -p quay-bench -p quay -p quay-ctl --bins)
BENCH="$CARGO_TARGET_DIR/release/quay-bench"
EMQX="$CARGO_TARGET_DIR/release/emqx"
EMQX_CTL="$CARGO_TARGET_DIR/release/emqx_ctl"

WORK=$(mktemp -d /tmp/quay-bridge-bench.XXXXXX)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
PIDS=()
KEEP=${BENCH_KEEP:-0}
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NEXT_PORT=${BENCH_PORT_BASE:-23883}
free_port() {
    while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

# wait_port PORT PID: until PORT accepts (60 s at most), or PID died.
wait_port() {
    local i
    for ((i = 0; i < 12000; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.005
    done
    return 1
}

# start_remote DIR: the remote Mosquitto on $REMOTE_PORT; sets REMOTE_PID.
start_remote() {
    mkdir -p "$1"
    cat >"$1/remote.conf" <<EOF
listener $REMOTE_PORT 127.0.0.1
allow_anonymous true
user root
max_queued_messages 0
max_inflight_messages 0
persistence false
EOF
    taskset -c "$GEN_CPU" "$MOSQUITTO" -c "$1/remote.conf" >>"$1/remote.log" 2>&1 &
    REMOTE_PID=$!
    PIDS+=("$REMOTE_PID")
    wait_port "$REMOTE_PORT" "$REMOTE_PID"
}

stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# start_quay DIR START_TYPE: Quay on $PORT bridging to $REMOTE_PORT (cache in DIR/q).
start_quay() {
    local dir=$1
    mkdir -p "$dir/data" "$dir/log"
    if [ ! -d "$dir/etc" ]; then
        cp -r "$ROOT/etc" "$dir/etc"
        cat >"$dir/etc/plugins/emqx_bridge_mqtt.conf" <<EOF
bridge.mqtt.up.address = 127.0.0.1:$REMOTE_PORT
bridge.mqtt.up.proto_ver = mqttv4
bridge.mqtt.up.client_id = quay_bench_bridge
bridge.mqtt.up.forwards = sensor/#
bridge.mqtt.up.mountpoint = fwd/\${node}/
bridge.mqtt.up.reconnect_interval = 500ms
bridge.mqtt.up.keepalive = 60s
bridge.mqtt.up.max_inflight_batches = 32
bridge.mqtt.up.queue.batch_count_limit = 32
bridge.mqtt.up.queue.replayq_dir = $dir/q/
bridge.mqtt.up.queue.replayq_seg_bytes = 10MB
bridge.mqtt.up.start_type = $2
EOF
    fi
    EMQX_LISTENER__TCP__EXTERNAL="127.0.0.1:$PORT" \
    EMQX_LISTENER__TCP__INTERNAL="127.0.0.1:0" \
    EMQX_LISTENER__SSL__EXTERNAL="127.0.0.1:0" \
    EMQX_LISTENER__WS__EXTERNAL="127.0.0.1:0" \
    EMQX_LISTENER__WSS__EXTERNAL="127.0.0.1:0" \
    EMQX_NODE__DATA_DIR="$dir/data" \
    EMQX_LOG__DIR="$dir/log" \
    EMQX_ZONE__EXTERNAL__MAX_INFLIGHT=128 \
        taskset -c "$BROKER_CPU" "$EMQX" --config "$dir/etc/emqx.conf" foreground >>"$dir/log/console.log" 2>&1 &
    QUAY_PID=$!
    PIDS+=("$QUAY_PID")
}

quay_ctl() { # quay_ctl DIR ARGS...
    local dir=$1
    shift
    EMQX_NODE__DATA_DIR="$dir/data" "$EMQX_CTL" --config "$dir/etc/emqx.conf" "$@"
}

bench() { taskset -c "$GEN_CPU" "$BENCH" --time-limit-s "$TIME_LIMIT_S" --results "$RESULTS" "$@"; }

forward() {
    local dir
    # Quay -> Mosquitto.
    dir="$WORK/forward-quay"
    free_port; REMOTE_PORT=$PORT; free_port
    start_remote "$dir"
    start_quay "$dir" auto
    wait_port "$PORT" "$QUAY_PID"
    quay_ctl "$dir" plugins load emqx_bridge_mqtt >/dev/null
    bench --port "$PORT" --broker quay --broker-pid "$QUAY_PID" bridge-forward --remote-port "$REMOTE_PORT" --messages "$MESSAGES"
    stop_pid "$QUAY_PID"; stop_pid "$REMOTE_PID"
    # Mosquitto -> Mosquitto: the same topics, QoS 1 out, queue in memory.
    dir="$WORK/forward-mosquitto"
    free_port; REMOTE_PORT=$PORT; free_port
    start_remote "$dir"
    cat >"$dir/local.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
user root
max_queued_messages 0
max_inflight_messages 128
persistence false
connection up
address 127.0.0.1:$REMOTE_PORT
topic sensor/# out 1 "" fwd/mosquitto/
cleansession true
try_private false
bridge_protocol_version mqttv311
EOF
    taskset -c "$BROKER_CPU" "$MOSQUITTO" -c "$dir/local.conf" >>"$dir/local.log" 2>&1 &
    local mpid=$!
    PIDS+=("$mpid")
    wait_port "$PORT" "$mpid"
    sleep 1 # the bridge connects
    bench --port "$PORT" --broker mosquitto --broker-pid "$mpid" bridge-forward --remote-port "$REMOTE_PORT" --messages "$MESSAGES"
    stop_pid "$mpid"; stop_pid "$REMOTE_PID"
}

# start_up DIR: start Quay (manual bridge); STARTUP_MS: ms until it accepts.
start_up() {
    local t0 t1
    t0=$(date +%s%N)
    start_quay "$1" manual
    wait_port "$PORT" "$QUAY_PID"
    t1=$(date +%s%N)
    STARTUP_MS=$(((t1 - t0) / 1000000))
}

replay() {
    local dir="$WORK/replay" empty_ms full_ms
    free_port; REMOTE_PORT=$PORT; free_port
    start_up "$dir"
    quay_ctl "$dir" plugins load emqx_bridge_mqtt >/dev/null
    kill -KILL "$QUAY_PID"; wait "$QUAY_PID" 2>/dev/null || true
    start_up "$dir"
    empty_ms=$STARTUP_MS
    bench --port "$PORT" --broker quay --broker-pid "$QUAY_PID" bridge-fill --messages "$REPLAY"
    log "cache: $(du -sh "$dir/q" | cut -f1) in $(find "$dir/q" -name '*.seg' | wc -l) segments"
    kill -KILL "$QUAY_PID"; wait "$QUAY_PID" 2>/dev/null || true
    start_up "$dir"
    full_ms=$STARTUP_MS
    echo "bridge-replay quay start-up ms: empty cache $empty_ms, $REPLAY cached $full_ms (ratio $(awk "BEGIN{printf \"%.2f\", $full_ms/($empty_ms>0?$empty_ms:1)}"))"
    start_remote "$dir"
    rm -f "$dir/ready"
    bench --port "$PORT" --broker quay --broker-pid "$QUAY_PID" bridge-drain --remote-port "$REMOTE_PORT" --messages "$REPLAY" --ready-file "$dir/ready" &
    local bpid=$!
    for ((i = 0; i < 2000; i++)); do [ -f "$dir/ready" ] && break; sleep 0.005; done
    quay_ctl "$dir" bridges start up >/dev/null
    wait "$bpid"
    stop_pid "$QUAY_PID"; stop_pid "$REMOTE_PID"
}

segment() {
    local dir="$WORK/segment"
    bench --broker disk fsync-rate --dir "$dir/fsync"
    bench --broker quay segment-append --dir "$dir/q1" --producers 1 --records 20000 --seconds 20
    bench --broker quay segment-append --dir "$dir/q64" --producers 64 --records 200000 --seconds 30
}

log "bridging broker on cpu $BROKER_CPU, generator and remote on cpu $GEN_CPU; work dir $WORK"
for part in "${PARTS[@]}"; do
    case $part in
    forward | replay | segment) log "$part"; "$part" ;;
    *) echo "unknown part '$part' (known: forward replay segment)" >&2; exit 2 ;;
    esac
done
"$BENCH" --results "$RESULTS" report
