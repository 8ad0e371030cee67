#!/usr/bin/env python3
"""Instructions per packet of `braid bench`, counted by callgrind: a
measure of the dataplane's own cost that load on the machine cannot move.

Wall-clock rates on a shared VM swing by +-20-40 % per round, far more than
the few per cent a change to the packet loop costs or saves. Instruction
counts under valgrind are repeatable to a fraction of a per cent, so this
compares builds (before/after a change, telemetry compiled in/out) by the
instructions each spends per packet on the same chain and traffic.

What is counted: `braid bench` runs `spin()` three times (generator only,
warm-up, measured). The inclusive instructions of the measured call divided
by the packets it reports (`chain.packets` of `--json`) is the whole
pipeline per packet: generator, chain, sink. The first call (generator
only, `baseline.packets`) gives the generator's share; the difference is
the chain's own cost, NFs and graph together.

Usage:
  scripts/bench-instructions.py --bin before=/path/braid-old --bin after=target/release/braid \\
      --case fwd:examples/fwd.yaml --case chain4:examples/chain4.yaml:64:1024 [--duration 1]

A case is NAME:CHAIN[:FRAME_SIZE[:FLOWS[:ipv6]]] (`ipv6`: `bench --ipv6`). Prints a table per case and the
ratios of every build against the first (instructions of the first divided
by this one's: above 1.0 means fewer instructions, i.e. faster if rate
followed instructions). `--json FILE` writes the numbers too.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SPIN = re.compile(r"braid_runtime::bench::spin\b")


def spin_calls(path):
    """Inclusive Ir of every call into `bench::spin`, ordered by the line
    of the call site: [generator only, warm-up, measured]."""
    names = {}
    calls = []
    target_is_spin = False
    pending = None  # the calls= line was seen; the next cost line is the call's
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith(("cfn=", "cfi=", "cob=")):
                if line.startswith("cfn="):
                    m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line)
                    if m:
                        ident, name = m.group(1), m.group(2)
                        if name is not None:
                            names[ident] = name
                        target_is_spin = bool(SPIN.search(names.get(ident, "")))
                    else:
                        target_is_spin = bool(SPIN.search(line[4:]))
                continue
            if line.startswith("fn="):
                m = re.match(r"fn=\((\d+)\)(?: (.*))?", line)
                if m and m.group(2) is not None:
                    names[m.group(1)] = m.group(2)
                target_is_spin = False
                continue
            if line.startswith("calls="):
                pending = target_is_spin
                continue
            if pending is not None and line and (line[0].isdigit() or line[0] in "+-*"):
                if pending:
                    parts = line.split()
                    calls.append((parts[0], int(parts[1])))
                pending = None
                target_is_spin = False
    # Positions are absolute (--compress-pos=no): order by call-site line.
    return [ir for _, ir in sorted(calls, key=lambda c: int(c[0]))]


def run_case(binary, chain, frame, flows, duration, keep, ipv6=False):
    with tempfile.TemporaryDirectory(prefix="braid-cg-") as tmp:
        out = os.path.join(tmp, "run.cg")
        cmd = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
            "--compress-strings=no", "--compress-pos=no",
            binary, "bench", chain, "--frame-size", str(frame), "--flows", str(flows),
            "--duration", str(duration), "--json",
        ] + (["--ipv6"] if ipv6 else [])
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.exit(f"{binary} on {chain}: exit {p.returncode}\n{p.stderr[-2000:]}")
        result = json.loads(p.stdout)
        irs = spin_calls(out)
        if keep:
            os.replace(out, keep)
    if len(irs) != 3:
        sys.exit(f"{binary}: expected 3 calls of bench::spin in the profile, found {len(irs)}")
    base_pkts = result["baseline"]["packets"]
    pkts = result["chain"]["packets"]
    gen = irs[0] / base_pkts
    whole = irs[2] / pkts
    return {"pipeline": whole, "generator": gen, "chain": whole - gen,
            "packets": pkts, "baseline_packets": base_pkts}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH (the first is the reference)")
    ap.add_argument("--case", action="append", required=True, help="NAME:CHAIN[:FRAME_SIZE[:FLOWS[:ipv6]]]")
    ap.add_argument("--duration", type=float, default=1.0, help="bench --duration under valgrind (s)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", help="keep the callgrind files in this folder")
    a = ap.parse_args()
    bins = []
    for b in a.bin:
        name, _, path = b.partition("=")
        if not path or not os.access(path, os.X_OK):
            sys.exit(f"--bin {b}: expected NAME=PATH of an executable braid")
        bins.append((name, path))
    cases = []
    for c in a.case:
        parts = c.split(":")
        if len(parts) < 2 or not os.path.exists(parts[1]):
            sys.exit(f"--case {c}: expected NAME:CHAIN[:FRAME_SIZE[:FLOWS[:ipv6]]] with an existing CHAIN")
        if len(parts) > 4 and parts[4] != "ipv6":
            sys.exit(f"--case {c}: the fifth field can only be `ipv6`")
        frame = int(parts[2]) if len(parts) > 2 else 64
        flows = int(parts[3]) if len(parts) > 3 else 1
        cases.append((parts[0], parts[1], frame, flows, len(parts) > 4))
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
    results = {}
    for cname, chain, frame, flows, ipv6 in cases:
        print(f"{cname} ({chain}, {frame} B, {flows} flows): instructions per packet")
        print(f"  {'build':<14} {'pipeline':>10} {'generator':>10} {'chain':>10} {'ref/this':>9} {'chain ref/this':>15}")
        ref = None
        for bname, path in bins:
            keep = os.path.join(a.keep, f"{cname}-{bname}.cg") if a.keep else None
            r = run_case(path, chain, frame, flows, a.duration, keep, ipv6)
            results.setdefault(cname, {})[bname] = r
            if ref is None:
                ref = r
            ratio = ref["pipeline"] / r["pipeline"]
            cratio = ref["chain"] / r["chain"] if r["chain"] > 0 else float("nan")
            print(f"  {bname:<14} {r['pipeline']:>10.1f} {r['generator']:>10.1f} {r['chain']:>10.1f} {ratio:>9.3f} {cratio:>15.3f}")
        sys.stdout.flush()
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
