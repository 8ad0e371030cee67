//! In-kernel NFs: braid's XDP programs (C sources in `crates/io/bpf/`,
//! compiled by `build.rs`, embedded in the binary) and their loader.
//!
//! | program | what it does | maps it adds |
//! |---|---|---|
//! | [`XdpNf::Fwd`] | redirect to the egress interface of the ingress one, rewriting MACs if told | – |
//! | [`XdpNf::Pass`] | nothing (`XDP_PASS`); needed on the peer of a veth that receives redirected frames | – |
//! | [`XdpNf::Xor`] | XOR the UDP payload with a repeating key, fix the checksum, forward | `xor_cfg` |
//! | [`XdpNf::Firewall`] | drop/pass IPv4 by exact 5-tuple, any-source or source-prefix rules, forward | `fw_rules`, `fw_src_prefixes`, `fw_cfg` |
//! | [`XdpNf::Steer`] | redirect into the AF_XDP socket of the receive queue | `xsks` |
//! | [`XdpChain`] | several of fwd, firewall, xor on one host, joined by tail calls, forward | `chain_paths`, `chain_progs`, `chain_pos` + those of its stages, per slot |
//!
//! Every program has per-CPU [`Counter`]s and forwards through the same
//! two maps: `tx_ports` (ingress ifindex → egress ifindex, a devmap) and
//! `mac_rules` (ingress ifindex → new destination and source MAC). A frame
//! whose ingress interface has no `tx_ports` entry goes to the kernel
//! stack. Every program also has a capture tap (its tap words in `.bss`
//! and the `tap_ring` ring buffer), driven by [`crate::xdp_tap`].
//!
//! One [`XdpProgram`] may be attached to several interfaces; they share its
//! maps, which is how a forwarder between two interfaces is one program.
//! Attaching, filling maps and resolving interface names happen in the
//! network namespace of the calling thread (use
//! [`crate::netns::in_netns`]); dropping the program detaches it
//! everywhere (attachments are BPF links: closing them detaches, whatever
//! namespace the dropping thread is in).

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{
    Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, XskMap,
};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

/// Errors from loading, attaching and configuring XDP programs.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// This binary was built without the XDP objects.
    #[error("XDP programs were not built: install clang and libbpf-dev, then rebuild braid")]
    NotBuilt,
    /// The kernel or aya refused something; `what` says what was attempted.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request that does not fit the program or its maps.
    #[error("{0}")]
    Config(String),
    /// A capture sample without the layout the programs write.
    #[error("malformed XDP tap sample: {0}")]
    Sample(#[from] crate::xdp_tap::TapDecodeError),
}

/// Map an aya or kernel error to [`XdpError::Kernel`] saying what failed.
pub(crate) fn kernel<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> XdpError {
    let what = what.into();
    move |e| XdpError::Kernel { what, source: Box::new(e) }
}

/// The XDP programs braid ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpNf {
    Fwd,
    Pass,
    Xor,
    Firewall,
    Steer,
}

impl XdpNf {
    pub const ALL: [XdpNf; 5] =
        [XdpNf::Fwd, XdpNf::Pass, XdpNf::Xor, XdpNf::Firewall, XdpNf::Steer];

    /// The NF name as used in chain descriptors (`fwd`, `xor`, ...).
    pub fn name(self) -> &'static str {
        match self {
            XdpNf::Fwd => "fwd",
            XdpNf::Pass => "pass",
            XdpNf::Xor => "xor",
            XdpNf::Firewall => "firewall",
            XdpNf::Steer => "steer",
        }
    }

    /// The NF with an XDP version called `name`, if any.
    pub fn from_name(name: &str) -> Option<XdpNf> {
        XdpNf::ALL.into_iter().find(|n| n.name() == name)
    }

    /// Function name of the program inside its object.
    fn program(self) -> &'static str {
        match self {
            XdpNf::Fwd => "braid_fwd",
            XdpNf::Pass => "braid_pass",
            XdpNf::Xor => "braid_xor",
            XdpNf::Firewall => "braid_firewall",
            XdpNf::Steer => "braid_steer",
        }
    }

    fn object(self) -> Result<&'static [u8], XdpError> {
        objects::get(self)
    }
}

/// True if this binary carries the compiled XDP programs.
pub fn xdp_built() -> bool {
    objects::BUILT
}

#[cfg(braid_xdp)]
mod objects {
    use super::{XdpError, XdpNf};

    pub const BUILT: bool = true;

    // Objects are aligned for the ELF parser by copying at load time (aya
    // copies section data), so plain byte arrays are fine here.
    static FWD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdp_fwd.o"));
    static XOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdp_xor.o"));
    static FIREWALL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdp_firewall.o"));
    static STEER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdp_steer.o"));
    static CHAIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdp_chain.o"));

