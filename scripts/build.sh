#!/usr/bin/env bash
# Builds the named packages' binaries in release mode (all when none named).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
if [[ $# -eq 0 ]]; then
  cargo build --release --bins --quiet
else
  args=()
  for p in "$@"; do args+=(-p "$p"); done
  cargo build --release --bins --quiet "${args[@]}"
fi
