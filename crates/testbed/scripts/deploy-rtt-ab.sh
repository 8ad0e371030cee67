#!/usr/bin/env bash
# Interleaved A/B of `braid deploy`'s user-space path: RTT of `braid probe`
# through a chain deployed by binary A, then by binary B, ROUNDS times
# (A, B, A, B, ...), on a private CALVIN testbed (2 NF hosts, hosts and
# namespaces prefixed `ab`, so other testbeds on the machine are left
# alone). Prints one line per run and the per-binary medians.
#
#   crates/testbed/scripts/deploy-rtt-ab.sh A_BRAID B_BRAID CHAIN OUT [ROUNDS] [COUNT] [DEPLOY_OPTS]
#
# e.g. deploy-rtt-ab.sh before/braid after/braid \
#        crates/testbed/chains/xdp-fwd-afxdp-nat.yaml /tmp/ab 4 1000 "--rt-prio 50"
# Needs root. The echo runs on CPU 1, the probe on CPU 0 (like
# calvin-baseline.sh), both SCHED_FIFO 50.
set -euo pipefail
A=$1 B=$2 CHAIN=$3 OUT=$4 ROUNDS=${5:-4} COUNT=${6:-1000} OPTS=${7:-}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
mkdir -p "$OUT"
STATE=/run/braid/deploy-rtt-ab.json
TOPO=$OUT/topology.yaml
"$B" testbed show --nf-hosts 2 --no-direct |
    sed -E 's/\b(client|nf1|nf2|server)\b/ab\1/g' >"$TOPO"
cleanup() {
    [ -n "${ECHO_PID:-}" ] && kill "$ECHO_PID" 2>/dev/null || true
    "$B" testbed --state "$STATE" down >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$B" testbed --state "$STATE" up "$TOPO" >/dev/null
for h in abnf1 abnf2; do ip netns exec "braid-$h" sysctl -qw net.ipv4.ip_forward=0; done
chrt -f 50 taskset -c 1 "$B" echo --netns braid-abserver --batch 1 2>"$OUT/echo.log" &
ECHO_PID=$!
sleep 1
: >"$OUT/runs.txt"
for r in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        bin=$A; [ "$side" = B ] && bin=$B
        # shellcheck disable=SC2086
        "$bin" deploy "$CHAIN" --state "$STATE" --hosts abnf1,abnf2 --quiet \
            --stats-file "$OUT/stats-$side.json" $OPTS 2>"$OUT/deploy-$side-$r.log" &
        dp=$!
        sleep 2
        chrt -f 50 taskset -c 0 "$B" probe 10.71.3.2 --netns braid-abclient --count "$COUNT" \
            --reps 1 --interval-us 2000 --no-svg --json-out "$OUT/rtt-$side-$r.json" \
            >"$OUT/rtt-$side-$r.txt" 2>>"$OUT/probe.log" || echo "probe failed: $side $r"
        "$B" stats --stats-file "$OUT/stats-$side.json" >"$OUT/nfstats-$side-$r.txt" 2>&1 || true
        kill -INT "$dp"; wait "$dp" || true
        echo "$side $r $(python3 -c '
import json,sys
d=json.load(open(sys.argv[1]))
print(" ".join("%dB p50=%.1f p99=%.1f lost=%d" % (l["payload_len"], l["percentiles"]["p50_us"],
    l["percentiles"]["p99_us"], l["lost"]) for l in d["latency"]))
' "$OUT/rtt-$side-$r.json")" | tee -a "$OUT/runs.txt"
    done
done
python3 - "$OUT/runs.txt" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side = line.split()[0]
    for size, p50, p99 in re.findall(r"(\d+)B p50=([\d.]+) p99=([\d.]+)", line):
        rows.setdefault((side, size), []).append((float(p50), float(p99)))
for size in sorted({s for _, s in rows}, key=int):
    a, b = rows.get(("A", size), []), rows.get(("B", size), [])
    if not a or not b:
        continue
    ma, mb = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
    qa, qb = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
    # Ratio as a rate (A/B): >= 1 means B is at least as fast.
    print(f"{size} B: median p50 A {ma:.1f} us, B {mb:.1f} us (A/B {ma/mb:.3f}); "
          f"median p99 A {qa:.1f}, B {qb:.1f} (A/B {qa/qb:.3f})")
PY