    pub fn chain() -> Result<&'static [u8], XdpError> {
        Ok(CHAIN)
    }

    pub fn get(nf: XdpNf) -> Result<&'static [u8], XdpError> {
        Ok(match nf {
            XdpNf::Fwd | XdpNf::Pass => FWD,
            XdpNf::Xor => XOR,
            XdpNf::Firewall => FIREWALL,
            XdpNf::Steer => STEER,
        })
    }
}

#[cfg(not(braid_xdp))]
mod objects {
    use super::{XdpError, XdpNf};

    pub const BUILT: bool = false;

    pub fn get(_: XdpNf) -> Result<&'static [u8], XdpError> {
        Err(XdpError::NotBuilt)
    }

    pub fn chain() -> Result<&'static [u8], XdpError> {
        Err(XdpError::NotBuilt)
    }
}

/// Per-program counters (indices of the `counters` map; keep in sync with
/// `enum braid_counter` in `bpf/braid_xdp.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    RxPackets = 0,
    RxBytes = 1,
    Pass = 2,
    Drop = 3,
    Redirect = 4,
    /// Program specific: a firewall rule hit, a payload XORed.
    Matched = 5,
    /// Frames with headers too short or inconsistent (also in `Drop`).
    Malformed = 6,
    /// Capture samples the tap's ring buffer had no room for.
    TapLost = 7,
}

/// Counters summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub pass: u64,
    pub drop: u64,
    pub redirect: u64,
    pub matched: u64,
    pub malformed: u64,
    pub tap_lost: u64,
}

impl std::ops::AddAssign for XdpCounters {
    /// Counter by counter (two stages' counts of one NF, say).
    fn add_assign(&mut self, o: XdpCounters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.pass += o.pass;
        self.drop += o.drop;
        self.redirect += o.redirect;
        self.matched += o.matched;
        self.malformed += o.malformed;
        self.tap_lost += o.tap_lost;
    }
}

/// How to attach a program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic mode with a message.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (SKB) mode: works on any device, slower.
    Generic,
}

/// Where and how a program ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// True for native (driver) mode, false for generic (SKB) mode.
    pub native: bool,
    /// Why native mode was not used, when `Auto` fell back.
    pub fallback_reason: Option<String>,
}

/// A firewall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwAction {
    Pass = 1,
    Drop = 2,
}

/// A firewall 5-tuple rule. `src = 0.0.0.0` with `src_port = 0` makes an
/// "any source" rule. Ports are ignored (use 0) for protocols without
/// ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwRule {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

impl FwRule {
    /// The map key: the C `struct braid_fw_key` (network byte order) of
    /// the rule set in `slot` (0 for the single-NF program).
    fn key(&self, slot: u8) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[0..4].copy_from_slice(&self.src.octets());
        k[4..8].copy_from_slice(&self.dst.octets());
        k[8..10].copy_from_slice(&self.src_port.to_be_bytes());
        k[10..12].copy_from_slice(&self.dst_port.to_be_bytes());
        k[12] = self.proto;
        k[13] = slot;
        k
    }
}

/// What an XDP program decided for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    /// A code outside the five the kernel defines.
    Other(u32),
}

impl XdpAction {
    fn from_code(code: u32) -> XdpAction {
        match code {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            c => XdpAction::Other(c),
        }
    }
}

/// Result of [`XdpProgram::test_run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    pub action: XdpAction,
    /// The frame after the program ran.
    pub frame: Vec<u8>,
    /// Mean time per run, as the kernel measured it.
    pub duration: std::time::Duration,
}

/// Longest UDP payload the XDP xor handles (longer ones are dropped as
/// malformed; they do not occur below a 1500-byte MTU).
pub const XOR_MAX_PAYLOAD: usize = 1500;

/// Length of the key stream in `xor_cfg` (`XOR_STREAM` in
/// `bpf/braid_xor.h`): [`XOR_MAX_PAYLOAD`] in whole 8-byte steps.
const XOR_STREAM_LEN: usize = 1504;

/// One loaded XDP program with its maps, attached to zero or more
/// interfaces. Dropping it detaches it from all of them.
pub struct XdpProgram {
    nf: XdpNf,
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("nf", &self.nf)
            .field("attachments", &self.attachments)
            .finish()
    }
}

impl XdpProgram {
    /// Load `nf` into the kernel (verifier included); not attached yet.
    pub fn load(nf: XdpNf) -> Result<XdpProgram, XdpError> {
        let obj = nf.object()?;
        let mut loader = aya::EbpfLoader::new();
        if matches!(nf, XdpNf::Pass | XdpNf::Steer) {
            // Helpers, never captured: a one-page tap ring, not 2 MiB.
            loader.map_max_entries("tap_ring", 4096);
        }
        let mut ebpf =
            loader.load(obj).map_err(kernel(format!("loading XDP object for {}", nf.name())))?;
        load_xdp(&mut ebpf, nf.program())?;
        Ok(XdpProgram { nf, ebpf, attachments: Vec::new() })
    }

