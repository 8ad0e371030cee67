#!/usr/bin/env bash
# The CALVIN baseline on the namespace testbed, every configuration in one
# run: RTT (braid probe, 256 and 1400 B, 5 ms apart) and maximum lossless
# throughput over
#   - the direct client-server link (no NF),
#   - Linux kernel forwarding through one NF host (fw1) and two (nf1, nf2),
#   - braid's NFs deployed with `braid deploy` (Linux forwarding off on
#     their hosts meanwhile): XDP `fwd` on fw1 and on nf1 + nf2; AF_PACKET
#     and AF_XDP `fwd` on fw1; XDP `fwd` on nf1 -> AF_PACKET or AF_XDP `fwd`
#     on nf2; `xor` and `ats` in user space on fw1; and the rows of newer
#     deploy features when this braid has them (see `add_feature_rows`),
#   - DPDK testpmd in fw1 instead of Linux (mac forwarding), once with
#     net_af_packet and once with net_af_xdp ports, if dpdk-testpmd is
#     installed.
#
# The RTT runs are interleaved: repetition 1 of every configuration, then
# repetition 2, ... (the order reversed on every other repetition), each
# configuration deployed afresh for its repetition, so a slow drift in
# machine load hits all configurations alike. Each repetition is one
# `braid probe --reps 1 --raw-out` per configuration; the merge step pools
# the samples (percentiles over all of them, 95% CI of the mean over the
# repetitions' means, t distribution) and writes table.md and ratios.md
# (the issue's four target ratios, also per repetition: the repetitions of
# two configurations ran minutes apart at most, so their ratio is paired).
# The throughput search runs once per configuration, in the last repetition.
#
# usage: calvin-baseline.sh BRAID_BINARY OUT_DIR [COUNT] [REPS]
#   COUNT packets per size and repetition (default 1000), REPS repetitions
#   (default 3). Environment: CALVIN_PREFIX=x names the testbed's hosts
#   xclient, xfw1, ... (namespaces braid-xclient, ...) so the run does not
#   collide with another calvin-baseline testbed on the machine;
#   AFXDP_OPTS overrides the `braid deploy` options of the tuned AF_XDP rows,
#   AFXDP_ALT_OPTS="OPTS;OPTS" adds AF_XDP `fwd` rows with other options;
#   SKIP_TPUT=1 leaves out the throughput search; ONLY="NAME ..." measures
#   only these configurations (names as in the file names, e.g. linux-1hop).
# Needs root. Leaves nothing behind (trap).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "calvin-baseline.sh needs root (namespaces, XDP)" >&2; exit 1; fi
if [ $# -lt 2 ]; then sed -n '/^# usage/,/^# Needs root/p' "$0" >&2; exit 2; fi
BRAID=$(realpath "$1"); OUT=$2; COUNT=${3:-1000}; REPS=${4:-3}
case "$COUNT$REPS" in *[!0-9]*) echo "COUNT ($COUNT) and REPS ($REPS) must be positive integers" >&2; exit 2 ;; esac
[ "$COUNT" -ge 1 ] && [ "$REPS" -ge 1 ] || { echo "COUNT and REPS must be at least 1" >&2; exit 2; }
T0=$(date +%s)
HERE=$(cd "$(dirname "$0")" && pwd)
CHAINS="$HERE/../chains"
P=${CALVIN_PREFIX:-}
mkdir -p "$OUT/reps"
OUT=$(realpath "$OUT")
STATE=/run/braid/calvin-baseline${P:+-$P}.json
# The topology with the host names prefixed (no prefix: the file as it is).
TOPO="$OUT/topology.yaml"
sed -E "s/\b(client|nf1|nf2|fw1|server)\b/$P\1/g" "$HERE/../topologies/calvin-baseline.yaml" >"$TOPO"
NS_C=braid-${P}client NS_S=braid-${P}server NS_FW=braid-${P}fw1
# What runs in the background right now (cleared once stopped, so the trap
# never signals a pid the system has since given to another process).
ECHO="" STARTED=""
cleanup() {
    for p in "$ECHO" "$STARTED"; do [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    "$BRAID" testbed --state "$STATE" down || true
    rm -rf "/var/run/dpdk/braid-${P}fw1"
}
trap cleanup EXIT

"$BRAID" testbed --state "$STATE" up "$TOPO"
# First packets of a path wait for ARP; warm every path up.
for a in 10.71.100.2 10.71.12.2 10.71.3.2; do ip netns exec "$NS_C" ping -c 2 -i 0.2 -q "$a" >/dev/null; done

# CPU placement: the probe on CPU 0, the echo server on CPU 1. Latency runs
# use SCHED_FIFO so that whatever else runs on this small machine
# (compilers, other tests) cannot delay a probe or echo thread by a whole
# time slice; the kernel forwarding work runs in their softirq context too.
# Throughput runs stay at normal priority: a saturated sender at real-time
# priority would starve the softirq threads it depends on.
RT="chrt -f 50"
echo_start() { # batch prio
    $2 taskset -c 1 "$BRAID" echo --netns "$NS_S" --batch "$1" 2>>"$OUT/echo.log" &
    ECHO=$!; sleep 0.3
}
echo_stop() { kill "$ECHO"; wait "$ECHO" 2>/dev/null || true; ECHO=""; }

# Wait until ADDR answers through whatever was just started (programs
# loading, testpmd probing its ports), at most 30 s.
wait_path() {
    local i
    for i in $(seq 30); do
        ip netns exec "$NS_C" ping -c 1 -W 1 -q "$1" >/dev/null 2>&1 && return 0
        [ -n "${STARTED:-}" ] && ! kill -0 "$STARTED" 2>/dev/null && break
    done
    echo "path to $1 did not come up" >&2; return 1
}

# --- The configurations -----------------------------------------------------
# row NAME ADDR LABEL OPTIONS START...: START is run (eval) to bring the
# configuration up (empty: nothing to start); it sets STARTED to the pid of
# what it started and FWD_OFF to the hosts whose Linux forwarding it
# switched off. OPTIONS is what the table says the row ran with.
NAMES=()
declare -A ADDR LABEL OPTS START FAILED
row() {
    local n=$1; NAMES+=("$n"); ADDR[$n]=$2; LABEL[$n]=$3; OPTS[$n]=$4; shift 4; START[$n]="$*"
}
forwarding() { # 0|1 hosts...
    local v=$1 h; shift
    for h in "$@"; do ip netns exec "braid-$P$h" sysctl -qw net.ipv4.ip_forward="$v"; done
}
deploy_start() { # name chain hosts(comma separated) deploy-options...
    local name=$1 chain=$2 hosts=$3; shift 3
    local h prefixed=()
    IFS=, read -ra FWD_OFF <<<"$hosts"
    for h in "${FWD_OFF[@]}"; do prefixed+=("$P$h"); done
    forwarding 0 "${FWD_OFF[@]}"
    # shellcheck disable=SC2068 # the options are words on purpose
    "$BRAID" deploy "$chain" --state "$STATE" --hosts "$(IFS=,; echo "${prefixed[*]}")" \
        --stats-file "$OUT/stats-$name.json" --interval-ms 250 --quiet $@ 2>>"$OUT/deploy-$name.log" &
    STARTED=$!
}
mac() { ip -n "$1" -o link show dev "$2" | sed -E 's/.*link\/ether ([0-9a-f:]+).*/\1/'; }
# testpmd replaces Linux in fw1 (whose forwarding is off meanwhile): two
# vdevs of DRIVER (net_af_packet or net_af_xdp) on fw1's veth ends, mac
# forwarding to the client's and server's MACs. lcore 0 is the main lcore
# (prints statistics every 60 s, --stats-period also keeps testpmd from
# exiting on a closed stdin), lcore 1 busy-polls both ports at normal
# priority, next to the (real-time) echo server on CPU 1. --no-huge: the
# testbed machine has no hugepages; --no-pci: only the vdevs.
testpmd_start() { # name driver vdev-args
    local name=$1 drv=$2 extra=$3
    FWD_OFF=(fw1); forwarding 0 fw1
    local cmac smac
    cmac=$(mac "$NS_C" "to-${P}fw1"); smac=$(mac "$NS_S" "to-${P}fw1")
    # The AF_XDP driver loads libxdp's default XSK program from here.
    LIBXDP_OBJECT_PATH=/usr/lib/x86_64-linux-gnu/bpf ip netns exec "$NS_FW" dpdk-testpmd -l 0-1 --no-huge --no-pci -m 512 \
        --file-prefix "braid-${P}fw1" \
        --vdev="${drv}0,iface=to-${P}client$extra" --vdev="${drv}1,iface=to-${P}server$extra" -- \
        --forward-mode=mac --eth-peer=0,"$cmac" --eth-peer=1,"$smac" --stats-period 60 --total-num-mbufs 16384 \
        </dev/null >"$OUT/testpmd-$name.log" 2>&1 &
    STARTED=$!
}
has_chain() { [ -f "$CHAINS/$1" ]; }
deploy_has() { "$BRAID" deploy --help 2>/dev/null | grep -q -- "$1"; }

AFP="--user-io af_packet"
row direct 10.71.100.2 "direct (no NF)" "-"
row linux-1hop 10.71.12.2 "Linux forwarding, 1 hop" "-"
row linux-2hop 10.71.3.2 "Linux forwarding, 2 hops" "-"
row xdp-fwd-1hop 10.71.12.2 "XDP \`fwd\`, 1 hop" "-" deploy_start xdp-fwd-1hop "$CHAINS/xdp-fwd.yaml" fw1
row xdp-fwd-2nf 10.71.3.2 "XDP \`fwd\` → XDP \`fwd\` (nf1, nf2)" "-" deploy_start xdp-fwd-2nf "$CHAINS/xdp-fwd-fwd.yaml" nf1,nf2

# The AF_XDP rows run with the deploy options that gave the lowest latency
# here (docs/calvin.md: NF threads at real-time priority 50 like the probe
# and echo, waiting in poll(2), not pinned), as far as this braid has them;
# the options each row used are in the table.
if [ -z "${AFXDP_OPTS:-}" ]; then
    AFXDP_OPTS="--user-io af_xdp"
    if deploy_has --rt-prio; then AFXDP_OPTS+=" --rt-prio 50"; fi
fi
USER_OPTS=${AFXDP_OPTS/--user-io af_xdp/}
row afxdp-fwd-1hop 10.71.12.2 "AF_XDP \`fwd\`, 1 hop" "$AFXDP_OPTS" deploy_start afxdp-fwd-1hop "$CHAINS/afpacket-fwd.yaml" fw1 "$AFXDP_OPTS"
row xdp-fwd-afxdp-fwd 10.71.3.2 "XDP \`fwd\` → AF_XDP \`fwd\` (nf1, nf2)" "$AFXDP_OPTS" \
    deploy_start xdp-fwd-afxdp-fwd "$CHAINS/xdp-fwd-afpacket-fwd.yaml" nf1,nf2 "$AFXDP_OPTS"
if [ "$AFXDP_OPTS" != "--user-io af_xdp" ]; then
    row afxdp-fwd-1hop-default 10.71.12.2 "AF_XDP \`fwd\`, 1 hop, default options" "--user-io af_xdp" \
        deploy_start afxdp-fwd-1hop-default "$CHAINS/afpacket-fwd.yaml" fw1 --user-io af_xdp
fi
# Busy polling: the lowest median, but a real-time thread spinning on CPU 1
# runs into the kernel's real-time throttling (sched_rt_runtime_us), which
# then stalls the echo server too: tails of tens of ms.
if deploy_has "--wait" && deploy_has "--cpus"; then
    o="--user-io af_xdp --wait busy --rt-prio 10 --cpus 1"
    row afxdp-fwd-1hop-busy 10.71.12.2 "AF_XDP \`fwd\`, 1 hop, busy polling" "$o" \
        deploy_start afxdp-fwd-1hop-busy "$CHAINS/afpacket-fwd.yaml" fw1 "$o"
fi
# More AF_XDP `fwd` rows to compare deploy options in one interleaved run:
# AFXDP_ALT_OPTS="OPTIONS;OPTIONS;..." (each with --user-io af_xdp implied).
IFS=';' read -ra ALTS <<<"${AFXDP_ALT_OPTS:-}"
for k in "${!ALTS[@]}"; do
    o="--user-io af_xdp ${ALTS[$k]}"; a=afxdp-fwd-1hop-alt$((k + 1))
    row "$a" 10.71.12.2 "AF_XDP \`fwd\`, 1 hop, alternative $((k + 1))" "$o" deploy_start "$a" "$CHAINS/afpacket-fwd.yaml" fw1 "$o"
done
row afpacket-fwd-1hop 10.71.12.2 "AF_PACKET \`fwd\`, 1 hop" "$AFP$USER_OPTS" \
    deploy_start afpacket-fwd-1hop "$CHAINS/afpacket-fwd.yaml" fw1 "$AFP$USER_OPTS"
row xdp-fwd-afpacket-fwd 10.71.3.2 "XDP \`fwd\` → AF_PACKET \`fwd\` (nf1, nf2)" "$AFP$USER_OPTS" \
    deploy_start xdp-fwd-afpacket-fwd "$CHAINS/xdp-fwd-afpacket-fwd.yaml" nf1,nf2 "$AFP$USER_OPTS"
row xor-user-1hop 10.71.12.2 "\`xor\` in user space (AF_XDP), 1 hop" "$AFXDP_OPTS" \
    deploy_start xor-user-1hop "$CHAINS/xor-user.yaml" fw1 "$AFXDP_OPTS"
row ats-user-1hop 10.71.12.2 "\`ats\` in user space (AF_XDP), 1 hop" "$AFXDP_OPTS" \
    deploy_start ats-user-1hop "$CHAINS/ats-user.yaml" fw1 "$AFXDP_OPTS"
if has_chain xdp-fwd-afxdp-nat.yaml; then
    row xdp-fwd-afxdp-nat 10.71.3.2 "XDP \`fwd\` → AF_XDP \`nat\` (nf1, nf2)" "$AFXDP_OPTS" \
        deploy_start xdp-fwd-afxdp-nat "$CHAINS/xdp-fwd-afxdp-nat.yaml" nf1,nf2 "$AFXDP_OPTS"
fi
# `xor` in the kernel: xor-user.yaml's NF, same key, placed in XDP.
sed 's/placement: user/placement: kernel/; s/name: xor-user/name: xor-kernel/' "$CHAINS/xor-user.yaml" >"$OUT/xor-kernel.yaml"
row xor-kernel-1hop 10.71.12.2 "\`xor\` in XDP, 1 hop" "-" deploy_start xor-kernel-1hop "$OUT/xor-kernel.yaml" fw1
# Compact mapping: both NFs of the two-NF chain on one host (fw1), one XDP
# chain program.
if deploy_has --mapping; then
    row xdp-fwd-2nf-compact 10.71.12.2 "XDP \`fwd\` → XDP \`fwd\`, compact (both on fw1)" "--mapping compact" \
        deploy_start xdp-fwd-2nf-compact "$CHAINS/xdp-fwd-fwd.yaml" fw1 --mapping compact
fi
# CALVIN's compact mapping of a four-NF chain: firewall, xor, fwd as one
# XDP chain program on nf1, nat in user space on nf2.
if deploy_has --mapping && has_chain compact-4.yaml; then
    row compact-4 10.71.3.2 "firewall → xor → fwd in XDP (nf1) → AF_XDP \`nat\` (nf2), compact" \
        "--mapping compact $AFXDP_OPTS" deploy_start compact-4 "$CHAINS/compact-4.yaml" nf1,nf2 --mapping compact "$AFXDP_OPTS"
fi
if command -v dpdk-testpmd >/dev/null; then
    row testpmd-afpacket 10.71.12.2 "DPDK testpmd af_packet, 1 hop" "net_af_packet, mac fwd, lcore 1" \
        testpmd_start testpmd-afpacket net_af_packet "''"
    row testpmd-afxdp 10.71.12.2 "DPDK testpmd af_xdp, 1 hop" "net_af_xdp (copy mode), mac fwd, lcore 1" \
        testpmd_start testpmd-afxdp net_af_xdp ",start_queue=0,queue_count=1"
else
    echo "dpdk-testpmd not installed: no DPDK rows" | tee "$OUT/testpmd.log"
fi
if [ -n "${ONLY:-}" ]; then
    KEEP=(); for n in "${NAMES[@]}"; do case " $ONLY " in *" $n "*) KEEP+=("$n") ;; esac; done; NAMES=("${KEEP[@]}")
    [ ${#NAMES[@]} -gt 0 ] || { echo "ONLY=\"$ONLY\" names none of the configurations" >&2; exit 2; }
fi
for n in "${NAMES[@]}"; do printf '%s\t%s\t%s\t%s\n' "$n" "${ADDR[$n]}" "${LABEL[$n]}" "${OPTS[$n]}"; done >"$OUT/configurations.tsv"

# --- Bring a configuration up, measure, take it down ------------------------
config_up() { # name
    local n=$1
    STARTED="" FWD_OFF=()
    [ -z "${START[$n]}" ] && return 0
    eval "${START[$n]}"
    if wait_path "${ADDR[$n]}" && kill -0 "$STARTED" 2>/dev/null; then return 0; fi
    echo "== $n did not come up; left out of the remaining repetitions (see $OUT/*$n.log)"
    FAILED[$n]=1; config_down "$n"; return 1
}
config_down() { # name
    local n=$1
    if [ -n "$STARTED" ]; then
        if [ -z "${FAILED[$n]:-}" ] && [ -f "$OUT/stats-$n.json" ]; then
            sleep 0.3 # the counters are written every 250 ms
            { echo "-- repetition $REP"; "$BRAID" stats --stats-file "$OUT/stats-$n.json" || true; } >>"$OUT/nfstats-$n.txt"
        fi
        kill "$STARTED" 2>/dev/null || true; wait "$STARTED" 2>/dev/null || true
    fi
    if [ ${#FWD_OFF[@]} -gt 0 ]; then forwarding 1 "${FWD_OFF[@]}"; fi
    STARTED="" FWD_OFF=()
}
rtt_rep() { # name
    local n=$1 svg=(--no-svg)
    [ "$REP" = "$REPS" ] && svg=(--svg "$OUT/rtt-$n.svg" --title "UDP RTT, ${LABEL[$n]//\`/}, repetition $REP")
    echo_start 1 "$RT"
    $RT taskset -c 0 "$BRAID" probe "${ADDR[$n]}" --netns "$NS_C" --count "$COUNT" --reps 1 "${svg[@]}" \
        --json-out "$OUT/reps/rtt-$n-$REP.json" --raw-out "$OUT/reps/raw-$n-$REP.json" \
        >"$OUT/reps/rtt-$n-$REP.txt" 2>>"$OUT/probe.log" || echo "== $n: probe failed in repetition $REP"
    echo_stop
}
# CPU time (user + system, all threads, clock ticks) of the process that
# carries a deployed row's traffic: braid deploy's user-space NF threads,
# testpmd. Softirq work in other threads' context is not in it.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo ""; }
tput() { # name
    local n=$1 c0=""
    echo_start 32 ""
    # Only rows with a process on the path: user-space NFs, testpmd (with
    # kernel NFs only, the braid deploy process just waits).
    case "${OPTS[$n]}" in *--user-io* | net_af_*) [ -n "$STARTED" ] && c0=$(cpu_ticks "$STARTED") ;; esac
    taskset -c 0 "$BRAID" probe "${ADDR[$n]}" --netns "$NS_C" --throughput --no-latency \
        --json-out "$OUT/tput-$n.json" >"$OUT/tput-$n.txt" 2>>"$OUT/probe.log" || echo "== $n: throughput search failed"
    if [ -n "$c0" ]; then
        local c1; c1=$(cpu_ticks "$STARTED")
        [ -n "$c1" ] && echo "$((c1 - c0)) $(getconf CLK_TCK)" >"$OUT/cpu-$n.txt"
    fi
    echo_stop
}

ORDER=("${NAMES[@]}")
for REP in $(seq "$REPS"); do
    echo "== repetition $REP/$REPS ($(( $(date +%s) - T0 )) s so far)"
    for n in "${ORDER[@]}"; do
        [ -n "${FAILED[$n]:-}" ] && continue
        config_up "$n" || continue
        echo "   $n"
        rtt_rep "$n"
        if [ "$REP" = "$REPS" ] && [ -z "${SKIP_TPUT:-}" ]; then tput "$n"; fi
        config_down "$n"
    done
    # Reverse the order for the next repetition: a drift over one
    # repetition then shifts early and late configurations alike.
    REV=(); for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do REV+=("${ORDER[$i]}"); done; ORDER=("${REV[@]}")
done
for n in "${!FAILED[@]}"; do echo "$n" >>"$OUT/failed.txt"; done

python3 "$HERE/calvin-merge.py" "$OUT"
echo "== total run time $(( $(date +%s) - T0 )) s (COUNT $COUNT, REPS $REPS, ${#NAMES[@]} configurations)"
