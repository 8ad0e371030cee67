//! The probe report: latency summaries per payload size and throughput
//! results, printed as a table or serialized as JSON.
//!
//! Confidence interval: with two or more repetitions the 95% interval of
//! the mean RTT is computed over the repetitions' means (Student's t with
//! `reps - 1` degrees of freedom). Consecutive RTT samples are correlated
//! (a slow period slows many packets), so an interval over single samples
//! would be too narrow; repetitions are independent runs. With a single
//! repetition it falls back to the samples (t with `n - 1` degrees of
//! freedom) and says so in `ci_method`.

use crate::rtt::RttRun;
use crate::stats::{mean_ci95, percentiles, Percentiles};
use crate::throughput::ThroughputResult;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Serialize)]
pub struct RepSummary {
    pub run: u32,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub mean_us: Option<f64>,
    pub p50_us: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub payload_len: usize,
    pub repetitions: usize,
    pub count_per_rep: u64,
    pub interval_us: f64,
    pub sent: u64,
    pub send_errors: u64,
    /// ICMP port unreachable reports (see [`RttRun::refused`]).
    pub refused: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub reordered: u64,
    pub duplicates: u64,
    pub foreign: u64,
    /// Mean RTT over all samples, µs (`None` if nothing came back).
    pub mean_us: Option<f64>,
    /// Half-width of the 95% confidence interval of the mean, µs.
    pub ci95_us: Option<f64>,
    /// `"repetition means"` or `"samples"` (see the module docs).
    pub ci_method: &'static str,
    pub stdev_us: Option<f64>,
    pub percentiles: Option<Percentiles>,
    pub per_rep: Vec<RepSummary>,
}

/// Summarize the repetitions of one payload size (all `runs` must share it).
pub fn summarize(runs: &[RttRun], count_per_rep: u64, interval_us: f64) -> LatencySummary {
    let all: Vec<u64> = runs.iter().flat_map(|r| r.rtt_ns.iter().copied()).collect();
    let all_us: Vec<f64> = all.iter().map(|&n| n as f64 / 1000.0).collect();
    let rep_means: Vec<f64> = runs
        .iter()
        .filter(|r| !r.rtt_ns.is_empty())
        .map(|r| r.rtt_ns.iter().sum::<u64>() as f64 / r.rtt_ns.len() as f64 / 1000.0)
        .collect();
    let over_samples = mean_ci95(&all_us);
    let (ci95_us, ci_method) = if rep_means.len() >= 2 {
        (mean_ci95(&rep_means).and_then(|m| m.ci95), "repetition means")
    } else {
        (over_samples.and_then(|m| m.ci95), "samples")
    };
    let stdev_us = over_samples.filter(|m| m.n >= 2).map(|m| {
        let var = all_us.iter().map(|v| (v - m.mean).powi(2)).sum::<f64>() / (m.n - 1) as f64;
        var.sqrt()
    });
    let sum = |f: fn(&RttRun) -> u64| runs.iter().map(f).sum::<u64>();
    let total = count_per_rep * runs.len() as u64;
    let lost = sum(|r| r.lost);
    LatencySummary {
        payload_len: runs.first().map_or(0, |r| r.payload_len),
        repetitions: runs.len(),
        count_per_rep,
        interval_us,
        sent: sum(|r| r.sent),
        send_errors: sum(|r| r.send_errors),
        refused: sum(|r| r.refused),
        received: sum(|r| r.received),
        lost,
        loss_pct: if total == 0 { 0.0 } else { lost as f64 * 100.0 / total as f64 },
        reordered: sum(|r| r.reordered),
        duplicates: sum(|r| r.duplicates),
        foreign: sum(|r| r.foreign),
        mean_us: over_samples.map(|m| m.mean),
        ci95_us,
        ci_method,
        stdev_us,
        percentiles: percentiles(&all),
        per_rep: runs
            .iter()
            .map(|r| RepSummary {
                run: r.run,
                received: r.received,
                lost: r.lost,
                reordered: r.reordered,
                mean_us: mean_ci95(
                    &r.rtt_ns.iter().map(|&n| n as f64 / 1000.0).collect::<Vec<_>>(),
                )
                .map(|m| m.mean),
                p50_us: percentiles(&r.rtt_ns).map(|p| p.p50_us),
            })
            .collect(),
    }
}

/// Everything one `braid probe` invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub target: String,
    pub latency: Vec<LatencySummary>,
    pub throughput: Vec<ThroughputResult>,
}

