# Sourced by scripts/migrate-demo.sh and scripts/slim-sweep.sh: the
# namespaces and addressing of the two-braidd migration testbed they share
# (client cl, router up, braidd hosts ha and hb, router dn, server sv; the
# state link between ha and hb). The caller sets P (namespace prefix) and
# NS (namespace names without it) and owns the clean-up (its EXIT trap).

# Create every namespace of NS: IPv6 off (no stray solicitations), reverse
# path filtering off, loopback up; forwarding on the two routers.
netlab_namespaces() {
    for n in "${NS[@]}"; do
        ip netns add "$P-$n"
        ip netns exec "$P-$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
            net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
        ip -n "$P-$n" link set lo up
    done
    ip netns exec "$P-up" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$P-dn" sysctl -qw net.ipv4.ip_forward=1
}

# link NS_A DEV_A NS_B DEV_B: a veth pair, checksum offload and GRO off
# (frames go through AF_PACKET and the delay line as they are on the wire).
link() {
    ip -n "$P-$1" link add "$2" type veth peer name "$4" netns "$P-$3"
    for end in "$1 $2" "$3 $4"; do
        set -- $end
        ip netns exec "$P-$1" ethtool -K "$2" tx off gro off >/dev/null
        ip -n "$P-$1" link set "$2" up
    done
}
mac() { ip netns exec "$P-$1" cat "/sys/class/net/$2/address"; }
# addr NS DEV IP (a /24)
addr() { ip -n "$P-$1" addr add "$3/24" dev "$2"; }
# neigh NS DEV IP PEER_NS PEER_DEV: a permanent neighbour entry.
neigh() { ip -n "$P-$1" neigh replace "$3" lladdr "$(mac "$4" "$5")" dev "$2" nud permanent; }

# netlab_addresses NET (e.g. 10.80): the addresses, neighbours and routes
# of the testbed's links (cl-up, up-ha/hb, ha/hb-dn, dn-sv, the state link),
# once `link` made them: client NET.10.1, server NET.20.1, state link
# NET.30.1 (ha) and NET.30.2 (hb); the path through ha is NET.1.x, through
# hb NET.2.x; traffic takes the path through ha until a migration switches.
netlab_addresses() {
    local n=$1
    addr cl c0 $n.10.1; addr up u0 $n.10.2; addr up ua $n.1.1; addr dn da $n.1.2
    addr up ub $n.2.1; addr dn db $n.2.2; addr dn d0 $n.20.2; addr sv s0 $n.20.1
    addr ha st0 $n.30.1; addr hb st1 $n.30.2
    neigh cl c0 $n.10.2 up u0; neigh up u0 $n.10.1 cl c0
    neigh up ua $n.1.2 dn da; neigh dn da $n.1.1 up ua
    neigh up ub $n.2.2 dn db; neigh dn db $n.2.1 up ub
    neigh dn d0 $n.20.1 sv s0; neigh sv s0 $n.20.2 dn d0
    neigh ha st0 $n.30.2 hb st1; neigh hb st1 $n.30.1 ha st0
    ip -n "$P-cl" route add default via $n.10.2
    ip -n "$P-sv" route add default via $n.20.2
    ip -n "$P-up" route add $n.20.0/24 via $n.1.2 dev ua
    ip -n "$P-dn" route add $n.10.0/24 via $n.1.1 dev da
}

# netlab_braidd H [ARGS...]: braidd in namespace $P-hH (socket, state and
# log under $WORK/H, no periodic checkpoints, the migration key every
# braidd of the lab shares: $WORK/migrate.key, made at the first call),
# its pid appended to PIDS; netlab_wait_braidd H waits (5 s at most) for
# its API socket.
netlab_braidd() {
    local h=$1
    shift
    mkdir -p "$WORK/$h"
    if [ ! -s "$WORK/migrate.key" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/migrate.key")
    fi
    ip netns exec "$P-h$h" "$BIN/braidd" --socket "$WORK/$h/sock" --state-dir "$WORK/$h/state" \
        --checkpoint-interval-ms 0 --migrate-key-file "$WORK/migrate.key" "$@" 2>"$WORK/$h/log" &
    PIDS+=($!)
}
netlab_wait_braidd() {
    for _ in $(seq 100); do [ -S "$WORK/$1/sock" ] && break; sleep 0.05; done
}
