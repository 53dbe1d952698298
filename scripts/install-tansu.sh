#!/usr/bin/env bash
# Installs the tansu broker (a Kafka-API-compatible broker written in Rust)
# from crates.io if it is missing. About 10 minutes the first time; it then
# stays in ~/.cargo/bin.
source "$(dirname "$0")/lib.sh"
bin="$(tansu_bin)"
if [[ -n "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  exit 0
fi
say "installing tansu $TANSU_VERSION (first time only, ~10 minutes)"
cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
