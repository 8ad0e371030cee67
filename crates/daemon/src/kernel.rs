//! Kernel chains: a chain whose every NF the planner places in the kernel
//! runs as one braid XDP chain program ([`braid_io::xdp::XdpChain`], one
//! stage per NF) attached to the chain's `in` and `out` interfaces, the way
//! `braid deploy` runs a kernel group on one testbed host: frames arriving
//! on `in` cross the stages in chain order and leave by `out`, frames
//! arriving on `out` cross them in reverse order and leave by `in`. Like a
//! user-space chain in braidd it is a bump in the wire: frames keep their
//! Ethernet addresses (no MAC rewrite).
//!
//! [`decide`] says where a chain runs: in the kernel when every NF can (a
//! pure function of the descriptor, unit-tested below); in user space when
//! any NF must run there and no NF is pinned to the kernel; refused when an
//! NF pinned to the kernel would have to share the chain with one that
//! cannot run there.
//!
//! The program is attached with BPF links (aya uses them on kernels from
//! 5.9): the attachment belongs to braidd's file descriptors, so when
//! braidd ends, however it ends (SIGKILL included), the kernel detaches
//! the program; nothing stale is left for a restart to clean up. An
//! interface that already carries an XDP program (someone else's) is
//! refused with the kernel's error: braidd never replaces a program it did
//! not attach.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use braid_dataplane::tap::XdpTarget;
use braid_io::xdp::{AttachMode, Attachment, XdpChain, XdpCounters, XdpError, CHAIN_MAX_STAGES};
use braid_nf::kernel::KernelConfig;
use braid_nf::Placement;
use braid_runtime::descriptor::PlacementChoice;
use braid_runtime::xdp_nf::KernelNf;
use braid_runtime::{ChainDescriptor, PortDecl, WorkerMapping};

/// Where one NF of a chain runs in braidd, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NfPlacement {
    pub name: String,
    pub kind: String,
    /// `kernel` or `user`.
    pub placement: &'static str,
    pub reason: String,
}

impl NfPlacement {
    fn of(e: &braid_runtime::plan::PlanEntry, placement: &'static str, reason: String) -> Self {
        NfPlacement { name: e.name.clone(), kind: e.kind.to_string(), placement, reason }
    }
}

/// Where a whole chain runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainPlacement {
    /// One XDP chain program; each NF's XDP configuration, in chain order.
    Kernel(Vec<KernelNf>),
    /// Every NF in user space (`braid_runtime::live::LiveChain`).
    User,
}

/// Why a chain cannot be placed. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("chain `{chain}`: {source}")]
    Plan {
        chain: String,
        #[source]
        source: braid_runtime::plan::PlanError,
    },
    /// An NF pinned to the kernel in a chain that cannot run there whole.
    #[error("chain `{chain}`: NF `{pinned}` is pinned to the kernel (`placement: kernel`), but {why}; braidd runs a chain either whole in the kernel (one XDP program) or whole in user space: pin `{pinned}` to `user` or leave it `auto`")]
    Mixed { chain: String, pinned: String, why: String },
    /// The planner placed an NF in the kernel whose parameters do not
    /// translate (the planner translated the same ones: not expected).
    #[error("chain `{chain}`: NF `{nf}` in the kernel: {source}")]
    Translate {
        chain: String,
        nf: String,
        #[source]
        source: braid_nf::kernel::KernelError,
    },
}

