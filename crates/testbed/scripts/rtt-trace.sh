#!/usr/bin/env bash
# Where does a round trip's time go? Runs `braid echo` (server, CPU 1) and
# `braid probe` (client, CPU 0), both SCHED_FIFO as in calvin-baseline.sh,
# over whatever path is currently up (Linux forwarding, a `braid deploy`ed
# chain, ...), records scheduler, IPI, network and XDP tracepoints of the
# whole machine with `perf record -a`, and splits every probe round trip
# into what happened inside it:
#   - wakeups: how many threads were woken, how many on another CPU than
#     the waker's (those need an inter-processor interrupt, which in a VM
#     is a trip through the hypervisor),
#   - wake delay: time from each wakeup to the woken thread running,
#   - IPIs received, XDP redirects, packets transmitted on a device.
# Prints a per-path summary (medians over all packets) and writes the
# event timeline of the median packet to OUT/timeline-NAME.txt.
#
# Tracing costs a few microseconds per event, so the RTTs here are longer
# than without it; use the counts and the relative split, and take RTTs
# from calvin-baseline.sh.
#
# usage: rtt-trace.sh BRAID NAME ADDR OUT [COUNT]
#   e.g. rtt-trace.sh target/release/braid linux-1hop 10.71.12.2 /tmp/trace 200
# Needs root, perf, python3 and a testbed with braid-client/braid-server
# namespaces (crates/testbed/topologies/calvin-baseline.yaml).
set -euo pipefail
BRAID=$(realpath "$1"); NAME=$2; ADDR=$3; OUT=$4; COUNT=${5:-200}
mkdir -p "$OUT"
DATA="$OUT/perf-$NAME.data"
ECHO=""
cleanup() { [ -n "$ECHO" ] && kill "$ECHO" 2>/dev/null && wait "$ECHO" 2>/dev/null; true; }
trap cleanup EXIT

chrt -f 50 taskset -c 1 "$BRAID" echo --netns braid-server --batch 1 2>/dev/null &
ECHO=$!
sleep 0.3
# One warm-up packet so ARP and caches are settled before the trace.
chrt -f 50 taskset -c 0 "$BRAID" probe "$ADDR" --netns braid-client --count 5 --reps 1 --sizes 256 \
    --no-svg >/dev/null 2>&1
EVENTS=sched:sched_wakeup,sched:sched_switch,irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry
EVENTS=$EVENTS,net:net_dev_xmit,net:netif_receive_skb,xdp:xdp_redirect,napi:napi_poll
EVENTS=$EVENTS,raw_syscalls:sys_enter,raw_syscalls:sys_exit
chrt -f 50 taskset -c 0 "$BRAID" probe "$ADDR" --netns braid-client --count "$COUNT" --reps 1 --sizes 256 \
    --no-svg --json-out "$OUT/probe-$NAME.json" >/dev/null 2>&1 &
PROBE=$!
# Let the probe's threads exist before recording their ids.
sleep 0.2
ls /proc/$PROBE/task > "$OUT/probe-tids-$NAME.txt"
perf record -q -a -o "$DATA" -e "$EVENTS" -- sleep "$(python3 -c "print(min(10, $COUNT * 0.005))")" \
    >/dev/null 2>&1
wait $PROBE
perf script -i "$DATA" -F comm,tid,cpu,time,event,trace 2>/dev/null > "$OUT/perf-$NAME.txt"
rm -f "$DATA"

python3 - "$OUT" "$NAME" <<'PY'
import re, statistics, sys
out, name = sys.argv[1], sys.argv[2]
probe_tids = {int(t) for t in open(f"{out}/probe-tids-{name}.txt").read().split()}
pat = re.compile(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")
ev = []
for line in open(f"{out}/perf-{name}.txt"):
    m = pat.match(line)
    if m:
        ev.append((float(m[4]) * 1e6, m[1], int(m[2]), int(m[3]), m[5], m[6]))
SENDTO, RECVFROM = "NR 44 ", "NR 45 = "
# A round trip: a probe thread's sendto ... the next recvfrom returning data.
trips, start = [], None
for i, e in enumerate(ev):
    if e[2] not in probe_tids:
        continue
    if e[4] == "raw_syscalls:sys_enter" and e[5].startswith(SENDTO):
        start = i
    elif start is not None and e[4] == "raw_syscalls:sys_exit" and e[5].startswith(RECVFROM) \
            and not e[5].startswith(RECVFROM + "-"):
        trips.append((start, i))
        start = None
if not trips:
    sys.exit(f"{name}: no round trip found in the trace")
rows = []
for a, b in trips:
    window = ev[a:b + 1]
    wakeups = [e for e in window if e[4] == "sched:sched_wakeup"]
    cross = 0
    delay = 0.0
    for w in wakeups:
        pid = int(re.search(r"pid=(\d+)", w[5])[1])
        target = int(re.search(r"target_cpu=(\d+)", w[5])[1])
        cross += target != w[3]
        run = next((e for e in window if e[0] >= w[0] and e[4] == "sched:sched_switch"
                    and f"next_pid={pid} " in e[5]), None)
        if run:
            delay += run[0] - w[0]
    rows.append({
        "rtt": ev[b][0] - ev[a][0],
        "wakeups": len(wakeups),
        "cross": cross,
        "delay": delay,
        "ipis": sum(e[4].startswith("irq_vectors:") for e in window),
        "redirects": sum(e[4] == "xdp:xdp_redirect" for e in window),
        "xmits": sum(e[4] == "net:net_dev_xmit" for e in window),
        "syscalls": sum(e[4] == "raw_syscalls:sys_enter" and e[1].startswith("braid")
                        and e[2] not in probe_tids for e in window),
        "a": a, "b": b,
    })
med = lambda k: statistics.median(r[k] for r in rows)
print(f"{name}: {len(rows)} round trips traced; medians: RTT {med('rtt'):.1f} us, "
      f"wakeups {med('wakeups'):g} ({med('cross'):g} cross-CPU), wake-to-run {med('delay'):.1f} us, "
      f"IPIs {med('ipis'):g}, XDP redirects {med('redirects'):g}, device xmits {med('xmits'):g}, "
      f"braid syscalls besides the probe {med('syscalls'):g}")
rows.sort(key=lambda r: r["rtt"])
m = rows[len(rows) // 2]
t0 = ev[m["a"]][0]
with open(f"{out}/timeline-{name}.txt", "w") as f:
    f.write(f"# {name}: median traced round trip, {m['rtt']:.1f} us; times in us from the probe's sendto\n")
    for e in ev[m["a"]:m["b"] + 1]:
        if e[4].startswith("raw_syscalls:") and not e[1].startswith("braid"):
            continue  # other programs' system calls
        f.write(f"{e[0] - t0:8.1f}  cpu{e[3]}  {e[1][:16]:<16} {e[2]:>7}  {e[4]:<36} {e[5][:100]}\n")
PY
rm -f "$OUT/perf-$NAME.txt"
