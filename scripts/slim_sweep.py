#!/usr/bin/env python3
"""Helper of scripts/slim-sweep.sh (SliM §4.7 load sweep), stdlib only.

Subcommands:
  prefill   open N client flows: one small UDP datagram from each of N
            source ports (the NF's connection table fills up)
  run       paced UDP load over K flows to an echo server, time-stamped
            and numbered; optionally runs a migration command after a
            warm-up and keeps the load on until it ended plus a tail;
            appends one CSV row (metrics of the run) to --csv
  report    CSV -> SVG plots (one per metric, one line per mode and size)
            and a Markdown table of medians (min-max) per point
  selftest  report on a fixed input: the SVGs must carry every point

Metrics of a run (see docs/migration.md, "The SliM load sweep"):
  lost            datagrams sent that never came back (1 s grace at the end)
  loss_s          lost / packet rate: SliM's "seconds of packet loss"
  base_rtt_ms     median RTT of the packets sent before the migration began
  peak_rtt_inc_ms peak over 500 ms windows (by send time, 100 ms steps) of
                  the mean RTT, minus base_rtt_ms
  migration_ms, until_switch_ms, state_bytes, packets_buffered, ...
                  from `braid migrate --json`
"""

import argparse
import csv
import json
import math
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

HDR = struct.Struct("!IIQ")  # magic, seq, send time (ns, CLOCK_MONOTONIC)
MAGIC = 0x534C494D  # "SLIM"
ETH_IP_UDP = 14 + 20 + 8  # frame bytes around the UDP payload

CSV_FIELDS = [
    "nf", "mode", "size", "load_pct", "rep", "link_mbit", "pps", "flows",
    "sent", "received", "lost", "loss_s", "reordered", "duplicates",
    "base_rtt_ms", "peak_rtt_ms", "peak_rtt_inc_ms",
    "outcome", "migration_ms", "until_switch_ms", "outage_ms", "redirect_ms", "drain_ms", "state_bytes",
    "statelets", "chunks", "duplicated_packets", "packets_buffered",
    "packets_dropped_at_destination", "in_flight_at_switch", "peak_in_flight",
    "bytes_at_switch", "changed_flows_sent", "error",
]
# Modes in table order; `statelet-nobp` is the statelet mode with the state
# stream's back-pressure off (`braid migrate --no-backpressure`): the
# behaviour before it, interleaved in the same run for a before/after.
MODE_ORDER = ["statelet", "statelet-nobp", "duplicate", "stop-copy", "none"]


