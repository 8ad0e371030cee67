//! The chain: NFs in order, as one [`Graph`] of the dataplane.
//!
//! A [`Chain`] is the NFs of a descriptor linked in order
//! ([`Graph::chain`]) with both ends leading to one exit: what leaves the
//! chain downstream (gate 1 of the last NF) and what an NF sends back
//! upstream (gate 0 of the first, e.g. a router's ICMP errors) is what
//! [`Chain::process`] leaves in the batch. It runs on the calling thread;
//! a [`braid_dataplane::Worker`] runs it between ports (see
//! [`crate::runner`]).
//!
//! Counting happens at the graph's call edges: packets and bytes in and
//! out, batches, the largest batch, time in each NF (one clock read per
//! stage call), drops by reason. Other threads read the counters without
//! locks through a [`ChainMonitor`] (the dataplane's seqlock telemetry).

use std::sync::Arc;

use braid_dataplane::graph::Endpoint;
use braid_dataplane::telemetry::StageTelemetry;
use braid_dataplane::{Graph, NamedNfs};
use braid_nf::monotonic_ns;
use braid_nf::registry::BuildError;
use braid_packet::Batch;

use crate::descriptor::ChainDescriptor;

pub use braid_dataplane::Stage;

/// A copy of one stage's counters.
pub type StageSnapshot = braid_dataplane::StageSnapshot;

/// A copy of all counters of a chain at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainSnapshot {
    pub chain: String,
    /// [`monotonic_ns`] when the copy was taken.
    pub taken_ns: u64,
    pub stages: Vec<StageSnapshot>,
}

impl ChainSnapshot {
    /// The snapshot as JSON (counters, drops by reason name, mean batch,
    /// ns per packet).
    pub fn to_json(&self) -> serde_json::Value {
        let w = braid_dataplane::WorkerSnapshot {
            worker: self.chain.clone(),
            taken_ns: self.taken_ns,
            stages: self.stages.clone(),
            ..Default::default()
        };
        let v = w.to_json();
        serde_json::json!({ "chain": self.chain, "taken_ns": self.taken_ns, "stages": v["stages"] })
    }
}

/// A reader's handle on a chain's counters; cheap to clone and `Send`, so
/// it can live on another thread. Reads never wait for the chain.
#[derive(Clone, Debug)]
pub struct ChainMonitor {
    chain: String,
    stages: Vec<Arc<StageTelemetry>>,
}

impl ChainMonitor {
    /// The counters as last published (after every stage call).
    pub fn snapshot(&self) -> ChainSnapshot {
        ChainSnapshot {
            chain: self.chain.clone(),
            taken_ns: monotonic_ns(),
            stages: self
                .stages
                .iter()
                .map(|t| StageSnapshot {
                    name: t.name.clone(),
                    kind: t.kind,
                    class: t.class,
                    counters: t.read(),
                })
                .collect(),
        }
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
    graph: Graph,
    /// The one exit both ends of the chain lead to.
    exit: Vec<Batch>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("name", &self.name).field("graph", &self.graph).finish()
    }
}

/// Build the NFs of a descriptor, in order.
pub fn build_nfs(d: &ChainDescriptor) -> Result<NamedNfs, ChainBuildError> {
    d.nfs
        .iter()
        .enumerate()
        .map(|(index, decl)| {
            braid_nf::build(&decl.kind, &decl.params)
                .map(|nf| (decl.name.clone(), nf))
                .map_err(|source| ChainBuildError { index, name: decl.name.clone(), source })
        })
        .collect()
}

impl Chain {
    /// A chain of already built NFs, named, in order.
    pub fn new(name: impl Into<String>, nfs: NamedNfs) -> Chain {
        let graph = Graph::chain(nfs, 1, 0, 0).expect("a chain's links fit its own stages");
        Chain {
            name: name.into(),
            batch_size: braid_packet::DEFAULT_BATCH_SIZE,
            graph,
            exit: vec![Batch::new()],
        }
    }

