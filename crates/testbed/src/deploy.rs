//! Deploying NFs on the testbed's hosts: kernel NFs as XDP programs, and
//! user-space NFs between AF_XDP or AF_PACKET ports (see `user.rs`). An NF
//! asked to run on AF_XDP falls back to AF_PACKET when its AF_XDP ports do
//! not open; [`Deployment::fallbacks`] says which and why.
//!
//! NFs are deployed in groups: consecutive NFs of the chain on the same
//! host with the same placement. Each group runs on one host that has
//! exactly two links (its ingress and egress; one NF per host is CALVIN's
//! "one NF per isolated host"). A user-space group is one
//! `braid_dataplane::Worker` on its own thread running its NFs as a chain
//! of stages, one instance each for both directions (`user.rs`).
//! A kernel group is one XDP program (fwd, xor or firewall, parameters
//! translated by [`crate::kernel`]) or, for several NFs, braid's XDP chain
//! program with one stage per NF; frames from the host's first link cross
//! the stages in chain order, frames from the second in reverse order. The
//! program is attached to both interfaces and forwards in both directions,
//! so requests and answers cross the NFs: frames from one side are
//! redirected out of the other with the Ethernet addresses rewritten for
//! the next hop (source = the egress interface, destination = the
//! neighbour on that side).
//!
//! `XDP_REDIRECT` into a veth only delivers when the peer of the target veth
//! runs an XDP program, so every neighbour interface that does not carry an
//! NF program gets braid's `pass` program; the interfaces of an AF_XDP NF
//! already carry the steering program of its sockets, which receives them.
//!
//! Programs are held as BPF links by the [`Deployment`]: dropping it (or the
//! process ending) detaches every one of them. They are also recorded in the
//! testbed's state file while deployed, so `braid testbed down` detaches
//! anything left behind.

use crate::kernel::KernelNf;
pub use crate::user::{UserIo, UserOptions, UserWait};
use crate::{netns_name, record_xdp, Options, State, TestbedError};
use braid_io::netns;
use braid_io::xdp::{AttachMode, XdpChain, XdpCounters, XdpNf, XdpProgram};
use serde::Serialize;

/// Where an NF runs on its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// An XDP program (kinds: `fwd`, `xor`, `firewall`).
    Kernel,
    /// A user-space NF (any kind) between ports of this kind.
    User(UserIo),
}

/// One NF and the host it runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct NfOnHost {
    /// The NF's name in the chain.
    pub name: String,
    /// Its kind (`fwd`, `xor`, ...).
    pub kind: String,
    /// Testbed host (e.g. `nf1`).
    pub host: String,
    pub placement: Where,
    /// The NF's parameters (for kernel NFs translated by [`crate::kernel`]).
    pub params: braid_nf::Params,
}

impl NfOnHost {
    /// A kernel NF without parameters.
    pub fn kernel(name: &str, kind: &str, host: &str) -> NfOnHost {
        NfOnHost {
            name: name.into(),
            kind: kind.into(),
            host: host.into(),
            placement: Where::Kernel,
            params: braid_nf::Params::Null,
        }
    }

    /// A kernel NF with parameters.
    pub fn kernel_with(name: &str, kind: &str, host: &str, params: braid_nf::Params) -> NfOnHost {
        NfOnHost { params, ..NfOnHost::kernel(name, kind, host) }
    }

    /// A user-space NF on AF_PACKET ports.
    pub fn user(name: &str, kind: &str, host: &str, params: braid_nf::Params) -> NfOnHost {
        NfOnHost::user_on(name, kind, host, params, UserIo::AfPacket)
    }

    /// A user-space NF on `io` ports (AF_XDP falls back to AF_PACKET when
    /// its ports do not open).
    pub fn user_on(
        name: &str,
        kind: &str,
        host: &str,
        params: braid_nf::Params,
        io: UserIo,
    ) -> NfOnHost {
        NfOnHost {
            name: name.into(),
            kind: kind.into(),
            host: host.into(),
            placement: Where::User(io),
            params,
        }
    }
}

/// How a chain is spread over the testbed's NF hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mapping {
    /// One NF per host (CALVIN's distributed mapping).
    #[default]
    Distributed,
    /// Consecutive NFs with the same placement share a host: a run of
    /// kernel NFs becomes one XDP chain program, a run of user-space NFs one
    /// thread (CALVIN's compact mapping: basic NFs on one host, advanced on
    /// another).
    Compact,
}

