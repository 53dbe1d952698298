#!/usr/bin/env bash
# Installs what the tests, the benchmarks and the local pipeline need and that
# a fresh machine may lack: the tansu broker and a Python venv with fastavro
# (the independent Avro implementation the schema tests check against).
# Idempotent: a second run does nothing.
source "$(dirname "$0")/lib.sh"
command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
command -v curl >/dev/null || die "curl is required"
"$ROOT/scripts/install-tansu.sh"
py="$(venv_python)"
if ! "$py" -c "import fastavro" 2>/dev/null; then
  say "creating a Python venv with fastavro in $STATE/venv"
  mkdir -p "$STATE"
  python3 -m venv "$STATE/venv"
  "$py" -m pip install --quiet --disable-pip-version-check fastavro
fi