    pub fn nf(&self) -> XdpNf {
        self.nf
    }

    /// Interfaces this program is attached to.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    fn prog(&mut self) -> Result<&mut Xdp, XdpError> {
        xdp_program(&mut self.ebpf, self.nf.program())
    }

    /// Attach to `iface` (in the calling thread's namespace).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&Attachment, XdpError> {
        let what = format!("XDP {}", self.nf.name());
        let a = maps::attach(self.prog()?, &what, iface, mode)?;
        self.attachments.push(a);
        Ok(self.attachments.last().expect("just pushed"))
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map, XdpError> {
        let nf = self.nf.name();
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| XdpError::Config(format!("XDP {nf} has no map {name}")))
    }

    /// Forward frames arriving on `in_ifindex` out of `out_ifindex`.
    pub fn set_forward(&mut self, in_ifindex: u32, out_ifindex: u32) -> Result<(), XdpError> {
        maps::set_forward(&mut self.ebpf, in_ifindex, out_ifindex)
    }

    /// [`XdpProgram::set_forward`] by interface names, resolved in the
    /// calling thread's namespace.
    pub fn set_forward_by_name(&mut self, in_iface: &str, out_iface: &str) -> Result<(), XdpError> {
        let i = crate::netns::ifindex(in_iface).map_err(|e| XdpError::Config(e.to_string()))?;
        let o = crate::netns::ifindex(out_iface).map_err(|e| XdpError::Config(e.to_string()))?;
        self.set_forward(i, o)
    }

    /// Rewrite the Ethernet addresses of frames arriving on `in_ifindex`.
    pub fn set_mac_rewrite(
        &mut self,
        in_ifindex: u32,
        dst: [u8; 6],
        src: [u8; 6],
    ) -> Result<(), XdpError> {
        maps::set_mac_rewrite(&mut self.ebpf, in_ifindex, dst, src)
    }

    /// Set the XOR key (at least one byte), repeated over the payload from
    /// its first byte, as the user-space xor does.
    pub fn set_xor_key(&mut self, key: &[u8]) -> Result<(), XdpError> {
        self.require(XdpNf::Xor, "XOR key")?;
        maps::set_xor_key(&mut self.ebpf, 0, key)
    }

    fn require(&self, nf: XdpNf, what: &str) -> Result<(), XdpError> {
        if self.nf != nf {
            return Err(XdpError::Config(format!("XDP {} has no {what}", self.nf.name())));
        }
        Ok(())
    }

    /// Add or replace a firewall rule.
    pub fn add_fw_rule(&mut self, rule: &FwRule, action: FwAction) -> Result<(), XdpError> {
        self.require(XdpNf::Firewall, "firewall rules")?;
        maps::add_fw_rule(&mut self.ebpf, 0, rule, action)
    }

    /// Remove a firewall rule; removing one that is not there is an error.
    pub fn remove_fw_rule(&mut self, rule: &FwRule) -> Result<(), XdpError> {
        self.require(XdpNf::Firewall, "firewall rules")?;
        maps::remove_fw_rule(&mut self.ebpf, 0, rule)
    }

    /// Add or replace a source-prefix rule (`net/len`).
    pub fn add_fw_src_prefix(
        &mut self,
        net: Ipv4Addr,
        len: u8,
        action: FwAction,
    ) -> Result<(), XdpError> {
        self.require(XdpNf::Firewall, "firewall rules")?;
        maps::add_fw_src_prefix(&mut self.ebpf, 0, net, len, action)
    }

    /// The action for IPv4 frames no rule matches (pass unless set).
    pub fn set_fw_default(&mut self, action: FwAction) -> Result<(), XdpError> {
        self.require(XdpNf::Firewall, "firewall default")?;
        maps::set_fw_default(&mut self.ebpf, 0, action)
    }

    /// Steer frames received on `queue` into the AF_XDP socket `fd`.
    pub fn set_xsk(&mut self, queue: u32, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), XdpError> {
        self.require(XdpNf::Steer, "xsks map")?;
        let mut m: XskMap<&mut MapData> =
            XskMap::try_from(self.map("xsks")?).map_err(kernel("opening map xsks"))?;
        m.set(queue, fd, 0).map_err(kernel(format!("xsks[{queue}]")))
    }

    /// Run the program once on `frame` inside the kernel
    /// (`BPF_PROG_TEST_RUN`, no interface involved) and return its action
    /// and the frame as the program left it. The kernel runs it as
    /// received on the loopback interface of the calling thread's
    /// namespace, which has no `tx_ports` entry, so forwarding programs
    /// answer [`XdpAction::Pass`]. `repeat > 1` runs it
    /// that many times and the returned duration is the mean per run.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome, XdpError> {
        let what = format!("XDP {}", self.nf.name());
        maps::test_run(self.prog()?, &what, frame, repeat)
    }

    /// Remove the socket registered for `queue` from the xsks map. The map
    /// holds a reference to the socket, and a map freed with its program
    /// lets go of it only later (deferred work), so a port unsets itself
    /// before closing: the queue is then free for a new socket at once.
    pub fn unset_xsk(&mut self, queue: u32) -> Result<(), XdpError> {
        self.require(XdpNf::Steer, "xsks map")?;
        let mut m: XskMap<&mut MapData> =
            XskMap::try_from(self.map("xsks")?).map_err(kernel("opening map xsks"))?;
        m.unset(queue).map_err(kernel(format!("xsks[{queue}] unset")))
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&mut self) -> Result<XdpCounters, XdpError> {
        maps::counters(&mut self.ebpf, 0)
    }

    /// Its capture tap's maps, for [`crate::xdp_tap::XdpTapReader`].
    pub fn tap_maps(&self) -> Result<crate::xdp_tap::XdpTapMaps, XdpError> {
        crate::xdp_tap::XdpTapMaps::of(&self.ebpf, 1)
    }

    /// The points its tap now mirrors (0: no capture).
    pub fn tap_config(&mut self) -> Result<u32, XdpError> {
        maps::tap_config(&mut self.ebpf, 0)
    }
}

