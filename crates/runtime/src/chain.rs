//! The chain: NFs in order, run to completion over a batch.
//!
//! A [`Chain`] owns its stages; each stage is one NF instance
//! (`Box<dyn NetworkFunction>`) and its [`Counters`]. [`Chain::process`]
//! passes a batch through every stage in order on the calling thread,
//! counting packets and bytes in and out and the time spent in each stage
//! (one clock read per stage per batch, never per packet).
//!
//! Counters are plain integers owned by the thread running the chain. Other
//! threads (live deployments, the profiler, `braid stats`) read them through
//! a [`ChainMonitor`]: the chain publishes a copy ([`ChainSnapshot`]) behind
//! a mutex at most every [`Chain::set_publish_interval`] (default 100 ms),
//! with `try_lock` so the datapath never waits for a reader, and always on
//! [`Chain::publish`].

use std::sync::{Arc, Mutex};

use braid_nf::registry::BuildError;
use braid_nf::{monotonic_ns, Context, Counters, NetworkFunction, NfClass, NfSpec};
use braid_packet::Batch;

use crate::descriptor::ChainDescriptor;

/// One NF of a running chain.
pub struct Stage {
    name: String,
    nf: Box<dyn NetworkFunction>,
    counters: Counters,
}

impl Stage {
    /// Instance name from the descriptor.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NF kind's static description.
    pub fn spec(&self) -> &'static NfSpec {
        self.nf.spec()
    }

    /// The counters as of now (the running thread's own copy).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The NF itself, e.g. to export or import its state.
    pub fn nf(&self) -> &dyn NetworkFunction {
        self.nf.as_ref()
    }

    /// The NF itself, mutably.
    pub fn nf_mut(&mut self) -> &mut dyn NetworkFunction {
        self.nf.as_mut()
    }
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("kind", &self.nf.spec().name)
            .field("counters", &self.counters)
            .finish()
    }
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

/// A copy of all counters of a chain at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainSnapshot {
    pub chain: String,
    /// [`monotonic_ns`] when the copy was taken; 0 if never published.
    pub taken_ns: u64,
    pub stages: Vec<StageSnapshot>,
}

impl ChainSnapshot {
    /// The snapshot as JSON (counters, drops by reason name).
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
                    "busy_ns": c.busy_ns,
                    "dropped": c.dropped_total(),
                    "drops": drops,
                })
            })
            .collect();
        serde_json::json!({ "chain": self.chain, "taken_ns": self.taken_ns, "stages": stages })
    }
}

/// A reader's handle on a chain's published counters; cheap to clone and
/// `Send`, so it can live on another thread.
#[derive(Clone, Debug)]
pub struct ChainMonitor {
    shared: Arc<Mutex<ChainSnapshot>>,
}

impl ChainMonitor {
    /// The latest published copy.
    pub fn snapshot(&self) -> ChainSnapshot {
        // A poisoned lock only means a reader panicked mid-clone; the data
        // is a plain copy and still consistent.
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Error building a chain: which NF and why.
#[derive(Debug, thiserror::Error)]
#[error("nfs[{index}] ({name}): {source}")]
pub struct ChainBuildError {
    /// Position in `nfs`.
    pub index: usize,
    /// Instance name.
    pub name: String,
    #[source]
    pub source: BuildError,
}

/// NFs in order, run to completion over each batch.
pub struct Chain {
    name: String,
    batch_size: usize,
    stages: Vec<Stage>,
    shared: Arc<Mutex<ChainSnapshot>>,
    publish_interval_ns: u64,
    last_publish_ns: u64,
    /// Reused for packets emitted by `tick`.
    tick_scratch: Batch,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("name", &self.name).field("stages", &self.stages).finish()
    }
}

impl Chain {
    /// A chain of already built NFs, named, in order.
    pub fn new(name: impl Into<String>, nfs: Vec<(String, Box<dyn NetworkFunction>)>) -> Chain {
        let stages = nfs
            .into_iter()
            .map(|(name, nf)| Stage { name, nf, counters: Counters::default() })
            .collect();
        let mut chain = Chain {
            name: name.into(),
            batch_size: braid_packet::DEFAULT_BATCH_SIZE,
            stages,
            shared: Arc::new(Mutex::new(ChainSnapshot::default())),
            publish_interval_ns: 100_000_000,
            last_publish_ns: 0,
            tick_scratch: Batch::new(),
        };
        chain.publish();
        chain
    }