    /// Build every NF of a descriptor. The first NF whose type is unknown
    /// or whose parameters are rejected stops the build; run
    /// [`crate::validate`] first to get every problem with its location.
    pub fn from_descriptor(d: &ChainDescriptor) -> Result<Chain, ChainBuildError> {
        let mut chain = Chain::new(d.name.clone(), build_nfs(d)?);
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
        self.graph.len()
    }

    /// True for a chain without NFs (it forwards everything).
    pub fn is_empty(&self) -> bool {
        self.graph.is_empty()
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        self.graph.stages()
    }

    /// The stages, mutably (for state export/import, reconfiguration).
    pub fn stages_mut(&mut self) -> &mut [Stage] {
        self.graph.stages_mut()
    }

    /// The graph (to run it on a worker between ports).
    pub fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }

    /// Where packets entering the chain from upstream go.
    pub fn entry(&self) -> Endpoint {
        self.graph.entry(0, 0)
    }

    /// Pass `batch` through the chain with the current time. What is left
    /// in `batch` afterwards is what leaves the chain (at either end).
    #[inline]
    pub fn process(&mut self, batch: &mut Batch) {
        let entry = self.entry();
        self.graph.push_now(entry, batch, &mut self.exit);
        std::mem::swap(batch, &mut self.exit[0]);
    }

    /// Like [`Chain::process`] with a given time (for replaying captures
    /// with their own clock, and for deterministic tests).
    #[inline]
    pub fn process_at(&mut self, batch: &mut Batch, now_ns: u64) {
        let entry = self.entry();
        self.graph.push(entry, batch, now_ns, &mut self.exit);
        std::mem::swap(batch, &mut self.exit[0]);
    }

    /// Give every NF its periodic tick (aging state, flushing what it holds
    /// back). Packets an NF emits go through the stages after it; what
    /// leaves the chain is appended to `out`. Call it periodically
    /// (runners do every few milliseconds) and once at end of input.
    pub fn tick(&mut self, out: &mut Batch) {
        self.graph.tick(monotonic_ns(), &mut self.exit);
        out.append(&mut self.exit[0]);
    }

    /// Publish every counter for monitors now (drop counters are otherwise
    /// published when they change).
    pub fn publish(&mut self) {
        self.graph.publish();
    }

    /// A copy of the counters as of now (from the running thread).
    pub fn snapshot(&self) -> ChainSnapshot {
        ChainSnapshot {
            chain: self.name.clone(),
            taken_ns: monotonic_ns(),
            stages: self
                .graph
                .stages()
                .iter()
                .map(|s| StageSnapshot {
                    name: s.name().to_string(),
                    kind: s.spec().name,
                    class: s.spec().class,
                    counters: s.counters().clone(),
                })
                .collect(),
        }
    }

    /// A handle for other threads to read the counters.
    pub fn monitor(&self) -> ChainMonitor {
        ChainMonitor {
            chain: self.name.clone(),
            stages: self.graph.stages().iter().map(|s| s.telemetry()).collect(),
        }
    }

    /// Zero every stage's counters (e.g. after a warm-up).
    pub fn reset_counters(&mut self) {
        for s in self.graph.stages_mut() {
            s.reset_counters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_nf::{Context, DropReason, NetworkFunction, NfClass, NfSpec, Placement};
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
        let c = chain.stages()[1].counters();
        assert_eq!((c.packets_in, c.packets_out), (1, 2));
        assert_eq!(chain.stages()[0].counters().packets_out, 1);
    }

    #[test]
    fn monitor_sees_counters_from_another_thread_without_waiting() {
        let mut chain = Chain::new("mon", vec![("a".into(), fwd())]);
        let monitor = chain.monitor();
        let before = std::thread::spawn({
            let m = monitor.clone();
            move || m.snapshot()
        })
        .join()
        .unwrap();
        assert_eq!(before.stages[0].counters.packets_in, 0);
        chain.process(&mut batch(&[0, 0]));
        // Published at the call edge: no publish call, no interval.
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