/// Map access shared by [`XdpProgram`] and [`XdpChain`]: `slot` selects
/// the NF inside a chain program (0 for a single-NF program).
mod maps {
    use super::*;

    pub(super) fn get<'a>(
        ebpf: &'a mut Ebpf,
        name: &str,
    ) -> Result<&'a mut aya::maps::Map, XdpError> {
        ebpf.map_mut(name)
            .ok_or_else(|| XdpError::Config(format!("the XDP object has no map {name}")))
    }

    pub(super) fn set_forward(ebpf: &mut Ebpf, from: u32, to: u32) -> Result<(), XdpError> {
        let mut m: DevMapHash<&mut MapData> =
            DevMapHash::try_from(get(ebpf, "tx_ports")?).map_err(kernel("opening map tx_ports"))?;
        m.insert(from, to, None, 0).map_err(kernel(format!("tx_ports[{from}] = {to}")))
    }

    pub(super) fn set_mac_rewrite(
        ebpf: &mut Ebpf,
        in_ifindex: u32,
        dst: [u8; 6],
        src: [u8; 6],
    ) -> Result<(), XdpError> {
        let mut m: BpfHashMap<&mut MapData, u32, [u8; 12]> =
            BpfHashMap::try_from(get(ebpf, "mac_rules")?)
                .map_err(kernel("opening map mac_rules"))?;
        let mut v = [0u8; 12];
        v[..6].copy_from_slice(&dst);
        v[6..].copy_from_slice(&src);
        m.insert(in_ifindex, v, 0).map_err(kernel(format!("mac_rules[{in_ifindex}]")))
    }

    pub(super) fn set_xor_key(ebpf: &mut Ebpf, slot: u32, key: &[u8]) -> Result<(), XdpError> {
        if key.is_empty() {
            return Err(XdpError::Config("XOR key must have at least one byte".into()));
        }
        // The key repeated from payload byte 0, as the user-space xor
        // applies it; bytes past the longest payload never matter.
        let mut k = [0u8; XOR_STREAM_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = key[i % key.len()];
        }
        let mut m: Array<&mut MapData, [u8; XOR_STREAM_LEN]> =
            Array::try_from(get(ebpf, "xor_cfg")?).map_err(kernel("opening map xor_cfg"))?;
        m.set(slot, k, 0).map_err(kernel(format!("xor_cfg[{slot}]")))
    }

    pub(super) fn add_fw_rule(
        ebpf: &mut Ebpf,
        slot: u8,
        rule: &FwRule,
        action: FwAction,
    ) -> Result<(), XdpError> {
        let mut m: BpfHashMap<&mut MapData, [u8; 16], u32> =
            BpfHashMap::try_from(get(ebpf, "fw_rules")?).map_err(kernel("opening map fw_rules"))?;
        m.insert(rule.key(slot), action as u32, 0)
            .map_err(kernel(format!("fw_rules insert {rule:?}")))
    }

    pub(super) fn remove_fw_rule(ebpf: &mut Ebpf, slot: u8, rule: &FwRule) -> Result<(), XdpError> {
        let mut m: BpfHashMap<&mut MapData, [u8; 16], u32> =
            BpfHashMap::try_from(get(ebpf, "fw_rules")?).map_err(kernel("opening map fw_rules"))?;
        m.remove(&rule.key(slot)).map_err(kernel(format!("fw_rules remove {rule:?}")))
    }

    /// The key of a source-prefix rule of `slot` (see [`add_fw_src_prefix`]).
    fn prefix_key(slot: u32, net: Ipv4Addr, len: u8) -> Result<LpmKey<[u8; 8]>, XdpError> {
        if len > 32 {
            return Err(XdpError::Config(format!("prefix length {len} of {net} is over 32")));
        }
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&slot.to_ne_bytes());
        data[4..].copy_from_slice(&net.octets());
        Ok(LpmKey::new(32 + len as u32, data))
    }

    pub(super) fn remove_fw_src_prefix(
        ebpf: &mut Ebpf,
        slot: u32,
        net: Ipv4Addr,
        len: u8,
    ) -> Result<(), XdpError> {
        let key = prefix_key(slot, net, len)?;
        let mut m: LpmTrie<&mut MapData, [u8; 8], u32> =
            LpmTrie::try_from(get(ebpf, "fw_src_prefixes")?)
                .map_err(kernel("opening map fw_src_prefixes"))?;
        m.remove(&key).map_err(kernel(format!("fw_src_prefixes remove {net}/{len}")))
    }

    /// The LPM key data: the slot (native order, as the C struct holds
    /// it), then the address; the prefix covers all 32 slot bits.
    pub(super) fn add_fw_src_prefix(
        ebpf: &mut Ebpf,
        slot: u32,
        net: Ipv4Addr,
        len: u8,
        action: FwAction,
    ) -> Result<(), XdpError> {
        let key = prefix_key(slot, net, len)?;
        let mut m: LpmTrie<&mut MapData, [u8; 8], u32> =
            LpmTrie::try_from(get(ebpf, "fw_src_prefixes")?)
                .map_err(kernel("opening map fw_src_prefixes"))?;
        m.insert(&key, action as u32, 0)
            .map_err(kernel(format!("fw_src_prefixes insert {net}/{len}")))
    }

    pub(super) fn set_fw_default(
        ebpf: &mut Ebpf,
        slot: u32,
        action: FwAction,
    ) -> Result<(), XdpError> {
        let mut m: Array<&mut MapData, u32> =
            Array::try_from(get(ebpf, "fw_cfg")?).map_err(kernel("opening map fw_cfg"))?;
        m.set(slot, action as u32, 0).map_err(kernel(format!("fw_cfg[{slot}]")))
    }

    pub(super) fn tap_config(ebpf: &mut Ebpf, slot: u32) -> Result<u32, XdpError> {
        crate::xdp_tap::read_word(get(ebpf, crate::xdp_tap::WORDS_MAP)?, slot)
    }

    pub(super) fn counters(ebpf: &mut Ebpf, slot: u32) -> Result<XdpCounters, XdpError> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(get(ebpf, "counters")?)
            .map_err(kernel("opening map counters"))?;
        let base = slot * COUNTERS_PER_SLOT;
        let get = |c: Counter| -> Result<u64, XdpError> {
            let v = m.get(&(base + c as u32), 0).map_err(kernel(format!("counters[{c:?}]")))?;
            Ok(v.iter().sum())
        };
        Ok(XdpCounters {
            rx_packets: get(Counter::RxPackets)?,
            rx_bytes: get(Counter::RxBytes)?,
            pass: get(Counter::Pass)?,
            drop: get(Counter::Drop)?,
            redirect: get(Counter::Redirect)?,
            matched: get(Counter::Matched)?,
            malformed: get(Counter::Malformed)?,
            tap_lost: get(Counter::TapLost)?,
        })
    }

    pub(super) fn test_run(
        prog: &mut Xdp,
        what: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome, XdpError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let r = prog.test_run(opts).map_err(kernel(format!("test run of {what}")))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutcome {
            action: XdpAction::from_code(r.return_value),
            frame: out,
            duration: r.duration,
        })
    }

    pub(super) fn attach(
        prog: &mut Xdp,
        what: &str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Attachment, XdpError> {
        let ifindex = crate::netns::ifindex(iface).map_err(|e| XdpError::Config(e.to_string()))?;
        let (native, fallback_reason) = match mode {
            AttachMode::Native => {
                prog.attach_to_if_index(ifindex, XdpMode::Driver)
                    .map_err(kernel(format!("attaching {what} to {iface} in native mode")))?;
                (true, None)
            }
            AttachMode::Generic => {
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(kernel(format!("attaching {what} to {iface} in generic mode")))?;
                (false, None)
            }
            AttachMode::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(_) => (true, None),
                Err(native_err) => {
                    let reason = format!("{native_err}");
                    prog.attach_to_if_index(ifindex, XdpMode::Skb).map_err(kernel(format!(
                        "attaching {what} to {iface} (native mode failed: {reason}; generic mode)"
                    )))?;
                    eprintln!(
                        "braid: {what} on {iface}: native mode not available ({reason}); \
                         attached in generic (SKB) mode, which is slower"
                    );
                    (false, Some(reason))
                }
            },
        };
        Ok(Attachment { iface: iface.to_string(), ifindex, native, fallback_reason })
    }
}