impl Mapping {
    /// For NFs placed as `placements` (chain order), the index of the host
    /// each one goes to; hosts are used in order, from 0.
    pub fn host_indices(self, placements: &[Where]) -> Vec<usize> {
        let mut out = Vec::with_capacity(placements.len());
        for (i, p) in placements.iter().enumerate() {
            out.push(match (self, out.last()) {
                (Mapping::Compact, Some(&last)) if placements[i - 1] == *p => last,
                (_, Some(&last)) => last + 1,
                (_, None) => 0,
            });
        }
        out
    }
}

/// A user-space group: NFs (name, kind) in chain order, one thread.
struct DeployedUserGroup {
    nfs: Vec<(String, String)>,
    host: String,
    ifaces: [String; 2],
    io: UserIo,
    nf: crate::user::UserNf,
}

/// A kernel group: NFs (name, kind) in chain order, one XDP program.
struct DeployedNf {
    nfs: Vec<(String, String)>,
    host: String,
    ifaces: [String; 2],
    /// Their ifindexes (side 0, the client side, first).
    ifindex: [u32; 2],
    program: KernelProgram,
}

/// One kernel NF as its own program, or several as the chain program
/// (stage i = the group's NF i).
enum KernelProgram {
    Single(XdpProgram),
    Chain(XdpChain),
}

/// The running NFs; dropping it detaches every program.
pub struct Deployment {
    nfs: Vec<DeployedNf>,
    users: Vec<DeployedUserGroup>,
    /// `pass` programs on neighbour interfaces (kept alive, not reported).
    helpers: Vec<XdpProgram>,
    /// (namespace, interface) of every attachment, for the state file.
    attached: Vec<(String, String)>,
    /// (NF name, why) of NFs that asked for AF_XDP and run on AF_PACKET.
    fallbacks: Vec<(String, String)>,
    /// Hosts whose forwarding this deployment recorded as switched off.
    forwarding_off: Vec<String>,
    /// Hosts the topology declares forwarding.
    declared_forwarding: Vec<String>,
    opts: Options,
    /// Dropped last: the next deployment may start only when this one is
    /// entirely gone.
    _lock: DeployLock,
}

/// Counters of one deployed NF.
#[derive(Clone, Debug, Serialize)]
pub struct NfStats {
    pub name: String,
    pub kind: String,
    pub host: String,
    pub placement: &'static str,
    pub ifaces: [String; 2],
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub redirected: u64,
    pub passed: u64,
    pub dropped: u64,
    pub malformed: u64,
    /// User-space NFs: drops by reason (`braid_nf::DropReason` names;
    /// frames the outgoing socket had no room for are the port's
    /// `tx_full`, see [`Deployment::port_stats`]). Empty for kernel NFs.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub drop_reasons: std::collections::BTreeMap<&'static str, u64>,
    /// User-space NFs: what their worker measured at the call edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserNfStats>,
    /// AF_XDP NFs: the kernel's counters of the host's two sockets (shared
    /// by every NF of a group on that host): why frames were lost before
    /// the NF saw them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<SocketStats>,
    /// Kernel NFs: their capture tap (`braid capture`, docs/capture.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_tap: Option<XdpTapStats>,
}

/// The capture tap of a kernel NF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct XdpTapStats {
    /// The points a capture taps now (bits: 1 in, 2 out, 4 drops; 0 none).
    pub points: u32,
    /// Samples lost since the deployment started because the tap's ring
    /// was full.
    pub lost: u64,
}

/// What the worker of a user-space NF measured at the NF's call edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct UserNfStats {
    /// Calls of the NF (one per batch).
    pub batches: u64,
    /// Packets per call, on average.
    pub mean_batch: f64,
    /// The largest batch the NF was called with.
    pub max_batch: u64,
    /// Time inside the NF.
    pub busy_ns: u64,
    /// `busy_ns` per packet received.
    pub ns_per_packet: f64,
    /// Packets the NF created (ICMP errors, flood copies, coded packets).
    pub packets_created: u64,
}

/// Counters of one port of a user-space group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortRow {
    pub host: String,
    pub iface: String,
    /// The port (`af_xdp:to-client/q0`).
    pub port: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames lost on receive (AF_XDP: the kernel's `rx_dropped` and
    /// `rx_ring_full` included).
    pub rx_dropped: u64,
    /// Frames the group passed on that the port could not send (its ring
    /// or socket buffer was full, or the device refused them).
    pub tx_full: u64,
}

