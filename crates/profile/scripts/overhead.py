#!/usr/bin/env python3
# braid run vs braid profile on a chain, alternating, medians (docs/benchmarks.md).
# usage: overhead.py BRAID ROUNDS MAPPING [CHAIN]
import json, resource, subprocess, sys, time, statistics
B = sys.argv[1]; rounds = int(sys.argv[2]); mapping = sys.argv[3]
chain = sys.argv[4] if len(sys.argv) > 4 else "examples/chain4-memory.yaml"
def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN); return r.ru_utime + r.ru_stime
res = {"run": [], "profile": []}
for i in range(rounds):
    for kind in ("run", "profile"):
        c0 = cpu(); w0 = time.monotonic()
        out = subprocess.run([B, kind, chain, "--mapping", mapping, "--json"], capture_output=True, check=True).stdout
        w1 = time.monotonic(); c1 = cpu()
        j = json.loads(out)
        el = j["seconds"] if kind == "run" else j["elapsed_ns"] / 1e9
        res[kind].append((el, c1 - c0, w1 - w0))
        print(f"{i+1} {kind:8} run-interval {el:.3f} s  process CPU {c1-c0:.3f} s  wall {w1-w0:.3f} s", flush=True)
for k in (0, 1, 2):
    name = ["run interval (s)", "process CPU (s)", "command wall (s)"][k]
    a = statistics.median(x[k] for x in res["run"]); b = statistics.median(x[k] for x in res["profile"])
    print(f"median {name}: run {a:.3f}  profile {b:.3f}  ratio profile/run {b/a:.3f}")
