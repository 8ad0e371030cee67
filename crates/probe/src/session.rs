//! A whole probe invocation: latency runs for each payload size and
//! repetition, then (optionally) the throughput search per size.

use crate::config::ConfigError;
use crate::report::{raw_json, summarize, ProbeReport};
use crate::rtt::{run_rtt, RttConfig, RttRun};
use crate::throughput::{search, ThroughputConfig};
use std::io;
use std::net::UdpSocket;

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Payload sizes, each measured in turn.
    pub sizes: Vec<usize>,
    /// Latency repetitions per size (0 = no latency runs).
    pub repetitions: u32,
    /// Settings of each latency run; `payload_len` is taken from `sizes`.
    pub rtt: RttConfig,
    /// The throughput search per size, if wanted; `payload_len` is taken
    /// from `sizes`.
    pub throughput: Option<ThroughputConfig>,
}

impl Default for ProbeConfig {
    fn default() -> ProbeConfig {
        ProbeConfig {
            sizes: vec![256, 1400],
            repetitions: 3,
            rtt: RttConfig::default(),
            throughput: None,
        }
    }
}

impl ProbeConfig {
    /// Check every setting before anything is sent, naming the one that is
    /// out of range; a probe that would measure nothing is refused too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sizes.is_empty() {
            return Err(ConfigError::NoSizes);
        }
        if self.repetitions == 0 && self.throughput.is_none() {
            return Err(ConfigError::NothingToMeasure);
        }
        for &size in &self.sizes {
            RttConfig { payload_len: size, ..self.rtt.clone() }.validate()?;
            if let Some(t) = &self.throughput {
                ThroughputConfig { payload_len: size, ..t.clone() }.validate()?;
            }
        }
        Ok(())
    }
}

/// The report plus the raw RTT samples per size (for the CDF plot).
pub struct ProbeOutcome {
    pub report: ProbeReport,
    /// `("256 B", samples_ns)` per size.
    pub samples: Vec<(String, Vec<u64>)>,
    /// Every latency run with its samples, in the order they ran.
    pub runs: Vec<RttRun>,
}

impl ProbeOutcome {
    /// Every latency run with its RTT samples as JSON (see [`raw_json`]).
    pub fn raw_json(&self) -> String {
        raw_json(&self.report, &self.runs)
    }
}

/// Run everything in `cfg` on `sock`, connected to the echo server.
/// `progress` is called with a line before each run.
pub fn run_probe(
    sock: &UdpSocket,
    cfg: &ProbeConfig,
    mut progress: impl FnMut(&str),
) -> io::Result<ProbeOutcome> {
    cfg.validate()?;
    let target = sock
        .peer_addr()
        .map_err(|e| io::Error::new(e.kind(), format!("probe socket is not connected: {e}")))?;
    // Run ids start at a per-process value so late packets from another
    // probe process on the same port are never taken for ours.
    let mut run_id = std::process::id().wrapping_mul(2_654_435_761);
    let mut latency = Vec::new();
    let mut samples = Vec::new();
    let mut all_runs = Vec::new();
    if cfg.repetitions > 0 {
        for &size in &cfg.sizes {
            let rc = RttConfig { payload_len: size, ..cfg.rtt.clone() };
            let mut runs = Vec::new();
            for rep in 0..cfg.repetitions {
                progress(&format!(
                    "latency: {size} B, repetition {}/{}, {} packets every {} us",
                    rep + 1,
                    cfg.repetitions,
                    rc.count,
                    rc.interval.as_micros()
                ));
                run_id = run_id.wrapping_add(1);
                runs.push(run_rtt(sock, &rc, run_id)?);
            }
            latency.push(summarize(&runs, rc.count, rc.interval.as_nanos() as f64 / 1000.0));
            samples.push((
                format!("{size} B"),
                runs.iter().flat_map(|r| r.rtt_ns.iter().copied()).collect(),
            ));
            all_runs.extend(runs);
        }
    }
    let mut throughput = Vec::new();
    if let Some(t) = &cfg.throughput {
        for &size in &cfg.sizes {
            progress(&format!(
                "throughput: {size} B, searching {}..={} pps",
                t.min_rate, t.max_rate
            ));
            let tc = ThroughputConfig { payload_len: size, ..t.clone() };
            run_id = run_id.wrapping_add(1000);
            throughput.push(search(sock, &tc, run_id)?);
        }
    }
    Ok(ProbeOutcome {
        report: ProbeReport { target: target.to_string(), latency, throughput },
        samples,
        runs: all_runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_would_measure_nothing_is_refused() {
        let ok = ProbeConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let none = ProbeConfig { repetitions: 0, ..ok.clone() };
        assert_eq!(none.validate(), Err(ConfigError::NothingToMeasure));
        let only_throughput = ProbeConfig { throughput: Some(Default::default()), ..none };
        assert_eq!(only_throughput.validate(), Ok(()));
        assert_eq!(
            ProbeConfig { sizes: vec![], ..ok.clone() }.validate(),
            Err(ConfigError::NoSizes)
        );
        let tiny = ProbeConfig { sizes: vec![8], ..ok };
        assert!(matches!(tiny.validate(), Err(ConfigError::PayloadSize { size: 8, .. })));
    }
}
