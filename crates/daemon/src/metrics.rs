//! `/metrics`: OpenMetrics text (Prometheus reads it).
//!
//! The daemon's own request counter is an ordinary `prometheus-client`
//! family. The dataplane counters are not copied into registered metrics:
//! at each scrape every running chain's telemetry is read (seqlock cells
//! the worker writes; the reader retries, the worker never waits) and
//! written straight into the page by [`Page`], with each NF's and port's
//! label set rendered once per scrape (not once per sample) and each
//! worker's CPU time read from its thread's CPU clock (one
//! `clock_gettime`, no `/proc` file). docs/daemon.md ("Metrics") has what
//! this costs with 100 NFs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as LabelledFamily;
use prometheus_client::registry::Registry;

use braid_dataplane::telemetry::WorkerSnapshot;

use crate::daemon::{Chains, Daemon};
use crate::ops::Operations;

/// The labels of `braid_api_requests`.
pub type RequestLabels = Vec<(&'static str, String)>;

/// The registry and the daemon's own metrics.
pub struct Metrics {
    registry: Registry,
    /// API requests by method, route and status.
    pub requests: LabelledFamily<RequestLabels, Counter>,
    chains: Chains,
    /// The chain workers' idle policy (a label of `braid_worker_info`).
    idle: String,
    operations: Arc<Operations>,
    /// The last page's length: the next one's first allocation.
    last_len: AtomicUsize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("requests", &self.requests).finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics over `daemon`'s chains and `operations`.
    pub fn new(daemon: &Daemon, operations: Arc<Operations>) -> Metrics {
        let mut registry = Registry::default();
        let requests = LabelledFamily::<RequestLabels, Counter>::default();
        registry.register(
            "braid_api_requests",
            "API requests served, by method, route and status",
            requests.clone(),
        );
        Metrics {
            registry,
            requests,
            chains: daemon.chains(),
            idle: daemon.idle_policy(),
            operations,
            last_len: AtomicUsize::new(16 * 1024),
        }
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
        let mut page =
            Page { out: String::with_capacity(self.last_len.load(Ordering::Relaxed) + 4096) };
        prometheus_client::encoding::text::encode_registry(&mut page.out, &self.registry)?;
        self.encode_chains(&mut page);
        prometheus_client::encoding::text::encode_eof(&mut page.out)?;
        self.last_len.store(page.out.len(), Ordering::Relaxed);
        Ok(page.out)
    }

    fn encode_chains(&self, p: &mut Page) {
        let chains: Vec<_> =
            self.chains.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let seen: Vec<Seen> = chains.iter().map(|c| Seen::read(c)).collect();
        let nfs = || seen.iter().flat_map(|s| s.nfs());
        let ports = || seen.iter().flat_map(|s| s.ports());
        let workers =
            || seen.iter().flat_map(|s| s.workers.iter().map(|(l, lp, cpu)| (l, lp, *cpu)));

        type Nf = braid_nf::Counters;
        let nf_families: [Family<Nf>; 7] = [
            ("braid_nf_packets_in", "Packets into an NF", |c| c.packets_in),
            ("braid_nf_packets_out", "Packets out of an NF", |c| c.packets_out),
            ("braid_nf_bytes_in", "Bytes into an NF", |c| c.bytes_in),
            ("braid_nf_bytes_out", "Bytes out of an NF", |c| c.bytes_out),
            (
                "braid_nf_packets_created",
                "Packets an NF made itself (answers, coded packets)",
                |c| c.packets_created,
            ),
            ("braid_nf_batches", "Batches an NF processed", |c| c.batches),
            (
                "braid_nf_busy_nanoseconds",
                "Time an NF spent processing (ns per packet: this over packets_in)",
                |c| c.busy_ns,
            ),
        ];
        // Kernel (XDP) NFs have what their program counts: packets and
        // bytes in, packets out (handed to the next stage or forwarded),
        // drops by reason, and what they passed to the host's stack.
        let kernel_nfs = || seen.iter().flat_map(|s| s.kernel_nfs.iter());
        type Xdp = braid_io::xdp::XdpCounters;
        let kernel_value = |name: &str| -> Option<fn(&Xdp) -> u64> {
            match name {
                "braid_nf_packets_in" => Some(|c| c.rx_packets),
                "braid_nf_packets_out" => Some(|c| c.redirect),
                "braid_nf_bytes_in" => Some(|c| c.rx_bytes),
                _ => None,
            }
        };
        for (name, help, f) in nf_families {
            p.family(name, help, "counter");
            for (labels, c) in nfs() {
                p.counter(name, labels, "", f(c));
            }
            if let Some(k) = kernel_value(name) {
                for (labels, _, c) in kernel_nfs() {
                    p.counter(name, labels, "", k(c));
                }
            }
        }
        let name = "braid_nf_drops";
        p.family(name, "Packets an NF dropped, by reason", "counter");
        for (labels, c) in nfs() {
            for (reason, v) in c.drop_breakdown() {
                p.counter(name, labels, &format!(",reason=\"{reason}\""), v);
            }
        }
        for (labels, kind, c) in kernel_nfs() {
            for (reason, v) in crate::kernel::drop_reasons(kind, c) {
                p.counter(name, labels, &format!(",reason=\"{reason}\""), v);
            }
        }
        let name = "braid_nf_kernel_passed";
        p.family(
            name,
            "Frames a kernel (XDP) NF handed to the host's own network stack (XDP_PASS: not for the chain)",
            "counter",
        );
        for (labels, _, c) in kernel_nfs() {
            p.counter(name, labels, "", c.pass);
        }

        type Port = braid_io::PortStats;
        let port_families: [Family<Port>; 6] = [
            ("braid_port_rx_packets", "Packets received by a port", |s| s.rx_packets),
            ("braid_port_tx_packets", "Packets sent by a port", |s| s.tx_packets),
            ("braid_port_rx_bytes", "Bytes received by a port", |s| s.rx_bytes),
            ("braid_port_tx_bytes", "Bytes sent by a port", |s| s.tx_bytes),
            ("braid_port_rx_dropped", "Frames a port dropped on receive", |s| s.rx_dropped),
            ("braid_port_tx_dropped", "Frames a port could not send", |s| s.tx_dropped),
        ];
        for (name, help, f) in port_families {
            p.family(name, help, "counter");
            for (labels, s) in ports() {
                p.counter(name, labels, "", f(s));
            }
        }

        type Loop = braid_dataplane::telemetry::LoopStats;
        let loop_families: [Family<Loop>; 4] = [
            ("braid_worker_turns", "Loop turns of a chain's worker", |l| l.turns),
            ("braid_worker_idle_turns", "Loop turns that received nothing", |l| l.idle_turns),
            (
                "braid_worker_sleeps",
                "Times a chain's worker slept waiting for packets (poll or sleep idle policy)",
                |l| l.sleeps,
            ),
            ("braid_worker_control_messages", "Control messages a chain's worker answered", |l| {
                l.control_messages
            }),
        ];
        for (name, help, f) in loop_families {
            p.family(name, help, "counter");
            for (labels, looped, _) in workers() {
                p.counter(name, labels, "", f(looped));
            }
        }
        type Xsk = braid_io::af_xdp::XskStats;
        let xsk_families: [Family<Xsk>; 6] = [
            (
                "braid_port_xdp_rx_dropped",
                "AF_XDP socket: frames the kernel dropped on receive other than for a full ring or a bad descriptor (XDP_STATISTICS)",
                |x| x.rx_dropped,
            ),
            (
                "braid_port_xdp_rx_invalid_descs",
                "AF_XDP socket: invalid descriptors in the fill ring (XDP_STATISTICS)",
                |x| x.rx_invalid_descs,
            ),
            (
                "braid_port_xdp_tx_invalid_descs",
                "AF_XDP socket: invalid descriptors in the transmit ring (XDP_STATISTICS)",
                |x| x.tx_invalid_descs,
            ),
            (
                "braid_port_xdp_rx_ring_full",
                "AF_XDP socket: frames dropped because the receive ring was full (XDP_STATISTICS)",
                |x| x.rx_ring_full,
            ),
            (
                "braid_port_xdp_rx_fill_ring_empty_descs",
                "AF_XDP socket: times a frame came and the fill ring was empty (XDP_STATISTICS)",
                |x| x.rx_fill_ring_empty_descs,
            ),
            (
                "braid_port_xdp_tx_ring_empty_descs",
                "AF_XDP socket: times the kernel was woken to send and the transmit ring was empty (XDP_STATISTICS)",
                |x| x.tx_ring_empty_descs,
            ),
        ];
        for (name, help, f) in xsk_families {
            p.family(name, help, "counter");
            for (labels, s) in ports() {
                if let Some(x) = &s.xsk {
                    p.counter(name, labels, "", f(x));
                }
            }
        }
        let name = "braid_port_syscalls";
        p.family(
            name,
            "System calls a port made to receive and send (recvmmsg, sendmmsg, AF_XDP wake-ups)",
            "counter",
        );
        for (labels, s) in ports() {
            if let Some(n) = s.syscalls {
                p.counter(name, labels, "", n);
            }
        }
        let name = "braid_worker_cpu_nanoseconds";
        p.family(
            name,
            "On-CPU time of a chain's worker thread since its loop started (busy share: its rate over 1e9)",
            "counter",
        );
        for (labels, _, cpu) in workers() {
            if let Some((run, _)) = cpu {
                p.counter(name, labels, "", run);
            }
        }
        let name = "braid_worker_busy_share";
        p.family(
            name,
            "Share of wall time a chain's worker thread was on a CPU since its loop started (0..1; with idle policy busy, 1)",
            "gauge",
        );
        for (labels, _, cpu) in workers() {
            if let Some((run, wall)) = cpu {
                let share = if wall == 0 { 0.0 } else { (run as f64 / wall as f64).min(1.0) };
                p.gauge_f64(name, labels, share);
            }
        }
        let name = "braid_worker_info";
        p.family(name, "A chain's worker and its idle policy (always 1)", "gauge");
        let idle = format!(",idle=\"{}\"", escape(&self.idle));
        for (labels, _, _) in workers() {
            p.gauge(name, labels, &idle, 1);
        }

        let (totals, running) = self.operations.counts();
        let name = "braid_operations";
        p.family(
            name,
            "Operations (deploy, remove, reconfigure) finished, by kind and outcome",
            "counter",
        );
        for ((kind, outcome), n) in totals {
            let labels = format!("kind=\"{}\",outcome=\"{}\"", escape(kind), escape(outcome));
            p.counter(name, &labels, "", n);
        }
        let name = "braid_operations_running";
        p.family(name, "Operations running now", "gauge");
        p.gauge(name, "", "", running as i64);
        let name = "braid_chain_up";
        p.family(
            name,
            "1 when the chain's worker runs, 0 when it is declared but not running",
            "gauge",
        );
        for s in &seen {
            p.gauge(name, &s.chain, "", i64::from(s.up));
        }
    }
}

/// A counter family read from records of type `T`: name, help, value.
type Family<T> = (&'static str, &'static str, fn(&T) -> u64);

/// One chain as read at a scrape, with its label sets rendered once.
struct Seen {
    /// `chain="NAME"`.
    chain: String,
    up: bool,
    snap: Option<WorkerSnapshot>,
    /// `chain="..",nf="..",kind="..",placement="user"` per stage of `snap`.
    nf_labels: Vec<String>,
    /// A kernel chain's NFs: `chain="..",nf="..",kind="..",placement="kernel"`,
    /// the NF kind and its program's counters.
    kernel_nfs: Vec<(String, String, braid_io::xdp::XdpCounters)>,
    /// `chain="..",port=".."` per port of `snap`.
    port_labels: Vec<String>,
    /// Per worker thread (one, one per NF with `mapping: threads`, the
    /// edge worker with `mapping: processes`):
    /// `chain="..",worker=".."`, its loop counters, and its on-CPU time
    /// since its loop started and the wall time since then (ns).
    workers: Vec<SeenWorker>,
}

/// A worker as read at a scrape: its label set, loop counters, and
/// (on-CPU ns, wall ns) since its loop started.
type SeenWorker = (String, braid_dataplane::telemetry::LoopStats, Option<(u64, u64)>);

impl Seen {
    fn read(c: &crate::daemon::Deployed) -> Seen {
        let chain = format!("chain=\"{}\"", escape(c.name()));
        let (state, _) = c.state();
        let mut seen = Seen {
            up: state == "running",
            snap: None,
            nf_labels: Vec::new(),
            kernel_nfs: Vec::new(),
            port_labels: Vec::new(),
            workers: Vec::new(),
            chain,
        };
        if let Some(k) = c.kernel() {
            // A map read per NF (per-CPU values summed); no thread involved.
            if let Ok(stats) = k.stats() {
                seen.kernel_nfs = k
                    .descriptor()
                    .nfs
                    .iter()
                    .zip(stats)
                    .map(|(nf, s)| {
                        (
                            nf_labels(&seen.chain, &nf.name, &nf.kind, "kernel"),
                            nf.kind.clone(),
                            s.counters,
                        )
                    })
                    .collect();
            }
            return seen;
        }
        // One read of the workers' telemetry serves both the per-worker
        // families and the chain's NF and port ones.
        let (snap, per_worker, telemetries) = match (c.live(), c.procs()) {
            (Some(live), _) => {
                let per_worker = live.worker_snapshots();
                (live.combine(per_worker.clone()), per_worker, live.telemetries())
            }
            // The edge worker's ports and loop; the NFs' counters from
            // their processes' stats files (at most 200 ms old).
            (None, Some(p)) => {
                let (snap, edge) = p.snapshots();
                (snap, vec![edge], vec![p.edge().telemetry()])
            }
            (None, None) => return seen,
        };
        seen.nf_labels =
            snap.stages.iter().map(|s| nf_labels(&seen.chain, &s.name, s.kind, "user")).collect();
        seen.port_labels = snap
            .ports
            .iter()
            .map(|p| format!("{},port=\"{}\"", seen.chain, escape(&p.name)))
            .collect();
        seen.workers = per_worker
            .iter()
            .zip(telemetries)
            .map(|(w, t)| {
                let labels = format!("{},worker=\"{}\"", seen.chain, escape(&w.worker));
                (labels, w.looped, worker_cpu(&t))
            })
            .collect();
        seen.snap = Some(snap);
        seen
    }

    fn nfs(&self) -> impl Iterator<Item = (&str, &braid_nf::Counters)> {
        let stages = self.snap.iter().flat_map(|s| s.stages.iter());
        self.nf_labels.iter().map(String::as_str).zip(stages.map(|s| &s.counters))
    }

    fn ports(&self) -> impl Iterator<Item = (&str, &braid_io::PortStats)> {
        let ports = self.snap.iter().flat_map(|s| s.ports.iter());
        self.port_labels.iter().map(String::as_str).zip(ports.map(|p| &p.stats))
    }
}

/// The label set of an NF: its chain's, then `nf`, `kind`, `placement`.
fn nf_labels(chain: &str, nf: &str, kind: &str, placement: &str) -> String {
    format!("{chain},nf=\"{}\",kind=\"{}\",placement=\"{placement}\"", escape(nf), escape(kind))
}

/// A worker thread's on-CPU time since its loop started and the wall time
/// since then (ns), from the thread's CPU clock (None before its loop
/// started or once its thread is gone).
fn worker_cpu(telemetry: &braid_dataplane::WorkerTelemetry) -> Option<(u64, u64)> {
    let os = telemetry.os();
    let start = os.start?;
    let run_ns = braid_dataplane::os::thread_cpu_ns(start.tid)?;
    let wall = braid_nf::monotonic_ns().saturating_sub(os.start_ns);
    Some((run_ns.saturating_sub(start.run_ns), wall))
}

/// A label value as OpenMetrics writes it (`\`, `"` and newlines escaped).
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

/// The page being written: families and samples in OpenMetrics text.
struct Page {
    out: String,
}

impl Page {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        for part in ["# HELP ", name, " ", help, "\n# TYPE ", name, " ", kind, "\n"] {
            self.out.push_str(part);
        }
    }

    /// `NAME{LABELS MORE}`: the sample's name and label set.
    fn sample(&mut self, name: &str, suffix: &str, labels: &str, more: &str) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() || !more.is_empty() {
            self.out.push('{');
            self.out.push_str(labels);
            self.out.push_str(more);
            self.out.push('}');
        }
        self.out.push(' ');
    }

    fn counter(&mut self, name: &str, labels: &str, more: &str, v: u64) {
        self.sample(name, "_total", labels, more);
        let _ = writeln!(self.out, "{v}");
    }

    fn gauge(&mut self, name: &str, labels: &str, more: &str, v: i64) {
        self.sample(name, "", labels, more);
        let _ = writeln!(self.out, "{v}");
    }

    fn gauge_f64(&mut self, name: &str, labels: &str, v: f64) {
        self.sample(name, "", labels, "");
        let _ = writeln!(self.out, "{v:?}");
    }
}
