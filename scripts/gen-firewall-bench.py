#!/usr/bin/env python3
"""Write examples/bench/firewall-1k.yaml (IPv4) and firewall6-1k.yaml (IPv6):
1,000 firewall rules each, for `braid bench` (docs/benchmarks.md, "IPv6
firewall"). 999 random rules (every 10th a drop; random source prefixes
/16-/24 (IPv6 /32-/64), destination /16-/32 (/48-/128), tcp or udp, one
destination port or a range) that the bench traffic never matches, then the
allow rule the traffic matches: every packet is classified through all
1,000 rules (the classifier's worst case: the AND runs over all 16 words).
Deterministic (fixed seed): run it again to get the same files."""
import ipaddress
import random
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/bench")
rng = random.Random(14)


def port(r):
    if r.random() < 0.5:
        return str(r.randrange(1, 65536))
    lo = r.randrange(1, 60000)
    return f"'{lo}-{lo + r.randrange(1, 5000)}'"


def v4(r, lo, hi):
    while True:
        a = r.randrange(11 << 24, 224 << 24)  # never 10/8: the traffic's
        n = r.randrange(lo, hi + 1)
        net = ipaddress.ip_network((a >> (32 - n) << (32 - n), n))
        return str(net)


def v6(r, lo, hi):
    while True:
        a = (0x2001 << 112) | r.getrandbits(112)
        if (a >> 80) in (0x20010DB80000, 0x20010DB80001):  # the traffic's
            continue
        n = r.randrange(lo, hi + 1)
        return str(ipaddress.ip_network((a >> (128 - n) << (128 - n), n)))


def write(name, family, last, traffic):
    lines = [
        f"# 1,000 {family} firewall rules for `braid bench` (scripts/gen-firewall-bench.py;",
        "# docs/benchmarks.md, \"IPv6 firewall\"). The bench traffic matches only the",
        "# last rule, so every packet is classified through all 1,000. conntrack is off:",
        "# the classifier decides every packet (scripts/firewall6-bench.sh also runs",
        "# it with conntrack on).",
        "#",
        f"#   {traffic}",
        f"name: bench-{name}",
        "nfs:",
        "  - name: fw",
        "    type: firewall",
        "    placement: user",
        "    params:",
        "      default: drop",
        "      conntrack: false",
        "      rules:",
    ]
    r = random.Random(14)
    for i in range(999):
        action = "drop" if i % 10 == 9 else "allow"
        if family == "IPv4":
            src, dst = v4(r, 16, 24), v4(r, 16, 32)
        else:
            src, dst = v6(r, 32, 64), v6(r, 48, 128)
        proto = r.choice(["tcp", "udp"])
        lines.append(
            f"        - {{action: {action}, src: '{src}', dst: '{dst}', proto: {proto}, dst_ports: {port(r)}}}"
        )
    lines.append(f"        - {last}")
    (out / f"{name}.yaml").write_text("\n".join(lines) + "\n")


write(
    "firewall-1k",
    "IPv4",
    "{action: allow, src: '10.0.0.0/16', dst: '10.1.0.0/16', proto: udp, dst_ports: 5000}",
    "braid bench examples/bench/firewall-1k.yaml --flows 1024 --duration 2",
)
write(
    "firewall6-1k",
    "IPv6",
    "{action: allow, src: '2001:db8::/48', dst: '2001:db8:1::/48', proto: udp, dst_ports: 5000}",
    "braid bench examples/bench/firewall6-1k.yaml --ipv6 --flows 1024 --duration 2",
)
