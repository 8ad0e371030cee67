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

use braid_io::xdp::{AttachMode, Attachment, XdpChain, XdpCounters, XdpError, CHAIN_MAX_STAGES};
use braid_nf::kernel::{KernelConfig, KernelFirewall};
use braid_nf::Placement;
use braid_runtime::descriptor::PlacementChoice;
use braid_runtime::xdp_nf::KernelNf;
use braid_runtime::{ChainDescriptor, PortDecl};

/// Where one NF of a chain runs in braidd, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NfPlacement {
    pub name: String,
    pub kind: String,
    /// `kernel` or `user`.
    pub placement: &'static str,
    pub reason: String,
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
        let placements = plan
            .iter()
            .map(|e| NfPlacement {
                name: e.name.clone(),
                kind: e.kind.to_string(),
                placement: "kernel",
                reason: e.reason.clone(),
            })
            .collect();
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
        .map(|e| NfPlacement {
            name: e.name.clone(),
            kind: e.kind.to_string(),
            placement: "user",
            reason: match e.placement {
                Placement::User => e.reason.clone(),
                Placement::Kernel => format!(
                    "could run in the kernel ({}), runs in user space with the rest of the chain: {why}",
                    e.reason
                ),
            },
        })
        .collect();
    Ok((ChainPlacement::User, placements))
}

