#!/usr/bin/env bash
# Run every test of Quay on a fresh Debian 12 machine: installs what it needs
# (idempotently), builds once in the release profile, then runs the Rust unit and
# integration tests and the Python suites against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quay-target}"
export CARGO_TERM_COLOR=never

# chromium: MQTT.js runs in it for the WebSocket tests (tests/browser). haproxy: in
# front of Quay with the PROXY protocol (tests/python/test_listeners.py). libssl-dev and
# pkg-config: the `openssl` crate links the system's OpenSSL 3 for TLS-PSK listeners.
apt_packages=(libclang-dev protobuf-compiler mosquitto mosquitto-clients strace chromium haproxy libssl-dev pkg-config)
# Real servers for the authentication backends (tests/python/dbservers.py starts each on
# its own loopback port and data dir, never the system service): Redis, PostgreSQL,
# MariaDB, OpenLDAP with its client tools.
apt_packages+=(redis-server postgresql mariadb-server mariadb-client slapd ldap-utils)
# openssl (the CLI): the bridge's TLS test makes a CA and Mosquitto's certificate with it.
apt_packages+=(openssl)
# Node and npm from Debian, unless a node is there already (nodesource's nodejs ships
# npm and conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || apt_packages+=(nodejs npm)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian mosquitto package starts a broker on :1883; tests use their own ports,
# and benchmarks start their own Mosquitto, so the service is not needed.
if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto haproxy >/dev/null 2>&1 || true; fi

# tests/python/requirements.txt: paho-mqtt, pytest, PyJWT, scramp (a SCRAM client for the
# SCRAM-SHA-256 enhanced authentication tests), and nx-27017 (MongoDB has no
# Debian 12 package; nx-27017 is a MongoDB wire-protocol server on SQLite, from PyPI, that
# emqx_auth_mongo's tests run against; it brings pymongo for the setup).
python3 - <<'PY' || python3 -m pip install -q -r tests/python/requirements.txt
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in ("paho", "pytest", "jwt", "cryptography", "nx_27017", "pymongo", "scramp")) else 1)
PY

# MQTT.js and playwright-core, pinned by tests/browser/package-lock.json; installed
# again only when the lock file changed.
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.quay-installed-lock 2>/dev/null; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.quay-installed-lock)
fi

echo "== build (release, once for everything)"
cargo build --release --workspace --all-targets

echo "== rust tests"
cargo test --release --workspace

echo "== python tests (paho-mqtt, mosquitto clients, MQTT.js in Chromium) against the real binary"
export QUAY_BIN_DIR="$CARGO_TARGET_DIR/release"
python3 -m pytest -q -p no:cacheprovider tests/python
