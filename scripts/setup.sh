#!/usr/bin/env bash
# Installs what the tests, the benchmarks and the local pipeline need and that
# a fresh machine may lack: Apache Kafka's jars (from Maven Central, with the
# machine's Java 17+ and Maven), cargo-nextest (from crates.io) and a Python
# venv with fastavro (the independent Avro implementation the schema tests
# check against) and schemathesis (the collector's API against its OpenAPI
# file), from tests/python-requirements.txt; as root with apt-get, Debian's prometheus package for
# promtool, postgresql for the status store's tests and chromium for the
# panel's browser test (with playwright-core from npm). Idempotent: a second
# run downloads nothing.
source "$(dirname "$0")/lib.sh"
command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
command -v cc >/dev/null || command -v gcc >/dev/null ||
  die "a C compiler is required to build librdkafka and OpenSSL (Debian: apt-get install build-essential)"
command -v perl >/dev/null || die "perl is required to build OpenSSL (Debian: apt-get install perl)"
command -v make >/dev/null || die "make is required to build librdkafka (Debian: apt-get install make)"
command -v python3 >/dev/null || die "python3 is required (Debian: apt-get install python3 python3-venv)"
"$ROOT/scripts/kafka.sh" install
if ! command -v cargo-nextest >/dev/null 2>&1 && [[ "${POSTBACK_NO_NEXTEST:-}" != 1 ]]; then
  say "installing cargo-nextest from crates.io (first time only, a few minutes)"
  cargo install cargo-nextest --locked --quiet --no-default-features --features default-no-update ||
    say "cargo-nextest did not install; the tests will run with cargo test"
fi
# debian_package PACKAGE WHAT-NEEDS-IT: installs a Debian package when this
# is root on a machine with apt-get; otherwise says what is missing. The
# callers only call it when the tool is not there already.
debian_package() {
  local package="$1" needed_by="$2"
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's $package for $needed_by (apt-get, first time only)"
    { apt-get install -y --no-install-recommends "$package" >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y --no-install-recommends "$package" >/dev/null; }; } ||
      say "apt-get could not install $package; $needed_by needs it"
  else
    say "$package is missing: $needed_by needs it (Debian: apt-get install --no-install-recommends $package)"
  fi
}
# promtool checks the alert rules in scripts/test.sh; Debian's prometheus
# package has it (and the server, which apt starts where systemd runs).
command -v promtool >/dev/null 2>&1 ||
  debian_package prometheus "scripts/test.sh (promtool checks deploy/prometheus)"
# The status store's tests start a PostgreSQL of their own from Debian's
# postgresql binaries, unless POSTBACK_TEST_DATABASE_URL names one.
if [[ -z "${POSTBACK_TEST_DATABASE_URL:-}" ]] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null &&
  ! command -v initdb >/dev/null 2>&1; then
  debian_package postgresql "the status store's tests (or set POSTBACK_TEST_DATABASE_URL)"
fi
# The panel's browser test drives Debian's chromium with playwright-core
# (never a browser download), installed from tests/browser/package-lock.json
# into $STATE/browser.
command -v chromium >/dev/null 2>&1 || [[ -n "${CHROMIUM:-}" ]] ||
  debian_package chromium "the panel's browser test (or set CHROMIUM=/path)"
if command -v npm >/dev/null 2>&1; then
  if ! cmp -s "$ROOT/tests/browser/package-lock.json" "$STATE/browser/package-lock.json" || [[ ! -d "$STATE/browser/node_modules/playwright-core" ]]; then
    say "installing the browser test's npm packages (playwright-core) into $STATE/browser (first time only)"
    mkdir -p "$STATE/browser"
    cp "$ROOT/tests/browser/package.json" "$ROOT/tests/browser/package-lock.json" "$STATE/browser/"
    (cd "$STATE/browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
      { rm -f "$STATE/browser/package-lock.json"; say "npm could not install tests/browser/package-lock.json; the panel's browser test needs it"; }
  fi
else
  say "npm is missing: the panel's browser test needs node and npm (Debian: apt-get install nodejs npm)"
fi
py="$(venv_python)"
if ! "$py" -c "import fastavro" 2>/dev/null || [[ ! -x "$STATE/venv/bin/st" ]]; then
  say "creating a Python venv with fastavro and schemathesis in $STATE/venv (tests/python-requirements.txt)"
  mkdir -p "$STATE"
  [[ -x "$py" ]] || python3 -m venv "$STATE/venv" || die "python3 cannot make a venv (Debian: apt-get install python3-venv)"
  py="$(venv_python)"
  "$py" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/python-requirements.txt" ||
    die "pip could not install tests/python-requirements.txt into $STATE/venv (the Python package index must be reachable)"
fi