/// Kernel counters of an AF_XDP NF host's two sockets, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SocketStats {
    /// `rx_dropped` (XDP_STATISTICS).
    pub rx_dropped: u64,
    /// `rx_fill_ring_empty_descs`: frames lost because the NF thread had not
    /// handed frames back to the fill ring in time.
    pub fill_ring_empty: u64,
    /// `rx_ring_full`: frames lost because the rx ring was full.
    pub rx_ring_full: u64,
}

impl SocketStats {
    /// The two sockets' counters, summed.
    fn sum(sockets: &[std::sync::Arc<crate::user::SocketCounters>; 2]) -> SocketStats {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = SocketStats::default();
        for s in sockets {
            out.rx_dropped += get(&s.rx_dropped);
            out.fill_ring_empty += get(&s.fill_ring_empty);
            out.rx_ring_full += get(&s.rx_ring_full);
        }
        out
    }
}

fn xdp_err(what: String) -> impl FnOnce(braid_io::xdp::XdpError) -> TestbedError {
    move |e| TestbedError::Deploy(format!("{what}: {e}"))
}

fn mac_bytes(s: &str) -> Result<[u8; 6], TestbedError> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| TestbedError::Deploy(format!("bad MAC address {s:?}")))?;
    parts.try_into().map_err(|_| TestbedError::Deploy(format!("bad MAC address {s:?}")))
}

/// One end of a link as seen from a host: its interface, and the
/// neighbour's namespace and interface.
struct Side {
    dev: String,
    peer_ns: String,
    peer_dev: String,
}

fn sides_of(st: &State, opts: &Options, host: &str) -> Result<Vec<Side>, TestbedError> {
    let t = &st.topology;
    let mut sides = Vec::new();
    for l in &t.links {
        for (a_side, me, peer) in [(true, &l.a, &l.b), (false, &l.b, &l.a)] {
            if me.host == host {
                sides.push(Side {
                    dev: t.dev_of(l, a_side),
                    peer_ns: netns_name(opts, &peer.host),
                    peer_dev: t.dev_of(l, !a_side),
                });
            }
        }
    }
    Ok(sides)
}

/// Consecutive NFs of the chain on the same host with the same placement:
/// deployed as one unit (a user-space group is one thread running the NFs
/// in sequence).
struct Group<'a> {
    host: &'a str,
    placement: Where,
    nfs: Vec<&'a NfOnHost>,
}

impl Group<'_> {
    fn names(&self) -> String {
        self.nfs.iter().map(|n| format!("{:?} ({})", n.name, n.kind)).collect::<Vec<_>>().join(", ")
    }
}

/// How a planned group runs.
enum Unit {
    /// The group's NFs with their XDP configuration.
    Kernel(Vec<KernelNf>),
    User(UserIo),
}

/// `nfs` split into groups of consecutive NFs sharing host and placement.
fn groups(nfs: &[NfOnHost]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for nf in nfs {
        match out.last_mut() {
            Some(g) if g.host == nf.host && g.placement == nf.placement => g.nfs.push(nf),
            _ => out.push(Group { host: &nf.host, placement: nf.placement, nfs: vec![nf] }),
        }
    }
    out
}

/// Deploy `nfs` on the testbed described by the state file in `opts`, with
/// user-space NFs run as [`UserOptions::default`] says. Everything is
/// undone if any NF fails to deploy.
pub fn deploy(opts: &Options, nfs: &[NfOnHost]) -> Result<Deployment, TestbedError> {
    deploy_with(opts, nfs, &UserOptions::default())
}

