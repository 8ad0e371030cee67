//! The graph of NF stages a worker runs: each stage is one NF instance
//! with gates (see [`braid_nf::Gates`]); each output gate is linked to an
//! input gate of another stage, to a port of the worker, or to nothing
//! (what leaves there is dropped and counted as `unconnected`).
//!
//! A batch pushed into the graph runs to completion: through a stage,
//! split by output gate if the NF switches (router, l2switch), on to the
//! next endpoint, until it reaches ports. A linear chain of pair NFs moves
//! a batch from stage to stage without splitting or copying it. Answers
//! cross a chain in reverse order because they enter its far end on gate 1
//! and every pair NF sends what came in on gate 1 out of gate 0: no
//! special case for direction.
//!
//! Counting happens once, at the call edge: packets and bytes in and out,
//! batches, the largest batch, time inside the NF (one clock read per
//! stage call), drops by reason (counted by the NF through its
//! [`Context`]). The worker thread owns the counters; with the `telemetry`
//! feature they are also published for lock-free readers
//! ([`crate::telemetry`]).

use std::sync::Arc;

use braid_nf::{Context, Counters, DropLog, DropReason, Gates, NetworkFunction, NfSpec};
use braid_packet::Batch;

use crate::tap::{self, Tap};
use crate::telemetry::StageTelemetry;

/// Where packets go when they leave a gate or arrive on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Into stage `stage` through its gate `gate`.
    Stage { stage: usize, gate: u16 },
    /// Out of the worker's port number `port`.
    Port(usize),
    /// Nowhere: dropped and counted as `unconnected`.
    Drop,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Stage { stage, gate } => write!(f, "stage {stage} gate {gate}"),
            Endpoint::Port(p) => write!(f, "port {p}"),
            Endpoint::Drop => f.write_str("drop"),
        }
    }
}

/// A wiring request that does not fit the graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("no stage number {0} (the graph has {1})")]
    NoStage(usize, usize),
    #[error("stage {stage} ({name}) has no gate {gate}: it has {gates}")]
    NoGate { stage: usize, name: String, gate: u16, gates: u16 },
    #[error("no port number {0} (the worker has {1})")]
    NoPort(usize, usize),
    #[error("no stage named `{0}`")]
    NoStageNamed(String),
}

/// NFs with their instance names, in order: what a graph is built from.
pub type NamedNfs = Vec<(String, Box<dyn NetworkFunction>)>;

/// One NF of the graph.
pub struct Stage {
    name: String,
    nf: Box<dyn NetworkFunction>,
    gates: Gates,
    /// The NF's [`NetworkFunction::keeps_lengths`], asked once.
    keeps_lengths: bool,
    /// Where each output gate leads.
    out: Vec<Endpoint>,
    counters: Counters,
    telemetry: Arc<StageTelemetry>,
    /// Captures running on this stage ([`crate::tap`]); empty, the usual
    /// case, costs one length check per call.
    taps: Vec<Tap>,
}

