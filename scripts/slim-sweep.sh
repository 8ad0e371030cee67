#!/usr/bin/env bash
# SliM §4.7 load sweep on namespaces (root): a firewall (or NAT) with many
# connections moved live between two braidd, statelet vs duplication vs
# stop-and-copy, under a paced UDP load at 10..95 % of an emulated link.
# docs/migration.md, "The SliM §4.7 load sweep". Everything it creates is
# removed on exit (also on failure). Writes OUT/slim-sweep-NF.csv (one row
# per run) and, from it, SVG plots and Markdown tables (slim_sweep.py).
#
#   sudo scripts/slim-sweep.sh [--quick] [--nf firewall|nat] [--rate MBIT]
#        [--reps N] [--flows N] [--loads 10,30,...] [--sizes 512,1400]
#        [--modes statelet,statelet-nobp,duplicate,stop-copy,none] [--queue-ms MS] [--out DIR] [--bin DIR]
#        [--other-loads 50,70,...]
#   (statelet-nobp: the statelet mode without the state stream's
#   back-pressure, `braid migrate --no-backpressure`: the behaviour before it;
#   --other-loads: the loads at which every mode but `statelet` runs,
#   default all of --loads)
#   sudo scripts/slim-sweep.sh --measure-link [--rates 10,20,40] [--sizes ...]
#
#                 ua ── (ai) hA: braidd A, chain `mig` (ao) ── da
#  cl ── u0 [up] <                                              > [dn] d0 ──┐
#                 ub ── (bi) hB: braidd B (bo) ─────────────── db         [wa] ── (x0) wn (x1) ── [wb] ── s0 sv
#                                          hA st0 (state link) ───────────┘                          └── st1 hB
#
# The emulated WAN link is the delay line in wn (`braid run` of a `delay`
# NF on AF_PACKET ports, docs/testbed.md "Shaped (WAN) links": this kernel
# has no netem): it serializes at RATE Mbit/s, adds 5 ms each way (10 ms
# RTT) and queues at most QUEUE_MS (default 100) of the link in 512 B
# frames. wa and wb are Linux
# bridges, so, as in SliM's testbed (§4.6.2), the data traffic to the
# server and the state traffic between A and B share the one link. The
# load is a % of RATE in frame bits.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PY="$HERE/slim_sweep.py"
BIN=${BIN:-$HERE/../target/release}
NF=firewall
RATE=10
REPS=5
FLOWS=10000
LOADS=10,30,50,70,80,90,95
SIZES=512,1400
MODES=
OTHER_LOADS=
OUT=$HERE/../docs/migration
MEASURE=0
RATES=5,10,20,40,80
QUEUE_MS=100
DELAY_TICK_US=${DELAY_TICK_US-100}   # the delay line worker tick (empty: braid run default)
QUICK=0
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --nf) NF=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --queue-ms) QUEUE_MS=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --flows) FLOWS=$2; shift ;;
        --loads) LOADS=$2; shift ;;
        --other-loads) OTHER_LOADS=$2; shift ;;
        --sizes) SIZES=$2; shift ;;
        --modes) MODES=$2; shift ;;
        --out) OUT=$2; shift ;;
        --bin) BIN=$2; shift ;;
        --measure-link) MEASURE=1 ;;
        --rates) RATES=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "slim-sweep.sh: unknown argument \`$1\` (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $NF in
    firewall) NFNAME=fw; [ -n "$MODES" ] || MODES=statelet,duplicate,stop-copy,none ;;
    # NAT replays its port choices only with a shared `port_secret` (set
    # below, one per sweep, the same on both hosts).
    nat) NFNAME=nat; [ -n "$MODES" ] || MODES=statelet,duplicate,stop-copy,none ;;
    *) echo "slim-sweep.sh: --nf must be firewall or nat, not \`$NF\`" >&2; exit 2 ;;
esac
if [ $QUICK = 1 ]; then
    REPS=1; LOADS=30,90; SIZES=512; FLOWS=${QUICK_FLOWS:-2000}
