#!/usr/bin/env python3
"""Side-by-side `braid bench` of two or more braid binaries, interleaved.

Every round runs every case on every binary, the binaries in a rotating
order (so none always runs first, right after another's warm-up); the
report gives, per case and binary, the median chain rate (Mpps, the refill
generator plus the chain, as `braid bench` reports it) and each binary's
median ratio to the first binary, with the min..max of the per-round
ratios: on a shared machine one round says little, the spread says how
much.

    scripts/bench-ab.py --bin before=/path/braid-before --bin after=target/release/braid \\
        --case fwd:examples/fwd.yaml --case chain4:examples/chain4.yaml:1400 \\
        --rounds 7 --duration 1

A case is LABEL:CHAIN.yaml[:FRAME_SIZE[:FLOWS]] (default 64 B, 1024 flows).
"""

import argparse
import json
import statistics
import subprocess
import sys


def run(binary, chain, frame, flows, duration):
    out = subprocess.run(
        [binary, "bench", chain, "--frame-size", str(frame), "--flows", str(flows),
         "--duration", str(duration), "--json"],
        check=True, capture_output=True, text=True).stdout
    v = json.loads(out)
    stages = {s["name"]: s["ns_per_packet"] for s in v.get("stages", [])}
    return v["chain"]["mpps"], stages


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH; the first is the reference")
    ap.add_argument("--case", action="append", required=True, help="LABEL:CHAIN.yaml[:FRAME[:FLOWS]]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--json-out", help="also write every sample here")
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin]
    if any(len(b) != 2 for b in bins) or len(bins) < 2:
        sys.exit("--bin NAME=PATH, at least two")
    cases = []
    for c in a.case:
        parts = c.split(":")
        if len(parts) < 2:
            sys.exit(f"--case {c}: LABEL:CHAIN.yaml[:FRAME[:FLOWS]]")
        frame = int(parts[2]) if len(parts) > 2 else 64
        flows = int(parts[3]) if len(parts) > 3 else 1024
        cases.append((parts[0], parts[1], frame, flows))

    samples = {(c[0], b[0]): [] for c in cases for b in bins}
    stage_ns = {(c[0], b[0]): [] for c in cases for b in bins}
    for r in range(a.rounds):
        for label, chain, frame, flows in cases:
            order = bins[r % len(bins):] + bins[:r % len(bins)]
            for name, path in order:
                mpps, stages = run(path, chain, frame, flows, a.duration)
                samples[(label, name)].append(mpps)
                stage_ns[(label, name)].append(stages)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    ref = bins[0][0]
    print(f"| case | frame B | " + " | ".join(f"{n} Mpps (median)" for n, _ in bins)
          + " | " + " | ".join(f"{n}/{ref} (min..max)" for n, _ in bins[1:]) + " |")
    print("|---|---:|" + "---:|" * len(bins) + "---:|" * (len(bins) - 1))
    for label, chain, frame, flows in cases:
        meds = [statistics.median(samples[(label, n)]) for n, _ in bins]
        cells = [f"{m:.3f}" for m in meds]
        for n, _ in bins[1:]:
            per_round = [x / y for x, y in zip(samples[(label, n)], samples[(label, ref)])]
            cells.append(f"**{statistics.median(per_round):.3f}** ({min(per_round):.2f}..{max(per_round):.2f})")
        print(f"| {label} | {frame} | " + " | ".join(cells) + " |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"bins": bins, "cases": cases, "rounds": a.rounds, "duration": a.duration,
                       "mpps": {f"{k[0]}/{k[1]}": v for k, v in samples.items()},
                       "stage_ns": {f"{k[0]}/{k[1]}": v for k, v in stage_ns.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
