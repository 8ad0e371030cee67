//! Sequence tracking and summary statistics.

use serde::Serialize;

/// What happened to one received sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// First copy, in order (higher than every sequence number seen before).
    InOrder,
    /// First copy, but a higher sequence number arrived before it.
    Reordered,
    /// A copy of a sequence number already received.
    Duplicate,
    /// Outside `0..count`: not a packet this run sent.
    OutOfRange,
}

/// Tracks which of `count` sequence numbers arrived, and in what order.
///
/// Reordering counts packets that arrive with a lower sequence number than
/// the highest seen so far (RFC 4737's "reordered" singleton, without
/// extent). Duplicates are counted once per extra copy and not as
/// reordered.
#[derive(Clone, Debug)]
pub struct SeqTracker {
    seen: Vec<u64>,
    count: u64,
    highest: Option<u64>,
    pub received: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub out_of_range: u64,
}

impl SeqTracker {
    pub fn new(count: u64) -> SeqTracker {
        SeqTracker {
            seen: vec![0; count.div_ceil(64) as usize],
            count,
            highest: None,
            received: 0,
            reordered: 0,
            duplicates: 0,
            out_of_range: 0,
        }
    }

    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= self.count {
            self.out_of_range += 1;
            return Arrival::OutOfRange;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen[word] |= bit;
        self.received += 1;
        match self.highest {
            Some(h) if seq < h => {
                self.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                self.highest = Some(seq);
                Arrival::InOrder
            }
        }
    }

    /// Sequence numbers sent but never received (given `sent` were sent).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
    }

    /// True once every one of the `count` sequence numbers has arrived.
    pub fn complete(&self) -> bool {
        self.received == self.count
    }
}

/// Two-sided 95% quantile of Student's t distribution with `df` degrees of
/// freedom (`t_{0.975, df}`): exact table values up to 30, the
/// Cornish-Fisher expansion above (error < 1e-4 there).
pub fn t_975(df: u64) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df as usize - 1],
        _ => {
            let z: f64 = 1.959_964;
            let n = df as f64;
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

/// A mean with the half-width of its 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MeanCi {
    pub mean: f64,
    /// Half-width: the interval is `mean ± ci95`. `None` with a single value.
    pub ci95: Option<f64>,
    pub n: u64,
}

/// Mean and t-based 95% confidence interval of `values`
/// (`t_{0.975,n-1} · s / √n`, `s` the sample standard deviation).
pub fn mean_ci95(values: &[f64]) -> Option<MeanCi> {
    let n = values.len() as u64;
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some(MeanCi { mean, ci95: None, n });
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t_975(n - 1) * var.sqrt() / (n as f64).sqrt();
    Some(MeanCi { mean, ci95: Some(half), n })
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Percentiles of RTT samples in nanoseconds, through an HDR histogram with
/// 3 significant digits (0.1% resolution); min and max are exact.
pub fn percentiles(samples_ns: &[u64]) -> Option<Percentiles> {
    if samples_ns.is_empty() {
        return None;
    }
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits is valid");
    for &s in samples_ns {
        // An auto-resizing histogram only fails on counts overflowing u64.
        h.record(s.max(1)).expect("auto-resizing histogram records any value");
    }
    let (min, max) = (h.min().max(1), h.max());
    let (min, max) = (
        samples_ns.iter().copied().min().unwrap_or(min),
        samples_ns.iter().copied().max().unwrap_or(max),
    );
    let us = |ns: u64| ns as f64 / 1000.0;
    // Bucket values are the bucket's upper edge; keep them inside the exact
    // range so p99.9 never reads above the max.
    let q = |quantile: f64| us(h.value_at_quantile(quantile).clamp(min, max));
    Some(Percentiles {
        min_us: us(min),
        p50_us: q(0.50),
        p90_us: q(0.90),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: us(max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tracker_counts_reorder_duplicates_and_strangers() {
        let mut t = SeqTracker::new(10);
        assert_eq!(t.record(0), Arrival::InOrder);
        assert_eq!(t.record(2), Arrival::InOrder);
        assert_eq!(t.record(1), Arrival::Reordered);
        assert_eq!(t.record(2), Arrival::Duplicate);
        assert_eq!(t.record(10), Arrival::OutOfRange);
        assert_eq!(t.record(3), Arrival::InOrder);
        assert_eq!((t.received, t.reordered, t.duplicates, t.out_of_range), (4, 1, 1, 1));
        assert_eq!(t.lost(10), 6);
        assert!(!t.complete());
    }

    #[test]
    fn t_quantiles_match_tables() {
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(30), 2.042);
        assert!((t_975(40) - 2.021).abs() < 1e-3, "{}", t_975(40));
        assert!((t_975(120) - 1.980).abs() < 1e-3, "{}", t_975(120));
        assert!((t_975(1_000_000) - 1.960).abs() < 1e-3);
        // Decreasing in df.
        for df in 1..200 {
            assert!(t_975(df + 1) < t_975(df), "df {df}");
        }
    }

    #[test]
    fn mean_ci_of_known_values() {
        // mean 5, s = sqrt(2.5), n = 5: half = 2.776 * 1.5811 / 2.2361 = 1.963
        let m = mean_ci95(&[3.0, 4.0, 5.0, 6.0, 7.0]).unwrap();
        assert_eq!(m.mean, 5.0);
        assert!((m.ci95.unwrap() - 1.963).abs() < 1e-3, "{m:?}");
        assert_eq!(mean_ci95(&[4.0]).unwrap().ci95, None);
        assert!(mean_ci95(&[]).is_none());
    }

    #[test]
    fn percentiles_of_uniform_samples() {
        let s: Vec<u64> = (1..=100_000).map(|i| i * 10).collect(); // 10 ns .. 1 ms
        let p = percentiles(&s).unwrap();
        assert_eq!(p.min_us, 0.01);
        assert_eq!(p.max_us, 1000.0);
        assert!((p.p50_us - 500.0).abs() / 500.0 < 0.002, "{p:?}");
        assert!((p.p99_us - 990.0).abs() / 990.0 < 0.002, "{p:?}");
        assert!(percentiles(&[]).is_none());
    }

    proptest! {
        #[test]
        fn tracker_invariants(seqs in proptest::collection::vec(0u64..80, 0..200)) {
            let mut t = SeqTracker::new(64);
            for &s in &seqs {
                t.record(s);
            }
            let distinct: std::collections::BTreeSet<u64> =
                seqs.iter().copied().filter(|&s| s < 64).collect();
            prop_assert_eq!(t.received, distinct.len() as u64);
            prop_assert_eq!(t.received + t.duplicates + t.out_of_range, seqs.len() as u64);
            prop_assert!(t.reordered <= t.received);
        }

        #[test]
        fn percentiles_are_ordered(s in proptest::collection::vec(1u64..10_000_000_000, 1..500)) {
            let p = percentiles(&s).unwrap();
            prop_assert!(p.min_us <= p.p50_us * 1.001);
            prop_assert!(p.p50_us <= p.p90_us && p.p90_us <= p.p99_us && p.p99_us <= p.p999_us);
            prop_assert!(p.p999_us <= p.max_us * 1.001);
        }
    }
}
