//! `/metrics`: OpenMetrics text (Prometheus reads it) through
//! `prometheus-client`.
//!
//! The dataplane counters are not copied into registered metrics: at each
//! scrape a [`Collector`] reads every running chain's telemetry snapshot
//! (seqlock cells the worker writes; the reader retries, the worker never
//! waits) and encodes it. The API's own request counter is an ordinary
//! registered family.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::daemon::{Chains, Daemon};
use crate::ops::Operations;
use std::sync::Arc;

/// The labels of `braid_api_requests`.
pub type RequestLabels = Vec<(&'static str, String)>;

/// The registry and the daemon's own metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// API requests by method, route and status.
    pub requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    /// Metrics over `daemon`'s chains and `operations`.
    pub fn new(daemon: &Daemon, operations: Arc<Operations>) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "braid_api_requests",
            "API requests served, by method, route and status",
            requests.clone(),
        );
        registry.register_collector(Box::new(ChainCollector {
            chains: daemon.chains(),
            idle: daemon.idle_policy(),
            operations,
        }));
        Metrics { registry, requests }
    }

    /// Count one API request.
    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// Everything, as OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the chains' telemetry at each scrape.
struct ChainCollector {
    chains: Chains,
    /// The chain workers' idle policy (a label of `braid_worker_info`).
    idle: String,
    operations: Arc<Operations>,
}

/// A worker thread's on-CPU time since its loop started and the wall time
/// since then (ns): one small read of `/proc/self/task/TID/schedstat` (its
/// first field, nanoseconds on a CPU) per chain and scrape (None before
/// its loop started or once its thread is gone).
fn worker_cpu(live: &braid_runtime::live::LiveChain) -> Option<(u64, u64)> {
    let os = live.telemetry().os();
    let start = os.start?;
    let text = std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", start.tid)).ok()?;
    let run_ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    let wall = braid_nf::monotonic_ns().saturating_sub(os.start_ns);
    Some((run_ns.saturating_sub(start.run_ns), wall))
}

