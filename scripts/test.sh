#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test
# (unit, and integration against Apache Kafka: one broker for the whole run,
# started here and stopped when the run ends however it ends, plus a private
# one for each test that stops or restarts its broker; or the Kafka in
# KAFKA_BOOTSTRAP_SERVERS), and the deployment files (scripts/check-deploy.sh:
# the Kubernetes overlays and docker-compose.yml, offline) and the
# Prometheus rules (promtool check, and their unit tests), and last the fuzz
# targets for a bounded time (scripts/fuzz.sh). Installs what it needs first.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
export AVRO_CROSSCHECK_PYTHON
AVRO_CROSSCHECK_PYTHON="$(venv_python)"

say "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
say "deployment files (scripts/check-deploy.sh)"
"$ROOT/scripts/check-deploy.sh"
say "Prometheus rules and their unit tests (promtool)"
command -v promtool >/dev/null 2>&1 ||
  die "promtool is required to check deploy/prometheus: it is in Debian's prometheus package (apt-get install --no-install-recommends prometheus; scripts/setup.sh installs it when run as root)"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/tests/*.yml
say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "building the tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-run --cargo-quiet
else
  cargo test --workspace --no-run --quiet
fi

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  broker_dir="$(mktemp -d "${TMPDIR:-/tmp}/postback-test-kafka.XXXXXX")"
  stop_broker() {
    "$ROOT/scripts/kafka.sh" stop --dir "$broker_dir" >/dev/null 2>&1 || true
    rm -rf "$broker_dir"
  }
  trap stop_broker EXIT
  free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  # --owner-pid: even a kill -9 of this script stops the broker.
  "$ROOT/scripts/kafka.sh" start --dir "$broker_dir" --port "$(free_port)" \
    --sasl-ssl-port "$(free_port)" --owner-pid $$
  export TESTKIT_KAFKA_DIR="$broker_dir"
else
  say "tests use the Kafka at $KAFKA_BOOTSTRAP_SERVERS"
fi

say "tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final
else
  cargo test --workspace --no-fail-fast
fi

# Bounded here; docs/fuzzing.md has the longer run. A crash fails the suite.
say "fuzz targets (scripts/fuzz.sh, ${POSTBACK_FUZZ_SECONDS:-20} s each)"
"$ROOT/scripts/fuzz.sh" --seconds "${POSTBACK_FUZZ_SECONDS:-20}"