impl Stage {
    /// Instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NF kind's static description.
    pub fn spec(&self) -> &'static NfSpec {
        self.nf.spec()
    }

    /// The NF's gates.
    pub fn gates(&self) -> Gates {
        self.gates
    }

    /// Where each output gate leads.
    pub fn links(&self) -> &[Endpoint] {
        &self.out
    }

    /// The counters as of now (the worker thread's own copy).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The NF itself (state export).
    pub fn nf(&self) -> &dyn NetworkFunction {
        self.nf.as_ref()
    }

    /// The NF itself, mutably (state import).
    pub fn nf_mut(&mut self) -> &mut dyn NetworkFunction {
        self.nf.as_mut()
    }

    /// Put another NF instance of this stage in place (live
    /// reconfiguration); the old one is returned. The new NF must have as
    /// many gates, so the links still fit.
    pub fn replace_nf(
        &mut self,
        nf: Box<dyn NetworkFunction>,
    ) -> Result<Box<dyn NetworkFunction>, GraphError> {
        if nf.gates().count() < self.gates.count() {
            return Err(GraphError::NoGate {
                stage: 0,
                name: self.name.clone(),
                gate: self.gates.count() - 1,
                gates: nf.gates().count(),
            });
        }
        self.gates = nf.gates();
        self.keeps_lengths = nf.keeps_lengths();
        self.out.resize(self.gates.count() as usize, Endpoint::Drop);
        Ok(std::mem::replace(&mut self.nf, nf))
    }

    /// Install a capture tap on this stage.
    pub fn add_tap(&mut self, tap: Tap) {
        self.taps.push(tap);
    }

    /// Remove the tap with identity `id`; false if there is none (it may
    /// have removed itself when its reader went away).
    pub fn remove_tap(&mut self, id: u64) -> bool {
        let n = self.taps.len();
        self.taps.retain(|t| t.id() != id);
        self.taps.len() != n
    }

    /// Captures running on this stage.
    pub fn taps(&self) -> usize {
        self.taps.len()
    }

    /// Zero the counters (after a warm-up).
    pub fn reset_counters(&mut self) {
        self.counters = Counters::default();
        self.telemetry.publish(&self.counters, true);
    }

    /// Publish every counter for readers now.
    pub(crate) fn publish(&self) {
        self.telemetry.publish(&self.counters, true);
    }

    /// The stage's published counters (for lock-free readers).
    pub fn telemetry(&self) -> Arc<StageTelemetry> {
        self.telemetry.clone()
    }
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("kind", &self.nf.spec().name)
            .field("gates", &self.gates)
            .field("out", &self.out)
            .finish()
    }
}

/// Stages and their links. See the module documentation.
pub struct Graph {
    stages: Vec<Stage>,
    /// Ports outputs may name (checked when linking).
    ports: usize,
    /// Batches waiting to enter an endpoint, run depth-first.
    work: Vec<(Endpoint, Batch)>,
    /// Empty batches kept for reuse (their allocations).
    spare: Vec<Batch>,
    /// Scratch for packets emitted by `tick`.
    tick_out: Batch,
    /// Scratch drop log for stage calls whose drops are captured.
    drop_log: DropLog,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("stages", &self.stages).field("ports", &self.ports).finish()
    }
}

/// Hand `b` to port `p`'s output: swapped in whole when that is empty
/// (the usual case: two vectors swapped instead of every packet handle
/// copied), appended otherwise; dropped if there is no such port. `b` is
/// left empty.
#[inline(always)]
fn deliver(out: &mut [Batch], p: usize, b: &mut Batch) {
    match out.get_mut(p) {
        Some(o) if o.is_empty() => std::mem::swap(o, b),
        Some(o) => o.append(b),
        None => b.clear(),
    }
}

/// The clock the stage timing uses; compiled out without `telemetry`.
#[inline(always)]
fn clock() -> u64 {
    if cfg!(feature = "telemetry") {
        braid_nf::monotonic_ns()
    } else {
        0
    }
}

impl Graph {
    /// Stages of the given NFs (named), nothing linked yet, with outputs
    /// able to name `ports` ports.
    pub fn new(nfs: NamedNfs, ports: usize) -> Graph {
        let stages = nfs
            .into_iter()
            .map(|(name, nf)| {
                let gates = nf.gates();
                let keeps_lengths = nf.keeps_lengths();
                let spec = nf.spec();
                let telemetry = Arc::new(StageTelemetry::new(&name, spec.name, spec.class));
                Stage {
                    name,
                    nf,
                    gates,
                    keeps_lengths,
                    out: vec![Endpoint::Drop; gates.count() as usize],
                    counters: Counters::default(),
                    telemetry,
                    taps: Vec::new(),
                }
            })
            .collect();
        Graph {
            stages,
            ports,
            work: Vec::new(),
            spare: Vec::new(),
            tick_out: Batch::new(),
            drop_log: DropLog::default(),
        }
    }

