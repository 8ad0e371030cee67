//! The chain descriptor: a YAML file naming a chain's NFs in order, with
//! their parameters, and its ports.
//!
//! ```yaml
//! name: sample
//! batch_size: 32          # optional, default 32
//! ports:                  # optional for `braid run` (the CLI gives in/out)
//!   in:  { kind: pcap, path: in.pcap }
//!   out: { kind: pcap, path: out.pcap }
//! nfs:
//!   - name: fw
//!     type: firewall
//!     placement: auto     # auto | kernel | user
//!     params: { default: allow }
//!     sched: { policy: fifo, priority: 50, cpus: [1], idle: poll }
//! sched:                  # optional: defaults for every worker
//!   nice: 5
//! ```
//!
//! `sched` (chain-level for every worker, per NF for the worker that runs
//! it; the NF's fields win) is the static part of SCC's coordinator: see
//! [`SchedDecl`] and [`crate::coordinator`].
//!
//! These types are the plain serde model. [`ChainDescriptor::from_yaml`]
//! stops at the first structural problem; [`crate::validate`] reports every
//! problem of a file with line and column, and is what the CLI uses.
//!
//! Port kinds: [`PortDecl`] is an enum tagged by `kind`, one variant per kind
//! with its own struct; adding a kind (af_packet, af_xdp, shm, ...) is one
//! new variant plus its struct, and a `kind_name` arm.

use std::collections::BTreeMap;

use braid_nf::Params;
use serde::{Deserialize, Serialize};

/// Default packets per batch when the descriptor does not say.
pub const DEFAULT_BATCH_SIZE: usize = braid_packet::DEFAULT_BATCH_SIZE;

/// Largest accepted `batch_size`.
pub const MAX_BATCH_SIZE: usize = 1024;

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

/// A whole chain: what `braid validate`, `run`, `bench` and `plan` read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainDescriptor {
    /// Chain name, used in statistics and deployments.
    pub name: String,
    /// Packets per batch, 1..=[`MAX_BATCH_SIZE`].
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Named ports. By convention `in` is where packets enter and `out`
    /// where they leave; `braid run` takes them from the command line.
    #[serde(default)]
    pub ports: BTreeMap<String, PortDecl>,
    /// The NFs, in the order packets traverse them.
    pub nfs: Vec<NfDecl>,
    /// Scheduling of every worker (the edge too); an NF's own `sched`
    /// overrides it field by field for the worker that runs the NF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sched: Option<SchedDecl>,
    /// How a live chain's user-space NFs are spread over worker threads
    /// or processes when braidd runs it (default `thread`: one worker for
    /// all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<WorkerMapping>,
}

/// `mapping:` of a chain: the worker threads its NFs run on when braidd
/// runs it (`braid run` takes `--mapping` from its command line instead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerMapping {
    /// Every NF on one worker thread.
    #[default]
    Thread,
    /// One worker thread per NF, neighbours joined by in-process channels
    /// (as `braid run --mapping threads`).
    Threads,
    /// One supervised process per NF, neighbours joined by shared-memory
    /// ports, the chain's `in` and `out` on an edge worker of the owner
    /// (as `braid run --mapping processes`; `braid_runtime::live_procs`).
    Processes,
}

impl WorkerMapping {
    /// The word in a descriptor.
    pub fn name(self) -> &'static str {
        match self {
            WorkerMapping::Thread => "thread",
            WorkerMapping::Threads => "threads",
            WorkerMapping::Processes => "processes",
        }
    }
}

/// `sched:` of the chain or of an NF: how the worker thread (or process)
/// that runs it is scheduled. Every field is optional; unset fields keep
/// the runner's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedDecl {
    /// Kernel scheduling policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyDecl>,
    /// Real-time priority 1..=99, for `fifo` and `rr` only (and required
    /// by them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Nice -20..=19, for `other`, `batch` and `idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i32>,
    /// CPUs the worker may run on (online CPU numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<usize>>,
    /// Packets per receive, 1..=[`MAX_BATCH_SIZE`] (default: the chain's
    /// `batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// What the worker does when a turn brought nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<braid_dataplane::Idle>,
    /// Adaptive mode: the worker sets its own batch size (up to
    /// `batch_size`, or 256) and idle policy from what it measures
    /// (`braid_dataplane::adapt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapt: Option<bool>,
    /// The EEVDF slice in µs (100..=100000) for `other` and `batch`
    /// (Linux 6.12+, `sched_setattr`'s `sched_runtime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_us: Option<u64>,
}

impl SchedDecl {
    /// Field names, for error messages.
    pub const FIELDS: &'static [&'static str] =
        &["policy", "priority", "nice", "cpus", "batch_size", "idle", "adapt", "slice_us"];

    /// `self` with every field `over` sets replaced by its value.
    pub fn overridden_by(&self, over: &SchedDecl) -> SchedDecl {
        SchedDecl {
            policy: over.policy.or(self.policy),
            priority: over.priority.or(self.priority),
            nice: over.nice.or(self.nice),
            cpus: over.cpus.clone().or_else(|| self.cpus.clone()),
            batch_size: over.batch_size.or(self.batch_size),
            idle: over.idle.or(self.idle),
            adapt: over.adapt.or(self.adapt),
            slice_us: over.slice_us.or(self.slice_us),
        }
    }

    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == SchedDecl::default()
    }
}

