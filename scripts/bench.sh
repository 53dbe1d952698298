#!/usr/bin/env bash
# Benchmarks that print figures (never timed assertions): each one compares
# a stage with its ceiling on the same broker, in one run, as a ratio.
#   scripts/bench.sh            all benchmarks
# Uses a private tansu broker, or KAFKA_BOOTSTRAP_SERVERS when set.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/install-tansu.sh"
cargo bench -p postback-collector --bench collector_throughput
cargo bench -p postback-enricher --bench enricher_throughput
cargo bench -p postback-deduplicator --bench dedup_throughput
POSTBACK_LOG=warn cargo bench -p postback-dispatcher --bench dispatch_throughput
