#!/usr/bin/env bash
# The braid delay line (docs/testbed.md, "Shaped (WAN) links"): ping RTT
# through 2 x 5 ms and the worker's CPU time, per --tick-us, interleaved.
#   scripts/delay-line-bench.sh [BRAID] [ROUNDS]   (root; default target/release/braid, 3)
# Builds a 3-host testbed (wna - wnw - wnb, state in a temp dir), runs
# `braid run --tick-us T --seconds 6` in wnw while wna pings wnb 50 times
# at 10/s, and tears everything down, also on failure.
set -euo pipefail
BRAID=${1:-target/release/braid}
ROUNDS=${2:-3}
DIR=$(mktemp -d /tmp/braid-delay-bench.XXXXXX)
cleanup() { "$BRAID" testbed down --state "$DIR/state.json" >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT
cat > "$DIR/topo.yaml" <<'YAML'
name: wan
hosts: [{ name: wna }, { name: wnw }, { name: wnb }]
links:
  - { a: { host: wna, addr: 10.79.0.1/24 }, b: { host: wnw, addr: 10.79.0.11/24 } }
  - { a: { host: wnw, addr: 10.79.0.12/24 }, b: { host: wnb, addr: 10.79.0.2/24 } }
YAML
cat > "$DIR/chain.yaml" <<'YAML'
name: wan
ports:
  in:  { kind: af_packet, iface: to-wna }
  out: { kind: af_packet, iface: to-wnb }
nfs:
  - { name: link, type: delay, params: { delay: 5ms, rate: 1gbit, limit: 10000 } }
YAML
"$BRAID" testbed up "$DIR/topo.yaml" --state "$DIR/state.json" >/dev/null
echo "tick_us round rtt_min_ms rtt_avg_ms rtt_max_ms cpu_s_per_s"
for r in $(seq 1 "$ROUNDS"); do
  for t in 100 1000 10000; do
    /usr/bin/time -f "%U %S %e" -o "$DIR/time" \
      ip netns exec braid-wnw "$BRAID" run "$DIR/chain.yaml" --tick-us "$t" --seconds 6 >/dev/null 2>&1 &
    pid=$!
    sleep 0.5
    ip netns exec braid-wna ping -c 2 -i 0.2 -W 1 10.79.0.2 >/dev/null || true   # ARP
    rtt=$(ip netns exec braid-wna ping -q -c 50 -i 0.1 -W 1 10.79.0.2 | awk -F'[=/ ]+' '/min\/avg/ {print $6, $7, $8}')
    wait "$pid"
    cpu=$(awk '{printf "%.3f", ($1 + $2) / $3}' "$DIR/time")
    echo "$t $r $rtt $cpu"
  done
done
