//! braid network functions.
//!
//! An NF is a small type implementing [`NetworkFunction`]: it processes a
//! [`Batch`] in place (rewriting, dropping, or adding packets), reports its
//! class and where it can run, and, if it keeps state, says what kind
//! ([`StateKind`]) and exports and imports it, whole or by flow, so it can
//! be snapshotted, migrated and split across instances (see [`state`]).
//!
//! NFs are built by name from descriptor parameters through [`registry`]:
//! each NF file exports a `SPEC: NfSpec` with its name, class, placements,
//! parameter documentation and a build function.

#![forbid(unsafe_code)]

pub mod counters;
pub mod params;
pub mod registry;
pub mod state;
pub mod statelet;

pub mod ats;
pub mod classifier;
pub mod conntrack;
pub mod dpi;
pub mod firewall;
pub mod firewall_kernel;
pub mod fragments;
pub mod fwd;
pub mod kernel;
pub mod l2switch;
pub mod loadbalancer;
pub mod lpm;
pub mod maglev;
pub mod meter;
pub mod nat;
pub mod router;
pub mod steer;
pub mod xor;

pub mod aes_header;
pub mod decrypt;
pub mod delay;
pub mod encrypt;
pub mod loss;
pub mod nc_decode;
pub mod nc_encode;
pub mod nc_recode;
pub mod replay;
mod udp_payload;

use braid_packet::Batch;
pub use counters::{Counters, DropReason};
pub use params::{ConfigError, ParamDoc, Params};
pub use registry::{build, find, NfSpec, REGISTRY};
pub use state::{
    Encoding, FlowPartition, FlowScope, HashRange, NfState, PartitionKey, StateError, StateKind,
};
pub use statelet::{CompactStatelet, FlowStream, Statelet};

/// The CALVIN classification of an NF by what it needs from the packet path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NfClass {
    /// Moves packets without looking inside them (forwarder).
    Elementary,
    /// Reads or rewrites headers and simple payload transforms with bounded
    /// work per packet: a candidate for the kernel fast path (XDP).
    Basic,
    /// Heavy per-packet computation or large state (crypto, coding, DPI):
    /// user space with fast I/O.
    Advanced,
}

/// Where an NF implementation can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// In the kernel as an XDP program.
    Kernel,
    /// In a user-space process.
    User,
}

impl std::fmt::Display for NfClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NfClass::Elementary => "elementary",
            NfClass::Basic => "basic",
            NfClass::Advanced => "advanced",
        })
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Kernel => "kernel",
            Placement::User => "user",
        })
    }
}

/// What an NF sees of the world while processing one batch.
pub struct Context<'a> {
    /// Monotonic time in nanoseconds, read once per batch by the runtime.
    pub now_ns: u64,
    /// This NF's counters. The runtime counts packets in and out; the NF
    /// counts its drops (with a reason) through [`Context::drop_packet`].
    pub counters: &'a mut Counters,
    /// The drop log, set by the dataplane only while a capture of this
    /// NF's drops runs (`braid capture --dir drops`); see [`DropLog`].
    drop_log: Option<&'a mut DropLog>,
}

/// The reasons of the drops of one NF call, in the order they were
/// counted, for a capture of dropped packets. Each entry is the reason and,
/// when the drop went through [`Context::retain`], the index of the packet
/// in the batch as it entered the NF (exact); drops counted with
/// [`Context::drop_packet`] alone carry no index, and the dataplane pairs
/// them in order with the packets that vanished (exact for NFs that drop
/// in batch order, as every NF here does).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DropLog {
    pub entries: Vec<(Option<u32>, DropReason)>,
}

impl<'a> Context<'a> {
    pub fn new(now_ns: u64, counters: &'a mut Counters) -> Self {
        Context { now_ns, counters, drop_log: None }
    }

    /// A context that also logs the reason of every drop into `log` (what
    /// a capture of drops needs; costs nothing to NFs otherwise).
    pub fn with_drop_log(now_ns: u64, counters: &'a mut Counters, log: &'a mut DropLog) -> Self {
        Context { now_ns, counters, drop_log: Some(log) }
    }

