#!/bin/bash
# CPU of an idle braidd: 25 chains x 4 NFs (firewall, xor, xor, fwd; the
# chains of docs/benchmarks.md "braidd /metrics with 100 NFs") on
# AF_PACKET ports of veths whose peers stay down (no traffic), user + system
# time of the braidd process from /proc/PID/stat over a window, after a
# settle time. Several builds side by side, one daemon at a time, in
# rotating order (A B, B A, ...):
#   scripts/idle-cpu.sh [-r rounds] [-w window_s] NAME=path/to/braidd ...   # as root
# Prints one line per measurement and the mean per build (CPU seconds per
# second, i.e. cores).
set -euo pipefail
ROUNDS=3
WINDOW=10
while getopts "r:w:" o; do
    case $o in
    r) ROUNDS=$OPTARG ;;
    w) WINDOW=$OPTARG ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-r rounds] [-w window_s] NAME=braidd ..." >&2; exit 2; }
NS=bidle$$
DIR=$(mktemp -d /tmp/braid-idle-cpu.XXXXXX)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add "$NS"
for k in $(seq -w 0 24); do
    for s in a b; do
        ip -n "$NS" link add "bi$k$s" type veth peer name "bp$k$s"
        ip -n "$NS" link set "bi$k$s" up
    done
done
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # name bin
    local name=$1 bin=$2 sock=$DIR/braidd.sock
    rm -rf "$DIR/state" "$sock"
    ip netns exec "$NS" "$bin" --socket "$sock" --state-dir "$DIR/state" 2>>"$DIR/$name.log" &
    PID=$!
    for _ in $(seq 100); do
        curl -sf --unix-socket "$sock" http://braidd/v1/status >/dev/null 2>&1 && break
        sleep 0.1
    done
    for k in $(seq -w 0 24); do
        printf 'name: s%s\nports:\n  in: { kind: af_packet, iface: bi%sa }\n  out: { kind: af_packet, iface: bi%sb }\nnfs:\n  - { name: fw, type: firewall, placement: user, params: { default: allow } }\n  - { name: x1, type: xor, params: { key_text: braid } }\n  - { name: x2, type: xor, params: { key_text: braid } }\n  - { name: f, type: fwd }\n' "$k" "$k" "$k" |
            curl -sf --unix-socket "$sock" -H 'Content-Type: application/yaml' \
                --data-binary @- http://braidd/v1/chains >/dev/null
    done
    sleep 2
    local t0 c0 c1 t1
    t0=$(date +%s.%N)
    c0=$(cpu_ticks "$PID")
    sleep "$WINDOW"
    c1=$(cpu_ticks "$PID")
    t1=$(date +%s.%N)
    kill -TERM "$PID"
    wait "$PID" || true
    PID=
    awk -v n="$name" -v c="$((c1 - c0))" -v hz="$HZ" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%s: %.3f CPU s per s (%d ticks in %.1f s)\n", n, c / hz / (t1 - t0), c, t1 - t0 }' |
        tee -a "$DIR/results"
}

for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then order=("$@"); else order=(); for ((i = $# ; i >= 1 ; i--)); do order+=("${!i}"); done; fi
    for spec in "${order[@]}"; do
        measure "${spec%%=*}" "${spec#*=}"
    done
done
echo "mean per build:"
awk -F': ' '{ split($2, a, " "); s[$1] += a[1]; n[$1]++ } END { for (k in s) printf "  %s: %.3f CPU s per s over %d rounds\n", k, s[k] / n[k], n[k] }' "$DIR/results"
