#!/usr/bin/env bash
# Per-frame profile of braid's AF_XDP `fwd` on the CALVIN testbed's one-hop
# path (client -> fw1 -> server), at fixed offered rates, for several sets
# of `braid deploy` options, interleaved.
#
#   afxdp-live-profile.sh BRAID[,BRAID2] OUT "RATE RATE..." SECONDS ROUNDS "OPTS;OPTS;..."
#
# e.g. afxdp-live-profile.sh target/release/braid /tmp/prof "200 20000 100000" 3 3 \
#        "--rt-prio 50;;--wait busy --cpus 1"
#
# Each option set (prefixed with --user-io af_xdp) is run with every braid
# binary given (comma separated: before/after comparisons in one run), at
# every rate, ROUNDS times, the order reversed every other round. One
# measurement: deploy `afpacket-fwd.yaml` on fw1, start the echo server
# (batch 32, normal priority, CPU 1), then one `braid probe` throughput step
# of SECONDS at exactly RATE (256 B payload, the probe on CPU 0; a second
# step at the same rate if the first lost frames), and
# difference, over that step, the NF worker thread's counters:
#   /proc/PID/task/TID/schedstat   on-CPU ns, run-queue wait ns
#   /proc/PID/task/TID/status      voluntary / involuntary context switches
#   perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_{sendto,recvfrom,poll,ppoll,getsockopt}
#                                  system calls of the thread, by kind
#   braid's stats file             frames through the NF, batches
#   /proc/stat                     the whole machine's CPU time (user,
#                                  system, softirq, idle) over the step
# and write one TSV row per measurement to OUT/profile.tsv, and a summary
# (medians over the rounds) to OUT/summary.md. PERF_SYSTEM=1 also samples
# the whole machine's stacks over each step (perf record -a -g, cpu-clock)
# into OUT/perf-sys-*.data, which afxdp-live-profile-components.py turns
# into CPU per request by component. The option set `linux`
# deploys nothing: Linux forwards on fw1 (the baseline for the machine's
# CPU per request; the NF columns stay empty). PERF_RECORD=1 also samples
# the NF threads' stacks (perf record -g, cpu-clock) into OUT/perf-*.data. Needs root; removes the
# testbed at the end, also on failure.
set -euo pipefail
[ $# -ge 6 ] || { sed -n 2,24p "$0" >&2; exit 2; }
IFS=, read -ra BINS <<<"$1"
OUT=$2; RATES=$3; SECS=$4; ROUNDS=$5
IFS=';' read -ra OPTSETS <<<"$6"
[ ${#OPTSETS[@]} -gt 0 ] || OPTSETS=("")
case "$SECS$ROUNDS" in *[!0-9]*) echo "SECONDS and ROUNDS must be integers" >&2; exit 2 ;; esac
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "$b is not executable" >&2; exit 2; }; done
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"; OUT=$(realpath "$OUT")
P=${PROFILE_PREFIX:-pf}
STATE=/run/braid/afxdp-profile-$P.json
TOPO="$OUT/topology.yaml"
sed -E "s/\b(client|nf1|nf2|fw1|server)\b/$P\1/g" "$HERE/../topologies/calvin-baseline.yaml" >"$TOPO"
NS_C=braid-${P}client NS_S=braid-${P}server NS_FW=braid-${P}fw1
ADDR=10.71.12.2
ECHO="" DEPLOY="" PERF="" SYSPERF=""
BRAID0=$(realpath "${BINS[0]}")
cleanup() {
    for p in "$SYSPERF" "$PERF" "$DEPLOY" "$ECHO"; do [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    ip netns exec "$NS_FW" sysctl -qw net.ipv4.ip_forward=1 2>/dev/null || true
    "$BRAID0" testbed --state "$STATE" down || true
}
trap cleanup EXIT
"$BRAID0" testbed --state "$STATE" up "$TOPO" >"$OUT/testbed.log"
ip netns exec "$NS_C" ping -c 2 -i 0.2 -q "$ADDR" >/dev/null

# Counters of the NF worker threads (comm braid-nf-*) of process $1:
# on-CPU ns, run-queue ns, voluntary and involuntary switches (summed).
nf_counters() {
    local pid=$1 t on=0 rq=0 v=0 nv=0 a b c
    for t in /proc/"$pid"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in braid-nf-*) ;; *) continue ;; esac
        read -r a b c <"$t/schedstat"; on=$((on + a)); rq=$((rq + b))
        v=$((v + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")))
        nv=$((nv + $(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")))
    done
    echo "$on $rq $v $nv"
}
nf_tids() {
    local t; for t in /proc/"$1"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in braid-nf-*) basename "$t" ;; esac
    done | paste -sd, -
}
# Frames and batches through the NF so far (braid's stats file).
nf_frames() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
nf = d["nfs"][0]
s = nf.get("sockets", {})
print(nf["rx_packets"], nf.get("user", {}).get("batches", 0),
      sum(p.get("syscalls", 0) or 0 for p in d["ports"]),
      s.get("fill_ring_empty", 0), s.get("rx_ring_full", 0), s.get("rx_dropped", 0))
EOF
}

# The machine's CPU time so far, in clock ticks: user+nice, system,
# irq+softirq, idle+iowait, steal (the `cpu` line of /proc/stat).
machine_ticks() { awk '/^cpu / {print $2 + $3, $4, $7 + $8, $5 + $6, $9}' /proc/stat; }
# UDP receive-buffer overflows so far in the client's and the server's
# namespaces (where a frame is lost when the probe or the echo server
# falls behind, not the NF).
rcvbuf_errors() {
    local ns
    for ns in "$NS_C" "$NS_S"; do
        ip netns exec "$ns" awk '/^Udp:/ { if (h) print $6; h = 1 }' /proc/net/snmp
    done | paste -sd' '
}

printf 'binary\topts\trate\tround\tframes\tbatches\tlost\toncpu_ns\trq_ns\tvcs\tnvcs\tsyscalls\tsendto\trecvfrom\tpoll\tgetsockopt\tbraid_syscalls\tfill_ring_empty\trx_ring_full\txsk_rx_dropped\trequests\tm_user\tm_system\tm_softirq\tm_idle\tm_steal\trcvbuf_client\trcvbuf_server\tclk_tck\tstep_s\n' >"$OUT/profile.tsv"
measure() { # bin-index opts rate round
    local bi=$1 opts=$2 rate=$3 round=$4 bin; bin=$(realpath "${BINS[$bi]}")
    if [ "$opts" = linux ]; then measure_linux "$@"; return; fi
    local stats="$OUT/stats.json"; rm -f "$stats"
    ip netns exec "$NS_FW" sysctl -qw net.ipv4.ip_forward=0
    # shellcheck disable=SC2086 # the options are words on purpose
    "$bin" deploy "$HERE/../chains/afpacket-fwd.yaml" --state "$STATE" --hosts "${P}fw1" \
        --stats-file "$stats" --interval-ms 100 --quiet --user-io af_xdp $opts 2>>"$OUT/deploy.log" &
    DEPLOY=$!
    local i ok=""
    for i in $(seq 30); do
        ip netns exec "$NS_C" ping -c 1 -W 1 -q "$ADDR" >/dev/null 2>&1 && { ok=1; break; }
        kill -0 "$DEPLOY" 2>/dev/null || break
    done
    if [ -z "$ok" ]; then
        echo "== deploy ($opts) did not come up (see $OUT/deploy.log)" >&2
        kill "$DEPLOY" 2>/dev/null || true; wait "$DEPLOY" 2>/dev/null || true; DEPLOY=""
        ip netns exec "$NS_FW" sysctl -qw net.ipv4.ip_forward=1
        return 1
    fi
    taskset -c 1 "$bin" echo --netns "$NS_S" --batch 32 2>>"$OUT/echo.log" &
    ECHO=$!; sleep 0.5
    local tids; tids=$(nf_tids "$DEPLOY")
    local f0 c0; f0=$(nf_frames "$stats"); c0=$(nf_counters "$DEPLOY")
    perf stat -x, -o "$OUT/perf.txt" -t "$tids" -e raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_poll,syscalls:sys_enter_ppoll,syscalls:sys_enter_getsockopt &
    PERF=$!
    local rec=""
    if [ -n "${PERF_RECORD:-}" ]; then
        perf record -q -F 4999 -g -t "$tids" -o "$OUT/perf-$bi-$(echo "$opts" | tr -c 'a-z0-9' _)-$rate-$round.data" 2>>"$OUT/perf-record.log" &
        rec=$!
    fi
    sleep 0.2
    local m0 m1; m0="$(machine_ticks) $(rcvbuf_errors)"
    system_perf_start "$bi" "$opts" "$rate" "$round"
    probe_step "$bin" "$rate"
    system_perf_stop
    m1="$(machine_ticks) $(rcvbuf_errors)"
    sleep 0.3
    local c1 f1; c1=$(nf_counters "$DEPLOY"); f1=$(nf_frames "$stats")
    kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true; PERF=""
    if [ -n "$rec" ]; then kill -INT "$rec"; wait "$rec" 2>/dev/null || true; fi
    kill "$ECHO"; wait "$ECHO" 2>/dev/null || true; ECHO=""
    kill "$DEPLOY"; wait "$DEPLOY" 2>/dev/null || true; DEPLOY=""
    ip netns exec "$NS_FW" sysctl -qw net.ipv4.ip_forward=1
    row "$bi" "$opts" "$rate" "$round" "$f0" "$f1" "$c0" "$c1" "$m0" "$m1"
}
# PERF_SYSTEM=1: sample every CPU's stacks over the step.
system_perf_start() { # bin-index opts rate round
    [ -n "${PERF_SYSTEM:-}" ] || return 0
    local tag; tag=$(printf '%s' "$1-${2:-default}-$3-$4" | tr -c 'a-z0-9-' _)
    perf record -q -a -g -F 999 -o "$OUT/perf-sys-$tag.data" 2>>"$OUT/perf-record.log" &
    SYSPERF=$!; sleep 0.2
}
system_perf_stop() {
    [ -n "$SYSPERF" ] || return 0
    kill -INT "$SYSPERF"; wait "$SYSPERF" 2>/dev/null || true; SYSPERF=""
}
# One throughput step of SECS at exactly RATE (a second one at the same
# rate if the first lost frames).
probe_step() { # binary rate
    taskset -c 0 "$1" probe "$ADDR" --netns "$NS_C" --throughput --no-latency --sizes 256 \
        --min-rate "$2" --max-rate "$2" --max-steps 2 --step-ms $((SECS * 1000)) \
        --json-out "$OUT/probe.json" >>"$OUT/probe.log" 2>&1 || true
}
# The baseline: Linux forwards on fw1, nothing deployed; only the machine's
# counters are taken.
measure_linux() { # bin-index opts rate round
    local bi=$1 rate=$3 round=$4 bin; bin=$(realpath "${BINS[$bi]}")
    : >"$OUT/perf.txt"
    taskset -c 1 "$bin" echo --netns "$NS_S" --batch 32 2>>"$OUT/echo.log" &
    ECHO=$!; sleep 0.5
    local m0 m1; m0="$(machine_ticks) $(rcvbuf_errors)"
    system_perf_start "$bi" "$opts" "$rate" "$round"
    probe_step "$bin" "$rate"
    system_perf_stop
    m1="$(machine_ticks) $(rcvbuf_errors)"
    kill "$ECHO"; wait "$ECHO" 2>/dev/null || true; ECHO=""
    row "$bi" linux "$rate" "$round" "0 0 0 0 0 0" "0 0 0 0 0 0" "0 0 0 0" "0 0 0 0" "$m0" "$m1"
}
# One TSV row: binary, options, rate, round, then the NF's frames and stats
# counters, the NF threads' counters and the machine's ticks, before and
# after the step.
row() {
    python3 - "$@" "$OUT/perf.txt" "$OUT/probe.json" "$(getconf CLK_TCK)" "$SECS" >>"$OUT/profile.tsv" <<'EOF'
import json, sys
bi, opts, rate, rnd = sys.argv[1:5]
f0 = list(map(int, sys.argv[5].split())); f1 = list(map(int, sys.argv[6].split()))
c0 = list(map(int, sys.argv[7].split())); c1 = list(map(int, sys.argv[8].split()))
m0 = list(map(int, sys.argv[9].split())); m1 = list(map(int, sys.argv[10].split()))
ev = {}
for line in open(sys.argv[11]):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[0].replace(".", "").isdigit():
        ev[parts[2].split(":")[-1]] = int(float(parts[0]))
lost = requests = ""
try:
    steps = json.load(open(sys.argv[12]))["throughput"][0]["steps"]
    lost = sum(st["lost"] for st in steps)
    requests = sum(st["sent"] for st in steps)
except Exception:
    pass
d = [b - a for a, b in zip(c0, c1)]
m = [b - a for a, b in zip(m0, m1)]
print("\t".join(map(str, [bi, opts or "(default)", rate, rnd, f1[0] - f0[0], f1[1] - f0[1], lost,
      d[0], d[1], d[2], d[3], ev.get("sys_enter", ""), ev.get("sys_enter_sendto", ""),
      ev.get("sys_enter_recvfrom", ""), ev.get("sys_enter_poll", 0) + ev.get("sys_enter_ppoll", 0),
      ev.get("sys_enter_getsockopt", ""), f1[2] - f0[2], f1[3] - f0[3], f1[4] - f0[4], f1[5] - f0[5],
      requests, *m, sys.argv[13], sys.argv[14]])))
EOF
}

order=()
for r in $RATES; do for o in "${!OPTSETS[@]}"; do for b in "${!BINS[@]}"; do order+=("$b|$o|$r"); done; done; done
for round in $(seq "$ROUNDS"); do
    echo "== round $round/$ROUNDS"
    for item in "${order[@]}"; do
        IFS='|' read -r b o r <<<"$item"
        echo "   binary $b, opts '${OPTSETS[$o]}', $r pps"
        measure "$b" "${OPTSETS[$o]}" "$r" "$round" || true
    done
    rev=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done; order=("${rev[@]}")
done
python3 "$HERE/afxdp-live-profile-summary.py" "$OUT/profile.tsv" | tee "$OUT/summary.md"
