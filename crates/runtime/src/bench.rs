//! In-memory benchmark of a chain: a generator feeds the chain in a tight
//! loop on one thread, with no I/O.
//!
//! Each iteration refills a batch from per-flow frame templates (pooled
//! buffers, one copy per packet) and passes it through the chain; what
//! leaves is dropped back to the pool. The same loop without the chain is
//! measured first in the same run as the *refill baseline*, so the chain's
//! own cost is the difference. Per-NF costs come from the stages' busy time
//! (one clock read per stage per batch).

use std::time::{Duration, Instant};

use braid_io::memory::{GeneratorConfig, GeneratorPort};
use braid_io::{Port, PortError};
use braid_packet::Batch;

use crate::chain::Chain;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Frame length without FCS, 60..=1514.
    pub frame_size: usize,
    /// Distinct UDP 5-tuples.
    pub flows: u32,
    /// Measured time of the chain loop (after warm-up).
    pub duration: Duration,
    /// Packets per batch.
    pub batch_size: usize,
    /// Time run before measuring, to warm caches and NF tables.
    pub warmup: Duration,
    /// UDP over IPv6 flows (the generator's `ipv6`) instead of IPv4.
    pub ipv6: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            frame_size: 64,
            flows: 1,
            duration: Duration::from_secs(3),
            batch_size: braid_packet::DEFAULT_BATCH_SIZE,
            warmup: Duration::from_millis(300),
            ipv6: false,
        }
    }
}

/// Throughput of one loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub packets: u64,
    pub elapsed: Duration,
}

impl Rate {
    /// Million packets per second.
    pub fn mpps(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-12) / 1e6
    }
    /// Nanoseconds per packet.
    pub fn ns_per_packet(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / (self.packets.max(1)) as f64
    }
}

/// One NF's share.
#[derive(Clone, Debug, PartialEq)]
pub struct StageResult {
    pub name: String,
    pub kind: &'static str,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Busy time per packet that entered this NF.
    pub ns_per_packet: f64,
    /// This NF alone, as if it ran by itself: packets_in / busy time.
    pub mpps: f64,
}

/// The outcome of [`run`].
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    pub config_frame_size: usize,
    pub config_flows: u32,
    pub config_batch_size: usize,
    pub config_ipv6: bool,
    /// Refill only (generator → drop), same run.
    pub baseline: Rate,
    /// Refill + chain.
    pub chain: Rate,
    /// Packets that left the chain.
    pub packets_out: u64,
    pub stages: Vec<StageResult>,
}

impl BenchResult {
    /// Chain cost per packet without the refill: measured loop minus the
    /// baseline loop.
    pub fn chain_only_ns_per_packet(&self) -> f64 {
        (self.chain.ns_per_packet() - self.baseline.ns_per_packet()).max(0.0)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "frame_size": self.config_frame_size,
            "flows": self.config_flows,
            "batch_size": self.config_batch_size,
            "ipv6": self.config_ipv6,
            "baseline": { "packets": self.baseline.packets, "seconds": self.baseline.elapsed.as_secs_f64(),
                          "mpps": self.baseline.mpps(), "ns_per_packet": self.baseline.ns_per_packet() },
            "chain": { "packets": self.chain.packets, "seconds": self.chain.elapsed.as_secs_f64(),
                       "mpps": self.chain.mpps(), "ns_per_packet": self.chain.ns_per_packet(),
                       "chain_only_ns_per_packet": self.chain_only_ns_per_packet(),
                       "packets_out": self.packets_out },
            "stages": self.stages.iter().map(|s| serde_json::json!({
                "name": s.name, "kind": s.kind, "packets_in": s.packets_in, "packets_out": s.packets_out,
                "ns_per_packet": s.ns_per_packet, "mpps": s.mpps })).collect::<Vec<_>>(),
        })
    }
}

/// Loop iterations between clock reads.
const CLOCK_EVERY: u32 = 64;

/// Run `gen → (chain) → drop` until `until` passes; returns packets.
fn spin(
    gen: &mut GeneratorPort,
    mut chain: Option<&mut Chain>,
    batch: &mut Batch,
    batch_size: usize,
    until: Instant,
    out: &mut u64,
    progress: &mut dyn FnMut(Instant),
) -> Result<u64, PortError> {
    let mut packets = 0u64;
    let mut last_tick = Instant::now();
    loop {
        for _ in 0..CLOCK_EVERY {
            packets += gen.recv(batch, batch_size)? as u64;
            if let Some(c) = chain.as_deref_mut() {
                c.process(batch);
            }
            *out += batch.len() as u64;
            batch.clear();
        }
        let now = Instant::now();
        if let Some(c) = chain.as_deref_mut() {
            if now.duration_since(last_tick) >= crate::runner::TICK_INTERVAL {
                last_tick = now;
                c.tick(batch);
                *out += batch.len() as u64;
                batch.clear();
            }
        }
        progress(now);
        if now >= until {
            return Ok(packets);
        }
    }
}

