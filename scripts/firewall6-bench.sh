#!/bin/bash
# The IPv6 firewall beside the IPv4 one with 1,000 rules each
# (docs/benchmarks.md, "IPv6 firewall"): interleaved rounds of `braid bench`
# on examples/bench/firewall-1k.yaml (IPv4 traffic) and firewall6-1k.yaml
# (--ipv6), classifier only (conntrack: false, as in the descriptors) and
# with conntrack on, then the median of each and the IPv6/IPv4 ratios.
#   BRAID=target/release/braid scripts/firewall6-bench.sh [rounds] [seconds]
set -euo pipefail
BRAID=${BRAID:-target/release/braid}
ROUNDS=${1:-5}
SECS=${2:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in firewall-1k firewall6-1k; do
  cp "examples/bench/$f.yaml" "$tmp/$f.yaml"
  sed 's/conntrack: false/conntrack: true/' "examples/bench/$f.yaml" > "$tmp/$f-ct.yaml"
done
run() { # label descriptor [--ipv6]
  local label=$1 d=$2
  shift 2
  "$BRAID" bench "$d" "$@" --frame-size 64 --flows 1024 --duration "$SECS" --json 2>/dev/null |
    python3 -c '
import json, sys
v = json.load(sys.stdin)
fw = [s for s in v["stages"] if s["name"] == "fw"][0]
assert fw["packets_out"] == fw["packets_in"], "the firewall dropped bench traffic"
print("%s %.3f %.3f %.1f" % (sys.argv[1], v["chain"]["mpps"], fw["mpps"], fw["ns_per_packet"]))' "$label"
}
for r in $(seq 1 "$ROUNDS"); do
  run v4 "$tmp/firewall-1k.yaml"
  run v6 "$tmp/firewall6-1k.yaml" --ipv6
  run v4-ct "$tmp/firewall-1k-ct.yaml"
  run v6-ct "$tmp/firewall6-1k-ct.yaml" --ipv6
done | tee "$tmp/rows"
python3 - "$tmp/rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, chain, fw, ns = line.split()
    rows.setdefault(label, []).append((float(chain), float(fw), float(ns)))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in rows.items()}
print("median of %d rounds: chain Mpps, firewall stage Mpps, firewall ns/pkt" % len(rows["v4"]))
for k in ["v4", "v6", "v4-ct", "v6-ct"]:
    print("  %-6s %7.2f %7.2f %7.1f" % ((k,) + med[k]))
for a, b in [("v6", "v4"), ("v6-ct", "v4-ct")]:
    print("  %s / %s: stage Mpps %.2fx" % (a, b, med[a][1] / med[b][1]))
PY
