#!/usr/bin/env bash
# The CALVIN baseline on the namespace testbed, every configuration in one
# run: RTT (braid probe, 256 and 1400 B, 5 ms apart) and maximum lossless
# throughput over
#   - the direct client-server link (no NF),
#   - Linux kernel forwarding through one NF host (fw1),
#   - Linux kernel forwarding through two NF hosts (nf1, nf2),
#   - braid's NFs deployed with `braid deploy` (Linux forwarding off on
#     their hosts meanwhile): XDP `fwd` on fw1 and on nf1 + nf2; AF_PACKET
#     and AF_XDP `fwd` on fw1; XDP `fwd` on nf1 -> AF_PACKET or AF_XDP `fwd`
#     on nf2; `xor` and `ats` in user space (AF_PACKET) on fw1,
#   - DPDK testpmd (af_packet vdevs, mac forwarding) in fw1 instead of Linux,
#     if dpdk-testpmd is installed.
# Writes JSON, SVG CDF plots and a Markdown table (table.md) to OUT.
#
# usage: calvin-baseline.sh BRAID_BINARY OUT_DIR [COUNT] [REPS]
# Needs root. Leaves nothing behind (trap).
set -euo pipefail
BRAID=$(realpath "$1"); OUT=$2; COUNT=${3:-1000}; REPS=${4:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
TOPO="$HERE/../topologies/calvin-baseline.yaml"
STATE=/run/braid/calvin-baseline.json
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    "$BRAID" testbed --state "$STATE" down || true
}
trap cleanup EXIT

"$BRAID" testbed --state "$STATE" up "$TOPO"
# First packets of a path wait for ARP; warm every path up.
for a in 10.71.100.2 10.71.12.2 10.71.3.2; do ip netns exec braid-client ping -c 2 -i 0.2 -q "$a" >/dev/null; done

# Latency runs use SCHED_FIFO so that whatever else runs on this small
# machine (compilers, other tests) cannot delay a probe or echo thread by a
# whole time slice; the kernel forwarding work runs in their softirq
# context too. Throughput runs stay at normal priority: a saturated sender
# at real-time priority would starve the softirq threads it depends on.
RT="chrt -f 50"
echo_start() { # batch prio
    $2 taskset -c 1 "$BRAID" echo --netns braid-server --batch "$1" 2>>"$OUT/echo.log" &
    ECHO=$!; PIDS+=("$ECHO"); sleep 0.3
}
echo_stop() { kill "$ECHO"; wait "$ECHO" 2>/dev/null || true; }

measure() { # name addr
    local name=$1 addr=$2
    echo "== $name: RTT"
    echo_start 1 "$RT"
    $RT taskset -c 0 "$BRAID" probe "$addr" --netns braid-client --count "$COUNT" --reps "$REPS" \
        --json-out "$OUT/rtt-$name.json" --svg "$OUT/rtt-$name.svg" --title "UDP RTT, $name" | tee "$OUT/rtt-$name.txt"
    echo_stop
    echo "== $name: lossless throughput"
    echo_start 32 ""
    taskset -c 0 "$BRAID" probe "$addr" --netns braid-client --throughput --no-latency \
        --json-out "$OUT/tput-$name.json" | tee "$OUT/tput-$name.txt"
    echo_stop
}

measure direct 10.71.100.2
measure linux-1hop 10.71.12.2
measure linux-2hop 10.71.3.2

CHAINS="$HERE/../chains"
# Wait until ADDR answers through whatever was just started (programs
# loading, testpmd probing its ports), at most 30 s.
wait_path() {
    local i
    for i in $(seq 30); do
        ip netns exec braid-client ping -c 1 -W 1 -q "$1" >/dev/null 2>&1 && return 0
    done
    echo "path to $1 did not come up" >&2; return 1
}
deployed() { # name addr chain hosts...   (USER_IO=af_xdp|af_packet, default af_packet)
    local name=$1 addr=$2 chain=$3; shift 3
    local h hosts; hosts=$(IFS=,; echo "$*")
    for h in "$@"; do ip netns exec "braid-$h" sysctl -qw net.ipv4.ip_forward=0; done
    "$BRAID" deploy "$chain" --state "$STATE" --hosts "$hosts" --stats-file "$OUT/stats-$name.json" --quiet \
        --user-io "${USER_IO:-af_packet}" 2>>"$OUT/deploy.log" &
    local dep=$!; PIDS+=("$dep")
    wait_path "$addr"
    measure "$name" "$addr"
    "$BRAID" stats --stats-file "$OUT/stats-$name.json" | tee "$OUT/nfstats-$name.txt"
    kill "$dep"; wait "$dep" 2>/dev/null || true
    for h in "$@"; do ip netns exec "braid-$h" sysctl -qw net.ipv4.ip_forward=1; done
}
deployed xdp-fwd-1hop 10.71.12.2 "$CHAINS/xdp-fwd.yaml" fw1
deployed xdp-fwd-2nf 10.71.3.2 "$CHAINS/xdp-fwd-fwd.yaml" nf1 nf2
deployed afpacket-fwd-1hop 10.71.12.2 "$CHAINS/afpacket-fwd.yaml" fw1
deployed xdp-fwd-afpacket-fwd 10.71.3.2 "$CHAINS/xdp-fwd-afpacket-fwd.yaml" nf1 nf2
# The same user-space chains on AF_XDP ports (`braid deploy --user-io af_xdp`).
USER_IO=af_xdp deployed afxdp-fwd-1hop 10.71.12.2 "$CHAINS/afpacket-fwd.yaml" fw1
USER_IO=af_xdp deployed xdp-fwd-afxdp-fwd 10.71.3.2 "$CHAINS/xdp-fwd-afpacket-fwd.yaml" nf1 nf2
deployed xor-user-1hop 10.71.12.2 "$CHAINS/xor-user.yaml" fw1
deployed ats-user-1hop 10.71.12.2 "$CHAINS/ats-user.yaml" fw1