/// Benchmark `chain`. `progress` is called often with the fraction of the
/// total time done (0.0..=1.0) and the chain's Mpps so far (0 during the
/// baseline and warm-up).
pub fn run(
    chain: &mut Chain,
    cfg: &BenchConfig,
    mut progress: impl FnMut(f64, f64),
) -> Result<BenchResult, PortError> {
    let mut gen = GeneratorPort::new(&GeneratorConfig {
        frame_size: cfg.frame_size,
        flows: cfg.flows,
        packets: None,
        ipv6: cfg.ipv6,
        ..GeneratorConfig::default()
    })?;
    let batch_size = cfg.batch_size.max(1);
    let mut batch = Batch::with_capacity(batch_size * 2);
    braid_packet::buffer::pool_prefill(batch_size * 4);
    let baseline_time = (cfg.duration / 4).max(Duration::from_millis(100));
    let total = (baseline_time + cfg.warmup + cfg.duration).as_secs_f64();
    let t0 = Instant::now();
    let frac = |now: Instant| (now.duration_since(t0).as_secs_f64() / total).min(1.0);
    let mut sink = 0u64;

    // Baseline: refill only.
    let b0 = Instant::now();
    let base_packets =
        spin(&mut gen, None, &mut batch, batch_size, b0 + baseline_time, &mut sink, &mut |now| {
            progress(frac(now), 0.0)
        })?;
    let baseline = Rate { packets: base_packets, elapsed: b0.elapsed() };

    // Warm-up, then measure with fresh counters.
    spin(
        &mut gen,
        Some(chain),
        &mut batch,
        batch_size,
        Instant::now() + cfg.warmup,
        &mut sink,
        &mut |now| progress(frac(now), 0.0),
    )?;
    chain.reset_counters();
    let mut out = 0u64;
    let m0 = Instant::now();
    let mut seen = 0u64;
    let packets = {
        let mut report = |now: Instant| {
            seen += 1;
            // Counters of the first stage tell the packets so far cheaply.
            let secs = now.duration_since(m0).as_secs_f64().max(1e-9);
            let approx = seen * CLOCK_EVERY as u64 * batch_size as u64;
            progress(frac(now), approx as f64 / secs / 1e6);
        };
        spin(
            &mut gen,
            Some(chain),
            &mut batch,
            batch_size,
            m0 + cfg.duration,
            &mut out,
            &mut report,
        )?
    };
    let elapsed = m0.elapsed();
    chain.publish();
    let stages = chain
        .stages()
        .iter()
        .map(|s| {
            let c = s.counters();
            let ns = if c.packets_in > 0 { c.busy_ns as f64 / c.packets_in as f64 } else { 0.0 };
            StageResult {
                name: s.name().to_string(),
                kind: s.spec().name,
                packets_in: c.packets_in,
                packets_out: c.packets_out,
                ns_per_packet: ns,
                mpps: if ns > 0.0 { 1e3 / ns } else { 0.0 },
            }
        })
        .collect();
    progress(1.0, packets as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6);
    Ok(BenchResult {
        config_frame_size: cfg.frame_size,
        config_flows: cfg.flows,
        config_batch_size: batch_size,
        config_ipv6: cfg.ipv6,
        baseline,
        chain: Rate { packets, elapsed },
        packets_out: out,
        stages,
    })
}

/// The result as a table, for people.
pub fn format_result(r: &BenchResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frames {} B, {} {} flows, batch {}",
        r.config_frame_size,
        r.config_flows,
        if r.config_ipv6 { "UDP/IPv6" } else { "UDP/IPv4" },
        r.config_batch_size
    );
    let _ = writeln!(s, "{:<28} {:>10} {:>10} {:>14}", "", "Mpps", "ns/pkt", "packets");
    let _ = writeln!(
        s,
        "{:<28} {:>10.2} {:>10.1} {:>14}",
        "refill baseline",
        r.baseline.mpps(),
        r.baseline.ns_per_packet(),
        r.baseline.packets
    );
    let _ = writeln!(
        s,
        "{:<28} {:>10.2} {:>10.1} {:>14}",
        "refill + chain",
        r.chain.mpps(),
        r.chain.ns_per_packet(),
        r.chain.packets
    );
    let only = r.chain_only_ns_per_packet();
    let _ = writeln!(
        s,
        "{:<28} {:>10.2} {:>10.1} {:>14}",
        "chain alone (difference)",
        if only > 0.0 { 1e3 / only } else { f64::INFINITY },
        only,
        r.packets_out
    );
    let _ = writeln!(s, "per NF (busy time per packet in):");
    for st in &r.stages {
        let _ = writeln!(
            s,
            "  {:<12} {:<12} {:>10.2} {:>10.1} {:>14}",
            st.name, st.kind, st.mpps, st.ns_per_packet, st.packets_in
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_baseline_chain_and_stages() {
        let mut chain = Chain::new(
            "b",
            vec![
                ("a".into(), braid_nf::build("fwd", &braid_nf::Params::Null).unwrap()),
                ("b".into(), braid_nf::build("fwd", &braid_nf::Params::Null).unwrap()),
            ],
        );
        let cfg = BenchConfig {
            frame_size: 128,
            flows: 8,
            duration: Duration::from_millis(50),
            batch_size: 16,
            warmup: Duration::from_millis(10),
            ipv6: false,
        };
        let mut calls = 0;
        let mut last = 0.0;
        let r = run(&mut chain, &cfg, |f, _| {
            assert!(f >= last && f <= 1.0);
            last = f;
            calls += 1;
        })
        .unwrap();
        assert!(calls > 0 && last == 1.0);
        assert!(r.baseline.packets > 0 && r.chain.packets > 0);
        assert_eq!(r.chain.packets % 16, 0);
        assert_eq!(r.stages.len(), 2);
        assert_eq!(r.stages[0].packets_in, r.chain.packets);
        assert_eq!(r.packets_out, r.chain.packets);
        assert!(format_result(&r).contains("refill baseline"));
        assert_eq!(r.to_json()["stages"][1]["name"], "b");
        let bad = BenchConfig { frame_size: 10, ..cfg };
        assert!(run(&mut chain, &bad, |_, _| {}).is_err());
    }
}
