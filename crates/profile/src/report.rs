//! A profile as a table (VPP `show runtime` style), as JSON, and as an SVG
//! of the per-packet cost of each worker stacked by component.

use std::fmt::Write as _;

use crate::profile::{Profile, Source};

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The profile as text tables, for people.
pub fn format_table(p: &Profile) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "profile of chain {} (mapping {}): {} packets in, {} out, {:.3} s",
        p.chain,
        p.mapping,
        p.input_packets,
        p.output_packets,
        p.elapsed_ns as f64 / 1e9
    );
    let _ = writeln!(o, "\nper NF, at the call edge:");
    let _ = writeln!(
        o,
        "{:<12} {:<10} {:<18} {:>9} {:>10} {:>8} {:>9} {:>5} {:>8}",
        "nf", "kind", "worker", "calls", "vectors", "vec/call", "ns/pkt", "max", "dropped"
    );
    for n in &p.nfs {
        let _ = writeln!(
            o,
            "{:<12} {:<10} {:<18} {:>9} {:>10} {:>8.2} {:>9} {:>5} {:>8}",
            n.name,
            n.kind,
            n.worker,
            n.calls,
            n.vectors,
            n.vectors_per_call,
            if braid_dataplane::TELEMETRY {
                format!("{:.1}", n.ns_per_packet)
            } else {
                "n/a".to_string()
            },
            n.max_batch,
            n.dropped
        );
    }
    let span = if p.mapping == "live" { "over the interval" } else { "loop start to end" };
    let _ = writeln!(o, "\nper worker thread, {span} (OS counters):");
    let _ = writeln!(
        o,
        "{:<18} {:>7} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>5} {:>6} {:>6} {:>9} {:>8} {:>8}",
        "worker",
        "tid",
        "packets",
        "drops",
        "sc/pkt",
        "wall ms",
        "cpu ms",
        "user ms",
        "sys ms",
        "rq-wait",
        "vol-cs",
        "inv-cs",
        "migr",
        "minflt",
        "cpu ns/pkt",
        "turns",
        "sleeps"
    );
    for w in &p.workers {
        let tid = w.tid.map_or("-".to_string(), |t| t.to_string());
        match w.os {
            Some(os) => {
                let _ = writeln!(
                    o,
                    "{:<18} {:>7} {:>9} {:>7} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7.2} {:>7} {:>7} {:>5} {:>6} {:>9.1} {:>8} {:>8}",
                    w.name,
                    tid,
                    w.packets,
                    w.port_drops,
                    w.port_syscalls.map_or("n/a".to_string(), |n| {
                        format!("{:.3}", n as f64 / w.packets.max(1) as f64)
                    }),
                    ms(w.wall_ns),
                    ms(os.run_ns),
                    ms(os.user_ns),
                    ms(os.system_ns),
                    ms(os.wait_ns),
                    os.voluntary_switches,
                    os.involuntary_switches,
                    os.migrations.map_or("n/a".to_string(), |m| m.to_string()),
                    os.minor_faults + os.major_faults,
                    w.cpu_ns_per_packet().unwrap_or(0.0),
                    w.turns,
                    w.sleeps
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "{:<18} {:>7} {:>9}  OS counters not available: {}",
                    w.name,
                    tid,
                    w.packets,
                    w.os_error.as_deref().unwrap_or("the loop did not run")
                );
            }
        }
    }
    let _ = writeln!(o, "(drops = lost at the worker's ports; sc/pkt = system calls of its AF_PACKET, AF_XDP, shared-memory and channel ports per packet, n/a for in-memory and capture-file ports; cpu = on-CPU time from schedstat; rq-wait = runnable but waiting, ms; minflt = minor + major faults)");
    let _ = writeln!(o, "\nper-packet cost by worker (ns per packet the worker received):");
    for b in &p.breakdown {
        let sum: f64 = b.components.iter().filter(|c| c.cpu).map(|c| c.ns_per_packet).sum();
        let on_cpu = p
            .workers
            .iter()
            .find(|w| w.name == b.worker)
            .and_then(|w| w.cpu_ns_per_packet())
            .map_or("no OS counters".to_string(), |c| format!("{c:.1} ns on CPU per packet"));
        let _ = writeln!(
            o,
            "  {} ({} packets): {on_cpu}; components sum {sum:.1}",
            b.worker, b.packets
        );
        for c in &b.components {
            let src = match c.source {
                Source::Measured => "measured",
                Source::Modelled => "modelled",
            };
            let kind = if c.cpu { "" } else { " (waiting, not CPU)" };
            let _ = writeln!(o, "    {:<34} {:>9.1}  {src}{kind}", c.name, c.ns_per_packet);
        }
        for n in &b.notes {
            let _ = writeln!(o, "    note: {n}");
        }
    }
    if let Some(u) = &p.unit_costs {
        let _ = writeln!(
            o,
            "\nunit costs calibrated on this machine (policy {}, CPU {}): context switch {:.0} ns, system call {:.0} ns, socket write+read {:.0} ns",
            u.policy, u.cpu, u.context_switch_ns, u.syscall_ns, u.socket_write_read_ns
        );
    }
    if matches!(p.hardware, crate::hw::HardwareCounts::Measured { .. }) {
        let _ = writeln!(o, "\n{}", p.hardware.describe(p.input_packets));
    } else {
        o.push('\n');
    }
    if !p.softirq.is_empty() {
        let _ = writeln!(
            o,
            "softirq per CPU during the run (all of the machine's, not only braid's; /proc/stat, 10 ms ticks; /proc/softirqs):"
        );
        for c in &p.softirq {
            let _ = writeln!(
                o,
                "  cpu{}: {} ms in softirq, {} NET_RX, {} NET_TX",
                c.cpu, c.softirq_ms, c.net_rx, c.net_tx
            );
        }
    }
    for m in &p.not_measured {
        let _ = writeln!(o, "not measured: {m}");
    }
    o
}