    /// Build every NF of a descriptor. The first NF whose type is unknown
    /// or whose parameters are rejected stops the build; run
    /// [`crate::validate`] first to get every problem with its location.
    pub fn from_descriptor(d: &ChainDescriptor) -> Result<Chain, ChainBuildError> {
        let mut nfs = Vec::with_capacity(d.nfs.len());
        for (index, decl) in d.nfs.iter().enumerate() {
            let nf = braid_nf::build(&decl.kind, &decl.params)
                .map_err(|source| ChainBuildError { index, name: decl.name.clone(), source })?;
            nfs.push((decl.name.clone(), nf));
        }
        let mut chain = Chain::new(d.name.clone(), nfs);
        chain.batch_size = d.batch_size.clamp(1, crate::descriptor::MAX_BATCH_SIZE);
        Ok(chain)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Packets per batch the descriptor asks for (runners use it as `max`
    /// for `Port::recv`).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// True for a chain without NFs (it forwards everything).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The stages, mutably (for state export/import, reconfiguration).
    pub fn stages_mut(&mut self) -> &mut [Stage] {
        &mut self.stages
    }

    /// Pass `batch` through every stage, in order, with the current time.
    /// What is left in `batch` afterwards is what leaves the chain.
    #[inline]
    pub fn process(&mut self, batch: &mut Batch) {
        let now = monotonic_ns();
        // The batch's time doubles as the first stage's start time: one
        // clock read fewer per batch.
        let end = self.process_from(0, batch, now, now);
        self.maybe_publish(end);
    }

    /// Like [`Chain::process`] with a given time (for replaying captures
    /// with their own clock, and for deterministic tests).
    pub fn process_at(&mut self, batch: &mut Batch, now_ns: u64) {
        let end = self.process_from(0, batch, now_ns, monotonic_ns());
        self.maybe_publish(end);
    }

    /// Run stages `first..` over `batch`, the first starting at clock
    /// `start_ns`. Stops early when the batch is empty: an NF with nothing
    /// to do is not called. Returns the clock after the last stage run.
    fn process_from(&mut self, first: usize, batch: &mut Batch, now_ns: u64, start_ns: u64) -> u64 {
        let Some(rest) = self.stages.get_mut(first..) else { return start_ns };
        if batch.is_empty() || rest.is_empty() {
            return start_ns;
        }
        let mut bytes = batch.bytes() as u64;
        let mut t0 = start_ns;
        for stage in rest {
            let n_in = batch.len() as u64;
            {
                let mut cx = Context::new(now_ns, &mut stage.counters);
                stage.nf.process(batch, &mut cx);
            }
            let t1 = monotonic_ns();
            let bytes_out = batch.bytes() as u64;
            let c = &mut stage.counters;
            c.packets_in += n_in;
            c.bytes_in += bytes;
            c.packets_out += batch.len() as u64;
            c.bytes_out += bytes_out;
            c.batches += 1;
            c.busy_ns += t1.saturating_sub(t0);
            bytes = bytes_out;
            t0 = t1;
            if batch.is_empty() {
                break;
            }
        }
        t0
    }

    /// Give every NF its periodic tick (aging state, flushing what it holds
    /// back). Packets an NF emits on tick go through the stages after it;
    /// what leaves the chain is appended to `out`. Call it periodically
    /// (runners do every few milliseconds) and once at end of input.
    pub fn tick(&mut self, out: &mut Batch) {
        let now = monotonic_ns();
        let mut scratch = std::mem::take(&mut self.tick_scratch);
        for i in 0..self.stages.len() {
            scratch.clear();
            let t0 = monotonic_ns();
            {
                let stage = &mut self.stages[i];
                let mut cx = Context::new(now, &mut stage.counters);
                stage.nf.tick(&mut scratch, &mut cx);
            }
            let stage = &mut self.stages[i];
            stage.counters.busy_ns += monotonic_ns().saturating_sub(t0);
            if scratch.is_empty() {
                continue;
            }
            stage.counters.packets_out += scratch.len() as u64;
            stage.counters.bytes_out += scratch.bytes() as u64;
            self.process_from(i + 1, &mut scratch, now, monotonic_ns());
            out.append(&mut scratch);
        }
        self.tick_scratch = scratch;
        self.maybe_publish(now);
    }

    /// How often [`Chain::process`] publishes counters for monitors.
    pub fn set_publish_interval(&mut self, interval: std::time::Duration) {
        self.publish_interval_ns = interval.as_nanos().min(u64::MAX as u128) as u64;
    }

    #[inline]
    fn maybe_publish(&mut self, now: u64) {
        if now.saturating_sub(self.last_publish_ns) >= self.publish_interval_ns {
            self.last_publish_ns = now;
            // Never wait for a reader on the datapath: skip if busy, the
            // next interval publishes.
            if let Ok(mut shared) = self.shared.try_lock() {
                self.fill_snapshot(&mut shared);
            }
        }
    }

    fn fill_snapshot(&self, s: &mut ChainSnapshot) {
        s.chain.clone_from(&self.name);
        s.taken_ns = monotonic_ns();
        s.stages.resize_with(self.stages.len(), || StageSnapshot {
            name: String::new(),
            kind: "",
            class: NfClass::Elementary,
            counters: Counters::default(),
        });
        for (snap, stage) in s.stages.iter_mut().zip(&self.stages) {
            snap.name.clone_from(&stage.name);
            snap.kind = stage.nf.spec().name;
            snap.class = stage.nf.spec().class;
            snap.counters.clone_from(&stage.counters);
        }
    }

    /// Publish the counters now, waiting for the lock if a reader holds it.
    pub fn publish(&mut self) {
        self.last_publish_ns = monotonic_ns();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        self.fill_snapshot(&mut shared);
    }

    /// A copy of the counters as of now (from the running thread).
    pub fn snapshot(&self) -> ChainSnapshot {
        let mut s = ChainSnapshot::default();
        self.fill_snapshot(&mut s);
        s
    }

    /// A handle for other threads to read the published counters.
    pub fn monitor(&self) -> ChainMonitor {
        ChainMonitor { shared: Arc::clone(&self.shared) }
    }

    /// Zero every stage's counters (e.g. after a warm-up).
    pub fn reset_counters(&mut self) {
        for s in &mut self.stages {
            s.counters = Counters::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_nf::{DropReason, Placement};
    use braid_packet::Packet;

    static TEST_DROP_ODD: NfSpec = NfSpec {
        name: "test-drop-odd",
        class: NfClass::Basic,
        placements: &[Placement::User],
        state: braid_nf::StateKind::None,
        kernel: None,
        summary: "drops frames whose first byte is odd",
        params: &[],
        build: |_| Ok(Box::new(DropOdd)),
    };

    /// Drops frames whose first byte is odd; on tick emits one frame `[2]`.
    struct DropOdd;
    impl NetworkFunction for DropOdd {
        fn spec(&self) -> &'static NfSpec {
            &TEST_DROP_ODD
        }
        fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
            batch.retain_mut(|p| {
                let keep = p.data().first().is_some_and(|b| b % 2 == 0);
                if !keep {
                    cx.drop_packet(DropReason::Other);
                }
                keep
            });
        }
        fn tick(&mut self, out: &mut Batch, _cx: &mut Context<'_>) {
            out.push(Packet::from_bytes(&[2, 2]));
        }
    }

    fn fwd() -> Box<dyn NetworkFunction> {
        braid_nf::build("fwd", &braid_nf::Params::Null).unwrap()
    }

    fn batch(firsts: &[u8]) -> Batch {
        firsts.iter().map(|&b| Packet::from_bytes(&[b; 10])).collect()
    }

    #[test]
    fn counts_in_out_bytes_and_drops_per_stage() {
        let mut chain = Chain::new(
            "t",
            vec![("a".into(), fwd()), ("odd".into(), Box::new(DropOdd)), ("b".into(), fwd())],
        );
        let mut b = batch(&[0, 1, 2, 3, 4]);
        chain.process(&mut b);
        assert_eq!(b.iter().map(|p| p.data()[0]).collect::<Vec<_>>(), vec![0, 2, 4]);
        let s = chain.snapshot();
        let c: Vec<_> = s.stages.iter().map(|s| &s.counters).collect();
        assert_eq!((c[0].packets_in, c[0].packets_out, c[0].bytes_in), (5, 5, 50));
        assert_eq!((c[1].packets_in, c[1].packets_out, c[1].bytes_out), (5, 3, 30));
        assert_eq!(c[1].dropped(DropReason::Other), 2);
        assert_eq!((c[2].packets_in, c[2].bytes_in, c[2].batches), (3, 30, 1));
        assert_eq!(s.stages[1].kind, "test-drop-odd");
    }

    #[test]
    fn empty_batch_stops_the_chain() {
        let mut chain =
            Chain::new("t", vec![("odd".into(), Box::new(DropOdd)), ("b".into(), fwd())]);
        let mut b = batch(&[1, 3]);
        chain.process(&mut b);
        assert!(b.is_empty());
        assert_eq!(chain.stages()[1].counters().batches, 0);
        let mut b = Batch::new();
        chain.process(&mut b);
        assert_eq!(chain.stages()[0].counters().batches, 1);
    }

    #[test]
    fn tick_output_traverses_later_stages_only() {
        let mut chain = Chain::new(
            "t",
            vec![("odd1".into(), Box::new(DropOdd)), ("odd2".into(), Box::new(DropOdd))],
        );
        let mut out = Batch::new();
        chain.tick(&mut out);
        // odd1 emits one, which odd2 passes; odd2 emits one more.
        assert_eq!(out.len(), 2);
        let c = &chain.stages()[1].counters;
        assert_eq!((c.packets_in, c.packets_out), (1, 2));
        assert_eq!(chain.stages()[0].counters.packets_out, 1);
    }

    #[test]
    fn monitor_sees_published_counters_from_another_thread() {
        let mut chain = Chain::new("mon", vec![("a".into(), fwd())]);
        let monitor = chain.monitor();
        chain.set_publish_interval(std::time::Duration::from_secs(3600));
        chain.process(&mut batch(&[0, 0]));
        // Not yet published: interval not elapsed since construction.
        let before = std::thread::spawn({
            let m = monitor.clone();
            move || m.snapshot()
        })
        .join()
        .unwrap();
        assert_eq!(before.stages[0].counters.packets_in, 0);
        chain.publish();
        let after = std::thread::spawn(move || monitor.snapshot()).join().unwrap();
        assert_eq!(after.chain, "mon");
        assert_eq!(after.stages[0].counters.packets_in, 2);
        assert!(after.taken_ns > 0);
    }

    #[test]
    fn from_descriptor_names_the_failing_nf() {
        let d = ChainDescriptor::from_yaml(
            "name: x\nnfs:\n  - {name: a, type: fwd}\n  - {name: b, type: nope}\n",
        )
        .unwrap();
        let e = Chain::from_descriptor(&d).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.to_string().starts_with("nfs[1] (b): unknown NF type `nope`"), "{e}");
        let d =
            ChainDescriptor::from_yaml("name: x\nbatch_size: 8\nnfs:\n  - {name: a, type: fwd}\n")
                .unwrap();
        let c = Chain::from_descriptor(&d).unwrap();
        assert_eq!((c.len(), c.batch_size()), (1, 8));
        let json = c.snapshot().to_json();
        assert_eq!(json["stages"][0]["kind"], "fwd");
    }
}