/// Why a finished probe failed: a payload size of which nothing came back.
/// Partial loss is a measurement, not a failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// Sends were refused (an ICMP port unreachable came back): nothing
    /// listens on the target port.
    #[error(
        "{target} is unreachable: {refused} ICMP port unreachable for the {payload_len} B \
         packets (is `braid echo` running there?) and nothing came back"
    )]
    Unreachable { target: String, payload_len: usize, refused: u64 },
    /// Every packet of a size was lost.
    #[error("no answer from {target}: all {lost} packets of {payload_len} B were lost")]
    NoAnswer { target: String, payload_len: usize, lost: u64 },
}

impl ProbeReport {
    /// The first payload size that got no answer at all, if any.
    pub fn failure(&self) -> Option<ProbeFailure> {
        let l = self.latency.iter().find(|l| l.received == 0)?;
        let target = self.target.clone();
        Some(if l.refused > 0 {
            ProbeFailure::Unreachable { target, payload_len: l.payload_len, refused: l.refused }
        } else {
            ProbeFailure::NoAnswer { target, payload_len: l.payload_len, lost: l.lost }
        })
    }
}

/// One latency run with every RTT sample (`braid probe --raw-out`).
#[derive(Serialize)]
struct RawRun<'a> {
    #[serde(flatten)]
    run: &'a RttRun,
    /// RTT of each packet's first copy, in arrival order, ns.
    rtt_ns: &'a [u64],
}

/// The runs of one payload size with the settings they ran with.
#[derive(Serialize)]
struct RawSize<'a> {
    payload_len: usize,
    count_per_rep: u64,
    interval_us: f64,
    runs: Vec<RawRun<'a>>,
}

#[derive(Serialize)]
struct RawReport<'a> {
    target: &'a str,
    latency: Vec<RawSize<'a>>,
}