impl std::fmt::Debug for ChainCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One counter family: name, help, and (labels, value) rows.
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for ChainCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let chains: Vec<_> =
            self.chains.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        // Per NF: (labels, counters); per port; per chain.
        let mut nf = Vec::new();
        let mut drops = Vec::new();
        let mut ports = Vec::new();
        let mut up = Vec::new();
        let mut loops = Vec::new();
        let mut cpu = Vec::new();
        for c in &chains {
            let chain = c.name().to_string();
            let (state, _) = c.state();
            up.push((vec![("chain", chain.clone())], i64::from(state == "running")));
            let Some(live) = c.live() else { continue };
            let s = live.snapshot();
            for st in &s.stages {
                let labels: Labels = vec![
                    ("chain", chain.clone()),
                    ("nf", st.name.clone()),
                    ("kind", st.kind.to_string()),
                ];
                for (reason, v) in st.counters.drop_breakdown() {
                    let mut l = labels.clone();
                    l.push(("reason", reason.to_string()));
                    drops.push((l, v));
                }
                nf.push((labels, st.counters.clone()));
            }
            for p in &s.ports {
                ports.push((vec![("chain", chain.clone()), ("port", p.name.clone())], p.stats));
            }
            loops.push((vec![("chain", chain.clone())], s.looped));
            if let Some(c) = worker_cpu(live) {
                cpu.push((vec![("chain", chain.clone())], c));
            }
        }
        let rows = |f: &dyn Fn(&braid_nf::Counters) -> u64| -> Vec<(Labels, u64)> {
            nf.iter().map(|(l, c)| (l.clone(), f(c))).collect()
        };
        counters(&mut enc, "braid_nf_packets_in", "Packets into an NF", &rows(&|c| c.packets_in))?;
        counters(
            &mut enc,
            "braid_nf_packets_out",
            "Packets out of an NF",
            &rows(&|c| c.packets_out),
        )?;
        counters(&mut enc, "braid_nf_bytes_in", "Bytes into an NF", &rows(&|c| c.bytes_in))?;
        counters(&mut enc, "braid_nf_bytes_out", "Bytes out of an NF", &rows(&|c| c.bytes_out))?;
        counters(
            &mut enc,
            "braid_nf_packets_created",
            "Packets an NF made itself (answers, coded packets)",
            &rows(&|c| c.packets_created),
        )?;
        counters(&mut enc, "braid_nf_batches", "Batches an NF processed", &rows(&|c| c.batches))?;
        counters(
            &mut enc,
            "braid_nf_busy_nanoseconds",
            "Time an NF spent processing (ns per packet: this over packets_in)",
            &rows(&|c| c.busy_ns),
        )?;
        counters(&mut enc, "braid_nf_drops", "Packets an NF dropped, by reason", &drops)?;
        let prow = |f: &dyn Fn(&braid_io::PortStats) -> u64| -> Vec<(Labels, u64)> {
            ports.iter().map(|(l, s)| (l.clone(), f(s))).collect()
        };
        counters(
            &mut enc,
            "braid_port_rx_packets",
            "Packets received by a port",
            &prow(&|s| s.rx_packets),
        )?;
        counters(
            &mut enc,
            "braid_port_tx_packets",
            "Packets sent by a port",
            &prow(&|s| s.tx_packets),
        )?;
        counters(
            &mut enc,
            "braid_port_rx_bytes",
            "Bytes received by a port",
            &prow(&|s| s.rx_bytes),
        )?;
        counters(&mut enc, "braid_port_tx_bytes", "Bytes sent by a port", &prow(&|s| s.tx_bytes))?;
        counters(
            &mut enc,
            "braid_port_rx_dropped",
            "Frames a port dropped on receive",
            &prow(&|s| s.rx_dropped),
        )?;
        counters(
            &mut enc,
            "braid_port_tx_dropped",
            "Frames a port could not send",
            &prow(&|s| s.tx_dropped),
        )?;
        let lrow =
            |f: &dyn Fn(&braid_dataplane::telemetry::LoopStats) -> u64| -> Vec<(Labels, u64)> {
                loops.iter().map(|(l, s)| (l.clone(), f(s))).collect()
            };
        counters(
            &mut enc,
            "braid_worker_turns",
            "Loop turns of a chain's worker",
            &lrow(&|s| s.turns),
        )?;
        counters(
            &mut enc,
            "braid_worker_idle_turns",
            "Loop turns that received nothing",
            &lrow(&|s| s.idle_turns),
        )?;
        counters(
            &mut enc,
            "braid_worker_sleeps",
            "Times a chain's worker slept waiting for packets (poll or sleep idle policy)",
            &lrow(&|s| s.sleeps),
        )?;
        counters(
            &mut enc,
            "braid_worker_control_messages",
            "Control messages a chain's worker answered",
            &lrow(&|s| s.control_messages),
        )?;
        let syscalls: Vec<(Labels, u64)> =
            ports.iter().filter_map(|(l, s)| s.syscalls.map(|n| (l.clone(), n))).collect();
        counters(
            &mut enc,
            "braid_port_syscalls",
            "System calls a port made to receive and send (recvmmsg, sendmmsg, AF_XDP wake-ups)",
            &syscalls,
        )?;
        let cpu_ns: Vec<(Labels, u64)> =
            cpu.iter().map(|(l, (run, _))| (l.clone(), *run)).collect();
        counters(
            &mut enc,
            "braid_worker_cpu_nanoseconds",
            "On-CPU time of a chain's worker thread since its loop started (busy share: its rate over 1e9)",
            &cpu_ns,
        )?;
        let mut m = enc.encode_descriptor(
            "braid_worker_busy_share",
            "Share of wall time a chain's worker thread was on a CPU since its loop started (0..1; with idle policy busy, 1)",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for (labels, (run, wall)) in &cpu {
            let share = if *wall == 0 { 0.0 } else { (*run as f64 / *wall as f64).min(1.0) };
            ConstGauge::new(share).encode(m.encode_family(labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "braid_worker_info",
            "A chain's worker and its idle policy (always 1)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (labels, _) in &loops {
            let mut l = labels.clone();
            l.push(("idle", self.idle.clone()));
            ConstGauge::new(1i64).encode(m.encode_family(&l)?)?;
        }
        let (totals, running) = self.operations.counts();
        let rows: Vec<(Labels, u64)> = totals
            .into_iter()
            .map(|((kind, outcome), n)| {
                (vec![("kind", kind.to_string()), ("outcome", outcome.to_string())], n)
            })
            .collect();
        counters(
            &mut enc,
            "braid_operations",
            "Operations (deploy, remove, reconfigure) finished, by kind and outcome",
            &rows,
        )?;
        let mut m = enc.encode_descriptor(
            "braid_operations_running",
            "Operations running now",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(running as i64).encode(m.encode_family(&Vec::<(&str, String)>::new())?)?;
        let mut m = enc.encode_descriptor(
            "braid_chain_up",
            "1 when the chain's worker runs, 0 when it is declared but not running",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (labels, v) in &up {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}
