#!/usr/bin/env python3
"""Summarise afxdp-live-profile.sh's profile.tsv: per binary, options and
rate, the median over the rounds of each per-frame figure (frames: what
went through the NF, both directions)."""
import csv
import statistics
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
groups = defaultdict(list)
for r in rows:
    groups[(r["binary"], r["opts"], int(r["rate"]))].append(r)


def per_frame(r, key, scale=1.0):
    f = int(r["frames"] or 0)
    v = r.get(key, "")
    if f == 0 or v in ("", None):
        return None
    return float(v) * scale / f


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"


print("| binary | options | rate pps | rounds | frames | lost | CPU ns/frame | run-queue ns/frame "
      "| syscalls/frame | sendto | recvfrom | poll | getsockopt | vol. switches/frame "
      "| invol. | frames/batch | fill ring empty |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (b, o, rate), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
    fb = med([int(r["frames"]) / int(r["batches"]) if int(r["batches"] or 0) else None for r in rs])
    print("| " + " | ".join([
        b, f"`{o}`", str(rate), str(len(rs)),
        fmt(med([int(r["frames"]) for r in rs]), 0),
        ",".join(r["lost"] for r in rs),
        fmt(med([per_frame(r, "oncpu_ns") for r in rs]), 0),
        fmt(med([per_frame(r, "rq_ns") for r in rs]), 0),
        fmt(med([per_frame(r, "syscalls") for r in rs])),
        fmt(med([per_frame(r, "sendto") for r in rs])),
        fmt(med([per_frame(r, "recvfrom") for r in rs])),
        fmt(med([per_frame(r, "poll") for r in rs])),
        fmt(med([per_frame(r, "getsockopt") for r in rs])),
        fmt(med([per_frame(r, "vcs") for r in rs])),
        fmt(med([per_frame(r, "nvcs") for r in rs])),
        fmt(fb),
        ",".join(r.get("fill_ring_empty", "") or "" for r in rs),
    ]) + " |")

# The whole machine over the step (/proc/stat): how busy both CPUs were and
# the CPU time per request (one request and its answer: two frames through
# the NF), against Linux forwarding (option set `linux`) at the same rate.
if not any(r.get("m_user") not in (None, "") for r in rows):
    sys.exit(0)


def machine(r):
    """(busy share, busy ns per request, user, system, softirq ns per request)."""
    try:
        tck = int(r["clk_tck"])
        u, s, q, i, st = (int(r[k]) for k in ("m_user", "m_system", "m_softirq", "m_idle", "m_steal"))
        req = int(r["requests"])
    except (KeyError, TypeError, ValueError):
        return None
    busy = u + s + q + st
    if req == 0 or busy + i == 0:
        return None
    ns = 1e9 / tck / req
    return busy / (busy + i), busy * ns, u * ns, s * ns, q * ns


def nf_wait_share(r):
    on, rq = int(r["oncpu_ns"] or 0), int(r["rq_ns"] or 0)
    return rq / (on + rq) if on + rq else None


print()
print("The whole machine (both CPUs, /proc/stat) over the step; per request = per request sent "
      "(a request and its answer cross the NF host twice). NF waiting = the NF threads' run-queue "
      "time / (run-queue + on-CPU time): runnable, but no CPU.")
print()
print("| binary | options | rate pps | lost | of them: AF_XDP fill ring empty, echo socket full, probe socket full "
      "| machine busy | machine CPU ns/request | user | system "
      "| softirq | NF on-CPU ns/request | NF waiting |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (b, o, rate), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
    ms = [machine(r) for r in rs]
    col = lambda k: med([m[k] if m else None for m in ms])
    busy = col(0)
    nf = med([int(r["oncpu_ns"]) / int(r["requests"]) if o != "linux" and r.get("requests") not in ("", "0", None) else None for r in rs])
    print("| " + " | ".join([
        b, f"`{o}`", str(rate), ",".join(r["lost"] for r in rs),
        "; ".join(f"{r.get('fill_ring_empty') or 0}, {r.get('rcvbuf_server', '')}, {r.get('rcvbuf_client', '')}" for r in rs),
        "n/a" if busy is None else f"{busy * 100:.0f} %",
        fmt(col(1), 0), fmt(col(2), 0), fmt(col(3), 0), fmt(col(4), 0),
        fmt(nf, 0) if o != "linux" else "–",
        (lambda w: "n/a" if w is None else f"{w * 100:.0f} %")(med([nf_wait_share(r) for r in rs])) if o != "linux" else "–",
    ]) + " |")
