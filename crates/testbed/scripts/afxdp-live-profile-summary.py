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
