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

use crate::daemon::Chains;

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
    /// Metrics over `chains`.
    pub fn new(chains: Chains) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "braid_api_requests",
            "API requests served, by method, route and status",
            requests.clone(),
        );
        registry.register_collector(Box::new(ChainCollector { chains }));
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