/// Where `d` runs in braidd and where each of its NFs runs, with why.
pub fn decide(d: &ChainDescriptor) -> Result<(ChainPlacement, Vec<NfPlacement>), PlacementError> {
    let plan = braid_runtime::plan::plan(d)
        .map_err(|source| PlacementError::Plan { chain: d.name.clone(), source })?;
    let first_user = plan.iter().find(|e| e.placement == Placement::User);
    // Why the chain cannot run in the kernel whole, if it cannot.
    let why_not_kernel = match (first_user, worker_settings(d)) {
        (Some(u), _) => {
            Some(format!("NF `{}` ({}) runs in user space: {}", u.name, u.kind, u.reason))
        }
        (None, Some(what)) => {
            Some(format!("the chain declares {what}, which only worker threads in user space have"))
        }
        (None, None) if plan.len() > CHAIN_MAX_STAGES => Some(format!(
            "the chain has {} NFs and one XDP chain program holds at most {CHAIN_MAX_STAGES}",
            plan.len()
        )),
        (None, None) => None,
    };
    let Some(why) = why_not_kernel else {
        let configs = d
            .nfs
            .iter()
            .map(|n| {
                KernelNf::translate(&n.kind, &n.params).map_err(|source| {
                    PlacementError::Translate { chain: d.name.clone(), nf: n.name.clone(), source }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let placements =
            plan.iter().map(|e| NfPlacement::of(e, "kernel", e.reason.clone())).collect();
        return Ok((ChainPlacement::Kernel(configs), placements));
    };
    if let Some(pinned) = d.nfs.iter().find(|n| n.placement == PlacementChoice::Kernel) {
        return Err(PlacementError::Mixed {
            chain: d.name.clone(),
            pinned: pinned.name.clone(),
            why,
        });
    }
    let placements = plan
        .iter()
        .map(|e| {
            let reason = match e.placement {
                Placement::User => e.reason.clone(),
                Placement::Kernel => format!(
                    "could run in the kernel ({}), runs in user space with the rest of the chain: {why}",
                    e.reason
                ),
            };
            NfPlacement::of(e, "user", reason)
        })
        .collect();
    Ok((ChainPlacement::User, placements))
}

/// The user-space worker settings `d` declares (`mapping: threads` or
/// `processes`, a `sched` block), if any: a chain that asks for worker
/// threads or NF processes runs on them.
fn worker_settings(d: &ChainDescriptor) -> Option<String> {
    match d.mapping {
        Some(m @ (WorkerMapping::Threads | WorkerMapping::Processes)) => {
            return Some(format!("`mapping: {}`", m.name()))
        }
        Some(WorkerMapping::Thread) | None => {}
    }
    if d.sched.is_some() {
        return Some("a `sched` block".into());
    }
    d.nfs.iter().find(|n| n.sched.is_some()).map(|n| format!("a `sched` block on NF `{}`", n.name))
}

/// A kernel chain that could not start or be changed. What was attached
/// is detached again.
#[derive(Debug, thiserror::Error)]
pub enum KernelChainError {
    #[error("chain `{chain}`: {what}: {source}")]
    Xdp {
        chain: String,
        what: String,
        #[source]
        source: XdpError,
    },
    #[error("chain `{chain}`: {message}")]
    Ports { chain: String, message: String },
    #[error("chain `{chain}`: NF `{nf}`: {message}")]
    Nf { chain: String, nf: String, message: String },
    #[error("chain `{0}` was stopped")]
    Stopped(String),
}

/// One of the two interfaces a kernel chain is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPort {
    /// `in` or `out`.
    pub port: &'static str,
    pub attachment: Attachment,
}

/// Counters of one stage (NF) of a kernel chain, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelNfStats {
    pub counters: XdpCounters,
    /// The capture points its tap mirrors now (0: none).
    pub tap_points: u32,
}

/// One NF of a kernel chain: its XDP configuration and where its stage
/// is in the program.
#[derive(Clone, Debug)]
struct Stage {
    config: KernelNf,
    /// The slot frames cross now.
    active: usize,
    /// For an NF with parameters (xor, firewall): a second slot of the same
    /// kind, empty, that a live change fills before both paths switch to
    /// it (then the old slot is emptied and becomes the spare).
    spare: Option<usize>,
}

/// How long after switching the paths to a new slot braidd waits before
/// emptying the old one: frames that entered before the switch finish
/// their XDP run (microseconds) on the old slot's rules. There is no
/// system call that waits for the kernel's RCU grace period.
const SWITCH_GRACE: Duration = Duration::from_millis(20);

/// A running kernel chain: its XDP program, attached to `in` and `out`.
pub struct KernelChain {
    name: String,
    /// As running: live parameter changes included.
    descriptor: Mutex<ChainDescriptor>,
    /// Per NF, in chain order.
    stages: Mutex<Vec<Stage>>,
    /// `None` once stopped (detached and unloaded).
    program: Mutex<Option<XdpChain>>,
    ports: [KernelPort; 2],
    started: Instant,
}

impl std::fmt::Debug for KernelChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelChain")
            .field("name", &self.name)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its value whole (map writes are
    // single calls), so a poisoned lock's value is still good.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The interface of `d`'s live port `which`.
fn iface_of<'a>(d: &'a ChainDescriptor, which: &str) -> Option<&'a str> {
    match d.ports.get(which)? {
        PortDecl::AfPacket(p) => Some(&p.iface),
        PortDecl::AfXdp(p) => Some(&p.iface),
        _ => None,
    }
}

impl KernelChain {
    /// Load `d`'s NFs as one XDP chain program configured by `configs`
    /// (from [`decide`]), set its paths (`in`: chain order, `out`:
    /// reverse) and forwarding (`in` ↔ `out`), then attach it to both
    /// interfaces in braidd's network namespace, native mode first and
    /// generic (SKB) mode if the driver has no native XDP. Nothing stays
    /// attached if this fails.
    pub fn start(
        d: &ChainDescriptor,
        configs: Vec<KernelNf>,
    ) -> Result<KernelChain, KernelChainError> {
        let chain = || d.name.clone();
        let ports_err = |message: String| KernelChainError::Ports { chain: chain(), message };
        let (Some(in_if), Some(out_if)) = (iface_of(d, "in"), iface_of(d, "out")) else {
            return Err(ports_err("a kernel chain needs live `in` and `out` ports".into()));
        };
        if in_if == out_if {
            return Err(ports_err(format!(
                "`in` and `out` are both interface {in_if}; a kernel chain forwards between two interfaces"
            )));
        }
        if d.ports.len() != 2 {
            return Err(ports_err(
                "a kernel chain has exactly the ports `in` and `out`".to_string(),
            ));
        }
        // Worded as a user-space chain's port that does not open.
        let ifindex = |port: &str, iface: &str| {
            braid_io::netns::ifindex(iface)
                .map_err(|e| ports_err(format!("ports.{port}: cannot open interface {iface}: {e}")))
        };
        let (i_in, i_out) = (ifindex("in", in_if)?, ifindex("out", out_if)?);
        let xdp =
            |what: String| move |source| KernelChainError::Xdp { chain: chain(), what, source };
        let stages = stage_layout(configs);
        let mut kinds = vec![braid_io::xdp::XdpNf::Fwd; slots_used(&stages)];
        for st in &stages {
            kinds[st.active] = st.config.xdp();
            if let Some(spare) = st.spare {
                kinds[spare] = st.config.xdp();
            }
        }
        let mut c = XdpChain::load(&kinds).map_err(xdp("loading the XDP chain program".into()))?;
        for (st, nf) in stages.iter().zip(&d.nfs) {
            st.config
                .configure_stage(&mut c, st.active)
                .map_err(xdp(format!("parameters of NF `{}` (stage {})", nf.name, st.active)))?;
        }
        // Paths and forwarding before attaching: a frame arriving on an
        // interface without a path would go to the kernel stack.
        set_paths(&mut c, [i_in, i_out], &stages).map_err(xdp("paths".into()))?;
        c.set_forward(i_in, i_out).map_err(xdp("forwarding in -> out".into()))?;
        c.set_forward(i_out, i_in).map_err(xdp("forwarding out -> in".into()))?;
        let a_in = c
            .attach(in_if, AttachMode::Auto)
            .map_err(xdp(format!("attaching to `in` ({in_if})")))?
            .clone();
        let a_out = c
            .attach(out_if, AttachMode::Auto)
            .map_err(xdp(format!("attaching to `out` ({out_if})")))?
            .clone();
        Ok(KernelChain {
            name: d.name.clone(),
            descriptor: Mutex::new(d.clone()),
            stages: Mutex::new(stages),
            program: Mutex::new(Some(c)),
            ports: [
                KernelPort { port: "in", attachment: a_in },
                KernelPort { port: "out", attachment: a_out },
            ],
            started: Instant::now(),
        })
    }

    /// The chain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor as running (live parameter changes included).
    pub fn descriptor(&self) -> ChainDescriptor {
        lock(&self.descriptor).clone()
    }

    /// The interfaces and how the program is attached to each.
    pub fn ports(&self) -> &[KernelPort; 2] {
        &self.ports
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// True until [`KernelChain::stop`].
    pub fn running(&self) -> bool {
        lock(&self.program).is_some()
    }

    /// Why the loaded program no longer forwards, if it does not: an
    /// interface it was attached to is gone (deleted, or replaced by
    /// another of the same name, which does not carry the program). The
    /// kernel drops the attachment with the interface; nothing tells
    /// braidd, so this looks (one `if_nametoindex` per interface).
    pub fn broken(&self) -> Option<String> {
        self.ports.iter().find_map(|p| {
            let a = &p.attachment;
            match braid_io::netns::ifindex(&a.iface) {
                Ok(i) if i == a.ifindex => None,
                Ok(i) => Some(format!(
                    "port `{}`: interface {} was replaced (ifindex {} is now {i}); the XDP program is not attached to the new one",
                    p.port, a.iface, a.ifindex
                )),
                Err(e) => Some(format!("port `{}`: interface {} is gone: {e}", p.port, a.iface)),
            }
        })
    }

    /// Run `f` on the program, if it is still loaded.
    fn with_program<T>(
        &self,
        f: impl FnOnce(&mut XdpChain) -> Result<T, KernelChainError>,
    ) -> Result<T, KernelChainError> {
        match lock(&self.program).as_mut() {
            Some(c) => f(c),
            None => Err(KernelChainError::Stopped(self.name.clone())),
        }
    }

    /// Every NF's counters (its active and spare slots' together: a live
    /// change moves it from one to the other) and tap word, in chain
    /// order.
    pub fn stats(&self) -> Result<Vec<KernelNfStats>, KernelChainError> {
        let names: Vec<String> =
            lock(&self.descriptor).nfs.iter().map(|n| n.name.clone()).collect();
        let stages = lock(&self.stages).clone();
        self.with_program(|c| {
            names
                .iter()
                .zip(&stages)
                .map(|(nf, st)| {
                    let e = |what: &'static str| {
                        let chain = self.name.clone();
                        move |source| KernelChainError::Xdp {
                            chain,
                            what: format!("{what} of NF `{nf}`"),
                            source,
                        }
                    };
                    let mut counters = c.counters(st.active).map_err(e("counters"))?;
                    if let Some(spare) = st.spare {
                        counters += c.counters(spare).map_err(e("counters"))?;
                    }
                    Ok(KernelNfStats {
                        counters,
                        tap_points: c.tap_config(st.active).map_err(e("tap word"))?,
                    })
                })
                .collect()
        })
    }

    /// Where a capture of NF number `nf` (chain order) reads: the
    /// program's tap maps, the NF's active slot, and the (ifindex, gate)
    /// pairs of the two interfaces (a frame that came in by `in`, gate 0, leaves by `out`,
    /// gate 1, and the other way round). A capture stays on that slot: a
    /// live change of the NF's parameters moves the NF to its other slot,
    /// and the capture then sees nothing more.
    pub fn tap_target(&self, nf: usize) -> Result<XdpTarget, KernelChainError> {
        let gates =
            vec![(self.ports[0].attachment.ifindex, 0), (self.ports[1].attachment.ifindex, 1)];
        let slot = lock(&self.stages)
            .get(nf)
            .map(|st| st.active as u32)
            .ok_or_else(|| KernelChainError::Stopped(self.name.clone()))?;
        self.with_program(|c| {
            let maps = c.tap_maps().map_err(|source| KernelChainError::Xdp {
                chain: self.name.clone(),
                what: "the capture tap's maps".into(),
                source,
            })?;
            Ok(XdpTarget { maps, slot, gates })
        })
    }

    /// Change NF `nf`'s parameters live: translated for its XDP stage
    /// (refused, nothing changed, when XDP cannot express them or the NF
    /// kind would change), written whole into the NF's spare slot, then
    /// both paths switched to that slot (one map update per direction:
    /// each frame crosses either the old parameters or the new, never a
    /// mix), and after [`SWITCH_GRACE`] the old slot is emptied to be the
    /// next spare. A chain without spare slots (its NFs and their spares
    /// would not fit the program's 8) is refused.
    pub fn reconfigure(&self, nf: &str, params: braid_nf::Params) -> Result<(), KernelChainError> {
        let mut descriptor = lock(&self.descriptor);
        let nf_err = |message: String| KernelChainError::Nf {
            chain: self.name.clone(),
            nf: nf.to_string(),
            message,
        };
        let Some(i) = descriptor.nfs.iter().position(|n| n.name == nf) else {
            return Err(nf_err("no such NF".into()));
        };
        let kind = descriptor.nfs[i].kind.clone();
        let new = KernelNf::translate(&kind, &params).map_err(|e| {
            nf_err(format!(
                "these parameters cannot run in the kernel: {e}; the chain runs as one XDP program, so redeploy it (DELETE, then POST) to run it in user space"
            ))
        })?;
        let mut stages = lock(&self.stages);
        let old = stages[i].clone();
        if old.config.xdp() != new.xdp() {
            return Err(nf_err("the NF's XDP program would change".into()));
        }
        if old.config.0 == KernelConfig::Fwd {
            // No parameters in the kernel: nothing to write.
            descriptor.nfs[i].params = params;
            return Ok(());
        }
        let Some(spare) = old.spare else {
            return Err(nf_err(format!(
                "a live change needs a spare stage, and this chain's {} NFs leave none in the XDP program's {CHAIN_MAX_STAGES}; redeploy it (DELETE, then POST) with the new parameters",
                stages.len()
            )));
        };
        let ifindexes = [self.ports[0].attachment.ifindex, self.ports[1].attachment.ifindex];
        let next = self.with_program(|c| {
            switch_stage(c, ifindexes, &stages, i, spare, new).map_err(|(what, source)| {
                KernelChainError::Xdp {
                    chain: self.name.clone(),
                    what: format!("changing NF `{nf}`: {what}"),
                    source,
                }
            })
        })?;
        *stages = next;
        descriptor.nfs[i].params = params;
        Ok(())
    }

    /// Detach the program from both interfaces and unload it; its last
    /// counters. A second call finds it stopped.
    pub fn stop(&self) -> Result<Vec<KernelNfStats>, KernelChainError> {
        let last = self.stats();
        // Dropping the program closes its BPF links: the kernel detaches
        // it from both interfaces and frees it with its maps.
        drop(lock(&self.program).take());
        last
    }
}

/// Each NF's stage in chain order (slots 0..n) and, when they all fit in
/// the program's [`CHAIN_MAX_STAGES`], a spare slot (n, n+1, ...) for each
/// NF with parameters (xor, firewall).
fn stage_layout(configs: Vec<KernelNf>) -> Vec<Stage> {
    let n = configs.len();
    let tunable = configs.iter().filter(|k| k.0 != KernelConfig::Fwd).count();
    let spares = n + tunable <= CHAIN_MAX_STAGES;
    let mut next_spare = n;
    configs
        .into_iter()
        .enumerate()
        .map(|(active, config)| {
            let spare = (spares && config.0 != KernelConfig::Fwd).then(|| {
                next_spare += 1;
                next_spare - 1
            });
            Stage { config, active, spare }
        })
        .collect()
}

/// How many slots the program needs for `stages`.
fn slots_used(stages: &[Stage]) -> usize {
    stages.iter().flat_map(|st| [Some(st.active), st.spare]).flatten().max().map_or(0, |m| m + 1)
}

/// Frames arriving on `in` cross the NFs' active slots in chain order,
/// frames arriving on `out` in reverse order.
fn set_paths(c: &mut XdpChain, [i_in, i_out]: [u32; 2], stages: &[Stage]) -> Result<(), XdpError> {
    let order: Vec<usize> = stages.iter().map(|st| st.active).collect();
    let reverse: Vec<usize> = order.iter().rev().copied().collect();
    c.set_path(i_in, &order)?;
    c.set_path(i_out, &reverse)
}

/// Write `new` whole into NF `i`'s `spare` slot, switch both paths to it,
/// wait [`SWITCH_GRACE`], then empty the NF's old slot (the next spare).
/// The stages afterwards; on an error before the switch, the old slot
/// still runs and the spare is emptied again.
fn switch_stage(
    c: &mut XdpChain,
    ifindexes: [u32; 2],
    stages: &[Stage],
    i: usize,
    spare: usize,
    new: KernelNf,
) -> Result<Vec<Stage>, (String, XdpError)> {
    let old = stages[i].clone();
    if let Err(e) = new.configure_stage(c, spare) {
        let _ = clear_stage(c, spare, &new.0);
        return Err((format!("filling spare stage {spare}"), e));
    }
    let mut next = stages.to_vec();
    next[i] = Stage { config: new, active: spare, spare: Some(old.active) };
    if let Err(e) = set_paths(c, ifindexes, &next) {
        let _ = set_paths(c, ifindexes, stages);
        let _ = clear_stage(c, spare, &next[i].config.0);
        return Err(("switching the paths".into(), e));
    }
    std::thread::sleep(SWITCH_GRACE);
    clear_stage(c, old.active, &old.config.0)
        .map_err(|e| (format!("emptying the old stage {}", old.active), e))?;
    Ok(next)
}

/// Empty firewall stage `slot` of the rules `config` put there (nothing
/// to do for xor: the next change writes its whole key).
fn clear_stage(c: &mut XdpChain, slot: usize, config: &KernelConfig) -> Result<(), XdpError> {
    let KernelConfig::Firewall(fw) = config else { return Ok(()) };
    for (rule, _) in &fw.tuples {
        c.remove_fw_rule(slot, &braid_runtime::xdp_nf::fw_rule(rule))?;
    }
    for (net, len, _) in &fw.prefixes {
        c.remove_fw_src_prefix(slot, *net, *len)?;
    }
    Ok(())
}

/// The API's view of a kernel chain's counters (`stats` of
/// `GET /v1/chains/{name}`): per NF in chain order with the names a
/// user-space chain's stages use where they mean the same (`packets_in`,
/// `bytes_in`, `packets_out`, `dropped`, `drops` by reason), plus `passed`
/// (handed to the kernel's own stack: not IPv4/ARP handled by the chain,
/// or no forwarding entry) and the interfaces with their attach mode.
pub fn stats_json(chain: &KernelChain, stats: &[KernelNfStats]) -> serde_json::Value {
    let d = chain.descriptor();
    let stages: Vec<serde_json::Value> = d
        .nfs
        .iter()
        .zip(stats)
        .map(|(nf, s)| {
            let c = &s.counters;
            let drops: serde_json::Map<String, serde_json::Value> = drop_reasons(&nf.kind, c)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            serde_json::json!({
                "name": nf.name,
                "kind": nf.kind,
                "placement": "kernel",
                "packets_in": c.rx_packets,
                "bytes_in": c.rx_bytes,
                "packets_out": c.redirect,
                "passed": c.pass,
                "dropped": c.drop,
                "drops": drops,
                "matched": c.matched,
                "tap": { "points": s.tap_points, "lost": c.tap_lost },
            })
        })
        .collect();
    let ports: Vec<serde_json::Value> = chain
        .ports()
        .iter()
        .map(|p| {
            let a = &p.attachment;
            serde_json::json!({
                "name": p.port,
                "iface": a.iface,
                "ifindex": a.ifindex,
                "xdp_mode": if a.native { "native" } else { "generic" },
                "fallback_reason": a.fallback_reason,
            })
        })
        .collect();
    serde_json::json!({ "placement": "kernel", "stages": stages, "ports": ports })
}

/// A kernel NF's drops by reason, in the names of `braid_nf::DropReason`:
/// `malformed` (headers too short or inconsistent), and the rest as
/// `denied` for a firewall (a rule or its default) or `other`.
pub fn drop_reasons(kind: &str, c: &XdpCounters) -> Vec<(&'static str, u64)> {
    let rest = c.drop.saturating_sub(c.malformed);
    let rest_reason = if kind == "firewall" { "denied" } else { "other" };
    [("malformed", c.malformed), (rest_reason, rest)].into_iter().filter(|(_, n)| *n > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_io::xdp::XdpNf;

    fn chain(nfs: &str) -> ChainDescriptor {
        ChainDescriptor::from_yaml(&format!(
            "name: k\nports:\n  in: {{ kind: af_packet, iface: a }}\n  out: {{ kind: af_packet, iface: b }}\nnfs:\n{nfs}"
        ))
        .unwrap()
    }

    const FW_STATELESS: &str =
        "  - { name: fw, type: firewall, params: { conntrack: false, default: allow } }\n";

    #[test]
    fn a_chain_every_nf_of_which_can_run_in_the_kernel_runs_there() {
        let d = chain(&format!("{FW_STATELESS}  - {{ name: f, type: fwd }}\n"));
        let (p, nfs) = decide(&d).unwrap();
        let ChainPlacement::Kernel(configs) = p else { panic!("{p:?}") };
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[1].0, KernelConfig::Fwd);
        assert!(nfs.iter().all(|n| n.placement == "kernel"), "{nfs:?}");
        assert_eq!(nfs[0].name, "fw");
        // Pinned, the same.
        let d = chain("  - { name: f, type: fwd, placement: kernel }\n");
        assert!(matches!(decide(&d).unwrap().0, ChainPlacement::Kernel(_)));
    }

    #[test]
    fn one_nf_that_must_run_in_user_space_takes_the_whole_chain_there() {
        // A conntrack firewall (the default) cannot run in the kernel.
        let d = chain("  - { name: fw, type: firewall }\n  - { name: f, type: fwd }\n");
        let (p, nfs) = decide(&d).unwrap();
        assert_eq!(p, ChainPlacement::User);
        assert_eq!(nfs[0].placement, "user");
        assert!(nfs[0].reason.contains("conntrack"), "{}", nfs[0].reason);
        assert_eq!(nfs[1].placement, "user");
        assert!(
            nfs[1].reason.starts_with("could run in the kernel")
                && nfs[1].reason.contains("NF `fw` (firewall) runs in user space"),
            "{}",
            nfs[1].reason
        );
        // An NF pinned to user space does the same.
        let d = chain("  - { name: f, type: fwd, placement: user }\n  - { name: g, type: fwd }\n");
        assert_eq!(decide(&d).unwrap().0, ChainPlacement::User);
    }

    #[test]
    fn an_nf_pinned_to_the_kernel_beside_a_user_space_one_is_refused_naming_both() {
        let d =
            chain("  - { name: k, type: fwd, placement: kernel }\n  - { name: n, type: nat }\n");
        let e = decide(&d).unwrap_err().to_string();
        assert!(e.contains("NF `k` is pinned to the kernel"), "{e}");
        assert!(e.contains("NF `n` (nat) runs in user space"), "{e}");
    }

    #[test]
    fn more_nfs_than_one_xdp_chain_holds_run_in_user_space_or_are_refused_when_pinned() {
        let nine: String =
            (0..9).map(|i| format!("  - {{ name: f{i}, type: fwd }}\n")).collect::<String>();
        let (p, nfs) = decide(&chain(&nine)).unwrap();
        assert_eq!(p, ChainPlacement::User);
        assert!(nfs[0].reason.contains("at most 8"), "{}", nfs[0].reason);
        let pinned = nine.replacen("type: fwd }", "type: fwd, placement: kernel }", 1);
        let e = decide(&chain(&pinned)).unwrap_err().to_string();
        assert!(e.contains("NF `f0` is pinned") && e.contains("at most 8"), "{e}");
    }

    #[test]
    fn worker_settings_keep_an_auto_chain_in_user_space_and_refuse_a_pinned_one() {
        let two = "  - { name: f, type: fwd }\n  - { name: g, type: fwd }\n";
        for (extra, what) in [
            ("mapping: threads\n", "`mapping: threads`"),
            ("mapping: processes\n", "`mapping: processes`"),
            ("sched: { policy: batch }\n", "a `sched` block"),
        ] {
            let d = ChainDescriptor::from_yaml(&format!(
                "name: k\n{extra}ports:\n  in: {{ kind: af_packet, iface: a }}\n  out: {{ kind: af_packet, iface: b }}\nnfs:\n{two}"
            ))
            .unwrap();
            let (p, nfs) = decide(&d).unwrap();
            assert_eq!(p, ChainPlacement::User, "{extra}");
            assert!(nfs[0].reason.contains(what), "{}", nfs[0].reason);
        }
        let d = chain("  - { name: f, type: fwd, placement: kernel }\n  - { name: g, type: fwd, sched: { nice: 5 } }\n");
        let e = decide(&d).unwrap_err().to_string();
        assert!(e.contains("a `sched` block on NF `g`"), "{e}");
    }

    #[test]
    fn kernel_drops_are_named_as_user_space_drop_reasons() {
        let c = XdpCounters { drop: 5, malformed: 2, ..XdpCounters::default() };
        assert_eq!(drop_reasons("firewall", &c), [("malformed", 2), ("denied", 3)]);
        assert_eq!(drop_reasons("xor", &c), [("malformed", 2), ("other", 3)]);
        assert!(drop_reasons("fwd", &XdpCounters::default()).is_empty());
    }

    fn fw(yaml: &str) -> KernelNf {
        let p: braid_nf::Params = serde_yaml_ng::from_str(yaml).unwrap();
        KernelNf::translate("firewall", &p).unwrap()
    }

    #[test]
    fn nfs_with_parameters_get_a_spare_slot_when_all_fit() {
        let fwd = KernelNf(KernelConfig::Fwd);
        let f = fw("{conntrack: false}");
        let x = KernelNf(KernelConfig::Xor { key: vec![1] });
        let slots = |v: &[Stage]| v.iter().map(|s| (s.active, s.spare)).collect::<Vec<_>>();
        let st = stage_layout(vec![fwd.clone(), f.clone(), x.clone()]);
        assert_eq!(slots(&st), [(0, None), (1, Some(3)), (2, Some(4))]);
        assert_eq!(slots_used(&st), 5);
        // Five firewalls and their spares would need 10 of 8 slots: none.
        let st = stage_layout(vec![f.clone(); 5]);
        assert!(st.iter().all(|s| s.spare.is_none()));
        assert_eq!(slots_used(&st), 5);
        let st = stage_layout(vec![f; 4]);
        assert_eq!(slots(&st)[3], (3, Some(7)));
    }

    /// Root and the XDP objects, or skip (a failure under
    /// `BRAID_REQUIRE_ROOT=1`).
    fn usable(test: &str) -> bool {
        !braid_testkit::skip_unless(
            braid_io::netns::is_root(),
            test,
            "loading BPF programs needs root",
        ) && !braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            test,
            &XdpError::NotBuilt.to_string(),
        )
    }

    /// The switch on a real program, run with BPF_PROG_TEST_RUN (frames
    /// arrive on `lo`, which is `in` here): before, the old rules; after,
    /// the new ones from the other slot; the old slot emptied.
    #[test]
    fn a_live_change_fills_the_spare_switches_to_it_and_empties_the_old_slot() {
        if !usable("a_live_change_fills_the_spare_switches_to_it_and_empties_the_old_slot") {
            return;
        }
        use braid_io::xdp::XdpAction;
        use braid_packet::wire::build::FrameSpec;
        let server = std::net::Ipv4Addr::new(10, 0, 0, 2);
        let udp = |port: u16| {
            FrameSpec::udp((std::net::Ipv4Addr::new(10, 0, 0, 1), 4000), (server, port), 8).build()
        };
        let shut = |port: u16| {
            fw(&format!(
                "{{conntrack: false, default: allow, rules: [{{action: drop, dst: {server}, proto: udp, dst_ports: {port}}}]}}"
            ))
        };
        let stages = stage_layout(vec![shut(9), KernelNf(KernelConfig::Fwd)]);
        let kinds = [XdpNf::Firewall, XdpNf::Fwd, XdpNf::Firewall];
        assert_eq!(slots_used(&stages), kinds.len());
        let mut c = XdpChain::load(&kinds).unwrap();
        stages[0].config.configure_stage(&mut c, 0).unwrap();
        let lo = braid_io::netns::ifindex("lo").unwrap();
        // `out` is an index no interface has: only `lo`'s path is used.
        let ifindexes = [lo, 0x7fff_fff0];
        set_paths(&mut c, ifindexes, &stages).unwrap();
        let action = |c: &mut XdpChain, port| c.test_run(&udp(port), 1).unwrap().action;
        assert_eq!(action(&mut c, 9), XdpAction::Drop);
        assert_eq!(action(&mut c, 10), XdpAction::Pass);

        let next = switch_stage(&mut c, ifindexes, &stages, 0, 2, shut(10)).unwrap();
        assert_eq!((next[0].active, next[0].spare), (2, Some(0)));
        assert_eq!(action(&mut c, 9), XdpAction::Pass);
        assert_eq!(action(&mut c, 10), XdpAction::Drop);
        // The old slot holds no rule any more.
        let KernelConfig::Firewall(old) = &stages[0].config.0 else { unreachable!() };
        let rule = braid_runtime::xdp_nf::fw_rule(&old.tuples[0].0);
        assert!(c.remove_fw_rule(0, &rule).is_err(), "the old stage still has its rule");
        // Counters: 2 frames on the old slot, 2 on the new, both summed.
        let mut total = c.counters(2).unwrap();
        total += c.counters(0).unwrap();
        assert_eq!((total.rx_packets, total.drop), (4, 2), "{total:?}");
        // And back again, through the emptied slot.
        let back = switch_stage(&mut c, ifindexes, &next, 0, 0, shut(9)).unwrap();
        assert_eq!((back[0].active, back[0].spare), (0, Some(2)));
        assert_eq!(action(&mut c, 9), XdpAction::Drop);
        assert_eq!(action(&mut c, 10), XdpAction::Pass);
    }
}