/// Counters per NF slot (`BRAID_COUNTERS` in `bpf/braid_xdp.h`).
pub(crate) const COUNTERS_PER_SLOT: u32 = 8;

/// Most NFs one [`XdpChain`] can hold (`BRAID_SLOTS` in `bpf/xdp_chain.c`).
pub const CHAIN_MAX_STAGES: usize = 8;

/// Several kernel NFs on one host as one XDP program: an entry program
/// attached to the interfaces tail-calls one stage program per NF (see
/// `bpf/xdp_chain.c`). Stage `i` of [`XdpChain::load`] is slot `i`: its
/// configuration ([`XdpChain::set_xor_key`], the firewall rules) and its
/// [`XdpChain::counters`] are its own. [`XdpChain::set_path`] tells, per
/// ingress interface, which stages a frame crosses and in which order;
/// the last one forwards it like fwd. Dropping it detaches it everywhere.
pub struct XdpChain {
    ebpf: Ebpf,
    stages: Vec<XdpNf>,
    /// The stage programs by slot. Held open: the kernel empties a program
    /// array when its last user-space reference goes away.
    _progs: ProgramArray<MapData>,
    attachments: Vec<Attachment>,
}

impl std::fmt::Debug for XdpChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpChain")
            .field("stages", &self.stages)
            .field("attachments", &self.attachments)
            .finish()
    }
}