/// `policy:` of a [`SchedDecl`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDecl {
    /// SCHED_OTHER (the kernel's fair scheduler), the default.
    Other,
    /// SCHED_BATCH.
    Batch,
    /// SCHED_IDLE.
    Idle,
    /// SCHED_FIFO (real time; needs `priority`).
    Fifo,
    /// SCHED_RR (real time; needs `priority`).
    Rr,
}

impl PolicyDecl {
    /// A real-time policy.
    pub fn is_real_time(self) -> bool {
        matches!(self, PolicyDecl::Fifo | PolicyDecl::Rr)
    }
}

impl std::fmt::Display for PolicyDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicyDecl::Other => "other",
            PolicyDecl::Batch => "batch",
            PolicyDecl::Idle => "idle",
            PolicyDecl::Fifo => "fifo",
            PolicyDecl::Rr => "rr",
        })
    }
}

/// One NF of a chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfDecl {
    /// Instance name, unique in the chain (`fw`, `r1`).
    pub name: String,
    /// NF kind, a name from `braid nfs` (`firewall`, `router`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where to run it; `auto` lets the CALVIN classifier decide.
    #[serde(default)]
    pub placement: PlacementChoice,
    /// Parameters, checked by the NF's own typed configuration.
    #[serde(default)]
    pub params: Params,
    /// Scheduling of the worker that runs this NF (over the chain's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sched: Option<SchedDecl>,
    /// With `mapping: threads`, the worker thread this NF runs on:
    /// neighbouring NFs with the same `worker` share one (named
    /// `CHAIN/WORKER`); unset, the NF has a worker of its own, named after
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl NfDecl {
    /// The worker this NF runs on with `mapping: threads`: its `worker`,
    /// or its own name.
    pub fn worker_name(&self) -> &str {
        self.worker.as_deref().unwrap_or(&self.name)
    }
}

/// The `placement:` of an NF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementChoice {
    /// Let the classifier decide (see [`crate::plan`]).
    #[default]
    Auto,
    /// Pin to the kernel (XDP).
    Kernel,
    /// Pin to user space.
    User,
}

impl PlacementChoice {
    /// Accepted spellings, for error messages.
    pub const NAMES: &'static [&'static str] = &["auto", "kernel", "user"];
}

impl std::fmt::Display for PlacementChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlacementChoice::Auto => "auto",
            PlacementChoice::Kernel => "kernel",
            PlacementChoice::User => "user",
        })
    }
}

/// A port, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortDecl {
    /// A classic pcap file: read when used as input, written as output.
    Pcap(PcapPortDecl),
    /// In memory: as input a generator of synthetic UDP flows; as output a
    /// sink that counts what it receives.
    Memory(MemoryPortDecl),
    /// A live interface through an AF_PACKET socket.
    AfPacket(AfPacketPortDecl),
    /// A live interface queue through an AF_XDP socket.
    AfXdp(AfXdpPortDecl),
}

impl PortDecl {
    /// Every accepted `kind`, for error messages.
    pub const KINDS: &'static [&'static str] = &["pcap", "memory", "af_packet", "af_xdp"];

    /// The `kind` of this port as written in YAML.
    pub fn kind_name(&self) -> &'static str {
        match self {
            PortDecl::Pcap(_) => "pcap",
            PortDecl::Memory(_) => "memory",
            PortDecl::AfPacket(_) => "af_packet",
            PortDecl::AfXdp(_) => "af_xdp",
        }
    }
}

/// `kind: pcap`: a capture file, pcap or pcapng (see `docs/capture.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcapPortDecl {
    /// File path, relative to the current directory; `-` is standard input
    /// (as input) or standard output (as output).
    pub path: std::path::PathBuf,
    /// Format written when used as output; by default pcapng if the path
    /// ends in `.pcapng`, classic pcap otherwise. Inputs are recognised by
    /// their contents whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<CaptureFileFormat>,
}

impl PcapPortDecl {
    /// A capture port at `path` with the default format.
    pub fn new(path: impl Into<std::path::PathBuf>) -> PcapPortDecl {
        PcapPortDecl { path: path.into(), format: None }
    }
}

/// `format:` of a capture port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureFileFormat {
    /// Classic libpcap (nanosecond timestamps).
    Pcap,
    /// pcapng.
    Pcapng,
}

fn default_frame_size() -> usize {
    64
}
fn default_flows() -> u32 {
    1
}
fn default_packets() -> u64 {
    1000
}

/// `kind: memory`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryPortDecl {
    /// Generated frame size in bytes without FCS, 60..=1514.
    #[serde(default = "default_frame_size")]
    pub frame_size: usize,
    /// Number of distinct UDP 5-tuples, at least 1.
    #[serde(default = "default_flows")]
    pub flows: u32,
    /// Number of packets generated before the port reports end of input.
    #[serde(default = "default_packets")]
    pub packets: u64,
}

