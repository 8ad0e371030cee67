#!/bin/bash
# What a `braid capture` tap costs (docs/benchmarks.md): interleaved rounds
# of the binary before the change, the binary after with no capture, with a
# tap whose filter matches nothing, and with a tap mirroring everything.
#   BEFORE=/path/to/old/braid AFTER=target/release/braid scripts/capture-bench.sh [rounds]
set -euo pipefail
BEFORE=${BEFORE:?the braid binary before the change}
AFTER=${AFTER:-target/release/braid}
C=examples/sample.yaml
run() {
  "$@" --frame-size 64 --flows 1024 --duration 3 --json 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
fw = [s for s in v["stages"] if s["name"] == "fw"][0]
c = v.get("capture", {})
print("%.3f Mpps  fw %.1f ns/pkt  %s" % (v["chain"]["mpps"], fw["ns_per_packet"], json.dumps(c) if c else ""))'
}
for r in $(seq 1 "${1:-3}"); do
  echo "round $r"
  echo -n "  before          "; run "$BEFORE" bench $C
  echo -n "  after, off      "; run "$AFTER" bench $C
  echo -n "  after, on, none "; run "$AFTER" bench $C --capture fw --capture-filter "port 9"
  echo -n "  after, on, all  "; run "$AFTER" bench $C --capture fw
done