/// The profile as JSON.
pub fn to_json(p: &Profile) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or(serde_json::Value::Null)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const PALETTE: &[&str] = &[
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The per-packet cost of each worker as a horizontal stacked bar chart
/// (CPU components stacked; run-queue wait drawn hatched after them;
/// modelled components outlined dashed). Plain SVG 1.1.
pub fn to_svg(p: &Profile) -> String {
    let bars = &p.breakdown;
    let max = bars
        .iter()
        .map(|b| b.components.iter().map(|c| c.ns_per_packet).sum::<f64>())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    // Colours by component name, stable across bars.
    let mut names: Vec<String> = Vec::new();
    for b in bars {
        for c in &b.components {
            let key = legend_name(&c.name);
            if !names.contains(&key) {
                names.push(key);
            }
        }
    }
    let colour = |name: &str| {
        let k = names.iter().position(|n| *n == legend_name(name)).unwrap_or(0);
        PALETTE[k % PALETTE.len()]
    };
    let (left, width, bar_h, gap, top) = (190.0, 560.0, 26.0, 14.0, 50.0);
    let legend_top = top + bars.len() as f64 * (bar_h + gap) + 30.0;
    let height = legend_top + names.len() as f64 * 18.0 + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height:.0}" font-family="sans-serif" font-size="12">"#,
        left + width + 40.0
    );
    let _ = writeln!(
        s,
        r##"<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/><line x1="0" y1="0" x2="0" y2="6" stroke="#888888" stroke-width="2"/></pattern></defs>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14">{} — ns per packet by worker and component (mapping {}, {} packets)</text>"#,
        escape(&p.chain),
        escape(&p.mapping),
        p.input_packets
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="36" fill="#555555">solid: measured; dashed outline: modelled (count × calibrated unit cost); hatched: run-queue wait (not CPU)</text>"##
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + bar_h * 0.65,
            escape(&b.worker)
        );
        let mut x = left;
        let mut parts: Vec<&crate::profile::Component> =
            b.components.iter().filter(|c| c.cpu).collect();
        parts.extend(b.components.iter().filter(|c| !c.cpu));
        for c in parts {
            let w = c.ns_per_packet / max * width;
            if w <= 0.0 {
                continue;
            }
            let fill = if c.cpu { colour(&c.name).to_string() } else { "url(#hatch)".to_string() };
            let stroke = match c.source {
                Source::Modelled => r##" stroke="#000000" stroke-dasharray="4 2""##,
                Source::Measured => "",
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{bar_h}" fill="{fill}"{stroke}><title>{}: {:.1} ns/pkt</title></rect>"#,
                escape(&c.name),
                c.ns_per_packet
            );
            x += w;
        }
        let total: f64 = b.components.iter().filter(|c| c.cpu).map(|c| c.ns_per_packet).sum();
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{total:.0}</text>"#,
            x + 4.0,
            y + bar_h * 0.65
        );
    }
    for (k, n) in names.iter().enumerate() {
        let y = legend_top + k as f64 * 18.0;
        let fill = if n == "run-queue wait" { "url(#hatch)" } else { PALETTE[k % PALETTE.len()] };
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{:.1}" width="12" height="12" fill="{fill}" stroke="#444444"/><text x="{:.0}" y="{:.1}">{}</text>"##,
            y - 10.0,
            left + 18.0,
            y,
            escape(n)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `context switches (123)` and `context switches (7)` share a colour.
fn legend_name(name: &str) -> String {
    match name.find(" (") {
        Some(i) if name.starts_with("context switches") => name[..i].to_string(),
        _ => name.to_string(),
    }
}
