#!/usr/bin/env python3
"""Merge the interleaved repetitions of calvin-baseline.sh.

usage: calvin-merge.py OUT_DIR

Reads OUT_DIR/configurations.tsv (name, address, label, options),
OUT_DIR/reps/raw-NAME-REP.json (`braid probe --raw-out`, one repetition
each), OUT_DIR/tput-NAME.json (`braid probe --throughput --json-out`) and
OUT_DIR/failed.txt, and writes
  - summary.json: per configuration and payload size the pooled statistics,
  - table.md: one row per configuration and size,
  - ratios.md: the issue's four target ratios with target, value and
    met/missed, plus context ratios.

Statistics, per configuration and payload size:
  - percentiles (p50, p90, p99, max) over all repetitions' samples pooled,
    nearest rank on the sorted samples (exact, no histogram);
  - mean over all samples; its 95% confidence interval over the
    repetitions' means with Student's t (reps - 1 degrees of freedom), as
    `braid probe` does with several repetitions: consecutive samples are
    correlated, repetitions are independent runs. With one repetition the
    interval is over the samples (marked "samples");
  - loss and reordering summed over the repetitions.
A ratio of two configurations is also given per repetition (the medians of
repetition r of both), since the repetitions were interleaved: repetition r
of every configuration ran within the same pass.
"""
import json
import math
import os
import sys

# Two-sided 95% quantiles of Student's t, df 1..30 (as braid_probe::stats).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def t975(df):
    if df < 1:
        return math.inf
    if df <= 30:
        return T975[df - 1]
    z, n = 1.959964, float(df)
    return z + (z**3 + z) / (4 * n) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n * n)


def mean_ci95(values):
    """(mean, half-width or None) of values; None for no values."""
    n = len(values)
    if n == 0:
        return None
    m = sum(values) / n
    if n == 1:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, t975(n - 1) * math.sqrt(var) / math.sqrt(n)