/// The latency runs behind `report` with every RTT sample, grouped by
/// payload size like `report.latency`, as JSON. Separate probe invocations
/// (e.g. one repetition each, interleaved with other measurements) can be
/// pooled from these files: percentiles over all samples, confidence
/// intervals over the runs' means, loss and reordering summed.
pub fn raw_json(report: &ProbeReport, runs: &[RttRun]) -> String {
    let raw = RawReport {
        target: &report.target,
        latency: report
            .latency
            .iter()
            .map(|l| RawSize {
                payload_len: l.payload_len,
                count_per_rep: l.count_per_rep,
                interval_us: l.interval_us,
                runs: runs
                    .iter()
                    .filter(|r| r.payload_len == l.payload_len)
                    .map(|r| RawRun { run: r, rtt_ns: &r.rtt_ns })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string(&raw).expect("raw report serializes (no maps with non-string keys)")
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

impl ProbeReport {
    /// A plain-text table, one row per payload size.
    pub fn table(&self) -> String {
        let mut s = String::new();
        if !self.latency.is_empty() {
            let l0 = &self.latency[0];
            let _ = writeln!(
                s,
                "RTT to {}: {} x {} packets, {:.0} us apart (CI over {})",
                self.target, l0.repetitions, l0.count_per_rep, l0.interval_us, l0.ci_method
            );
            let _ = writeln!(
                s,
                "{:>7} {:>7} {:>7} {:>7} {:>6} {:>5} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "payload", "sent", "recv", "loss%", "reord", "dup", "mean_us", "ci95_us", "min_us", "p50_us",
                "p90_us", "p99_us", "p99.9_us", "max_us"
            );
            for l in &self.latency {
                let p = l.percentiles;
                let _ = writeln!(
                    s,
                    "{:>7} {:>7} {:>7} {:>7.2} {:>6} {:>5} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    l.payload_len,
                    l.sent,
                    l.received,
                    l.loss_pct,
                    l.reordered,
                    l.duplicates,
                    opt(l.mean_us, 1),
                    opt(l.ci95_us, 2),
                    opt(p.map(|p| p.min_us), 1),
                    opt(p.map(|p| p.p50_us), 1),
                    opt(p.map(|p| p.p90_us), 1),
                    opt(p.map(|p| p.p99_us), 1),
                    opt(p.map(|p| p.p999_us), 1),
                    opt(p.map(|p| p.max_us), 1),
                );
            }
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(s, "Maximum lossless throughput to {}:", self.target);
            let _ = writeln!(
                s,
                "{:>7} {:>14} {:>10} {:>13} {:>6}  termination",
                "payload", "lossless_pps", "Mbit/s", "peak_rx_pps", "steps"
            );
            for t in &self.throughput {
                let _ = writeln!(
                    s,
                    "{:>7} {:>14.0} {:>10.1} {:>13.0} {:>6}  {}",
                    t.payload_len,
                    t.max_lossless_pps,
                    t.max_lossless_mbps,
                    t.peak_rx_pps,
                    t.steps.len(),
                    t.termination
                );
            }
        }
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self)
            .expect("report serializes (no maps with non-string keys)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u32, rtts_us: &[u64], lost: u64) -> RttRun {
        RttRun {
            run: id,
            payload_len: 256,
            sent: rtts_us.len() as u64 + lost,
            received: rtts_us.len() as u64,
            lost,
            rtt_ns: rtts_us.iter().map(|u| u * 1000).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_size_with_nothing_back_fails_the_probe() {
        let report = |latency| ProbeReport { target: "t:7".into(), latency, throughput: vec![] };
        let some = summarize(&[run(1, &[10], 3)], 4, 5000.0);
        assert_eq!(report(vec![some.clone()]).failure(), None, "partial loss is measured");
        let none = summarize(&[run(1, &[], 4)], 4, 5000.0);
        assert_eq!(
            report(vec![some.clone(), none.clone()]).failure(),
            Some(ProbeFailure::NoAnswer { target: "t:7".into(), payload_len: 256, lost: 4 })
        );
        let refused = summarize(&[RttRun { refused: 3, ..run(1, &[], 4) }], 4, 5000.0);
        let f = report(vec![refused]).failure().unwrap();
        assert_eq!(
            f,
            ProbeFailure::Unreachable { target: "t:7".into(), payload_len: 256, refused: 3 }
        );
        assert!(f.to_string().starts_with("t:7 is unreachable"), "{f}");
    }

    #[test]
    fn ci_uses_repetition_means_when_there_are_several() {
        let runs = [
            run(1, &[10, 10, 10, 10], 0),
            run(2, &[20, 20, 20, 20], 0),
            run(3, &[30, 30, 30, 30], 0),
        ];
        let s = summarize(&runs, 4, 5000.0);
        assert_eq!(s.ci_method, "repetition means");
        assert_eq!(s.mean_us, Some(20.0));
        // means 10, 20, 30: s = 10, t(2) = 4.303, half = 4.303 * 10 / sqrt 3
        assert!((s.ci95_us.unwrap() - 24.843).abs() < 1e-2, "{s:?}");
        assert_eq!((s.sent, s.received, s.lost), (12, 12, 0));
        assert_eq!(s.per_rep.len(), 3);
        assert_eq!(s.per_rep[1].mean_us, Some(20.0));
    }

    #[test]
    fn single_rep_falls_back_to_samples_and_counts_loss() {
        let s = summarize(&[run(1, &[10, 20, 30], 1)], 4, 5000.0);
        assert_eq!(s.ci_method, "samples");
        assert!((s.ci95_us.unwrap() - 24.843).abs() < 1e-2);
        assert_eq!(s.loss_pct, 25.0);
        let p = s.percentiles.unwrap();
        assert_eq!((p.min_us, p.max_us), (10.0, 30.0));
    }

    #[test]
    fn raw_json_keeps_every_sample_grouped_by_size() {
        let mut big = run(3, &[40, 50], 1);
        big.payload_len = 1400;
        let runs = [run(1, &[10, 20], 0), run(2, &[30], 1), big];
        let report = ProbeReport {
            target: "10.0.0.2:7007".into(),
            latency: vec![summarize(&runs[..2], 2, 5000.0), summarize(&runs[2..], 3, 5000.0)],
            throughput: vec![],
        };
        let v: serde_json::Value = serde_json::from_str(&raw_json(&report, &runs)).unwrap();
        assert_eq!(v["target"], "10.0.0.2:7007");
        let small = &v["latency"][0];
        assert_eq!(
            (small["payload_len"].as_u64(), small["count_per_rep"].as_u64()),
            (Some(256), Some(2))
        );
        assert_eq!(small["runs"].as_array().unwrap().len(), 2);
        assert_eq!(small["runs"][0]["rtt_ns"], serde_json::json!([10_000, 20_000]));
        assert_eq!(
            (small["runs"][1]["run"].as_u64(), small["runs"][1]["lost"].as_u64()),
            (Some(2), Some(1))
        );
        let large = &v["latency"][1];
        assert_eq!(large["payload_len"], 1400);
        assert_eq!(large["runs"][0]["rtt_ns"], serde_json::json!([40_000, 50_000]));
        assert_eq!(large["runs"][0]["received"], 2);
    }

    #[test]
    fn nothing_received_prints_dashes_and_valid_json() {
        let s = summarize(&[run(1, &[], 5)], 5, 5000.0);
        assert_eq!(s.mean_us, None);
        assert_eq!(s.loss_pct, 100.0);
        let r = ProbeReport { target: "10.0.0.2:7".into(), latency: vec![s], throughput: vec![] };
        let t = r.table();
        assert!(t.contains("100.00"), "{t}");
        assert!(t.contains(" - "), "{t}");
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["latency"][0]["lost"], 5);
        assert!(v["latency"][0]["mean_us"].is_null());
    }
}
