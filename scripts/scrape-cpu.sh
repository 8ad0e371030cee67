#!/bin/bash
# CPU time braidd's API threads spend per /metrics scrape with 100 NFs
# (25 chains x 4 on idle AF_PACKET veths), two braidd binaries side by
# side in one namespace, rounds of 300 scrapes alternating which goes
# first (docs/benchmarks.md, "braidd /metrics with 100 NFs").
#   scripts/scrape-cpu.sh BASELINE_BRAIDD THIS_BRAIDD [rounds]     # as root
set -euo pipefail
NS=braid-scrape-cpu-$$
declare -a P D
cleanup() {
    for i in 0 1; do
        if [ -n "${P[$i]:-}" ]; then kill "${P[$i]}" 2>/dev/null || true; wait "${P[$i]}" 2>/dev/null || true; fi
        if [ -n "${D[$i]:-}" ]; then rm -rf "${D[$i]}"; fi
    done
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
for k in $(seq 0 99); do
    ip -n "$NS" link add "pv$k" type veth peer name "pq$k"
    ip -n "$NS" link set "pv$k" up
done
i=0
for BIN in "$1" "$2"; do
    D[$i]=$(mktemp -d /tmp/braid-scrape-cpu.XXXXXX)
    ip netns exec "$NS" "$BIN" --socket "${D[$i]}/s.sock" --state-dir "${D[$i]}/state" 2> "${D[$i]}/log" &
    P[$i]=$!
    for _ in $(seq 100); do [ -S "${D[$i]}/s.sock" ] && break; sleep 0.1; done
    for k in $(seq 0 24); do
        a=pv$((50*i+2*k)); b=pv$((50*i+2*k+1))
        printf "name: s$k\nports:\n  in: { kind: af_packet, iface: $a }\n  out: { kind: af_packet, iface: $b }\nnfs:\n  - { name: fw, type: firewall, placement: user, params: { default: allow } }\n  - { name: x1, type: xor, params: { key_text: braid } }\n  - { name: x2, type: xor, params: { key_text: braid } }\n  - { name: f, type: fwd }\n" |
            curl -sf -o /dev/null --unix-socket "${D[$i]}/s.sock" -X POST --data-binary @- -H 'Content-Type: application/yaml' http://braidd/v1/chains
    done
    i=$((i+1))
done
python3 - "${3:-6}" "${P[0]}" "${D[0]}/s.sock" "${P[1]}" "${D[1]}/s.sock" <<'PY'
import os, socket, sys
rounds = int(sys.argv[1])
daemons = [(int(sys.argv[2]), sys.argv[3], "baseline"), (int(sys.argv[4]), sys.argv[5], "this")]
def api_cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{tid}/comm").read().startswith("braidd-api"):
                total += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return total
def scrape(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: braidd\r\nConnection: close\r\n\r\n")
    while s.recv(1 << 16):
        pass
    s.close()
per = {"baseline": [], "this": []}
for r in range(rounds):
    for pid, path, tag in (daemons if r % 2 == 0 else daemons[::-1]):
        c0 = api_cpu_ns(pid)
        for _ in range(300):
            scrape(path)
        per[tag].append((api_cpu_ns(pid) - c0) / 300 / 1e3)
med = {}
for tag, v in per.items():
    med[tag] = sorted(v)[len(v) // 2]
    print(f"{tag}: API-thread CPU per scrape (us) per round:", " ".join(f"{x:.0f}" for x in v), f" median {med[tag]:.0f}")
print(f"this / baseline: {med['this'] / med['baseline']:.2f}")
PY