impl Default for MemoryPortDecl {
    fn default() -> Self {
        MemoryPortDecl {
            frame_size: default_frame_size(),
            flows: default_flows(),
            packets: default_packets(),
        }
    }
}

fn default_live_batch_size() -> usize {
    32
}

/// `kind: af_packet` (see `braid_io::af_packet`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfPacketPortDecl {
    /// Interface name, in the namespace the chain runs in.
    pub iface: String,
    /// Frames per system call, 1..=256.
    #[serde(default = "default_live_batch_size")]
    pub batch_size: usize,
    /// Largest IP packet, 68..=9000 (default 1500; jumbo frames above).
    #[serde(default = "default_mtu", skip_serializing_if = "is_default_mtu")]
    pub mtu: usize,
}

fn default_mtu() -> usize {
    braid_packet::DEFAULT_MTU
}

fn is_default_mtu(m: &usize) -> bool {
    *m == braid_packet::DEFAULT_MTU
}

impl AfPacketPortDecl {
    /// The port configuration this declares.
    pub fn config(&self) -> braid_io::af_packet::AfPacketConfig {
        let mut c = braid_io::af_packet::AfPacketConfig::new(&self.iface);
        c.batch_size = self.batch_size;
        c.mtu = self.mtu;
        c
    }
}

/// AF_XDP bind mode: `copy`, `zerocopy` or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpBindDecl {
    Copy,
    Zerocopy,
    #[default]
    Auto,
}

/// AF_XDP wait: `busy` (spin) or `block` (poll).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpWaitDecl {
    Busy,
    #[default]
    Block,
}

/// `kind: af_xdp` (see `braid_io::af_xdp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfXdpPortDecl {
    /// Interface name, in the namespace the chain runs in.
    pub iface: String,
    /// Receive queue.
    #[serde(default)]
    pub queue: u32,
    /// Frames per receive call, 1..=256.
    #[serde(default = "default_live_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub mode: XdpBindDecl,
    #[serde(default)]
    pub wait: XdpWaitDecl,
    /// Largest IP packet, 68..=3818 (default 1500): AF_XDP without
    /// multi-buffer holds a frame in one 4096-byte UMEM chunk.
    #[serde(default = "default_mtu", skip_serializing_if = "is_default_mtu")]
    pub mtu: usize,
}

impl AfXdpPortDecl {
    /// The port configuration this declares.
    pub fn config(&self) -> braid_io::af_xdp::AfXdpConfig {
        use braid_io::af_xdp::{BindMode, WaitMode};
        let mut c = braid_io::af_xdp::AfXdpConfig::new(&self.iface);
        c.queue = self.queue;
        c.batch_size = self.batch_size;
        c.mode = match self.mode {
            XdpBindDecl::Copy => BindMode::Copy,
            XdpBindDecl::Zerocopy => BindMode::ZeroCopy,
            XdpBindDecl::Auto => BindMode::Auto,
        };
        c.wait = match self.wait {
            XdpWaitDecl::Busy => WaitMode::Busy,
            XdpWaitDecl::Block => WaitMode::Block,
        };
        c.mtu = self.mtu;
        c
    }
}

/// Error from [`ChainDescriptor::from_yaml`]: the first problem only, with
/// its location when known. Use [`crate::validate`] for all of them.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DescriptorError(pub String);

impl ChainDescriptor {
    /// Parse a descriptor, stopping at the first problem. Neither NF
    /// parameters nor cross-field rules (unique names, known types) are
    /// checked here: [`crate::validate`] does that, and building a
    /// [`crate::Chain`] checks parameters.
    pub fn from_yaml(text: &str) -> Result<ChainDescriptor, DescriptorError> {
        serde_yaml_ng::from_str(text).map_err(|e| DescriptorError(e.to_string()))
    }

    /// The descriptor as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod live_port_tests {
    use super::*;

    #[test]
    fn live_ports_parse_with_defaults_and_map_to_io_configs() {
        let d = ChainDescriptor::from_yaml(
            "name: l\nports:\n  in: { kind: af_xdp, iface: veth1, wait: busy }\n  out: { kind: af_packet, iface: veth2, batch_size: 1 }\nnfs: []\n",
        )
        .unwrap();
        let PortDecl::AfXdp(x) = &d.ports["in"] else { panic!("in is af_xdp: {:?}", d.ports) };
        assert_eq!(
            (x.queue, x.batch_size, x.mode, x.wait),
            (0, 32, XdpBindDecl::Auto, XdpWaitDecl::Busy)
        );
        let c = x.config();
        assert_eq!((c.iface.as_str(), c.wait), ("veth1", braid_io::af_xdp::WaitMode::Busy));
        let PortDecl::AfPacket(p) = &d.ports["out"] else { panic!("out is af_packet") };
        assert_eq!(p.config().batch_size, 1);
        let e = ChainDescriptor::from_yaml(
            "name: l\nports:\n  in: { kind: af_xdp, iface: v, mode: fast }\nnfs: []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fast") && e.contains("zerocopy"), "{e}");
    }
}