def prefill(args):
    host, port = args.dst.rsplit(":", 1)
    dst = (host, int(port))
    gap = 1.0 / args.pps if args.pps > 0 else 0.0
    t = time.monotonic()
    for i in range(args.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((args.src, args.first + i))
            s.sendto(b"prefill!", dst)
        finally:
            s.close()
        t += gap
        d = t - time.monotonic()
        if d > 0.0005:
            time.sleep(d)
    return 0


def windows_peak(samples, width_ns, step_ns):
    """Peak mean RTT (ms) over windows of send time; samples: (t_send, rtt_ns) sorted."""
    if not samples:
        return float("nan")
    t0, t_end = samples[0][0], samples[-1][0]
    best = float("nan")
    lo = 0
    hi = 0
    acc = 0
    start = t0
    n = len(samples)
    while start + width_ns <= t_end + step_ns:
        while hi < n and samples[hi][0] < start + width_ns:
            acc += samples[hi][1]
            hi += 1
        while lo < hi and samples[lo][0] < start:
            acc -= samples[lo][1]
            lo += 1
        if hi > lo:
            m = acc / (hi - lo) / 1e6
            if math.isnan(best) or m > best:
                best = m
        start += step_ns
    return best


def write_series(path, t0, sent_t, rtt, mig):
    """One run's packets as [send time ms since the start, RTT ms or None
    when lost], with the migration's start and end and, from its summary,
    the switch (ms since the start), to look at what a metric summarises."""
    ms = lambda t: None if t is None else round((t - t0) / 1e6, 3)
    summary = None
    if mig["out"] is not None:
        try:
            summary = json.loads(mig["out"][1])
        except ValueError:
            pass
    start = ms(mig["t_start"])
    switch = None
    if start is not None and isinstance(summary, dict) and "until_switch_ms" in summary:
        switch = round(start + summary["until_switch_ms"], 3)
    with open(path, "w") as f:
        json.dump({
            "migration_start_ms": start, "switch_ms": switch, "migration_end_ms": ms(mig["t_end"]),
            "packets": [[ms(t), None if r < 0 else round(r / 1e6, 3)] for t, r in zip(sent_t, rtt)],
        }, f)


def run(args):
    host, port = args.dst.rsplit(":", 1)
    dst = (host, int(port))
    payload = max(args.size - ETH_IP_UDP, HDR.size)
    pad = b"\0" * (payload - HDR.size)
    socks = []
    sel = selectors.DefaultSelector()
    for i in range(args.flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((args.src, args.first_port + i))
        s.connect(dst)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    n_max = int(args.pps * (args.warmup + args.max_seconds + args.tail)) + 16
    sent_t = [0] * n_max
    rtt = [-1] * n_max
    counters = {"dup": 0, "reord": 0, "last": -1, "send_err": 0}
    stop_rx = threading.Event()

    def receiver():
        while not stop_rx.is_set():
            for key, _ in sel.select(0.05):
                s = key.fileobj
                while True:
                    try:
                        d = s.recv(4096)
                    except BlockingIOError:
                        break
                    now = time.monotonic_ns()
                    if len(d) < HDR.size:
                        continue
                    magic, seq, ts = HDR.unpack_from(d)
                    if magic != MAGIC or seq >= n_max:
                        continue
                    if rtt[seq] >= 0:
                        counters["dup"] += 1
                        continue
                    rtt[seq] = now - ts
                    if seq < counters["last"]:
                        counters["reord"] += 1
                    else:
                        counters["last"] = seq

    rx = threading.Thread(target=receiver, daemon=True)
    rx.start()

    mig = {"proc": None, "t_start": None, "t_end": None, "out": None}

    def migrate():
        mig["t_start"] = time.monotonic_ns()
        p = subprocess.run(args.migrate, shell=True, capture_output=True, text=True)
        mig["t_end"] = time.monotonic_ns()
        mig["out"] = (p.returncode, p.stdout, p.stderr)

    gap_ns = int(1e9 / args.pps)
    t0 = time.monotonic_ns()
    nxt = t0
    seq = 0
    mthread = None
    stop_at = t0 + int((args.warmup + args.max_seconds) * 1e9) if args.migrate else t0 + int(
        args.warmup * 1e9)
    while seq < n_max:
        now = time.monotonic_ns()
        if args.migrate and mthread is None and now - t0 >= args.warmup * 1e9:
            mthread = threading.Thread(target=migrate, daemon=True)
            mthread.start()
        if mthread is not None and mig["t_end"] is not None:
            stop_at = min(stop_at, mig["t_end"] + int(args.tail * 1e9))
        if now >= stop_at:
            break
        if now < nxt:
            d = (nxt - now) / 1e9
            if d > 0.0002:
                time.sleep(d - 0.0001)
            continue
        # Catch up on what is due (keeps the average rate under jitter).
        while nxt <= now and seq < n_max:
            ts = time.monotonic_ns()
            try:
                socks[seq % len(socks)].send(HDR.pack(MAGIC, seq, ts) + pad)
                sent_t[seq] = ts
                seq += 1
            except (BlockingIOError, OSError):
                counters["send_err"] += 1
            nxt += gap_ns
    sent = seq
    if mthread is not None:
        mthread.join()
    time.sleep(args.grace)
    stop_rx.set()
    rx.join()
    for s in socks:
        s.close()

    samples = [(sent_t[i], rtt[i]) for i in range(sent) if rtt[i] >= 0]
    received = len(samples)
    lost = sent - received
    mstart = mig["t_start"] or (t0 + int(args.warmup * 1e9))
    base = [r for (t, r) in samples if t0 + 0.3e9 <= t < mstart]
    base_ms = statistics.median(base) / 1e6 if base else float("nan")
    peak_ms = windows_peak(samples, 500_000_000, 100_000_000)
    row = {k: "" for k in CSV_FIELDS}
    row.update(json.loads(args.meta) if args.meta else {})
    row.update({
        "pps": round(args.pps, 1), "flows": args.flows, "size": args.size,
        "sent": sent, "received": received, "lost": lost,
        "loss_s": round(lost / args.pps, 4),
        "reordered": counters["reord"], "duplicates": counters["dup"],
        "base_rtt_ms": round(base_ms, 3), "peak_rtt_ms": round(peak_ms, 3),
        "peak_rtt_inc_ms": round(peak_ms - base_ms, 3),
    })
    if args.series:
        write_series(args.series, t0, sent_t[:sent], rtt[:sent], mig)
    if mig["out"] is not None:
        code, out, err = mig["out"]
        res = None
        try:
            res = json.loads(out)
        except ValueError:
            pass
        if code == 0 and isinstance(res, dict):
            row["outcome"] = res.get("outcome", "migrated")
            row["migration_ms"] = round(res.get("total_ms", 0.0), 1)
            row["until_switch_ms"] = round(res.get("until_switch_ms", 0.0), 1)
            row["outage_ms"] = round(res.get("total_ms", 0.0) - res.get("until_switch_ms", 0.0), 1)
            # The outage's first parts: the switch's redirect (routes and
            # markers), then the drain up to the last marker at the source.
            for k in ("redirect_ms", "drain_ms"):
                if k in res:
                    row[k] = round(res[k], 1)
            for k in ("state_bytes", "statelets", "chunks", "duplicated_packets",
                      "packets_buffered", "packets_dropped_at_destination",
                      "in_flight_at_switch", "peak_in_flight", "bytes_at_switch",
                      "changed_flows_sent"):
                row[k] = res.get(k, "")
        else:
            row["outcome"] = "failed"
            row["migration_ms"] = round((mig["t_end"] - mig["t_start"]) / 1e6, 1)
            # The cause is the end of the output (progress lines come first).
            row["error"] = " ".join((err or out).split())[-300:]
    elif args.migrate is None:
        row["outcome"] = "none"
    new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
    with open(args.csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(json.dumps({k: row[k] for k in (
        "mode", "size", "load_pct", "sent", "lost", "base_rtt_ms", "peak_rtt_inc_ms",
        "outcome", "migration_ms", "state_bytes", "packets_buffered", "error")}))
    return 0


# ---------------------------------------------------------------- report

METRICS = [
    ("loss_s", "seconds of loss", "s"),
    ("peak_rtt_inc_ms", "peak 500 ms mean RTT over base RTT", "ms"),
    ("migration_ms", "migration time", "ms"),
    ("state_bytes", "state bytes sent", "bytes"),
    ("packets_buffered", "peak packets buffered at the destination", "packets"),
]
COLORS = {"statelet": "#1f77b4", "statelet-nobp": "#9467bd", "duplicate": "#d62728",
          "stop-copy": "#2ca02c"}
DASH = {512: "", 1400: "6,3"}


def num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def load_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    for i, r in enumerate(rows, start=2):
        for k in ("mode", "size", "load_pct"):
            if not r.get(k):
                raise SystemExit(f"{path}:{i}: column `{k}` is empty")
    return rows


def group(rows, metric):
    """{(mode, size): {load: [values]}}"""
    g = {}
    for r in rows:
        v = num(r.get(metric))
        if v is None:
            continue
        g.setdefault((r["mode"], int(r["size"])), {}).setdefault(float(r["load_pct"]), []).append(v)
    return g


def svg_plot(rows, metric, title, unit):
    g = group(rows, metric)
    W, H, L, R, T, B = 640, 400, 70, 150, 30, 45
    pw, ph = W - L - R, H - T - B
    loads = sorted({float(r["load_pct"]) for r in rows})
    xmin, xmax = 0.0, 100.0
    ys = [statistics.median(v) for d in g.values() for v in d.values()]
    ymax = max(ys) if ys else 1.0
    ymax = ymax * 1.1 if ymax > 0 else 1.0

    def X(x):
        return L + (x - xmin) / (xmax - xmin) * pw

    def Y(y):
        return T + ph - y / ymax * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="18" font-size="13">{title} ({unit}), median and min-max</text>',
           f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="black"/>']
    for x in [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]:
        out.append(f'<line x1="{X(x):.1f}" y1="{T + ph}" x2="{X(x):.1f}" y2="{T + ph + 4}" stroke="black"/>'
                   f'<text x="{X(x):.1f}" y="{T + ph + 16}" text-anchor="middle">{x}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 8}" text-anchor="middle">load, % of the emulated link</text>')
    for i in range(6):
        y = ymax * i / 5
        out.append(f'<line x1="{L - 4}" y1="{Y(y):.1f}" x2="{L + pw}" y2="{Y(y):.1f}" stroke="#ddd"/>'
                   f'<text x="{L - 6}" y="{Y(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    legend_y = T + 10
    for (mode, size) in sorted(g):
        d = g[(mode, size)]
        color = COLORS.get(mode, "#555")
        dash = DASH.get(size, "2,2")
        pts = [(x, statistics.median(d[x]), min(d[x]), max(d[x])) for x in sorted(d)]
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _, _ in pts)
        out.append(f'<polyline class="series" data-mode="{mode}" data-size="{size}" points="{path}" '
                   f'fill="none" stroke="{color}" stroke-width="1.8" stroke-dasharray="{dash}"/>')
        for x, y, lo, hi in pts:
            out.append(f'<line x1="{X(x):.1f}" y1="{Y(lo):.1f}" x2="{X(x):.1f}" y2="{Y(hi):.1f}" '
                       f'stroke="{color}" stroke-opacity="0.5"/>')
            out.append(f'<circle class="pt" data-mode="{mode}" data-size="{size}" data-load="{x:g}" '
                       f'data-value="{y:g}" cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{color}"/>')
        out.append(f'<line x1="{L + pw + 10}" y1="{legend_y}" x2="{L + pw + 35}" y2="{legend_y}" '
                   f'stroke="{color}" stroke-width="1.8" stroke-dasharray="{dash}"/>'
                   f'<text x="{L + pw + 40}" y="{legend_y + 4}">{mode}, {size} B</text>')
        legend_y += 16
    del loads
    out.append("</svg>")
    return "\n".join(out) + "\n"


def fmt(v):
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.3g}"


def table(rows):
    keys = sorted({(int(r["size"]), float(r["load_pct"]), r["mode"]) for r in rows},
                  key=lambda k: (k[0], k[1], MODE_ORDER.index(k[2]) if k[2] in MODE_ORDER else 9))
    lines = ["| size B | load % | mode | runs | failed | lost packets | loss s | peak RTT inc ms | "
             "migration ms | outage ms | state bytes | held at B (peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, load, mode in keys:
        rs = [r for r in rows if int(r["size"]) == size and float(r["load_pct"]) == load
              and r["mode"] == mode]

        def cell(k):
            v = [num(r.get(k)) for r in rs]
            v = [x for x in v if x is not None]
            if not v:
                return "—"
            return f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})"

        failed = sum(1 for r in rs if r.get("outcome") not in ("migrated", "none"))
        lines.append(f"| {size} | {load:g} | {mode} | {len(rs)} | {failed} | {cell('lost')} | "
                     f"{cell('loss_s')} | {cell('peak_rtt_inc_ms')} | {cell('migration_ms')} | "
                     f"{cell('outage_ms')} | {cell('state_bytes')} | {cell('packets_buffered')} |")
    return "\n".join(lines) + "\n"


def compact(rows):
    """Medians per size and load, one cell per mode: lost / RTT+ / time / KB / held."""
    modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in rows)]
    pts = sorted({(int(r["size"]), float(r["load_pct"])) for r in rows})
    head = "| size B | load % | " + " | ".join(modes) + " |"
    lines = [head, "|" + "---|" * (2 + len(modes))]

    def med(rs, k):
        v = [num(r.get(k)) for r in rs]
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None

    for size, load in pts:
        cells = []
        for m in modes:
            rs = [r for r in rows if int(r["size"]) == size and float(r["load_pct"]) == load
                  and r["mode"] == m]
            if not rs:
                cells.append("—")
                continue
            failed = sum(1 for r in rs if r.get("outcome") not in ("migrated", "none"))
            parts = [med(rs, "lost"), med(rs, "peak_rtt_inc_ms")]
            if m != "none":
                parts += [med(rs, "migration_ms"), med(rs, "state_bytes"), med(rs, "packets_buffered")]
                if parts[3] is not None:
                    parts[3] = parts[3] / 1000
            cell = " / ".join("—" if p is None else fmt(p) for p in parts)
            if failed:
                cell += f" ({failed} of {len(rs)} failed)"
            cells.append(cell)
        lines.append(f"| {size} | {load:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(args):
    rows = load_rows(args.csv)
    os.makedirs(args.out_dir, exist_ok=True)
    for metric, title, unit in METRICS:
        with open(os.path.join(args.out_dir, f"{args.prefix}{metric}.svg"), "w") as f:
            f.write(svg_plot(rows, metric, title, unit))
    t = table(rows)
    with open(os.path.join(args.out_dir, f"{args.prefix}table.md"), "w") as f:
        f.write(t)
    with open(os.path.join(args.out_dir, f"{args.prefix}compact.md"), "w") as f:
        f.write(compact(rows))
    if not getattr(args, "quiet", False):
        sys.stdout.write(t)
    return 0


def selftest(_args):
    import re
    import tempfile
    rows = []
    for mode, base in (("statelet", 1.0), ("duplicate", 3.0), ("stop-copy", 2.0)):
        for size in (512, 1400):
            for load in (10, 50, 90):
                for rep in (1, 2, 3):
                    r = {k: "" for k in CSV_FIELDS}
                    r.update(nf="firewall", mode=mode, size=size, load_pct=load, rep=rep,
                             outcome="migrated", lost=0, loss_s=0.0,
                             peak_rtt_inc_ms=base * load / 10 + rep,
                             migration_ms=100 * base + load + rep, state_bytes=1000 * base,
                             packets_buffered=int(base * load))
                    rows.append(r)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "in.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        report(argparse.Namespace(csv=path, out_dir=d, prefix="t-", quiet=True))
        svg = open(os.path.join(d, "t-migration_ms.svg")).read()
        pts = re.findall(r'class="pt" data-mode="([^"]+)" data-size="(\d+)" data-load="([^"]+)" '
                         r'data-value="([^"]+)"', svg)
        want = {(m, str(s), str(load)) for m in ("statelet", "duplicate", "stop-copy")
                for s in (512, 1400) for load in (10, 50, 90)}
        got = {(m, s, x) for m, s, x, _ in pts}
        assert got == want, f"points missing from the plot: {sorted(want - got)}"
        # The median of reps 1..3 is rep 2: 100*base + load + 2.
        for m, s, x, v in pts:
            base = {"statelet": 1.0, "duplicate": 3.0, "stop-copy": 2.0}[m]
            assert float(v) == 100 * base + float(x) + 2, (m, s, x, v)
        assert svg.count('class="series"') == 6, "one line per mode and size"
        t = open(os.path.join(d, "t-table.md")).read()
        assert "| 512 | 90 | duplicate | 3 | 0 |" in t, t
    print("selftest ok: 18 points per plot, medians right, 6 series, table rows")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prefill")
    a.add_argument("--src", required=True)
    a.add_argument("--dst", required=True)
    a.add_argument("--first", type=int, default=20000)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--pps", type=float, default=5000)
    a.set_defaults(f=prefill)
    a = sub.add_parser("run")
    a.add_argument("--src", required=True)
    a.add_argument("--dst", required=True)
    a.add_argument("--first-port", type=int, default=40000)
    a.add_argument("--flows", type=int, default=128)
    a.add_argument("--size", type=int, required=True, help="frame bytes")
    a.add_argument("--pps", type=float, required=True)
    a.add_argument("--warmup", type=float, default=1.5)
    a.add_argument("--tail", type=float, default=1.5)
    a.add_argument("--max-seconds", type=float, default=30.0)
    a.add_argument("--grace", type=float, default=1.0)
    a.add_argument("--migrate", help="shell command printing `braid migrate --json`")
    a.add_argument("--meta", help="JSON object of CSV columns to fill")
    a.add_argument("--csv", required=True)
    a.add_argument("--series", help="also write this run's RTT time series (JSON) here")
    a.set_defaults(f=run)
    a = sub.add_parser("report")
    a.add_argument("--csv", required=True)
    a.add_argument("--out-dir", required=True)
    a.add_argument("--prefix", default="slim-")
    a.set_defaults(f=report)
    a = sub.add_parser("selftest")
    a.set_defaults(f=selftest)
    args = p.parse_args()
    sys.exit(args.f(args))


if __name__ == "__main__":
    main()
