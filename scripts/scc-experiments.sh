#!/usr/bin/env bash
# SCC's experiments on this machine, each in one interleaved run, with
# braid's own commands (docs/profiling.md, "SCC on this machine"):
#
#   1. table2.txt   context-switch and system-call cost per policy
#                   (SCC Table 2):           braid profile --costs ROUNDS
#   2. batch.md     one router at a fixed rate, batch 1..256, AF_PACKET and
#                   AF_XDP (SCC Fig. 8):     braid tune --scc-batch ...
#      batch-fifo.md  the same, the router at SCHED_FIFO 50 (--nf-prio 50)
#   3. chains.md    chains of 1..8 routers as processes sharing one CPU,
#                   default vs batch CFS (with and without batched I/O) vs
#                   poll vs adaptive (SCC Fig. 10): braid tune --scc-chains
#   4. tune.md      `braid tune` on examples/chain4.yaml: the adaptive mode
#                   against the best static candidate and the default.
#
# usage: scc-experiments.sh BRAID_BINARY OUT_DIR [REPS]
#   REPS interleaved repetitions per experiment (default 3). Environment:
#   BATCH_RATE (default 100000 pps), CHAIN_RATE (default 20000 pps),
#   PACKETS measured per point (default 5000), WARMUP packets before them
#   (default 500; the adaptive mode needs ~1 s to settle: give it 20000 at
#   20 kpps), CANDIDATES of experiment 3, ONLY="1 2 3 4" runs only
#   these experiments. Every experiment is bounded (timeout 15 min).
# Needs root (namespaces, AF_XDP, real-time priorities of the measuring
# threads). Leaves nothing behind: each braid command removes its own
# namespaces, veth pairs, sockets and processes, also when interrupted.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "scc-experiments.sh needs root" >&2; exit 1; fi
if [ $# -lt 2 ]; then sed -n '/^# usage/,/^# Needs root/p' "$0" >&2; exit 2; fi
BRAID=$(realpath "$1"); OUT=$2; REPS=${3:-3}
BATCH_RATE=${BATCH_RATE:-100000}; CHAIN_RATE=${CHAIN_RATE:-20000}; PACKETS=${PACKETS:-5000}
WARMUP=${WARMUP:-500}; CANDIDATES=${CANDIDATES:-default,per-packet,batch-1,batch-2,batch-16,batch-32,poll,poll-fifo,adaptive}
ONLY=${ONLY:-1 2 3 4}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
run() { # name command...
    local name=$1; shift
    echo "== $name: $*" | tee "$OUT/$name.cmd"
    { date -u; uptime; } >>"$OUT/$name.cmd"
    timeout 900 "$@" >"$OUT/$name.md" 2>"$OUT/$name.log"
    cat "$OUT/$name.md"
}
for e in $ONLY; do
    case $e in
    1) run table2 "$BRAID" profile --costs 5 ;;
    2) run batch "$BRAID" tune --scc-batch af_packet,af_xdp --rate "$BATCH_RATE" \
           --packets "$PACKETS" --warmup "$WARMUP" --reps "$REPS"
       # The same with the router at SCHED_FIFO 50 (sleeping when idle): on
       # a machine busy with other work it then does not wait for its CPU.
       run batch-fifo "$BRAID" tune --scc-batch af_packet,af_xdp --nf-prio 50 \
           --rate "$BATCH_RATE" --packets "$PACKETS" --warmup "$WARMUP" --reps "$REPS" ;;
    3) run chains "$BRAID" tune --scc-chains 1-8 --rate "$CHAIN_RATE" --packets "$PACKETS" \
           --warmup "$WARMUP" --reps "$REPS" \
           --candidates "$CANDIDATES" ;;
    4) run tune "$BRAID" tune "$HERE/../examples/chain4.yaml" --rate "$CHAIN_RATE" \
           --packets "$PACKETS" --warmup "$WARMUP" --reps "$REPS" \
           --candidates default,batch-32,poll,poll-fifo,adaptive ;;
    *) echo "unknown experiment $e" >&2; exit 2 ;;
    esac
done
