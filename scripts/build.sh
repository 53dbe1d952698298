#!/usr/bin/env bash
# Builds postback's release binaries. Always the whole workspace: a build of
# a few packages alone resolves other features for the crates they share
# and rebuilds those, so every caller asks for the same build (the second
# one finds it done).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
cargo build --release --workspace --bins --quiet