    /// Record that one packet is dropped for `reason`. The caller removes it
    /// from the batch (usually by returning `false` from `retain_mut`, or
    /// through [`Context::retain`]).
    #[inline]
    pub fn drop_packet(&mut self, reason: DropReason) {
        self.counters.count_drop(reason);
        if let Some(log) = self.drop_log.as_deref_mut() {
            log.entries.push((None, reason));
        }
    }

    /// [`retain`](Self::retain) for a later pass over a batch that an
    /// earlier `retain` of the same call already shrank: positions are no
    /// longer those of the batch as it entered the NF, so drops are logged
    /// without one (the dataplane pairs them in order with the packets
    /// that vanished, exact since they drop in batch order).
    pub fn retain_again(
        &mut self,
        batch: &mut Batch,
        mut f: impl FnMut(&mut braid_packet::Packet) -> Result<(), DropReason>,
    ) {
        batch.retain_mut(|p| match f(p) {
            Ok(()) => true,
            Err(reason) => {
                self.drop_packet(reason);
                false
            }
        });
    }

    /// Run `f` on every packet of `batch`: keep those it returns `Ok` for,
    /// drop the others and count each under the reason it returned.
    #[inline]
    pub fn retain(
        &mut self,
        batch: &mut Batch,
        mut f: impl FnMut(&mut braid_packet::Packet) -> Result<(), DropReason>,
    ) {
        let mut index = 0u32;
        batch.retain_mut(|p| {
            let i = index;
            index += 1;
            match f(p) {
                Ok(()) => true,
                Err(reason) => {
                    self.counters.count_drop(reason);
                    if let Some(log) = self.drop_log.as_deref_mut() {
                        log.entries.push((Some(i), reason));
                    }
                    false
                }
            }
        });
    }
}

/// Monotonic clock in nanoseconds (`CLOCK_MONOTONIC`), the time base of
/// [`Context::now_ns`] and [`braid_packet::Meta::rx_ns`].
pub use braid_packet::clock::monotonic_ns;

/// How an NF uses its gates: the points where the dataplane graph connects
/// it to its neighbours (BESS's gates, Click's element ports). A packet
/// enters an NF on a gate and leaves on a gate; the gate it came in on is
/// its direction. A switching NF reads it in `meta.in_port` (the dataplane
/// writes it there); a pair NF's direction follows from its addresses, so
/// the dataplane does not write `meta.in_port` for it (one store per
/// packet per stage saved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gates {
    /// Two gates, 0 (upstream, towards the client) and 1 (downstream,
    /// towards the server): what enters on one leaves by the other.
    /// Packets an NF emits from `tick` leave by gate 1.
    Pair,
    /// `n` gates: the NF chooses each packet's gate in `meta.out_port`
    /// (router, l2switch), for packets from `process` and from `tick`.
    Switch(u16),
}

impl Gates {
    /// Number of gates.
    pub fn count(self) -> u16 {
        match self {
            Gates::Pair => 2,
            Gates::Switch(n) => n,
        }
    }
}

/// A packet-processing network function.
pub trait NetworkFunction: Send {
    /// The static description of this NF kind (name, class, placements).
    fn spec(&self) -> &'static NfSpec;

