#!/usr/bin/env bash
# Benchmarks that print figures (never timed assertions): each one compares
# a stage with its ceiling on the same broker, in one run, as a ratio.
#   scripts/bench.sh            all benchmarks
# Runs on one Apache Kafka broker started here for the run (stopped when it
# ends), or on the Kafka in KAFKA_BOOTSTRAP_SERVERS.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  broker_dir="$(mktemp -d "${TMPDIR:-/tmp}/postback-bench-kafka.XXXXXX")"
  stop_broker() {
    "$ROOT/scripts/kafka.sh" stop --dir "$broker_dir" >/dev/null 2>&1 || true
    rm -rf "$broker_dir"
  }
  trap stop_broker EXIT
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$ROOT/scripts/kafka.sh" start --dir "$broker_dir" --port "$port" --owner-pid $$
  export TESTKIT_KAFKA_DIR="$broker_dir"
fi
cargo bench --workspace --bench kafka_ceiling
cargo bench --workspace --bench collector_throughput
cargo bench --workspace --bench enricher_throughput
cargo bench --workspace --bench dedup_throughput
POSTBACK_LOG=warn cargo bench --workspace --bench dispatch_throughput
# The status store alone (SQLite and PostgreSQL; POSTBACK_BENCH_CONVERSIONS).
cargo bench --workspace --bench projection
# The status service's binary over a filled topic, through the broker.
cargo bench --workspace --bench status_throughput
