#!/usr/bin/env bash
# `braid migrate` end to end on namespaces (root): two braidd on two hosts,
# a firewall chain on host A under a `braid probe` UDP stream, moved live to
# host B. Everything it creates is removed on exit (also on failure).
#
#   sudo scripts/migrate-demo.sh            # the braid on the PATH (and braidd beside it), else target/debug
#   BIN=target/release sudo -E scripts/migrate-demo.sh
#
#                 ua ── (ai) hA: braidd A, chain `mig` (ao) ── da
#  cl ── u0 [up] <                                              > [dn] d0 ── sv
#                 ub ── (bi) hB: braidd B (bo) ─────────────── db
#                       hA st0 ──── state link ──── st1 hB
set -euo pipefail
# The binaries: $BIN, else the directory of the `braid` on the PATH when
# braidd is beside it (the README tour puts the tested build there), else
# target/debug.
if [ -z "${BIN:-}" ]; then
    on_path=$(command -v braid 2>/dev/null || true)
    BIN=target/debug
    if [ -n "$on_path" ] && [ -x "$(dirname "$(realpath "$on_path")")/braidd" ]; then
        BIN=$(dirname "$(realpath "$on_path")")
    fi
fi
for b in braid braidd; do
    [ -x "$BIN/$b" ] || { echo "migrate-demo.sh: no $b in $BIN (cargo build -p braid -p braid-daemon, or set BIN)" >&2; exit 2; }
done
P=bmd
NS=(cl up ha hb dn sv)
WORK=$(mktemp -d /tmp/braid-migrate-demo.XXXXXX)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for n in "${NS[@]}"; do ip netns del "$P-$n" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

. "$(dirname "$0")/lib/migration-net.sh"
netlab_namespaces
link cl c0 up u0; link up ua ha ai; link ha ao dn da; link up ub hb bi; link hb bo dn db
link dn d0 sv s0; link ha st0 hb st1
netlab_addresses 10.80

netlab_braidd a
netlab_braidd b --migrate-listen 10.80.30.2:9480
netlab_wait_braidd a
netlab_wait_braidd b

cat > "$WORK/chain.yaml" <<YAML
name: mig
ports:
  in: { kind: af_packet, iface: ai }
  out: { kind: af_packet, iface: ao }
nfs:
  - { name: fw, type: firewall, params: { default: drop, rules: [{ action: allow, src: 10.80.10.0/24, proto: udp }] } }
YAML
cat > "$WORK/switch.yaml" <<YAML
redirect:
  - { netns: $P-up, to: 10.80.20.0/24, via: 10.80.2.2, dev: ub }
  - { netns: $P-dn, to: 10.80.10.0/24, via: 10.80.2.1, dev: db }
restore:
  - { netns: $P-up, to: 10.80.20.0/24, via: 10.80.1.2, dev: ua }
  - { netns: $P-dn, to: 10.80.10.0/24, via: 10.80.1.1, dev: da }
markers:
  - { netns: $P-up, dev: ua, port: in }
  - { netns: $P-dn, dev: da, port: out }
YAML
"$BIN/braid" daemon --socket "$WORK/a/sock" deploy "$WORK/chain.yaml" >/dev/null

"$BIN/braid" echo --netns $P-sv --bind 10.80.20.1:7007 >/dev/null &
PIDS+=($!)
sleep 0.2
echo "== braid probe: 4,000 UDP packets, one per ms, while the firewall moves"
"$BIN/braid" probe --netns $P-cl 10.80.20.1 --sizes 256 --count 4000 --reps 1 --interval-us 1000 --no-svg >"$WORK/probe.txt" &
probe=$!
sleep 1.5
echo "== braid migrate mig fw --to 10.80.30.2:9480 --switch switch.yaml --deploy-ports bi,bo"
"$BIN/braid" migrate --socket "$WORK/a/sock" mig fw --to 10.80.30.2:9480 --switch "$WORK/switch.yaml" --deploy-ports bi,bo
wait $probe
cat "$WORK/probe.txt"
echo "== route from up to the server now:"
ip -n $P-up route get 10.80.20.1