def quantile(sorted_values, q):
    """Nearest-rank quantile of already sorted values."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


def pool(runs):
    """Pooled statistics of the runs (one per repetition) of one size, µs."""
    samples = sorted(ns / 1000.0 for r in runs for ns in r["rtt_ns"])
    rep_means = [sum(r["rtt_ns"]) / len(r["rtt_ns"]) / 1000.0 for r in runs if r["rtt_ns"]]
    rep_p50 = [quantile(sorted(ns / 1000.0 for ns in r["rtt_ns"]), 0.5) for r in runs]
    over_samples = mean_ci95(samples)
    if len(rep_means) >= 2:
        ci, method = mean_ci95(rep_means)[1], "repetition means"
    else:
        ci, method = (over_samples[1] if over_samples else None), "samples"
    count = sum(r["count"] for r in runs)
    lost = sum(r["lost"] for r in runs)
    return {
        "repetitions": len(runs),
        "samples": len(samples),
        "mean_us": over_samples[0] if over_samples else None,
        "ci95_us": ci,
        "ci_method": method,
        "p50_us": quantile(samples, 0.5),
        "p90_us": quantile(samples, 0.9),
        "p99_us": quantile(samples, 0.99),
        "max_us": samples[-1] if samples else None,
        "rep_means_us": rep_means,
        "rep_p50_us": rep_p50,
        "sent": sum(r["sent"] for r in runs),
        "lost": lost,
        "loss_pct": 100.0 * lost / count if count else 0.0,
        "reordered": sum(r["reordered"] for r in runs),
    }


def load(out):
    configs = []
    with open(os.path.join(out, "configurations.tsv")) as f:
        for line in f:
            name, addr, label, opts = line.rstrip("\n").split("\t")
            configs.append({"name": name, "addr": addr, "label": label, "options": opts})
    failed_path = os.path.join(out, "failed.txt")
    failed = set(open(failed_path).read().split()) if os.path.exists(failed_path) else set()
    reps_dir = os.path.join(out, "reps")
    for c in configs:
        n = c["name"]
        c["failed"] = n in failed
        by_size = {}
        rep_files = sorted(
            (int(f[len(f"raw-{n}-"):-len(".json")]), f) for f in os.listdir(reps_dir)
            if f.startswith(f"raw-{n}-") and f[len(f"raw-{n}-"):-len(".json")].isdigit())
        for _, f in rep_files:
            raw = json.load(open(os.path.join(reps_dir, f)))
            for size in raw["latency"]:
                for r in size["runs"]:
                    r["count"] = size["count_per_rep"]
                    by_size.setdefault(size["payload_len"], []).append(r)
        c["latency"] = {size: pool(runs) for size, runs in sorted(by_size.items())}
        tp = os.path.join(out, f"tput-{n}.json")
        c["throughput"] = {}
        if os.path.exists(tp):
            for t in json.load(open(tp))["throughput"]:
                c["throughput"][t["payload_len"]] = {
                    "max_lossless_pps": t["max_lossless_pps"],
                    "peak_rx_pps": t["peak_rx_pps"],
                    # The search never found a lossy rate: a lower bound.
                    "lower_bound": t["termination"].startswith("lossless at the highest"),
                }
        # CPU time of the row's process (NF threads, testpmd) during the
        # whole throughput search, per frame it carried (requests sent plus
        # answers received, all steps and sizes).
        c["cpu"] = None
        cpu_path = os.path.join(out, f"cpu-{n}.txt")
        if os.path.exists(cpu_path) and os.path.exists(tp):
            ticks, hz = (int(x) for x in open(cpu_path).read().split())
            steps = [st for t in json.load(open(tp))["throughput"] for st in t["steps"]]
            frames = sum(st["sent"] + st["received"] for st in steps)
            dur = sum(st["sent"] / st["send_pps"] for st in steps if st.get("send_pps"))
            if frames:
                c["cpu"] = {"cpu_s": ticks / hz, "frames": frames, "us_per_frame": ticks / hz * 1e6 / frames,
                            "sending_s": dur}
        c["why_missing"] = None
        if not c["latency"]:
            logs = [f for f in sorted(os.listdir(out)) if f.endswith(f"-{n}.log")]
            last = ""
            for f in logs:
                lines = [ln.strip() for ln in open(os.path.join(out, f), errors="replace") if ln.strip()]
                if lines:
                    last = f"{f}: {lines[-1]}"
            c["why_missing"] = ("did not come up" if c["failed"] else "no samples") + (f" ({last})" if last else "")
    return configs


def fmt(v, prec=1):
    return "-" if v is None else f"{v:.{prec}f}"


def table(configs):
    hdr = ("| configuration | options | payload B | reps | mean ± ci95 µs | p50 µs | p90 µs | p99 µs | max µs "
           "| loss % | reordered | lossless pps | peak rx pps |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for c in configs:
        if c["why_missing"]:
            why = c["why_missing"].replace("|", "/")
            rows.append(f"| {c['label']} | {c['options']} | 256 / 1400 | 0 | {why} | | | | | | | | |")
            continue
        for size, l in c["latency"].items():
            t = c["throughput"].get(size)
            ci = fmt(l["ci95_us"]) + (" (samples)" if l["ci_method"] == "samples" else "")
            tp = (f"{'≥ ' if t['lower_bound'] else ''}{t['max_lossless_pps']:.0f} | {t['peak_rx_pps']:.0f}"
                  if t else "- | -")
            rows.append(f"| {c['label']} | {c['options']} | {size} | {l['repetitions']} | {fmt(l['mean_us'])} ± {ci} "
                        f"| {fmt(l['p50_us'])} | {fmt(l['p90_us'])} | {fmt(l['p99_us'])} | {fmt(l['max_us'])} "
                        f"| {l['loss_pct']:.2f} | {l['reordered']} | {tp} |")
    return hdr + "\n" + "\n".join(rows) + "\n"


# The targets: (what, numerator, denominator, metric, comparison, bound).
TARGETS = [
    ("XDP `fwd` / Linux forwarding, 1 hop (median RTT)", "xdp-fwd-1hop", "linux-1hop", "p50", "≤", 1.0),
    ("AF_XDP `fwd` / XDP `fwd`, 1 hop (median RTT)", "afxdp-fwd-1hop", "xdp-fwd-1hop", "p50", "≤", 1.2),
    ("XDP `fwd` → AF_XDP `fwd` / Linux forwarding, 1 hop (median RTT)", "xdp-fwd-afxdp-fwd", "linux-1hop",
     "p50", "≤", 1.3),
    ("AF_XDP `fwd` / Linux forwarding, 1 hop (lossless throughput)", "afxdp-fwd-1hop", "linux-1hop", "tput", "≥",
     1.0),
    # The real-time NF thread of the tuned row competes with the
    # normal-priority probe and echo of the throughput search; the row
    # without it shows what AF_XDP carries then.
    ("AF_XDP `fwd`, default options / Linux forwarding, 1 hop (lossless throughput)", "afxdp-fwd-1hop-default",
     "linux-1hop", "tput", "≥", 1.0),
]
CONTEXT = [
    ("Linux forwarding 1 hop / direct", "linux-1hop", "direct", "p50"),
    ("Linux forwarding 2 hops / 1 hop", "linux-2hop", "linux-1hop", "p50"),
    ("XDP `fwd` → XDP `fwd` / Linux forwarding, 2 hops", "xdp-fwd-2nf", "linux-2hop", "p50"),
    ("XDP `fwd` → XDP `fwd` compact (fw1) / distributed (nf1, nf2)", "xdp-fwd-2nf-compact", "xdp-fwd-2nf", "p50"),
    ("AF_XDP `fwd` tuned / default options", "afxdp-fwd-1hop", "afxdp-fwd-1hop-default", "p50"),
    ("AF_XDP `fwd` busy polling / tuned (poll)", "afxdp-fwd-1hop-busy", "afxdp-fwd-1hop", "p50"),
    ("AF_PACKET `fwd` / AF_XDP `fwd`", "afpacket-fwd-1hop", "afxdp-fwd-1hop", "p50"),
    ("`xor` in XDP / `xor` in user space (AF_XDP)", "xor-kernel-1hop", "xor-user-1hop", "p50"),
    ("`xor` in XDP / XDP `fwd`", "xor-kernel-1hop", "xdp-fwd-1hop", "p50"),
    ("compact 4-NF chain / XDP `fwd` → AF_XDP `nat`", "compact-4", "xdp-fwd-afxdp-nat", "p50"),
    ("DPDK testpmd af_xdp / Linux forwarding, 1 hop", "testpmd-afxdp", "linux-1hop", "p50"),
    ("DPDK testpmd af_xdp / AF_XDP `fwd`", "testpmd-afxdp", "afxdp-fwd-1hop", "p50"),
    ("DPDK testpmd af_xdp / af_packet", "testpmd-afxdp", "testpmd-afpacket", "p50"),
]


def ratio(by_name, a, b, metric, size):
    """(value, per-repetition values, note) of a/b at size, or None."""
    ca, cb = by_name.get(a), by_name.get(b)
    if not ca or not cb:
        return None
    if metric == "tput":
        ta, tb = ca["throughput"].get(size), cb["throughput"].get(size)
        if not ta or not tb or tb["max_lossless_pps"] <= 0:
            return None
        # A rate that never lost a packet is a lower bound: so is the ratio
        # if it is the numerator, an upper one if the denominator.
        note = {(True, False): "≥ ", (False, True): "≤ ", (True, True): "both lower bounds: "}.get(
            (ta["lower_bound"], tb["lower_bound"]), "")
        return ta["max_lossless_pps"] / tb["max_lossless_pps"], [], note
    la, lb = ca["latency"].get(size), cb["latency"].get(size)
    if not la or not lb or not lb["p50_us"]:
        return None
    per_rep = [x / y for x, y in zip(la["rep_p50_us"], lb["rep_p50_us"]) if x is not None and y]
    return la["p50_us"] / lb["p50_us"], per_rep, ""


def ratios(configs, sizes=(256, 1400)):
    by_name = {c["name"]: c for c in configs}
    lines = ["| ratio | payload B | target | value | per repetition | met? |", "|---|---|---|---|---|---|"]
    for what, a, b, metric, cmp, bound in TARGETS:
        for size in sizes:
            r = ratio(by_name, a, b, metric, size)
            if r is None:
                missing = [n for n in (a, b) if n not in by_name or by_name[n]["why_missing"]]
                lines.append(f"| {what} | {size} | {cmp} {bound} | not measured ({', '.join(missing) or a + '/' + b}) "
                             f"| | – |")
                continue
            v, per_rep, note = r
            met = v <= bound if cmp == "≤" else v >= bound
            # A bound on the value decides only one way.
            if (note == "≥ " and met != (cmp == "≥")) or (note == "≤ " and met != (cmp == "≤")) \
                    or note.startswith("both"):
                met = None
            spread = "–".join(f"{x:.2f}" for x in (min(per_rep), max(per_rep))) if per_rep else ""
            lines.append(f"| {what} | {size} | {cmp} {bound} | {note}{v:.2f} | {spread} | {'undecided' if met is None else 'met' if met else 'missed'} |")
    context = []
    for what, a, b, metric in CONTEXT:
        rs = [ratio(by_name, a, b, metric, s) for s in sizes]
        if all(r is None for r in rs):
            continue
        cells = [fmt(r[0], 2) if r else "-" for r in rs]
        spread = "–".join(f"{x:.2f}" for x in (min(rs[0][1]), max(rs[0][1]))) if rs[0] and rs[0][1] else ""
        context.append(f"| {what} | {cells[0]} | {cells[1]} | {spread} |")
    if context:
        lines += ["", "Context (median RTT ratios, no target):", "",
                  "| ratio | 256 B | 1400 B | per repetition 256 B |", "|---|---|---|---|"] + context
    cpu = [c for c in configs if c.get("cpu")]
    if cpu:
        lines += ["", "CPU time (user + system, all threads) of the process carrying a deployed row (braid deploy's "
                  "NF threads, testpmd) during its throughput search, per frame it forwarded (requests sent plus "
                  "answers received by the probe). Softirq work done in other threads' context is not in it; a "
                  "busy-polling process burns its CPU whether frames come or not.", "",
                  "| configuration | options | CPU s | frames | µs per frame |", "|---|---|---|---|---|"]
        for c in cpu:
            k = c["cpu"]
            lines.append(f"| {c['label']} | {c['options']} | {k['cpu_s']:.2f} | {k['frames']} | {k['us_per_frame']:.2f} |")
    return ("Ratios of medians pooled over all repetitions (per repetition: the range of the ratios of "
            "the two configurations' medians in the same repetition). Throughput: maximum lossless rate "
            "(≥ / ≤: the numerator / denominator never lost a packet up to the search's highest rate, so its rate "
            "is a lower bound).\n\n"
            + "\n".join(lines) + "\n")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: calvin-merge.py OUT_DIR")
    out = sys.argv[1]
    configs = load(out)
    json.dump([{k: v for k, v in c.items()} for c in configs], open(os.path.join(out, "summary.json"), "w"),
              indent=1, default=str)
    t, r = table(configs), ratios(configs)
    open(os.path.join(out, "table.md"), "w").write(t)
    open(os.path.join(out, "ratios.md"), "w").write(r)
    print(t)
    print(r)


if __name__ == "__main__":
    main()