    /// A chain: the NFs in order, gate 1 of each linked to gate 0 of the
    /// next and back; gate 0 of the first leaves by port `upstream`, gate 1
    /// of the last by port `downstream` (they may be the same port).
    /// Further gates of switching NFs stay unlinked. An empty chain links
    /// nothing: [`Graph::entry`] then leads straight to the other port.
    pub fn chain(
        nfs: NamedNfs,
        ports: usize,
        upstream: usize,
        downstream: usize,
    ) -> Result<Graph, GraphError> {
        let mut g = Graph::new(nfs, ports);
        let n = g.stages.len();
        if n > 0 {
            g.link(0, 0, Endpoint::Port(upstream))?;
            g.link(n - 1, 1, Endpoint::Port(downstream))?;
        }
        for i in 1..n {
            g.link(i - 1, 1, Endpoint::Stage { stage: i, gate: 0 })?;
            g.link(i, 0, Endpoint::Stage { stage: i - 1, gate: 1 })?;
        }
        Ok(g)
    }

    /// Where a chain built by [`Graph::chain`] takes packets arriving from
    /// `side` (0: upstream, 1: downstream); with no stage, the port of the
    /// other side.
    pub fn entry(&self, side: u16, other_port: usize) -> Endpoint {
        match (self.stages.len(), side) {
            (0, _) => Endpoint::Port(other_port),
            (_, 0) => Endpoint::Stage { stage: 0, gate: 0 },
            (n, _) => Endpoint::Stage { stage: n - 1, gate: 1 },
        }
    }

    /// Link output gate `gate` of stage `stage` to `to`.
    pub fn link(&mut self, stage: usize, gate: u16, to: Endpoint) -> Result<(), GraphError> {
        self.check(to)?;
        self.check(Endpoint::Stage { stage, gate })?;
        self.stages[stage].out[gate as usize] = to;
        Ok(())
    }

    /// Check that `e` names something in this graph.
    pub fn check(&self, e: Endpoint) -> Result<(), GraphError> {
        match e {
            Endpoint::Stage { stage, gate } => {
                let s =
                    self.stages.get(stage).ok_or(GraphError::NoStage(stage, self.stages.len()))?;
                if gate >= s.gates.count() {
                    return Err(GraphError::NoGate {
                        stage,
                        name: s.name.clone(),
                        gate,
                        gates: s.gates.count(),
                    });
                }
                Ok(())
            }
            Endpoint::Port(p) if p >= self.ports => Err(GraphError::NoPort(p, self.ports)),
            Endpoint::Port(_) | Endpoint::Drop => Ok(()),
        }
    }