if command -v dpdk-testpmd >/dev/null; then
    mac() { ip -n "$1" -o link show dev "$2" | sed -E 's/.*link\/ether ([0-9a-f:]+).*/\1/'; }
    CMAC=$(mac braid-client to-fw1); SMAC=$(mac braid-server to-fw1)
    # testpmd replaces Linux in fw1: the kernel must not forward the same packets.
    ip netns exec braid-fw1 sysctl -qw net.ipv4.ip_forward=0
    ip netns exec braid-fw1 dpdk-testpmd -l 0-1 --no-huge --no-pci -m 512 --file-prefix braid-fw1 \
        --vdev=net_af_packet0,iface=to-client --vdev=net_af_packet1,iface=to-server -- \
        --forward-mode=mac --eth-peer=0,"$CMAC" --eth-peer=1,"$SMAC" --stats-period 60 --total-num-mbufs 16384 \
        >"$OUT/testpmd.log" 2>&1 &
    PIDS+=("$!"); TESTPMD=$!
    if wait_path 10.71.12.2 && kill -0 "$TESTPMD" 2>/dev/null; then
        measure testpmd-afpacket 10.71.12.2 || echo "testpmd measurement failed" | tee -a "$OUT/testpmd.log"
        kill "$TESTPMD"; wait "$TESTPMD" 2>/dev/null || true
    else
        echo "testpmd did not start; see $OUT/testpmd.log"
    fi
    ip netns exec braid-fw1 sysctl -qw net.ipv4.ip_forward=1
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
names = ["direct", "linux-1hop", "linux-2hop", "xdp-fwd-1hop", "xdp-fwd-2nf", "afpacket-fwd-1hop",
         "xdp-fwd-afpacket-fwd", "afxdp-fwd-1hop", "xdp-fwd-afxdp-fwd", "xor-user-1hop", "ats-user-1hop",
         "testpmd-afpacket"]
rows = []
for n in names:
    p = os.path.join(out, f"rtt-{n}.json")
    if not os.path.exists(p):
        continue
    rtt = json.load(open(p))
    tp = json.load(open(os.path.join(out, f"tput-{n}.json"))) if os.path.exists(os.path.join(out, f"tput-{n}.json")) else {"throughput": []}
    for l in rtt["latency"]:
        pc = l["percentiles"] or {}
        t = next((t for t in tp["throughput"] if t["payload_len"] == l["payload_len"]), None)
        f = lambda v: "-" if v is None else f"{v:.1f}"
        rows.append(f"| {n} | {l['payload_len']} | {f(l['mean_us'])} ± {f(l['ci95_us'])} | {f(pc.get('p50_us'))} | {f(pc.get('p90_us'))} | {f(pc.get('p99_us'))} | {f(pc.get('max_us'))} | {l['loss_pct']:.2f} | {l['reordered']} | "
                    + (f"{'≥ ' if t['termination'].startswith('lossless at the highest') else ''}{t['max_lossless_pps']:.0f} | {t['peak_rx_pps']:.0f} |" if t else "- | - |"))
hdr = "| configuration | payload B | mean ± ci95 µs | p50 µs | p90 µs | p99 µs | max µs | loss % | reordered | lossless pps | peak rx pps |\n|---|---|---|---|---|---|---|---|---|---|---|"
open(os.path.join(out, "table.md"), "w").write(hdr + "\n" + "\n".join(rows) + "\n")
print(hdr); print("\n".join(rows))
PY