fi
for b in braid braidd; do
    [ -x "$BIN/$b" ] || { echo "slim-sweep.sh: $BIN/$b missing (cargo build --release -p braid -p braid-daemon)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "slim-sweep.sh: needs root (namespaces)" >&2; exit 2; }

P=bsw
NS=(cl up ha hb dn sv wa wb wn)
WORK=$(mktemp -d /tmp/braid-slim-sweep.XXXXXX)
PIDS=()
DELAY_PIDS=()
OURS=0

cleanup() {
    set +e
    for p in "${DELAY_PIDS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${DELAY_PIDS[@]}" "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [ $OURS = 1 ] && for n in "${NS[@]}"; do ip netns del "$P-$n" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One sweep at a time: the namespaces have fixed names.
if ip netns list | grep -q "^$P-"; then
    echo "slim-sweep.sh: namespaces $P-* exist: another sweep is running (or one was killed: ip netns del each $P-* namespace)" >&2
    exit 2
fi
OURS=1
. "$(dirname "$0")/lib/migration-net.sh"
netlab_namespaces
# The state stream (TCP between A and B) shares the link with the load:
# BBR keeps its queue near the path's BDP where CUBIC would fill the link's
# queue and delay the data behind it.
for n in ha hb; do ip netns exec $P-$n sysctl -qw net.ipv4.tcp_congestion_control=bbr; done

link cl c0 up u0; link up ua ha ai; link ha ao dn da; link up ub hb bi; link hb bo dn db
link dn d0 wa pd; link ha st0 wa pa; link wa wl0 wn x0; link wn x1 wb wl1; link wb ps sv s0; link wb pb hb st1
for side in "wa pd pa wl0" "wb ps pb wl1"; do
    set -- $side
    ip -n "$P-$1" link add br0 type bridge
    for d in "$2" "$3" "$4"; do ip -n "$P-$1" link set "$d" master br0; done
    ip -n "$P-$1" link set br0 up
done
netlab_addresses 10.81
ip -n $P-dn route add 10.81.99.0/24 via 10.81.1.1 dev da
# The routers' and the server's queues must not be the bottleneck.
for n in up dn sv cl; do ip netns exec $P-$n sysctl -qw net.core.rmem_max=16777216 net.core.rmem_default=4194304 2>/dev/null || true; done

# delay_line NS IN OUT RATE_MBIT(0: unlimited) LIMIT
delay_line() {
    local rate="" 
    [ "$4" != 0 ] && rate=", rate: ${4}mbit"
    cat > "$WORK/delay-$1.yaml" <<YAML
name: wan-$1
ports:
  in:  { kind: af_packet, iface: $2 }
  out: { kind: af_packet, iface: $3 }
nfs:
  - { name: link, type: delay, params: { delay: 5ms$rate, limit: $5 } }
YAML
    ip netns exec "$P-$1" "$BIN/braid" run "$WORK/delay-$1.yaml" ${DELAY_TICK_US:+--tick-us $DELAY_TICK_US} >"$WORK/delay-$1.log" 2>&1 &
    DELAY_PIDS+=($!)
}
# The path must carry traffic before anything is measured.
check_path() {
    if ! ip netns exec $P-dn ping -q -c 3 -i 0.2 -W 1 10.81.20.1 >/dev/null; then
        echo "slim-sweep.sh: no ping from dn to the server through the delay line" >&2
        cat "$WORK"/delay-*.log "$WORK"/*/log >&2 2>/dev/null || true
        exit 1
    fi
    ip netns exec $P-ha ping -q -c 1 -W 1 10.81.30.2 >/dev/null \
        || { echo "slim-sweep.sh: no ping over the state link" >&2; exit 1; }
}
# Queue of the delay line (packets per direction): QUEUE_MS of the link
# in 512 B frames, at least 32; beyond it, loss.
limit_for() { awk -v r="$1" -v q="$QUEUE_MS" 'BEGIN { l = int(r * 1e6 * q / 1000 / (8 * 512)); if (l < 32) l = 32; print l }'; }

SIZES_A=(${SIZES//,/ })

if [ $MEASURE = 1 ]; then
    # What can this machine move through the delay lines (no migration)?
    # Unlimited delay lines (no rate): the CPU is the only limit.
    delay_line wn x0 x1 0 20000
    ip netns exec $P-sv "$BIN/braid" echo --bind 10.81.20.1:7007 >/dev/null 2>&1 &
    PIDS+=($!)
    # A bare forwarding path through A: braidd with the chain.
    netlab_braidd a
    netlab_wait_braidd a
    cat > "$WORK/chain.yaml" <<YAML
name: mig
ports:
  in: { kind: af_packet, iface: ai }
  out: { kind: af_packet, iface: ao }
nfs:
  - { name: fw, type: firewall, params: { default: drop, rules: [{ action: allow, src: 10.81.10.0/24, proto: udp }] } }
YAML
    "$BIN/braid" daemon --socket "$WORK/a/sock" deploy "$WORK/chain.yaml" >/dev/null
    sleep 0.5
    check_path
    CSV=$WORK/measure.csv
    echo "offered_mbit size pps sent lost loss_pct base_rtt_ms peak_rtt_inc_ms"
    for r in ${RATES//,/ }; do
        for s in "${SIZES_A[@]}"; do
            pps=$(awk -v r="$r" -v s="$s" 'BEGIN { print r * 1e6 / (8 * s) }')
            ip netns exec $P-cl python3 "$PY" run --src 10.81.10.1 --dst 10.81.20.1:7007 --size "$s" --pps "$pps" \
                --warmup 4 --grace 1 --csv "$CSV" --meta "{\"mode\":\"none\",\"load_pct\":$r}" >"$WORK/last.json"
            python3 - "$WORK/last.json" "$r" "$s" "$pps" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1])); r, s, pps = sys.argv[2:5]
print(r, s, round(float(pps)), j["sent"], j["lost"], round(100 * j["lost"] / max(j["sent"], 1), 2), j["base_rtt_ms"], j["peak_rtt_inc_ms"])
PYEOF
        done
    done
    exit 0
fi

LIMIT=$(limit_for "$RATE")
delay_line wn x0 x1 "$RATE" "$LIMIT"

netlab_braidd a --migrate-listen 10.81.30.1:9480
netlab_braidd b --migrate-listen 10.81.30.2:9480
netlab_wait_braidd a
netlab_wait_braidd b

if [ $NF = nat ]; then
    SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    DECL="{ name: nat, type: nat, params: { external_ip: 10.81.99.1, internal: [10.81.10.0/24], port_secret: \"$SECRET\" } }"
else
    DECL="{ name: fw, type: firewall, params: { default: drop, rules: [{ action: allow, src: 10.81.10.0/24, proto: udp }] } }"
fi
cat > "$WORK/chain.yaml" <<YAML
name: mig
batch_size: 32
ports:
  in: { kind: af_packet, iface: ai, batch_size: 32 }
  out: { kind: af_packet, iface: ao, batch_size: 32 }
nfs:
  - $DECL
YAML
# switch TO(a|b): routes towards TO, markers on the other's paths
switch_file() {
    local to=$1 via_up via_dn dev_up dev_dn old_up old_dn bvia_up bvia_dn
    if [ "$to" = b ]; then
        via_up=10.81.2.2; dev_up=ub; via_dn=10.81.2.1; dev_dn=db; old_up=ua; old_dn=da
        bvia_up=10.81.1.2; bvia_dn=10.81.1.1
    else
        via_up=10.81.1.2; dev_up=ua; via_dn=10.81.1.1; dev_dn=da; old_up=ub; old_dn=db
        bvia_up=10.81.2.2; bvia_dn=10.81.2.1
    fi
    cat <<YAML
redirect:
  - { netns: $P-up, to: 10.81.20.0/24, via: $via_up, dev: $dev_up }
  - { netns: $P-dn, to: 10.81.10.0/24, via: $via_dn, dev: $dev_dn }
  - { netns: $P-dn, to: 10.81.99.0/24, via: $via_dn, dev: $dev_dn }
restore:
  - { netns: $P-up, to: 10.81.20.0/24, via: $bvia_up, dev: $old_up }
  - { netns: $P-dn, to: 10.81.10.0/24, via: $bvia_dn, dev: $old_dn }
  - { netns: $P-dn, to: 10.81.99.0/24, via: $bvia_dn, dev: $old_dn }
markers:
  - { netns: $P-up, dev: $old_up, port: in }
  - { netns: $P-dn, dev: $old_dn, port: out }
YAML
}
switch_file b > "$WORK/to-b.yaml"
switch_file a > "$WORK/to-a.yaml"
"$BIN/braid" daemon --socket "$WORK/a/sock" deploy "$WORK/chain.yaml" >/dev/null
ip netns exec $P-sv "$BIN/braid" echo --bind 10.81.20.1:7007 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.3
check_path

mkdir -p "$OUT"
TAG=$NF; [ $QUICK = 1 ] && TAG=$NF-quick
CSV=$OUT/slim-sweep-$TAG.csv
: > "$CSV"
MODES_A=(${MODES//,/ })
LOADS_A=(${LOADS//,/ })
NM=${#MODES_A[@]}
# runs_at LOAD MODE: 0 when MODE skips LOAD (--other-loads)
runs_at() {
    [ "$2" = statelet ] || [ -z "$OTHER_LOADS" ] || case ",$OTHER_LOADS," in *",$1,"*) ;; *) return 1 ;; esac
}
total=0
for load in "${LOADS_A[@]}"; do for mode in "${MODES_A[@]}"; do
    if runs_at "$load" "$mode"; then total=$((total + REPS * ${#SIZES_A[@]})); fi
done; done
echo "== SliM sweep: $NF, $FLOWS connections, link ${RATE} Mbit/s (delay line: 5 ms each way, queue $LIMIT packets), shared by data and state, modes $MODES, loads $LOADS %${OTHER_LOADS:+ (modes other than statelet: $OTHER_LOADS %)}, sizes $SIZES B, $REPS repetitions: $total runs -> $CSV"
n=0
t_start=$(date +%s)
for rep in $(seq 1 "$REPS"); do
    # Interleaved: within a repetition every point runs each mode, the
    # mode order rotated by one per repetition.
    rot=()
    for i in $(seq 0 $((NM - 1))); do rot+=("${MODES_A[$(((i + rep - 1) % NM))]}"); done
    for size in "${SIZES_A[@]}"; do
        for load in "${LOADS_A[@]}"; do
            pps=$(awk -v r="$RATE" -v l="$load" -v s="$size" 'BEGIN { print r * 1e6 * l / 100 / (8 * s) }')
            for mode in "${rot[@]}"; do
                runs_at "$load" "$mode" || continue
                n=$((n + 1))
                # Fresh connections (idle timeouts) through A: the table holds FLOWS + 128.
                ip netns exec $P-cl python3 "$PY" prefill --src 10.81.10.1 --dst 10.81.20.1:9 \
                    --count "$FLOWS" --pps "$(awk -v r="$RATE" 'BEGIN { p = r * 1e6 * 0.5 / (8 * 64); print (p > 20000 ? 20000 : p) }')"
                case $mode in
                    statelet-nobp) how="--mode statelet --no-backpressure" ;;
                    # The duplication baseline runs as before the back-pressure
                    # (braid turns it off for duplication: the copies keep the
                    # link busy, the gate would only stall the walk); the
                    # flag says so to a braid built before that.
                    duplicate) how="--mode duplicate --no-backpressure" ;;
                    *) how="--mode $mode" ;;
                esac
                mig="$BIN/braid migrate --socket $WORK/a/sock mig $NFNAME --to 10.81.30.2:9480 --switch $WORK/to-b.yaml $how --deploy-ports bi,bo --timeout-ms 20000 --json"
                meta="{\"nf\":\"$NF\",\"mode\":\"$mode\",\"load_pct\":$load,\"rep\":$rep,\"link_mbit\":$RATE}"
                printf '[%d/%d %ds] rep %d %s B %s%% %s: ' $n $total $(( $(date +%s) - t_start )) "$rep" "$size" "$load" "$mode"
                if [ "$mode" = none ]; then
                    # The control: the same load for as long, no migration.
                    ip netns exec $P-cl python3 "$PY" run --src 10.81.10.1 --dst 10.81.20.1:7007 --size "$size" \
                        --pps "$pps" --warmup 4.5 --meta "$meta" --csv "$CSV" \
                        ${SERIES:+--series "$OUT/series-$TAG-$mode-$size-$load-$rep.json"}
                else
                    ip netns exec $P-cl python3 "$PY" run --src 10.81.10.1 --dst 10.81.20.1:7007 --size "$size" \
                        --pps "$pps" --warmup 1.5 --tail 1.5 --max-seconds 40 --migrate "$mig" --meta "$meta" --csv "$CSV" \
                        ${SERIES:+--series "$OUT/series-$TAG-$mode-$size-$load-$rep.json"}
                fi
                # Back to A (statelet, no load), B's chain removed: the next run starts as this one did.
                if "$BIN/braid" daemon --socket "$WORK/b/sock" chains 2>/dev/null | grep -q mig; then
                    "$BIN/braid" migrate --socket "$WORK/b/sock" mig $NFNAME --to 10.81.30.1:9480 --switch "$WORK/to-a.yaml" \
                        --timeout-ms 20000 --json >/dev/null \
                        || { echo "slim-sweep.sh: moving back to A failed" >&2; exit 1; }
                    "$BIN/braid" daemon --socket "$WORK/b/sock" remove mig >/dev/null
                fi
                route=$(ip -n $P-up route get 10.81.20.1)
                case $route in *" dev ua "*) ;; *) echo "slim-sweep.sh: traffic not back on A: $route" >&2; exit 1 ;; esac
            done
        done
    done
done
echo "== $n runs in $(( $(date +%s) - t_start )) s; report:"
python3 "$PY" report --csv "$CSV" --out-dir "$OUT" --prefix "slim-$TAG-"