    /// Allow outputs to name `ports` ports (a worker that gained a port).
    pub fn set_ports(&mut self, ports: usize) {
        self.ports = ports;
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The stages, mutably.
    pub fn stages_mut(&mut self) -> &mut [Stage] {
        &mut self.stages
    }

    /// The index of the stage named `name`.
    pub fn find(&self, name: &str) -> Result<usize, GraphError> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| GraphError::NoStageNamed(name.to_string()))
    }

    pub fn len(&self) -> usize {
        self.stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Publish every stage's counters for readers now.
    pub fn publish(&self) {
        for s in &self.stages {
            s.publish();
        }
    }

    fn spare(&mut self) -> Batch {
        self.spare.pop().unwrap_or_else(|| Batch::with_capacity(braid_packet::DEFAULT_BATCH_SIZE))
    }

    fn recycle(&mut self, mut b: Batch) {
        // Most batches come back empty (handed on whole); clearing an
        // empty one still walks the drop glue (~20 instructions).
        if !b.is_empty() {
            b.clear();
        }
        if self.spare.len() < 64 {
            self.spare.push(b);
        }
    }

    /// Run `batch` from endpoint `to` to completion at time `now_ns`;
    /// what reaches port `p` is appended to `out[p]`. `batch` is left
    /// empty (with an allocation to reuse).
    #[inline]
    pub fn push(&mut self, to: Endpoint, batch: &mut Batch, now_ns: u64, out: &mut [Batch]) {
        if batch.is_empty() {
            return;
        }
        self.run_in_place(to, batch, now_ns, clock(), out);
    }

    /// [`Graph::push`] at the present time: one clock read is both the
    /// batch's time and the start of the first stage's timing (`push`
    /// cannot assume that: its `now_ns` may be a capture's time).
    #[inline]
    pub fn push_now(&mut self, to: Endpoint, batch: &mut Batch, out: &mut [Batch]) {
        if batch.is_empty() {
            return;
        }
        let now_ns = braid_nf::monotonic_ns();
        let t0 = if cfg!(feature = "telemetry") { now_ns } else { 0 };
        self.run_in_place(to, batch, now_ns, t0, out);
    }

    /// Run `batch` from `to` while it goes on whole from pair NF to pair NF
    /// (a chain's usual path), in the caller's batch itself: no batch is
    /// moved or swapped until it reaches a port. Anything else (a split by
    /// a switching NF, an unconnected gate, a loop cut short) goes on
    /// through the worklist ([`Graph::run_work`]). `batch` is left empty.
    #[inline]
    fn run_in_place(
        &mut self,
        mut to: Endpoint,
        batch: &mut Batch,
        now_ns: u64,
        mut t0: u64,
        out: &mut [Batch],
    ) {
        let mut calls = 8 * self.stages.len() + 8;
        let mut known_bytes = None;
        loop {
            match to {
                Endpoint::Port(p) => {
                    deliver(out, p, batch);
                    return;
                }
                Endpoint::Stage { stage, gate } if calls > 0 && stage < self.stages.len() => {
                    calls -= 1;
                    let bytes_out;
                    (t0, bytes_out) = self.call(stage, gate, batch, now_ns, t0, known_bytes);
                    if batch.is_empty() {
                        return;
                    }
                    let out_gate = gate ^ 1;
                    if let Some(next) = self.whole_to(stage, out_gate) {
                        to = next;
                        known_bytes = Some(bytes_out);
                        continue;
                    }
                    let fresh = self.spare();
                    let b = std::mem::replace(batch, fresh);
                    self.leave(stage, out_gate, b);
                    self.run_work(None, now_ns, t0, out);
                    return;
                }
                // A drop endpoint, or a loop cut short: what run_work does.
                _ => {
                    let fresh = self.spare();
                    let b = std::mem::replace(batch, fresh);
                    self.run_work(Some((to, b)), now_ns, t0, out);
                    return;
                }
            }
        }
    }

    /// Give every NF its periodic tick; what an NF emits leaves by gate 1
    /// (pair NFs) or the gate it chose (switching NFs) and runs on.
    pub fn tick(&mut self, now_ns: u64, out: &mut [Batch]) {
        for i in 0..self.stages.len() {
            let mut emitted = std::mem::take(&mut self.tick_out);
            let t0 = clock();
            {
                let s = &mut self.stages[i];
                let mut cx = Context::new(now_ns, &mut s.counters);
                s.nf.tick(&mut emitted, &mut cx);
            }
            let s = &mut self.stages[i];
            s.counters.busy_ns += clock().saturating_sub(t0);
            if !emitted.is_empty() {
                s.counters.packets_out += emitted.len() as u64;
                s.counters.bytes_out += emitted.bytes() as u64;
                if !s.taps.is_empty() {
                    let switch = matches!(s.gates, Gates::Switch(_));
                    tap::emitted(&mut s.taps, &emitted, 1, switch);
                }
                let b = std::mem::replace(&mut emitted, Batch::new());
                self.leave(i, 1, b);
                self.run_work(None, now_ns, clock(), out);
            }
            self.stages[i].publish();
            self.tick_out = emitted;
        }
    }

    /// Queue the packets `b` that stage `i` sent out: by gate `gate` for a
    /// pair NF, by each packet's `meta.out_port` for a switching NF.
    #[inline]
    fn leave(&mut self, i: usize, gate: u16, b: Batch) {
        let s = &mut self.stages[i];
        match s.gates {
            Gates::Pair => {
                let to = s.out[gate as usize];
                self.forward(i, to, b);
            }
            Gates::Switch(n) => {
                let first = b.as_slice()[0].meta.out_port;
                if b.iter().all(|p| p.meta.out_port == first) {
                    // The common case: the whole batch leaves by one gate.
                    let to = if first < n { s.out[first as usize] } else { Endpoint::Drop };
                    self.forward(i, to, b);
                    return;
                }
                // Split into batches from the spare pool (their
                // allocations are reused; `run_work` recycles them).
                let mut per_gate: Vec<Batch> = (0..n).map(|_| self.spare()).collect();
                let mut b = b;
                let mut beyond = self.spare();
                for p in b.drain() {
                    match per_gate.get_mut(p.meta.out_port as usize) {
                        Some(g) => g.push(p),
                        None => beyond.push(p),
                    }
                }
                self.recycle(b);
                if beyond.is_empty() {
                    self.recycle(beyond);
                } else {
                    self.forward(i, Endpoint::Drop, beyond);
                }
                // Reverse, so the worklist runs gate 0 first.
                for (g, pb) in per_gate.into_iter().enumerate().rev() {
                    if pb.is_empty() {
                        self.recycle(pb);
                    } else {
                        let to = self.stages[i].out[g];
                        self.forward(i, to, pb);
                    }
                }
            }
        }
    }

    #[inline]
    fn forward(&mut self, from: usize, to: Endpoint, b: Batch) {
        if to == Endpoint::Drop {
            let s = &mut self.stages[from];
            if !s.taps.is_empty() {
                tap::unconnected(&mut s.taps, &b, 0);
            }
            for _ in 0..b.len() {
                s.counters.count_drop(DropReason::Unconnected);
            }
            s.counters.packets_out -= b.len() as u64;
            s.counters.bytes_out -= b.bytes() as u64;
            s.publish();
            self.recycle(b);
        } else {
            self.work.push((to, b));
        }
    }

    /// Where a batch that left stage `stage` by `out_gate` goes on whole:
    /// the linked endpoint if the NF is a pair NF and the gate is
    /// connected; `None` when [`Graph::leave`] has to decide (split by
    /// `out_port`, or count it unconnected).
    #[inline(always)]
    fn whole_to(&self, stage: usize, out_gate: u16) -> Option<Endpoint> {
        let s = &self.stages[stage];
        match (s.gates, s.out.get(out_gate as usize)) {
            (Gates::Pair, Some(&to)) if to != Endpoint::Drop => Some(to),
            _ => None,
        }
    }

    /// Run `first`, then everything queued in `work`, to completion; `t0`
    /// is the stage clock now.
    fn run_work(
        &mut self,
        first: Option<(Endpoint, Batch)>,
        now_ns: u64,
        mut t0: u64,
        out: &mut [Batch],
    ) {
        // A graph whose links loop would never finish: bound the stage
        // calls per push and count what is left as dropped.
        let mut budget = 8 * self.stages.len() + 8;
        // `next` carries a batch straight on to where a pair NF sends it
        // (the common case of a chain), without a turn through `work`.
        let mut next = first.or_else(|| self.work.pop());
        // The byte count of `next` when it is a stage's whole output (that
        // stage counted it as its bytes out): the next stage's bytes in,
        // without another pass over the batch.
        let mut next_bytes: Option<u64> = None;
        while let Some((to, mut b)) = next.take() {
            let known_bytes = next_bytes.take();
            match to {
                Endpoint::Port(p) => {
                    deliver(out, p, &mut b);
                    self.recycle(b);
                }
                Endpoint::Drop => self.recycle(b),
                Endpoint::Stage { stage, gate } => {
                    if budget == 0 || stage >= self.stages.len() {
                        let last = self.stages.len() - 1;
                        let s = &mut self.stages[stage.min(last)];
                        for _ in 0..b.len() {
                            s.counters.count_drop(DropReason::Other);
                        }
                        self.recycle(b);
                    } else {
                        budget -= 1;
                        let bytes_out;
                        (t0, bytes_out) = self.call(stage, gate, &mut b, now_ns, t0, known_bytes);
                        // A pair NF's output leaves by the other gate; a
                        // switching NF's by each packet's `out_port`.
                        let out_gate = gate ^ 1;
                        if b.is_empty() {
                            self.recycle(b);
                        } else if let Some(to) = self.whole_to(stage, out_gate) {
                            // What `leave` would do for a pair NF's batch
                            // going on whole, run next without a turn
                            // through the queue.
                            next = Some((to, b));
                            next_bytes = Some(bytes_out);
                            continue;
                        } else {
                            self.leave(stage, out_gate, b);
                        }
                    }
                }
            }
            next = self.work.pop();
        }
    }

    /// Call stage `i`'s NF on `b`, which came in on `gate`, and count at
    /// the call edge. `t0` is the clock at the start; `bytes` is `b`'s
    /// byte count if the caller knows it (the previous stage's bytes out).
    /// Returns the clock at the end (the next stage's start: one clock
    /// read per call) and the bytes that came out.
    #[inline]
    fn call(
        &mut self,
        i: usize,
        gate: u16,
        b: &mut Batch,
        now_ns: u64,
        t0: u64,
        bytes: Option<u64>,
    ) -> (u64, u64) {
        let s = &mut self.stages[i];
        // At most one pass: the bytes counted (unless known) and, for a
        // switching NF (the only kind that reads it), the gate written
        // into every packet's meta.
        let bytes_in = if matches!(s.gates, Gates::Switch(_)) {
            let mut n = 0u64;
            for p in b.iter_mut() {
                p.meta.in_port = gate;
                n += p.len() as u64;
            }
            n
        } else {
            match bytes {
                Some(n) => n,
                None => b.bytes() as u64,
            }
        };
        let n_in = b.len() as u64;
        let created = s.counters.packets_created;
        if s.taps.is_empty() {
            let mut cx = Context::new(now_ns, &mut s.counters);
            s.nf.process(b, &mut cx);
        } else {
            // A capture runs on this stage (see crate::tap).
            let before = tap::before(&mut s.taps, b, gate);
            let log = &mut self.drop_log;
            log.entries.clear();
            if tap::wants_log(&before) {
                let mut cx = Context::with_drop_log(now_ns, &mut s.counters, log);
                s.nf.process(b, &mut cx);
            } else {
                let mut cx = Context::new(now_ns, &mut s.counters);
                s.nf.process(b, &mut cx);
            }
            let switch = matches!(s.gates, Gates::Switch(_));
            tap::after(&mut s.taps, before, b, gate ^ 1, switch, log);
        }
        let t1 = clock();
        let c = &mut s.counters;
        let n_out = b.len() as u64;
        // The same packets with the same lengths: no second pass.
        let bytes_out = if s.keeps_lengths && n_out == n_in && c.packets_created == created {
            debug_assert_eq!(b.bytes() as u64, bytes_in, "{} claims keeps_lengths", s.name);
            bytes_in
        } else {
            b.bytes() as u64
        };
        c.packets_in += n_in;
        c.bytes_in += bytes_in;
        c.packets_out += n_out;
        c.bytes_out += bytes_out;
        c.batches += 1;
        c.max_batch = c.max_batch.max(n_in);
        c.busy_ns += t1.saturating_sub(t0);
        if cfg!(feature = "telemetry") {
            // Packets that neither left nor were created were dropped (or
            // held back by the NF): only then copy the drop counters.
            let vanished = n_in + (c.packets_created - created) != n_out;
            s.telemetry.publish(c, vanished);
        }
        (t1, bytes_out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use braid_nf::{NfClass, Placement};
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

    /// Drops frames whose first byte is odd (a drain marker too: its first
    /// byte is 0xff); on tick emits one frame `[2]`.
    pub(crate) struct DropOdd;
    impl NetworkFunction for DropOdd {
        fn spec(&self) -> &'static NfSpec {
            &TEST_DROP_ODD
        }
        fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
            cx.retain(
                batch,
                |p| {
                    if p.data()[0] % 2 == 0 {
                        Ok(())
                    } else {
                        Err(DropReason::Other)
                    }
                },
            );
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
    fn a_chain_runs_requests_forward_and_answers_back() {
        let nfs = vec![("a".into(), fwd()), ("odd".into(), Box::new(DropOdd) as _)];
        let mut g = Graph::chain(nfs, 2, 0, 1).unwrap();
        let mut out = vec![Batch::new(), Batch::new()];
        let mut b = batch(&[0, 1, 2]);
        g.push(g.entry(0, 1), &mut b, 0, &mut out);
        assert!(b.is_empty());
        assert_eq!(out[1].iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [0, 2]);
        assert!(out[0].is_empty());
        // From the far end: through `odd` first, then `a`, out of port 0.
        let mut b = batch(&[4, 5]);
        g.push(g.entry(1, 0), &mut b, 0, &mut out);
        assert_eq!(out[0].iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [4]);
        let c = g.stages()[1].counters();
        assert_eq!((c.packets_in, c.packets_out, c.batches, c.max_batch), (5, 3, 2, 3));
        assert_eq!(c.dropped(DropReason::Other), 2);
        assert_eq!(g.stages()[0].counters().packets_in, 4, "3 requests, 1 answer");
    }

    /// `DropOdd` claiming `keeps_lengths` (true: it only drops).
    struct DropOddKeeping;
    impl NetworkFunction for DropOddKeeping {
        fn spec(&self) -> &'static NfSpec {
            &TEST_DROP_ODD
        }
        fn keeps_lengths(&self) -> bool {
            true
        }
        fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
            DropOdd.process(batch, cx);
        }
    }

    #[test]
    fn a_stage_keeping_lengths_counts_bytes_out_once_it_drops() {
        // Nothing dropped: bytes out are bytes in (no pass); one dropped:
        // counted again. Debug builds also check the first case.
        let nfs = vec![("keep".into(), Box::new(DropOddKeeping) as _), ("b".into(), fwd())];
        let mut g = Graph::chain(nfs, 2, 0, 1).unwrap();
        let mut out = vec![Batch::new(), Batch::new()];
        g.push(g.entry(0, 1), &mut batch(&[0, 2, 4]), 0, &mut out);
        let c = g.stages()[0].counters();
        assert_eq!((c.bytes_in, c.bytes_out), (30, 30));
        g.push_now(g.entry(0, 1), &mut batch(&[6, 7]), &mut out);
        let c = g.stages()[0].counters();
        assert_eq!((c.bytes_in, c.bytes_out), (50, 40));
        let c = g.stages()[1].counters();
        assert_eq!((c.packets_in, c.bytes_in, c.bytes_out), (4, 40, 40));
        assert_eq!(out[1].len(), 4);
    }

    #[test]
    fn every_stage_counts_the_bytes_it_saw_in_and_out() {
        // a -> odd -> b: `odd` drops two of five 10-byte frames, so `b`
        // (whose bytes in are carried from `odd`'s bytes out, not counted
        // again) must see 30 bytes, not 50.
        let nfs =
            vec![("a".into(), fwd()), ("odd".into(), Box::new(DropOdd) as _), ("b".into(), fwd())];
        let mut g = Graph::chain(nfs, 2, 0, 1).unwrap();
        let mut out = vec![Batch::new(), Batch::new()];
        let mut b = batch(&[0, 1, 2, 3, 4]);
        g.push(g.entry(0, 1), &mut b, 0, &mut out);
        let bytes = |g: &Graph, i: usize| {
            let c = g.stages()[i].counters();
            (c.bytes_in, c.bytes_out)
        };
        assert_eq!([bytes(&g, 0), bytes(&g, 1), bytes(&g, 2)], [(50, 50), (50, 30), (30, 30)]);
        // And again from a tick (emitted frames enter `b` by the queue).
        g.tick(0, &mut out);
        assert_eq!(bytes(&g, 2), (32, 32), "the 2-byte tick frame of `odd`");
        assert_eq!(out[1].bytes(), 32);
    }

    #[test]
    fn tick_output_leaves_by_gate_1_and_runs_on() {
        let nfs = vec![("odd".into(), Box::new(DropOdd) as _), ("b".into(), fwd())];
        let mut g = Graph::chain(nfs, 2, 0, 1).unwrap();
        let mut out = vec![Batch::new(), Batch::new()];
        g.tick(0, &mut out);
        assert_eq!(out[1].len(), 1);
        assert_eq!(g.stages()[1].counters().packets_in, 1);
        assert_eq!(g.stages()[0].counters().packets_out, 1);
    }

    #[test]
    fn unlinked_gates_count_as_unconnected() {
        let mut g = Graph::new(vec![("a".into(), fwd())], 1);
        g.link(0, 1, Endpoint::Port(0)).unwrap();
        let mut out = vec![Batch::new()];
        // In on gate 1: leaves by gate 0, which leads nowhere.
        g.push(Endpoint::Stage { stage: 0, gate: 1 }, &mut batch(&[1, 2]), 0, &mut out);
        let c = g.stages()[0].counters();
        assert_eq!(c.dropped(DropReason::Unconnected), 2);
        assert_eq!(c.packets_out, 0);
        assert!(out[0].is_empty());
    }

    #[test]
    fn links_are_checked() {
        let mut g = Graph::new(vec![("a".into(), fwd())], 1);
        assert_eq!(
            g.link(0, 2, Endpoint::Port(0)).unwrap_err().to_string(),
            "stage 0 (a) has no gate 2: it has 2"
        );
        assert!(g
            .link(0, 1, Endpoint::Port(1))
            .unwrap_err()
            .to_string()
            .contains("no port number 1"));
        assert!(g
            .link(1, 0, Endpoint::Drop)
            .unwrap_err()
            .to_string()
            .contains("no stage number 1"));
        assert_eq!(g.find("zz").unwrap_err().to_string(), "no stage named `zz`");
    }

    /// A three-gate switch that sends every packet out of the gate after
    /// the one it came in on: it can only do so if the gate is in its meta.
    struct NextGate;
    impl NetworkFunction for NextGate {
        fn spec(&self) -> &'static NfSpec {
            &TEST_DROP_ODD
        }
        fn gates(&self) -> Gates {
            Gates::Switch(3)
        }
        fn process(&mut self, batch: &mut Batch, _cx: &mut Context<'_>) {
            for p in batch.iter_mut() {
                p.meta.out_port = (p.meta.in_port + 1) % 3;
            }
        }
    }

    #[test]
    fn a_switching_nf_reads_the_gate_a_packet_came_in_on() {
        let mut g = Graph::new(vec![("sw".into(), Box::new(NextGate) as _)], 3);
        for gate in 0..3u16 {
            g.link(0, gate, Endpoint::Port(gate as usize)).unwrap();
        }
        let mut out = vec![Batch::new(), Batch::new(), Batch::new()];
        for gate in 0..3u16 {
            // The packets claim port 7: the graph overwrites it with the gate.
            let mut b: Batch = (0..2)
                .map(|i| {
                    let mut p = Packet::from_bytes(&[gate as u8, i]);
                    p.meta.in_port = 7;
                    p
                })
                .collect();
            g.push(Endpoint::Stage { stage: 0, gate }, &mut b, 0, &mut out);
        }
        let firsts = |o: &Batch| o.iter().map(|p| p.data()[0]).collect::<Vec<_>>();
        assert_eq!(firsts(&out[1]), [0, 0]);
        assert_eq!(firsts(&out[2]), [1, 1]);
        assert_eq!(firsts(&out[0]), [2, 2]);
    }

    #[test]
    fn a_loop_in_the_links_ends() {
        let mut g = Graph::new(vec![("a".into(), fwd()), ("b".into(), fwd())], 0);
        g.link(0, 1, Endpoint::Stage { stage: 1, gate: 0 }).unwrap();
        g.link(1, 1, Endpoint::Stage { stage: 0, gate: 0 }).unwrap();
        let mut out: Vec<Batch> = Vec::new();
        g.push(Endpoint::Stage { stage: 0, gate: 0 }, &mut batch(&[0]), 0, &mut out);
        let dropped: u64 = g.stages().iter().map(|s| s.counters().dropped(DropReason::Other)).sum();
        assert_eq!(dropped, 1);
    }
}
