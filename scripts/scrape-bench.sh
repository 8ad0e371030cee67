#!/bin/bash
# /metrics scrape time with 100 NFs (25 chains x 4), this tree's braidd
# against a baseline build side by side (docs/benchmarks.md, "braidd
# /metrics with 100 NFs, side by side"): both daemons run at once in the
# same namespace, each with its own 25 chains; rounds of 200 scrapes (each
# followed by a GET /v1/status) alternate between them, A B B A ...
#   BASE=main scripts/scrape-bench.sh [rounds]      # as root
# BASE is any git revision; it is built (release) from a copy under /tmp
# into this tree's target directory, and the copy removed.
set -euo pipefail
BASE=${BASE:-main}
ROUNDS=${1:-10}
ROOT=$(git rev-parse --show-toplevel)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SRC=$(mktemp -d /tmp/braid-scrape-base.XXXXXX)
trap 'rm -rf "$SRC" "$SRC.braidd"' EXIT
git -C "$ROOT" archive "$BASE" | tar -x -C "$SRC"
(cd "$SRC" && CARGO_TARGET_DIR=$TARGET cargo build --release -p braid-daemon --bin braidd)
cp "$TARGET/release/braidd" "$SRC.braidd"
# Cargo hashes workspace crates by their path relative to the workspace,
# so the copy's artifacts have the same names as this tree's, and its
# sources keep the commit's time: make this tree's sources newer, or the
# test build would take the copy's crates and braidd as up to date.
find "$ROOT/crates" -name '*.rs' -exec touch {} +
# The test binary builds this tree's braidd (CARGO_BIN_EXE_braidd).
cd "$ROOT"
BRAIDD_BASELINE=$SRC.braidd BRAID_SCRAPE_ROUNDS=$ROUNDS \
    cargo test --release -p braid-daemon --test live -- --ignored --nocapture measure_scrape