/// The user-space worker settings `d` declares (`mapping: threads`, a
/// `sched` block), if any: a chain that asks for worker threads runs on
/// them.
fn worker_settings(d: &ChainDescriptor) -> Option<String> {
    if d.mapping == Some(braid_runtime::WorkerMapping::Threads) {
        return Some("`mapping: threads`".into());
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

/// A running kernel chain: its XDP program, attached to `in` and `out`.
pub struct KernelChain {
    name: String,
    /// As running: live parameter changes included.
    descriptor: Mutex<ChainDescriptor>,
    configs: Mutex<Vec<KernelNf>>,
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
        let kinds: Vec<_> = configs.iter().map(KernelNf::xdp).collect();
        let mut c = XdpChain::load(&kinds).map_err(xdp("loading the XDP chain program".into()))?;
        for (slot, (k, nf)) in configs.iter().zip(&d.nfs).enumerate() {
            k.configure_stage(&mut c, slot)
                .map_err(xdp(format!("parameters of NF `{}` (stage {slot})", nf.name)))?;
        }
        // Paths and forwarding before attaching: a frame arriving on an
        // interface without a path would go to the kernel stack.
        let order: Vec<usize> = (0..configs.len()).collect();
        let reverse: Vec<usize> = order.iter().rev().copied().collect();
        c.set_path(i_in, &order).map_err(xdp("path in -> out".into()))?;
        c.set_path(i_out, &reverse).map_err(xdp("path out -> in".into()))?;
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
            configs: Mutex::new(configs),
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

    /// Every NF's counters and tap word, in chain order.
    pub fn stats(&self) -> Result<Vec<KernelNfStats>, KernelChainError> {
        let names: Vec<String> =
            lock(&self.descriptor).nfs.iter().map(|n| n.name.clone()).collect();
        self.with_program(|c| {
            names
                .iter()
                .enumerate()
                .map(|(slot, nf)| {
                    let e = |what: &'static str| {
                        let chain = self.name.clone();
                        move |source| KernelChainError::Xdp {
                            chain,
                            what: format!("{what} of NF `{nf}`"),
                            source,
                        }
                    };
                    Ok(KernelNfStats {
                        counters: c.counters(slot).map_err(e("counters"))?,
                        tap_points: c.tap_config(slot).map_err(e("tap word"))?,
                    })
                })
                .collect()
        })
    }

    /// The capture tap's maps (one tap word per stage), and the
    /// (ifindex, gate) pairs of the two interfaces: a frame that came in by
    /// `in` (gate 0) leaves by `out` (gate 1), and the other way round.
    pub fn tap(
        &self,
    ) -> Result<(braid_io::xdp_tap::XdpTapMaps, Vec<(u32, u16)>), KernelChainError> {
        let gates =
            vec![(self.ports[0].attachment.ifindex, 0), (self.ports[1].attachment.ifindex, 1)];
        self.with_program(|c| {
            let maps = c.tap_maps().map_err(|source| KernelChainError::Xdp {
                chain: self.name.clone(),
                what: "the capture tap's maps".into(),
                source,
            })?;
            Ok((maps, gates))
        })
    }

    /// Change NF `nf`'s parameters live: translated for its XDP stage
    /// (refused, nothing changed, when XDP cannot express them or the NF
    /// kind would change), then written into the stage's maps: an xor's
    /// key in one map update; a firewall's new rules and default first,
    /// then the rules it no longer has are removed. The maps are updated
    /// entry by entry, so for a moment a frame can meet part of the old
    /// rule set and part of the new (there is no swap between two batches
    /// as in user space).
    pub fn reconfigure(&self, nf: &str, params: braid_nf::Params) -> Result<(), KernelChainError> {
        let mut descriptor = lock(&self.descriptor);
        let nf_err = |message: String| KernelChainError::Nf {
            chain: self.name.clone(),
            nf: nf.to_string(),
            message,
        };
        let Some(slot) = descriptor.nfs.iter().position(|n| n.name == nf) else {
            return Err(nf_err("no such NF".into()));
        };
        let kind = descriptor.nfs[slot].kind.clone();
        let new = KernelNf::translate(&kind, &params).map_err(|e| {
            nf_err(format!(
                "these parameters cannot run in the kernel: {e}; the chain runs as one XDP program, so redeploy it (DELETE, then POST) to run it in user space"
            ))
        })?;
        let mut configs = lock(&self.configs);
        let old = configs[slot].clone();
        let xdp = |source| KernelChainError::Xdp {
            chain: self.name.clone(),
            what: format!("changing NF `{nf}` (stage {slot})"),
            source,
        };
        self.with_program(|c| {
            match (&old.0, &new.0) {
                (KernelConfig::Fwd, KernelConfig::Fwd) => {}
                (KernelConfig::Xor { .. }, KernelConfig::Xor { .. })
                | (KernelConfig::Firewall(_), KernelConfig::Firewall(_)) => {
                    new.configure_stage(c, slot).map_err(xdp)?;
                    if let (KernelConfig::Firewall(was), KernelConfig::Firewall(now)) =
                        (&old.0, &new.0)
                    {
                        remove_stale_rules(c, slot, was, now).map_err(xdp)?;
                    }
                }
                _ => return Err(nf_err("the NF's XDP program would change".into())),
            }
            Ok(())
        })?;
        configs[slot] = new;
        descriptor.nfs[slot].params = params;
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

/// Remove the rules of firewall stage `slot` that `was` had and `now` has
/// not (same match; an action change was already written over).
fn remove_stale_rules(
    c: &mut XdpChain,
    slot: usize,
    was: &KernelFirewall,
    now: &KernelFirewall,
) -> Result<(), XdpError> {
    for (rule, _) in &was.tuples {
        if !now.tuples.iter().any(|(r, _)| r == rule) {
            c.remove_fw_rule(slot, &braid_runtime::xdp_nf::fw_rule(rule))?;
        }
    }
    for (net, len, _) in &was.prefixes {
        if !now.prefixes.iter().any(|(n, l, _)| (n, l) == (net, len)) {
            c.remove_fw_src_prefix(slot, *net, *len)?;
        }
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

    fn fw(yaml: &str) -> KernelFirewall {
        let p: braid_nf::Params = serde_yaml_ng::from_str(yaml).unwrap();
        match KernelNf::translate("firewall", &p).unwrap().0 {
            KernelConfig::Firewall(f) => f,
            other => panic!("{other:?}"),
        }
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

    #[test]
    fn a_firewall_change_removes_exactly_the_rules_the_new_set_has_not() {
        if !usable("a_firewall_change_removes_exactly_the_rules_the_new_set_has_not") {
            return;
        }
        let was = fw("{conntrack: false, rules: [{action: drop, src: 10.0.0.0/24}, {action: drop, dst: 10.0.1.1, proto: udp, dst_ports: 53}, {action: drop, src: 10.0.2.0/24}]}");
        let now = fw("{conntrack: false, rules: [{action: allow, src: 10.0.0.0/24}]}");
        let mut c = XdpChain::load(&[braid_io::xdp::XdpNf::Firewall]).unwrap();
        KernelNf(KernelConfig::Firewall(was.clone())).configure_stage(&mut c, 0).unwrap();
        KernelNf(KernelConfig::Firewall(now.clone())).configure_stage(&mut c, 0).unwrap();
        remove_stale_rules(&mut c, 0, &was, &now).unwrap();
        // The kept prefix is still there (its removal would succeed once),
        // the two others are gone (removing them again fails).
        let err = |r: Result<(), XdpError>| r.unwrap_err().to_string();
        assert!(err(c.remove_fw_src_prefix(0, "10.0.2.0".parse().unwrap(), 24)).contains("remove"));
        let (tuple, _) = was.tuples[0];
        assert!(
            err(c.remove_fw_rule(0, &braid_runtime::xdp_nf::fw_rule(&tuple))).contains("remove")
        );
        c.remove_fw_src_prefix(0, "10.0.0.0".parse().unwrap(), 24).unwrap();
    }
}