const CHAIN_ENTRY: &str = "braid_chain";

fn chain_stage_program(nf: XdpNf) -> Option<&'static str> {
    match nf {
        XdpNf::Fwd => Some("braid_chain_fwd"),
        XdpNf::Firewall => Some("braid_chain_firewall"),
        XdpNf::Xor => Some("braid_chain_xor"),
        XdpNf::Pass | XdpNf::Steer => None,
    }
}

/// The XDP program `name` of a loaded object.
fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, XdpError> {
    ebpf.program_mut(name)
        .ok_or_else(|| XdpError::Config(format!("program {name} missing from its object")))?
        .try_into()
        .map_err(kernel(format!("{name} is not an XDP program")))
}

/// Load (verify) the XDP program `name` of `ebpf` into the kernel.
fn load_xdp(ebpf: &mut Ebpf, name: &str) -> Result<(), XdpError> {
    xdp_program(ebpf, name)?.load().map_err(kernel(format!("verifying XDP program {name}")))
}

impl XdpChain {
    /// Load a chain of `stages` (fwd, firewall or xor; 1 to
    /// [`CHAIN_MAX_STAGES`]) into the kernel; not attached yet, no path set.
    pub fn load(stages: &[XdpNf]) -> Result<XdpChain, XdpError> {
        if stages.is_empty() || stages.len() > CHAIN_MAX_STAGES {
            return Err(XdpError::Config(format!(
                "an XDP chain holds 1 to {CHAIN_MAX_STAGES} NFs, got {}",
                stages.len()
            )));
        }
        for (i, nf) in stages.iter().enumerate() {
            if chain_stage_program(*nf).is_none() {
                return Err(XdpError::Config(format!(
                    "stage {i}: XDP {} cannot be a chain stage (fwd, firewall, xor can)",
                    nf.name()
                )));
            }
        }
        let obj = objects::chain()?;
        let mut ebpf = Ebpf::load(obj).map_err(kernel("loading the XDP chain object"))?;
        load_xdp(&mut ebpf, CHAIN_ENTRY)?;
        let mut kinds: Vec<&'static str> =
            stages.iter().filter_map(|nf| chain_stage_program(*nf)).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for name in &kinds {
            load_xdp(&mut ebpf, name)?;
        }
        let map = ebpf
            .take_map("chain_progs")
            .ok_or_else(|| XdpError::Config("the XDP chain object has no chain_progs".into()))?;
        let mut progs = ProgramArray::try_from(map).map_err(kernel("opening map chain_progs"))?;
        for (slot, nf) in stages.iter().enumerate() {
            let name = chain_stage_program(*nf).expect("checked above");
            let prog = ebpf
                .program(name)
                .ok_or_else(|| XdpError::Config(format!("program {name} missing")))?;
            let fd = prog.fd().map_err(kernel(format!("file descriptor of {name}")))?;
            progs
                .set(slot as u32, fd, 0)
                .map_err(kernel(format!("chain_progs[{slot}] = {name}")))?;
        }
        Ok(XdpChain { ebpf, stages: stages.to_vec(), _progs: progs, attachments: Vec::new() })
    }

