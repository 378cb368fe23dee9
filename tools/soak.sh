#!/usr/bin/env bash
# The durability soak of issue 7 (tools/bench/src/soak): builds the broker and the load
# generator in release, then runs `quay-bench soak` with the arguments given. It starts
# the broker itself (own data directory under /tmp, free loopback ports), kills it with
# SIGKILL every 2-6 s while persistent clients reconnect, take each other over, ack and
# end sessions at random, then drains and prints one line:
#
#   soak: seed=... published=... acked=... delivered=... lost=... qos2_duplicates=... ambiguous=... kills=... ...
#
# and exits 1 if anything acknowledged was lost or a QoS 2 message was delivered twice.
#
#   tools/soak.sh                                  # 120 s of chaos, seed from the clock
#   tools/soak.sh --duration-s 60 --seed 42        # replay a seed (as closely as timing allows)
#   tools/soak.sh --help                           # every knob (clients, rate, kill interval, ...)
#
# CARGO_TARGET_DIR defaults to $HOME/.cache/quay-target; RUST_LOG=debug shows why each
# client connection ended.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/quay-target}
(cd "$ROOT" && cargo build --release -q -p quay-bench -p quay -p quay-ctl --bins)
exec "$CARGO_TARGET_DIR/release/quay-bench" soak "$@"