/// [`deploy`], with user-space NF threads run as `user` says.
pub fn deploy_with(
    opts: &Options,
    nfs: &[NfOnHost],
    user: &UserOptions,
) -> Result<Deployment, TestbedError> {
    if !netns::is_root() {
        return Err(TestbedError::NotRoot);
    }
    let st = State::load(&opts.state_path).map_err(TestbedError::StateFile)?.ok_or_else(|| {
        TestbedError::State(format!(
            "no testbed is up ({} missing); run `braid testbed up` first",
            opts.state_path.display()
        ))
    })?;
    if !st.complete {
        return Err(TestbedError::State(
            "the testbed is incomplete; run `braid testbed down` and `up` again".into(),
        ));
    }
    let lock = DeployLock::take(opts, nfs)?;
    // A deployment killed before it could clean up left forwarding off.
    crate::repair_forwarding(opts)?;
    let mut d = Deployment {
        nfs: Vec::new(),
        users: Vec::new(),
        helpers: Vec::new(),
        attached: Vec::new(),
        fallbacks: Vec::new(),
        forwarding_off: Vec::new(),
        declared_forwarding: st
            .topology
            .hosts
            .iter()
            .filter(|h| h.forwarding)
            .map(|h| h.name.clone())
            .collect(),
        opts: opts.clone(),
        _lock: lock,
    };
    let mut hosts_used = std::collections::BTreeSet::new();
    // Plan every group before touching the kernel.
    let mut planned = Vec::new();
    for group in groups(nfs) {
        let first = group.nfs[0];
        for nf in &group.nfs {
            if braid_nf::find(&nf.kind).is_none() {
                return Err(TestbedError::Deploy(format!(
                    "NF {:?}: unknown kind {:?}",
                    nf.name, nf.kind
                )));
            }
        }
        let unit = match group.placement {
            Where::Kernel if group.nfs.len() > braid_io::xdp::CHAIN_MAX_STAGES => {
                return Err(TestbedError::Deploy(format!(
                    "{} kernel NFs on host {}: {}; one XDP chain holds at most {}",
                    group.nfs.len(),
                    group.host,
                    group.names(),
                    braid_io::xdp::CHAIN_MAX_STAGES
                )));
            }
            // Translated before anything is attached: a parameter XDP
            // cannot honour leaves the testbed untouched.
            Where::Kernel => Unit::Kernel(
                group
                    .nfs
                    .iter()
                    .map(|nf| {
                        KernelNf::translate(&nf.kind, &nf.params).map_err(|e| {
                            TestbedError::Deploy(format!(
                                "NF {:?} ({}) in the kernel: {e}",
                                nf.name, nf.kind
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Where::User(io) => Unit::User(io),
        };
        if !st.topology.hosts.iter().any(|h| h.name == group.host) {
            return Err(TestbedError::Deploy(format!(
                "NF {:?}: the testbed has no host {:?}",
                first.name, group.host
            )));
        }
        if !hosts_used.insert(group.host.to_string()) {
            return Err(TestbedError::Deploy(format!(
                "NF {:?}: host {:?} already runs other NFs of the chain; NFs sharing a host must be consecutive in the chain and placed alike (all kernel or all user space on the same sockets)",
                first.name, group.host
            )));
        }
        let sides = sides_of(&st, opts, group.host)?;
        if sides.len() != 2 {
            return Err(TestbedError::Deploy(format!(
                "NF {:?}: host {:?} has {} links; an NF host needs exactly two (ingress and egress)",
                first.name,
                group.host,
                sides.len()
            )));
        }
        planned.push((group, unit, sides));
    }
    for (group, unit, sides) in planned {
        match unit {
            Unit::Kernel(kernel_nfs) => deploy_kernel(&mut d, &group.nfs, &kernel_nfs, &sides)?,
            Unit::User(io) => deploy_user(&mut d, &group.nfs, &sides, io, user)?,
        }
    }
    // Neighbours of NF interfaces need a program to receive redirected frames.
    let peers: Vec<(String, String)> = d
        .nfs
        .iter()
        .flat_map(|n| {
            let sides = sides_of(&st, opts, &n.host).unwrap_or_default();
            sides.into_iter().map(|s| (s.peer_ns, s.peer_dev))
        })
        .collect();
    for (ns, dev) in peers {
        if d.attached.contains(&(ns.clone(), dev.clone())) {
            continue;
        }
        let what = format!("XDP pass on {ns}:{dev}");
        let prog = netns::in_netns(&ns, || -> Result<XdpProgram, TestbedError> {
            let mut p = XdpProgram::load(XdpNf::Pass).map_err(xdp_err(what.clone()))?;
            p.attach(&dev, AttachMode::Auto).map_err(xdp_err(what.clone()))?;
            Ok(p)
        })
        .map_err(|source| TestbedError::Setup { what: what.clone(), source })??;
        d.helpers.push(prog);
        d.record(&ns, &dev)?;
    }
    Ok(d)
}

fn deploy_user(
    d: &mut Deployment,
    group: &[&NfOnHost],
    sides: &[Side],
    io: UserIo,
    user: &UserOptions,
) -> Result<(), TestbedError> {
    let host = &group[0].host;
    let ns = netns_name(&d.opts, host);
    let (a, b) = (&sides[0], &sides[1]);
    let mac = |ns: &str, dev: &str| -> Result<[u8; 6], TestbedError> {
        let s = netns::mac_addr(Some(ns), dev)
            .map_err(|source| TestbedError::Setup { what: format!("MAC of {ns}:{dev}"), source })?;
        mac_bytes(&s)
    };
    // Side 0 is the host's first link in topology order (the client side in
    // the built-in topology): frames from it cross the group in chain order.
    let host_sides = || -> Result<[crate::user::HostSide; 2], TestbedError> {
        Ok([
            crate::user::HostSide {
                dev: a.dev.clone(),
                src: mac(&ns, &a.dev)?,
                dst: mac(&a.peer_ns, &a.peer_dev)?,
            },
            crate::user::HostSide {
                dev: b.dev.clone(),
                src: mac(&ns, &b.dev)?,
                dst: mac(&b.peer_ns, &b.peer_dev)?,
            },
        ])
    };
    let specs: Vec<(&str, &str, &braid_nf::Params)> =
        group.iter().map(|n| (n.name.as_str(), n.kind.as_str(), &n.params)).collect();
    let names = group.iter().map(|n| format!("{:?}", n.name)).collect::<Vec<_>>().join(", ");
    // Recorded before `start` switches Linux forwarding off on the host.
    crate::record_forwarding_off(&d.opts, host)?;
    d.forwarding_off.push(host.clone());
    let forwarding = d.declared_forwarding.iter().any(|h| h == host);
    let start = |io| {
        crate::user::UserNf::start(&ns, &specs, host_sides()?, io, user, forwarding)
            .map_err(|e| TestbedError::Deploy(format!("NF {names} on {host}: {e}")))
    };
    let (nf, io) = match io {
        UserIo::AfPacket => (start(UserIo::AfPacket)?, UserIo::AfPacket),
        UserIo::AfXdp => match start(UserIo::AfXdp) {
            Ok(u) => (u, UserIo::AfXdp),
            // Parameters are checked before any port opens: a bad one fails
            // the same way on AF_PACKET, so only port trouble falls back.
            Err(e) => {
                let nf = start(UserIo::AfPacket)?;
                for n in group {
                    d.fallbacks.push((n.name.clone(), format!("AF_XDP did not open: {e}")));
                }
                (nf, UserIo::AfPacket)
            }
        },
    };
    d.users.push(DeployedUserGroup {
        nfs: group.iter().map(|n| (n.name.clone(), n.kind.clone())).collect(),
        host: host.clone(),
        ifaces: [a.dev.clone(), b.dev.clone()],
        io,
        nf,
    });
    if io == UserIo::AfXdp {
        // The sockets' steering programs: recorded so that neighbours' `pass`
        // programs skip them and `braid testbed down` finds them if this
        // process dies.
        d.record(&ns, &a.dev)?;
        d.record(&ns, &b.dev)?;
    }
    Ok(())
}

/// Deploy a kernel group: one XDP program for one NF, the chain program
/// for several.
fn deploy_kernel(
    d: &mut Deployment,
    group: &[&NfOnHost],
    kernel_nfs: &[KernelNf],
    sides: &[Side],
) -> Result<(), TestbedError> {
    let host = &group[0].host;
    let ns = netns_name(&d.opts, host);
    let (a, b) = (&sides[0], &sides[1]);
    let mac = |ns: &str, dev: &str| -> Result<[u8; 6], TestbedError> {
        let s = netns::mac_addr(Some(ns), dev)
            .map_err(|source| TestbedError::Setup { what: format!("MAC of {ns}:{dev}"), source })?;
        mac_bytes(&s)
    };
    let (mac_a, mac_b) = (mac(&ns, &a.dev)?, mac(&ns, &b.dev)?);
    let (peer_a, peer_b) = (mac(&a.peer_ns, &a.peer_dev)?, mac(&b.peer_ns, &b.peer_dev)?);
    let names = group.iter().map(|n| format!("{:?} ({})", n.name, n.kind)).collect::<Vec<_>>();
    let what = format!("XDP for NF {} on {ns}", names.join(", "));
    let program = netns::in_netns(&ns, || -> Result<(KernelProgram, [u32; 2]), TestbedError> {
        let e = |w: &str| xdp_err(format!("{what}: {w}"));
        if let [k] = kernel_nfs {
            let mut p = XdpProgram::load(k.xdp()).map_err(e("load"))?;
            k.configure_program(&mut p).map_err(e("parameters"))?;
            let ia = p.attach(&a.dev, AttachMode::Auto).map_err(e(&a.dev))?.ifindex;
            let ib = p.attach(&b.dev, AttachMode::Auto).map_err(e(&b.dev))?.ifindex;
            p.set_forward(ia, ib).map_err(e("forward a->b"))?;
            p.set_forward(ib, ia).map_err(e("forward b->a"))?;
            // Out of b towards b's neighbour, and the other way round.
            p.set_mac_rewrite(ia, peer_b, mac_b).map_err(e("MAC rewrite a->b"))?;
            p.set_mac_rewrite(ib, peer_a, mac_a).map_err(e("MAC rewrite b->a"))?;
            return Ok((KernelProgram::Single(p), [ia, ib]));
        }
        let kinds: Vec<XdpNf> = kernel_nfs.iter().map(KernelNf::xdp).collect();
        let mut c = XdpChain::load(&kinds).map_err(e("load"))?;
        for (slot, k) in kernel_nfs.iter().enumerate() {
            k.configure_stage(&mut c, slot).map_err(e(&format!("parameters of stage {slot}")))?;
        }
        // Paths and forwarding before attaching: a frame arriving on an
        // interface without a path would go to the stack.
        let ia = netns::ifindex(&a.dev).map_err(|e| TestbedError::Deploy(e.to_string()))?;
        let ib = netns::ifindex(&b.dev).map_err(|e| TestbedError::Deploy(e.to_string()))?;
        let order: Vec<usize> = (0..kernel_nfs.len()).collect();
        let reverse: Vec<usize> = order.iter().rev().copied().collect();
        c.set_path(ia, &order).map_err(e("path a->b"))?;
        c.set_path(ib, &reverse).map_err(e("path b->a"))?;
        c.set_forward(ia, ib).map_err(e("forward a->b"))?;
        c.set_forward(ib, ia).map_err(e("forward b->a"))?;
        c.set_mac_rewrite(ia, peer_b, mac_b).map_err(e("MAC rewrite a->b"))?;
        c.set_mac_rewrite(ib, peer_a, mac_a).map_err(e("MAC rewrite b->a"))?;
        c.attach(&a.dev, AttachMode::Auto).map_err(e(&a.dev))?;
        c.attach(&b.dev, AttachMode::Auto).map_err(e(&b.dev))?;
        Ok((KernelProgram::Chain(c), [ia, ib]))
    })
    .map_err(|source| TestbedError::Setup { what: what.clone(), source })??;
    let (program, ifindex) = program;
    d.nfs.push(DeployedNf {
        nfs: group.iter().map(|n| (n.name.clone(), n.kind.clone())).collect(),
        host: host.clone(),
        ifaces: [a.dev.clone(), b.dev.clone()],
        ifindex,
        program,
    });
    d.record(&ns, &a.dev)?;
    d.record(&ns, &b.dev)?;
    Ok(())
}

impl Deployment {
    fn record(&mut self, ns: &str, dev: &str) -> Result<(), TestbedError> {
        self.attached.push((ns.to_string(), dev.to_string()));
        record_xdp(&self.opts, ns, dev)
    }

    /// Per-NF counters (kernel NFs summed over CPUs), in chain order of
    /// deployment: kernel NFs first, then user-space NFs. User-space rows
    /// come from their group worker's telemetry, read without locks or
    /// stopping it.
    pub fn stats(&mut self) -> Result<Vec<NfStats>, TestbedError> {
        let mut all = self.kernel_stats()?;
        for u in &self.users {
            let sockets = u.nf.sockets.as_ref().map(SocketStats::sum);
            let snap = u.nf.handle.snapshot();
            for ((name, kind), stage) in u.nfs.iter().zip(&snap.stages) {
                let c = &stage.counters;
                all.push(NfStats {
                    name: name.clone(),
                    kind: kind.clone(),
                    host: u.host.clone(),
                    placement: match u.io {
                        UserIo::AfXdp => "user (AF_XDP)",
                        UserIo::AfPacket => "user (AF_PACKET)",
                    },
                    ifaces: u.ifaces.clone(),
                    rx_packets: c.packets_in,
                    rx_bytes: c.bytes_in,
                    redirected: c.packets_out,
                    passed: 0,
                    dropped: c.dropped_total(),
                    malformed: 0,
                    drop_reasons: c.drop_breakdown().into_iter().collect(),
                    user: Some(UserNfStats {
                        batches: c.batches,
                        mean_batch: c.mean_batch(),
                        max_batch: c.max_batch,
                        busy_ns: c.busy_ns,
                        ns_per_packet: c.ns_per_packet(),
                        packets_created: c.packets_created,
                    }),
                    sockets,
                    xdp_tap: None,
                });
            }
        }
        Ok(all)
    }

    /// Where each NF runs, for a capture (`braid capture`), by NF name:
    /// the worker of a user-space NF, the XDP program's tap (maps, slot,
    /// gates) of a kernel NF.
    pub fn capture_targets(
        &self,
    ) -> Result<Vec<(String, braid_dataplane::tap::CaptureTarget)>, TestbedError> {
        use braid_dataplane::tap::{CaptureTarget, XdpTarget};
        let mut all: Vec<(String, CaptureTarget)> = Vec::new();
        for u in &self.users {
            for (name, _) in &u.nfs {
                all.push((name.clone(), CaptureTarget::Worker(u.nf.handle.clone())));
            }
        }
        for k in &self.nfs {
            let maps = match &k.program {
                KernelProgram::Single(p) => p.tap_maps(),
                KernelProgram::Chain(c) => c.tap_maps(),
            }
            .map_err(xdp_err(format!("tap maps of the XDP program on {}", k.host)))?;
            // In by the client side (gate 0) the frame leaves by gate 1,
            // and the other way round.
            let gates = vec![(k.ifindex[0], 0), (k.ifindex[1], 1)];
            for (slot, (name, _)) in k.nfs.iter().enumerate() {
                let t = XdpTarget { maps: maps.clone(), slot: slot as u32, gates: gates.clone() };
                all.push((name.clone(), CaptureTarget::Xdp(t)));
            }
        }
        Ok(all)
    }

    /// The counters of every user-space group's two ports (side 0, the
    /// client side, first), as their workers last published them (every
    /// tick). Frames an NF passed on that the port could not send are its
    /// `tx_full`.
    pub fn port_stats(&self) -> Vec<PortRow> {
        let mut rows = Vec::new();
        for u in &self.users {
            let snap = u.nf.handle.snapshot();
            for (side, p) in snap.ports.iter().enumerate() {
                let s = &p.stats;
                rows.push(PortRow {
                    host: u.host.clone(),
                    iface: u.ifaces.get(side).cloned().unwrap_or_default(),
                    port: p.name.clone(),
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    rx_dropped: s.rx_dropped,
                    tx_full: s.tx_dropped,
                });
            }
        }
        rows
    }

    /// One row per kernel NF; a chain stage that hands a frame to the
    /// next stage counts it as redirected.
    fn kernel_stats(&mut self) -> Result<Vec<NfStats>, TestbedError> {
        let mut rows = Vec::new();
        for n in &mut self.nfs {
            for (slot, (name, kind)) in n.nfs.iter().enumerate() {
                let c: XdpCounters = match &mut n.program {
                    KernelProgram::Single(p) => p.counters(),
                    KernelProgram::Chain(c) => c.counters(slot),
                }
                .map_err(xdp_err(format!("counters of NF {name:?}")))?;
                let points = match &mut n.program {
                    KernelProgram::Single(p) => p.tap_config(),
                    KernelProgram::Chain(c) => c.tap_config(slot),
                }
                .map_err(xdp_err(format!("tap word of NF {name:?}")))?;
                rows.push(NfStats {
                    name: name.clone(),
                    kind: kind.clone(),
                    host: n.host.clone(),
                    placement: match n.program {
                        KernelProgram::Single(_) => "kernel (XDP)",
                        KernelProgram::Chain(_) => "kernel (XDP chain)",
                    },
                    ifaces: n.ifaces.clone(),
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    redirected: c.redirect,
                    passed: c.pass,
                    dropped: c.drop,
                    malformed: c.malformed,
                    drop_reasons: Default::default(),
                    user: None,
                    sockets: None,
                    xdp_tap: Some(XdpTapStats { points, lost: c.tap_lost }),
                });
            }
        }
        Ok(rows)
    }

    /// NFs that asked for AF_XDP but run on AF_PACKET, with the reason, as
    /// (NF name, reason).
    pub fn fallbacks(&self) -> &[(String, String)] {
        &self.fallbacks
    }

    /// Interfaces with a program attached, as (namespace, interface).
    pub fn attached(&self) -> &[(String, String)] {
        &self.attached
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // Programs detach when their links close (fields drop after this);
        // take them out of the state file so `down` does not look for them.
        let _ = crate::forget_xdp(&self.opts, &self.attached);
        // Stop the user-space NFs now (they put the hosts' forwarding
        // back), then forget that it was off.
        self.users.clear();
        for host in &self.forwarding_off {
            let _ = crate::forget_forwarding_off(&self.opts, host);
        }
    }
}

/// One deployment per testbed at a time: an exclusive lock on a file beside
/// the state file, held for the deployment's life and released by the
/// kernel when the process ends however it ends (so SIGKILL leaves no stale
/// lock). The file names the holder for the error a second deploy gets.
struct DeployLock {
    _file: std::fs::File,
}

impl DeployLock {
    fn take(opts: &Options, nfs: &[NfOnHost]) -> Result<DeployLock, TestbedError> {
        use std::io::{Read as _, Seek as _, Write as _};
        let path = opts.state_path.with_extension("deploy.lock");
        let io_err = |source: std::io::Error| {
            TestbedError::State(format!("deploy lock {}: {source}", path.display()))
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        // A lock this process let go of can still be held for a moment by
        // a child another thread is spawning (between fork and exec it has
        // a copy of every descriptor, close-on-exec or not): when the file
        // names this process, look again for up to half a second before
        // calling the testbed busy. A live deployment of this process still
        // holds it then.
        let mine = format!("pid {}, ", std::process::id());
        let mut attempts = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    file.rewind().map_err(io_err)?;
                    let _ = file.read_to_string(&mut holder);
                    if holder.starts_with(&mine) && attempts < 50 {
                        attempts += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                    return Err(TestbedError::Busy {
                        holder: if holder.trim().is_empty() {
                            "unknown process".into()
                        } else {
                            holder.trim().into()
                        },
                        path: path.display().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        let names: Vec<&str> = nfs.iter().map(|n| n.name.as_str()).collect();
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        write!(file, "pid {}, NFs {}", std::process::id(), names.join(", ")).map_err(io_err)?;
        Ok(DeployLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_mapping_groups_runs_of_one_placement() {
        let (k, u) = (Where::Kernel, Where::User(UserIo::AfXdp));
        let p = [k, k, u, u, k];
        assert_eq!(Mapping::Distributed.host_indices(&p), vec![0, 1, 2, 3, 4]);
        assert_eq!(Mapping::Compact.host_indices(&p), vec![0, 0, 1, 1, 2]);
        let mixed_io = [u, Where::User(UserIo::AfPacket)];
        assert_eq!(Mapping::Compact.host_indices(&mixed_io), vec![0, 1]);
        assert!(Mapping::Compact.host_indices(&[]).is_empty());
    }

    #[test]
    fn groups_are_runs_of_one_host_and_placement() {
        let u = |name: &str, host: &str, io| {
            NfOnHost::user_on(name, "fwd", host, braid_nf::Params::Null, io)
        };
        let nfs = [
            NfOnHost::kernel("a", "fwd", "nf1"),
            u("b", "nf1", UserIo::AfXdp),
            u("c", "nf2", UserIo::AfXdp),
            u("d", "nf2", UserIo::AfXdp),
            u("e", "nf2", UserIo::AfPacket),
            u("f", "nf1", UserIo::AfXdp),
        ];
        let got: Vec<(&str, Vec<&str>)> = groups(&nfs)
            .iter()
            .map(|g| (g.host, g.nfs.iter().map(|n| n.name.as_str()).collect()))
            .collect();
        // Same host but another placement, or not consecutive: a new group
        // (`deploy` then refuses the host used twice).
        assert_eq!(
            got,
            [
                ("nf1", vec!["a"]),
                ("nf1", vec!["b"]),
                ("nf2", vec!["c", "d"]),
                ("nf2", vec!["e"]),
                ("nf1", vec!["f"]),
            ]
        );
        assert!(groups(&[]).is_empty());
    }
}