    /// The NFs, by slot.
    pub fn stages(&self) -> &[XdpNf] {
        &self.stages
    }

    /// Interfaces this chain is attached to.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    fn entry(&mut self) -> Result<&mut Xdp, XdpError> {
        xdp_program(&mut self.ebpf, CHAIN_ENTRY)
    }

    /// Attach the chain's entry program to `iface` (in the calling
    /// thread's namespace).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&Attachment, XdpError> {
        let a = maps::attach(self.entry()?, "XDP chain", iface, mode)?;
        self.attachments.push(a);
        Ok(self.attachments.last().expect("just pushed"))
    }

    fn slot(&self, slot: usize, nf: XdpNf, what: &str) -> Result<u32, XdpError> {
        let s = self.stage(slot)?;
        if self.stages[slot] != nf {
            return Err(XdpError::Config(format!(
                "stage {slot} of the XDP chain is {}, which has no {what}",
                self.stages[slot].name()
            )));
        }
        Ok(s)
    }

    /// `slot` as the programs' slot number, if the chain has that stage.
    fn stage(&self, slot: usize) -> Result<u32, XdpError> {
        if slot >= self.stages.len() {
            return Err(XdpError::Config(format!(
                "the XDP chain has {} stages, no stage {slot}",
                self.stages.len()
            )));
        }
        Ok(slot as u32)
    }

    /// Frames arriving on `in_ifindex` cross the stages `slots` in this
    /// order (each slot at most once).
    pub fn set_path(&mut self, in_ifindex: u32, slots: &[usize]) -> Result<(), XdpError> {
        if slots.is_empty() || slots.len() > CHAIN_MAX_STAGES {
            return Err(XdpError::Config(format!(
                "a path crosses 1 to {CHAIN_MAX_STAGES} stages, got {}",
                slots.len()
            )));
        }
        let mut value = [0u32; 1 + CHAIN_MAX_STAGES];
        value[0] = slots.len() as u32;
        for (i, s) in slots.iter().enumerate() {
            if *s >= self.stages.len() {
                return Err(XdpError::Config(format!(
                    "path step {i}: the XDP chain has {} stages, no stage {s}",
                    self.stages.len()
                )));
            }
            value[1 + i] = *s as u32;
        }
        let mut m: BpfHashMap<&mut MapData, u32, [u32; 1 + CHAIN_MAX_STAGES]> =
            BpfHashMap::try_from(maps::get(&mut self.ebpf, "chain_paths")?)
                .map_err(kernel("opening map chain_paths"))?;
        m.insert(in_ifindex, value, 0).map_err(kernel(format!("chain_paths[{in_ifindex}]")))
    }

    /// Forward frames arriving on `in_ifindex` out of `out_ifindex` after
    /// their last stage.
    pub fn set_forward(&mut self, in_ifindex: u32, out_ifindex: u32) -> Result<(), XdpError> {
        maps::set_forward(&mut self.ebpf, in_ifindex, out_ifindex)
    }

    /// Rewrite the Ethernet addresses of frames arriving on `in_ifindex`
    /// when they leave.
    pub fn set_mac_rewrite(
        &mut self,
        in_ifindex: u32,
        dst: [u8; 6],
        src: [u8; 6],
    ) -> Result<(), XdpError> {
        maps::set_mac_rewrite(&mut self.ebpf, in_ifindex, dst, src)
    }

    /// Set the XOR key of the xor stage `slot` (at least one byte, repeated).
    pub fn set_xor_key(&mut self, slot: usize, key: &[u8]) -> Result<(), XdpError> {
        let s = self.slot(slot, XdpNf::Xor, "XOR key")?;
        maps::set_xor_key(&mut self.ebpf, s, key)
    }

    /// Add or replace a rule of the firewall stage `slot`.
    pub fn add_fw_rule(
        &mut self,
        slot: usize,
        rule: &FwRule,
        action: FwAction,
    ) -> Result<(), XdpError> {
        let s = self.slot(slot, XdpNf::Firewall, "firewall rules")?;
        maps::add_fw_rule(&mut self.ebpf, s as u8, rule, action)
    }

    /// Add or replace a source-prefix rule of the firewall stage `slot`.
    pub fn add_fw_src_prefix(
        &mut self,
        slot: usize,
        net: Ipv4Addr,
        len: u8,
        action: FwAction,
    ) -> Result<(), XdpError> {
        let s = self.slot(slot, XdpNf::Firewall, "firewall rules")?;
        maps::add_fw_src_prefix(&mut self.ebpf, s, net, len, action)
    }

    /// Remove a rule of the firewall stage `slot`; removing one that is
    /// not there is an error.
    pub fn remove_fw_rule(&mut self, slot: usize, rule: &FwRule) -> Result<(), XdpError> {
        let s = self.slot(slot, XdpNf::Firewall, "firewall rules")?;
        maps::remove_fw_rule(&mut self.ebpf, s as u8, rule)
    }

    /// Remove a source-prefix rule (`net/len`) of the firewall stage
    /// `slot`; removing one that is not there is an error.
    pub fn remove_fw_src_prefix(
        &mut self,
        slot: usize,
        net: Ipv4Addr,
        len: u8,
    ) -> Result<(), XdpError> {
        let s = self.slot(slot, XdpNf::Firewall, "firewall rules")?;
        maps::remove_fw_src_prefix(&mut self.ebpf, s, net, len)
    }

    /// The default action of the firewall stage `slot` (pass unless set).
    pub fn set_fw_default(&mut self, slot: usize, action: FwAction) -> Result<(), XdpError> {
        let s = self.slot(slot, XdpNf::Firewall, "firewall default")?;
        maps::set_fw_default(&mut self.ebpf, s, action)
    }

    /// Counters of stage `slot`, summed over CPUs. A stage that hands a
    /// frame to the next one counts it in `redirect`.
    pub fn counters(&mut self, slot: usize) -> Result<XdpCounters, XdpError> {
        let s = self.stage(slot)?;
        maps::counters(&mut self.ebpf, s)
    }

    /// Its capture tap's maps (one tap word per stage slot), for
    /// [`crate::xdp_tap::XdpTapReader`].
    pub fn tap_maps(&self) -> Result<crate::xdp_tap::XdpTapMaps, XdpError> {
        crate::xdp_tap::XdpTapMaps::of(&self.ebpf, self.stages.len() as u32)
    }

    /// The points the tap of stage `slot` now mirrors (0: no capture).
    pub fn tap_config(&mut self, slot: usize) -> Result<u32, XdpError> {
        let s = self.stage(slot)?;
        maps::tap_config(&mut self.ebpf, s)
    }

    /// Run the chain once on `frame` with `BPF_PROG_TEST_RUN`. The kernel
    /// runs it as received on the loopback interface of the calling
    /// thread's namespace, so the path of `lo`'s ifindex applies.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome, XdpError> {
        maps::test_run(self.entry()?, "the XDP chain", frame, repeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root and the XDP objects, or skip (a failure under
    /// `BRAID_REQUIRE_ROOT=1`).
    fn usable(test: &str) -> bool {
        !braid_testkit::skip_unless(
            crate::netns::is_root(),
            test,
            "loading BPF programs needs root",
        ) && !braid_testkit::skip_unless(xdp_built(), test, &XdpError::NotBuilt.to_string())
    }

    #[test]
    fn names_round_trip() {
        for nf in XdpNf::ALL {
            assert_eq!(XdpNf::from_name(nf.name()), Some(nf));
        }
        assert_eq!(XdpNf::from_name("aes"), None);
    }

    #[test]
    fn fw_key_matches_the_c_layout() {
        let r = FwRule {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            src_port: 0x1234,
            dst_port: 53,
            proto: 17,
        };
        assert_eq!(r.key(0), [10, 0, 0, 1, 10, 0, 0, 2, 0x12, 0x34, 0, 53, 17, 0, 0, 0]);
        assert_eq!(r.key(3)[13], 3);
    }

    #[test]
    fn every_program_passes_the_verifier() {
        if !usable("every_program_passes_the_verifier") {
            return;
        }
        for nf in XdpNf::ALL {
            let mut p = XdpProgram::load(nf).unwrap_or_else(|e| panic!("{}: {e:?}", nf.name()));
            let c = p.counters().unwrap();
            assert_eq!(c, XdpCounters::default());
        }
    }

    #[test]
    fn config_for_the_wrong_program_is_refused() {
        if !usable("config_for_the_wrong_program_is_refused") {
            return;
        }
        let mut p = XdpProgram::load(XdpNf::Fwd).unwrap();
        assert!(p.set_xor_key(&[1]).unwrap_err().to_string().contains("no XOR key"));
        let mut x = XdpProgram::load(XdpNf::Xor).unwrap();
        assert!(x.set_xor_key(&[]).is_err());
        x.set_xor_key(&[0; 17]).unwrap();
        x.set_xor_key(&[0xaa, 0x55]).unwrap();
    }
}
