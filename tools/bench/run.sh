#!/usr/bin/env bash
# Quay vs Mosquitto, side by side, on loopback.
#
#   tools/bench/run.sh [scenario...]     scenarios: fanin fanin-ws fanin-open qos1 qos2 fanout
#                                        fanout-open idle drain restart (default: all)
#
# fanin-ws is fanin with the publishers over WebSocket (Quay's listener.ws, Mosquitto's
# `protocol websockets` listener), the subscriber on TCP.
#
# Each scenario starts a fresh broker (Quay, then Mosquitto 2) pinned to one core
# (BENCH_BROKER_CPU, default 0) and runs the generator pinned to another
# (BENCH_GEN_CPU, default 1), so both brokers get the same single core. Prints one
# line per figure and, at the end, a markdown table for the README.
#
# Knobs (environment):
#   CARGO_TARGET_DIR          default $HOME/.cache/quay-target
#   BENCH_FANIN_ARGS ...      extra arguments per scenario, e.g. BENCH_FANIN_ARGS="--messages 500000"
#   (BENCH_FANIN_OPEN_ARGS, BENCH_QOS1_ARGS, BENCH_QOS2_ARGS, BENCH_FANOUT_ARGS,
#   BENCH_FANOUT_OPEN_ARGS, BENCH_IDLE_ARGS, BENCH_DRAIN_ARGS)
#   BENCH_RESTART_MESSAGES    messages queued before the restart (default 1000000)
#   BENCH_TIME_LIMIT_S        wall-clock bound of each measured phase (default 60)
#   BENCH_KEEP=1              keep the work directory (logs, data, results)
#   EMQX_*                    passed through to Quay, e.g. EMQX_STORAGE__FSYNC=none
#   BENCH_QUAY_EMQX           the emqx binary to measure (default: the one built here)
#   BENCH_QUAY_CONF           its config (default: this tree's etc/emqx.conf)
#   BENCH_BROKERS             which brokers (default "quay mosquitto")
#   BENCH_QUAY_SYS_SUB=1      a mosquitto_sub on '$SYS/#' beside Quay (tools/bench/sys_cost.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/quay-target}
BROKER_CPU=${BENCH_BROKER_CPU:-0}
GEN_CPU=${BENCH_GEN_CPU:-1}
TIME_LIMIT_S=${BENCH_TIME_LIMIT_S:-60}
RESTART_MESSAGES=${BENCH_RESTART_MESSAGES:-1000000}
ALL=(fanin fanin-ws fanin-open qos1 qos2 fanout fanout-open idle drain restart)
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=("${ALL[@]}")
for s in "${SCENARIOS[@]}"; do
    case " ${ALL[*]} " in *" $s "*) ;; *) echo "unknown scenario '$s' (known: ${ALL[*]})" >&2; exit 2 ;; esac
done

log() { echo "[bench] $*" >&2; }

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    log "installing mosquitto"
    apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

log "building (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$ROOT" && cargo build --release -q -p quay-bench -p quay -p quay-ctl --bins)
BENCH="$CARGO_TARGET_DIR/release/quay-bench"
EMQX=${BENCH_QUAY_EMQX:-$CARGO_TARGET_DIR/release/emqx}
EMQX_CTL="$CARGO_TARGET_DIR/release/emqx_ctl"
QUAY_CONF=${BENCH_QUAY_CONF:-$ROOT/etc/emqx.conf}

WORK=$(mktemp -d /tmp/quay-bench.XXXXXX)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
BROKER_PID=""
PORT=""
INTERNAL_PORT=""
WS_PORT=""
# Keep the work directory when asked to, and whenever something failed.
KEEP=${BENCH_KEEP:-0}

cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then log "kept $WORK (logs, data, results.tsv)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nobody listens on, starting from a different one each call.
NEXT_PORT=${BENCH_PORT_BASE:-21883}
free_port() {
    while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

bench() {
    taskset -c "$GEN_CPU" "$BENCH" --port "$PORT" --time-limit-s "$TIME_LIMIT_S" "$@"
}

# start_quay DIR [nowait]: Quay in the foreground on $PORT with its data in DIR. Limits
# as Mosquitto's below: no queue limit, 128 in flight, inbound QoS 2 ids unbounded (the
# qos2 publishers keep 128 unfinished; Quay's default of 100 would close them, v3.1.1).
start_quay() {
    local dir=$1
    mkdir -p "$dir/data" "$dir/log"
    EMQX_LISTENER__TCP__EXTERNAL="127.0.0.1:$PORT" \
    EMQX_LISTENER__TCP__INTERNAL="127.0.0.1:$INTERNAL_PORT" \
    EMQX_LISTENER__SSL__EXTERNAL="127.0.0.1:0" \
    EMQX_LISTENER__WS__EXTERNAL="127.0.0.1:$WS_PORT" \
    EMQX_LISTENER__WSS__EXTERNAL="127.0.0.1:0" \
    EMQX_NODE__DATA_DIR="$dir/data" \
    EMQX_LOG__DIR="$dir/log" \
    EMQX_ZONE__EXTERNAL__MAX_MQUEUE_LEN=0 \
    EMQX_ZONE__EXTERNAL__MAX_INFLIGHT=128 \
    EMQX_ZONE__EXTERNAL__MAX_AWAITING_REL=0 \
        taskset -c "$BROKER_CPU" "$EMQX" --config "$QUAY_CONF" foreground >>"$dir/log/console.log" 2>&1 &
    BROKER_PID=$!
    [ "${2:-}" = nowait ] || wait_broker "$dir/log/console.log"
    if [ "${BENCH_QUAY_SYS_SUB:-0}" = 1 ]; then
        taskset -c "$GEN_CPU" mosquitto_sub -p "$PORT" -t '$SYS/#' >"$dir/sys.out" 2>&1 &
        SYS_SUB_PID=$!
    fi
}

# start_mosquitto DIR PERSIST [nowait]: Mosquitto 2 on $PORT; PERSIST is true or false.
start_mosquitto() {
    local dir=$1 persist=$2
    mkdir -p "$dir"
    cat >"$dir/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
user root
# 0 = no limit, as max_mqueue_len = 0 for Quay; the drain and restart queues need it.
# With both at 0 (and max_inflight_bytes at its default 0) Mosquitto never drops a QoS 0
# delivery to an online client either: the open-loop scenarios rely on that.
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 128
persistence $persist
persistence_location $dir/
autosave_interval 0
log_dest file $dir/mosquitto.log
log_type error
log_type warning
listener $WS_PORT 127.0.0.1
protocol websockets
EOF
    taskset -c "$BROKER_CPU" "$MOSQUITTO" -c "$dir/mosquitto.conf" >>"$dir/console.log" 2>&1 &
    BROKER_PID=$!
    [ "${3:-}" = nowait ] || wait_broker "$dir/console.log"
}

# Until the broker accepts on $PORT (60 s at most); its log's tail if it died or hung.
wait_broker() {
    local i
    for ((i = 0; i < 1200; i++)); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then break; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "broker did not start; last lines of $1:"
    tail -n 20 "$1" >&2 || true
    return 1
}

# Graceful stop (SIGTERM, bounded); sets STOP_MS.
stop_broker() {
    local t0 i
    if [ -n "${SYS_SUB_PID:-}" ]; then
        kill "$SYS_SUB_PID" 2>/dev/null || true
        wait "$SYS_SUB_PID" 2>/dev/null || true
        SYS_SUB_PID=""
    fi
    t0=$(date +%s%N)
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for ((i = 0; i < 1200; i++)); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        log "broker $BROKER_PID did not stop within 60s; killing it"
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    local code=0
    wait "$BROKER_PID" 2>/dev/null || code=$?
    STOP_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
    # A graceful stop exits 0; anything else (a crash on shutdown) is worth knowing.
    if [ "$code" != 0 ]; then
        log "broker $BROKER_PID exited with code $code on SIGTERM (its log is in $WORK)"
        KEEP=1
    fi
    BROKER_PID=""
}

start_broker() { # start_broker NAME DIR PERSIST [nowait]
    if [ "$1" = quay ]; then start_quay "$2" "${4:-}"; else start_mosquitto "$2" "$3" "${4:-}"; fi
}

# run_one SCENARIO BROKER: one scenario against one fresh broker; failures are reported, not fatal.
run_one() {
    local scenario=$1 broker=$2 dir="$WORK/$1-$2" t0
    local common=(--broker "$broker" --results "$RESULTS")
    # Quay's own counters (emqx_ctl metrics), read by the open-loop scenarios.
    if [ "$broker" = quay ]; then
        common+=(--quay-ctl "$EMQX_CTL" --quay-config "$QUAY_CONF" --quay-data-dir "$dir/data")
    fi
    free_port
    INTERNAL_PORT=$PORT # Quay's second listener
    free_port
    WS_PORT=$PORT # the WebSocket listener (fanin-ws)
    free_port
    local extra=()
    [ "$scenario" = fanin-ws ] && extra=(--ws-port "$WS_PORT")
    case $scenario in
    restart)
        start_broker "$broker" "$dir" true
        bench "${common[@]}" --broker-pid "$BROKER_PID" restart-fill --messages "$RESTART_MESSAGES" || return 1
        stop_broker
        t0=$(date +%s%N)
        start_broker "$broker" "$dir" true nowait
        bench "${common[@]}" --broker-pid "$BROKER_PID" restart-wait --since-unix-ns "$t0" --shutdown-ms "$STOP_MS" || return 1
        bench "${common[@]}" --broker-pid "$BROKER_PID" restart-verify --messages "$RESTART_MESSAGES" || return 1
        ;;
    *)
        start_broker "$broker" "$dir" false
        local var="BENCH_${scenario^^}_ARGS"
        var=${var//-/_} # fanin-open: BENCH_FANIN_OPEN_ARGS
        # shellcheck disable=SC2086 # word splitting of the extra arguments is intended
        bench "${common[@]}" --broker-pid "$BROKER_PID" "$scenario" "${extra[@]}" ${!var:-} || return 1
        ;;
    esac
    stop_broker
}

log "broker on cpu $BROKER_CPU, generator on cpu $GEN_CPU; work dir $WORK"
for scenario in "${SCENARIOS[@]}"; do
    for broker in ${BENCH_BROKERS:-quay mosquitto}; do
        log "$scenario: $broker"
        if ! run_one "$scenario" "$broker"; then
            log "$scenario on $broker failed (logs kept in $WORK/$scenario-$broker)"
            KEEP=1
            [ -n "$BROKER_PID" ] && stop_broker
        fi
    done
    bench --results "$RESULTS" report --scenario "$scenario"
done

echo
echo "Quay advantage: Quay ÷ Mosquitto where higher is better, Mosquitto ÷ Quay where lower is better."
echo "CPU is broker CPU time (user+system) per unit over the measured interval; both brokers pinned to one core."
echo
bench --results "$RESULTS" report --markdown
