//! Per-stage and per-port telemetry, written by the worker thread only and
//! read from anywhere without locks (the idea of VPP's stats segment).
//!
//! Each record is a set of `AtomicU64` behind a sequence number (a
//! seqlock): the single writer makes the sequence odd, stores the fields
//! and makes it even again; a reader copies the fields and retries if the
//! sequence moved or was odd. The writer never waits for a reader, and on
//! x86 each store is a plain `mov`: the dataplane pays a few stores per
//! stage per batch, not per packet.

use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use braid_io::PortStats;
use braid_nf::{Counters, DropReason, NfClass};

use crate::os::ThreadOs;

/// A seqlock-protected array of `N` counters.
#[derive(Debug)]
struct SeqCells<const N: usize> {
    seq: AtomicU64,
    cells: [AtomicU64; N],
}

impl<const N: usize> Default for SeqCells<N> {
    fn default() -> Self {
        SeqCells { seq: AtomicU64::new(0), cells: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl<const N: usize> SeqCells<N> {
    /// Store `values[range]` (one writer only).
    #[inline]
    fn write(&self, first: usize, values: &[u64]) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (cell, v) in self.cells[first..first + values.len()].iter().zip(values) {
            cell.store(*v, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A consistent copy of every cell.
    fn read(&self) -> [u64; N] {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let out: [u64; N] = std::array::from_fn(|i| self.cells[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return out;
            }
        }
    }
}

/// Hot counters first, then one per drop reason.
const HOT: usize = 8;
const STAGE_CELLS: usize = HOT + DropReason::COUNT;

/// The published counters of one NF stage.
#[derive(Debug)]
pub struct StageTelemetry {
    /// Instance name.
    pub name: String,
    /// NF kind (`router`).
    pub kind: &'static str,
    pub class: NfClass,
    cells: SeqCells<STAGE_CELLS>,
}

impl StageTelemetry {
    pub(crate) fn new(name: &str, kind: &'static str, class: NfClass) -> StageTelemetry {
        StageTelemetry { name: name.to_string(), kind, class, cells: SeqCells::default() }
    }

    /// Publish `c`; the drop counters only when `drops_changed` (they are
    /// 17 more stores, and most batches drop nothing).
    #[inline]
    pub(crate) fn publish(&self, c: &Counters, drops_changed: bool) {
        let hot = [
            c.packets_in,
            c.packets_out,
            c.bytes_in,
            c.bytes_out,
            c.packets_created,
            c.batches,
            c.busy_ns,
            c.max_batch,
        ];
        if drops_changed {
            let mut all = [0u64; STAGE_CELLS];
            all[..HOT].copy_from_slice(&hot);
            all[HOT..].copy_from_slice(&c.drops);
            self.cells.write(0, &all);
        } else {
            self.cells.write(0, &hot);
        }
    }

    /// A consistent copy of the counters as last published.
    pub fn read(&self) -> Counters {
        let v = self.cells.read();
        let mut c = Counters {
            packets_in: v[0],
            packets_out: v[1],
            bytes_in: v[2],
            bytes_out: v[3],
            packets_created: v[4],
            batches: v[5],
            busy_ns: v[6],
            max_batch: v[7],
            ..Counters::default()
        };
        c.drops.copy_from_slice(&v[HOT..]);
        c
    }
}

/// rx/tx packets and bytes, drops, ended, system calls; then whether the
/// AF_XDP ring counters are there and the six of them.
const PORT_CELLS: usize = 15;

/// The published counters of one port of a worker.
#[derive(Debug)]
pub struct PortTelemetry {
    /// The port's name (`af_xdp:veth1/q0`).
    pub name: String,
    cells: SeqCells<PORT_CELLS>,
}

impl PortTelemetry {
    pub(crate) fn new(name: String) -> PortTelemetry {
        PortTelemetry { name, cells: SeqCells::default() }
    }

    pub(crate) fn publish(&self, s: &PortStats, rx_ended: bool) {
        let x = s.xsk.unwrap_or_default();
        self.cells.write(
            0,
            &[
                s.rx_packets,
                s.rx_bytes,
                s.tx_packets,
                s.tx_bytes,
                s.rx_dropped,
                s.tx_dropped,
                u64::from(rx_ended),
                s.syscalls.unwrap_or(u64::MAX),
                u64::from(s.xsk.is_some()),
                x.rx_dropped,
                x.rx_invalid_descs,
                x.tx_invalid_descs,
                x.rx_ring_full,
                x.rx_fill_ring_empty_descs,
                x.tx_ring_empty_descs,
            ],
        );
    }

    /// The port's counters as last published (every tick), and whether
    /// its input has ended.
    pub fn read(&self) -> (PortStats, bool) {
        let v = self.cells.read();
        let stats = PortStats {
            rx_packets: v[0],
            rx_bytes: v[1],
            tx_packets: v[2],
            tx_bytes: v[3],
            rx_dropped: v[4],
            tx_dropped: v[5],
            syscalls: (v[7] != u64::MAX).then_some(v[7]),
            xsk: (v[8] != 0).then_some(braid_io::af_xdp::XskStats {
                rx_dropped: v[9],
                rx_invalid_descs: v[10],
                tx_invalid_descs: v[11],
                rx_ring_full: v[12],
                rx_fill_ring_empty_descs: v[13],
                tx_ring_empty_descs: v[14],
            }),
        };
        (stats, v[6] != 0)
    }
}

const LOOP_CELLS: usize = 5;

/// The worker's own counters: how its loop spends its turns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoopStats {
    /// Loop turns.
    pub turns: u64,
    /// Turns that received nothing.
    pub idle_turns: u64,
    /// Times the worker slept (poll or sleep idle policy).
    pub sleeps: u64,
    /// Control messages answered.
    pub control_messages: u64,
    /// Ticks run.
    pub ticks: u64,
}

/// Everything a worker publishes. Shared (`Arc`) between the worker and
/// every reader.
#[derive(Debug)]
pub struct WorkerTelemetry {
    /// The worker's name.
    pub name: String,
    stages: Vec<Arc<StageTelemetry>>,
    /// Ports can be added through the control mailbox: the list is behind
    /// a mutex that only the control path and readers take, never the
    /// packet path.
    ports: Mutex<Vec<Arc<PortTelemetry>>>,
    looped: SeqCells<LOOP_CELLS>,
    /// OS counters of the worker's thread at the start and the end of its
    /// loop; written twice per run, never on the packet path.
    os: Mutex<WorkerOs>,
}

/// The OS counters of a worker's thread when its loop started and when it
/// ended (see [`crate::os`]).
#[derive(Clone, Debug, Default)]
pub struct WorkerOs {
    /// Sampled as the loop starts (after scheduling settings are applied).
    pub start: Option<ThreadOs>,
    /// `monotonic_ns` of the start sample.
    pub start_ns: u64,
    /// Sampled when the loop has ended and the ports are flushed.
    pub end: Option<ThreadOs>,
    /// `monotonic_ns` of the end sample.
    pub end_ns: u64,
    /// Why a sample could not be taken (no `/proc`).
    pub error: Option<String>,
}

impl WorkerOs {
    /// The thread's id, once its loop has started.
    pub fn tid(&self) -> Option<u32> {
        self.start.map(|s| s.tid)
    }

    /// What the OS counted while the loop ran, and for how long
    /// (nanoseconds); None until the loop has ended.
    pub fn during_run(&self) -> Option<(ThreadOs, u64)> {
        let (a, b) = (self.start?, self.end?);
        Some((b.since(&a), self.end_ns.saturating_sub(self.start_ns)))
    }
}

impl WorkerTelemetry {
    pub(crate) fn new(name: &str, stages: Vec<Arc<StageTelemetry>>) -> WorkerTelemetry {
        WorkerTelemetry {
            name: name.to_string(),
            stages,
            ports: Mutex::new(Vec::new()),
            looped: SeqCells::default(),
            os: Mutex::new(WorkerOs::default()),
        }
    }

    /// The OS counters of the worker's thread at the start and end of its
    /// loop, as far as it got.
    pub fn os(&self) -> WorkerOs {
        self.os.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sample the calling thread (the worker's) as its loop starts (`end`
    /// false) or ends.
    pub(crate) fn record_os(&self, end: bool) {
        let sample = ThreadOs::current();
        let now = braid_nf::monotonic_ns();
        let mut os = self.os.lock().unwrap_or_else(|e| e.into_inner());
        match sample {
            Ok(s) if end => (os.end, os.end_ns) = (Some(s), now),
            Ok(s) => (os.start, os.start_ns) = (Some(s), now),
            Err(e) => os.error = Some(e.to_string()),
        }
    }

    pub(crate) fn add_port(&self, p: Arc<PortTelemetry>) {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    pub(crate) fn publish_loop(&self, l: &LoopStats) {
        self.looped.write(0, &[l.turns, l.idle_turns, l.sleeps, l.control_messages, l.ticks]);
    }

    /// A copy of everything as last published.
    pub fn snapshot(&self) -> WorkerSnapshot {
        let l = self.looped.read();
        WorkerSnapshot {
            worker: self.name.clone(),
            taken_ns: braid_nf::monotonic_ns(),
            stages: self
                .stages
                .iter()
                .map(|s| StageSnapshot {
                    name: s.name.clone(),
                    kind: s.kind,
                    class: s.class,
                    counters: s.read(),
                })
                .collect(),
            ports: self
                .ports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|p| {
                    let (stats, rx_ended) = p.read();
                    PortSnapshot { name: p.name.clone(), stats, rx_ended }
                })
                .collect(),
            looped: LoopStats {
                turns: l[0],
                idle_turns: l[1],
                sleeps: l[2],
                control_messages: l[3],
                ticks: l[4],
            },
        }
    }
}

/// What a [`WorkerWatch`] collects.
type Seen = Mutex<Vec<Arc<WorkerTelemetry>>>;

thread_local! {
    /// The watches open on this thread (see [`WorkerWatch`]).
    static WATCHES: RefCell<Vec<Weak<Seen>>> =
        const { RefCell::new(Vec::new()) };
}

/// Collects the telemetry of every worker created on this thread while it
/// lives: how a profiler finds the workers a runner builds without the
/// runner handing them out. Only worker construction looks at it, never
/// the packet path. A clone shares the list (another thread may read it).
#[derive(Clone, Debug)]
pub struct WorkerWatch {
    seen: Arc<Seen>,
}

impl WorkerWatch {
    /// Start watching worker creation on the calling thread.
    #[allow(clippy::new_without_default)]
    pub fn new() -> WorkerWatch {
        let seen = Arc::new(Mutex::new(Vec::new()));
        WATCHES.with(|w| w.borrow_mut().push(Arc::downgrade(&seen)));
        WorkerWatch { seen }
    }

    /// Every worker created on this thread since the watch started, in
    /// creation order.
    pub fn workers(&self) -> Vec<Arc<WorkerTelemetry>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Tell this thread's watches about a new worker.
pub(crate) fn announce(t: &Arc<WorkerTelemetry>) {
    WATCHES.with(|w| {
        w.borrow_mut().retain(|watch| match watch.upgrade() {
            Some(seen) => {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(t.clone());
                true
            }
            None => false,
        })
    });
}

/// A copy of one stage's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSnapshot {
    pub name: String,
    /// NF kind (`router`).
    pub kind: &'static str,
    pub class: NfClass,
    pub counters: Counters,
}

/// A copy of one port's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSnapshot {
    pub name: String,
    pub stats: PortStats,
    /// The port's input has ended (end of a capture, closed channel).
    pub rx_ended: bool,
}

/// A copy of all counters of a worker at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSnapshot {
    pub worker: String,
    /// `monotonic_ns` when the copy was taken.
    pub taken_ns: u64,
    pub stages: Vec<StageSnapshot>,
    pub ports: Vec<PortSnapshot>,
    pub looped: LoopStats,
}

impl WorkerSnapshot {
    /// What the worker counted between `earlier` and `self` (two copies of
    /// the same worker's telemetry): per stage and port the differences
    /// (stages and ports matched by position and name; one that is not
    /// in `earlier` counts from 0), `max_batch` as in
    /// [`braid_nf::Counters::since`], `taken_ns` the interval's length.
    pub fn since(&self, earlier: &WorkerSnapshot) -> WorkerSnapshot {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        WorkerSnapshot {
            worker: self.worker.clone(),
            taken_ns: d(self.taken_ns, earlier.taken_ns),
            stages: self
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let before = earlier.stages.get(i).filter(|e| e.name == s.name);
                    StageSnapshot {
                        counters: before
                            .map_or(s.counters.clone(), |e| s.counters.since(&e.counters)),
                        ..s.clone()
                    }
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let Some(e) = earlier.ports.get(i).filter(|e| e.name == p.name) else {
                        return p.clone();
                    };
                    let (a, b) = (&p.stats, &e.stats);
                    let stats = PortStats {
                        rx_packets: d(a.rx_packets, b.rx_packets),
                        rx_bytes: d(a.rx_bytes, b.rx_bytes),
                        tx_packets: d(a.tx_packets, b.tx_packets),
                        tx_bytes: d(a.tx_bytes, b.tx_bytes),
                        rx_dropped: d(a.rx_dropped, b.rx_dropped),
                        tx_dropped: d(a.tx_dropped, b.tx_dropped),
                        syscalls: a.syscalls.map(|n| d(n, b.syscalls.unwrap_or(0))),
                        xsk: a.xsk.map(|x| {
                            let y = b.xsk.unwrap_or_default();
                            braid_io::af_xdp::XskStats {
                                rx_dropped: d(x.rx_dropped, y.rx_dropped),
                                rx_invalid_descs: d(x.rx_invalid_descs, y.rx_invalid_descs),
                                tx_invalid_descs: d(x.tx_invalid_descs, y.tx_invalid_descs),
                                rx_ring_full: d(x.rx_ring_full, y.rx_ring_full),
                                rx_fill_ring_empty_descs: d(
                                    x.rx_fill_ring_empty_descs,
                                    y.rx_fill_ring_empty_descs,
                                ),
                                tx_ring_empty_descs: d(
                                    x.tx_ring_empty_descs,
                                    y.tx_ring_empty_descs,
                                ),
                            }
                        }),
                    };
                    PortSnapshot { stats, ..p.clone() }
                })
                .collect(),
            looped: LoopStats {
                turns: d(self.looped.turns, earlier.looped.turns),
                idle_turns: d(self.looped.idle_turns, earlier.looped.idle_turns),
                sleeps: d(self.looped.sleeps, earlier.looped.sleeps),
                control_messages: d(self.looped.control_messages, earlier.looped.control_messages),
                ticks: d(self.looped.ticks, earlier.looped.ticks),
            },
        }
    }

    /// The snapshot as JSON (counters, drops by reason name, mean batch).
    pub fn to_json(&self) -> serde_json::Value {
        let stages: Vec<serde_json::Value> = self
            .stages
            .iter()
            .map(|s| {
                let c = &s.counters;
                let drops: serde_json::Map<String, serde_json::Value> = c
                    .drop_breakdown()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                serde_json::json!({
                    "name": s.name,
                    "kind": s.kind,
                    "class": s.class.to_string(),
                    "packets_in": c.packets_in,
                    "packets_out": c.packets_out,
                    "bytes_in": c.bytes_in,
                    "bytes_out": c.bytes_out,
                    "packets_created": c.packets_created,
                    "batches": c.batches,
                    "mean_batch": c.mean_batch(),
                    "max_batch": c.max_batch,
                    "busy_ns": c.busy_ns,
                    "ns_per_packet": c.ns_per_packet(),
                    "dropped": c.dropped_total(),
                    "drops": drops,
                })
            })
            .collect();
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|p| {
                let s = &p.stats;
                let mut v = serde_json::json!({
                    "name": p.name,
                    "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes,
                    "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
                    "rx_dropped": s.rx_dropped, "tx_dropped": s.tx_dropped,
                    "rx_ended": p.rx_ended,
                });
                if let Some(x) = &s.xsk {
                    v["xdp"] = serde_json::json!(x);
                }
                v
            })
            .collect();
        serde_json::json!({
            "worker": self.worker,
            "taken_ns": self.taken_ns,
            "stages": stages,
            "ports": ports,
            "loop": self.looped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_sees_what_the_writer_published() {
        let t = StageTelemetry::new("a", "fwd", NfClass::Elementary);
        let mut c = Counters { packets_in: 5, packets_out: 4, batches: 1, ..Counters::default() };
        c.count_drop(DropReason::Malformed);
        t.publish(&c, false);
        let r = t.read();
        assert_eq!((r.packets_in, r.packets_out, r.batches), (5, 4, 1));
        assert_eq!(r.dropped_total(), 0, "drops are published only when they changed");
        t.publish(&c, true);
        assert_eq!(t.read(), c);
    }

    #[test]
    fn port_counters_keep_the_af_xdp_ring_counters_and_their_absence() {
        let t = PortTelemetry::new("af_xdp:x/q0".into());
        let xsk = braid_io::af_xdp::XskStats {
            rx_dropped: 1,
            rx_invalid_descs: 2,
            tx_invalid_descs: 3,
            rx_ring_full: 4,
            rx_fill_ring_empty_descs: 5,
            tx_ring_empty_descs: 6,
        };
        let s =
            PortStats { rx_packets: 9, syscalls: Some(7), xsk: Some(xsk), ..PortStats::default() };
        t.publish(&s, false);
        assert_eq!(t.read(), (s, false));
        let s = PortStats { rx_packets: 10, ..PortStats::default() };
        t.publish(&s, true);
        assert_eq!(t.read(), (s, true), "no AF_XDP counters, no system calls");
    }

    #[test]
    fn concurrent_reader_never_sees_a_torn_record() {
        // The writer keeps packets_in == packets_out == bytes_in; a torn
        // read would show them unequal.
        let t = Arc::new(StageTelemetry::new("a", "fwd", NfClass::Elementary));
        let w = t.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..200_000u64 {
                let c =
                    Counters { packets_in: i, packets_out: i, bytes_in: i, ..Counters::default() };
                w.publish(&c, false);
            }
        });
        let mut last = 0;
        while !writer.is_finished() {
            let c = t.read();
            assert_eq!(c.packets_in, c.packets_out);
            assert_eq!(c.packets_in, c.bytes_in);
            assert!(c.packets_in >= last, "counters never go back");
            last = c.packets_in;
        }
        writer.join().unwrap();
    }
}
