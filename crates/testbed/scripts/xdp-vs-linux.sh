#!/bin/bash
# Alternate Linux forwarding and braid XDP fwd on fw1 of the calvin-baseline
# testbed (256 B, 1000 packets each, twice), printing p50/p90 and how much
# ksoftirqd and NET_RX softirq work each run caused.
# usage: xdp-vs-linux.sh BRAID_BINARY   (root; needs bc and python3)
set -u
B=$(realpath "$1"); S=/run/braid/xdp-vs-linux.json; M=$(cd "$(dirname "$0")/.." && pwd)
$B testbed --state $S up $M/topologies/calvin-baseline.yaml >/dev/null
chrt -f 50 taskset -c 1 $B echo --netns braid-server --batch 1 2>/dev/null & E=$!
ksoft() { for p in $(pgrep -x 'ksoftirqd/[01]'); do awk '{print $14+$15}' /proc/$p/stat; done | paste -sd+ | bc; }
run() { # label
  local k0=$(ksoft) n0=$(awk '/NET_RX/{print $2+$3}' /proc/softirqs)
  chrt -f 50 taskset -c 0 $B probe 10.71.12.2 --netns braid-client --sizes 256 --count 1000 --reps 1 --no-svg --json 2>/dev/null \
    | python3 -c "import json,sys; l=json.load(sys.stdin)['latency'][0]; p=l['percentiles']; print('$1', 'p50', p['p50_us'], 'p90', p['p90_us'], 'mean', round(l['mean_us'],1), 'lost', l['lost'])"
  echo "   ksoftirqd ticks $(( $(ksoft) - k0 )), NET_RX softirqs $(( $(awk '/NET_RX/{print $2+$3}' /proc/softirqs) - n0 ))"
}
for i in 1 2; do
  run linux
  ip netns exec braid-fw1 sysctl -qw net.ipv4.ip_forward=0
  $B deploy $M/chains/xdp-fwd.yaml --state $S --hosts fw1 --stats-file /tmp/xvl-stats.json --quiet 2>/dev/null & D=$!
  for t in $(seq 30); do ip netns exec braid-client ping -c1 -W1 -q 10.71.12.2 >/dev/null 2>&1 && break; done
  run xdp
  kill $D; wait $D 2>/dev/null
  ip netns exec braid-fw1 sysctl -qw net.ipv4.ip_forward=1
done
kill $E; wait $E 2>/dev/null
$B testbed --state $S down >/dev/null