    /// Process one batch in place: rewrite packets, drop them (counting a
    /// reason through `cx`), or push new ones. Packet order within a flow
    /// must be preserved. Must never panic, whatever the packet bytes.
    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>);

    /// How this NF uses its gates (see [`Gates`]); most NFs are a pair.
    fn gates(&self) -> Gates {
        Gates::Pair
    }

    /// True if every packet `process` hands back entered in that same call
    /// and kept its length (the NF drops, reorders or rewrites in place;
    /// what it creates is counted in `packets_created`). The graph then
    /// takes a call's bytes out to be its bytes in when nothing was
    /// dropped or created, instead of another pass over the batch. An NF
    /// that holds packets across calls or changes lengths must say false
    /// (the default); debug builds check the claim on every call, and so
    /// does the `nf_frames` fuzz target.
    fn keeps_lengths(&self) -> bool {
        false
    }

    /// Called periodically (and once at end of input) with no packets, so an
    /// NF can age state or flush what it holds back (a partial coding
    /// generation, a shaper queue). Packets it emits go to `out`.
    fn tick(&mut self, _out: &mut Batch, _cx: &mut Context<'_>) {}

    /// True while [`NetworkFunction::tick`] has something to do: packets
    /// held back, a partial generation to flush, entries that will expire.
    /// A worker whose NFs all answer false and that has no traffic sleeps
    /// until a packet or a command comes (ticking only about once a
    /// second) instead of waking every tick interval. An NF that overrides
    /// `tick` overrides this too; answering true when unsure costs only
    /// wake-ups.
    fn wants_tick(&self) -> bool {
        false
    }

    /// Snapshot the whole state as JSON. `None` for stateless NFs.
    fn export_state(&self) -> Option<NfState> {
        self.export_scoped(&FlowScope::All, Encoding::Json).ok()
    }

    /// Replace the whole state with a snapshot (either encoding, whole or
    /// scoped: after it the NF holds exactly what `state` holds). On error
    /// nothing changes.
    fn import_state(&mut self, _state: &NfState) -> Result<(), StateError> {
        Err(StateError::Stateless)
    }

    /// Export the state of the flows in `scope`, in `encoding`. Per-flow NFs
    /// ([`StateKind::PerFlow`]) take the entries whose [`PartitionKey`] is in
    /// the scope, with what they need to be interpreted (clock, config
    /// checks) but not the instance's statistics counters; whole-state NFs
    /// accept [`FlowScope::All`] only ([`StateError::NotPerFlow`]);
    /// stateless NFs refuse ([`StateError::Stateless`]).
    ///
    /// Called between batches (the state is consistent there); the cost is
    /// one pass over the entries.
    fn export_scoped(
        &self,
        _scope: &FlowScope,
        _encoding: Encoding,
    ) -> Result<NfState, StateError> {
        Err(StateError::Stateless)
    }

    /// Merge an export of this NF kind (usually [`Self::export_scoped`]
    /// from another instance) into the state held now: imported entries are
    /// added, an entry with the same flow key is replaced by the imported
    /// one, and an imported entry that contradicts a different held entry
    /// (a NAT port or a key that another connection holds) refuses the
    /// whole import ([`StateError::Conflict`]), as does exceeding the
    /// table size ([`StateError::Capacity`]). On error nothing changes.
    /// Whole-state NFs refuse ([`StateError::MergeUnsupported`]).
    ///
    /// (See also [`NetworkFunction::flow_stream`] for streaming the state
    /// while the NF keeps running.)
    fn import_merge(&mut self, _state: &NfState) -> Result<(), StateError> {
        match self.spec().state {
            StateKind::None => Err(StateError::Stateless),
            _ => Err(StateError::MergeUnsupported { kind: self.spec().name.to_string() }),
        }
    }

    /// The per-flow state as a [`FlowStream`], for live migration while
    /// the NF keeps processing (`None`: no per-flow state, or not
    /// streamable; such an NF moves whole, between batches).
    fn flow_stream(&mut self) -> Option<&mut dyn FlowStream> {
        None
    }
}

#[cfg(test)]
mod context_tests {
    use super::*;

    /// A second pass logs its drops without a position (the batch has
    /// shrunk), so the dataplane pairs them with the right input packet.
    #[test]
    fn only_the_first_pass_logs_positions() {
        let mut counters = Counters::default();
        let mut log = DropLog::default();
        let mut batch: Batch =
            (0u8..4).map(|i| braid_packet::Packet::from_bytes(&[i; 60])).collect();
        let mut cx = Context::with_drop_log(0, &mut counters, &mut log);
        cx.retain(
            &mut batch,
            |p| if p.data()[0] == 1 { Err(DropReason::Malformed) } else { Ok(()) },
        );
        cx.retain_again(
            &mut batch,
            |p| if p.data()[0] == 2 { Err(DropReason::Other) } else { Ok(()) },
        );
        let left: Vec<u8> = batch.iter().map(|p| p.data()[0]).collect();
        assert_eq!(left, [0, 3]);
        assert_eq!(log.entries, [(Some(1), DropReason::Malformed), (None, DropReason::Other)]);
        assert_eq!(counters.dropped_total(), 2);
    }
}
